use super::*;
use standin_builder::entry::Xattr;
use std::collections::BTreeMap;

fn entry(path: &str, kind: Kind, mode: u32) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 1_600_000_000_123_456_789,
        size: 0,
        xattrs: BTreeMap::new(),
        target: None,
        link: None,
        rdev: None,
        sparse: None,
        sha256: None,
    }
}

fn target() -> (tempfile::TempDir, DirTarget) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let mut t = DirTarget::open(&d.path().join("root")).unwrap();
    t.preserve_owner = false;
    (d, t)
}

fn digest(b: &[u8]) -> Digest32 {
    standin_builder::hash::content_digest(b)
}

#[test]
fn records_apply_and_replay_idempotently() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    let mut f = entry("a/f", Kind::File, 0o640);
    f.xattrs
        .insert(Xattr(b"user.test".to_vec()), Xattr(b"v".to_vec()));
    let mut s = entry("a/s", Kind::Symlink, 0o777);
    s.target = Some(b"/etc/passwd".to_vec());
    let records = vec![
        Record::Create(entry("a", Kind::Dir, 0o755)),
        Record::Create(f.clone()),
        Record::WriteExtent {
            path: b"a/f".to_vec(),
            offset: 0,
            data: b"hello world".to_vec(),
            content_digest: Some(digest(b"hello world")),
        },
        Record::Truncate {
            path: b"a/f".to_vec(),
            size: 5,
            content_digest: Some(digest(b"hello")),
        },
        Record::SetMetadata(f.clone()),
        Record::Create(s),
        Record::Link {
            existing: b"a/f".to_vec(),
            new: b"a/g".to_vec(),
        },
        Record::Create(entry("b", Kind::Dir, 0o700)),
        Record::Rename {
            from: b"a/g".to_vec(),
            to: b"b/g".to_vec(),
        },
        Record::Create(entry("gone", Kind::Dir, 0o755)),
        Record::Create(entry("gone/x", Kind::Fifo, 0o600)),
        Record::Delete {
            path: b"gone".to_vec(),
        },
    ];
    // Each record applied twice in a row (a replay of the record that was
    // in flight at a crash) gives the same result as once.
    for r in &records {
        t.apply(r)
            .unwrap_or_else(|e| panic!("{} failed: {e}", r.name()));
        t.apply(r)
            .unwrap_or_else(|e| panic!("{} failed again: {e}", r.name()));
    }
    {
        assert_eq!(std::fs::read(root.join("a/f")).unwrap(), b"hello");
        assert_eq!(std::fs::read(root.join("b/g")).unwrap(), b"hello");
        assert!(!root.join("a/g").exists());
        assert!(!root.join("gone").exists());
        assert_eq!(
            std::fs::read_link(root.join("a/s")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(t.content_digest(b"b/g").unwrap(), Some(digest(b"hello")));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(root.join("a/f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.nlink(), 2);
    }
    t.sync().unwrap();
}

#[test]
fn hostile_paths_are_refused_and_nothing_outside_changes() {
    let (d, mut t) = target();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, d.path().join("root/out")).unwrap();
    std::os::unix::fs::symlink("../outside", d.path().join("root/rel")).unwrap();
    std::fs::create_dir(d.path().join("root/real")).unwrap();
    std::os::unix::fs::symlink("real", d.path().join("root/inside")).unwrap();
    let bad = [
        Record::Create(entry("out/x", Kind::File, 0o644)),
        Record::Create(entry("rel/x", Kind::File, 0o644)),
        Record::Create(entry("inside/x", Kind::File, 0o644)),
        Record::Create(entry("../x", Kind::File, 0o644)),
        Record::Create(entry("/tmp/x", Kind::File, 0o644)),
        Record::Delete {
            path: b"out/../..".to_vec(),
        },
        Record::Rename {
            from: b"real".to_vec(),
            to: b"out/real".to_vec(),
        },
        Record::Link {
            existing: b"out/y".to_vec(),
            new: b"y".to_vec(),
        },
        Record::WriteExtent {
            path: b"out".to_vec(),
            offset: 0,
            data: b"x".to_vec(),
            content_digest: Some([0; 32]),
        },
    ];
    for r in &bad {
        match t.apply(r) {
            Err(ApplyError::Refused(_)) | Err(ApplyError::Inconsistent(_)) => {}
            other => panic!("{r:?} gave {other:?}"),
        }
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!d.path().join("x").exists());
    // The final component may be a symlink; writing through it is refused too.
    assert!(std::fs::symlink_metadata(d.path().join("root/out"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn data_never_goes_into_device_nodes() {
    let (_d, mut t) = target();
    t.apply(&Record::Create(entry("p", Kind::Fifo, 0o600)))
        .unwrap();
    let e = t
        .apply(&Record::WriteExtent {
            path: b"p".to_vec(),
            offset: 0,
            data: b"x".to_vec(),
            content_digest: Some([0; 32]),
        })
        .unwrap_err();
    assert!(matches!(e, ApplyError::Inconsistent(_)), "{e}");
}

#[test]
fn create_replaces_a_hard_linked_file_without_touching_its_other_name() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    std::fs::write(root.join("a"), b"shared").unwrap();
    std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
    t.apply(&Record::Create(entry("a", Kind::File, 0o644)))
        .unwrap();
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"");
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"shared");
}

#[test]
fn records_that_do_not_fit_are_divergence_not_a_pause() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("b/full")).unwrap();
    let e = t
        .apply(&Record::Rename {
            from: b"a".to_vec(),
            to: b"b".to_vec(),
        })
        .unwrap_err();
    assert!(matches!(e, ApplyError::Inconsistent(_)), "{e}");
    std::fs::write(root.join("file"), b"x").unwrap();
    let e = t
        .apply(&Record::Create(entry("file/x", Kind::File, 0o644)))
        .unwrap_err();
    assert!(matches!(e, ApplyError::Inconsistent(_)), "{e}");
}

#[test]
fn set_metadata_leaves_exactly_the_entrys_xattrs_also_inherited_ones() {
    let (d, mut t) = target();
    let root = d.path().join("root");
    let get = |p: &str, name: &str| {
        let mut buf = vec![0u8; 4096];
        rustix::fs::lgetxattr(root.join(p), name, &mut buf[..])
            .ok()
            .map(|n| buf[..n].to_vec())
    };
    // An existing file with an xattr the source no longer has, and one
    // whose value changed.
    std::fs::write(root.join("f"), b"x").unwrap();
    rustix::fs::lsetxattr(root.join("f"), "user.old", b"1", XattrFlags::empty()).unwrap();
    rustix::fs::lsetxattr(root.join("f"), "user.keep", b"a", XattrFlags::empty()).unwrap();
    let mut e = entry("f", Kind::File, 0o640);
    e.size = 1;
    e.xattrs
        .insert(Xattr(b"user.keep".to_vec()), Xattr(b"b".to_vec()));
    t.apply(&Record::SetMetadata(e.clone())).unwrap();
    assert_eq!(get("f", "user.old"), None);
    assert_eq!(get("f", "user.keep"), Some(b"b".to_vec()));
    // Applying it again changes nothing and still verifies.
    t.apply(&Record::SetMetadata(e)).unwrap();
    // A directory made inside one with a default ACL inherits an access
    // and a default ACL; the source's directory has neither.
    std::fs::create_dir(root.join("acl")).unwrap();
    set_default_acl(&root.join("acl"));
    let mut sub = entry("acl/sub", Kind::Dir, 0o755);
    sub.size = 0;
    t.apply(&Record::Create(sub)).unwrap();
    assert_eq!(get("acl/sub", "system.posix_acl_default"), None);
    assert_eq!(get("acl/sub", "system.posix_acl_access"), None);
    let m = std::fs::symlink_metadata(root.join("acl/sub")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
        0o755
    );
}

/// Give `dir` a default ACL (user::rwx, user:1000:rwx, group::r-x,
/// mask::rwx, other::---), which what is made inside it inherits.
pub(super) fn set_default_acl(dir: &std::path::Path) {
    let acl = [
        2u8, 0, 0, 0, // version
        1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, // USER_OBJ rwx
        2, 0, 7, 0, 0xe8, 3, 0, 0, // USER 1000 rwx
        4, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, // GROUP_OBJ r-x
        0x10, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, // MASK rwx
        0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // OTHER ---
    ];
    rustix::fs::lsetxattr(dir, "system.posix_acl_default", &acl, XattrFlags::empty()).expect(
        "setting a default ACL (the temp dir's filesystem must support ACLs, as ext4 does)",
    );
}
