//! Walk a root and yield every entry with full metadata, in tree order
//! ([`crate::entry::path_cmp`]), streaming: nothing but hardlink groups is
//! kept in memory.
//!
//! Content digests are not computed here; see [`crate::manifest`] (parallel
//! hashing) and [`crate::archive`] (hash while archiving).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::digest_table::Stamp;
use crate::entry::{Entry, Kind, Xattr};
use crate::progress::Progress;

/// Directories whose content is left out when the root is `/`. The
/// directories themselves are kept (empty, with their metadata), so a
/// restored system has its mount points and boots.
pub const SYSTEM_EXCLUDES: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp", "/var/lib/standin"];

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Globs matched against the path relative to the root with a leading
    /// `/` (`/var/cache/**`, `*.tmp`). A matching entry and everything below
    /// it is left out.
    pub excludes: Vec<String>,
    /// Stay on the root's filesystem (mount points are kept as directories,
    /// their content is not read). Default: true.
    pub one_file_system: bool,
    /// When the root is `/`: directories kept empty (default [`SYSTEM_EXCLUDES`];
    /// put the standin state dir here if it lives elsewhere).
    pub system_excludes: Vec<String>,
    /// Apply `system_excludes` even when the root is not `/` (for images of
    /// a mounted system volume, and for tests).
    pub always_system_excludes: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            excludes: Vec::new(),
            one_file_system: true,
            system_excludes: SYSTEM_EXCLUDES.iter().map(|s| s.to_string()).collect(),
            always_system_excludes: false,
        }
    }
}

/// One scanned entry: its manifest entry (without `sha256`) and where it is on disk.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub entry: Entry,
    pub abs: PathBuf,
    /// A regular file's stamp from the same `lstat` (for digest caches).
    pub stamp: Option<Stamp>,
    /// The entry's inode from the same `lstat` (any entry).
    pub inode: Inode,
}

/// Where an entry lives and when its inode last changed, from its `lstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inode {
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i64,
    pub nlink: u64,
}

impl Inode {
    /// The inode of `md`.
    pub fn of(md: &std::fs::Metadata) -> Inode {
        Inode {
            dev: md.dev(),
            ino: md.ino(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            nlink: md.nlink(),
        }
    }
}

/// Paths the walk hands to the parallel `lstat` + xattr step at a time.
pub const WALK_BATCH: usize = 512;

/// Streaming scanner; an iterator of [`Scanned`] in tree order.
///
/// The directory walk (readdir, excludes, mount points) runs on the
/// calling thread; the per-entry `lstat`, xattrs, symlink targets and
/// sparse extents of each batch of [`WALK_BATCH`] paths run on the rayon
/// pool, and hardlink groups are then assigned in tree order, so the
/// result is exactly the serial walk's ([`Scanner::with_batch`] with 1).
/// With batches, the walk runs on its own thread a few batches ahead of
/// the metadata reads. Memory: a few batches.
pub struct Scanner<'p> {
    /// The walk, until it moves to its thread.
    walker: Option<Walker>,
    /// Batches from the walking thread.
    rx: Option<std::sync::mpsc::Receiver<Vec<Walked>>>,
    links: HashMap<(u64, u64), Vec<u8>>,
    progress: &'p dyn Progress,
    batch: usize,
    ready: std::collections::VecDeque<Result<Scanned>>,
    walk_done: bool,
}

/// Batches the walking thread keeps ready.
const WALK_AHEAD: usize = 2;

/// The directory walk: paths in tree order, excludes applied.
struct Walker {
    root: PathBuf,
    walk: walkdir::IntoIter,
    excludes: GlobSet,
    keep_empty: Vec<Vec<u8>>,
    root_dev: u64,
    one_file_system: bool,
}

/// One path from the walk, the walk's error, or a note, in tree order.
enum Walked {
    Path(PathBuf, Vec<u8>),
    Failed(anyhow::Error),
    Note(String),
}

/// An entry's metadata read in parallel, before its hardlink group is known.
enum Statted {
    Entry {
        entry: Box<Entry>,
        stamp: Option<Stamp>,
        inode: Inode,
        key: Option<(u64, u64)>,
        abs: PathBuf,
    },
    Socket(PathBuf),
    Vanished(PathBuf),
    Failed(anyhow::Error),
    Note(String),
}

impl<'p> Scanner<'p> {
    /// Start scanning `root`.
    pub fn new(root: &Path, opts: &ScanOptions, progress: &'p dyn Progress) -> Result<Self> {
        Self::with_batch(root, opts, progress, WALK_BATCH)
    }

