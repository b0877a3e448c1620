//! Change sets over the link: journaled, applied in order, recorded in
//! state.json; status from the state directory and over the network; and
//! kill -9 of the daemon at random moments (20 runs) leaves a consistent prefix that
//! converges when the agent resumes.

mod link_support;

use link_support::common::{run_ok, standin, stdout, tempdir};
use link_support::*;
use standin_agent::link::Sender;
use standin_link::message::{MirrorEnd, MirrorMode, MirrorStart};

const SETS: u64 = 24;

#[test]
fn change_sets_apply_in_order_and_status_reports_protected() {
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let state = d.path().join("state");
    let daemon = Daemon::start(
        &state,
        &tid,
        &[af],
        "127.0.0.1:0",
        &d.path().join("daemon.log"),
    );
    let (sets, states) = history(SETS);
    let rt = runtime();
    let total: u64 = sets.iter().flatten().map(|r| r.data_len()).sum();
    let sender = rt
        .block_on(Sender::start(agent_config(&daemon.addr, &aid, tf)))
        .unwrap();
    rt.block_on(sender.mirror_start(MirrorStart {
        mirror_id: "m1".into(),
        mode: MirrorMode::Full,
        total_entries: 7,
        total_bytes: total,
        first_seq: 1,
    }))
    .unwrap();

    // Half the sets, then status says Synchronizing with a percentage.
    for r in &sets[..SETS as usize / 2] {
        sender.send(r.clone()).unwrap();
    }
    rt.block_on(sender.wait_acked(SETS / 2)).unwrap();
    assert_eq!(applied(&state), SETS / 2);
    assert_eq!(read_tree(&replica(&state)), states[SETS as usize / 2]);
    let out = run_ok(
        standin()
            .args(["status", "--json", "--state-dir"])
            .arg(&state),
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["state"], "synchronizing", "{v}");
    let pct = v["mirror_percent"].as_f64().unwrap();
    assert!(pct > 0.0 && pct < 100.0, "{v}");

    for r in &sets[SETS as usize / 2..] {
        sender.send(r.clone()).unwrap();
    }
    rt.block_on(sender.wait_acked(SETS)).unwrap();
    let done = rt
        .block_on(sender.mirror_end(MirrorEnd {
            mirror_id: "m1".into(),
            last_seq: SETS,
            root_digest: None,
        }))
        .unwrap();
    assert!(done.complete, "{done:?}");
    assert_eq!(read_tree(&replica(&state)), states[SETS as usize]);
    assert_eq!(applied(&state), SETS);
    assert_eq!(
        std::fs::read_dir(state.join("journal")).unwrap().count(),
        0,
        "journal not emptied"
    );

    // Heartbeats arrive and the replica is synced (the daemon records the
    // mirror complete on disk only then); status over the network and from
    // the state directory agree.
    wait_until("a heartbeat and the mirror synced", || {
        // state.json with the heartbeat times of heartbeats.json.
        let v = serde_json::to_value(standin_staging::state::TargetState::load(&state).unwrap())
            .unwrap();
        let hb = &v["last_heartbeat"]["heartbeat"];
        hb["source_seq"].as_u64() == Some(SETS)
            && hb["queue_sets"].as_u64() == Some(0)
            && v["mirror_complete"] == true
    });
    let net = run_ok(
        standin()
            .args(["status", "--json", "--target", &daemon.addr, "--identity"])
            .arg(&aid)
            .args(["--trust", &tf.to_string()]),
        None,
    );
    let local = run_ok(
        standin()
            .args(["status", "--json", "--state-dir"])
            .arg(&state),
        None,
    );
    for out in [net, local] {
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["state"], "protected", "{v}");
        assert_eq!(v["last_applied_seq"], SETS);
        assert_eq!(v["mirror_percent"], 100.0);
        assert_eq!(v["source_id"], "src1");
        assert_eq!(v["queue_sets"], 0);
        for key in [
            "lag_seconds",
            "lag_bytes",
            "queue_bytes",
            "last_heartbeat_unix_ms",
            "heartbeat_age_seconds",
            "reason",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert!(v["last_heartbeat_unix_ms"].as_i64().unwrap() > 0);
    }
    let text = stdout(&run_ok(
        standin().args(["status", "--state-dir"]).arg(&state),
        None,
    ));
    assert!(
        text.starts_with("state: Protected") && text.contains("applied 24, received 24"),
        "{text}"
    );
    let stats = sender.stats();
    assert_eq!(stats.last_acked, SETS);
    assert!(
        stats.bytes_sent < stats.payload_bytes_sent,
        "compression did not shrink anything: {stats:?}"
    );
    rt.block_on(sender.close());
}

