//! Snapshots (root): taken at a sequence number, unchanged by later applies
//! (hardlink fallback on ext4, reflinks on a loop-mounted XFS), failover to
//! a snapshot yields exactly its tree, retention prunes.

mod common;
mod failover_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use failover_support::*;
use standin_builder::changeset::{ChangeSet, Record};
use standin_builder::entry::{Entry, Kind};

const SKIP: &[&str] = &["var/lib/standin"];

fn entry_of(root: &Path, rel: &str) -> Entry {
    let m = std::fs::symlink_metadata(root.join(rel)).unwrap();
    Entry {
        path: rel.as_bytes().to_vec(),
        kind: Kind::File,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        size: m.len(),
        xattrs: Default::default(),
        target: None,
        link: None,
        rdev: None,
        sparse: None,
        sha256: None,
    }
}

fn take(state: &Path) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args(["snapshot", "take", "--json", "--state-dir"])
            .arg(state),
        Some(state),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Change the replica through the real apply path (change set 6).
fn apply_changes(state: &Path, staged: &Path) {
    let mut store = standin_staging::Store::open(state).unwrap();
    let mut big = std::fs::read(staged.join("data/big")).unwrap();
    big[10..17].copy_from_slice(b"CHANGED");
    let app = &std::fs::read(staged.join("usr/bin/app")).unwrap()[..3];
    let mut db = entry_of(staged, "var/lib/app/data.db");
    db.mode = 0o600;
    db.xattrs.insert(
        standin_builder::entry::Xattr(b"user.standin.test".to_vec()),
        standin_builder::entry::Xattr(b"v1".to_vec()),
    );
    let records = vec![
        Record::WriteExtent {
            path: b"data/big".to_vec(),
            offset: 10,
            data: b"CHANGED".to_vec(),
            content_digest: Some(standin_builder::hash::content_digest(&big)),
        },
        Record::Truncate {
            path: b"usr/bin/app".to_vec(),
            size: 3,
            content_digest: Some(standin_builder::hash::content_digest(app)),
        },
        Record::SetMetadata(db),
        Record::Delete {
            path: b"var/log/app.log".to_vec(),
        },
    ];
    let cs = ChangeSet {
        seq: 6,
        created_unix_ms: 0,
        records,
    };
    let raw = cs.encode().unwrap();
    match store.receive(&raw, &cs).unwrap() {
        standin_staging::store::Received::Applied { problems, .. } => {
            assert!(problems.is_empty(), "{problems:?}")
        }
        other => panic!("{other:?}"),
    }
}

