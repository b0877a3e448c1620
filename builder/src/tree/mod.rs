//! [`TreeWriter`]: writes entries into a directory tree safely.
//!
//! Every path is raw bytes relative to the writer's root. Its parent is
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` and the
//! last component is acted on with `*at` calls that do not follow symlinks,
//! so absolute paths, `..` components and symlinks that lead outside the
//! root are refused ([`TreeError::Refused`], naming the path) and nothing is
//! ever written outside the root. `image restore` and the staging side's
//! change-set apply both write through it.

mod meta;

pub use meta::timestamps;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::entry::{display_path, Entry, Kind};
use crate::hash::{hash_zeros, BUF_SIZE};

/// Why a tree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The path is not allowed: it is absolute, has `..`, or resolves
    /// outside the root (through a symlink). Nothing was written.
    #[error("refusing {path}: {reason}")]
    Refused { path: String, reason: String },
    /// An operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// Content did not match what the entry says.
    #[error("{path}: {reason}")]
    Content { path: String, reason: String },
}

impl TreeError {
    fn io(op: &'static str, path: &[u8], source: impl Into<io::Error>) -> Self {
        TreeError::Io {
            op,
            path: display_path(path),
            source: source.into(),
        }
    }
    fn refused(path: &[u8], reason: &str) -> Self {
        TreeError::Refused {
            path: display_path(path),
            reason: reason.to_string(),
        }
    }
}

/// Result of tree operations.
pub type TreeResult<T> = Result<T, TreeError>;

/// Writes entries beneath one root directory, refusing any path that would
/// leave it.
pub struct TreeWriter {
    root: OwnedFd,
    root_path: PathBuf,
}

/// Check a relative path lexically: not absolute, no empty, `.` or `..`
/// components, no NUL. The empty path is the root.
pub fn check_path(path: &[u8]) -> TreeResult<()> {
    if path.is_empty() {
        return Ok(());
    }
    if path.starts_with(b"/") {
        return Err(TreeError::refused(path, "absolute path"));
    }
    if path.contains(&0) {
        return Err(TreeError::refused(path, "NUL byte in path"));
    }
    for c in path.split(|&b| b == b'/') {
        match c {
            b".." => {
                return Err(TreeError::refused(
                    path,
                    "`..` component leads outside the root",
                ))
            }
            b"" | b"." => return Err(TreeError::refused(path, "empty or `.` component")),
            _ => {}
        }
    }
    Ok(())
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

pub(crate) fn os(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b)
}

impl TreeWriter {
    /// Open an existing directory as the root.
    pub fn open(root: &Path) -> TreeResult<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TreeError::Io {
            op: "opening root",
            path: root.display().to_string(),
            source: e.into(),
        })?;
        Ok(Self {
            root: fd,
            root_path: root.to_path_buf(),
        })
    }

    /// The root directory this writer was opened on.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Open the parent directory of `path` beneath the root; return it and
    /// the last component.
    fn parent<'p>(&self, path: &'p [u8]) -> TreeResult<(OwnedFd, &'p [u8])> {
        check_path(path)?;
        if path.is_empty() {
            return Err(TreeError::refused(
                path,
                "the root itself cannot be replaced",
            ));
        }
        let (dir, name) = split(path);
        let dir_arg: &[u8] = if dir.is_empty() { b"." } else { dir };
        let fd = rustix::fs::openat2(
            &self.root,
            os(dir_arg),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            Errno::XDEV => TreeError::refused(
                path,
                "its parent resolves outside the root (through a symlink)",
            ),
            Errno::LOOP => TreeError::refused(path, "too many symlinks in its parent"),
            Errno::NOTDIR => TreeError::refused(path, "its parent is not a directory"),
            other => TreeError::io("opening parent of", path, other),
        })?;
        Ok((fd, name))
    }

    /// Refuse early: check that `path` is acceptable and its parent resolves
    /// beneath the root. Does not write.
    pub fn check(&self, path: &[u8]) -> TreeResult<()> {
        if path.is_empty() {
            return Ok(());
        }
        self.parent(path).map(|_| ())
    }

    fn stat_at(&self, dir: &OwnedFd, name: &[u8]) -> Option<rustix::fs::Stat> {
        rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    /// Create `entry` (any kind) at its path, replacing what is there
    /// (an existing directory is kept when the entry is a directory).
    /// Hardlink members (`entry.link`) are linked to their first member.
    /// `content` is the file's data; for a sparse entry it is the data of
    /// its extents back to back, and only those are written. Metadata is
    /// not set here (see [`set_metadata`](Self::set_metadata)). Returns the
    /// content's sha256 (hex) for regular files.
    pub fn create(
        &self,
        entry: &Entry,
        content: Option<&mut dyn Read>,
    ) -> TreeResult<Option<String>> {
        let path = entry.path.as_slice();
        if path.is_empty() {
            if entry.kind != Kind::Dir {
                return Err(TreeError::refused(path, "the root must be a directory"));
            }
            return Ok(None);
        }
        if let Some(link) = &entry.link {
            self.hardlink(link, path)?;
            return Ok(None);
        }
        let (dir, name) = self.parent(path)?;
        let cname = os(name);
        if let Some(st) = self.stat_at(&dir, name) {
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if is_dir && entry.kind == Kind::Dir {
                return Ok(None);
            }
            self.remove(path)?;
        }
        let mode = Mode::from_raw_mode(0o600);
        match entry.kind {
            Kind::Dir => rustix::fs::mkdirat(&dir, cname, Mode::from_raw_mode(0o700))
                .map_err(|e| TreeError::io("creating directory", path, e))?,
            Kind::Symlink => {
                let t = entry
                    .target
                    .as_deref()
                    .ok_or_else(|| TreeError::refused(path, "symlink without a target"))?;
                rustix::fs::symlinkat(os(t), &dir, cname)
                    .map_err(|e| TreeError::io("creating symlink", path, e))?
            }
            Kind::Fifo => rustix::fs::mknodat(&dir, cname, FileType::Fifo, mode, 0)
                .map_err(|e| TreeError::io("creating fifo", path, e))?,
            Kind::Char | Kind::Block => {
                let (ma, mi) = entry.rdev.unwrap_or((0, 0));
                let ft = if entry.kind == Kind::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                rustix::fs::mknodat(&dir, cname, ft, mode, rustix::fs::makedev(ma, mi))
                    .map_err(|e| TreeError::io("creating device node", path, e))?
            }
            Kind::File => {
                let fd = rustix::fs::openat(
                    &dir,
                    cname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    mode,
                )
                .map_err(|e| TreeError::io("creating file", path, e))?;
                let mut file = File::from(fd);
                let sha = write_content(&mut file, entry, content).map_err(|e| match e {
                    WriteErr::Io(io) => TreeError::io("writing", path, io),
                    WriteErr::Short => TreeError::Content {
                        path: display_path(path),
                        reason: "content ends before the entry's size".into(),
                    },
                })?;
                return Ok(Some(sha));
            }
        }
        Ok(None)
    }

    /// Open a regular file beneath the root (never following a final
    /// symlink); `write` opens it read-write, creating it (mode 0600) if missing.
    pub fn open_file(&self, path: &[u8], write: bool) -> TreeResult<File> {
        let (dir, name) = self.parent(path)?;
        let flags = if write {
            OFlags::RDWR | OFlags::CREATE
        } else {
            OFlags::RDONLY
        };
        let fd = rustix::fs::openat(
            &dir,
            os(name),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            Errno::LOOP => TreeError::refused(path, "it is a symlink"),
            other => TreeError::io("opening", path, other),
        })?;
        Ok(File::from(fd))
    }

    /// Set a regular file's length.
    pub fn truncate(&self, path: &[u8], len: u64) -> TreeResult<()> {
        let f = self.open_file(path, true)?;
        f.set_len(len)
            .map_err(|e| TreeError::io("truncating", path, e))
    }

    /// Remove a path; directories are removed with everything in them.
    /// A missing path is not an error.
    pub fn remove(&self, path: &[u8]) -> TreeResult<()> {
        let (dir, name) = self.parent(path)?;
        remove_at(&dir, name, path)
    }

    /// Rename `from` to `to` (both beneath the root), replacing `to` if it
    /// is a file or an empty directory.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> TreeResult<()> {
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        rustix::fs::renameat(&fd, os(fname), &td, os(tname))
            .map_err(|e| TreeError::io("renaming", from, e))
    }

    /// Make `new` a hardlink of `existing` (replacing what is at `new`).
    pub fn hardlink(&self, existing: &[u8], new: &[u8]) -> TreeResult<()> {
        let (ed, ename) = self.parent(existing)?;
        let (nd, nname) = self.parent(new)?;
        if self.stat_at(&nd, nname).is_some() {
            remove_at(&nd, nname, new)?;
        }
        rustix::fs::linkat(&ed, os(ename), &nd, os(nname), AtFlags::empty())
            .map_err(|e| TreeError::io("linking", new, e))
    }

    /// fsync the root directory.
    pub fn sync(&self) -> TreeResult<()> {
        rustix::fs::fsync(&self.root).map_err(|e| TreeError::io("syncing", b"", e))
    }
}

fn remove_at(dir: &OwnedFd, name: &[u8], path: &[u8]) -> TreeResult<()> {
    let st = match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(TreeError::io("inspecting", path, e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rustix::fs::openat(
            dir,
            os(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TreeError::io("opening", path, e))?;
        let listing =
            rustix::fs::Dir::read_from(&sub).map_err(|e| TreeError::io("listing", path, e))?;
        for item in listing {
            let item = item.map_err(|e| TreeError::io("listing", path, e))?;
            let child = item.file_name().to_bytes();
            if child == b"." || child == b".." {
                continue;
            }
            let mut cp = path.to_vec();
            cp.push(b'/');
            cp.extend_from_slice(child);
            remove_at(&sub, child, &cp)?;
        }
        rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR)
            .map_err(|e| TreeError::io("removing", path, e))
    } else {
        rustix::fs::unlinkat(dir, os(name), AtFlags::empty())
            .map_err(|e| TreeError::io("removing", path, e))
    }
}

enum WriteErr {
    Io(io::Error),
    Short,
}

impl From<io::Error> for WriteErr {
    fn from(e: io::Error) -> Self {
        WriteErr::Io(e)
    }
}

fn copy_exact(
    r: &mut dyn Read,
    f: &mut File,
    mut n: u64,
    h: &mut Sha256,
    buf: &mut [u8],
) -> Result<(), WriteErr> {
    while n > 0 {
        let want = buf.len().min(n as usize);
        let got = match r.read(&mut buf[..want]) {
            Ok(0) => return Err(WriteErr::Short),
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        h.update(&buf[..got]);
        f.write_all(&buf[..got])?;
        n -= got as u64;
    }
    Ok(())
}

fn write_content(
    f: &mut File,
    e: &Entry,
    content: Option<&mut dyn Read>,
) -> Result<String, WriteErr> {
    let mut h = Sha256::new();
    let mut empty: &[u8] = &[];
    let r: &mut dyn Read = match content {
        Some(r) => r,
        None => &mut empty,
    };
    let mut buf = vec![0u8; BUF_SIZE.min(e.size.max(1) as usize).max(4096)];
    match &e.sparse {
        Some(ext) => {
            let mut pos = 0u64;
            for &(off, len) in ext {
                hash_zeros(&mut h, off.saturating_sub(pos));
                f.seek(SeekFrom::Start(off))?;
                copy_exact(r, f, len, &mut h, &mut buf)?;
                pos = off + len;
            }
            hash_zeros(&mut h, e.size.saturating_sub(pos));
            f.set_len(e.size)?;
        }
        None => copy_exact(r, f, e.size, &mut h, &mut buf)?,
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1_000_000_000,
            size: 0,
            xattrs: BTreeMap::new(),
            target: None,
            link: None,
            rdev: None,
            sparse: None,
            sha256: None,
        }
    }

    fn refused(r: TreeResult<Option<String>>) -> String {
        match r {
            Err(TreeError::Refused { path, reason }) => format!("{path}: {reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn refuses_paths_leaving_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let tw = TreeWriter::open(&root).unwrap();
        let mut data: &[u8] = b"x";
        let mut f = entry(b"../evil", Kind::File);
        f.size = 1;
        assert!(refused(tw.create(&f, Some(&mut data))).contains("/../evil"));
        f.path = b"/abs".to_vec();
        assert!(refused(tw.create(&f, None)).contains("absolute"));
        f.path = b"a/./b".to_vec();
        refused(tw.create(&f, None));
        // A symlink to the outside, then a file through it.
        std::os::unix::fs::symlink(&outside, root.join("esc")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
        for p in [&b"esc/pwned"[..], b"rel/pwned"] {
            f.path = p.to_vec();
            let mut data: &[u8] = b"x";
            assert!(refused(tw.create(&f, Some(&mut data))).contains("outside the root"));
            assert!(matches!(
                tw.open_file(p, true),
                Err(TreeError::Refused { .. })
            ));
            assert!(matches!(tw.remove(p), Err(TreeError::Refused { .. })));
        }
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // The final component is never followed.
        assert!(matches!(
            tw.open_file(b"esc", true),
            Err(TreeError::Refused { .. })
        ));
        // A symlink that stays inside is fine.
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("real", root.join("inside")).unwrap();
        f.path = b"inside/ok".to_vec();
        let mut data: &[u8] = b"x";
        tw.create(&f, Some(&mut data)).unwrap();
        assert_eq!(std::fs::read(root.join("real/ok")).unwrap(), b"x");
    }

    #[test]
    fn writes_every_kind_with_metadata() {
        let t = tempfile::tempdir().unwrap();
        let tw = TreeWriter::open(t.path()).unwrap();
        let mut d = entry(b"d", Kind::Dir);
        d.mode = 0o2755;
        tw.create(&d, None).unwrap();
        tw.set_metadata(&d).unwrap();
        let mut s = entry(b"d/sparse", Kind::File);
        s.size = 1 << 20;
        s.sparse = Some(vec![(4096, 4), (65536, 2)]);
        let mut data: &[u8] = b"abcdef";
        let sha = tw.create(&s, Some(&mut data)).unwrap().unwrap();
        let mut want = vec![0u8; 1 << 20];
        want[4096..4100].copy_from_slice(b"abcd");
        want[65536..65538].copy_from_slice(b"ef");
        assert_eq!(std::fs::read(t.path().join("d/sparse")).unwrap(), want);
        use sha2::Digest;
        assert_eq!(sha, hex::encode(sha2::Sha256::digest(&want)));
        s.mode = 0o4755;
        s.xattrs.insert(
            crate::entry::Xattr(b"user.k".to_vec()),
            crate::entry::Xattr(vec![0, 1, 2]),
        );
        tw.set_metadata(&s).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(t.path().join("d/sparse")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o4755);
        assert_eq!(md.mtime(), 1);
        let mut l = entry(b"d/link", Kind::File);
        l.link = Some(b"d/sparse".to_vec());
        tw.create(&l, None).unwrap();
        assert_eq!(
            std::fs::metadata(t.path().join("d/link")).unwrap().ino(),
            md.ino()
        );
        let mut sl = entry(b"d/sym", Kind::Symlink);
        sl.target = Some(b"/nowhere".to_vec());
        tw.create(&sl, None).unwrap();
        tw.set_metadata(&sl).unwrap();
        tw.rename(b"d/sym", b"sym2").unwrap();
        assert_eq!(
            std::fs::read_link(t.path().join("sym2")).unwrap(),
            Path::new("/nowhere")
        );
        tw.truncate(b"d/sparse", 10).unwrap();
        assert_eq!(
            std::fs::metadata(t.path().join("d/sparse")).unwrap().len(),
            10
        );
        // Short content is an error, not a silently short file.
        let mut short = entry(b"short", Kind::File);
        short.size = 10;
        let mut data: &[u8] = b"abc";
        assert!(matches!(
            tw.create(&short, Some(&mut data)),
            Err(TreeError::Content { .. })
        ));
        tw.remove(b"d").unwrap();
        assert!(!t.path().join("d").exists());
    }
}
