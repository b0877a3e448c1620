//! The lag threshold end to end (loopback, root): `standin protect` with
//! the second heartbeat path against a daemon whose apply is held by its
//! test hook (`STANDIN_TEST_HOLD_APPLY`). A change on the source then waits
//! unapplied, real lag grows past `--lag-warning 2`, and `standin status
//! --json` (from the state directory and over the network) says Warning
//! with the lag reason; released, the lag drains and the warning clears.

mod protect_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use protect_support::common::{bin, require_root, run_ok, standin, tempdir};
use protect_support::*;

fn status_dir(state: &Path) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args(["status", "--json", "--lag-warning", "2", "--state-dir"])
            .arg(state),
        None,
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn status_net(addr: &str, identity: &Path, trust: &str) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args(["status", "--json", "--target", addr, "--identity"])
            .arg(identity)
            .args(["--trust", trust]),
        None,
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn lag_warning(st: &serde_json::Value) -> bool {
    st["state"] == "warning"
        && st["lag_seconds"].as_f64().unwrap_or(0.0) > 2.0
        && st["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| is_lag(w.as_str().unwrap_or(""))))
        && st["reason"]
            .as_str()
            .is_some_and(|r| r.contains("is above 2 s"))
}

fn is_lag(w: &str) -> bool {
    w.starts_with("replication lag ") && w.ends_with(" s is above 2 s")
}

#[test]
fn lag_above_the_threshold_is_a_warning_until_it_drains() {
    require_root();
    let d = tempdir();
    let src = status_source(d.path());
    let troot = target_root(d.path(), &src, true);
    let (tid, tf) = keys(d.path(), "target");
    let (sid, sf) = keys(d.path(), "source");
    let state = d.path().join("state");
    let hold: PathBuf = d.path().join("hold");
    let held = d.path().join("hold.held");
    let dlog = d.path().join("daemon.log");
    let alog = d.path().join("agent.log");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec "$@" --heartbeat-listen 127.0.0.1:0 --lag-warning 2 --snapshot-every 0"#)
        .arg("sh")
        .arg(bin())
        .env("STANDIN_TEST_HOLD_APPLY", &hold);
    let daemon = Daemon::start_cmd(cmd, &state, &tid, &sf, "127.0.0.1:0", &troot, &dlog);
    let mut hb_addr = String::new();
    wait_for("the second path's address", 300, &[&dlog], || {
        let st = standin_staging::state::TargetState::load(&state).unwrap();
        st.heartbeat_listen
            .map(|a| hb_addr = a)
            .is_some_and(|_| !hb_addr.ends_with(":0"))
    });
    let mut agent = protect_with_second_path(standin(), &daemon.addr, &sid, &tf, &src, &hb_addr)
        .env("STANDIN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&alog).unwrap())
        .spawn()
        .unwrap();
    let logs = [dlog.as_path(), alog.as_path()];
    wait_for("Protected", 600, &logs, || {
        assert!(agent.try_wait().unwrap().is_none(), "protect exited");
        let st = status_dir(&state);
        st["state"] == "protected"
            && st["heartbeat_paths"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
    });

    // Hold the apply; a change on the source waits unapplied.
    std::fs::write(&hold, b"").unwrap();
    std::fs::write(src.join("data/new"), b"waits for the apply\n").unwrap();
    wait_for("the apply to be held", 300, &logs, || held.exists());
    let mut seen = serde_json::Value::Null;
    wait_for(
        "a lag Warning in `standin status --state-dir`",
        300,
        &logs,
        || {
            seen = status_dir(&state);
            lag_warning(&seen)
        },
    );
    assert!(seen["source_seq"].as_u64() > seen["last_applied_seq"].as_u64());
    assert_eq!(seen["failover_condition_met"], false, "{seen:#}");
    wait_for("a lag Warning over the network", 300, &logs, || {
        seen = status_net(&daemon.addr, &sid, &tf);
        lag_warning(&seen)
    });
    // The text form names it too.
    let text = String::from_utf8(
        run_ok(
            standin()
                .args(["status", "--lag-warning", "2", "--state-dir"])
                .arg(&state),
            None,
        )
        .stdout,
    )
    .unwrap();
    assert!(text.contains("is above 2 s"), "{text}");
    assert!(held.exists(), "the apply was released early");

    // Released: the lag drains and the warning clears.
    std::fs::remove_file(&hold).unwrap();
    wait_for(
        "the lag to drain and the warning to clear",
        600,
        &logs,
        || {
            let st = status_dir(&state);
            let net = status_net(&daemon.addr, &sid, &tf);
            [st, net].iter().all(|s| {
                s["state"] == "protected"
                    && s["lag_seconds"].as_f64() == Some(0.0)
                    && s["source_seq"] == s["last_applied_seq"]
                    && s["warnings"].as_array().is_some_and(|w| w.is_empty())
                    && s["reason"].is_null()
            })
        },
    );
    assert_eq!(
        std::fs::read(replica(&state, "web1").join("data/new")).unwrap(),
        b"waits for the apply\n"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
