//! The digest caches of a difference mirror (`digests.bin` in the agent's
//! and the target's state directories): a file is trusted unchanged only
//! while its device, inode, size, mtime and ctime are; a change with the
//! mtime put back (`touch -d`) or a replaced inode is hashed again; a cache
//! file that is corrupt, truncated or from another tree is ignored with a
//! log line; `--verify-all` hashes everything. Over loopback; needs root.

mod protect_support;

use std::path::Path;
use std::process::Command;

use protect_support::common::{
    minimal_system, require_root, require_tool, run_ok, standin, tempdir,
};
use protect_support::*;

struct Run {
    json: serde_json::Value,
    log: String,
}

fn protect(d: &Path, daemon: &Daemon, sid: &Path, tf: &str, root: &Path, extra: &[&str]) -> Run {
    let out = standin()
        .args(["protect", "--target", &daemon.addr, "--identity"])
        .arg(sid)
        .args(["--trust", tf, "--root"])
        .arg(root)
        .arg("--state-dir")
        .arg(d.join("agent"))
        .args(["--source-id", "web1", "--once", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let json = protect_json(&out);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "protect failed:\n{json}\n{log}");
    assert_eq!(json["mirror"]["complete"], true, "{json}\n{log}");
    Run { json, log }
}

fn n(r: &Run, key: &str) -> u64 {
    r.json["mirror"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no mirror.{key} in {}", r.json))
}

#[test]
fn digest_caches_are_trusted_only_while_the_stamp_holds() {
    require_root();
    require_tool("touch", "coreutils");
    let d = tempdir();
    let src = d.path().join("src");
    minimal_system(&src);
    std::fs::create_dir_all(src.join("var/lib")).unwrap();
    std::fs::write(src.join("var/lib/same-size"), "aaaaaaaa\n").unwrap();
    std::fs::write(src.join("var/lib/replaced"), "bbbbbbbb\n").unwrap();
    std::fs::write(src.join("var/lib/big"), vec![5u8; 3 << 20]).unwrap();
    let files = 5u64;
    let sides = Sides::new(d.path(), &src, true);
    let Sides { sid, tf, state, .. } = &sides;
    let dlog = d.path().join("d.log");
    let start = || sides.serve(&dlog);
    let mut daemon = start();

    // First mirror: everything is hashed and remembered.
    let r = protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert_eq!((n(&r, "files_hashed"), n(&r, "digests_reused")), (files, 0));
    assert!(d.path().join("agent/digests.bin").is_file());
    // The target saves its cache after it answered MirrorEnd (before it
    // syncs the replica).
    wait_for("the target's digest cache", 250, &[&dlog], || {
        state.join("digests.bin").is_file()
    });
    assert_same_tree(&src, &replica(state, "web1"));

    // Nothing changed: no file is read on the source.
    let r = protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert_eq!((n(&r, "files_hashed"), n(&r, "digests_reused")), (0, files));
    assert_eq!(n(&r, "changed"), 0, "{}", r.json);

    // Same size, new content, mtime put back with touch -d: the ctime moved,
    // so the file is hashed again and the change reaches the replica.
    let f = src.join("var/lib/same-size");
    let mtime = run_ok(Command::new("stat").args(["-c", "%y"]).arg(&f), None);
    let mtime = String::from_utf8_lossy(&mtime.stdout).trim().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&f, "AAAAAAAA\n").unwrap();
    run_ok(Command::new("touch").arg("-d").arg(&mtime).arg(&f), None);
    let after = run_ok(Command::new("stat").args(["-c", "%y"]).arg(&f), None);
    assert_eq!(String::from_utf8_lossy(&after.stdout).trim(), mtime);
    // Replaced by another inode with the same size and mtime.
    let g = src.join("var/lib/replaced");
    let gm = run_ok(Command::new("stat").args(["-c", "%y"]).arg(&g), None);
    let gm = String::from_utf8_lossy(&gm.stdout).trim().to_string();
    std::fs::write(src.join("var/lib/.new"), "BBBBBBBB\n").unwrap();
    run_ok(
        Command::new("touch")
            .arg("-d")
            .arg(&gm)
            .arg(src.join("var/lib/.new")),
        None,
    );
    std::fs::rename(src.join("var/lib/.new"), &g).unwrap();
    run_ok(
        Command::new("touch")
            .arg("-d")
            .arg(&gm)
            .arg(src.join("var/lib")),
        None,
    );
    let r = protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert_eq!(n(&r, "files_hashed"), 2, "{}", r.json);
    assert_eq!(n(&r, "digests_reused"), files - 2);
    assert_eq!(
        std::fs::read(replica(state, "web1").join("var/lib/same-size")).unwrap(),
        b"AAAAAAAA\n"
    );
    assert_eq!(
        std::fs::read(replica(state, "web1").join("var/lib/replaced")).unwrap(),
        b"BBBBBBBB\n"
    );
    assert_same_tree(&src, &replica(state, "web1"));

    // --verify-all ignores the cache.
    let r = protect(d.path(), &daemon, sid, tf, &src, &["--verify-all"]);
    assert_eq!((n(&r, "files_hashed"), n(&r, "digests_reused")), (files, 0));

    // A truncated cache is ignored with a log line, never trusted. (Without
    // the mirror index, which would make these sparse mirrors that read
    // no digest cache at all: see tests/protect_sparse.rs.)
    let index = d.path().join("agent/mirror-index.bin");
    std::fs::remove_file(&index).unwrap();
    let cache = d.path().join("agent/digests.bin");
    let bytes = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &bytes[..bytes.len() / 2]).unwrap();
    let r = protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert!(r.log.contains("ignoring the digest cache"), "{}", r.log);
    assert_eq!(n(&r, "files_hashed"), files);
    // A corrupt one (one flipped bit) too.
    std::fs::remove_file(&index).unwrap();
    let mut bytes = std::fs::read(&cache).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&cache, &bytes).unwrap();
    let r = protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert!(r.log.contains("checksum mismatch"), "{}", r.log);
    assert_eq!(n(&r, "files_hashed"), files);
    // One of format version 1 (sha256 digests, before protocol 5), whole
    // and with a valid checksum: dropped without a warning (an upgrade
    // is expected, the cache is rebuilt) and nothing of it is trusted.
    std::fs::remove_file(&index).unwrap();
    let mut bytes = std::fs::read(&cache).unwrap();
    assert_eq!(&bytes[..5], b"SIDS\x02");
    bytes[4] = 1;
    let body = bytes.len() - 32;
    let sum = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes[..body])
    };
    bytes[body..].copy_from_slice(&sum);
    std::fs::write(&cache, &bytes).unwrap();
    let r = protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert!(!r.log.contains("ignoring the digest cache"), "{}", r.log);
    assert_eq!((n(&r, "files_hashed"), n(&r, "digests_reused")), (files, 0));
    assert_eq!(&std::fs::read(&cache).unwrap()[..5], b"SIDS\x02", "rebuilt");
    // One written for another tree (a copy of the source elsewhere).
    let other = d.path().join("other");
    copy_tree(&src, &other);
    let r = protect(d.path(), &daemon, sid, tf, &other, &[]);
    assert!(r.log.contains("another tree"), "{}", r.log);
    assert_eq!(n(&r, "files_hashed"), files);

    // The target keeps its cache across a restart; a corrupt one is
    // ignored with a log line.
    drop(daemon);
    daemon = start();
    assert!(
        daemon.log_text().contains("digest cache loaded"),
        "{}",
        daemon.log_text()
    );
    let r = protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert_same_tree(&src, &replica(state, "web1"));
    drop(r);
    drop(daemon);
    std::fs::write(state.join("digests.bin"), b"SIDT garbage").unwrap();
    let daemon = start();
    assert!(
        daemon.log_text().contains("ignoring the digest cache"),
        "{}",
        daemon.log_text()
    );
    protect(d.path(), &daemon, sid, tf, &src, &[]);
    assert_same_tree(&src, &replica(state, "web1"));
}
