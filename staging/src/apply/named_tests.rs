//! File records of a set that skipped the journal: a new file is created
//! under its name, an existing entry is still replaced atomically.

use super::file_tests::{file_entry, rec};
use super::tests::set_default_acl;
use super::*;
use standin_builder::entry::Xattr;
use std::os::unix::fs::MetadataExt;

/// A target whose new files go in under their names, owners as this process's.
fn named_target() -> (tempfile::TempDir, DirTarget) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let mut t = DirTarget::open(&d.path().join("root")).unwrap();
    t.allow_named_create(true);
    t.new_files_named(true);
    (d, t)
}

fn own(t: &DirTarget, mut e: Entry) -> Entry {
    if t.preserve_owner {
        (e.uid, e.gid) = t.own_ids;
    } else {
        (e.uid, e.gid) = (0, 0);
    }
    e
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

#[test]
fn new_files_of_an_open_mirror_are_created_under_their_names_with_their_metadata() {
    let (d, mut t) = named_target();
    let root = d.path().join("root");
    std::fs::create_dir(root.join("acl")).unwrap();
    set_default_acl(&root.join("acl"));
    let root_user = rustix::process::geteuid().is_root();
    let mut entries = vec![
        (
            own(&t, file_entry("plain", 0o644, b"plain\n")),
            &b"plain\n"[..],
        ),
        (own(&t, file_entry("umask", 0o666, b"umask")), b"umask"),
        (
            own(&t, file_entry("suid", 0o4755, b"#!/bin/sh\n")),
            b"#!/bin/sh\n",
        ),
        (own(&t, file_entry("empty", 0o600, b"")), b""),
        // Inherits the directory's default ACL when created: removed.
        (own(&t, file_entry("acl/f", 0o640, b"acl")), b"acl"),
    ];
    let mut x = own(&t, file_entry("xattr", 0o644, b"with xattr"));
    x.xattrs
        .insert(Xattr(b"user.k".to_vec()), Xattr(b"value".to_vec()));
    entries.push((x, b"with xattr"));
    if root_user {
        let mut o = file_entry("owned", 0o640, b"owned by 1234:5678");
        (o.uid, o.gid) = (1234, 5678);
        entries.push((o, b"owned by 1234:5678"));
    }
    t.record_applied(true);
    for (e, data) in &entries {
        t.apply(&rec(e, data)).unwrap();
    }
    assert_eq!(t.files_created(), (entries.len() as u64, 0));
    let applied = t.take_applied().expect("only file records");
    assert_eq!(applied.len(), entries.len());
    for ((e, data), a) in entries.iter().zip(&applied) {
        let p = root.join(std::str::from_utf8(&e.path).unwrap());
        let m = std::fs::symlink_metadata(&p).unwrap();
        let name = p.display();
        assert_eq!(&std::fs::read(&p).unwrap()[..], *data, "{name}");
        assert_eq!(m.mode() & 0o7777, e.mode, "{name}");
        assert_eq!(mtime_ns(&m), e.mtime_ns, "{name}");
        assert_eq!(m.nlink(), 1, "{name}");
        if t.preserve_owner {
            assert_eq!((m.uid(), m.gid()), (e.uid, e.gid), "{name}");
        }
        assert_eq!(super::fsops::list_xattrs(&p).unwrap(), e.xattrs, "{name}");
        // The ledger's record carries the inode and change time as they
        // are now (nothing changed the file after its read-back).
        if let Some(r) = &a.record {
            assert_eq!(r.ino, m.ino(), "{name}");
            assert_eq!(
                r.ctime,
                m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                "{name}"
            );
        } else {
            assert!(!root_user, "{name}: not recorded as trusted");
        }
    }
    assert_eq!(
        std::fs::read(root.join("xattr")).unwrap(),
        b"with xattr".to_vec()
    );
    // Nothing but the files (no temporary names).
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = entries
        .iter()
        .map(|(e, _)| String::from_utf8_lossy(&e.path).into_owned())
        .filter(|p| !p.contains('/'))
        .chain(["acl".to_string()])
        .collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn an_existing_entry_is_still_replaced_atomically_by_a_new_inode() {
    let (d, mut t) = named_target();
    let root = d.path().join("root");
    // A file with a second name (a snapshot's hard link, say), a
    // directory and a symlink in the way.
    std::fs::write(root.join("old"), b"old content").unwrap();
    std::fs::hard_link(root.join("old"), root.join("old2")).unwrap();
    let old_ino = std::fs::metadata(root.join("old")).unwrap().ino();
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("outside"), b"symlink target").unwrap();
    std::os::unix::fs::symlink("outside", root.join("sym")).unwrap();
    for name in ["old", "dir", "sym"] {
        let data = format!("new {name}");
        let e = own(&t, file_entry(name, 0o644, data.as_bytes()));
        t.apply(&rec(&e, data.as_bytes())).unwrap();
        let m = std::fs::symlink_metadata(root.join(name)).unwrap();
        assert!(m.is_file(), "{name}");
        assert_eq!(m.nlink(), 1, "{name}");
        assert_eq!(std::fs::read(root.join(name)).unwrap(), data.as_bytes());
    }
    // Replaced, never written in place: the old inode kept its content
    // under its other name, and the symlink's target is untouched.
    assert_ne!(std::fs::metadata(root.join("old")).unwrap().ino(), old_ino);
    assert_eq!(std::fs::read(root.join("old2")).unwrap(), b"old content");
    assert_eq!(
        std::fs::read(root.join("outside")).unwrap(),
        b"symlink target"
    );
    assert_eq!(t.files_created(), (0, 3), "each one unnamed, then linked");
    // A file that is there now (the mirror's set sent again after a
    // crash) is replaced the same way.
    let e = own(&t, file_entry("fresh", 0o600, b"1"));
    t.apply(&rec(&e, b"1")).unwrap();
    let ino = std::fs::metadata(root.join("fresh")).unwrap().ino();
    t.apply(&rec(&e, b"1")).unwrap();
    assert_ne!(std::fs::metadata(root.join("fresh")).unwrap().ino(), ino);
    assert_eq!(t.files_created(), (1, 4));
}

#[test]
fn a_record_whose_sha256_does_not_match_writes_nothing_under_its_name() {
    let (d, mut t) = named_target();
    let root = d.path().join("root");
    let e = own(&t, file_entry("f", 0o644, b"data"));
    let mut r = rec(&e, b"data");
    if let Record::File { data, .. } = &mut r {
        data[0] ^= 1;
    }
    assert!(matches!(t.apply(&r), Err(ApplyError::Refused(_))));
    let right: Digest32 = standin_builder::hash::content_digest(b"data");
    let other: Digest32 = standin_builder::hash::content_digest(b"other");
    // A digest computed beforehand that does not match: refused too.
    assert!(matches!(
        t.apply_hashed(&rec(&e, b"data"), Some(&other)),
        Err(ApplyError::Refused(_))
    ));
    assert!(!root.join("f").exists());
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    assert_eq!(t.files_created(), (0, 0));
    t.apply_hashed(&rec(&e, b"data"), Some(&right)).unwrap();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"data");
}

