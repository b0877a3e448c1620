//! Copy-out before write for hardlink snapshots.
//!
//! The apply path calls [`Guard::before_modify`] with the inode it is about
//! to change in place (write, truncate, owner, mode, xattrs, times). When a
//! snapshot shares that inode (it is in the snapshot's `inodes.json`), the
//! guard first gives the snapshot its own copy: the content and metadata
//! are copied to a new file in the snapshot, fsynced, and renamed over each
//! snapshot path that still holds the shared inode (hard links among those
//! paths are kept). After a crash half way, the paths already moved hold a
//! complete copy; the next call links the remaining paths to that copy.
//!
//! The replica is never touched: its inode numbers and hard-link groups stay.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::SeekFrom;

use crate::durable;
use crate::failover::fsutil;
use crate::share::index::{Indexes, Watch};

/// Snapshots sharing inodes with the replica, loaded from their indexes.
#[derive(Debug)]
pub struct Guard {
    snapshots: PathBuf,
    /// Replica inode → (snapshot root, paths in it).
    indexes: Indexes,
    /// Inodes a seeded staging area shares with the live system.
    seeds: crate::seed::guard::Seeds,
}

impl Guard {
    /// A guard for the snapshots of `state_dir`.
    pub fn new(state_dir: &Path) -> Guard {
        let snapshots = super::dir(state_dir);
        Guard {
            indexes: Indexes::new(snapshots.clone(), super::take::INODES_FILE, Watch::Dir),
            snapshots,
            seeds: crate::seed::guard::Seeds::new(state_dir),
        }
    }

    /// Call before changing the inode `ino` of the replica in place;
    /// `current` is a path of the replica that holds it.
    pub fn before_modify(&mut self, ino: u64, current: &Path) -> Result<()> {
        self.indexes.reload()?;
        if let Some(list) = self.indexes.shared.remove(&ino) {
            for (root, paths) in list {
                let mut parents = BTreeMap::new();
                if let Some(c) = prepare(ino, current, &root, &paths, &mut parents, true)? {
                    c.finish(true)?;
                }
                restore_parents(parents)?;
            }
        }
        // A seeded staging area: the replica's names move to a copy; the
        // live system keeps its inode.
        self.seeds.before_modify(ino, current)
    }

    /// True when no snapshot shares an inode with the replica (as of its
    /// last change), so no copy-out is ever needed.
    pub fn shares_nothing(&mut self) -> Result<bool> {
        self.indexes.reload()?;
        Ok(self.indexes.shared.is_empty())
    }

    /// Like [`Guard::before_modify`] for many inodes at once (those a
    /// change set is about to change in place), with two `syncfs` of the
    /// snapshots' filesystem in place of an `fsync` of every copy and of
    /// its directory: all copies are written, then synced, then renamed
    /// over the snapshot paths, then synced again, so every copy is
    /// complete on disk before a snapshot path names it, and every
    /// snapshot path names its copy on disk before the caller changes the
    /// replica's inode. Seeded inodes are left to `before_modify`.
    /// Returns how many inodes were copied out (or had their copy-out completed).
    pub fn before_modify_all(&mut self, inodes: &[(u64, PathBuf)]) -> Result<usize> {
        self.indexes.reload()?;
        let mut parents = BTreeMap::new();
        let mut pending = Vec::new();
        let mut copied = 0;
        for (ino, current) in inodes {
            let Some(list) = self.indexes.shared.remove(ino) else {
                continue;
            };
            let before = pending.len();
            for (root, paths) in list {
                if let Some(c) = prepare(*ino, current, &root, &paths, &mut parents, false)? {
                    pending.push(c);
                }
            }
            copied += usize::from(pending.len() > before);
        }
        if pending.is_empty() {
            restore_parents(parents)?;
            return Ok(copied);
        }
        self.sync_all()?;
        for c in pending {
            c.finish(false)?;
        }
        restore_parents(parents)?;
        self.sync_all()?;
        Ok(copied)
    }

    fn sync_all(&self) -> Result<()> {
        let ctx = || format!("syncing {}", self.snapshots.display());
        let f = std::fs::File::open(&self.snapshots).with_context(ctx)?;
        rustix::fs::syncfs(&f).with_context(ctx)
    }
}

pub(crate) fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    let d = copy_file_data(src, dst)?;
    d.sync_all()
        .with_context(|| format!("syncing {}", dst.display()))
}

