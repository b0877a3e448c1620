//! Continuous replication end to end: a target daemon, the agent's
//! change capture, block diff and replication loop, and a scripted workload
//! that must converge to an equal tree (compared independently: lstat
//! fields, xattrs, content, hard-link groups). Needs root (fanotify, chown).

mod replicate_support;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::Duration;

use replicate_support::common::require_root;
use replicate_support::*;
use standin_agent::capture::Backend;
use standin_agent::replicate::ReplicateOptions;

fn xattr(p: &std::path::Path, k: &str, v: &[u8]) {
    rustix::fs::lsetxattr(p, k, v, rustix::fs::XattrFlags::empty()).unwrap();
}

#[test]
fn scripted_workload_converges_to_an_equal_tree() {
    require_root();
    workload(Backend::Fanotify);
}

#[test]
fn scripted_workload_converges_with_the_inotify_fallback() {
    require_root();
    workload(Backend::Inotify);
}

#[test]
fn the_checksum_sweep_repairs_what_capture_missed() {
    require_root();
    let mut h = Harness::start_with(
        |_| {},
        ReplicateOptions {
            sweep_interval: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        |c, src| c.ignore.push(src.join("unseen")),
    );
    std::fs::create_dir(h.src.join("unseen")).unwrap();
    std::fs::write(h.src.join("unseen/file"), "the watcher never saw this").unwrap();
    std::fs::write(h.src.join("seen"), "seen").unwrap();
    h.converge();
    let r = h.stop();
    assert!(r.sweeps >= 1 && r.sweep_repairs >= 1, "{r:?}");
}

fn workload(backend: Backend) {
    let mut h = Harness::start_with(
        |_| {},
        ReplicateOptions::default(),
        |c, _| c.backend = backend,
    );
    let s = h.src.clone();
    // Create.
    std::fs::create_dir_all(s.join("a/b")).unwrap();
    std::fs::create_dir_all(s.join("gone/deeper")).unwrap();
    std::fs::write(s.join("gone/deeper/x"), "x").unwrap();
    std::fs::write(s.join("a/f1"), "hello").unwrap();
    std::fs::write(s.join("del"), "delete me").unwrap();
    let big = std::fs::File::create(s.join("big")).unwrap();
    big.set_len(64 << 20).unwrap();
    for i in 0..8u64 {
        big.write_all_at(&[i as u8 + 1; 300_000], i * (8 << 20))
            .unwrap();
    }
    h.converge();
    // Append.
    let f1 = std::fs::OpenOptions::new()
        .append(true)
        .open(s.join("a/f1"))
        .unwrap();
    f1.write_all_at(b", world", 5).unwrap();
    drop(f1);
    // Overwrite in the middle of the large file.
    big.write_all_at(&[0xEE; 4096], 20 << 20).unwrap();
    big.write_all_at(&[0xDD; 10], (33 << 20) + 7).unwrap();
    // Truncate.
    big.set_len(40 << 20).unwrap();
    drop(big);
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.join("a/f1"))
        .unwrap()
        .set_len(3)
        .unwrap();
    h.converge();
    // Rename across directories, a directory rename, delete.
    std::fs::rename(s.join("a/f1"), s.join("a/b/f1moved")).unwrap();
    std::fs::rename(s.join("a/b"), s.join("c")).unwrap();
    std::fs::remove_file(s.join("del")).unwrap();
    std::fs::remove_dir_all(s.join("gone")).unwrap();
    // chmod, chown, xattrs.
    std::fs::set_permissions(s.join("c/f1moved"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(s.join("c"), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::lchown(s.join("big"), Some(1234), Some(4321)).unwrap();
    xattr(&s.join("big"), "user.note", b"one");
    xattr(&s.join("c/f1moved"), "user.k", b"v");
    // Hard link and symlink.
    std::fs::hard_link(s.join("c/f1moved"), s.join("a/hard")).unwrap();
    std::os::unix::fs::symlink("../c/f1moved", s.join("a/sym")).unwrap();
    h.converge();
    // Change an xattr, remove one, write through the hard link, replace a
    // file by rename, rename over an existing file.
    xattr(&s.join("big"), "user.note", b"two");
    rustix::fs::lremovexattr(s.join("c/f1moved").as_path(), "user.k").unwrap();
    std::fs::write(s.join("a/hard"), "through the link").unwrap();
    std::fs::write(s.join("a/new.tmp"), "atomic save").unwrap();
    std::fs::write(s.join("a/target"), "old").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::rename(s.join("a/new.tmp"), s.join("a/target")).unwrap();
    // A tree moved in from outside the root.
    let outside = h.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("t/u")).unwrap();
    std::fs::write(outside.join("t/u/w"), "moved in").unwrap();
    std::fs::rename(outside.join("t"), s.join("t")).unwrap();
    // A fifo.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.join("fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    h.converge();

    let r = h.stop();
    // The comparison notices a difference (replication has stopped now).
    std::fs::set_permissions(
        s.join("a/sym").parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    assert!(
        !differences(&h.src, &h.replica()).is_empty(),
        "the comparison sees no change"
    );
    assert!(r.sets_sent > 0 && r.data_bytes_sent > 0, "{r:?}");
    assert_eq!(r.queue_full, 0, "{r:?}");
}

#[test]
fn a_4k_write_into_a_1g_file_sends_under_64k() {
    require_root();
    let mut h = Harness::start(|_| {}, ReplicateOptions::default());
    let f = std::fs::File::create(h.src.join("huge")).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&[1u8; 4096], 0).unwrap();
    h.converge();
    let before = (
        h.sender.stats().bytes_sent,
        h.opts.counters.report().data_bytes_sent,
    );
    f.write_all_at(&[7u8; 4096], 700 << 20).unwrap();
    drop(f);
    h.converge();
    let after = (
        h.sender.stats().bytes_sent,
        h.opts.counters.report().data_bytes_sent,
    );
    let wire = after.0 - before.0;
    let data = after.1 - before.1;
    eprintln!("4 KiB into 1 GiB: {data} data bytes, {wire} bytes on the wire");
    assert!(data > 0 && data < 64 << 10, "data bytes {data}");
    assert!(wire < 64 << 10, "bytes on the wire {wire}");

    h.stop();
}