#[test]
fn outside_a_set_that_skipped_the_journal_every_file_is_made_unnamed() {
    let (d, mut t) = named_target();
    let root = d.path().join("root");
    t.new_files_named(false);
    for name in ["a", "b"] {
        let e = own(&t, file_entry(name, 0o644, b"x"));
        t.apply(&rec(&e, b"x")).unwrap();
        assert_eq!(std::fs::read(root.join(name)).unwrap(), b"x");
    }
    assert_eq!(t.files_created(), (0, 2));
    // A fresh target creates unnamed files until told otherwise.
    let mut fresh = DirTarget::open(&root).unwrap();
    let e = own(&fresh, file_entry("c", 0o644, b"y"));
    fresh.apply(&rec(&e, b"y")).unwrap();
    assert_eq!(fresh.files_created(), (0, 1));
}

/// The parent directory kept open across records is dropped whenever a
/// record replaces, removes or moves it or a directory above it: no file
/// lands in a directory that left the tree.
#[test]
fn the_kept_parent_directory_never_outlives_its_place_in_the_tree() {
    let (d, mut t) = named_target();
    let root = d.path().join("root");
    let ids = if t.preserve_owner { t.own_ids } else { (0, 0) };
    let owned = move |mut e: Entry| {
        (e.uid, e.gid) = ids;
        e
    };
    let dir = |p: &str| Entry {
        kind: Kind::Dir,
        size: 0,
        ..owned(file_entry(p, 0o755, b""))
    };
    let file = |p: &str, data: &[u8]| rec(&owned(file_entry(p, 0o644, data)), data);
    let mut sym = owned(file_entry("a", 0o777, b""));
    sym.kind = Kind::Symlink;
    sym.target = Some(b"elsewhere".to_vec());
    sym.size = 9;
    for r in [
        Record::Create(dir("a")),
        Record::Create(dir("a/b")),
        file("a/b/f1", b"1"),
        // A symlink made next to it keeps it.
        Record::Create(Entry {
            path: b"a/b/s".to_vec(),
            ..sym.clone()
        }),
        file("a/b/f2", b"2"),
    ] {
        t.apply(&r).unwrap();
    }
    assert_eq!(std::fs::read(root.join("a/b/f2")).unwrap(), b"2");
    // "a" (above the kept "a/b") becomes a symlink: a file under it is
    // refused, not written into the removed directory.
    t.apply(&Record::Create(sym.clone())).unwrap();
    assert!(matches!(
        t.apply(&file("a/b/f3", b"3")),
        Err(ApplyError::Refused(_) | ApplyError::Inconsistent(_))
    ));
    // Each of these removes or moves the directory the file record just
    // before it was written into; the file after it must not land there.
    let gone = |p: &str| Record::Delete {
        path: p.as_bytes().to_vec(),
    };
    let cases: Vec<(Vec<Record>, Record)> = vec![
        (vec![gone("a")], file("a/b/f3", b"3")),
        (
            vec![
                Record::Create(dir("a")),
                Record::Create(dir("a/b")),
                file("a/b/f4", b"4"),
                gone("a/b"),
            ],
            file("a/b/g", b"g"),
        ),
        (
            vec![
                Record::Create(dir("a/b")),
                file("a/b/f5", b"5"),
                Record::Rename {
                    from: b"a/b".to_vec(),
                    to: b"a/c".to_vec(),
                },
            ],
            file("a/b/h", b"h"),
        ),
        (
            vec![
                Record::Create(dir("x")),
                file("x/f6", b"6"),
                Record::Link {
                    existing: b"a/c/f5".to_vec(),
                    new: b"x".to_vec(),
                },
            ],
            file("x/i", b"i"),
        ),
    ];
    for (before, after) in cases {
        for r in &before {
            t.apply(r).unwrap();
        }
        let res = t.apply(&after);
        assert!(
            matches!(
                res,
                Err(ApplyError::Inconsistent(_) | ApplyError::Refused(_))
            ),
            "{:?} after {:?}: {res:?}",
            after.paths(),
            before.last().map(|r| r.paths())
        );
    }
    // The moved directory holds only what was written before the move.
    for r in [
        Record::Create(dir("a/b")),
        file("a/b/f7", b"7"),
        Record::SetMetadata(dir("a/b")),
        file("a/b/f8", b"8"),
    ] {
        t.apply(&r).unwrap();
    }
    let list = |p: &str| {
        let mut v: Vec<String> = std::fs::read_dir(root.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("a"), ["b", "c"]);
    assert_eq!(list("a/c"), ["f5"]);
    assert_eq!(list("a/b"), ["f7", "f8"]);
    assert_eq!(std::fs::read_to_string(root.join("x")).unwrap(), "5");
    for (p, want) in [("a/c/f5", "5"), ("a/b/f7", "7"), ("a/b/f8", "8")] {
        assert_eq!(std::fs::read_to_string(root.join(p)).unwrap(), want, "{p}");
    }
}

/// How a target that [`DirTarget::open`] made, given `allow` when set, and
/// asked for named files, creates one new file: (named, unnamed).
fn created_when_asked(allow: Option<bool>) -> (u64, u64) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let mut t = DirTarget::open(&d.path().join("root")).unwrap();
    if let Some(on) = allow {
        t.allow_named_create(on);
    }
    t.new_files_named(true);
    let e = own(&t, file_entry("a", 0o644, b"x"));
    t.apply(&rec(&e, b"x")).unwrap();
    assert_eq!(std::fs::read(d.path().join("root/a")).unwrap(), b"x");
    t.files_created()
}

/// By default (no `STANDIN_NAMED_CREATE` in the environment) an open
/// mirror's set that skipped the journal creates its new files under their
/// names.
#[test]
fn by_default_new_files_of_a_set_that_asks_are_named() {
    assert!(
        std::env::var_os(NAMED_CREATE_ENV).is_none(),
        "the test runs without {NAMED_CREATE_ENV}"
    );
    assert_eq!(created_when_asked(None), (1, 0));
}

/// With the named create turned off (`STANDIN_NAMED_CREATE=0`) even an
/// open mirror's set that skipped the journal makes every file unnamed: a
/// kill -9 leaves no torn file.
#[test]
fn turned_off_files_are_made_unnamed_even_when_asked_for_named() {
    assert_eq!(created_when_asked(Some(false)), (0, 1));
}