/// Copy `src`'s data to `dst` (created or truncated), keeping holes; not synced.
fn copy_file_data(src: &Path, dst: &Path) -> Result<std::fs::File> {
    let ctx = || format!("copying {} to {}", src.display(), dst.display());
    let s = std::fs::File::open(src).with_context(ctx)?;
    let d = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .with_context(ctx)?;
    let len = s.metadata().with_context(ctx)?.len();
    // Copy the data regions only, so sparse files stay sparse.
    let mut off = 0u64;
    while off < len {
        let data = match rustix::fs::seek(&s, SeekFrom::Data(off)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e).with_context(ctx),
        };
        let hole = rustix::fs::seek(&s, SeekFrom::Hole(data)).with_context(ctx)?;
        let mut pos_in = data;
        let mut pos_out = data;
        while pos_in < hole {
            let want = (hole - pos_in) as usize;
            let n =
                rustix::fs::copy_file_range(&s, Some(&mut pos_in), &d, Some(&mut pos_out), want)
                    .with_context(ctx)?;
            if n == 0 {
                break;
            }
        }
        off = hole;
    }
    d.set_len(len).with_context(ctx)?;
    Ok(d)
}

/// One inode's copy-out for one snapshot, written but not yet in place.
struct CopyOut {
    /// The snapshot paths that still hold the replica's inode.
    still: Vec<PathBuf>,
    /// A complete copy already in the snapshot (from an earlier, interrupted copy-out).
    copy: Option<PathBuf>,
    /// The fresh copy beside `still[0]`, renamed over it by `finish`.
    tmp: Option<PathBuf>,
}

/// Find the snapshot paths under `root` that still hold `ino`; unless one
/// of its paths already has a copy, copy `current` beside the first of
/// them (synced with `sync`). Records the original metadata of their
/// directories in `parents` (the first record of a directory wins).
fn prepare(
    ino: u64,
    current: &Path,
    root: &Path,
    paths: &[Vec<u8>],
    parents: &mut BTreeMap<PathBuf, fsutil::Meta>,
    sync: bool,
) -> Result<Option<CopyOut>> {
    let mut still = Vec::new();
    let mut copy: Option<PathBuf> = None;
    for p in paths {
        let full = fsutil::join(root, p);
        match fsutil::lstat(&full)? {
            Some(m) if m.ino() == ino => still.push(full),
            Some(m) if m.is_file() => copy = copy.or(Some(full)),
            _ => {}
        }
    }
    if still.is_empty() {
        return Ok(None);
    }
    // The copies and renames change the snapshot's directories' times; put them back.
    for p in &still {
        let d = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let std::collections::btree_map::Entry::Vacant(e) = parents.entry(d) {
            let m = fsutil::meta(e.key())?;
            e.insert(m);
        }
    }
    let mut tmp = None;
    if copy.is_none() {
        let t = tmp_beside(&still[0]);
        let f = copy_file_data(current, &t)?;
        if sync {
            f.sync_all()
                .with_context(|| format!("syncing {}", t.display()))?;
        }
        drop(f);
        fsutil::set_entry_meta(&t, &fsutil::meta(current)?, false)?;
        tmp = Some(t);
    }
    Ok(Some(CopyOut { still, copy, tmp }))
}

impl CopyOut {
    /// Move the copy over the snapshot paths (hard links among them kept);
    /// with `sync`, each directory is synced after its rename.
    fn finish(self, sync: bool) -> Result<()> {
        let CopyOut {
            mut still,
            copy,
            tmp,
        } = self;
        let sync_parent = |p: &Path| -> Result<()> {
            if sync {
                durable::sync_dir(p.parent().unwrap_or(Path::new("/")))?;
            }
            Ok(())
        };
        let copy = match (copy, tmp) {
            (Some(c), _) => c,
            (None, Some(tmp)) => {
                let first = still.remove(0);
                std::fs::rename(&tmp, &first)
                    .with_context(|| format!("replacing {}", first.display()))?;
                sync_parent(&first)?;
                first
            }
            (None, None) => anyhow::bail!("copy-out without a copy (internal error)"),
        };
        for p in still {
            let tmp = tmp_beside(&p);
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(&copy, &tmp)
                .with_context(|| format!("linking {}", tmp.display()))?;
            std::fs::rename(&tmp, &p).with_context(|| format!("replacing {}", p.display()))?;
            sync_parent(&p)?;
        }
        Ok(())
    }
}

fn restore_parents(parents: BTreeMap<PathBuf, fsutil::Meta>) -> Result<()> {
    for (d, m) in parents {
        fsutil::set_meta(&d, &m)?;
    }
    Ok(())
}

fn tmp_beside(p: &Path) -> PathBuf {
    let name = p.file_name().unwrap_or(OsStr::new("x")).to_string_lossy();
    p.with_file_name(format!(".{name}.standin-cow"))
}

#[cfg(test)]
mod tests;
