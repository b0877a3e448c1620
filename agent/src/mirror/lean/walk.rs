//! The lean scan's directory walk, on its own thread a few batches ahead
//! of the merge with the index: names in the scanner's order, its filters,
//! one `statx` per entry relative to its directory's descriptor.
//!
//! A directory is read (`statx`) where the walk meets it, since whether
//! to descend depends on it. Other entries (by the directory's `d_type`)
//! are read when their batch is full, in two halves at once: the `statx`
//! calls are most of the walk's time, and the walk is often what a
//! difference mirror waits for. A directory entry whose type is unknown
//! is read where it is met.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use globset::GlobSet;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Statx, StatxFlags};

use super::super::index::EntryStamp;

/// One walked path, in tree order.
pub(super) enum Walked {
    Entry(Vec<u8>, EntryStamp),
    Note(String),
    Failed(anyhow::Error),
}

/// Paths per batch handed to the merge.
const BATCH: usize = 2048;
/// Batches the walk runs ahead.
pub(super) const AHEAD: usize = 4;
/// Fewer deferred reads than this are done on the walking thread alone.
const SPLIT_MIN: usize = 64;
/// Directories that deferred entries may keep open before they are read
/// (well below the usual limit of 1024 descriptors).
const MAX_HELD_DIRS: usize = 256;

/// An entry of the batch whose `statx` is deferred: its place in the
/// batch, its directory, and where its name starts in its path.
struct Deferred {
    at: usize,
    dir: Arc<OwnedFd>,
    name_at: usize,
}

pub(super) struct Walk {
    pub root: PathBuf,
    pub excludes: GlobSet,
    pub keep_empty: Vec<Vec<u8>>,
    pub root_dev: u64,
    pub one_file_system: bool,
    pub tx: SyncSender<Vec<Walked>>,
    pub batch: Vec<Walked>,
    /// Entries of `batch` still to be read.
    deferred: Vec<Deferred>,
    /// Read every entry where it is met (no second thread).
    pub serial: bool,
    /// Time spent reading deferred entries, and waiting for the merge to
    /// take a batch (for the debug timings).
    reading: std::time::Duration,
    blocked: std::time::Duration,
    /// Directories kept open by deferred entries (a run of entries of one
    /// directory counts once), and the most at once.
    held_dirs: usize,
    max_held: usize,
}

/// Why the walk stopped early: the merge side hung up, or a read failed
/// (already in the batch as [`Walked::Failed`]).
pub(super) struct Stopped;

