//! The agent's record of what the target holds: per path its kind, inode
//! and metadata digest (in memory, a few dozen bytes per path), and per
//! regular file its size, mtime, content digest (BLAKE3-256, the link's
//! `standin_builder::hash::content_digest`) and the digests of its
//! 16 KiB blocks (on disk under `<state-dir>/blockindex/`, one file of
//! 16-byte digests per multi-block file, so memory does not grow with data).
//!
//! A changed file is diffed against its block digests ([`BlockIndex::diff_file`]):
//! only blocks whose digest changed travel. A 4 KiB write into a 1 GiB file
//! sends one 16 KiB block.
//!
//! **Population.** The index describes exactly what the agent has sent (or
//! knows the target holds). It starts empty at every agent start (the
//! Sender drops spilled sets of an earlier run, so a difference mirror runs
//! first). After the mirror, [`BlockIndex::seed`] records the tree, except
//! entries whose ctime is not older than the mirror's start: those may have
//! changed after the mirror read them and are marked unknown, so their first
//! change is sent whole (a Create that replaces). A path that is not in the
//! index at all is new: it is created and its content sent whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use standin_builder::changeset::{metadata_digest, Digest32, Record};
use standin_builder::entry::{Entry, Kind};
use standin_builder::hash::{block_digest, ContentHasher};

/// Default block size: small enough that a 4 KiB write sends under 64 KiB.
pub const BLOCK_SIZE: u64 = 16 << 10;

/// Largest data of one WriteExtent the diff produces (adjacent changed
/// blocks are merged up to this).
pub const MAX_EXTENT: u64 = 1 << 20;

/// Device and inode number.
pub type Ino = (u64, u64);

/// What the target holds at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    pub kind: Kind,
    pub ino: Ino,
    /// [`metadata_digest`] of the entry as last sent.
    pub meta: Digest32,
    /// The target's state here is not known (seeded after it may have
    /// changed, or part of a change set that was never queued): the next
    /// change replaces it whole.
    pub unknown: bool,
}

/// What the target holds as content of one inode.
#[derive(Debug, Clone)]
pub struct FileState {
    id: u64,
    pub size: u64,
    pub mtime_ns: i64,
    /// The content digest (BLAKE3-256) of what the target holds.
    pub digest: Digest32,
    /// One path of this inode the target has (for hard links).
    pub path: Vec<u8>,
}

/// See the module documentation.
pub struct BlockIndex {
    dir: PathBuf,
    block: u64,
    paths: BTreeMap<Vec<u8>, PathState>,
    files: HashMap<Ino, FileState>,
    /// Names of regular files that had more than one link when seen (hard
    /// links), by inode. May hold stale names; [`BlockIndex::link_names`]
    /// checks them against `paths`.
    links: HashMap<Ino, BTreeSet<Vec<u8>>>,
    next_id: u64,
}

/// The result of diffing one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileDiff {
    /// Content records were emitted.
    pub changed: bool,
    /// Data bytes in them.
    pub data_bytes: u64,
    /// Bytes read from the file.
    pub read_bytes: u64,
}

impl BlockIndex {
    /// Open (and empty) the index under `state_dir/blockindex`.
    pub fn open(state_dir: &Path) -> Result<BlockIndex> {
        Self::with_block_size(state_dir, BLOCK_SIZE)
    }

