//! The lean scan of a sparse mirror: walk the tree in the scanner's order
//! with its filters (excludes, kept-empty directories, one filesystem),
//! one `statx` per entry relative to its directory, merge-joined with the
//! mirror index ([`super::index`]).
//!
//! - An entry whose stamp is the index's (and that is a directory or has
//!   one link) adds its remembered root-digest bytes: nothing is read or
//!   sent.
//! - Any other entry (new, changed, more than one link) is read as the
//!   scanner reads it (xattrs, sha256, block digests of a big changed file
//!   in checksum mode) and *listed* to the target, with the directories
//!   above it (so the sending side restores their metadata after it made
//!   entries in them, and the listing stays in tree order).
//! - Index paths no longer on the source are *gone* (topmost only).
//!
//! The root digest is the full scan's: the same entries in the same order
//! with the same canonical bytes. Memory: a chunk of entries, the
//! directory stack, one index record, and hard-link groups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use rustix::fs::{Mode, OFlags};
use standin_builder::entry::{path_cmp, Entry, Kind};
use standin_builder::manifest::{FileBlocks, RootDigest};
use standin_builder::progress::Progress;
use standin_builder::scan::ScanOptions;

use super::index::{EntryStamp, Reader, Record, Writer};

/// A batch for the target: listed entries (full sha256), their block
/// digests when the scan took them, and gone paths.
pub type Batch = (Vec<Entry>, Vec<FileBlocks>, Vec<Vec<u8>>);

/// What the lean scan found.
pub struct LeanSummary {
    pub root_digest: String,
    pub entries: u64,
    pub total_bytes: u64,
    /// Entries listed to the target (changed ones and their directories).
    pub listed: u64,
    /// Entries taken from the index unread.
    pub reused: u64,
    /// Topmost paths gone since the base.
    pub gone: u64,
    /// Regular files read and hashed.
    pub hashed: u64,
    /// Regular files whose remembered digest was used (taken from the index).
    pub digests_reused: u64,
    /// Listed files whose digests were computed ahead of the walk ([`prehash`]).
    pub prehashed: u64,
    /// The fresh index (commit it once the mirror is complete).
    pub fresh: Option<Writer>,
    /// Most index records held at once.
    pub index_held_peak: usize,
}

/// Entries per listed batch and per chunk folded at a time.
const CHUNK: usize = 4096;

enum Slot {
    /// Unchanged since the index: its record.
    Reused(Record),
    /// Read: goes to the target; `digest` unless it was only listed as
    /// the directory above a changed entry (its bytes are already added).
    Listed {
        entry: Box<Entry>,
        stamp: EntryStamp,
        blocks: FileBlocks,
        /// The sha256 is to be computed (else it is in `entry`).
        hash: bool,
        digest: bool,
    },
}

/// The merge of the walk with the index (on the calling thread).
struct Lean<'a> {
    root: PathBuf,
    index: Reader,
    /// Chunks (and the gone paths found with them) to the fold.
    tx: std::sync::mpsc::SyncSender<(Vec<Slot>, Vec<Vec<u8>>)>,
    slots: Vec<Slot>,
    listed_in_chunk: usize,
    /// The chunk lists a file of at least [`EARLY_HASH`] bytes to hash:
    /// it goes to the fold at once, so the file is hashed while the walk
    /// goes on (a big changed file late in the walk was its tail).
    big_in_chunk: bool,
    /// Directories from the root down to the current entry; whether listed.
    ancestors: Vec<(Vec<u8>, bool)>,
    links: HashMap<(u64, u64), Vec<u8>>,
    last_gone: Option<Vec<u8>>,
    /// A listed non-directory: index records beneath it are dropped (they
    /// went with the directory it replaced).
    replaced: Option<Vec<u8>>,
    /// Gone paths found since the last chunk.
    gone: Vec<Vec<u8>>,
    progress: &'a dyn Progress,
    sum: LeanSummary,
}

