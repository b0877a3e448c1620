//! The bulk file record: every metadata kind, replacement, hostile input.

use super::tests::set_default_acl;
use super::*;
use standin_builder::entry::Xattr;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

pub(super) fn file_entry(path: &str, mode: u32, data: &[u8]) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind: Kind::File,
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 1_600_000_000_123_456_789,
        size: data.len() as u64,
        xattrs: BTreeMap::new(),
        target: None,
        link: None,
        rdev: None,
        sparse: None,
        sha256: None,
    }
}

pub(super) fn rec(e: &Entry, data: &[u8]) -> Record {
    Record::File {
        entry: e.clone(),
        data: data.to_vec(),
        content_digest: standin_builder::hash::content_digest(data),
    }
}

fn target() -> (tempfile::TempDir, DirTarget) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let t = DirTarget::open(&d.path().join("root")).unwrap();
    (d, t)
}

#[test]
fn file_record_sets_content_owner_mode_xattrs_and_time() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    let dir = Entry {
        kind: Kind::Dir,
        size: 0,
        ..file_entry("d", 0o755, b"")
    };
    t.apply(&Record::Create(dir)).unwrap();
    let mut e = file_entry("d/suid", 0o4755, b"#!/bin/sh\n");
    e.uid = 1234;
    e.gid = 5678;
    e.xattrs
        .insert(Xattr(b"user.k".to_vec()), Xattr(b"value".to_vec()));
    // An ACL and a file capability travel as xattrs (root only, as in CI).
    let root_user = rustix::process::geteuid().is_root();
    if root_user {
        // posix ACL: user::rwx, user:1000:r-x, group::r-x, mask::r-x, other::r-x
        let acl = [
            2u8, 0, 0, 0, // version
            1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, // USER_OBJ rwx
            2, 0, 5, 0, 0xe8, 3, 0, 0, // USER 1000 r-x
            4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // GROUP_OBJ r-x
            0x10, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // MASK r-x
            0x20, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // OTHER r-x
        ];
        e.xattrs.insert(
            Xattr(b"system.posix_acl_access".to_vec()),
            Xattr(acl.to_vec()),
        );
        // cap_net_bind_service=ep (VFS_CAP_REVISION_2)
        let mut cap = vec![0u8; 20];
        cap[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        cap[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
        e.xattrs
            .insert(Xattr(b"security.capability".to_vec()), Xattr(cap));
        e.mode = 0o755; // a capability and setuid: keep the cap case plain
    }
    t.apply(&rec(&e, b"#!/bin/sh\n")).unwrap();
    let p = root.join("d/suid");
    assert_eq!(std::fs::read(&p).unwrap(), b"#!/bin/sh\n");
    let m = std::fs::symlink_metadata(&p).unwrap();
    assert_eq!(m.mode() & 0o7777, e.mode);
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(m.mtime_nsec(), 123_456_789);
    assert_eq!(m.nlink(), 1);
    if root_user {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        assert!(xattr_of(&p, "security.capability").is_some());
        assert!(xattr_of(&p, "system.posix_acl_access").is_some());
    }
    assert_eq!(xattr_of(&p, "user.k").as_deref(), Some(&b"value"[..]));
    // setuid and sticky survive (owner change clears setuid, so it is set after).
    let mut s = file_entry("d/suid2", 0o6755, b"x");
    s.uid = 42;
    t.apply(&rec(&s, b"x")).unwrap();
    let m = std::fs::symlink_metadata(root.join("d/suid2")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o6755);
    let st = file_entry("d/sticky", 0o1644, b"");
    t.apply(&rec(&st, b"")).unwrap();
    let m = std::fs::symlink_metadata(root.join("d/sticky")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.len()), (0o1644, 0));
    // Applying the record again (a replay) gives the same result.
    t.apply(&rec(&e, b"#!/bin/sh\n")).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"#!/bin/sh\n");
    // Nothing else was left in the directory (no temp names).
    let mut names: Vec<String> = std::fs::read_dir(root.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["sticky", "suid", "suid2"]);
}

