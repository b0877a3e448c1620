//! The lean scan's directory walk, on its own thread a few batches ahead
//! of the merge with the index: names in the scanner's order, its filters,
//! one `statx` per entry relative to its directory's descriptor.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;

use globset::GlobSet;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};

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

pub(super) struct Walk {
    pub root: PathBuf,
    pub excludes: GlobSet,
    pub keep_empty: Vec<Vec<u8>>,
    pub root_dev: u64,
    pub one_file_system: bool,
    pub tx: SyncSender<Vec<Walked>>,
    pub batch: Vec<Walked>,
}

/// The merge side hung up.
pub(super) struct Stopped;

impl Walk {
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

    pub fn send(&mut self) -> Result<(), Stopped> {
        let b = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx.send(b).map_err(|_| Stopped)
    }

    /// Walk the tree beneath the root (open as `fd`).
    pub fn run(&mut self, fd: &OwnedFd) -> Result<(), Stopped> {
        if !self.keep_empty.iter().any(|k| k.is_empty()) {
            if let Err(e) = self.dir(fd, &[]) {
                self.push(Walked::Failed(e))?;
            }
        }
        self.send()
    }

    /// Walk the directory `dir` (open as `fd`) in name order.
    fn dir(&mut self, fd: &OwnedFd, dir: &[u8]) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut names: Vec<Vec<u8>> = Vec::new();
        let rd = rustix::fs::Dir::read_from(fd)
            .with_context(|| format!("reading directory {}", self.abs(dir).display()))?;
        for d in rd {
            let d = d.with_context(|| format!("reading directory {}", self.abs(dir).display()))?;
            let n = d.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        names.sort_unstable();
        let mut slashed = Vec::new();
        for name in names {
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
            let st = match rustix::fs::statx(
                fd,
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
                    self.push(Walked::Note(n))
                        .map_err(|_| anyhow::anyhow!("stopped"))?;
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", self.abs(&rel).display()))
                }
            };
            let ft = FileType::from_raw_mode(st.stx_mode as _);
            if ft == FileType::Socket {
                let n = format!("{} is a socket; left out", self.abs(&rel).display());
                self.push(Walked::Note(n))
                    .map_err(|_| anyhow::anyhow!("stopped"))?;
                continue;
            }
            let stamp = EntryStamp::of_statx(&st);
            let descend = ft == FileType::Directory
                && !self.keep_empty.contains(&rel)
                && (!self.one_file_system || stamp.dev == self.root_dev);
            self.push(Walked::Entry(rel.clone(), stamp))
                .map_err(|_| anyhow::anyhow!("stopped"))?;
            if descend {
                let sub = rustix::fs::openat(
                    fd,
                    OsStr::from_bytes(&name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                );
                match sub {
                    Ok(sub) => self.dir(&sub, &rel)?,
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("opening {}", self.abs(&rel).display()))
                    }
                }
            }
        }
        Ok(())
    }
}
