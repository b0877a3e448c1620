//! Heartbeat times are soft state (loopback, in-process daemon so its
//! fsyncs can be counted): heartbeats on both paths cause no fsync, while
//! an applied change set still does; status reports the last heartbeat of
//! each path from the state directory and after a daemon restart; a
//! second-path heartbeat is recorded and visible in `standin status
//! --state-dir` while an apply holds the store.

mod link_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use link_support::common::{run_ok, standin, tempdir};
use link_support::*;
use standin_agent::link::{connect, query_status, LinkConfig};
use standin_builder::changeset::ChangeSet;
use standin_link::message::{Heartbeat, Message, Role, HEARTBEAT_FORMAT};
use standin_link::Fingerprint;
use standin_staging::durable::fsync_count;
use standin_staging::state::TargetState;
use standin_staging::ServeConfig;

/// `standin target serve` in this process (so its fsyncs are counted),
/// stopped on drop.
struct InProc {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    addr: String,
    hb_addr: String,
}

impl InProc {
    fn start(cfg: ServeConfig) -> InProc {
        let state = cfg.state_dir.clone();
        // Forget the second path's address of an earlier run: the daemon
        // records its new one.
        if let Ok(mut st) = TargetState::load_durable(&state) {
            if st.heartbeat_listen.take().is_some() {
                st.save(&state).unwrap();
            }
        }
        let (atx, arx) = std::sync::mpsc::channel();
        let (stx, srx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime().block_on(standin_staging::serve_until(
                cfg,
                move |a| {
                    let _ = atx.send(a.to_string());
                },
                async {
                    let _ = srx.await;
                },
            ))
        });
        let addr = arx
            .recv_timeout(Duration::from_secs(120))
            .expect("the in-process daemon did not report its address");
        let mut hb_addr = String::new();
        wait_until("the second path's address in state.json", || {
            let st = TargetState::load_durable(&state).unwrap();
            match st.heartbeat_listen {
                Some(a) if !a.ends_with(":0") => {
                    hb_addr = a;
                    true
                }
                _ => false,
            }
        });
        InProc {
            stop: Some(stx),
            thread: Some(thread),
            addr,
            hb_addr,
        }
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join()
                .expect("daemon thread")
                .expect("the daemon stopped with an error");
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Keys {
    _d: tempfile::TempDir,
    state: PathBuf,
    tid: PathBuf,
    tf: Fingerprint,
    aid: PathBuf,
    af: Fingerprint,
    troot: PathBuf,
}

/// The fsync counter is per process: one test at a time in this binary.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn setup() -> Keys {
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let troot = d.path().join("target-system");
    std::fs::create_dir_all(troot.join("etc")).unwrap();
    Keys {
        state: d.path().join("state"),
        _d: d,
        tid,
        tf,
        aid,
        af,
        troot,
    }
}

fn config(k: &Keys, hold: Option<&Path>) -> ServeConfig {
    let id = standin_link::identity::load(&k.tid).unwrap();
    let mut cfg = ServeConfig::new("127.0.0.1:0".into(), k.state.clone(), id, vec![k.af]);
    cfg.heartbeat_listen = Some("127.0.0.1:0".into());
    cfg.heartbeat_flush = Duration::from_millis(200);
    cfg.target_root = k.troot.clone();
    cfg.monitor.snapshot_every = None;
    cfg.hold_apply_while = hold.map(Path::to_path_buf);
    cfg
}

fn beat(sent: i64, seq: u64) -> Message {
    Message::Heartbeat(Heartbeat {
        sent_unix_ms: sent,
        source_seq: seq,
        format: HEARTBEAT_FORMAT,
        interval_ms: Some(300),
        ..Default::default()
    })
}

fn second_cfg(cfg: &LinkConfig, hb_addr: &str) -> LinkConfig {
    let mut c = cfg.clone();
    c.target = hb_addr.to_string();
    c
}

/// (last heartbeat ms, link ms, second ms) of a status.
fn times(s: &standin_link::status::Status) -> (Option<i64>, Option<i64>, Option<i64>) {
    let path = |n: &str| {
        s.heartbeat_paths
            .iter()
            .find(|p| p.name == n)
            .map(|p| p.last_heartbeat_unix_ms)
    };
    (s.last_heartbeat_unix_ms, path("link"), path("second"))
}

fn local_status(state: &Path) -> standin_link::status::Status {
    standin_staging::status::from_state_dir(state, &Default::default()).unwrap()
}