    /// [`BlockIndex::open`] with another block size (a multiple of 4 KiB).
    pub fn with_block_size(state_dir: &Path, block: u64) -> Result<BlockIndex> {
        anyhow::ensure!(
            block >= 4096 && block % 4096 == 0,
            "block size {block} is not a multiple of 4 KiB"
        );
        let dir = state_dir.join("blockindex");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(BlockIndex {
            dir,
            block,
            paths: BTreeMap::new(),
            files: HashMap::new(),
            links: HashMap::new(),
            next_id: 1,
        })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// Number of paths known.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// No path known.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The state of `path`.
    pub fn get(&self, path: &[u8]) -> Option<&PathState> {
        self.paths.get(path)
    }

    /// All known paths (for sweeps).
    pub fn paths(&self) -> impl Iterator<Item = (&Vec<u8>, &PathState)> {
        self.paths.iter()
    }

    /// Content state of an inode.
    pub fn file(&self, ino: Ino) -> Option<&FileState> {
        self.files.get(&ino)
    }

    /// Note that the regular file `path` (inode `ino`) had `nlink` links
    /// when it was sent: with more than one it joins its inode's known names.
    pub fn note_links(&mut self, path: &[u8], ino: Ino, nlink: u64) {
        if nlink > 1 {
            self.links.entry(ino).or_default().insert(path.to_vec());
        }
    }

    /// The known names (as the target holds them) of the hard-linked inode
    /// `ino`, sorted.
    pub fn link_names(&self, ino: Ino) -> Vec<Vec<u8>> {
        let holds = |p: &Vec<u8>| {
            self.paths
                .get(p)
                .is_some_and(|s| s.ino == ino && s.kind == Kind::File && !s.unknown)
        };
        // The name the content state was recorded under counts too (the
        // first name of an inode that got its links later).
        let mut names: BTreeSet<Vec<u8>> = self
            .links
            .get(&ino)
            .map(|n| n.iter().filter(|p| holds(p)).cloned().collect())
            .unwrap_or_default();
        if let Some(f) = self.files.get(&ino).filter(|f| holds(&f.path)) {
            names.insert(f.path.clone());
        }
        names.into_iter().collect()
    }

    /// Every hard-linked inode with known names.
    pub fn linked_inodes(&self) -> Vec<Ino> {
        self.links.keys().copied().collect()
    }

    fn unlink_name(&mut self, ino: Ino, path: &[u8]) {
        if let Some(names) = self.links.get_mut(&ino) {
            names.remove(path);
            if names.is_empty() {
                self.links.remove(&ino);
            }
        }
    }

    /// Record `path` as the target holds it.
    pub fn insert(&mut self, path: Vec<u8>, st: PathState) {
        self.paths.insert(path, st);
    }

    /// Mark `path` unknown (its next change replaces it whole).
    pub fn mark_unknown(&mut self, path: &[u8], kind: Kind) {
        let e = self.paths.entry(path.to_vec()).or_insert(PathState {
            kind,
            ino: (0, 0),
            meta: [0; 32],
            unknown: true,
        });
        e.unknown = true;
    }

    /// Forget the content state of an inode (its next change is sent whole).
    pub fn forget_file(&mut self, ino: Ino) {
        if let Some(f) = self.files.remove(&ino) {
            let _ = std::fs::remove_file(self.digest_path(f.id));
        }
    }

    fn is_under(p: &[u8], dir: &[u8]) -> bool {
        p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
    }

    /// Keys of `path` and everything below it.
    fn subtree_keys(&self, path: &[u8]) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        if self.paths.contains_key(path) {
            keys.push(path.to_vec());
        }
        let mut start = path.to_vec();
        start.push(b'/');
        for (k, _) in self.paths.range(start.clone()..) {
            if !k.starts_with(&start) {
                break;
            }
            keys.push(k.clone());
        }
        keys
    }

    /// Known entries directly below the directory `dir` (`""` is the root).
    pub fn children(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        let mut start = dir.to_vec();
        if !start.is_empty() {
            start.push(b'/');
        }
        self.paths
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .filter(|(k, _)| !k[start.len()..].contains(&b'/') && k.len() > start.len())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Forget `path` and everything below it; returns how many paths were known.
    pub fn remove_tree(&mut self, path: &[u8]) -> usize {
        let keys = self.subtree_keys(path);
        for k in &keys {
            if let Some(st) = self.paths.remove(k) {
                if st.kind != Kind::File {
                    continue;
                }
                self.unlink_name(st.ino, k);
                if self.files.get(&st.ino).is_some_and(|f| &f.path == k) {
                    // The content state stays with another known name of
                    // the inode (a hard link), else it goes.
                    match self.link_names(st.ino).into_iter().next() {
                        Some(other) => {
                            if let Some(f) = self.files.get_mut(&st.ino) {
                                f.path = other;
                            }
                        }
                        None => self.forget_file(st.ino),
                    }
                }
            }
        }
        keys.len()
    }

    /// `from` (and everything below it) is now at `to`, replacing `to`.
    pub fn rename_tree(&mut self, from: &[u8], to: &[u8]) {
        if from == to || Self::is_under(to, from) {
            return;
        }
        self.remove_tree(to);
        for k in self.subtree_keys(from) {
            let st = self.paths.remove(&k).expect("listed");
            let mut nk = to.to_vec();
            nk.extend_from_slice(&k[from.len()..]);
            if st.kind == Kind::File {
                if let Some(f) = self.files.get_mut(&st.ino) {
                    if f.path == k {
                        f.path = nk.clone();
                    }
                }
                if let Some(names) = self.links.get_mut(&st.ino) {
                    if names.remove(&k) {
                        names.insert(nk.clone());
                    }
                }
            }
            self.paths.insert(nk, st);
        }
    }

    fn digest_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.bd"))
    }

