//! The protection agent killed (kill -9) during a workload, files changed
//! while it is down, then `standin protect` started again: it runs a
//! difference mirror (it cannot know what changed while it was down),
//! numbers its change sets on from the target's last applied one (no gap,
//! no reset), and the replica converges (compared independently: lstat
//! fields, xattrs, content, hard-link groups). Over loopback; needs root.

mod protect_support;

use std::process::{Child, Stdio};
use std::time::Duration;

use protect_support::common::{minimal_system, require_root, standin, tempdir};
use protect_support::*;

fn start_agent(
    d: &std::path::Path,
    addr: &str,
    sid: &std::path::Path,
    tf: &str,
    src: &std::path::Path,
    log: &str,
) -> Child {
    standin()
        .args(["protect", "--target", addr, "--identity"])
        .arg(sid)
        .args(["--trust", tf, "--root"])
        .arg(src)
        .arg("--state-dir")
        .arg(d.join("agent"))
        .args(["--source-id", "web1", "--json"])
        .env("STANDIN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join(log)).unwrap())
        .spawn()
        .unwrap()
}

/// Wait (bounded) until the replica's paths, contents and modes equal the source's.
fn wait_converged(src: &std::path::Path, replica: &std::path::Path) -> bool {
    for _ in 0..600 {
        let (a, b) = (snapshot(src), snapshot(replica));
        if a.nodes.keys().eq(b.nodes.keys())
            && a.nodes.iter().all(|(p, n)| {
                b.nodes
                    .get(p)
                    .is_some_and(|m| m.sha256 == n.sha256 && m.mode == n.mode)
            })
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn wait_protected(state: &std::path::Path, agent: &mut Child, log: &dyn Fn() -> String) {
    for _ in 0..1200 {
        if status_json(state)["state"] == "protected" {
            return;
        }
        assert!(
            agent.try_wait().unwrap().is_none(),
            "protect exited early:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never protected:\n{}", log());
}

/// The `last_applied` of each "replication link up" line of an agent log.
fn link_up_numbers(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("replication link up"))
        .filter_map(|l| {
            let rest = &l[l.find("last_applied=")? + "last_applied=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn agent_killed_mid_workload_and_restarted_resumes_numbering_and_converges() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    minimal_system(&src);
    std::fs::create_dir_all(src.join("var/work")).unwrap();
    std::fs::write(src.join("var/big"), vec![5u8; 4 << 20]).unwrap();
    let (Sides { sid, tf, state, .. }, daemon) = loopback(d.path(), &src, true);
    let log1 = || std::fs::read_to_string(d.path().join("agent1.log")).unwrap_or_default();
    let mut agent = start_agent(d.path(), &daemon.addr, &sid, &tf, &src, "agent1.log");
    wait_protected(&state, &mut agent, &log1);
    std::thread::sleep(Duration::from_millis(300));

    // A workload; the agent dies (kill -9) in the middle of it.
    for i in 0..40u32 {
        std::fs::write(
            src.join(format!("var/work/f{i}")),
            format!("file {i}\n").repeat(i as usize * 50 + 1),
        )
        .unwrap();
        if i == 20 {
            agent.kill().unwrap(); // SIGKILL
            agent.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Changes while the agent is down.
    std::fs::remove_file(src.join("var/work/f3")).unwrap();
    std::fs::rename(src.join("var/work/f4"), src.join("etc/f4-moved")).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("var/big"))
            .unwrap();
        f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
    }
    std::fs::hard_link(src.join("var/work/f5"), src.join("etc/f5-link")).unwrap();
    std::os::unix::fs::symlink("work/f6", src.join("var/f6-link")).unwrap();

    // The target has applied everything it received; its number then.
    let mut before = 0;
    for _ in 0..100 {
        let st = status_json(&state);
        if st["journal_pending"] == 0 {
            before = st["last_applied_seq"].as_u64().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        before > 0,
        "nothing was applied before the kill:\n{}",
        log1()
    );

    // Restart: difference mirror, numbering from the target's number, converge.
    let log2 = || std::fs::read_to_string(d.path().join("agent2.log")).unwrap_or_default();
    let agent = start_agent(d.path(), &daemon.addr, &sid, &tf, &src, "agent2.log");
    let replica = replica(&state, "web1");
    assert!(
        wait_converged(&src, &replica),
        "the replica did not converge after the restart:\n{}\n{}",
        log2(),
        daemon.log_text()
    );
    // Changes after the restart replicate too.
    std::fs::write(src.join("var/work/after"), "after the restart\n").unwrap();
    assert!(
        wait_converged(&src, &replica),
        "a change after the restart did not arrive:\n{}",
        log2()
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = status_json(&state)["last_applied_seq"].as_u64().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = agent.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", log2());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mirror"]["complete"], true, "{v:#}");
    assert_eq!(
        v["mirror"]["mode"], "checksum",
        "a difference mirror: {v:#}"
    );
    assert_eq!(
        v["mirror"]["first_seq"].as_u64(),
        Some(before + 1),
        "the restarted agent's first change set does not follow the target's number {before}: {v:#}"
    );
    assert_same_tree(&src, &replica);

    // Numbering: the restarted agent started right after the target's number.
    let ups = link_up_numbers(&log2());
    assert_eq!(
        ups.first().copied(),
        Some(before),
        "the restarted agent did not resume from the target's last applied number {before}:\n{}",
        log2()
    );
    assert!(
        after > before,
        "no change set applied after the restart ({before} -> {after})"
    );
    let dlog = daemon.log_text();
    assert!(
        !dlog.contains("out of order"),
        "the target saw change sets out of order:\n{dlog}"
    );
}