/// The fold of the chunks in order, on its own thread: hashes what the
/// listed files need (in parallel), adds every entry to the root digest
/// and the fresh index, and hands out the listed batches.
struct Fold<'a> {
    root: PathBuf,
    block_size: Option<&'a (dyn Fn(u64) -> u64 + Sync)>,
    /// Big changed files hashed ahead of the walk ([`prehash`]).
    pre: Option<&'a prehash::Prehash>,
    digest: RootDigest,
    fresh: Option<Writer>,
    out: Batch,
    listed: u64,
    hashed: u64,
    emit: &'a mut (dyn FnMut(Batch) -> Result<()> + Send),
}

/// Chunks the merge runs ahead of the fold.
const FOLD_AHEAD: usize = 2;

/// Tests: hash the big files ahead before the walk starts (so that the
/// fold finds their results whatever the timing; harmless to other scans).
#[cfg(test)]
static PREHASH_FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A listed file at least this big to hash ends its chunk early.
const EARLY_HASH: u64 = 1 << 20;

fn beneath(dir: &[u8], path: &[u8]) -> bool {
    if dir.is_empty() {
        return !path.is_empty();
    }
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Run the lean scan of `root` against `index`; each batch with listed
/// entries goes to `emit`; the gone paths found after the last one are
/// returned (they travel with the listing's end).
pub fn scan(
    root: &Path,
    opts: &ScanOptions,
    mut index: Reader,
    fresh: Option<Writer>,
    block_size: Option<&(dyn Fn(u64) -> u64 + Sync)>,
    progress: &dyn Progress,
    emit: &mut (dyn FnMut(Batch) -> Result<()> + Send),
) -> Result<(LeanSummary, Vec<Vec<u8>>)> {
    let meta = std::fs::symlink_metadata(root)
        .with_context(|| format!("reading root {}", root.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("root {} is not a directory", root.display());
    }
    let (excludes, keep_empty) = standin_builder::scan::filters(root, opts)?;
    let (fold_tx, fold_rx) = std::sync::mpsc::sync_channel(FOLD_AHEAD);
    let t0 = std::time::Instant::now();
    let big = std::mem::take(&mut index.big);
    let pre = (!big.is_empty()).then(|| prehash::Prehash::new(big));
    let mut fold = Fold {
        root: root.to_path_buf(),
        block_size,
        pre: pre.as_ref(),
        digest: RootDigest::new(),
        fresh,
        out: Default::default(),
        listed: 0,
        hashed: 0,
        emit,
    };
    let mut lean = Lean {
        root: root.to_path_buf(),
        index,
        tx: fold_tx,
        slots: Vec::with_capacity(CHUNK),
        listed_in_chunk: 0,
        big_in_chunk: false,
        ancestors: Vec::new(),
        links: HashMap::new(),
        last_gone: None,
        replaced: None,
        gone: Vec::new(),
        progress,
        sum: LeanSummary {
            root_digest: String::new(),
            entries: 0,
            total_bytes: 0,
            listed: 0,
            reused: 0,
            gone: 0,
            hashed: 0,
            digests_reused: 0,
            prehashed: 0,
            fresh: None,
            index_held_peak: 0,
        },
    };
    let dirfd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening root {}", root.display()))?;
    let (merged, folded) = std::thread::scope(|sc| {
        if let Some(p) = pre.as_ref() {
            #[cfg(test)]
            let first = PREHASH_FIRST.load(std::sync::atomic::Ordering::Relaxed);
            #[cfg(not(test))]
            let first = false;
            if first {
                p.run(root, block_size);
            } else {
                let spawned = std::thread::Builder::new()
                    .name("standin-prehash".into())
                    .spawn_scoped(sc, move || p.run(root, block_size));
                // Without the thread every file stays queued: the fold
                // hashes each itself.
                drop(spawned);
            }
        }
        let folding = sc.spawn(move || -> Result<Fold> {
            let mut wait = std::time::Duration::ZERO;
            loop {
                let tw = std::time::Instant::now();
                let Ok((slots, gone)) = fold_rx.recv() else {
                    break;
                };
                wait += tw.elapsed();
                fold.chunk(slots, gone)?;
            }
            tracing::debug!(
                ms = t0.elapsed().as_millis() as u64,
                wait_ms = wait.as_millis() as u64,
                cpu_ms = thread_cpu_ms(),
                "lean scan: fold done"
            );
            Ok(fold)
        });
        let merged = lean.merge(root, &meta, excludes, keep_empty, opts, dirfd);
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            cpu_ms = thread_cpu_ms(),
            "lean scan: merge done"
        );
        // Ends the fold's input (the rest of `lean` would only be dropped
        // at the end of this scope, after the join).
        let Lean { index, sum, tx, .. } = lean;
        drop(tx);
        let folded = folding
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the lean scan's fold panicked")));
        if let Some(p) = pre.as_ref() {
            p.stop();
            tracing::debug!(
                listed = p.listed(),
                hashed = p.hashed.load(std::sync::atomic::Ordering::Relaxed),
                used = p.used.load(std::sync::atomic::Ordering::Relaxed),
                "lean scan: big files hashed ahead"
            );
        }
        (merged.map(|()| (index, sum)), folded)
    });
    // The fold's error says why the merge stopped, if it did.
    let fold = folded?;
    let (index, mut sum) = merged?;
    // Every listed entry left with its chunk; gone paths may remain.
    let (_, _, gone) = fold.out;
    let (root_digest, count, bytes) = fold.digest.finish();
    sum.root_digest = root_digest;
    sum.entries = count;
    sum.total_bytes = bytes;
    sum.listed = fold.listed;
    sum.hashed = fold.hashed;
    sum.fresh = fold.fresh;
    sum.index_held_peak = index.held_peak;
    sum.prehashed = pre.map_or(0, |p| p.used.into_inner());
    Ok((sum, gone))
}

impl Lean<'_> {
    /// Walk (on its own thread) and merge every entry with the index,
    /// then hand the last chunk to the fold.
    fn merge(
        &mut self,
        root: &Path,
        meta: &std::fs::Metadata,
        excludes: globset::GlobSet,
        keep_empty: Vec<Vec<u8>>,
        opts: &ScanOptions,
        dirfd: std::os::fd::OwnedFd,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        self.visit(Vec::new(), EntryStamp::of_metadata(meta))?;
        // The walk runs on its own thread a few batches ahead.
        let (tx, rx) = std::sync::mpsc::sync_channel(walk::AHEAD);
        let mut w = walk::Walk::new(
            root.to_path_buf(),
            excludes,
            keep_empty,
            meta.dev(),
            opts.one_file_system,
            tx,
        );
        let walker = std::thread::Builder::new()
            .name("standin-lean-walk".into())
            .spawn(move || {
                let _ = w.run(dirfd);
            })
            .context("starting the lean scan's walking thread")?;
        let merged = (|| -> Result<()> {
            for batch in rx.iter() {
                for item in batch {
                    match item {
                        walk::Walked::Entry(rel, stamp) => self.visit(rel, stamp)?,
                        walk::Walked::Note(n) => self.progress.note(&n),
                        walk::Walked::Failed(e) => return Err(e),
                    }
                }
            }
            Ok(())
        })();
        drop(rx);
        let _ = walker.join();
        merged?;
        self.passed(None);
        self.flush()
    }

    /// Index records before `path` (all for `None`) are gone from the source.
    fn passed(&mut self, path: Option<&[u8]>) {
        while let Some(r) = self.index.peek() {
            if path.is_some_and(|p| path_cmp(&r.path, p) != std::cmp::Ordering::Less) {
                break;
            }
            let r = self.index.take().expect("peeked");
            let under_gone = self
                .last_gone
                .as_deref()
                .is_some_and(|g| beneath(g, &r.path));
            let under_replaced = self
                .replaced
                .as_deref()
                .is_some_and(|g| beneath(g, &r.path));
            if !under_gone && !under_replaced {
                self.sum.gone += 1;
                self.gone.push(r.path.clone());
                self.last_gone = Some(r.path);
            }
        }
    }

    /// One walked entry: reused from the index or listed. A directory is
    /// pushed on the ancestor stack (left when the walk leaves it).
    fn visit(&mut self, rel: Vec<u8>, stamp: EntryStamp) -> Result<()> {
        while self
            .ancestors
            .last()
            .is_some_and(|(a, _)| !beneath(a, &rel))
        {
            self.ancestors.pop();
        }
        self.passed(Some(&rel));
        let old = match self.index.peek() {
            Some(r) if r.path == rel => self.index.take(),
            _ => None,
        };
        self.progress.advance(stamp.size, 1);
        if old
            .as_ref()
            .is_some_and(|r| r.stamp == stamp && !stamp.multi)
        {
            let r = old.expect("checked");
            self.sum.reused += 1;
            if r.sha256().is_some() {
                self.sum.digests_reused += 1;
            }
            if stamp.dir {
                self.ancestors.push((rel, false));
            }
            self.slots.push(Slot::Reused(r));
            return self.maybe_flush();
        }
        // Listed: first the directories above it not listed yet.
        for i in 0..self.ancestors.len() {
            if self.ancestors[i].1 {
                continue;
            }
            self.ancestors[i].1 = true;
            let path = self.ancestors[i].0.clone();
            let (entry, stamp) = self.read(path)?;
            self.push_listed(entry, stamp, None, false);
        }
        let sha = old
            .as_ref()
            .filter(|r| r.stamp == stamp)
            .and_then(Record::sha256);
        let (mut entry, stamp) = self.read(rel.clone())?;
        if entry.kind != Kind::Dir {
            self.replaced = Some(rel.clone());
        } else {
            self.ancestors.push((rel, true));
        }
        if let Some(sha) = sha.filter(|_| entry.kind == Kind::File && entry.link.is_none()) {
            entry.sha256 = Some(hex::encode(sha));
        }
        self.push_listed(entry, stamp, sha, true);
        self.maybe_flush()
    }

    fn push_listed(
        &mut self,
        entry: Entry,
        stamp: EntryStamp,
        sha: Option<[u8; 32]>,
        digest: bool,
    ) {
        let hash = digest && sha.is_none() && entry.kind == Kind::File && entry.link.is_none();
        if hash && entry.size >= EARLY_HASH {
            self.big_in_chunk = true;
        }
        self.slots.push(Slot::Listed {
            entry: Box::new(entry),
            stamp,
            blocks: None,
            hash,
            digest,
        });
        self.listed_in_chunk += 1;
    }

    /// The scanner's entry for `rel` (hard-link groups in tree order).
    fn read(&mut self, rel: Vec<u8>) -> Result<(Entry, EntryStamp)> {
        let abs = super::abs_path(&self.root, &rel);
        let (e, md) = standin_builder::scan::stat_entry_meta(&abs, rel, &mut self.links)
            .with_context(|| format!("reading {}", abs.display()))?
            .with_context(|| format!("{} became a socket while scanning", abs.display()))?;
        Ok((e, EntryStamp::of_metadata(&md)))
    }

    fn maybe_flush(&mut self) -> Result<()> {
        if self.slots.len() >= CHUNK
            || self.listed_in_chunk >= super::BATCH_ENTRIES
            || self.big_in_chunk
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Hand the chunk to the fold.
    fn flush(&mut self) -> Result<()> {
        let slots = std::mem::replace(&mut self.slots, Vec::with_capacity(CHUNK));
        self.listed_in_chunk = 0;
        self.big_in_chunk = false;
        let gone = std::mem::take(&mut self.gone);
        if self.tx.send((slots, gone)).is_err() {
            anyhow::bail!("the lean scan's fold stopped");
        }
        Ok(())
    }
}

impl Fold<'_> {
    /// Hash what the chunk's listed files need (in parallel), then fold the
    /// chunk in order: root digest, fresh index, listed batch.
    fn chunk(&mut self, mut slots: Vec<Slot>, gone: Vec<Vec<u8>>) -> Result<()> {
        self.out.2.extend(gone);
        let root = &self.root;
        let bs = self.block_size;
        let hashed = std::sync::atomic::AtomicU64::new(0);
        if let Some(pre) = self.pre {
            // On this thread, not the pool's: a file being hashed ahead
            // is waited for, and that hash may need the pool.
            for s in slots.iter_mut() {
                let Slot::Listed {
                    entry,
                    stamp,
                    blocks,
                    hash: hash @ true,
                    ..
                } = s
                else {
                    continue;
                };
                if entry.size < super::index::big::BIG || entry.sparse.is_some() {
                    continue;
                }
                if let Some((sha, b)) = pre.take(&entry.path, stamp) {
                    entry.sha256 = Some(sha);
                    *blocks = b;
                    *hash = false;
                    hashed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let hash = |s: &mut Slot| -> Result<()> {
            let Slot::Listed {
                entry,
                blocks,
                hash: true,
                ..
            } = s
            else {
                return Ok(());
            };
            hashed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (sha, b) =
                prehash::hash_listed(root, bs, &entry.path, entry.size, entry.sparse.as_deref())?;
            entry.sha256 = Some(sha);
            *blocks = b;
            Ok(())
        };
        // Only the slots to hash go to the pool, and only when there are
        // several: most chunks of a difference mirror have none, and each
        // wake of the pool costs its threads ~64 `sched_yield`s after.
        let mut todo: Vec<&mut Slot> = slots
            .iter_mut()
            .filter(|s| matches!(s, Slot::Listed { hash: true, .. }))
            .collect();
        if todo.len() > 1 {
            todo.par_iter_mut().try_for_each(|s| hash(s))?;
        } else if let Some(s) = todo.pop() {
            hash(s)?;
        }
        self.hashed += hashed.into_inner();
        for s in slots {
            match s {
                Slot::Reused(r) => {
                    self.digest.add_canonical(&r.canonical, r.file_bytes);
                    if let Some(w) = self.fresh.as_mut() {
                        if let Err(e) = w.add_record(&r) {
                            tracing::warn!("{e:#}; the next mirror compares the whole tree");
                            self.fresh = None;
                        }
                    }
                }
                Slot::Listed {
                    entry,
                    stamp,
                    blocks,
                    digest,
                    ..
                } => {
                    if digest {
                        let file_bytes = if entry.kind == Kind::File && entry.link.is_none() {
                            entry.size
                        } else {
                            0
                        };
                        let canon = RootDigest::canonical(&entry);
                        self.digest.add_canonical(&canon, file_bytes);
                        if let Some(w) = self.fresh.as_mut() {
                            if let Err(e) = w.add(&entry.path, &stamp, file_bytes, &canon) {
                                tracing::warn!("{e:#}; the next mirror compares the whole tree");
                                self.fresh = None;
                            }
                        }
                    }
                    self.listed += 1;
                    self.out.0.push(*entry);
                    self.out.1.push(blocks);
                }
            }
        }
        if !self.out.0.is_empty() {
            let batch = std::mem::take(&mut self.out);
            (self.emit)(batch)?;
        }
        Ok(())
    }
}

/// CPU time of the calling thread (for debug timings).
pub(super) fn thread_cpu_ms() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |ns| ns / 1_000_000)
}

mod prehash;
#[cfg(test)]
mod tests;
mod walk;