    /// [`Scanner::new`] reading `batch` entries' metadata at a time in
    /// parallel (1: serially, on the calling thread).
    pub fn with_batch(
        root: &Path,
        opts: &ScanOptions,
        progress: &'p dyn Progress,
        batch: usize,
    ) -> Result<Self> {
        let meta = std::fs::symlink_metadata(root)
            .with_context(|| format!("reading root {}", root.display()))?;
        if !meta.is_dir() {
            anyhow::bail!("root {} is not a directory", root.display());
        }
        let (excludes, keep_empty) = filters(root, opts)?;
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .same_file_system(opts.one_file_system)
            .sort_by_file_name()
            .into_iter();
        Ok(Self {
            walker: Some(Walker {
                root: root.to_path_buf(),
                walk,
                excludes,
                keep_empty,
                root_dev: meta.dev(),
                one_file_system: opts.one_file_system,
            }),
            rx: None,
            links: HashMap::new(),
            progress,
            batch: batch.max(1),
            ready: Default::default(),
            walk_done: false,
        })
    }
}

/// The scan's filters for `root`: the exclude globs (matched against the
/// relative path with a leading `/`) and the directories kept empty
/// (relative paths). Shared with [`crate::count`] and the agent's
/// replication filter so all of them leave out the same.
pub fn filters(root: &Path, opts: &ScanOptions) -> Result<(GlobSet, Vec<Vec<u8>>)> {
    let mut gs = GlobSetBuilder::new();
    for g in &opts.excludes {
        let pat = if g.starts_with('/') || g.starts_with('*') {
            g.clone()
        } else {
            format!("/{g}")
        };
        gs.add(Glob::new(&pat).with_context(|| format!("parsing exclude pattern {g:?}"))?);
    }
    let excludes = gs.build().context("building exclude patterns")?;
    let is_slash = std::fs::canonicalize(root)
        .map(|p| p == Path::new("/"))
        .unwrap_or(false);
    let keep_empty = if is_slash || opts.always_system_excludes {
        opts.system_excludes
            .iter()
            .map(|s| {
                s.trim_start_matches('/')
                    .trim_end_matches('/')
                    .as_bytes()
                    .to_vec()
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok((excludes, keep_empty))
}

impl Walker {
    /// Skip the descendants of a directory entry just yielded by walkdir.
    /// walkdir only descends into (pushes) directories on the root's
    /// filesystem when `one_file_system` is set, and `skip_current_dir`
    /// pops the last pushed one: calling it for a mount point would skip
    /// the rest of its parent instead.
    fn skip_children(&mut self, dent: &walkdir::DirEntry) {
        if !dent.file_type().is_dir() {
            return;
        }
        let pushed = !self.one_file_system
            || dent.depth() == 0
            || dent
                .metadata()
                .map(|m| m.dev() == self.root_dev)
                .unwrap_or(false);
        if pushed {
            self.walk.skip_current_dir();
        }
    }

    fn rel(&self, p: &Path) -> Vec<u8> {
        // The walk's paths are the root's bytes joined with names: cut them
        // off as bytes (no component parsing); anything else the slow way.
        let (pb, rb) = (p.as_os_str().as_bytes(), self.root.as_os_str().as_bytes());
        if let Some(rest) = pb.strip_prefix(rb) {
            if rest.is_empty() {
                return Vec::new();
            }
            if let Some(rest) = rest
                .strip_prefix(b"/")
                .or(rb.ends_with(b"/").then_some(rest))
            {
                if !rest.is_empty() && !rest.starts_with(b"/") && !rest.ends_with(b"/") {
                    return rest.to_vec();
                }
            }
        }
        p.strip_prefix(&self.root)
            .map(|r| r.as_os_str().as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// The next path of the walk (excludes applied), `None` at the end.
    fn walk_next(&mut self) -> Option<Walked> {
        loop {
            let dent = match self.walk.next()? {
                Ok(d) => d,
                Err(e) => {
                    let path = e
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    if e.io_error().map(|io| io.kind()) == Some(io::ErrorKind::NotFound) {
                        return Some(Walked::Note(format!(
                            "{path} vanished while scanning; left out"
                        )));
                    }
                    return Some(Walked::Failed(
                        anyhow::Error::new(e).context(format!("scanning {path}")),
                    ));
                }
            };
            let rel = self.rel(dent.path());
            if !rel.is_empty() {
                let mut slashed = Vec::with_capacity(rel.len() + 1);
                slashed.push(b'/');
                slashed.extend_from_slice(&rel);
                if self
                    .excludes
                    .is_match(Path::new(std::ffi::OsStr::from_bytes(&slashed)))
                {
                    self.skip_children(&dent);
                    continue;
                }
            }
            if dent.file_type().is_dir() && self.keep_empty.contains(&rel) {
                self.skip_children(&dent);
            }
            return Some(Walked::Path(dent.into_path(), rel));
        }
    }

    /// Up to `n` paths (fewer at the end or after an error); `None` when
    /// the walk is over.
    fn next_batch(&mut self, n: usize) -> Option<Vec<Walked>> {
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            match self.walk_next() {
                Some(w) => {
                    let failed = matches!(w, Walked::Failed(_));
                    batch.push(w);
                    if failed {
                        break;
                    }
                }
                None if batch.is_empty() => return None,
                None => break,
            }
        }
        Some(batch)
    }
}

impl Scanner<'_> {
    /// The next batch of the walk: from the walking thread (started on
    /// the first call), or walked here when batches are of one path.
    fn walk_batch(&mut self) -> Option<Vec<Walked>> {
        if self.batch == 1 {
            return self.walker.as_mut()?.next_batch(1);
        }
        if self.rx.is_none() {
            let mut walker = self.walker.take()?;
            let (tx, rx) = std::sync::mpsc::sync_channel(WALK_AHEAD);
            let n = self.batch;
            let spawned = std::thread::Builder::new()
                .name("standin-walk".into())
                .spawn(move || {
                    while let Some(b) = walker.next_batch(n) {
                        if tx.send(b).is_err() {
                            return;
                        }
                    }
                    // The end: an empty batch (a closed channel without it
                    // means the thread failed).
                    let _ = tx.send(Vec::new());
                });
            if let Err(e) = spawned {
                let e = anyhow::Error::new(e).context("starting the scan's walking thread");
                return Some(vec![Walked::Failed(e)]);
            }
            self.rx = Some(rx);
        }
        match self.rx.as_ref()?.recv() {
            Ok(b) if b.is_empty() => None,
            Ok(b) => Some(b),
            Err(_) => {
                self.rx = None;
                let e = anyhow::anyhow!("the scan's walking thread stopped");
                Some(vec![Walked::Failed(e)])
            }
        }
    }

    /// Walk the next batch, read its metadata (in parallel) and queue the
    /// results in tree order.
    fn fill(&mut self) {
        let Some(batch) = self.walk_batch() else {
            self.walk_done = true;
            return;
        };
        let statted: Vec<Statted> = if batch.len() == 1 || self.batch == 1 {
            batch.into_iter().map(stat_walked).collect()
        } else {
            use rayon::prelude::*;
            batch.into_par_iter().map(stat_walked).collect()
        };
        for st in statted {
            let item = match st {
                Statted::Entry {
                    mut entry,
                    stamp,
                    inode,
                    key,
                    abs,
                } => {
                    if let Some(key) = key {
                        if let Some(first) = self.links.get(&key) {
                            entry.link = Some(first.clone());
                            entry.sparse = None;
                        } else {
                            self.links.insert(key, entry.path.clone());
                        }
                    }
                    Ok(Scanned {
                        entry: *entry,
                        abs,
                        stamp,
                        inode,
                    })
                }
                Statted::Socket(abs) => {
                    self.progress
                        .note(&format!("{} is a socket; left out", abs.display()));
                    continue;
                }
                Statted::Vanished(abs) => {
                    self.progress.note(&format!(
                        "{} vanished while scanning; left out",
                        abs.display()
                    ));
                    continue;
                }
                Statted::Failed(e) => Err(e),
                Statted::Note(n) => {
                    self.progress.note(&n);
                    continue;
                }
            };
            self.ready.push_back(item);
        }
    }
}

/// The parallel step: one path's metadata, hardlink group left open.
fn stat_walked(w: Walked) -> Statted {
    let (abs, rel) = match w {
        Walked::Path(abs, rel) => (abs, rel),
        Walked::Failed(e) => return Statted::Failed(e),
        Walked::Note(n) => return Statted::Note(n),
    };
    let mut none = HashMap::new();
    match stat_entry_meta(&abs, rel, &mut none) {
        Ok(Some((entry, md))) => {
            let key = (entry.kind != Kind::Dir && md.nlink() > 1).then(|| (md.dev(), md.ino()));
            Statted::Entry {
                entry: Box::new(entry),
                stamp: Stamp::of_metadata(&md),
                inode: Inode::of(&md),
                key,
                abs,
            }
        }
        Ok(None) => Statted::Socket(abs),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Statted::Vanished(abs),
        Err(e) => {
            let ctx = format!("reading {}", abs.display());
            Statted::Failed(anyhow::Error::new(e).context(ctx))
        }
    }
}

impl Iterator for Scanner<'_> {
    type Item = Result<Scanned>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && !self.walk_done {
            self.fill();
        }
        self.ready.pop_front()
    }
}

/// Read one path's metadata into an [`Entry`] (no `sha256`). `Ok(None)` for
/// sockets. `links` tracks hardlink groups across calls.
pub fn stat_entry(
    abs: &Path,
    rel: Vec<u8>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> io::Result<Option<Entry>> {
    Ok(stat_entry_stamped(abs, rel, links)?.map(|(e, _)| e))
}

/// [`stat_entry`], plus the regular file's [`Stamp`] from the same `lstat`
/// (for digest caches).
pub fn stat_entry_stamped(
    abs: &Path,
    rel: Vec<u8>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> io::Result<Option<(Entry, Option<Stamp>)>> {
    Ok(stat_entry_meta(abs, rel, links)?.map(|(e, md)| {
        let stamp = Stamp::of_metadata(&md);
        (e, stamp)
    }))
}

/// [`stat_entry`], plus the `lstat` metadata it was read from (inode and
/// change time for callers that detect later changes).
pub fn stat_entry_meta(
    abs: &Path,
    rel: Vec<u8>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> io::Result<Option<(Entry, std::fs::Metadata)>> {
    let md = std::fs::symlink_metadata(abs)?;
    let Some(kind) = Kind::of(md.file_type()) else {
        return Ok(None);
    };
    let mut entry = Entry {
        path: rel,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        size: 0,
        xattrs: read_xattrs(abs)?,
        target: None,
        link: None,
        rdev: None,
        sparse: None,
        sha256: None,
    };
    if kind != Kind::Dir && md.nlink() > 1 {
        let key = (md.dev(), md.ino());
        if let Some(first) = links.get(&key) {
            entry.link = Some(first.clone());
        } else {
            links.insert(key, entry.path.clone());
        }
    }
    match kind {
        Kind::File => {
            entry.size = md.len();
            if entry.link.is_none() && md.blocks() * 512 < md.len() {
                entry.sparse = data_extents(abs, md.len())?;
            }
        }
        Kind::Symlink => {
            let t = std::fs::read_link(abs)?;
            entry.size = t.as_os_str().len() as u64;
            entry.target = Some(t.into_os_string().into_encoded_bytes());
        }
        Kind::Char | Kind::Block => {
            let d = md.rdev();
            entry.rdev = Some((rustix::fs::major(d), rustix::fs::minor(d)));
        }
        _ => {}
    }
    Ok(Some((entry, md)))
}

/// All xattrs of a path (not following symlinks).
pub fn read_xattrs(path: &Path) -> io::Result<BTreeMap<Xattr, Xattr>> {
    // Most entries have no xattrs: one reused buffer per thread for the
    // names, nothing allocated unless there are some.
    thread_local! {
        static NAMES: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 1024]);
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        read_xattrs_with(path, &mut names)
    })
}

fn read_xattrs_with(path: &Path, names: &mut Vec<u8>) -> io::Result<BTreeMap<Xattr, Xattr>> {
    let mut out = BTreeMap::new();
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let len = names.len() * 4;
                names.resize(len, 0)
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(out);
    }
    let mut value = vec![0u8; 256];
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let len = loop {
            match rustix::fs::lgetxattr(path, cname, &mut value[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            out.insert(Xattr(name.to_vec()), Xattr(value[..len].to_vec()));
        }
    }
    Ok(out)
}

/// Data extents of a file via SEEK_DATA/SEEK_HOLE; `None` when it has no holes.
pub fn data_extents(path: &Path, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    use rustix::fs::{seek, SeekFrom};
    let f = File::open(path)?;
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match seek(&f, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(e) => return Err(e.into()),
        };
        extents.push((data, hole - data));
        pos = hole;
    }
    if extents.len() == 1 && extents[0] == (0, size) {
        return Ok(None);
    }
    Ok(Some(extents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn paths(root: &Path, opts: &ScanOptions) -> Vec<String> {
        Scanner::new(root, opts, &NoProgress)
            .unwrap()
            .map(|s| crate::bytes::encode(&s.unwrap().entry.path))
            .collect()
    }

    #[test]
    fn scans_in_tree_order_and_keeps_system_dirs_empty() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["a/b", "a.d", "proc/1", "tmp/x", "var/cache/apt"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("a/b/f"), "x").unwrap();
        std::fs::write(r.join("a.d/g"), "y").unwrap();
        std::fs::write(r.join("proc/1/status"), "z").unwrap();
        std::fs::write(r.join("var/cache/apt/c"), "c").unwrap();
        let all = paths(r, &ScanOptions::default());
        assert_eq!(
            all,
            [
                "",
                "a",
                "a/b",
                "a/b/f",
                "a.d",
                "a.d/g",
                "proc",
                "proc/1",
                "proc/1/status",
                "tmp",
                "tmp/x",
                "var",
                "var/cache",
                "var/cache/apt",
                "var/cache/apt/c"
            ]
        );
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| crate::entry::path_cmp(a.as_bytes(), b.as_bytes()));
        assert_eq!(sorted, all);
        let opts = ScanOptions {
            always_system_excludes: true,
            excludes: vec!["/var/cache/**".into()],
            ..Default::default()
        };
        assert_eq!(
            paths(r, &opts),
            [
                "",
                "a",
                "a/b",
                "a/b/f",
                "a.d",
                "a.d/g",
                "proc",
                "tmp",
                "var",
                "var/cache"
            ]
        );
    }

    #[test]
    fn records_hardlinks_and_sparse_extents() {
        use std::io::{Seek, SeekFrom, Write};
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::write(r.join("a"), "x").unwrap();
        std::fs::hard_link(r.join("a"), r.join("b")).unwrap();
        let mut f = std::fs::File::create(r.join("s")).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        drop(f);
        let es: Vec<Entry> = Scanner::new(r, &ScanOptions::default(), &NoProgress)
            .unwrap()
            .map(|s| s.unwrap().entry)
            .collect();
        assert_eq!(es[1].path, b"a");
        assert_eq!(es[1].link, None);
        assert_eq!(es[2].link.as_deref(), Some(&b"a"[..]));
        assert_eq!(es[3].sparse, Some(vec![(4 << 20, 4096)]));
    }

    #[test]
    fn parallel_walk_equals_the_serial_walk_in_tree_order() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        // More than a few batches, with hardlink groups spanning batches,
        // sparse files, symlinks, a fifo, a socket, excludes and a kept-empty dir.
        for d in 0..30 {
            let dir = r.join(format!("d{d:02}/sub"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..50 {
                std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
            }
            if d > 0 {
                std::fs::hard_link(dir.join("f0"), r.join(format!("d{:02}/link-to-{d}", d - 1)))
                    .unwrap();
            }
            symlink(format!("sub/f{d}"), r.join(format!("d{d:02}/sym"))).unwrap();
        }
        let f = std::fs::File::create(r.join("d05/sparse")).unwrap();
        f.set_len(16 << 20).unwrap();
        drop(f);
        std::fs::hard_link(r.join("d05/sparse"), r.join("d29/sparse-link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("d10/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(r.join("d11/sock")).unwrap();
        std::fs::create_dir_all(r.join("tmp/inner")).unwrap();
        let opts = ScanOptions {
            excludes: vec!["/d03/**".into(), "*.skip".into()],
            always_system_excludes: true,
            ..Default::default()
        };
        std::fs::write(r.join("d04/x.skip"), "x").unwrap();
        let scan = |batch: usize| -> Vec<Entry> {
            Scanner::with_batch(r, &opts, &NoProgress, batch)
                .unwrap()
                .map(|s| s.unwrap().entry)
                .collect()
        };
        let serial = scan(1);
        assert!(serial.len() > 3 * WALK_BATCH, "{} entries", serial.len());
        for batch in [WALK_BATCH, 7, 64] {
            let par = scan(batch);
            assert_eq!(par.len(), serial.len());
            for (a, b) in par.iter().zip(&serial) {
                assert_eq!(a, b, "batch {batch}");
            }
        }
        for w in serial.windows(2) {
            assert_eq!(
                crate::entry::path_cmp(&w[0].path, &w[1].path),
                std::cmp::Ordering::Less
            );
        }
        let find = |p: &str| serial.iter().find(|e| e.path == p.as_bytes()).cloned();
        assert!(find("d03/sub").is_none() && find("d04/x.skip").is_none());
        assert!(find("d11/sock").is_none() && find("tmp/inner").is_none());
        assert!(find("tmp").is_some() && find("d10/fifo").is_some());
        assert_eq!(find("d05/sparse").unwrap().sparse, Some(vec![]));
        let l = find("d29/sparse-link").unwrap();
        assert_eq!(l.link.as_deref(), Some(&b"d05/sparse"[..]));
        assert_eq!(l.sparse, None);
        assert_eq!(
            find("d01/sub/f0").unwrap().link.as_deref(),
            Some(&b"d00/link-to-1"[..])
        );
    }
}
