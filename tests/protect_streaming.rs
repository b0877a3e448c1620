//! The streaming mirror: onto an empty replica nothing is compared (the
//! empty-replica path reads and hashes each file once) and the root digest
//! is the one builder's manifest gives; onto a replica that differs (a
//! directory replaced by a file, deleted directories, extra paths, changed
//! content and modes) the difference mirror converges. Both hold at most
//! two comparison batches of entries between the comparison and the change
//! sets (`max_plan_entries`), however many entries the tree has. Over
//! loopback; needs root.

mod protect_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use protect_support::common::{require_root, run_ok, tempdir};
use protect_support::*;
use standin_builder::progress::NoProgress;
use standin_builder::scan::ScanOptions;

/// Entries per comparison batch (agent's `mirror::BATCH_ENTRIES`).
const BATCH: u64 = 1000;

fn make_source(src: &Path, files: usize) {
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    for i in 0..files {
        let dir = src.join(format!("data/d{:02}/sub{}", i % 30, (i / 30) % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}")),
            format!("file {i}\n").repeat(i % 50),
        )
        .unwrap();
    }
    std::fs::write(src.join("data/linked"), "two names\n").unwrap();
    std::fs::hard_link(src.join("data/linked"), src.join("data/linked2")).unwrap();
    std::os::unix::fs::symlink("../etc/os-release", src.join("data/symlink")).unwrap();
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 253) as u8).collect();
    std::fs::write(src.join("data/big"), big).unwrap();
    run_ok(
        std::process::Command::new("truncate")
            .args(["-s", "5M"])
            .arg(src.join("data/sparse")),
        None,
    );
}

fn root_digest(src: &Path) -> (String, u64) {
    let s = standin_builder::manifest::scan_tree_mirror(
        src,
        &ScanOptions::default(),
        &NoProgress,
        |_| Ok(()),
    )
    .unwrap();
    (s.root_digest, s.entry_count)
}

fn protect(
    src: &Path,
    d: &Path,
    daemon: &Daemon,
    tf: &str,
    sid: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let out = run_ok(
        protect_cmd(&daemon.addr, sid, tf, src)
            .arg("--state-dir")
            .arg(d.join("agent"))
            .args(["--source-id", "web1", "--once", "--json"])
            .args(extra),
        None,
    );
    protect_json(&out)
}

fn check(v: &serde_json::Value, src: &Path, replica: &Path, empty: bool) {
    let m = &v["mirror"];
    assert_eq!(m["complete"], true, "{v:#}");
    assert_eq!(m["empty_replica"], empty, "{v:#}");
    let (digest, entries) = root_digest(src);
    assert_eq!(m["root_digest"], digest.as_str(), "{v:#}");
    assert_eq!(m["entries"], entries, "{v:#}");
    let held = m["max_plan_entries"].as_u64().unwrap();
    assert!(held > 0, "{v:#}");
    assert!(
        held <= 2 * BATCH && held < entries,
        "{held} entries held at once for a tree of {entries}: {v:#}"
    );
    assert_same_tree(src, replica);
}

#[test]
fn streaming_mirror_empty_replica_then_difference_then_full() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    make_source(&src, 4500);
    // No periodic snapshot: this test rewrites a replica file behind the
    // daemon's back (see `Sides::serve_without_snapshots`).
    let sides = Sides::new(d.path(), &src, true);
    let daemon = sides.serve_without_snapshots(&d.path().join("d.log"));
    let Sides { tf, sid, state, .. } = sides;
    let replica = replica(&state, "web1");

    // Empty replica: nothing compared, each file hashed once.
    let v = protect(&src, d.path(), &daemon, &tf, &sid, &[]);
    check(&v, &src, &replica, true);
    assert_eq!(v["mirror"]["compare_bytes_sent"], 0, "{v:#}");

    // The replica differs: a directory became a file, directories and
    // files are gone, extra paths on the replica, content and modes changed.
    std::fs::remove_dir_all(src.join("data/d01")).unwrap();
    std::fs::write(src.join("data/d01"), "now a file\n").unwrap();
    std::fs::remove_dir_all(src.join("data/d02/sub1")).unwrap();
    std::fs::write(src.join("data/d03/sub0/f3"), "rewritten\n").unwrap();
    std::fs::set_permissions(
        src.join("data/d04/sub0/f4"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(src.join("data/d05/new"), "new\n").unwrap();
    std::fs::create_dir_all(replica.join("junk/a/b")).unwrap();
    std::fs::write(replica.join("junk/a/b/c"), "extra\n").unwrap();
    std::fs::write(replica.join("data/d06/extra"), "extra\n").unwrap();
    let v = protect(&src, d.path(), &daemon, &tf, &sid, &[]);
    check(&v, &src, &replica, false);
    assert!(v["mirror"]["deleted"].as_u64().unwrap() >= 3, "{v:#}");
    assert!(v["mirror"]["changed"].as_u64().unwrap() >= 4, "{v:#}");

    // Behind standin's back, a same-size rewrite on the replica with its
    // mtime put back: the next difference mirror starts from the last
    // proven ledger, yet finds and repairs it (the inode's change time moved).
    let tampered = replica.join("data/d03/sub0/f3");
    std::fs::write(&tampered, "REWRITTEN\n").unwrap();
    let ok = std::process::Command::new("touch")
        .arg("-r")
        .arg(src.join("data/d03/sub0/f3"))
        .arg(&tampered)
        .status()
        .unwrap()
        .success();
    assert!(ok, "touch -r");
    let v = protect(&src, d.path(), &daemon, &tf, &sid, &[]);
    check(&v, &src, &replica, false);
    assert!(v["mirror"]["changed"].as_u64().unwrap() >= 1, "{v:#}");
    assert_eq!(
        std::fs::read(&tampered).unwrap(),
        b"rewritten\n",
        "the tampered file was repaired"
    );

    // --mirror full onto a complete replica sends everything again.
    std::fs::write(replica.join("junk2"), "extra\n").unwrap();
    let v = protect(&src, d.path(), &daemon, &tf, &sid, &["--mirror", "full"]);
    check(&v, &src, &replica, false);
    assert!(v["mirror"]["deleted"].as_u64().unwrap() >= 1, "{v:#}");
    assert_eq!(status_json(&state)["state"], "protected");
}
