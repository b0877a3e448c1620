//! Metadata of written entries: owner, mode, xattrs, times — in that order
//! (chown clears setuid bits and capabilities, so it comes first; times
//! come last because the other changes touch ctime only, but writing into a
//! directory changes its mtime: callers re-apply directory times with
//! [`TreeWriter::set_times`] once its children are done).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::{os, TreeError, TreeResult, TreeWriter};
use crate::entry::{Entry, Kind, Xattr};

/// Access and modification time both `mtime_ns` (what a restored or
/// replicated entry gets).
pub fn timestamps(mtime_ns: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl TreeWriter {
    /// Set owner, mode, xattrs (exactly the entry's: others are removed) and
    /// mtime of the entry's path. Hardlink members (`entry.link`) share their
    /// first member's inode and are left alone.
    pub fn set_metadata(&self, entry: &Entry) -> TreeResult<()> {
        let path = entry.path.as_slice();
        if entry.link.is_some() {
            return Ok(());
        }
        let uid = Some(Uid::from_raw(entry.uid));
        let gid = Some(Gid::from_raw(entry.gid));
        let mode = Mode::from_raw_mode(entry.mode & 0o7777);
        let e = |op: &'static str| move |err: Errno| TreeError::io(op, path, err);
        match entry.kind {
            Kind::File | Kind::Dir => {
                let fd = if path.is_empty() {
                    rustix::io::dup(&self.root).map_err(e("opening"))?
                } else {
                    let (dir, name) = self.parent(path)?;
                    let extra = if entry.kind == Kind::Dir {
                        OFlags::DIRECTORY
                    } else {
                        OFlags::empty()
                    };
                    rustix::fs::openat(
                        &dir,
                        os(name),
                        OFlags::RDONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC
                            | OFlags::NONBLOCK
                            | extra,
                        Mode::empty(),
                    )
                    .map_err(e("opening"))?
                };
                rustix::fs::fchown(&fd, uid, gid).map_err(e("changing owner of"))?;
                rustix::fs::fchmod(&fd, mode).map_err(e("changing mode of"))?;
                set_xattrs_fd(&fd, &entry.xattrs, path)?;
                rustix::fs::futimens(&fd, &timestamps(entry.mtime_ns))
                    .map_err(e("setting times of"))?;
            }
            Kind::Symlink | Kind::Fifo | Kind::Char | Kind::Block => {
                let (dir, name) = self.parent(path)?;
                let st = rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(e("inspecting"))?;
                let is_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
                if is_link != (entry.kind == Kind::Symlink) {
                    return Err(TreeError::refused(
                        path,
                        "its type changed while it was being written",
                    ));
                }
                rustix::fs::chownat(&dir, os(name), uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(e("changing owner of"))?;
                if !is_link {
                    rustix::fs::chmodat(&dir, os(name), mode, AtFlags::empty())
                        .map_err(e("changing mode of"))?;
                }
                let proc_path = proc_path(&dir, name);
                set_xattrs_path(&proc_path, &entry.xattrs, path)?;
                rustix::fs::utimensat(
                    &dir,
                    os(name),
                    &timestamps(entry.mtime_ns),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(e("setting times of"))?;
            }
        }
        Ok(())
    }

    /// Set only the mtime (and atime) of a path, not following symlinks.
    pub fn set_times(&self, path: &[u8], mtime_ns: i64) -> TreeResult<()> {
        let ts = timestamps(mtime_ns);
        if path.is_empty() {
            return rustix::fs::futimens(&self.root, &ts)
                .map_err(|err| TreeError::io("setting times of", path, err));
        }
        let (dir, name) = self.parent(path)?;
        rustix::fs::utimensat(&dir, os(name), &ts, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| TreeError::io("setting times of", path, err))
    }
}

/// `/proc/self/fd/N/name`: names an entry in an already-resolved directory
/// for the path-only xattr calls (the final component is not followed by
/// the `l*xattr` calls).
fn proc_path(dir: &OwnedFd, name: &[u8]) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

fn list_names(list: &[u8]) -> Vec<Vec<u8>> {
    list.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_vec())
        .collect()
}

fn set_xattrs_fd(fd: &OwnedFd, want: &BTreeMap<Xattr, Xattr>, path: &[u8]) -> TreeResult<()> {
    sync_xattrs(
        want,
        path,
        &[Errno::NOTSUP],
        |buf| rustix::fs::flistxattr(fd, buf),
        |name| rustix::fs::fremovexattr(fd, os(name)),
        |name, value| rustix::fs::fsetxattr(fd, os(name), value, XattrFlags::empty()),
    )
}

fn set_xattrs_path(p: &[u8], want: &BTreeMap<Xattr, Xattr>, path: &[u8]) -> TreeResult<()> {
    let pp = os(p);
    sync_xattrs(
        want,
        path,
        &[Errno::NOTSUP, Errno::PERM],
        |buf| rustix::fs::llistxattr(pp, buf),
        |name| rustix::fs::lremovexattr(pp, os(name)),
        |name, value| rustix::fs::lsetxattr(pp, os(name), value, XattrFlags::empty()),
    )
}

/// Makes an inode's xattrs exactly `want`: removes the others, sets these.
/// `no_list` are the errors of listing that mean "no xattrs here".
fn sync_xattrs(
    want: &BTreeMap<Xattr, Xattr>,
    path: &[u8],
    no_list: &[Errno],
    mut list: impl FnMut(&mut [u8]) -> Result<usize, Errno>,
    mut remove: impl FnMut(&[u8]) -> Result<(), Errno>,
    mut set: impl FnMut(&[u8], &[u8]) -> Result<(), Errno>,
) -> TreeResult<()> {
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match list(&mut buf[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(err) if no_list.contains(&err) => break 0,
            Err(err) => return Err(TreeError::io("listing xattrs of", path, err)),
        }
    };
    for name in list_names(&buf[..n]) {
        if !want.contains_key(&Xattr(name.clone())) {
            remove(&name).map_err(|err| TreeError::io("removing xattr of", path, err))?;
        }
    }
    for (k, v) in want {
        set(&k.0, &v.0).map_err(|err| TreeError::Io {
            op: "setting xattr",
            path: format!(
                "{} on {}",
                crate::bytes::encode(&k.0),
                crate::entry::display_path(path)
            ),
            source: err.into(),
        })?;
    }
    Ok(())
}
