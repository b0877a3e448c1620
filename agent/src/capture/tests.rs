use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;

/// Gather batches until `want` are all seen or a bounded number of tries.
fn collect(w: &Watcher, want: &[&str]) -> BTreeMap<Vec<u8>, Change> {
    let mut seen = BTreeMap::new();
    for _ in 0..50 {
        if want.iter().all(|p| seen.contains_key(p.as_bytes())) {
            break;
        }
        if let Some(b) = w.take_batch(
            Duration::from_millis(100),
            Duration::from_millis(5),
            Duration::from_millis(50),
        ) {
            assert!(!b.rescan, "unexpected rescan");
            for (p, c) in b.paths {
                let e: &mut Change = seen.entry(p).or_default();
                e.content |= c.content;
                e.metadata |= c.metadata;
            }
        }
    }
    seen
}

fn shown(m: &BTreeMap<Vec<u8>, Change>) -> Vec<String> {
    m.keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn every_event_kind(backend: Backend) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(root.join("d1")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("old"), "x").unwrap();
    let w = Watcher::start(
        &root,
        &CaptureOptions {
            backend,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(w.backend(), backend);

    std::fs::write(outside.join("noise"), "n").unwrap();
    std::fs::write(root.join("new"), "hello").unwrap();
    std::fs::create_dir(root.join("d2")).unwrap();
    std::fs::write(root.join("d2/inner"), "i").unwrap();
    std::fs::rename(root.join("old"), root.join("d1/moved")).unwrap();
    std::fs::set_permissions(root.join("d1"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_file(root.join("d2/inner")).unwrap();
    std::os::unix::fs::symlink("new", root.join("sym")).unwrap();
    std::fs::hard_link(root.join("new"), root.join("hard")).unwrap();
    rustix::fs::setxattr(
        root.join("new").as_path(),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .ok();
    // inotify watches d2 only once its creation is read, so a file created
    // and removed in it before that is (harmlessly) never seen.
    let mut want = vec!["new", "d2", "old", "d1/moved", "d1", "sym", "hard"];
    if backend == Backend::Fanotify {
        want.push("d2/inner");
    }
    let seen = collect(&w, &want);
    for p in &want {
        assert!(
            seen.contains_key(p.as_bytes()),
            "{p} missing from {:?}",
            shown(&seen)
        );
    }
    assert!(
        seen[&b"d1"[..]].metadata,
        "chmod of d1 is a metadata change"
    );
    assert!(seen[&b"new"[..]].content, "writing new is a content change");
    assert!(
        !seen.keys().any(|k| k.windows(5).any(|w| w == b"noise")),
        "a path outside the root was reported: {:?}",
        shown(&seen)
    );

    // A directory moved in from outside, then written into.
    std::fs::create_dir(outside.join("tree")).unwrap();
    std::fs::write(outside.join("tree/f"), "f").unwrap();
    std::fs::rename(outside.join("tree"), root.join("tree")).unwrap();
    let seen = collect(&w, &["tree"]);
    assert!(seen.contains_key(&b"tree"[..]), "{:?}", shown(&seen));
    std::fs::write(root.join("tree/g"), "g").unwrap();
    let seen = collect(&w, &["tree/g"]);
    assert!(seen.contains_key(&b"tree/g"[..]), "{:?}", shown(&seen));
    w.request_rescan();
    let b = w
        .take_batch(
            Duration::from_secs(1),
            Duration::from_millis(1),
            Duration::from_millis(10),
        )
        .unwrap();
    assert!(b.rescan);
    assert!(w.stats().events > 0);
}

#[test]
fn fanotify_reports_every_event_kind_under_the_root_only() {
    assert!(
        rustix::process::geteuid().is_root(),
        "fanotify needs root: run the tests as root (CI does)"
    );
    every_event_kind(Backend::Fanotify);
}

#[test]
fn inotify_fallback_reports_every_event_kind_under_the_root_only() {
    every_event_kind(Backend::Inotify);
}

#[test]
fn quiet_tree_gives_no_batch() {
    let t = tempfile::tempdir().unwrap();
    let w = Watcher::start(t.path(), &CaptureOptions::default()).unwrap();
    assert!(w
        .take_batch(
            Duration::from_millis(200),
            Duration::from_millis(5),
            Duration::from_millis(50)
        )
        .is_none());
}
