//! The batched copy-out ([`Guard::before_modify_all`]) and the apply path's
//! `prepare` that uses it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use standin_builder::changeset::Record;

use super::Guard;
use crate::apply::{ApplyTarget, DirTarget};

struct Fixture {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    replica: PathBuf,
    snap: PathBuf,
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn mtime(p: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// A replica with `a`, `d/b` and `d/c`, and a hardlink snapshot `s1` that
/// shares them (`d/b` under two names in the snapshot); the snapshot's `d`
/// has an old mtime.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let replica = tmp.path().join("replica");
    let snap = super::super::root(&state, "s1");
    std::fs::create_dir_all(replica.join("d")).unwrap();
    std::fs::create_dir_all(snap.join("d")).unwrap();
    std::fs::write(replica.join("a"), b"alpha").unwrap();
    std::fs::write(replica.join("d/b"), b"beta").unwrap();
    std::fs::write(replica.join("d/c"), b"gamma").unwrap();
    std::fs::hard_link(replica.join("a"), snap.join("a")).unwrap();
    std::fs::hard_link(replica.join("d/b"), snap.join("d/b")).unwrap();
    std::fs::hard_link(replica.join("d/b"), snap.join("d/b2")).unwrap();
    std::fs::hard_link(replica.join("d/c"), snap.join("d/c")).unwrap();
    let mut index: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    index.insert(ino(&replica.join("a")), vec!["a".into()]);
    index.insert(ino(&replica.join("d/b")), vec!["d/b".into(), "d/b2".into()]);
    index.insert(ino(&replica.join("d/c")), vec!["d/c".into()]);
    std::fs::write(
        snap.parent().unwrap().join(super::super::take::INODES_FILE),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let old = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000));
    std::fs::File::open(snap.join("d"))
        .unwrap()
        .set_times(old)
        .unwrap();
    Fixture {
        _tmp: tmp,
        state,
        replica,
        snap,
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("standin-cow"))
        .collect()
}

#[test]
fn batch_copies_out_every_shared_inode_and_keeps_link_groups_and_times() {
    let f = fixture();
    let d_time = mtime(&f.snap.join("d"));
    let mut g = Guard::new(&f.state);
    let list = vec![
        (ino(&f.replica.join("a")), f.replica.join("a")),
        (ino(&f.replica.join("d/b")), f.replica.join("d/b")),
        // Not shared by any snapshot: ignored.
        (u64::MAX, f.replica.join("d/c")),
    ];
    assert_eq!(g.before_modify_all(&list).unwrap(), 2);

    for (rel, want) in [("a", "alpha"), ("d/b", "beta"), ("d/b2", "beta")] {
        let s = f.snap.join(rel);
        let r = f.replica.join(rel.trim_end_matches('2'));
        assert_ne!(ino(&s), ino(&r), "{rel} has its own copy");
        assert_eq!(std::fs::read(&s).unwrap(), want.as_bytes(), "{rel}");
    }
    assert_eq!(
        ino(&f.snap.join("d/b")),
        ino(&f.snap.join("d/b2")),
        "the snapshot's hard-link group stays"
    );
    assert_eq!(std::fs::metadata(f.replica.join("d/b")).unwrap().nlink(), 1);
    assert_eq!(
        ino(&f.snap.join("d/c")),
        ino(&f.replica.join("d/c")),
        "d/c was not listed and stays shared"
    );
    assert_eq!(mtime(&f.snap.join("d")), d_time, "directory times kept");
    assert!(leftovers(&f.snap.join("d")).is_empty());
    assert!(leftovers(&f.snap).is_empty());

    // The replica now changes in place; the snapshot keeps its content.
    std::fs::write(f.replica.join("a"), b"ALPHA, changed").unwrap();
    assert_eq!(std::fs::read(f.snap.join("a")).unwrap(), b"alpha");
    // Done once: a fresh guard (reloading the index) has nothing left to do.
    assert_eq!(
        Guard::new(&f.state).before_modify_all(&list).unwrap(),
        0,
        "nothing copied twice"
    );
}