/// A seed from the clock for the random kill moments (printed for reproduction).
fn seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    std::env::var("STANDIN_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(s | 1)
}

#[test]
fn kill_dash_nine_leaves_a_consistent_prefix_and_converges() {
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let (_, nobody) = keys(d.path(), "nobody");
    let (sets, states) = history(SETS);
    let rt = runtime();
    let mut rng = seed();
    eprintln!("STANDIN_TEST_SEED={rng}");
    let mut prefixes = Vec::new();
    let (mut replays, mut torn) = (0, 0);
    for run in 0..20 {
        let state = d.path().join(format!("state{run}"));
        let log = d.path().join(format!("daemon{run}.log"));
        let mut daemon = Daemon::start(&state, &tid, &[af], "127.0.0.1:0", &log);
        let addr = daemon.addr.clone();
        let sender = rt
            .block_on(Sender::start(agent_config(&addr, &aid, tf)))
            .unwrap();
        for r in &sets {
            sender.send(r.clone()).unwrap();
        }
        kill_at_random_moment(&mut daemon, &sender, &mut rng, SETS);

        // Restart trusting nobody, so the agent cannot reconnect yet: what
        // recovery left must be exactly the tree as of the recorded sequence.
        let check = Daemon::start(&state, &tid, &[nobody], &addr, &log);
        let at = applied(&state);
        assert_eq!(
            read_tree(&replica(&state)),
            states[at as usize],
            "run {run}: replica is not the tree as of change set {at}\nlog:\n{}",
            check.log_text()
        );
        assert_eq!(
            listing(&state.join("journal")),
            vec![],
            "run {run}: journal left over"
        );
        prefixes.push(at);
        let text = check.log_text();
        replays += text.matches("replaying journaled change set").count();
        torn += text.matches("discarding torn").count();
        drop(check);

        // Restart for real: the agent reconnects by itself and resumes.
        let daemon = Daemon::start(&state, &tid, &[af], &addr, &log);
        rt.block_on(sender.wait_acked(SETS)).unwrap();
        assert_eq!(
            read_tree(&replica(&state)),
            states[SETS as usize],
            "run {run}: did not converge"
        );
        assert_eq!(applied(&state), SETS);
        if at < SETS {
            assert!(
                sender.stats().reconnects >= 1,
                "run {run}: converged without reconnecting?"
            );
        }
        rt.block_on(sender.close());
        drop(daemon);
    }
    eprintln!(
        "sequence numbers found after kill -9: {prefixes:?}; journal replays: {replays}, torn entries discarded: {torn}"
    );
}

#[test]
fn the_agent_waits_for_a_target_that_starts_later() {
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let (xid, _) = keys(d.path(), "stranger");
    let state = d.path().join("state");
    // Find a free port, then start the daemon on it a little later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let rt = runtime();
    let starter = {
        let (state, tid, addr, log) = (
            state.clone(),
            tid.clone(),
            addr.clone(),
            d.path().join("daemon.log"),
        );
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(700));
            Daemon::start(&state, &tid, &[af], &addr, &log)
        })
    };
    let sender = rt
        .block_on(Sender::start_with_backoff(
            agent_config(&addr, &aid, tf),
            Some(200),
        ))
        .expect("the agent should connect once the target is up");
    let daemon = starter.join().unwrap();
    let (sets, states) = history(3);
    for r in sets {
        sender.send(r).unwrap();
    }
    rt.block_on(sender.wait_acked(3)).unwrap();
    assert_eq!(read_tree(&replica(&state)), states[3]);
    // A refused certificate is not retried (bounded, in case the refusal
    // arrives as a bare reset, which looks transient).
    let err = rt
        .block_on(Sender::start_with_backoff(
            agent_config(&daemon.addr, &xid, tf),
            Some(50),
        ))
        .err()
        .expect("a stranger must be refused");
    assert!(!standin_agent::link::is_retryable(&err), "{err:#}");
    rt.block_on(sender.close());
}

