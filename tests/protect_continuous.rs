//! `standin protect` without `--once`: after the mirror, changes made on
//! the source (new file, rename across directories, a write inside a large
//! file, chmod, delete) reach the replica; SIGTERM stops it cleanly (exit
//! 0); SIGTERM during the mirror stops it too. Over loopback; needs root.

mod protect_support;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use protect_support::common::{minimal_system, require_root, tempdir};
use protect_support::*;

#[test]
fn protect_replicates_changes_after_the_mirror_until_stopped() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    minimal_system(&src);
    std::fs::create_dir_all(src.join("var/a")).unwrap();
    std::fs::create_dir_all(src.join("var/b")).unwrap();
    std::fs::write(src.join("var/a/moved"), "moves\n").unwrap();
    std::fs::write(src.join("var/gone"), "deleted later\n").unwrap();
    std::fs::write(src.join("var/large"), vec![3u8; 8 << 20]).unwrap();
    // No pause before protecting: every path above changed within a second
    // of the mirror's start, so the block index marks them unknown and
    // their first change replaces them whole; the directories holding them
    // must still get the source's mtime (they once kept the target's).
    let (Sides { sid, tf, state, .. }, daemon) = loopback(d.path(), &src, true);
    let mut agent = protect_cmd(&daemon.addr, &sid, &tf, &src)
        .arg("--state-dir")
        .arg(d.path().join("agent"))
        .args(["--source-id", "web1", "--json"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(d.path().join("agent.log")).unwrap_or_default();
    // Wait (bounded) for the mirror to complete.
    let mut protected = false;
    for _ in 0..1200 {
        if status_json(&state)["state"] == "protected" {
            protected = true;
            break;
        }
        assert!(
            agent.try_wait().unwrap().is_none(),
            "protect exited early:\n{}",
            agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        protected,
        "never protected:\n{}\n{}",
        agent_log(),
        daemon.log_text()
    );
    // Let the capture settle, then change the source.
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(src.join("var/b/new"), "created after the mirror\n").unwrap();
    std::fs::rename(src.join("var/a/moved"), src.join("var/b/moved")).unwrap();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("var/large"))
            .unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
    }
    std::fs::set_permissions(
        src.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::remove_file(src.join("var/gone")).unwrap();
    // Converges (bounded wait).
    let replica = replica(&state, "web1");
    let mut same = false;
    for _ in 0..600 {
        let (a, b) = (snapshot(&src), snapshot(&replica));
        // Directory mtimes may trail by one batch; compare after content converges.
        if a.nodes.keys().eq(b.nodes.keys())
            && a.nodes.iter().all(|(p, n)| {
                b.nodes
                    .get(p)
                    .map(|m| m.sha256 == n.sha256 && m.mode == n.mode)
                    .unwrap_or(false)
            })
        {
            same = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        same,
        "the replica did not converge:\n{}\n{}",
        agent_log(),
        daemon.log_text()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = agent.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", agent_log());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mirror"]["complete"], true);
    assert!(
        v["replication"]["sets_sent"].as_u64().unwrap() >= 1,
        "{v:#}"
    );
    assert_same_tree(&src, &replica);
}

/// SIGTERM while the mirror is still running (a bandwidth limit keeps it
/// going) stops protect with a message that says what happens next,
/// instead of being ignored until the mirror ends.
#[test]
fn sigterm_during_the_mirror_stops_protect() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    minimal_system(&src);
    // 64 MiB at 1 MiB/s: the mirror would take about a minute.
    std::fs::write(src.join("big"), vec![7u8; 64 << 20]).unwrap();
    let (Sides { sid, tf, state, .. }, daemon) = loopback(d.path(), &src, true);
    let mut agent = protect_cmd(&daemon.addr, &sid, &tf, &src)
        .args(["--source-id", "web1", "--bwlimit", "1M", "--compress", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the mirror is under way (the target has seen it start).
    let mut started = false;
    for _ in 0..150 {
        if std::fs::read_to_string(state.join("state.json"))
            .map(|s| s.contains("\"mirror_id\""))
            .unwrap_or(false)
        {
            started = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if !started {
        let _ = agent.kill();
        panic!("the mirror never started");
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    // Bounded wait for the exit; a protect that ignores the signal is killed
    // and fails the test.
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = agent.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if status.is_none() {
        let _ = agent.kill();
    }
    let out = agent.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.is_some(),
        "protect ignored SIGTERM during the mirror:\n{err}"
    );
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("stopped by a signal before replication began"),
        "{err}"
    );
}
