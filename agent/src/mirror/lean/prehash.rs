//! Hashing the big files that changed before the walk reaches them.
//!
//! The fold hashes a listed file when its chunk comes; a big one late in
//! the walk (Debian's 50 MB apt `Packages` list under `var/`) was the
//! scan's tail: hashed after the walk had ended, with the other CPU idle.
//! The index's list of big files ([`super::super::index::big`]) names them
//! at the start. A thread `lstat`s each and hashes those whose stamp is not
//! the index's, the last in tree order first, while the walk runs.
//!
//! The fold takes a result only under the stamp the walk found for the
//! file, and the thread keeps one only when the file's stamp was the same
//! before and after its read: the digest is then the one the fold would
//! have computed (the same assumption as the whole lean scan: a change
//! moves the stamp). A file the fold reaches before the thread started it
//! is hashed by the fold and skipped by the thread; one the thread is
//! hashing is waited for (on the fold's own thread, never on a pool
//! thread: the hash itself may use the pool).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use anyhow::{Context, Result};
use standin_builder::manifest::FileBlocks;

use super::super::index::big::BigFile;
use super::super::index::EntryStamp;

/// A file's content digest (hex) and block digests, as the fold makes them.
pub(super) type Hashed = (String, FileBlocks);

enum Pre {
    /// Listed; not started.
    Queued,
    /// Being read by the thread.
    Hashing,
    /// Read under this stamp.
    Done(EntryStamp, Hashed),
    /// The fold hashes it itself.
    Claimed,
}

/// The big files' hashes ahead of the walk.
pub(super) struct Prehash {
    /// The index's big files.
    files: Vec<BigFile>,
    state: Mutex<HashMap<Vec<u8>, Pre>>,
    /// Signalled when a file leaves [`Pre::Hashing`].
    settled: Condvar,
    stop: AtomicBool,
    /// Files read by the thread, and results the fold took.
    pub hashed: AtomicU64,
    pub used: AtomicU64,
}

/// The content digest and block digests of the regular file `path` of
/// `size` bytes (holes of a sparse one as the scan found them), as the
/// fold lists it: the block digests when the block size for its size is
/// set and it holds at least two blocks, and the file is not sparse.
pub(super) fn hash_listed(
    root: &Path,
    block_size: Option<&(dyn Fn(u64) -> u64 + Sync)>,
    path: &[u8],
    size: u64,
    sparse: Option<&[(u64, u64)]>,
) -> Result<Hashed> {
    let abs = super::super::abs_path(root, path);
    let b = block_size.map(|f| f(size)).unwrap_or(0);
    if b > 0 && sparse.is_none() && size >= 2 * b {
        let (d, digests) = standin_builder::hash::hash_file_blocks(&abs, b)
            .with_context(|| format!("hashing {}", abs.display()))?;
        let blocks = (digests.len() as u64 == size.div_ceil(b))
            .then(|| (b, standin_builder::hash::wire_digests(&digests)));
        Ok((hex::encode(d), blocks))
    } else {
        let (h, _) = standin_builder::hash::content_file(&abs, size, sparse)
            .with_context(|| format!("hashing {}", abs.display()))?;
        Ok((h, None))
    }
}

/// The stamp of a regular file with one link and all its blocks
/// allocated (a sparse one is left to the fold), else `None`.
fn plain_stamp(abs: &Path) -> Option<EntryStamp> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(abs).ok()?;
    (md.is_file() && md.nlink() == 1 && md.blocks() * 512 >= md.size())
        .then(|| EntryStamp::of_metadata(&md))
}