fn scenario(base: &Path, want_method: &str) {
    let target = base.join("root");
    make_target_system(&target);
    let state = target.join("var/lib/standin");
    let staged = make_state(&state, "src1", 5, true);
    make_source_system(&staged);
    let bt = tree(&target, SKIP);
    let staged_before = tree(&staged, &[]);

    let meta = take(&state);
    assert_eq!(meta["method"], want_method);
    assert_eq!(meta["seq"], 5);
    let id = meta["id"].as_str().unwrap().to_string();
    let snap_root = state.join("snapshots").join(&id).join("root");
    let snap = tree(&snap_root, &[]);
    assert_same("snapshot equals the replica", &snap, &staged_before);

    apply_changes(&state, &staged);
    // The replica changed, with its hard-link group intact.
    let big = std::fs::read(staged.join("data/big")).unwrap();
    assert_eq!(&big[10..17], b"CHANGED");
    for l in ["data/big-link", "var/lib/app/big-link2"] {
        assert_eq!(
            std::fs::metadata(staged.join(l)).unwrap().ino(),
            std::fs::metadata(staged.join("data/big")).unwrap().ino(),
            "{l} left the replica's hard-link group"
        );
    }
    assert_eq!(
        std::fs::metadata(staged.join("usr/bin/app")).unwrap().len(),
        3
    );
    assert_eq!(
        std::fs::metadata(staged.join("var/lib/app/data.db"))
            .unwrap()
            .mode()
            & 0o7777,
        0o600
    );
    // The snapshot did not.
    assert_same(
        "snapshot after later applies",
        &tree(&snap_root, &[]),
        &snap,
    );

    // A second snapshot holds the new state; the first still the old.
    let meta2 = take(&state);
    assert_eq!(meta2["seq"], 6);
    let live_after = tree(&staged, &[]);

    // Failover to the first snapshot yields exactly its tree.
    let out = run_ok(
        standin()
            .args([
                "failover",
                "--no-reboot",
                "--json",
                "--snapshot",
                &id,
                "--state-dir",
            ])
            .arg(&state)
            .arg("--target-root")
            .arg(&target),
        Some(&target),
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["record"]["image"], format!("snapshot:{id}"));
    assert_eq!(rep["record"]["seq"], 5);
    let after = tree(&target, SKIP);
    assert_same(
        "target after failover to the snapshot",
        &without_fstab(&after),
        &expected_after(&snap, &bt),
    );
    check_fstab(&target);
    assert_same("live replica untouched", &tree(&staged, &[]), &live_after);
    // Prune keeps a snapshot in use.
    run_ok(
        standin()
            .args(["snapshot", "prune", "--state-dir"])
            .arg(&state),
        None,
    );
    assert!(state.join("snapshots").join(&id).exists());
    run_ok(
        standin()
            .args(["failover", "--rollback", "--state-dir"])
            .arg(&state)
            .arg("--target-root")
            .arg(&target),
        Some(&target),
    );
    assert_same("target after rollback", &tree(&target, SKIP), &bt);
    assert_same("snapshot after rollback", &tree(&snap_root, &[]), &snap);
}

#[test]
fn hardlink_snapshots_on_ext4_survive_in_place_writes() {
    require_root();
    let tmp = tempdir();
    let fs = String::from_utf8(
        std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(tmp.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !fs.contains("xfs") && !fs.contains("btrfs"),
        "this test needs a filesystem without reflinks, found {fs}"
    );
    scenario(tmp.path(), "hardlink");
}

#[test]
fn reflink_snapshots_on_xfs() {
    require_root();
    let tmp = tempdir();
    let m = mount_xfs_reflink(tmp.path());
    let mnt = m.0.clone();
    scenario(&mnt, "reflink");
}

#[test]
fn prune_keeps_the_newest_per_slot() {
    require_root();
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let staged = make_state(&state, "src1", 3, true);
    make_source_system(&staged);
    let ids: Vec<String> = (0..3)
        .map(|_| take(&state)["id"].as_str().unwrap().to_string())
        .collect();
    let out = run_ok(
        standin()
            .args(["snapshot", "list", "--json", "--state-dir"])
            .arg(&state),
        None,
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let out = run_ok(
        standin()
            .args(["snapshot", "prune", "--json", "--state-dir"])
            .arg(&state),
        None,
    );
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deleted = pruned["deleted"].as_array().unwrap();
    assert!(!deleted.is_empty(), "{pruned}");
    assert!(state.join("snapshots").join(&ids[2]).exists());
    for d in deleted {
        assert!(!state.join("snapshots").join(d.as_str().unwrap()).exists());
    }
}

#[test]
fn digest_of_a_snapshot_equals_the_replicas() {
    require_root();
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let staged = make_state(&state, "src1", 3, true);
    make_source_system(&staged);
    let out = run_ok(
        standin()
            .args(["snapshot", "take", "--digest", "--json", "--state-dir"])
            .arg(&state),
        None,
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = standin_builder::manifest::scan_tree_mirror(
        &staged,
        &Default::default(),
        &standin_builder::NoProgress,
        |_| Ok(()),
    )
    .unwrap()
    .root_digest;
    assert_eq!(meta["root_digest"], want);
    let id = meta["id"].as_str().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("snapshots").join(id).join("meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["root_digest"], want);
}