    fn load_digests(&self, f: &FileState) -> Vec<[u8; 16]> {
        let n = f.size.div_ceil(self.block) as usize;
        if n <= 1 {
            // One block: its block digest is the content digest's prefix
            // (both BLAKE3 of the same bytes, `hash::block_digest`).
            let mut d = [0u8; 16];
            d.copy_from_slice(&f.digest[..16]);
            return if n == 1 { vec![d] } else { Vec::new() };
        }
        match std::fs::read(self.digest_path(f.id)) {
            Ok(b) if b.len() == n * 16 => b
                .chunks_exact(16)
                .map(|c| {
                    let mut d = [0u8; 16];
                    d.copy_from_slice(c);
                    d
                })
                .collect(),
            // Lost or torn: nothing matches, everything is sent.
            _ => Vec::new(),
        }
    }

    /// Compare the regular file `abs` (the entry `e`, inode `ino`) with what
    /// the target holds and emit the records that make the target's copy
    /// equal: `WriteExtent`s of changed blocks and a final `Truncate` to the
    /// size that carries the whole content's digest (BLAKE3). `fresh`: the target's
    /// file is new and empty (after a Create), everything but holes is sent.
    /// Updates the index. Nothing is emitted when the content is unchanged.
    pub fn diff_file(
        &mut self,
        abs: &Path,
        e: &Entry,
        ino: Ino,
        fresh: bool,
        emit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<FileDiff> {
        let prev = if fresh {
            None
        } else {
            self.files.get(&ino).cloned()
        };
        let old: Vec<[u8; 16]> = prev
            .as_ref()
            .map(|f| self.load_digests(f))
            .unwrap_or_default();
        let old_size = prev.as_ref().map(|f| f.size).unwrap_or(0);
        if prev.is_none() && !fresh {
            // What the target holds is not known: start from empty.
            emit(Record::Truncate {
                path: e.path.clone(),
                size: 0,
                content_digest: None,
            })?;
        }
        let file =
            std::fs::File::open(abs).with_context(|| format!("opening {}", abs.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("reading {}", abs.display()))?
            .len();
        let b = self.block;
        let nblocks = size.div_ceil(b) as usize;
        let zero = vec![0u8; b as usize];
        let mut whole = ContentHasher::new();
        let mut digests = Vec::with_capacity(nblocks);
        let mut out = FileDiff::default();
        let mut buf = vec![0u8; b as usize];
        // Pending extent of adjacent changed blocks.
        let mut ext_off = 0u64;
        let mut ext: Vec<u8> = Vec::new();
        let path = &e.path;
        let mut flush = |ext_off: u64, ext: &mut Vec<u8>, out: &mut FileDiff| -> Result<()> {
            if ext.is_empty() {
                return Ok(());
            }
            out.changed = true;
            out.data_bytes += ext.len() as u64;
            emit(Record::WriteExtent {
                path: path.clone(),
                offset: ext_off,
                data: std::mem::take(ext),
                content_digest: None,
            })
        };
        let mut next_data = next_data_at(&file, 0, size);
        for k in 0..nblocks {
            let off = k as u64 * b;
            let len = (size - off).min(b) as usize;
            let hole = next_data.is_none_or(|d| d >= off + len as u64);
            let data: &[u8] = if hole {
                &zero[..len]
            } else {
                read_full_at(&file, &mut buf[..len], off)
                    .with_context(|| format!("reading {}", abs.display()))?;
                out.read_bytes += len as u64;
                if next_data.is_some_and(|d| d < off + len as u64) {
                    next_data = next_data_at(&file, off + len as u64, size);
                }
                &buf[..len]
            };
            whole.update(data);
            let d = block_digest(data);
            let beyond_old = off >= old_size;
            // Beyond the target's old end the file reads as zeros already.
            let same =
                old.get(k) == Some(&d) || (beyond_old && (hole || data.iter().all(|&x| x == 0)));
            digests.push(d);
            if same {
                flush(ext_off, &mut ext, &mut out)?;
                continue;
            }
            if ext.is_empty() {
                ext_off = off;
            }
            ext.extend_from_slice(data);
            if ext.len() as u64 >= MAX_EXTENT {
                flush(ext_off, &mut ext, &mut out)?;
            }
        }
        flush(ext_off, &mut ext, &mut out)?;
        let sha: Digest32 = whole.finalize();
        let unchanged = prev
            .as_ref()
            .is_some_and(|p| p.digest == sha && p.size == size);
        if !unchanged {
            out.changed = true;
            emit(Record::Truncate {
                path: e.path.clone(),
                size,
                content_digest: Some(sha),
            })?;
        }
        let id = match prev {
            Some(p) => p.id,
            None => {
                if let Some(old) = self.files.get(&ino) {
                    old.id
                } else {
                    self.next_id += 1;
                    self.next_id
                }
            }
        };
        if nblocks > 1 {
            let flat: Vec<u8> = digests.iter().flatten().copied().collect();
            let p = self.digest_path(id);
            std::fs::write(&p, flat).with_context(|| format!("writing {}", p.display()))?;
        } else {
            let _ = std::fs::remove_file(self.digest_path(id));
        }
        if let Some(old) = self.files.get(&ino) {
            if old.path != e.path {
                // Another name of the same inode (a hard link): it stays
                // known as one of the inode's names.
                let old = old.path.clone();
                self.links.entry(ino).or_default().insert(old);
            }
        }
        self.files.insert(
            ino,
            FileState {
                id,
                size,
                mtime_ns: e.mtime_ns,
                digest: sha,
                path: e.path.clone(),
            },
        );
        Ok(out)
    }

    /// Record a path's state from its entry (after sending it).
    pub fn record(&mut self, e: &Entry, ino: Ino) {
        self.paths.insert(
            e.path.clone(),
            PathState {
                kind: e.kind,
                ino,
                meta: metadata_digest(e),
                unknown: false,
            },
        );
    }

    /// After a mirror that started at `mirror_started`: record the tree
    /// under `root` as the target holds it. Entries changed since the mirror
    /// started (ctime not older) are marked unknown. Returns (known, unknown).
    pub fn seed(
        &mut self,
        root: &Path,
        scan: &standin_builder::scan::ScanOptions,
        mirror_started: std::time::SystemTime,
    ) -> Result<(u64, u64)> {
        let since = mirror_started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
            - 1_000_000_000;
        let (mut known, mut unknown) = (0, 0);
        let mut sink = |_: Record| Ok(());
        for s in
            standin_builder::scan::Scanner::new(root, scan, &standin_builder::progress::NoProgress)?
        {
            let s = s?;
            let md = match std::fs::symlink_metadata(&s.abs) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let ctime = md.ctime() * 1_000_000_000 + md.ctime_nsec();
            let ino = (md.dev(), md.ino());
            if ctime >= since {
                self.mark_unknown(&s.entry.path, s.entry.kind);
                unknown += 1;
                continue;
            }
            if s.entry.kind == Kind::File && !self.files.contains_key(&ino) {
                self.diff_file(&s.abs, &s.entry, ino, true, &mut sink)?;
            }
            if s.entry.kind == Kind::File {
                self.note_links(&s.entry.path, ino, md.nlink());
            }
            self.record(&s.entry, ino);
            known += 1;
        }
        Ok((known, unknown))
    }
}

fn read_full_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                // The file shrank while reading: the rest reads as zeros; a
                // later event sends the new size.
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Offset of the next data at or after `pos` (SEEK_DATA), `None` when only
/// a hole follows. Filesystems without SEEK_DATA report data everywhere.
fn next_data_at(f: &std::fs::File, pos: u64, size: u64) -> Option<u64> {
    if pos >= size {
        return None;
    }
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
        Ok(d) if d < size => Some(d),
        Ok(_) => None,
        Err(rustix::io::Errno::NXIO) => None,
        Err(_) => Some(pos),
    }
}

#[cfg(test)]
mod tests;
