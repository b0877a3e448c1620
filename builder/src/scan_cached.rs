//! [`crate::manifest::scan_tree`] with the source's digest cache on disk
//! ([`crate::digest_stream`]): the cache is read alongside the sorted walk
//! and the fresh one written as the scan goes, so memory stays flat as the
//! tree grows. A file that changed since it was remembered (same path,
//! other stamp) and spans several blocks is read once for both its content
//! digest and its block digests, which a checksum mirror compares next.
//!
//! This is the mirror's scan: every entry's `sha256` field holds the
//! link's content digest (BLAKE3-256, [`crate::hash::content_digest`]),
//! not a sha256, and so does the cache.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::digest_stream::{Found, Reader, Writer};
use crate::entry::{Entry, Kind};
use crate::manifest::{scan_tree_with, ManifestSummary};
use crate::progress::Progress;
use crate::scan::{ScanOptions, Scanned};

/// Most block digests kept from a scan (16 bytes each).
pub const MAX_BLOCKS: usize = 1 << 20;

/// How a cached scan got its digests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheCounts {
    /// Files whose remembered digest was used.
    pub reused: u64,
    /// Files read and hashed.
    pub hashed: u64,
}

/// Block digests by path (as the link carries them: the first 16 bytes,
/// `hash::wire_digests`), with the block size used.
pub type BlockDigests = HashMap<Vec<u8>, (u64, Vec<[u8; 16]>)>;

/// One file's block digests with the block size used.
pub type FileBlocks = Option<(u64, Vec<[u8; 16]>)>;

/// What [`scan_tree_cached`] gives back.
pub struct CachedScan {
    pub summary: ManifestSummary,
    pub counts: CacheCounts,
    /// Block digests of changed files read during the scan, by path (see
    /// [`crate::hash::hash_file_blocks`]), with the block size used.
    pub blocks: BlockDigests,
    /// The fresh cache, to [`Writer::commit`] (or drop) once the scan is used.
    pub fresh: Option<Writer>,
    /// Most cache records held in memory at once (bounded, whatever the tree's size).
    pub cache_held_peak: usize,
}