impl Prehash {
    /// Every file of `files` queued.
    pub(super) fn new(files: Vec<BigFile>) -> Prehash {
        Prehash {
            state: Mutex::new(
                files
                    .iter()
                    .map(|(p, _)| (p.clone(), Pre::Queued))
                    .collect(),
            ),
            files,
            settled: Condvar::new(),
            stop: AtomicBool::new(false),
            hashed: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Pre>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thread's work: stamp every file, hash the changed ones (the
    /// last first) until [`Prehash::stop`].
    pub(super) fn run(&self, root: &Path, block_size: Option<&(dyn Fn(u64) -> u64 + Sync)>) {
        let mut changed = Vec::new();
        for (path, old) in &self.files {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            match plain_stamp(&super::super::abs_path(root, path)) {
                Some(now) if now != *old => changed.push((path, now)),
                // Unchanged (the walk reuses it), gone, or not plain.
                _ => {
                    self.lock().remove(path);
                }
            }
        }
        for (path, before) in changed.into_iter().rev() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            {
                let mut st = self.lock();
                match st.get_mut(path) {
                    Some(p @ Pre::Queued) => *p = Pre::Hashing,
                    _ => continue,
                }
            }
            let got = hash_listed(root, block_size, path, before.size, None).ok();
            let after = plain_stamp(&super::super::abs_path(root, path));
            self.hashed.fetch_add(1, Ordering::Relaxed);
            let mut st = self.lock();
            match got {
                Some(h) if after == Some(before) => {
                    st.insert(path.clone(), Pre::Done(before, h));
                }
                _ => {
                    st.remove(path);
                }
            }
            drop(st);
            self.settled.notify_all();
        }
    }

    /// Files listed.
    pub(super) fn listed(&self) -> usize {
        self.files.len()
    }

    /// Stop after the file being read.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The digests of the big file `path` if the thread read it under
    /// `stamp` (waiting while it reads it); else `None`, and the thread
    /// leaves it to the caller.
    pub(super) fn take(&self, path: &[u8], stamp: &EntryStamp) -> Option<Hashed> {
        let mut st = self.lock();
        loop {
            match st.remove(path) {
                None => return None,
                Some(Pre::Queued | Pre::Claimed) => {
                    st.insert(path.to_vec(), Pre::Claimed);
                    return None;
                }
                Some(Pre::Hashing) => {
                    st.insert(path.to_vec(), Pre::Hashing);
                    st = self.settled.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                Some(Pre::Done(s, h)) => {
                    if s != *stamp {
                        return None;
                    }
                    self.used.fetch_add(1, Ordering::Relaxed);
                    return Some(h);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_unclaimed_files_are_hashed_and_used_under_their_stamp_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for (name, len) in [
            ("a1", 2_000_000),
            ("a2", 1_500_000),
            ("b", 1_200_000),
            ("c", 1_100_000),
        ] {
            let body: Vec<u8> = (0..len).map(|i: u32| (i % 249) as u8).collect();
            std::fs::write(root.join(name), body).unwrap();
        }
        let now = |name: &str| plain_stamp(&root.join(name)).unwrap();
        let older = |name: &str| EntryStamp {
            mtime_ns: now(name).mtime_ns - 1,
            ..now(name)
        };
        // a1, a2, c changed since the index; b did not; d is gone.
        let files: Vec<BigFile> = vec![
            (b"a1".to_vec(), older("a1")),
            (b"a2".to_vec(), older("a2")),
            (b"b".to_vec(), now("b")),
            (b"c".to_vec(), older("c")),
            (b"d".to_vec(), older("c")),
        ];
        let p = Prehash::new(files);
        // The fold met c first: the thread leaves it.
        assert!(p.take(b"c", &now("c")).is_none());
        let bs = |_: u64| 65536u64;
        p.run(root, Some(&bs));
        assert_eq!(p.hashed.load(Ordering::Relaxed), 2, "a1 and a2 only");
        let want = hash_listed(root, Some(&bs), b"a1", now("a1").size, None).unwrap();
        assert_eq!(p.take(b"a1", &now("a1")), Some(want));
        // Another stamp than the one read under (the file changed since):
        // not used.
        assert!(p.take(b"a2", &older("a2")).is_none());
        assert!(p.take(b"b", &now("b")).is_none());
        assert!(p.take(b"d", &now("c")).is_none());
        assert_eq!(p.used.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_file_changed_while_hashed_is_not_kept() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, vec![1u8; 1 << 20]).unwrap();
        let st = plain_stamp(&f).unwrap();
        let files: Vec<BigFile> = vec![(b"f".to_vec(), EntryStamp { ctime_ns: 0, ..st })];
        let p = Prehash::new(files);
        // The block-size function runs during the hash: change the file then.
        let bs = |_: u64| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&f)
                .and_then(|mut w| std::io::Write::write_all(&mut w, b"x"))
                .unwrap();
            65536u64
        };
        p.run(d.path(), Some(&bs));
        assert_eq!(p.hashed.load(Ordering::Relaxed), 1);
        assert!(p.take(b"f", &st).is_none());
        assert!(p.take(b"f", &plain_stamp(&f).unwrap()).is_none());
    }
}