fn xattr_of(p: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn file_record_replaces_files_hard_links_symlinks_and_directories() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    std::fs::write(root.join("f"), b"old").unwrap();
    std::fs::hard_link(root.join("f"), root.join("other-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("s")).unwrap();
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("dir/sub/x"), b"x").unwrap();
    for name in ["f", "s", "dir"] {
        let e = file_entry(name, 0o644, b"new");
        t.apply(&rec(&e, b"new")).unwrap();
        assert_eq!(std::fs::read(root.join(name)).unwrap(), b"new");
    }
    // The other hard link of the old file keeps the old content.
    assert_eq!(std::fs::read(root.join("other-link")).unwrap(), b"old");
    assert!(std::fs::symlink_metadata(root.join("s")).unwrap().is_file());
    // A later file record in a directory that replaced the cached one.
    t.apply(&Record::Delete {
        path: b"d2".to_vec(),
    })
    .unwrap();
    let dir = Entry {
        kind: Kind::Dir,
        ..file_entry("d2", 0o755, b"")
    };
    t.apply(&Record::Create(dir.clone())).unwrap();
    t.apply(&rec(&file_entry("d2/a", 0o644, b"1"), b"1"))
        .unwrap();
    t.apply(&Record::Delete {
        path: b"d2".to_vec(),
    })
    .unwrap();
    t.apply(&Record::Create(dir)).unwrap();
    t.apply(&rec(&file_entry("d2/b", 0o644, b"2"), b"2"))
        .unwrap();
    assert_eq!(std::fs::read(root.join("d2/b")).unwrap(), b"2");
    assert!(!root.join("d2/a").exists());
}

#[test]
fn hostile_file_records_are_refused_and_write_nothing() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    // Wrong digest.
    let e = file_entry("f", 0o644, b"data");
    let bad = Record::File {
        entry: e,
        data: b"data".to_vec(),
        content_digest: standin_builder::hash::content_digest(b"other"),
    };
    assert!(matches!(t.apply(&bad), Err(ApplyError::Refused(_))));
    assert!(!root.join("f").exists());
    // A size that does not match the data.
    let mut e = file_entry("g", 0o644, b"data");
    e.size = 1 << 40;
    assert!(matches!(
        t.apply(&Record::File {
            entry: e,
            data: b"data".to_vec(),
            content_digest: standin_builder::hash::content_digest(b"data"),
        }),
        Err(ApplyError::Refused(_))
    ));
    // Through a symlinked parent, absolute, `..`.
    for p in ["out/x", "/tmp/x", "../x", "a/../../x"] {
        let e = file_entry(p, 0o644, b"x");
        match t.apply(&rec(&e, b"x")) {
            Err(ApplyError::Refused(_)) => {}
            other => panic!("{p}: {other:?}"),
        }
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let names: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(names.len(), 1, "only the symlink is in the root");
}

#[test]
fn a_digest_hashed_beforehand_is_compared_before_writing() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    let e = file_entry("f", 0o644, b"data");
    let r = rec(&e, b"data");
    // A digest computed elsewhere that does not match the record's: refused.
    let other: Digest32 = standin_builder::hash::content_digest(b"other");
    assert!(matches!(
        t.apply_hashed(&r, Some(&other)),
        Err(ApplyError::Refused(_))
    ));
    assert!(!root.join("f").exists());
    let right: Digest32 = standin_builder::hash::content_digest(b"data");
    t.apply_hashed(&r, Some(&right)).unwrap();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"data");
}

#[test]
fn files_link_into_place_by_descriptor_or_through_proc() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    std::fs::write(root.join("old"), b"old").unwrap();
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    for by_fd in [true, false] {
        t.files.link_by_fd = by_fd;
        for (name, data) in [("new", &b"1"[..]), ("old", b"22"), ("dir", b"333")] {
            let e = file_entry(name, 0o640, data);
            t.apply(&rec(&e, data)).unwrap();
            assert_eq!(std::fs::read(root.join(name)).unwrap(), data);
            let m = std::fs::symlink_metadata(root.join(name)).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o640);
            assert_eq!(m.nlink(), 1);
        }
        // Linking by descriptor needs CAP_DAC_READ_SEARCH: as root it stays
        // on; without it the first file turned it off (and still landed).
        if by_fd {
            assert_eq!(t.files.link_by_fd, rustix::process::geteuid().is_root());
        } else {
            assert!(!t.files.link_by_fd);
        }
        // A directory in the way again for the next round.
        std::fs::remove_file(root.join("dir")).unwrap();
        std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    }
    // Nothing but the files is left behind (no temporary names).
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "new", "old"]);
}

#[test]
fn an_inherited_default_acl_is_removed_before_the_file_gets_its_name() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    std::fs::create_dir(root.join("acl")).unwrap();
    set_default_acl(&root.join("acl"));
    // A file made there the plain way inherits it.
    std::fs::write(root.join("acl/plain"), b"").unwrap();
    assert!(xattr_of(&root.join("acl/plain"), "system.posix_acl_access").is_some());
    let e = file_entry("acl/f", 0o644, b"x");
    t.apply(&rec(&e, b"x")).unwrap();
    let p = root.join("acl/f");
    assert_eq!(xattr_of(&p, "system.posix_acl_access"), None);
    assert_eq!(
        std::fs::symlink_metadata(&p).unwrap().mode() & 0o7777,
        0o644
    );
}

