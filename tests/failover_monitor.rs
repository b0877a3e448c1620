//! The daemon's monitor (root): heartbeat silence → failover condition
//! (logged, in status), the hook runs once, opt-in automatic failover;
//! periodic snapshots while protected.

mod failover_support;
mod link_support;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use failover_support::*;
use link_support::common::*;
use link_support::{keys, Daemon};

/// The target daemon on loopback with a fresh identity, trusting a fresh
/// agent identity, with `extra` arguments.
fn serve(state: &Path, base: &Path, extra: &[&str], log: &Path) -> Daemon {
    let (id, _) = keys(base, "target-id");
    let (_, agent) = keys(base, "agent-id");
    let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
    let agent = agent.to_string();
    Daemon::serve(standin(), "127.0.0.1:0", state, &id, &[&agent], &extra, log)
}

fn wait_for(what: &str, log: &Path, mut f: impl FnMut() -> bool) {
    for _ in 0..240 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "timed out waiting for {what}\nlog:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn silence_meets_the_condition_runs_the_hook_once_and_fails_over() {
    require_root();
    let tmp = tempdir();
    let target = tmp.path().join("root");
    make_target_system(&target);
    let state = target.join("var/lib/standin");
    let staged = make_state(&state, "src1", 3, true);
    make_source_system(&staged);
    // The last heartbeat arrived a while ago.
    let mut st = standin_staging::state::TargetState::load(&state).unwrap();
    st.last_heartbeat = Some(standin_staging::state::HeartbeatState {
        received_unix_ms: standin_staging::state::now_ms() - 10_000,
        heartbeat: standin_link::message::Heartbeat {
            sent_unix_ms: 0,
            source_seq: 3,
            queue_sets: 0,
            queue_bytes: 0,
            oldest_pending_unix_ms: None,
            ..Default::default()
        },
    });
    st.save(&state).unwrap();
    let hook_out = tmp.path().join("hook.out");
    let log = tmp.path().join("daemon.log");
    let hook = format!("echo \"met $STANDIN_STATE_DIR\" >> {}", hook_out.display());
    let target_s = target.display().to_string();
    let _d = serve(
        &state,
        tmp.path(),
        &[
            "--failover-after",
            "2",
            "--on-failover-condition",
            &hook,
            "--auto-failover-after",
            "1",
            "--auto-target-root",
            &target_s,
            "--snapshot-every",
            "0",
        ],
        &log,
    );
    wait_for("the automatic failover", &log, || {
        std::fs::read_to_string(state.join("failover.json"))
            .is_ok_and(|s| s.contains("\"complete\""))
    });
    std::thread::sleep(Duration::from_secs(2));
    let hook_text = std::fs::read_to_string(&hook_out).unwrap();
    assert_eq!(hook_text.lines().count(), 1, "{hook_text}");
    assert!(
        hook_text.contains(&state.display().to_string()),
        "{hook_text}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("failover condition met"), "{log_text}");
    assert!(
        log_text.contains("automatic failover complete"),
        "{log_text}"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("etc/hostname")).unwrap(),
        "production\n"
    );
    assert!(target.join("boot/vmlinuz-6.1.0-target").exists());
    let out = run_ok(
        standin()
            .args([
                "status",
                "--json",
                "--heartbeat-silence",
                "2",
                "--state-dir",
            ])
            .arg(&state),
        None,
    );
    let text = run_ok(
        standin()
            .args(["status", "--heartbeat-silence", "2", "--state-dir"])
            .arg(&state),
        None,
    );
    assert!(
        stdout(&text).contains("Complete (live at sequence number 3"),
        "{}",
        stdout(&text)
    );
    assert!(
        stdout(&out).contains("failover condition met"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn daemon_takes_periodic_snapshots_while_protected() {
    require_root();
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let staged = make_state(&state, "src1", 3, true);
    make_source_system(&staged);
    let log = tmp.path().join("daemon.log");
    let _d = serve(&state, tmp.path(), &["--snapshot-every", "1"], &log);
    wait_for("a periodic snapshot", &log, || {
        std::fs::read_dir(state.join("snapshots")).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                !e.file_name().to_string_lossy().starts_with('.')
                    && e.path().join("meta.json").exists()
            })
        })
    });
    let out = run_ok(
        standin()
            .args(["snapshot", "list", "--json", "--state-dir"])
            .arg(&state),
        None,
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["seq"], 3);
}
