//! A target daemon killed (kill -9) half way through a change set, then
//! `standin failover --target-root` without restarting the daemon: the
//! failover finishes the journaled set first, so the swapped system equals
//! the source as of one sequence number (never a torn mix), and that number
//! is the one the failover records. `standin snapshot take` does the same.
//! Compared independently of standin's digests (content, modes, symlinks).
//! Needs root (failover).

mod link_support;

#[path = "failover_support/mod.rs"]
mod failover_support;

use std::path::Path;

use link_support::common::{require_root, run_ok, standin, tempdir};
use link_support::*;
use standin_agent::link::Sender;

const SETS: u64 = 24;

/// Runs killed by the hold inside an apply (the rest kill at random).
const HELD: usize = 2;

/// Names the history's change sets use at the top of the tree (`tmp` only
/// exists half way through a set).
const NAMES: &[&str] = &["d", "f0", "f1", "f2", "f3", "f4", "h", "l", "tmp"];

/// The part of a tree the history writes.
fn staged_part(root: &Path) -> Tree {
    read_tree(root)
        .into_iter()
        .filter(|(k, _)| NAMES.contains(&k.split('/').next().unwrap_or("")))
        .collect()
}

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

fn pending(state: &Path) -> u64 {
    standin_staging::store::journal_backlog(&state.join("journal"), applied(state)).0
}

/// What both tests share: identities, the history and its states, a runtime.
struct Setup {
    tid: std::path::PathBuf,
    tf: standin_link::Fingerprint,
    aid: std::path::PathBuf,
    af: standin_link::Fingerprint,
    sets: Vec<Vec<standin_builder::changeset::Record>>,
    states: Vec<Tree>,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn new(base: &Path) -> Setup {
        let (tid, tf) = keys(base, "target");
        let (aid, af) = keys(base, "agent");
        let (sets, states) = history(SETS);
        Setup {
            tid,
            tf,
            aid,
            af,
            sets,
            states,
            rt: runtime(),
        }
    }

    /// One run: a daemon with its state in `state` is sent every set and
    /// killed -9, half way through the apply of a random set when `held`
    /// (the hook's file `hold`), else at a random moment. Returns whether
    /// the replica it left is torn (it must be when `held`).
    fn send_and_kill(
        &self,
        state: &Path,
        log: &Path,
        hold: &Path,
        held: bool,
        rng: &mut u64,
    ) -> bool {
        let mut daemon = if held {
            let seq = 2 + xorshift(rng) % (SETS - 2);
            start_held_mid_apply(state, &self.tid, &[self.af], log, hold, seq)
        } else {
            Daemon::start(state, &self.tid, &[self.af], "127.0.0.1:0", log)
        };
        let sender = self
            .rt
            .block_on(Sender::start(agent_config(
                &daemon.addr,
                &self.aid,
                self.tf,
            )))
            .unwrap();
        for r in &self.sets {
            sender.send(r.clone()).unwrap();
        }
        if held {
            kill_mid_apply(&mut daemon, hold);
        } else {
            kill_at_random_moment(&mut daemon, &sender, rng, SETS);
        }
        self.rt.block_on(sender.close());
        let torn = !self.states.contains(&read_tree(&replica(state)));
        assert!(
            torn || !held,
            "{}: killed half way through a set's apply, yet the replica is whole",
            state.display()
        );
        torn
    }
}

#[test]
fn failover_after_kill_dash_nine_mid_apply_swaps_a_consistent_prefix() {
    require_root();
    let d = tempdir();
    let setup = Setup::new(d.path());
    let states = &setup.states;
    let mut rng = seed();
    eprintln!("STANDIN_TEST_SEED={rng}");
    let (mut torn_seen, mut runs) = (0, 0);
    let mut seqs = Vec::new();
    // Bounded: the first HELD runs kill the daemon while the hook holds it
    // half way through a set's apply (a torn replica every time); the rest
    // kill at random moments (between sets as well as inside one).
    while runs < 8 {
        runs += 1;
        let base = d.path().join(format!("run{runs}"));
        let troot = base.join("root");
        std::fs::create_dir_all(&troot).unwrap();
        failover_support::make_target_system(&troot);
        let state = troot.join("var/lib/standin");
        let log = base.join("daemon.log");
        let hold = base.join("hold");
        // What the dead daemon left: a journaled set, maybe half applied.
        let torn = setup.send_and_kill(&state, &log, &hold, runs <= HELD, &mut rng);
        if torn {
            torn_seen += 1;
            assert!(
                pending(&state) > 0,
                "run {runs}: the replica is torn but nothing is journaled"
            );
        }

        // Fail over without restarting the daemon (the source is gone).
        let out = run_ok(
            standin()
                .args(["failover", "--immediate", "--yes", "--no-reboot", "--json"])
                .arg("--state-dir")
                .arg(&state)
                .arg("--target-root")
                .arg(&troot),
            None,
        );
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rep["record"]["state"], "complete", "run {runs}: {rep}");
        let seq = rep["record"]["seq"].as_u64().unwrap();
        assert_eq!(seq, applied(&state), "run {runs}: recorded sequence");
        assert_eq!(
            pending(&state),
            0,
            "run {runs}: journal left after failover"
        );
        assert_eq!(
            staged_part(&troot),
            states[seq as usize],
            "run {runs}: the swapped system is not the source as of change set {seq} (torn before: {torn})"
        );
        // The target's own system went to rollback, the staged one is in place.
        assert!(troot.join("boot/vmlinuz-6.1.0-target").exists());
        seqs.push((seq, torn));
    }
    eprintln!("failover sequence numbers (seq, torn before): {seqs:?}");
    assert!(
        torn_seen >= HELD,
        "{torn_seen} torn replicas in {runs} runs"
    );
}

#[test]
fn snapshot_take_after_kill_dash_nine_mid_apply_holds_whole_sets() {
    require_root();
    let d = tempdir();
    let setup = Setup::new(d.path());
    let states = &setup.states;
    let mut rng = seed() ^ 0x9e37_79b9;
    let (mut torn_seen, mut runs) = (0, 0);
    // Bounded; the first HELD runs kill inside a set's apply (as above).
    while runs < 5 {
        runs += 1;
        let state = d.path().join(format!("state{runs}"));
        let log = d.path().join(format!("daemon{runs}.log"));
        let hold = d.path().join(format!("hold{runs}"));
        let torn = setup.send_and_kill(&state, &log, &hold, runs <= HELD, &mut rng);
        torn_seen += torn as usize;
        let out = run_ok(
            standin()
                .args(["snapshot", "take", "--json", "--state-dir"])
                .arg(&state),
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = v["id"].as_str().unwrap_or_else(|| panic!("{v}"));
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(seq, applied(&state), "run {runs}");
        assert_eq!(
            read_tree(&state.join("snapshots").join(id).join("root")),
            states[seq as usize],
            "run {runs}: snapshot {id} is not the source as of change set {seq}"
        );
    }
    assert!(
        torn_seen >= HELD,
        "{torn_seen} torn replicas in {runs} runs"
    );
}
