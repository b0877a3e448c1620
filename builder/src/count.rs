//! Counting a tree ahead of the work on it, so progress can show a percent
//! and an ETA: the same entries and bytes a scan with the same options
//! finds, read as cheaply as possible. The count reads directory entries
//! (their types come with them) and `fstatat`s, relative to the open
//! directory, only regular files (size, hard-link group), directories
//! whose type the directory did not say, and nothing else: no xattrs, no
//! symlink targets, no sparse extents, no per-path lookups from the root.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use globset::GlobSet;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use crate::scan::ScanOptions;

/// What a tree holds: entries, and bytes of regular files (each hard-link
/// group once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub bytes: u64,
}

/// Count `root` as `opts` would scan it ([`crate::scan::Scanner`]: same
/// excludes, directories kept empty, mount points, sockets left out).
/// `None` when the root cannot be read or `stop` was set before the end
/// (the work finished first). What cannot be read below the root (a
/// vanished file, an unreadable directory) is left out, as the scan does.
pub fn count_tree(root: &Path, opts: &ScanOptions, stop: &AtomicBool) -> Option<Totals> {
    let meta = std::fs::symlink_metadata(root).ok()?;
    if !meta.is_dir() {
        return None;
    }
    let (excludes, keep_empty) = crate::scan::filters(root, opts).ok()?;
    let fd = rustix::fs::open(root, dir_flags(), Mode::empty()).ok()?;
    let mut c = Counter {
        root: root.to_path_buf(),
        excludes,
        keep_empty,
        root_dev: meta.dev(),
        one_file_system: opts.one_file_system,
        links: HashSet::new(),
        totals: Totals {
            entries: 1,
            bytes: 0,
        },
        stop,
    };
    let mut rel = Vec::new();
    c.dir(fd, &mut rel, 0).then_some(c.totals)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Directory levels held open at once; deeper ones are opened from the
/// root by path (no running out of descriptors on a deep tree).
const OPEN_DEPTH: usize = 64;

struct Counter<'s> {
    root: PathBuf,
    excludes: GlobSet,
    keep_empty: Vec<Vec<u8>>,
    root_dev: u64,
    one_file_system: bool,
    /// Hard-link groups seen: (device, inode).
    links: HashSet<(u64, u64)>,
    totals: Totals,
    stop: &'s AtomicBool,
}

impl Counter<'_> {
    fn excluded(&self, rel: &[u8]) -> bool {
        if self.excludes.is_empty() {
            return false;
        }
        let mut slashed = Vec::with_capacity(rel.len() + 1);
        slashed.push(b'/');
        slashed.extend_from_slice(rel);
        self.excludes
            .is_match(Path::new(OsStr::from_bytes(&slashed)))
    }

    /// Count what directory `fd` (at `rel`) holds. False when stopped.
    fn dir(&mut self, fd: OwnedFd, rel: &mut Vec<u8>, depth: usize) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut d) = Dir::new(fd) else {
            return true;
        };
        // Subdirectories to enter once this one is read (names).
        let mut subdirs: Vec<Vec<u8>> = Vec::new();
        while let Some(Ok(ent)) = d.read() {
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            let counted = self.entry(&d, name, ent.file_type(), rel);
            if counted == Some(true) {
                subdirs.push(name.to_vec());
            }
            rel.truncate(len);
        }
        // Deep down, this level's descriptor is closed before going on and
        // its subdirectories are opened by path from the root, so the
        // descriptors held stay within OPEN_DEPTH on any tree.
        let parent = (depth < OPEN_DEPTH).then_some(d);
        for name in subdirs {
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            let sub = match &parent {
                Some(d) => d.fd().ok().and_then(|p| {
                    rustix::fs::openat(p, name.as_slice(), dir_flags(), Mode::empty()).ok()
                }),
                None => rustix::fs::open(
                    self.root.join(OsStr::from_bytes(rel)),
                    dir_flags(),
                    Mode::empty(),
                )
                .ok(),
            };
            let going_on = match sub {
                Some(fd) => self.enter(fd, rel, depth + 1),
                None => true,
            };
            rel.truncate(len);
            if !going_on {
                return false;
            }
        }
        true
    }

    /// Enter a counted subdirectory unless it is on another filesystem.
    fn enter(&mut self, fd: OwnedFd, rel: &mut Vec<u8>, depth: usize) -> bool {
        if self.one_file_system {
            match rustix::fs::fstat(&fd) {
                Ok(st) if st.st_dev == self.root_dev => {}
                _ => return true,
            }
        }
        self.dir(fd, rel, depth)
    }

    /// Count one directory entry. `None`: left out; `Some(true)`: a
    /// directory to enter.
    fn entry(&mut self, d: &Dir, name: &[u8], ft: FileType, rel: &[u8]) -> Option<bool> {
        if self.excluded(rel) {
            return None;
        }
        let fd = d.fd().ok()?;
        let mut ft = ft;
        let mut stat = None;
        if ft == FileType::Unknown || ft == FileType::RegularFile {
            // Vanished since the directory was read: left out.
            let st = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
            ft = FileType::from_raw_mode(st.st_mode);
            stat = Some(st);
        }
        match ft {
            FileType::Socket | FileType::Unknown => return None,
            FileType::RegularFile => {
                let st = stat.expect("regular files are stat'ed");
                self.totals.entries += 1;
                if st.st_nlink <= 1 || self.links.insert((st.st_dev, st.st_ino)) {
                    self.totals.bytes += st.st_size as u64;
                }
                return Some(false);
            }
            _ => self.totals.entries += 1,
        }
        Some(ft == FileType::Directory && !self.keep_empty.iter().any(|k| k == rel))
    }
}

#[cfg(test)]
mod tests;
