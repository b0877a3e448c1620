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
                e.moved |= c.moved;
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

fn lagging_inotify(root: &std::path::Path) -> Watcher {
    Watcher::start(
        root,
        &CaptureOptions {
            backend: Backend::Inotify,
            // Everything below happens before the reader's first read.
            read_delay: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap()
}

/// A directory created, renamed, and another made at its first name, all
/// before the reader reads the creation (a loaded machine): the reader once
/// took the new directory for the renamed one (it watched by path and
/// replayed the rename on its watch), so the renamed one was never watched
/// and a file created in it was lost. Watches are by identity now.
#[test]
fn inotify_watches_a_directory_renamed_before_its_creation_was_read() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let w = lagging_inotify(&root);
    std::fs::create_dir(root.join("n")).unwrap();
    std::fs::rename(root.join("n"), root.join("m")).unwrap();
    std::fs::create_dir(root.join("n")).unwrap();
    std::fs::write(root.join("m/f"), "f").unwrap();
    std::fs::create_dir(root.join("m/sub")).unwrap();
    std::fs::write(root.join("m/sub/g"), "g").unwrap();
    let seen = collect(&w, &["m/f", "m/sub/g", "n"]);
    for p in ["m/f", "m/sub/g", "n"] {
        assert!(seen.contains_key(p.as_bytes()), "{p}: {:?}", shown(&seen));
    }
    // Both directories are watched now, each as itself.
    std::fs::write(root.join("m/sub/later"), "l").unwrap();
    std::fs::write(root.join("n/later"), "l").unwrap();
    let seen = collect(&w, &["m/sub/later", "n/later"]);
    for p in ["m/sub/later", "n/later"] {
        assert!(seen.contains_key(p.as_bytes()), "{p}: {:?}", shown(&seen));
    }
}

/// A watched directory moved under one created after it, before the
/// reader saw either event: its events keep coming under its new name
/// (its path is read from the descriptor its watch holds), and the moved
/// name is reported as moved.
#[test]
fn inotify_names_events_by_where_a_directory_is_now() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    let w = lagging_inotify(&root);
    std::fs::create_dir(root.join("new")).unwrap();
    std::fs::rename(root.join("a"), root.join("new/a2")).unwrap();
    std::fs::create_dir(root.join("a")).unwrap();
    std::fs::write(root.join("new/a2/b/f"), "f").unwrap();
    let seen = collect(&w, &["new/a2", "new/a2/b/f", "a"]);
    for p in ["new/a2", "new/a2/b/f", "a"] {
        assert!(seen.contains_key(p.as_bytes()), "{p}: {:?}", shown(&seen));
    }
    assert!(seen[&b"new/a2"[..]].moved, "new/a2 is reported as moved");
    // The directory of a later event is located where it is now.
    std::fs::write(root.join("new/a2/b/g"), "g").unwrap();
    let mut located = Vec::new();
    for _ in 0..20 {
        if let Some(b) = w.take_batch(
            Duration::from_millis(200),
            Duration::from_millis(5),
            Duration::from_millis(50),
        ) {
            located.extend(b.dirs.keys().filter_map(|h| w.locate(h)).map(|(p, _)| p));
        }
        if !located.is_empty() {
            break;
        }
    }
    assert_eq!(located, vec![b"new/a2/b".to_vec()]);
    // The new directory at the old name stays watched (a watch once went
    // with the old name's unpaired move).
    std::fs::write(root.join("a/h"), "h").unwrap();
    let seen = collect(&w, &["a/h"]);
    assert!(seen.contains_key(&b"a/h"[..]), "{:?}", shown(&seen));
}

/// A write through a hard link removed before the event is read: inotify
/// cannot say which inode it was, and the batch says so (the diff then
/// compares every known hard-linked name).
#[test]
fn inotify_batch_says_when_a_written_name_is_gone() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f"), "f").unwrap();
    let w = lagging_inotify(&root);
    std::fs::hard_link(root.join("f"), root.join("l")).unwrap();
    std::fs::write(root.join("l"), "through the link").unwrap();
    std::fs::remove_file(root.join("l")).unwrap();
    assert_links_unknown(&w);
}

/// A write and a chmod through a hard link whose directory is removed
/// before the events are read: the events cannot be named, but the batch
/// says that an inode was changed through a name that is gone (its other
/// names, elsewhere, changed too).
#[test]
fn inotify_batch_says_when_a_written_name_went_with_its_directory() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("f"), "f").unwrap();
    std::fs::hard_link(root.join("f"), root.join("d/l")).unwrap();
    let w = lagging_inotify(&root);
    std::fs::write(root.join("d/l"), "through the link").unwrap();
    std::fs::set_permissions(root.join("d/l"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_dir_all(root.join("d")).unwrap();
    assert_links_unknown(&w);
}

/// Within 20 batches, one says that an inode was changed through a name it
/// could not place (`links_unknown`).
fn assert_links_unknown(w: &Watcher) {
    let mut unknown = false;
    for _ in 0..20 {
        if let Some(b) = w.take_batch(
            Duration::from_millis(200),
            Duration::from_millis(5),
            Duration::from_millis(50),
        ) {
            unknown |= b.links_unknown;
        }
        if unknown {
            break;
        }
    }
    assert!(
        unknown,
        "the batch did not say the written inode is unknown"
    );
}
