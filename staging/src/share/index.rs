//! Inode indexes of trees that share inodes with a replica or with the live
//! system (`inodes.json` of a hardlink snapshot, `seed-inodes.json` of a
//! hardlink seed): inode → paths (builder's byte encoding) in the tree
//! beside the index (`<dir>/<name>/root`). [`Indexes`] loads every index
//! of a directory and reloads them when they change.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Inode → paths in one tree (what an index file holds).
pub type Index = BTreeMap<u64, Vec<String>>;

/// A tree's root and its paths that hold one inode.
pub type Sharer = (PathBuf, Vec<Vec<u8>>);

/// Add `rel` to the paths of `ino`.
pub fn add(index: &mut Index, ino: u64, rel: &[u8]) {
    index
        .entry(ino)
        .or_default()
        .push(standin_builder::bytes::encode(rel));
}

/// Read one index file.
pub fn read(path: &Path) -> Result<Index> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))
}

/// How [`Indexes`] notices that an index was added, replaced or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// By the directory's own change time: indexes only come and go with
    /// their tree, renamed into the directory whole (snapshots). Names
    /// starting with `.` (trees being made or deleted) are left out.
    Dir,
    /// By every index file's change time (seeds: an index is written into
    /// an area that already exists).
    Files,
}

/// Modification time (s, ns) and inode of a watched file.
type Stamp = (PathBuf, i64, i64, u64);

/// Every index named `file` in the subdirectories of `dir`, merged:
/// inode → the trees (and paths in them) that hold it.
#[derive(Debug)]
pub struct Indexes {
    dir: PathBuf,
    file: &'static str,
    watch: Watch,
    stamp: Option<Vec<Stamp>>,
    /// Inode → sharers, as of the last [`Indexes::reload`].
    pub shared: HashMap<u64, Vec<Sharer>>,
}

fn stamp_of(p: PathBuf) -> Option<Stamp> {
    let m = std::fs::metadata(&p).ok()?;
    Some((p, m.mtime(), m.mtime_nsec(), m.ino()))
}

impl Indexes {
    /// The indexes named `file` below `dir` (loaded on the first reload).
    pub fn new(dir: PathBuf, file: &'static str, watch: Watch) -> Indexes {
        Indexes {
            dir,
            file,
            watch,
            stamp: None,
            shared: HashMap::new(),
        }
    }

    /// The index files there are now, with their stamps.
    fn files(&self) -> Vec<Stamp> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if self.watch == Watch::Dir && e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                out.extend(stamp_of(e.path().join(self.file)));
            }
        }
        out.sort();
        out
    }

    /// Load the indexes again when they changed since the last call.
    pub fn reload(&mut self) -> Result<()> {
        let (stamp, files) = match self.watch {
            Watch::Dir => (stamp_of(self.dir.clone()).into_iter().collect(), None),
            Watch::Files => {
                let f = self.files();
                (f.clone(), Some(f))
            }
        };
        if self.stamp.as_ref() == Some(&stamp) {
            return Ok(());
        }
        let files = files.unwrap_or_else(|| self.files());
        self.shared.clear();
        for (idx, ..) in &files {
            let root = idx.with_file_name("root");
            for (ino, paths) in read(idx)? {
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
        self.stamp = Some(stamp);
        Ok(())
    }
}
