//! Full mirror with whole-file records: every metadata kind arrives (owners,
//! setuid/sticky modes, xattrs, an ACL, a file capability, hard links, a
//! sparse file, devices, a fifo, symlinks, a file large enough to travel in
//! extents), and a kill -9 of the target in the middle of the mirror leaves
//! at most the one file being written torn (new files of an open mirror are
//! created under their names, the default), never one with its source's
//! mtime, and none with `STANDIN_NAMED_CREATE=0`; after a restart the same
//! `protect --once` run converges to an equal tree. Over loopback; needs
//! root.

mod protect_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use protect_support::common::{minimal_system, require_root, require_tool, run_ok, tempdir};
use protect_support::*;

/// A source with every kind of entry and `files` small files of varied size.
fn make_source(src: &Path, files: usize) {
    minimal_system(src);
    for i in 0..files {
        let dir = src.join(format!("data/d{:02}", i % 40));
        std::fs::create_dir_all(&dir).unwrap();
        // Mostly incompressible content of 1..48 KiB.
        let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let len = 1024 + (i * 7919) % (47 << 10);
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    let m = src.join("meta");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("suid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(m.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(m.join("sgid"), "x").unwrap();
    std::fs::set_permissions(m.join("sgid"), std::fs::Permissions::from_mode(0o2710)).unwrap();
    std::fs::create_dir(m.join("sticky")).unwrap();
    std::fs::set_permissions(m.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(m.join("owned"), "owned by 1234:5678\n").unwrap();
    std::os::unix::fs::chown(m.join("owned"), Some(1234), Some(5678)).unwrap();
    std::fs::write(m.join("empty"), "").unwrap();
    std::fs::write(m.join("xattr"), "with xattrs\n").unwrap();
    run_ok(
        std::process::Command::new("setfattr")
            .args(["-n", "user.standin", "-v", "value"])
            .arg(m.join("xattr")),
        None,
    );
    run_ok(
        std::process::Command::new("setfacl")
            .args(["-m", "u:1000:r"])
            .arg(m.join("xattr")),
        None,
    );
    std::fs::write(m.join("cap"), "capable\n").unwrap();
    run_ok(
        std::process::Command::new("setcap")
            .arg("cap_net_bind_service=ep")
            .arg(m.join("cap")),
        None,
    );
    std::fs::write(m.join("linked"), "two names\n").unwrap();
    std::fs::hard_link(m.join("linked"), m.join("linked2")).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", m.join("symlink")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/out", m.join("dangling")).unwrap();
    run_ok(
        std::process::Command::new("mkfifo").arg(m.join("fifo")),
        None,
    );
    run_ok(
        std::process::Command::new("mknod")
            .arg(m.join("null"))
            .args(["c", "1", "3"]),
        None,
    );
    run_ok(
        std::process::Command::new("truncate")
            .args(["-s", "20M"])
            .arg(m.join("sparse")),
        None,
    );
    run_ok(
        std::process::Command::new("dd")
            .args([
                "if=/dev/urandom",
                "bs=4096",
                "count=1",
                "seek=100",
                "conv=notrunc",
                "status=none",
            ])
            .arg(format!("of={}", m.join("sparse").display())),
        None,
    );
    let big: Vec<u8> = (0..(10u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.join("big"), big).unwrap();
}

fn last_applied(state: &Path) -> u64 {
    std::fs::read_to_string(state.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["last_applied_seq"].as_u64())
        .unwrap_or(0)
}

/// The regular files of the replica of at most 8 MiB (whole-file records)
/// that are not sparse and whose content is not their source's (torn by the
/// kill): each must have an mtime other than its source's, so that no size
/// and mtime comparison takes it for finished. Every replica path exists
/// in the source (no temp names). Returns the files compared and the torn.
fn torn_files(src: &Path, replica: &Path) -> (usize, Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let mut checked = 0;
    let mut torn = Vec::new();
    let mut stack = vec![replica.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(replica).unwrap();
            let s = src.join(rel);
            let sm = std::fs::symlink_metadata(&s)
                .unwrap_or_else(|_| panic!("{} is in the replica, not the source", rel.display()));
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && sm.is_file()
                && sm.len() <= 8 << 20
                && !rel.ends_with("sparse")
            {
                checked += 1;
                if std::fs::read(&p).unwrap() != std::fs::read(&s).unwrap() {
                    let rm = std::fs::symlink_metadata(&p).unwrap();
                    assert_ne!(
                        (rm.mtime(), rm.mtime_nsec()),
                        (sm.mtime(), sm.mtime_nsec()),
                        "{} is torn after kill -9 and has its source's mtime",
                        rel.display()
                    );
                    torn.push(rel.display().to_string());
                }
            }
        }
    }
    (checked, torn)
}

#[test]
fn full_mirror_survives_kill_dash_nine_of_the_target() {
    kill_mid_mirror(true);
}

#[test]
fn full_mirror_with_unnamed_creates_survives_kill_dash_nine_without_torn_files() {
    kill_mid_mirror(false);
}

/// Kill the target half way through a full mirror, restart it, let the
/// agent finish; `named`: the daemon's default, else `STANDIN_NAMED_CREATE=0`.
fn kill_mid_mirror(named: bool) {
    require_root();
    require_tool("setfattr", "attr");
    require_tool("setfacl", "acl");
    require_tool("setcap", "libcap2-bin");
    let d = tempdir();
    let src = d.path().join("src");
    make_source(&src, 3000);
    let Sides {
        troot,
        tid,
        tf,
        sid,
        sf,
        state,
    } = Sides::new(d.path(), &src, true);
    // The daemon, with `STANDIN_NAMED_CREATE=0` unless `named`.
    let start = |listen: &str, log: &Path| {
        let mut cmd = protect_support::common::standin();
        if !named {
            cmd.env("STANDIN_NAMED_CREATE", "0");
        }
        Daemon::start_cmd(cmd, &state, &tid, &sf, listen, &troot, log)
    };
    let daemon = start("127.0.0.1:0", &d.path().join("d0.log"));
    let log = d.path().join("d.log");
    let addr = daemon.addr.clone();
    // Slowed down so that the kill lands in the middle of the data.
    let agent = protect_cmd(&addr, &sid, &tf, &src)
        .arg("--state-dir")
        .arg(d.path().join("agent"))
        .args([
            "--source-id",
            "web1",
            "--once",
            "--json",
            "--mirror",
            "full",
        ])
        .args(["--compress", "0", "--bwlimit", "20M"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(d.path().join("agent.log")).unwrap_or_default();
    let mut started = false;
    for _ in 0..6000 {
        if last_applied(&state) >= 2 {
            started = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        started,
        "no change set applied:\n{}\n{}",
        agent_log(),
        daemon.log_text()
    );
    drop(daemon); // kill -9 (Child::kill sends SIGKILL)
    let replica = replica(&state, "web1");
    let (checked, torn) = torn_files(&src, &replica);
    assert!(checked > 0, "nothing was mirrored before the kill");
    // Named: only the file being written at the kill can be torn.
    assert!(torn.len() <= named as usize, "torn after kill -9: {torn:?}");
    let at_kill = last_applied(&state);
    let st = status_json(&state);
    assert_ne!(st["state"], "protected", "{st:#}");
    // Restart on the same address: recovery, then the agent resends.
    let daemon = start(&addr, &log);
    assert_eq!(
        torn_files(&src, &replica).1,
        torn,
        "recovery changed the files"
    );
    let out = agent.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "protect failed after the restart:\n{}\n{}",
        agent_log(),
        daemon.log_text()
    );
    let v = protect_json(&out);
    assert_eq!(v["mirror"]["complete"], true, "{v:#}");
    assert!(v["mirror"]["last_seq"].as_u64().unwrap() > at_kill, "{v:#}");
    assert_eq!(status_json(&state)["state"], "protected");
    assert_same_tree(&src, &replica);
}