#[test]
fn batch_finishes_an_interrupted_copy_out() {
    let f = fixture();
    // As after a crash half way: d/b already holds a complete copy, d/b2
    // still shares the replica's inode.
    let copy = f.snap.join("d/.b.tmp");
    std::fs::write(&copy, b"beta").unwrap();
    std::fs::rename(&copy, f.snap.join("d/b")).unwrap();
    let b = ino(&f.replica.join("d/b"));
    assert_eq!(ino(&f.snap.join("d/b2")), b);
    let mut g = Guard::new(&f.state);
    assert_eq!(
        g.before_modify_all(&[(b, f.replica.join("d/b"))]).unwrap(),
        1
    );
    assert_eq!(ino(&f.snap.join("d/b2")), ino(&f.snap.join("d/b")));
    assert_ne!(ino(&f.snap.join("d/b2")), b);
}

#[test]
fn prepare_copies_out_before_the_first_record_is_applied() {
    let f = fixture();
    let mut t = DirTarget::open(&f.replica).unwrap();
    t.cow = Some(Guard::new(&f.state));
    let records = vec![
        Record::WriteExtent {
            path: b"d/b".to_vec(),
            offset: 0,
            data: b"BETA".to_vec(),
            content_digest: None,
        },
        Record::Truncate {
            path: b"a".to_vec(),
            size: 2,
            content_digest: None,
        },
        // Missing on the replica: left to apply, no error from prepare.
        Record::Truncate {
            path: b"nothing/here".to_vec(),
            size: 0,
            content_digest: None,
        },
    ];
    t.prepare(&records).unwrap();
    // Copied out already, before any record ran.
    assert_ne!(ino(&f.snap.join("a")), ino(&f.replica.join("a")));
    assert_ne!(ino(&f.snap.join("d/b")), ino(&f.replica.join("d/b")));
    assert_eq!(ino(&f.snap.join("d/c")), ino(&f.replica.join("d/c")));
    for r in &records[..2] {
        t.apply(r).unwrap();
    }
    t.sync().unwrap();
    assert_eq!(std::fs::read(f.replica.join("d/b")).unwrap(), b"BETA");
    assert_eq!(std::fs::read(f.replica.join("a")).unwrap(), b"al");
    assert_eq!(std::fs::read(f.snap.join("d/b")).unwrap(), b"beta");
    assert_eq!(std::fs::read(f.snap.join("d/b2")).unwrap(), b"beta");
    assert_eq!(std::fs::read(f.snap.join("a")).unwrap(), b"alpha");
}

#[test]
fn prepare_copies_out_more_files_than_one_batch_holds() {
    let f = fixture();
    let n = 600;
    let mut index: BTreeMap<u64, Vec<String>> = serde_json::from_slice(
        &std::fs::read(
            f.snap
                .parent()
                .unwrap()
                .join(super::super::take::INODES_FILE),
        )
        .unwrap(),
    )
    .unwrap();
    let mut records = Vec::new();
    for i in 0..n {
        let rel = format!("d/many{i}");
        std::fs::write(f.replica.join(&rel), format!("file {i}")).unwrap();
        std::fs::hard_link(f.replica.join(&rel), f.snap.join(&rel)).unwrap();
        index.insert(ino(&f.replica.join(&rel)), vec![rel.clone()]);
        records.push(Record::Truncate {
            path: rel.into_bytes(),
            size: 0,
            content_digest: None,
        });
    }
    std::fs::write(
        f.snap
            .parent()
            .unwrap()
            .join(super::super::take::INODES_FILE),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let mut t = DirTarget::open(&f.replica).unwrap();
    t.cow = Some(Guard::new(&f.state));
    t.prepare(&records).unwrap();
    for i in 0..n {
        let rel = format!("d/many{i}");
        assert_ne!(ino(&f.snap.join(&rel)), ino(&f.replica.join(&rel)), "{rel}");
    }
    for r in &records {
        t.apply(r).unwrap();
    }
    for i in 0..n {
        let rel = format!("d/many{i}");
        assert_eq!(std::fs::read(f.replica.join(&rel)).unwrap(), b"");
        assert_eq!(
            std::fs::read(f.snap.join(&rel)).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert!(leftovers(&f.snap.join("d")).is_empty());
}
