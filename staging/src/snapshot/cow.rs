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

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::SeekFrom;

use crate::durable;
use crate::failover::fsutil;

/// A snapshot root and its paths that hold one replica inode.
type Sharer = (PathBuf, Vec<Vec<u8>>);

/// Snapshots sharing inodes with the replica, loaded from their indexes.
#[derive(Debug, Default)]
pub struct Guard {
    snapshots: PathBuf,
    stamp: Option<(i64, i64, u64)>,
    /// Replica inode → (snapshot root, paths in it).
    shared: HashMap<u64, Vec<Sharer>>,
    /// Inodes a seeded staging area shares with the live system.
    seeds: crate::seed::guard::Seeds,
}

impl Guard {
    /// A guard for the snapshots of `state_dir`.
    pub fn new(state_dir: &Path) -> Guard {
        Guard {
            snapshots: super::dir(state_dir),
            seeds: crate::seed::guard::Seeds::new(state_dir),
            ..Default::default()
        }
    }

    fn reload(&mut self) -> Result<()> {
        let stamp = match std::fs::metadata(&self.snapshots) {
            Ok(m) => Some((m.mtime(), m.mtime_nsec(), m.ino())),
            Err(_) => None,
        };
        if stamp == self.stamp && self.stamp.is_some() {
            return Ok(());
        }
        self.shared.clear();
        if let Ok(rd) = std::fs::read_dir(&self.snapshots) {
            for e in rd.flatten() {
                let idx = e.path().join(super::take::INODES_FILE);
                if e.file_name().to_string_lossy().starts_with('.') || !idx.exists() {
                    continue;
                }
                let b =
                    std::fs::read(&idx).with_context(|| format!("reading {}", idx.display()))?;
                let map: BTreeMap<u64, Vec<String>> = serde_json::from_slice(&b)
                    .with_context(|| format!("reading {}", idx.display()))?;
                let root = e.path().join("root");
                for (ino, paths) in map {
                    let paths = paths
                        .iter()
                        .map(|p| standin_builder::bytes::decode(p).map_err(anyhow::Error::msg))
                        .collect::<Result<Vec<_>>>()?;
                    self.shared
                        .entry(ino)
                        .or_default()
                        .push((root.clone(), paths));
                }
            }
        }
        self.stamp = stamp;
        Ok(())
    }

    /// Call before changing the inode `ino` of the replica in place;
    /// `current` is a path of the replica that holds it.
    pub fn before_modify(&mut self, ino: u64, current: &Path) -> Result<()> {
        self.reload()?;
        if let Some(list) = self.shared.remove(&ino) {
            for (root, paths) in list {
                copy_out(ino, current, &root, &paths)?;
            }
        }
        // A seeded staging area: the replica's names move to a copy; the
        // live system keeps its inode.
        self.seeds.before_modify(ino, current)
    }
}

pub(crate) fn copy_file(src: &Path, dst: &Path) -> Result<()> {
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
    d.sync_all().with_context(ctx)?;
    Ok(())
}

fn copy_out(ino: u64, current: &Path, root: &Path, paths: &[Vec<u8>]) -> Result<()> {
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
        return Ok(());
    }
    // The renames below change the snapshot's directories' times; put them back.
    let mut parents = BTreeMap::new();
    for p in &still {
        let d = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let std::collections::btree_map::Entry::Vacant(e) = parents.entry(d) {
            let m = fsutil::meta(e.key())?;
            e.insert(m);
        }
    }
    if copy.is_none() {
        let first = &still[0];
        let tmp = tmp_beside(first);
        copy_file(current, &tmp)?;
        fsutil::set_entry_meta(&tmp, &fsutil::meta(current)?, false)?;
        std::fs::rename(&tmp, first).with_context(|| format!("replacing {}", first.display()))?;
        durable::sync_dir(first.parent().unwrap_or(Path::new("/")))?;
        copy = Some(still.remove(0));
    }
    let copy = copy.expect("set above");
    for p in still {
        let tmp = tmp_beside(&p);
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(&copy, &tmp).with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("replacing {}", p.display()))?;
        durable::sync_dir(p.parent().unwrap_or(Path::new("/")))?;
    }
    for (d, m) in parents {
        fsutil::set_meta(&d, &m)?;
    }
    Ok(())
}

fn tmp_beside(p: &Path) -> PathBuf {
    let name = p.file_name().unwrap_or(OsStr::new("x")).to_string_lossy();
    p.with_file_name(format!(".{name}.standin-cow"))
}