#[test]
fn modes_the_umask_would_change_and_a_setgid_directory_still_come_out_right() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    // 0o666 and 0o777 lose bits to a usual umask; 0o4755 has setuid.
    for (name, mode) in [("a", 0o666), ("b", 0o600), ("c", 0o4755), ("d", 0o777)] {
        t.apply(&rec(&file_entry(name, mode, b"x"), b"x")).unwrap();
        let m = std::fs::symlink_metadata(root.join(name)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "{name}");
    }
    if !t.preserve_owner {
        return; // owners are kept only as root (as in CI)
    }
    // A setgid directory hands its group to new files: the entry's own
    // group (this process's) must still win.
    std::fs::create_dir(root.join("sg")).unwrap();
    rustix::fs::chown(root.join("sg"), None, Some(rustix::fs::Gid::from_raw(4321))).unwrap();
    std::fs::set_permissions(
        root.join("sg"),
        std::os::unix::fs::PermissionsExt::from_mode(0o2775),
    )
    .unwrap();
    let mut e = file_entry("sg/f", 0o644, b"y");
    (e.uid, e.gid) = t.own_ids;
    t.apply(&rec(&e, b"y")).unwrap();
    let m = std::fs::symlink_metadata(root.join("sg/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), t.own_ids);
    assert_eq!(m.mode() & 0o7777, 0o644);
}

#[test]
fn content_digests_of_files_read_one_after_another_through_one_buffer() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(root.join("big"), &big).unwrap();
    std::fs::write(root.join("small"), b"small").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    for (name, data) in [
        ("big", &big[..]),
        ("small", b"small"),
        ("empty", b""),
        ("big", &big[..]),
    ] {
        let want: Digest32 = standin_builder::hash::content_digest(data);
        assert_eq!(
            t.content_digest(name.as_bytes()).unwrap(),
            Some(want),
            "{name}"
        );
    }
    assert_eq!(t.content_digest(b"missing").unwrap(), None);
}

#[test]
fn content_digests_of_several_large_files_are_read_in_parallel_with_the_same_results() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    let a: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..8_500_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(root.join("a"), &a).unwrap();
    std::fs::write(root.join("b"), &b).unwrap();
    std::fs::write(root.join("small"), b"small").unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    let paths: [&[u8]; 5] = [b"a", b"missing", b"small", b"b", b"dir"];
    let got = t.content_digests(&paths);
    assert_eq!(got.len(), 5);
    let digest = |x: &[u8]| -> Digest32 { standin_builder::hash::content_digest(x) };
    assert_eq!(got[0].as_ref().unwrap(), &Some(digest(&a)));
    assert_eq!(got[1].as_ref().unwrap(), &None);
    assert_eq!(got[2].as_ref().unwrap(), &Some(digest(b"small")));
    assert_eq!(got[3].as_ref().unwrap(), &Some(digest(&b)));
    assert!(got[4].is_err(), "a directory is not a regular file");
    // Remembered by stamp, as one at a time.
    let st =
        crate::digest_cache::stamp_of_stat(&rustix::fs::stat(root.join("b")).unwrap()).unwrap();
    assert_eq!(crate::digest_cache::lookup_stamp(&st), Some(digest(&b)));
    // The same answers one at a time.
    for (p, g) in paths.iter().zip(&got) {
        match g {
            Ok(g) => assert_eq!(&t.content_digest(p).unwrap(), g),
            Err(_) => assert!(t.content_digest(p).is_err()),
        }
    }
}

#[test]
fn file_records_are_recorded_in_order_for_the_mirror_ledger() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    let mut records = Vec::new();
    for i in 0..40 {
        let dir = if i < 25 { "a" } else { "a/b" };
        let data = vec![i as u8; 1 + i * 3000];
        records.push(rec(
            &file_entry(&format!("{dir}/f{i:02}"), 0o640, &data),
            &data,
        ));
    }
    // One of them is refused (its data does not match its digest): only
    // that one is reported, the others land.
    if let Record::File { data, .. } = &mut records[30] {
        data[0] ^= 1;
    }
    t.record_applied(true);
    let results: Vec<_> = records.iter().map(|r| t.apply(r)).collect();
    assert_eq!(results.len(), records.len());
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 30, "record {i}: {r:?}");
    }
    for (i, r) in records.iter().enumerate().filter(|(i, _)| *i != 30) {
        let Record::File { entry, data, .. } = r else {
            unreachable!()
        };
        let p = root.join(std::str::from_utf8(&entry.path).unwrap());
        assert_eq!(&std::fs::read(&p).unwrap(), data, "record {i}");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    }
    assert!(!root.join("a/b/f30").exists());
    // What was applied is recorded in the records' order, refused one left out.
    let applied = t.take_applied().expect("only file records");
    let paths: Vec<&[u8]> = applied.iter().map(|a| a.path.as_slice()).collect();
    let want: Vec<&[u8]> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 30)
        .map(|(_, r)| r.paths()[0])
        .collect();
    assert_eq!(paths, want);
    assert!(applied
        .iter()
        .all(|a| a.record.is_some() || !rustix::process::geteuid().is_root()));
}