#[test]
fn a_full_memory_queue_spills_to_disk_and_nothing_is_lost() {
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let state = d.path().join("state");
    let log = d.path().join("daemon.log");
    let mut daemon = Daemon::start(&state, &tid, &[af], "127.0.0.1:0", &log);
    let addr = daemon.addr.clone();
    let spill = d.path().join("agent-queue");
    let mut cfg = agent_config(&addr, &aid, tf);
    cfg.queue_max_bytes = 200_000;
    cfg.spill_dir = Some(spill.clone());
    cfg.spill_max_bytes = 3_000_000;
    let rt = runtime();
    let sender = rt.block_on(Sender::start(cfg)).unwrap();
    // The target goes away; the agent keeps queueing, in memory then on disk.
    daemon.kill9();
    let (sets, states) = history(9);
    let mut queued = 0;
    let mut full = None;
    for r in &sets {
        match sender.send(r.clone()) {
            Ok(_) => queued += 1,
            Err(e) => {
                full = Some(e.to_string());
                break;
            }
        }
    }
    let stats = sender.stats();
    assert!(stats.spilled_sets > 0, "nothing spilled: {stats:?}");
    let on_disk = std::fs::read_dir(&spill).unwrap().count() as u64;
    assert_eq!(on_disk, stats.spilled_sets);
    // A bounded disk queue says so instead of growing without limit.
    let full = full.expect("3 MB of spill should not hold 9 sets of this history");
    assert!(
        full.contains("queue is full") && full.contains("difference mirror"),
        "{full}"
    );
    assert!(
        stats.queue_bytes <= 200_000 + 3_000_000 + 1_000_000,
        "{stats:?}"
    );

    // The target comes back: everything queued arrives, and the spill is cleaned up.
    let _daemon = Daemon::start(&state, &tid, &[af], &addr, &log);
    rt.block_on(sender.wait_acked(queued)).unwrap();
    assert_eq!(read_tree(&replica(&state)), states[queued as usize]);
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
    let stats = sender.stats();
    assert_eq!(
        (stats.queue_sets, stats.spilled_sets, stats.spilled_bytes),
        (0, 0, 0)
    );
    rt.block_on(sender.close());
}

/// A change set the target refuses (it deletes the root) must not
/// turn into a tight reconnect-and-resend loop: the agent backs off between
/// sessions that end at once without an acknowledgement.
#[test]
fn a_refused_change_set_is_resent_with_backoff() {
    use standin_builder::changeset::Record;
    use standin_builder::Kind;
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let state = d.path().join("state");
    let daemon = Daemon::start(
        &state,
        &tid,
        &[af],
        "127.0.0.1:0",
        &d.path().join("daemon.log"),
    );
    let rt = runtime();
    let mut cfg = agent_config(&daemon.addr, &aid, tf);
    cfg.backoff_max = std::time::Duration::from_secs(1);
    let sender = rt.block_on(Sender::start(cfg)).unwrap();
    sender
        .send(vec![
            Record::Create(entry("f", Kind::File)),
            // Deleting the root is refused whole, before the set is journaled.
            Record::Delete { path: Vec::new() },
        ])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let stats = sender.stats();
    assert_eq!(applied(&state), 0, "the refused set must not be applied");
    // Without backoff this loop ran thousands of times in a few seconds;
    // with 50 ms doubling to 1 s it is a handful, whatever the load.
    assert!(
        stats.reconnects <= 15,
        "{} reconnects in 4 s: the refusal is resent in a tight loop\n{}",
        stats.reconnects,
        daemon.log_text()
    );
    assert!(
        stats.reconnects >= 1,
        "the agent should retry after the refusal ({stats:?})"
    );
    rt.block_on(sender.close());
}
