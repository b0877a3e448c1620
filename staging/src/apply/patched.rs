//! The check of a file patched in place (`WriteExtent`, `Truncate`) without
//! reading all of it: when the file's stamp before the set's first patch
//! matched block chaining values in the digest cache, only the blocks the
//! set's patches touched are read again; the untouched blocks' values are
//! the cached ones, and their merge is the content digest compared with the
//! source's. Why a stamp match means the untouched blocks are unchanged:
//! docs/protect.md, "Block digests and verifying a patch without reading the
//! whole file".
//!
//! Any doubt reads the whole file: no cached values under the stamp before
//! the first patch, another inode at the path when checked, a file too
//! small, or most of its blocks touched.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;

use rustix::fs::Stat;
use standin_builder::changeset::Digest32;
use standin_builder::digest_table::Stamp;
use standin_builder::hash::{block_cv, merge_cvs, ContentHasher, Cv};

use crate::digest_cache::{self, Blocks};

/// Most files followed per set (each holds a descriptor: its inode, and so
/// its number, cannot go away and come back as another file's).
const MAX_FOLLOWED: usize = 64;

/// A file patched in place by the current set.
struct Patch {
    /// Keeps the inode alive until the check.
    _held: OwnedFd,
    /// The cached block values under the stamp before the first patch.
    before: Blocks,
    /// Byte ranges written or truncated away/into, `[start, end)`.
    touched: Vec<(u64, u64)>,
}

/// How the checks after patches read their files (a test hook and a
/// debug log field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckReads {
    /// Files read whole.
    pub whole: u64,
    /// Files checked from cached block values and their touched blocks.
    pub partial: u64,
    /// Bytes read by the partial checks.
    pub partial_bytes: u64,
    /// Files written in pieces, checked from the hash of those pieces
    /// without a read ([`super::streamed`]).
    pub streamed: u64,
}

/// The files patched in place by the current set, by (device, inode).
#[derive(Default)]
pub(super) struct Patches {
    map: HashMap<(u64, u64), Patch>,
    pub counts: CheckReads,
}

impl Patches {
    /// Before a patch of `[start, end)` through `fd` (stat `st` taken
    /// before it): follow the file when it is followed already, or when the
    /// digest cache has block values under exactly this stamp.
    pub fn note(&mut self, fd: &OwnedFd, st: &Stat, start: u64, end: u64) {
        let Some(stamp) = digest_cache::stamp_of_stat(st) else {
            return;
        };
        let key = (stamp.dev, stamp.ino);
        if let Some(p) = self.map.get_mut(&key) {
            p.touched.push((start, end));
            return;
        }
        if self.map.len() >= MAX_FOLLOWED {
            return;
        }
        let Some(before) = digest_cache::lookup_blocks(&stamp) else {
            return;
        };
        let Ok(held) = rustix::io::fcntl_dupfd_cloexec(fd, 0) else {
            return;
        };
        self.map.insert(
            key,
            Patch {
                _held: held,
                before,
                touched: vec![(start, end)],
            },
        );
    }

    /// Whether the file stamped `now` is followed (patched by this set from
    /// cached block values).
    pub fn follows(&self, now: &Stamp) -> bool {
        self.map.contains_key(&(now.dev, now.ino))
    }

    /// Forget every followed file (at the end of a set's check, or when a
    /// set starts).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The content digest and block values of the file `f` stamped `now`
    /// (before reading) from the cached values and its touched blocks, when
    /// it is followed and fit for it; `None`: read it whole.
    pub fn digest(
        &mut self,
        f: &std::fs::File,
        now: &Stamp,
        buf: &mut Vec<u8>,
    ) -> Option<std::io::Result<(Digest32, u64, Vec<Cv>)>> {
        let p = self.map.get(&(now.dev, now.ino))?;
        let bs = p.before.bs;
        let old = p.before.stamp.size;
        let size = now.size;
        if size < digest_cache::MIN_CV_FILE || size <= bs {
            return None;
        }
        let n = size.div_ceil(bs) as usize;
        let mut touched = vec![false; n];
        for &(s, e) in p.touched.iter().filter(|(s, e)| s < e) {
            let first = (s / bs) as usize;
            let last = (e.div_ceil(bs) as usize).min(n);
            for t in touched.iter_mut().take(last).skip(first) {
                *t = true;
            }
        }
        // A block is reused only when untouched and of the same extent in
        // the old and the new file (a size change re-reads the old and the
        // new last block).
        let reuse = |k: usize| {
            let start = k as u64 * bs;
            k < p.before.cvs.len() && !touched[k] && (start + bs).min(size) == (start + bs).min(old)
        };
        let read = (0..n).filter(|&k| !reuse(k)).count();
        if read * 2 > n {
            return None;
        }
        let r = (|| {
            let mut cvs = Vec::with_capacity(n);
            let mut bytes = 0u64;
            if buf.len() < bs as usize {
                buf.resize(bs as usize, 0);
            }
            for k in 0..n {
                if reuse(k) {
                    cvs.push(p.before.cvs[k]);
                    continue;
                }
                let start = k as u64 * bs;
                let len = ((start + bs).min(size) - start) as usize;
                std::os::unix::fs::FileExt::read_exact_at(f, &mut buf[..len], start)?;
                bytes += len as u64;
                cvs.push(block_cv(&buf[..len], start));
            }
            let d = merge_cvs(&cvs, bs, size)
                .ok_or_else(|| std::io::Error::other("block values do not fit the file's size"))?;
            Ok((d, bytes, cvs))
        })();
        Some(r.map(|(d, bytes, cvs)| {
            self.counts.partial += 1;
            self.counts.partial_bytes += bytes;
            (d, bs, cvs)
        }))
    }
}

/// A content digest and, for a large file, its block size and block values.
pub(super) type Hashed = (Digest32, Option<(u64, Vec<Cv>)>);

/// The content digest of what `f` holds from where it is (`size` bytes by
/// its stamp), read through `buf`; for a file of at least
/// [`digest_cache::MIN_CV_FILE`] also its block chaining values (block size
/// as a default mirror would choose for it, at least
/// [`digest_cache::MIN_CV_BLOCK`]), from the same read, for the digest cache.
pub(super) fn hash_whole(
    mut f: &std::fs::File,
    size: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Hashed> {
    let bs = standin_link::message::mirror_block_size(
        size,
        standin_link::message::DEFAULT_MIRROR_BLOCK_SIZE,
    )
    .max(digest_cache::MIN_CV_BLOCK);
    if size >= digest_cache::MIN_CV_FILE && size > bs {
        let (d, cvs) = standin_builder::hash::hash_blocks_with(&mut f, bs, buf)?;
        return Ok((d, Some((bs, cvs))));
    }
    let mut h = ContentHasher::new();
    loop {
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok((h.finalize(), None))
}