/// Scan `root` (as [`crate::manifest::scan_tree`]) with the digest cache
/// `cache`: a regular file whose path and stamp are in it is not read when
/// `trust` is set. Every file's digest goes to `fresh` in tree order.
/// `block_size(size)` (checksum mirrors) is the block size for a file of
/// `size` bytes: a changed file of at least two blocks gets its block
/// digests from the same read: `each` gets them with the entry and may
/// take them; those it leaves end in [`CachedScan::blocks`]. `each` also
/// gets the entry's inode (from the scan's `lstat`).
#[allow(clippy::too_many_arguments)]
pub fn scan_tree_cached(
    root: &Path,
    opts: &ScanOptions,
    progress: &dyn Progress,
    mut cache: Reader,
    mut fresh: Option<Writer>,
    trust: bool,
    block_size: Option<&(dyn Fn(u64) -> u64 + Sync)>,
    mut each: impl FnMut(&Entry, &crate::scan::Inode, &mut FileBlocks) -> Result<()>,
) -> Result<CachedScan> {
    let hits = AtomicU64::new(0);
    let hashed = AtomicU64::new(0);
    let blocks: Mutex<BlockDigests> = Mutex::default();
    let kept = AtomicU64::new(0);
    // Paths of this batch that changed since they were remembered.
    let changed: Mutex<std::collections::HashSet<Vec<u8>>> = Mutex::default();
    let mut prepare = |batch: &mut [Scanned]| -> Result<()> {
        let mut ch = changed.lock().unwrap_or_else(|e| e.into_inner());
        ch.clear();
        for s in batch.iter_mut() {
            if s.entry.kind != Kind::File || s.entry.link.is_some() {
                continue;
            }
            let Some(st) = s.stamp.filter(|st| st.size == s.entry.size) else {
                continue;
            };
            match cache.lookup(&s.entry.path, &st) {
                Found::Same(d) if trust => {
                    hits.fetch_add(1, Ordering::Relaxed);
                    s.entry.sha256 = Some(crate::hash::hex(&d));
                }
                Found::Changed => {
                    ch.insert(s.entry.path.clone());
                }
                _ => {}
            }
        }
        Ok(())
    };
    let digest_of = |s: &Scanned| -> Result<String> {
        hashed.fetch_add(1, Ordering::Relaxed);
        let bs = block_size.map(|f| f(s.entry.size)).unwrap_or(0);
        let want_blocks = bs > 0
            && s.entry.sparse.is_none()
            && s.entry.size >= 2 * bs
            && kept.load(Ordering::Relaxed) < MAX_BLOCKS as u64
            && changed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&s.entry.path);
        if want_blocks {
            let (d, b) = crate::hash::hash_file_blocks(&s.abs, bs)
                .with_context(|| format!("hashing {}", s.abs.display()))?;
            // Only when the file still has the scanned size (else the
            // mirror reads it again).
            if b.len() as u64 == s.entry.size.div_ceil(bs) {
                kept.fetch_add(b.len() as u64, Ordering::Relaxed);
                blocks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(s.entry.path.clone(), (bs, crate::hash::wire_digests(&b)));
            }
            return Ok(crate::hash::hex(&d));
        }
        let (h, _) = crate::hash::content_file(&s.abs, s.entry.size, s.entry.sparse.as_deref())
            .with_context(|| format!("hashing {}", s.abs.display()))?;
        Ok(h)
    };
    let mut each_scanned = |s: &Scanned| -> Result<()> {
        if let (Some(w), Some(st), Some(h)) = (fresh.as_mut(), &s.stamp, &s.entry.sha256) {
            if s.entry.link.is_none() && st.size == s.entry.size {
                if let Ok(d) = hex::decode(h) {
                    if let Ok(d) = <[u8; 32]>::try_from(d.as_slice()) {
                        w.add(&s.entry.path, st, &d)?;
                    }
                }
            }
        }
        let mut slot = None;
        if kept.load(Ordering::Relaxed) > 0 && s.entry.kind == Kind::File {
            slot = blocks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&s.entry.path);
        }
        each(&s.entry, &s.inode, &mut slot)?;
        if let Some(b) = slot {
            blocks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(s.entry.path.clone(), b);
        }
        Ok(())
    };
    let summary = scan_tree_with(
        root,
        opts,
        progress,
        &mut prepare,
        &digest_of,
        &mut each_scanned,
    )?;
    Ok(CachedScan {
        summary,
        counts: CacheCounts {
            reused: hits.into_inner(),
            hashed: hashed.into_inner(),
        },
        blocks: blocks.into_inner().unwrap_or_else(|e| e.into_inner()),
        fresh,
        cache_held_peak: cache.held_peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn run(root: &Path, cache: &Path, trust: bool) -> CachedScan {
        let reader = Reader::open(cache, "t").unwrap();
        let writer = Writer::create(cache, "t").unwrap();
        let bs = |_: u64| 4096u64;
        let mut s = scan_tree_cached(
            root,
            &ScanOptions::default(),
            &NoProgress,
            reader,
            Some(writer),
            trust,
            Some(&bs),
            |_, _, _| Ok(()),
        )
        .unwrap();
        s.fresh.take().unwrap().commit().unwrap();
        s
    }

    #[test]
    fn streamed_cache_reuses_digests_with_flat_memory_and_blocks_changed_files() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("digests.bin");
        let root = t.path().join("root");
        let mut peaks = Vec::new();
        for (round, n) in [(0, 200), (1, 2000)] {
            let root = root.join(format!("r{round}"));
            for i in 0..n {
                let d = root.join(format!("d{}", i % 17));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join(format!("f{i}")), format!("{i}")).unwrap();
            }
            std::fs::write(root.join("big"), vec![1u8; 40_000]).unwrap();
            let _ = std::fs::remove_file(&cache);
            let first = run(&root, &cache, true);
            assert_eq!(first.counts.reused, 0);
            let again = run(&root, &cache, true);
            assert_eq!(again.counts.hashed, 0, "nothing changed");
            assert_eq!(again.counts.reused, n + 1);
            assert_eq!(again.summary.root_digest, first.summary.root_digest);
            peaks.push(again.cache_held_peak);
            // A changed big file: hashed once, with its block digests.
            std::thread::sleep(std::time::Duration::from_millis(10));
            let mut big = vec![1u8; 40_000];
            big[20_000] = 2;
            std::fs::write(root.join("big"), &big).unwrap();
            let changed = run(&root, &cache, true);
            assert_eq!(changed.counts.hashed, 1);
            let (bs, b) = &changed.blocks[&b"big".to_vec()];
            assert_eq!((*bs, b.len()), (4096, 10));
            // Each block's chaining value at its offset, first 16 bytes.
            let want: Vec<[u8; 16]> = big
                .chunks(4096)
                .enumerate()
                .map(|(i, c)| {
                    crate::hash::block_cv(c, i as u64 * 4096)[..16]
                        .try_into()
                        .unwrap()
                })
                .collect();
            assert_eq!(b, &want);
            // Not trusted: everything hashed, the fresh cache still written.
            let all = run(&root, &cache, false);
            assert_eq!((all.counts.hashed, all.counts.reused), (n + 1, 0));
            assert_eq!(run(&root, &cache, true).counts.hashed, 0);
        }
        assert_eq!(peaks, [1, 1], "one record held, whatever the tree's size");
    }
}
