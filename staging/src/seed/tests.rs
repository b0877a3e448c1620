use super::*;
use crate::apply::{ApplyTarget, DirTarget};
use standin_builder::changeset::Record;
use standin_builder::progress::NoProgress;
use std::os::unix::fs::PermissionsExt;

fn live(d: &Path) -> PathBuf {
    let l = d.join("live");
    std::fs::create_dir_all(l.join("etc")).unwrap();
    std::fs::create_dir_all(l.join("srv/data")).unwrap();
    std::fs::write(l.join("etc/hostname"), "old-source\n").unwrap();
    std::fs::write(l.join("srv/data/db"), vec![7u8; 64 * 1024]).unwrap();
    std::fs::hard_link(l.join("srv/data/db"), l.join("srv/db-link")).unwrap();
    std::os::unix::fs::symlink("data/db", l.join("srv/current")).unwrap();
    std::fs::set_permissions(
        l.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    l
}

fn opts(from: &Path, force: bool) -> SeedOptions {
    SeedOptions {
        source_id: "web-01".into(),
        from_root: from.to_path_buf(),
        excludes: vec!["/srv/skip".into()],
        force,
    }
}

fn snapshot(p: &Path) -> (Vec<u8>, u32, u64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (std::fs::read(p).unwrap(), m.mode(), m.ino(), m.mtime())
}

#[test]
fn hardlink_seed_never_changes_the_live_system() {
    let d = tempfile::tempdir().unwrap();
    let l = live(d.path());
    std::fs::create_dir_all(l.join("srv/skip")).unwrap();
    std::fs::write(l.join("srv/skip/x"), "left out").unwrap();
    // The state directory inside the live root is left out too.
    let state = l.join("var/lib/st");
    let r = seed(&state, &opts(&l, false), &NoProgress).unwrap();
    assert_eq!(r.method, SeedMethod::Hardlink, "{r:?}");
    assert_eq!((r.files, r.links), (2, 1), "{r:?}");
    let root = state.join("staging/web-01/root");
    assert_eq!(
        std::fs::read(root.join("etc/hostname")).unwrap(),
        b"old-source\n"
    );
    assert!(!root.join("srv/skip").exists());
    assert!(!root.join("var/lib/st").exists());
    assert_eq!(
        std::fs::read_link(root.join("srv/current")).unwrap(),
        Path::new("data/db")
    );
    let st = TargetState::load(&state).unwrap();
    assert_eq!(st.source_id.as_deref(), Some("web-01"));
    assert!(!st.mirror_complete);
    assert!(st.warning.unwrap().contains("seeded"));

    let before_db = snapshot(&l.join("srv/data/db"));
    let before_host = snapshot(&l.join("etc/hostname"));
    assert_eq!(
        std::fs::metadata(root.join("srv/data/db")).unwrap().ino(),
        before_db.2,
        "hardlink seed shares the inode"
    );
    // Apply in-place changes through the real apply path with the guard.
    let mut t = DirTarget::open(&root).unwrap();
    t.cow = Some(crate::snapshot::cow::Guard::new(&state));
    t.apply(&Record::WriteExtent {
        path: b"srv/data/db".to_vec(),
        offset: 4096,
        data: b"changed on the failed-over machine".to_vec(),
        content_digest: None,
    })
    .unwrap();
    t.apply(&Record::Truncate {
        path: b"etc/hostname".to_vec(),
        size: 3,
        content_digest: None,
    })
    .unwrap();
    let mut meta = standin_builder::scan::Scanner::new(&root, &Default::default(), &NoProgress)
        .unwrap()
        .map(|s| s.unwrap().entry)
        .find(|e| e.path == b"etc/hostname")
        .unwrap();
    meta.mode = 0o600;
    t.apply(&Record::SetMetadata(meta)).unwrap();

    assert_eq!(
        snapshot(&l.join("srv/data/db")),
        before_db,
        "live db unchanged"
    );
    assert_eq!(snapshot(&l.join("srv/db-link")).0, before_db.0);
    assert_eq!(
        std::fs::metadata(l.join("srv/db-link")).unwrap().ino(),
        before_db.2,
        "the live hard-link group stays"
    );
    assert_eq!(
        snapshot(&l.join("etc/hostname")),
        before_host,
        "live hostname unchanged"
    );
    let db = std::fs::read(root.join("srv/data/db")).unwrap();
    assert_eq!(&db[4096..4096 + 34], b"changed on the failed-over machine");
    let (a, b) = (
        std::fs::metadata(root.join("srv/data/db")).unwrap(),
        std::fs::metadata(root.join("srv/db-link")).unwrap(),
    );
    assert_eq!(
        a.ino(),
        b.ino(),
        "the staging hard-link group stays one inode"
    );
    assert_ne!(a.ino(), before_db.2);
    assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"old");
    assert_eq!(
        std::fs::metadata(root.join("etc/hostname")).unwrap().mode() & 0o7777,
        0o600
    );
}

#[test]
fn refuses_a_non_empty_staging_area_without_force() {
    let d = tempfile::tempdir().unwrap();
    let l = live(d.path());
    let state = d.path().join("state");
    seed(&state, &opts(&l, false), &NoProgress).unwrap();
    std::fs::write(state.join("staging/web-01/root/marker"), "x").unwrap();
    let e = seed(&state, &opts(&l, false), &NoProgress).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("not empty") && msg.contains("--force"),
        "{msg}"
    );
    assert!(
        state.join("staging/web-01/root/marker").exists(),
        "nothing lost"
    );
    let r = seed(&state, &opts(&l, true), &NoProgress).unwrap();
    assert!(r.replaced);
    assert!(!state.join("staging/web-01/root/marker").exists());
    // Another source id than the bound one is refused.
    let mut o = opts(&l, true);
    o.source_id = "other".into();
    let msg = format!("{:#}", seed(&state, &o, &NoProgress).unwrap_err());
    assert!(msg.contains("stages source \"web-01\""), "{msg}");
}

#[test]
fn in_place_changes_of_the_live_system_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let l = live(d.path());
    let state = d.path().join("state");
    seed(&state, &opts(&l, false), &NoProgress).unwrap();
    assert_eq!(shared_changes(&state, "web-01").unwrap(), (0, vec![]));
    // The live system appends to a file the staging area shares.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(l.join("srv/data/db"))
        .unwrap()
        .write_all(b"written by the live system")
        .unwrap();
    let (n, some) = shared_changes(&state, "web-01").unwrap();
    assert_eq!(n, 1);
    assert!(
        some[0] == "/srv/data/db" || some[0] == "/srv/db-link",
        "{some:?}"
    );
    // A difference mirror rewrites it through the guard: no longer shared.
    let root = state.join("staging/web-01/root");
    let mut t = DirTarget::open(&root).unwrap();
    t.cow = Some(crate::snapshot::cow::Guard::new(&state));
    t.apply(&Record::Truncate {
        path: b"srv/data/db".to_vec(),
        size: 64 * 1024,
        content_digest: None,
    })
    .unwrap();
    assert_eq!(shared_changes(&state, "web-01").unwrap(), (0, vec![]));
    assert_eq!(
        std::fs::metadata(l.join("srv/data/db")).unwrap().len(),
        64 * 1024 + 26,
        "the live file keeps its own write"
    );
}
