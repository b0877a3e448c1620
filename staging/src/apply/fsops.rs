//! Small filesystem helpers for [`super::DirTarget`]: they never follow a
//! symlink in the last component and work relative to already-resolved
//! directory descriptors.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use standin_builder::entry::{Kind, Xattr};

/// The kind of a file of type `ft` (builder's [`Kind::from_mode`]; for `apply/file.rs`).
pub(super) fn kind_of(ft: FileType) -> Option<Kind> {
    Kind::from_mode(ft.as_raw_mode())
}

pub(super) fn lstat(dir: &OwnedFd, name: &[u8]) -> Result<Option<rustix::fs::Stat>, Errno> {
    match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `/proc/self/fd/<dir>/<name>`: the name inside an already-resolved
/// directory, for the l*xattr calls (which do not follow the last component).
pub(super) fn proc_path(dir: &OwnedFd, name: &[u8]) -> PathBuf {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    PathBuf::from(OsStr::from_bytes(&p))
}

pub(super) fn list_xattrs(path: &Path) -> Result<BTreeMap<Xattr, Xattr>, Errno> {
    read_xattrs(path)
}

/// Where [`read_xattrs`] reads: a path (its last component not followed)
/// or an open file.
pub(super) trait XattrSource: Copy {
    fn list(self, buf: &mut [u8]) -> Result<usize, Errno>;
    fn list_size(self) -> Result<usize, Errno>;
    fn get(self, name: &OsStr, buf: &mut [u8]) -> Result<usize, Errno>;
    fn get_size(self, name: &OsStr) -> Result<usize, Errno>;
}

impl XattrSource for &Path {
    fn list(self, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::fs::llistxattr(self, buf)
    }
    fn list_size(self) -> Result<usize, Errno> {
        rustix::fs::llistxattr_query(self)
    }
    fn get(self, name: &OsStr, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::fs::lgetxattr(self, name, buf)
    }
    fn get_size(self, name: &OsStr) -> Result<usize, Errno> {
        rustix::fs::lgetxattr_query(self, name)
    }
}

impl XattrSource for BorrowedFd<'_> {
    fn list(self, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::fs::flistxattr(self, buf)
    }
    fn list_size(self) -> Result<usize, Errno> {
        rustix::fs::flistxattr_query(self)
    }
    fn get(self, name: &OsStr, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::fs::fgetxattr(self, name, buf)
    }
    fn get_size(self, name: &OsStr) -> Result<usize, Errno> {
        rustix::fs::fgetxattr_query(self, name)
    }
}

/// The xattrs of `src` (none where the filesystem has no xattrs), each
/// value at most 64 KiB.
pub(super) fn read_xattrs(src: impl XattrSource) -> Result<BTreeMap<Xattr, Xattr>, Errno> {
    let mut out = BTreeMap::new();
    // One call into a buffer on the stack for the usual short list (most
    // entries have none); a longer one is asked for its size first.
    let mut small = [0u8; 1024];
    let mut large = Vec::new();
    let names: &[u8] = match src.list(&mut small[..]) {
        Ok(n) => &small[..n],
        Err(Errno::NOTSUP) => return Ok(out),
        Err(Errno::RANGE) => {
            let size = src.list_size()?;
            large.resize(size.min(1 << 16), 0);
            let n = src.list(&mut large[..])?;
            &large[..n]
        }
        Err(e) => return Err(e),
    };
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = OsStr::from_bytes(name);
        let mut v = vec![0u8; src.get_size(name)?.min(1 << 16)];
        let got = src.get(name, &mut v[..])?;
        v.truncate(got);
        out.insert(Xattr(name.as_bytes().to_vec()), Xattr(v));
    }
    Ok(out)
}

/// Remove `name` in `dir`, recursively for directories, without following symlinks.
pub(super) fn remove_at(dir: &impl AsFd, name: &[u8], depth: usize) -> Result<(), Errno> {
    let n = OsStr::from_bytes(name);
    let st = match rustix::fs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, n, AtFlags::empty());
    }
    if depth > 1024 {
        return Err(Errno::NAMETOOLONG);
    }
    let sub = rustix::fs::openat(
        dir,
        n,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(&sub)? {
        let ent = ent?;
        let b = ent.file_name().to_bytes();
        if b != b"." && b != b".." {
            names.push(b.to_vec());
        }
    }
    for child in names {
        remove_at(&sub, &child, depth + 1)?;
    }
    rustix::fs::unlinkat(dir, n, AtFlags::REMOVEDIR)
}