#[test]
fn heartbeats_cost_no_fsync_and_survive_a_daemon_restart() {
    let _one = serial();
    let k = setup();
    let daemon = InProc::start(config(&k, None));
    let cfg = agent_config(&daemon.addr, &k.aid, k.tf);
    let (sets, _) = history(1);
    const ROUNDS: i64 = 100;
    let rt = runtime();
    let (live, fsyncs, apply_fsyncs) = rt.block_on(async {
        let mut agent = connect(&cfg, Role::Agent).await.unwrap();
        let mut second = connect(&second_cfg(&cfg, &daemon.hb_addr), Role::Heartbeat)
            .await
            .unwrap();
        let before = fsync_count();
        for i in 0..ROUNDS {
            for (c, sent) in [(&mut agent, 2 * i), (&mut second, 2 * i + 1)] {
                let r = c.request(&beat(sent, 0)).await.unwrap();
                assert!(matches!(r, Message::Ack(_)), "{r:?}");
            }
        }
        let fsyncs = fsync_count() - before;
        let live = query_status(&cfg).await.unwrap();
        // The durable part is still fsynced: one change set applied.
        let before = fsync_count();
        let cs = ChangeSet {
            seq: 1,
            created_unix_ms: 1,
            records: sets[0].clone(),
        };
        let r = agent
            .request(&Message::ChangeSet(Box::new(cs)))
            .await
            .unwrap();
        assert!(matches!(r, Message::Ack(a) if a.seq == 1), "{r:?}");
        (live, fsyncs, fsync_count() - before)
    });
    assert_eq!(
        fsyncs,
        0,
        "{} heartbeats caused {fsyncs} fsyncs",
        2 * ROUNDS
    );
    assert!(
        apply_fsyncs >= 2,
        "an applied change set made {apply_fsyncs} fsyncs"
    );
    assert_eq!(
        TargetState::load_durable(&k.state)
            .unwrap()
            .last_applied_seq,
        1
    );
    let (last, link, second) = times(&live);
    assert!(
        last.is_some() && link.is_some() && second.is_some(),
        "{live:?}"
    );
    assert_eq!(last, second, "the last heartbeat came on the second path");

    // The state directory shows the same times (written within the flush interval).
    wait_until("the heartbeat times in the state directory", || {
        times(&local_status(&k.state)) == (last, link, second)
    });
    let hb = TargetState::load(&k.state).unwrap().last_heartbeat.unwrap();
    assert_eq!(hb.heartbeat.sent_unix_ms, 2 * ROUNDS - 1);

    // Restart: the same times, from the file and from the new daemon.
    daemon.stop();
    assert_eq!(times(&local_status(&k.state)), (last, link, second));
    let daemon = InProc::start(config(&k, None));
    let cfg = agent_config(&daemon.addr, &k.aid, k.tf);
    let after = rt.block_on(query_status(&cfg)).unwrap();
    assert_eq!(times(&after), (last, link, second), "{after:?}");
    assert_eq!(times(&local_status(&k.state)), (last, link, second));
    assert_eq!(after.last_applied_seq, 1);
    let text = String::from_utf8(
        run_ok(
            standin().args(["status", "--state-dir"]).arg(&k.state),
            None,
        )
        .stdout,
    )
    .unwrap();
    assert!(text.contains("link") && text.contains("second"), "{text}");
    daemon.stop();
}

#[test]
fn a_second_path_heartbeat_is_recorded_while_an_apply_holds_the_store() {
    let _one = serial();
    let k = setup();
    let hold = k.state.with_file_name("hold");
    let held = k.state.with_file_name("hold.held");
    std::fs::write(&hold, b"").unwrap();
    let daemon = InProc::start(config(&k, Some(&hold)));
    let cfg = agent_config(&daemon.addr, &k.aid, k.tf);
    let (sets, _) = history(1);
    let rt = runtime();
    let mut agent = rt.block_on(async {
        let mut agent = connect(&cfg, Role::Agent).await.unwrap();
        let r = agent.request(&beat(1, 0)).await.unwrap();
        assert!(matches!(r, Message::Ack(_)), "{r:?}");
        let cs = ChangeSet {
            seq: 1,
            created_unix_ms: 1,
            records: sets[0].clone(),
        };
        agent.send(&Message::ChangeSet(Box::new(cs))).await.unwrap();
        agent
    });
    wait_until("the apply to be held", || held.exists());
    let sent = standin_staging::state::now_ms();
    rt.block_on(async {
        let mut second = connect(&second_cfg(&cfg, &daemon.hb_addr), Role::Heartbeat)
            .await
            .unwrap();
        // Bounded only to turn a deadlock into a failure.
        let r = tokio::time::timeout(Duration::from_secs(120), second.request(&beat(sent, 1)))
            .await
            .expect("the heartbeat waited for the apply that holds the store")
            .unwrap();
        assert!(matches!(r, Message::Ack(a) if a.seq == 0), "{r:?}");
    });
    let mut seen = serde_json::Value::Null;
    wait_until("the second path in `standin status --state-dir`", || {
        let out = run_ok(
            standin()
                .args(["status", "--json", "--state-dir"])
                .arg(&k.state),
            None,
        );
        seen = serde_json::from_slice(&out.stdout).unwrap();
        seen["heartbeat_paths"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == "second"))
            && seen["source_seq"] == 1
    });
    // Still held: nothing applied yet.
    assert!(held.exists());
    assert_eq!(seen["last_applied_seq"], 0, "{seen:#}");
    let second = seen["heartbeat_paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "second")
        .unwrap();
    assert!(
        second["last_heartbeat_unix_ms"].as_i64().unwrap() >= sent,
        "{seen:#}"
    );

    // Released: the change set applies and is acknowledged.
    std::fs::remove_file(&hold).unwrap();
    rt.block_on(async {
        let r = agent.recv().await.unwrap();
        assert!(matches!(r, Message::Ack(a) if a.seq == 1), "{r:?}");
    });
    assert_eq!(
        TargetState::load_durable(&k.state)
            .unwrap()
            .last_applied_seq,
        1
    );
    daemon.stop();
}