impl Walk {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: PathBuf,
        excludes: GlobSet,
        keep_empty: Vec<Vec<u8>>,
        root_dev: u64,
        one_file_system: bool,
        tx: SyncSender<Vec<Walked>>,
    ) -> Walk {
        Walk {
            root,
            excludes,
            keep_empty,
            root_dev,
            one_file_system,
            tx,
            batch: Vec::with_capacity(BATCH),
            deferred: Vec::new(),
            serial: std::env::var_os(SERIAL_WALK_ENV).is_some_and(|v| !v.is_empty() && v != "0"),
            reading: Default::default(),
            blocked: Default::default(),
            held_dirs: 0,
            max_held: 0,
        }
    }

    fn abs(&self, rel: &[u8]) -> PathBuf {
        super::super::abs_path(&self.root, rel)
    }

    fn push(&mut self, w: Walked) -> Result<(), Stopped> {
        self.batch.push(w);
        if self.batch.len() >= BATCH {
            self.send()?;
        }
        Ok(())
    }

    /// Read the deferred entries, then hand the batch to the merge.
    pub fn send(&mut self) -> Result<(), Stopped> {
        let t0 = std::time::Instant::now();
        let failed = self.resolve();
        let t1 = std::time::Instant::now();
        self.reading += t1 - t0;
        let b = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx.send(b).map_err(|_| Stopped)?;
        self.blocked += t1.elapsed();
        if failed {
            return Err(Stopped);
        }
        Ok(())
    }

    /// Fill in the deferred entries' stamps (two halves at once when there
    /// are many); one that vanished becomes a note, a socket a note, and
    /// the first that cannot be read ends the batch as its failure.
    /// Returns whether one failed.
    fn resolve(&mut self) -> bool {
        self.max_held = self.max_held.max(self.held_dirs);
        self.held_dirs = 0;
        let deferred = std::mem::take(&mut self.deferred);
        if deferred.is_empty() {
            return false;
        }
        let batch = &self.batch;
        let stat = |d: &Deferred| -> rustix::io::Result<Statx> {
            let Walked::Entry(rel, _) = &batch[d.at] else {
                unreachable!("a deferred read is an entry");
            };
            rustix::fs::statx(
                &*d.dir,
                OsStr::from_bytes(&rel[d.name_at..]),
                AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::BASIC_STATS,
            )
        };
        let results: Vec<rustix::io::Result<Statx>> = if self.serial || deferred.len() < SPLIT_MIN {
            deferred.iter().map(stat).collect()
        } else {
            let (a, b) = deferred.split_at(deferred.len() / 2);
            std::thread::scope(|s| {
                let other = s.spawn(|| b.iter().map(stat).collect::<Vec<_>>());
                let mut first: Vec<_> = a.iter().map(stat).collect();
                match other.join() {
                    Ok(rest) => first.extend(rest),
                    // Not expected (statx does not panic): read the
                    // second half here.
                    Err(_) => first.extend(b.iter().map(stat)),
                }
                first
            })
        };
        for (d, r) in deferred.iter().zip(results) {
            let Walked::Entry(rel, stamp) = &mut self.batch[d.at] else {
                unreachable!("a deferred read is an entry");
            };
            let abs = |rel: &[u8]| super::super::abs_path(&self.root, rel);
            let note = match r {
                Ok(st) if FileType::from_raw_mode(st.stx_mode as _) == FileType::Socket => {
                    format!("{} is a socket; left out", abs(rel).display())
                }
                Ok(st) => {
                    // (A non-directory replaced by a directory since the
                    // directory was read is listed, not descended into:
                    // the tree changed during the walk.)
                    *stamp = EntryStamp::of_statx(&st);
                    continue;
                }
                Err(rustix::io::Errno::NOENT) => {
                    format!("{} vanished while scanning; left out", abs(rel).display())
                }
                Err(e) => {
                    let what = format!("reading {}", abs(rel).display());
                    self.batch[d.at] = Walked::Failed(anyhow::Error::new(e).context(what));
                    self.batch.truncate(d.at + 1);
                    return true;
                }
            };
            self.batch[d.at] = Walked::Note(note);
        }
        false
    }

    /// Walk the tree beneath the root (open as `fd`).
    pub fn run(&mut self, fd: OwnedFd) -> Result<(), Stopped> {
        let t0 = std::time::Instant::now();
        let r = self.walk_all(fd);
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            thread_cpu_ms = super::thread_cpu_ms(),
            deferred_ms = self.reading.as_millis() as u64,
            blocked_ms = self.blocked.as_millis() as u64,
            "lean scan: walk done"
        );
        r
    }

    fn walk_all(&mut self, fd: OwnedFd) -> Result<(), Stopped> {
        if !self.keep_empty.iter().any(|k| k.is_empty()) {
            if let Err(e) = self.dir(Arc::new(fd), &[]) {
                match e {
                    Fail::Stopped => return Err(Stopped),
                    Fail::Error(e) => self.push(Walked::Failed(e))?,
                }
            }
        }
        self.send()
    }

    /// Walk the directory `dir` (open as `fd`) in name order.
    fn dir(&mut self, fd: Arc<OwnedFd>, dir: &[u8]) -> Result<(), Fail> {
        use anyhow::Context;
        let mut names: Vec<(Vec<u8>, FileType)> = Vec::new();
        let rd = rustix::fs::Dir::read_from(&*fd)
            .with_context(|| format!("reading directory {}", self.abs(dir).display()))?;
        for d in rd {
            let d = d.with_context(|| format!("reading directory {}", self.abs(dir).display()))?;
            let n = d.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push((n.to_vec(), d.file_type()));
            }
        }
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut slashed = Vec::new();
        for (name, dtype) in names {
            let rel = super::join(dir, &name);
            slashed.clear();
            slashed.push(b'/');
            slashed.extend_from_slice(&rel);
            if self
                .excludes
                .is_match(Path::new(OsStr::from_bytes(&slashed)))
            {
                continue;
            }
            let known_leaf = !self.serial
                && !matches!(
                    dtype,
                    FileType::Directory | FileType::Unknown | FileType::Socket
                );
            if known_leaf {
                if self
                    .deferred
                    .last()
                    .is_none_or(|d| !Arc::ptr_eq(&d.dir, &fd))
                {
                    self.held_dirs += 1;
                }
                self.deferred.push(Deferred {
                    at: self.batch.len(),
                    dir: fd.clone(),
                    name_at: rel.len() - name.len(),
                });
                self.push(Walked::Entry(rel, EntryStamp::default()))?;
                // Each directory with a deferred entry stays open until it
                // is read: many small directories read early, not one
                // descriptor each up to the batch's end.
                if self.held_dirs >= MAX_HELD_DIRS && self.resolve() {
                    let b = std::mem::take(&mut self.batch);
                    let _ = self.tx.send(b);
                    return Err(Fail::Stopped);
                }
                continue;
            }
            let st = match rustix::fs::statx(
                &*fd,
                OsStr::from_bytes(&name),
                AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::BASIC_STATS,
            ) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => {
                    let n = format!(
                        "{} vanished while scanning; left out",
                        self.abs(&rel).display()
                    );
                    self.push(Walked::Note(n))?;
                    continue;
                }
                Err(e) => {
                    return Err(Fail::Error(
                        anyhow::Error::new(e)
                            .context(format!("reading {}", self.abs(&rel).display())),
                    ))
                }
            };
            let ft = FileType::from_raw_mode(st.stx_mode as _);
            if ft == FileType::Socket {
                let n = format!("{} is a socket; left out", self.abs(&rel).display());
                self.push(Walked::Note(n))?;
                continue;
            }
            let stamp = EntryStamp::of_statx(&st);
            let descend = ft == FileType::Directory
                && !self.keep_empty.contains(&rel)
                && (!self.one_file_system || stamp.dev == self.root_dev);
            self.push(Walked::Entry(rel.clone(), stamp))?;
            if descend {
                let sub = rustix::fs::openat(
                    &*fd,
                    OsStr::from_bytes(&name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                );
                match sub {
                    Ok(sub) => self.dir(Arc::new(sub), &rel)?,
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => {
                        return Err(Fail::Error(
                            anyhow::Error::new(e)
                                .context(format!("opening {}", self.abs(&rel).display())),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Set to read every entry where the walk meets it, on the walking thread
/// alone (for comparisons; the deferred, two-thread reading is the default).
pub const SERIAL_WALK_ENV: &str = "STANDIN_SERIAL_WALK";

/// How a directory's walk ended early.
enum Fail {
    Stopped,
    Error(anyhow::Error),
}

impl From<Stopped> for Fail {
    fn from(_: Stopped) -> Fail {
        Fail::Stopped
    }
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every walked item, with `serial` or deferred reading.
    fn walk(root: &Path, serial: bool, excludes: GlobSet) -> Vec<String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(root).unwrap());
        let mut w = Walk::new(root.to_path_buf(), excludes, Vec::new(), dev, true, tx);
        w.serial = serial;
        let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let _ = w.run(fd);
        drop(w);
        let mut out = Vec::new();
        for b in rx.iter() {
            assert!(b.len() <= BATCH);
            for item in b {
                out.push(match item {
                    Walked::Entry(rel, s) => format!("{} {s:?}", String::from_utf8(rel).unwrap()),
                    Walked::Note(n) => format!("note {n}"),
                    Walked::Failed(e) => format!("failed {e:#}"),
                });
            }
        }
        out
    }

    /// Reading the non-directories of a batch in two halves at once gives
    /// the serial walk's items in the same order with the same stamps:
    /// several batches' worth of files over many directories, symlinks,
    /// a fifo, a socket (a note), hard links, and an excluded path.
    #[test]
    fn deferred_reads_give_the_serial_walks_items_in_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for i in 0..(BATCH * 2 + 300) {
            let dir = root.join(format!("d{:02}/e{}", i % 37, i % 5));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{i}")), vec![b'x'; i % 100]).unwrap();
        }
        std::os::unix::fs::symlink("d00", root.join("d00/e0/link")).unwrap();
        std::fs::hard_link(root.join("d01/e1/f1"), root.join("d02/hard")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("d03/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("d04/sock")).unwrap();
        std::fs::write(root.join("skipped"), b"x").unwrap();
        let excludes = || {
            let mut b = globset::GlobSetBuilder::new();
            b.add(globset::Glob::new("/skipped").unwrap());
            b.build().unwrap()
        };
        let serial = walk(root, true, excludes());
        let deferred = walk(root, false, excludes());
        assert_eq!(
            serial.len(),
            BATCH * 2 + 300 + 37 + 37 * 5 + 3 + 1,
            "{serial:?}"
        );
        assert!(serial
            .iter()
            .any(|s| s.starts_with("note ") && s.contains("socket")));
        assert!(!serial.iter().any(|s| s.starts_with("skipped")));
        assert!(
            serial.iter().all(|s| !s.contains("EntryStamp { dev: 0")),
            "every stamp read"
        );
        assert_eq!(serial, deferred);
    }

    /// Thousands of directories of one file each: the deferred entries
    /// never keep more than `MAX_HELD_DIRS` directories open, and the items
    /// are the serial walk's.
    #[test]
    fn many_small_directories_keep_few_descriptors_open() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            let dir = d.path().join(format!("d{i:04}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("f"), b"x").unwrap();
        }
        let serial = walk(d.path(), true, GlobSet::empty());
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(d.path()).unwrap());
        let mut w = Walk::new(
            d.path().to_path_buf(),
            GlobSet::empty(),
            Vec::new(),
            dev,
            true,
            tx,
        );
        w.serial = false;
        let fd =
            rustix::fs::open(d.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert!(w.run(fd).is_ok());
        assert!(w.max_held <= MAX_HELD_DIRS, "{} held", w.max_held);
        assert!(w.max_held >= MAX_HELD_DIRS / 2, "{} held", w.max_held);
        drop(w);
        let deferred: Vec<String> = rx
            .iter()
            .flatten()
            .map(|item| match item {
                Walked::Entry(rel, s) => format!("{} {s:?}", String::from_utf8(rel).unwrap()),
                Walked::Note(n) => format!("note {n}"),
                Walked::Failed(e) => format!("failed {e:#}"),
            })
            .collect();
        assert_eq!(deferred.len(), 6000);
        assert_eq!(serial, deferred);
    }

    /// A file that vanished between the directory read and its deferred
    /// `statx` is a note, as in the serial walk.
    #[test]
    fn a_deferred_file_that_vanished_is_a_note() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("gone"), b"x").unwrap();
        std::fs::write(d.path().join("kept"), b"x").unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let mut w = Walk::new(
            d.path().to_path_buf(),
            GlobSet::empty(),
            Vec::new(),
            0,
            false,
            tx,
        );
        w.serial = false;
        let fd =
            rustix::fs::open(d.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        // Walk the root's names (deferring both), then remove one before
        // the batch is read.
        assert!(w.dir(Arc::new(fd), &[]).is_ok());
        assert_eq!(w.deferred.len(), 2);
        std::fs::remove_file(d.path().join("gone")).unwrap();
        assert!(w.send().is_ok());
        drop(w);
        let items: Vec<Walked> = rx.iter().flatten().collect();
        assert!(matches!(&items[0], Walked::Note(n) if n.contains("gone vanished while scanning")));
        assert!(matches!(&items[1], Walked::Entry(p, s) if p == b"kept" && s.ino != 0));
    }
}
