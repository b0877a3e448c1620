//! The check after a patch in place reads only the patched blocks when the
//! digest cache holds the file's block values under its stamp before.

use super::*;
use standin_builder::hash::content_digest;

pub(super) fn target() -> (tempfile::TempDir, DirTarget) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let t = DirTarget::open(&d.path().join("root")).unwrap();
    (d, t)
}

pub(super) fn data(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(seed) ^ (i >> 9)) as u8)
        .collect()
}

fn write(path: &str, offset: u64, data: &[u8], whole: &[u8]) -> Record {
    Record::WriteExtent {
        path: path.as_bytes().to_vec(),
        offset,
        data: data.to_vec(),
        content_digest: Some(content_digest(whole)),
    }
}

fn patch(content: &mut [u8], offset: usize, data: &[u8]) {
    content[offset..offset + data.len()].copy_from_slice(data);
}

/// Check `path` as a set's end does.
pub(super) fn check(t: &mut DirTarget, path: &str) -> Option<Digest32> {
    t.content_digests(&[path.as_bytes()])
        .pop()
        .unwrap()
        .unwrap()
}

#[test]
fn a_patched_file_is_checked_reading_only_its_patched_blocks() {
    let (d, mut t) = target();
    let mut content = data(3_000_000, 31);
    std::fs::write(d.path().join("root/big"), &content).unwrap();
    // The first check reads it whole and keeps its block values.
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    assert_eq!(t.check_reads().whole, 1);
    assert!(crate::digest_cache::block_bytes() > 0);
    // Three 4 KiB writes: read again are only the blocks they touched.
    // (The check keeps values of blocks of at least MIN_CV_BLOCK.)
    let bs = standin_link::message::mirror_block_size(
        content.len() as u64,
        standin_link::message::DEFAULT_MIRROR_BLOCK_SIZE,
    )
    .max(crate::digest_cache::MIN_CV_BLOCK);
    for (i, off) in [300_000usize, 1_500_000, 2_700_001].into_iter().enumerate() {
        let piece = data(4096, 7 + i as u32);
        patch(&mut content, off, &piece);
        t.apply(&write("big", off as u64, &piece, &content))
            .unwrap();
    }
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    let r = t.check_reads();
    assert_eq!((r.whole, r.partial), (1, 1), "{r:?}");
    // (Each write covers at most 4096 / bs + 2 blocks.)
    assert!(
        r.partial_bytes <= 3 * (4096 + 2 * bs),
        "{r:?} with {bs}-byte blocks"
    );
    assert_eq!(std::fs::read(d.path().join("root/big")).unwrap(), content);
    // Its new values are kept under its new stamp: the next patch too.
    let piece = data(100, 3);
    patch(&mut content, 10, &piece);
    t.apply(&write("big", 10, &piece, &content)).unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    assert_eq!(t.check_reads().partial, 2);
    // Growing by a part of a block, then shrinking: still right (the old
    // and new last blocks are read again).
    let tail = data(5000, 11);
    content.extend_from_slice(&tail);
    t.apply(&write("big", 3_000_000, &tail, &content)).unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    content.truncate(2_222_222);
    t.apply(&Record::Truncate {
        path: b"big".to_vec(),
        size: content.len() as u64,
        content_digest: Some(content_digest(&content)),
    })
    .unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    assert_eq!(t.check_reads().partial, 4, "{:?}", t.check_reads());
}

#[test]
fn a_file_changed_behind_the_cache_is_read_whole() {
    let (d, mut t) = target();
    let p = d.path().join("root/big");
    let mut content = data(2_500_000, 17);
    std::fs::write(&p, &content).unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    // Changed by someone else (its stamp moves): the cached values are of
    // the old content and must not be used.
    std::thread::sleep(std::time::Duration::from_millis(20));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"behind the cache", 2_000_000).unwrap();
    }
    patch(&mut content, 2_000_000, b"behind the cache");
    let piece = data(4096, 5);
    patch(&mut content, 100_000, &piece);
    t.apply(&write("big", 100_000, &piece, &content)).unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    let r = t.check_reads();
    assert_eq!((r.whole, r.partial), (2, 0), "{r:?}");
}

#[test]
fn a_wrong_patch_is_still_found_by_the_partial_check() {
    let (d, mut t) = target();
    let mut content = data(4_000_000, 23);
    std::fs::write(d.path().join("root/big"), &content).unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    // The record says the file ends up as `claimed`; its data makes it
    // something else.
    let mut claimed = content.clone();
    patch(&mut claimed, 1_000_000, &data(4096, 9));
    let wrong = data(4096, 10);
    patch(&mut content, 1_000_000, &wrong);
    t.apply(&Record::WriteExtent {
        path: b"big".to_vec(),
        offset: 1_000_000,
        data: wrong,
        content_digest: Some(content_digest(&claimed)),
    })
    .unwrap();
    let got = check(&mut t, "big");
    assert_eq!(t.check_reads().partial, 1);
    assert_eq!(got, Some(content_digest(&content)), "what the file holds");
    assert_ne!(got, Some(content_digest(&claimed)), "not what was claimed");
}

#[test]
fn a_file_replaced_by_a_new_inode_is_read_whole() {
    let (d, mut t) = target();
    let p = d.path().join("root/big");
    let content = data(1_500_000, 29);
    std::fs::write(&p, &content).unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    let other = data(1_500_000, 37);
    // The cached values follow the inode written to, not the path: the
    // write goes to the old inode, then the path gets a new one.
    let piece = data(4096, 2);
    t.apply(&write("big", 0, &piece, &content)).unwrap();
    std::fs::write(d.path().join("root/new"), &other).unwrap();
    std::fs::rename(d.path().join("root/new"), &p).unwrap();
    assert_eq!(check(&mut t, "big"), Some(content_digest(&other)));
    let r = t.check_reads();
    assert_eq!((r.whole, r.partial), (2, 0), "{r:?}");
}
