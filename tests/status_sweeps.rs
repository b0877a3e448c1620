//! The agent's replication counters reach the target's status through the
//! heartbeats: a checksum sweep that repairs a path change capture missed
//! shows up in `standin status --json` with the count and the path (root).

mod replicate_support;

use std::time::Duration;

use replicate_support::common::{require_root, run_ok, standin};
use replicate_support::*;
use standin_agent::replicate::ReplicateOptions;

#[test]
fn sweep_repairs_reach_the_targets_status() {
    require_root();
    let mut h = Harness::start_with(
        |_| {},
        ReplicateOptions {
            sweep_interval: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        |c, src| c.ignore.push(src.join("unseen")),
    );
    std::fs::create_dir(h.src.join("unseen")).unwrap();
    std::fs::write(h.src.join("unseen/file"), "the watcher never saw this").unwrap();
    h.converge();
    let state = h.state.clone();
    let status = || -> serde_json::Value {
        let out = run_ok(
            standin()
                .args(["status", "--json", "--state-dir"])
                .arg(&state),
            None,
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut last = serde_json::Value::Null;
    wait_until("the sweep's repairs in status", || {
        last = status();
        last["sweeps"].as_u64().unwrap_or(0) >= 1
            && last["sweep_repairs"].as_u64().unwrap_or(0) >= 1
            && last["last_sweep_unix_ms"].as_i64().unwrap_or(0) > 0
            && last["last_sweep_repaired_paths"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p == "/unseen" || p == "/unseen/file"))
    });
    let r = h.stop();
    assert!(r.sweeps >= 1 && r.sweep_repairs >= 1, "{r:?}");
    assert!(
        last["sweep_repairs"].as_u64().unwrap() <= r.sweep_repairs,
        "{last:#}"
    );
    assert_eq!(last["queue_full_fallbacks"], 0, "{last:#}");
}
