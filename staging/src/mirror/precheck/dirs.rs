//! The replica's directories along the early check's walk: the ledger's
//! records come in tree order, so the directories from the root down to
//! the current record's parent are kept open (`O_PATH`), and each record
//! costs one `lstat` by name relative to its parent. A directory is opened
//! one component at a time from its open parent with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, the last component of a record is never
//! followed: the entry found is the one a resolution of the whole path
//! beneath the root finds ([`super::super::beneath`]).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};

/// Open directories of the replica at a root.
pub(super) struct Dirs {
    root: OwnedFd,
    /// The directories open below the root, each inside the one before
    /// (paths relative to the root).
    open: Vec<(Vec<u8>, OwnedFd)>,
}

fn stamp_of(st: &Stat) -> (u64, i64) {
    #[allow(clippy::unnecessary_cast)]
    (
        st.st_ino as u64,
        st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
    )
}

/// Whether `name` is one plain path component.
fn plain(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/')
}

impl Dirs {
    /// The replica at `root`; `None` when it cannot be opened.
    pub(super) fn new(root: &Path) -> Option<Dirs> {
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        Some(Dirs {
            root,
            open: Vec::new(),
        })
    }

    /// `(inode, change time in ns)` of the replica's entry at `path` (not
    /// followed; `""` is the root), `None` when it cannot be reached.
    pub(super) fn stamp(&mut self, path: &[u8]) -> Option<(u64, i64)> {
        if path.is_empty() {
            return rustix::fs::fstat(&self.root).ok().map(|st| stamp_of(&st));
        }
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(0) => return None,
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        if !plain(name) {
            return None;
        }
        let fd = self.dir(dir)?;
        let st = rustix::fs::statat(fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(stamp_of(&st))
    }

    /// The directory at `dir` (`""`: the root), opening what is not open
    /// yet below the deepest open directory that holds it.
    fn dir(&mut self, dir: &[u8]) -> Option<&OwnedFd> {
        if dir.is_empty() {
            return Some(&self.root);
        }
        while let Some((p, _)) = self.open.last() {
            let inside = dir.len() > p.len() && dir.starts_with(p) && dir[p.len()] == b'/';
            if p.as_slice() == dir || inside {
                break;
            }
            self.open.pop();
        }
        while self.open.last().map_or(0, |(p, _)| p.len()) < dir.len() {
            let start = self.open.last().map_or(0, |(p, _)| p.len() + 1);
            let end = dir[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(dir.len(), |i| start + i);
            let name = &dir[start..end];
            if !plain(name) {
                return None;
            }
            let parent = self.open.last().map_or(&self.root, |(_, fd)| fd);
            let fd = rustix::fs::openat2(
                parent,
                OsStr::from_bytes(name),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .ok()?;
            self.open.push((dir[..end].to_vec(), fd));
        }
        Some(self.open.last().map_or(&self.root, |(_, fd)| fd))
    }
}
