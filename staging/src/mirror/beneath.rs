//! Reading the replica by paths from the network: every path is reached
//! through its parent opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` beneath the staging root, and the last component
//! is never followed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use standin_builder::digest_table::Stamp;
use standin_builder::entry::Entry;
use standin_builder::scan::stat_entry_meta;

/// What [`Beneath::quick_stat`] tells of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quick {
    pub dev: u64,
    pub ino: u64,
    /// Change time in ns.
    pub ctime: i64,
    pub nlink: u64,
    pub dir: bool,
}

/// The replica at a root, read beneath it.
pub struct Beneath {
    root_fd: Option<Arc<OwnedFd>>,
    /// The last parent directory opened (entries come in tree order, so
    /// neighbours share it).
    last_dir: Option<(Vec<u8>, OwnedFd)>,
    /// Files read for their block digests (shared by forks; what tests
    /// count to show an answer came from the digest cache).
    block_reads: Arc<std::sync::atomic::AtomicU64>,
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None if path.is_empty() => (&b"."[..], &b"."[..]),
        None => (&b""[..], path),
    }
}

impl Beneath {
    /// Open the replica at `root` (which may not exist yet: then nothing is found).
    pub fn new(root: &Path) -> Result<Beneath> {
        let root_fd = match rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(e).with_context(|| format!("opening {}", root.display())),
        };
        Ok(Beneath {
            root_fd,
            last_dir: None,
            block_reads: Arc::default(),
        })
    }

    /// Another reader of the same replica (for another thread).
    pub fn fork(&self) -> Beneath {
        Beneath {
            root_fd: self.root_fd.clone(),
            last_dir: None,
            block_reads: self.block_reads.clone(),
        }
    }

    fn open_dir(&self, dir: &[u8], flags: OFlags) -> Option<OwnedFd> {
        let root = self.root_fd.as_deref()?;
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        rustix::fs::openat2(
            root,
            OsStr::from_bytes(dir),
            flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()
    }

    /// The (cached) parent directory of `path` and its last component.
    fn parent_cached<'p>(&mut self, path: &'p [u8]) -> Option<(&OwnedFd, &'p [u8])> {
        let (dir, name) = split(path);
        let dir = if path.is_empty() { &b""[..] } else { dir };
        let reuse = matches!(&self.last_dir, Some((d, _)) if d == dir);
        if !reuse {
            self.last_dir = None;
            let fd = self.open_dir(dir, OFlags::PATH)?;
            self.last_dir = Some((dir.to_vec(), fd));
        }
        let (_, fd) = self.last_dir.as_ref()?;
        Some((fd, name))
    }

    fn proc_path(fd: &OwnedFd, name: &[u8]) -> PathBuf {
        let mut p = format!("/proc/self/fd/{}/", fd.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        PathBuf::from(OsStr::from_bytes(&p))
    }

    /// The replica's entry at `path` (no content digest) and its `lstat`, `None`
    /// when absent, a socket or unreachable. `links` tracks hardlink groups.
    pub fn stat(
        &mut self,
        path: &[u8],
        links: &mut HashMap<(u64, u64), Vec<u8>>,
    ) -> Option<(Entry, std::fs::Metadata)> {
        let (fd, name) = self.parent_cached(path)?;
        stat_entry_meta(&Self::proc_path(fd, name), path.to_vec(), links)
            .ok()
            .flatten()
    }

    /// Only `lstat` of `path`: `(inode, change time in ns)`.
    pub fn change_stamp(&mut self, path: &[u8]) -> Option<(u64, i64)> {
        let (fd, name) = self.parent_cached(path)?;
        let st = rustix::fs::statat(fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        #[allow(clippy::unnecessary_cast)]
        Some((
            st.st_ino as u64,
            st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
        ))
    }

    /// Only `lstat` of `path`, by its parent's descriptor.
    pub fn quick_stat(&mut self, path: &[u8]) -> Option<Quick> {
        let (fd, name) = self.parent_cached(path)?;
        let st = rustix::fs::statat(fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let dir =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
        #[allow(clippy::unnecessary_cast)]
        Some(Quick {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            ctime: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
            nlink: st.st_nlink as u64,
            dir,
        })
    }

    /// Entries in the directory at `path`, sockets left out (as the scan does).
    pub fn count_children(&self, path: &[u8]) -> Option<u64> {
        let fd = self.open_dir(path, OFlags::RDONLY)?;
        let mut dir = rustix::fs::Dir::read_from(&fd).ok()?;
        let mut n = 0;
        while let Some(d) = dir.read() {
            let d = d.ok()?;
            let name = d.file_name().to_bytes();
            if name == b"." || name == b".." || d.file_type() == rustix::fs::FileType::Socket {
                continue;
            }
            n += 1;
        }
        Some(n)
    }

    /// Names in the directory at `path` (without `.` and `..`).
    pub fn child_names(&self, path: &[u8]) -> Option<Vec<Vec<u8>>> {
        let fd = self.open_dir(path, OFlags::RDONLY)?;
        let mut dir = rustix::fs::Dir::read_from(&fd).ok()?;
        let mut out = Vec::new();
        while let Some(d) = dir.read() {
            let d = d.ok()?;
            let name = d.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(name.to_vec());
            }
        }
        Some(out)
    }

    /// Open the regular file at `path` for reading (no symlink followed).
    pub fn open_file(&self, path: &[u8]) -> Option<std::fs::File> {
        let (dir, name) = split(path);
        let dir = self.open_dir(dir, OFlags::PATH)?;
        let fd = rustix::fs::openat(
            &dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        Some(std::fs::File::from(fd))
    }

    /// The content digest (BLAKE3-256) of the file at `path`, from the
    /// digest cache when its
    /// stamp is unchanged, else read (and remembered).
    pub fn hash(&self, path: &[u8], size: u64) -> Option<[u8; 32]> {
        let mut f = self.open_file(path)?;
        let stamp = crate::digest_cache::stamp_of_fd(&f);
        if let Some(d) = stamp.as_ref().and_then(crate::digest_cache::lookup_stamp) {
            return Some(d);
        }
        let mut h = standin_builder::hash::ContentHasher::new();
        let mut buf = vec![0u8; (1 << 20).min(size.max(4096) as usize)];
        standin_builder::hash::feed_reader(&mut h, &mut f, &mut buf).ok()?;
        let d: [u8; 32] = h.finalize();
        if let Some(stamp) = stamp {
            crate::digest_cache::remember(stamp, d);
        }
        Some(d)
    }
}

/// A file's content digest and, when it was read for it, its block digests.
pub type DigestAndBlocks = ([u8; 32], Option<Vec<[u8; 16]>>);

impl Beneath {
    /// [`Beneath::hash`] and, from the same read, the block digests of
    /// `bs`-byte blocks (`None` when the digest came from the cache
    /// unread): for a file the source listed as changed, whose blocks are
    /// wanted whenever its digest differs. A large file's block chaining
    /// values are remembered with its digest.
    pub fn hash_and_blocks(&self, path: &[u8], bs: u64) -> Option<DigestAndBlocks> {
        let mut f = self.open_file(path)?;
        let stamp = crate::digest_cache::stamp_of_fd(&f);
        if let Some(d) = stamp.as_ref().and_then(crate::digest_cache::lookup_stamp) {
            return Some((d, None));
        }
        let (d, blocks) = self.read_blocks(&mut f, stamp, bs)?;
        Some((d, Some(standin_builder::hash::wire_digests(&blocks))))
    }

    /// The block digests of `bs`-byte blocks of the file at `path` as the
    /// link carries them (empty when `bs` is 0, or the file is missing or
    /// unreadable: then the whole file travels). From the digest cache when
    /// it knows them under the file's current stamp (no read), else read
    /// (and remembered).
    pub fn blocks(&self, path: &[u8], bs: u64) -> Vec<[u8; 16]> {
        if bs == 0 {
            return Vec::new();
        }
        let Some(mut f) = self.open_file(path) else {
            return Vec::new();
        };
        let stamp = crate::digest_cache::stamp_of_fd(&f);
        if let Some(b) = stamp
            .as_ref()
            .and_then(|s| crate::digest_cache::block_digests(s, bs))
        {
            return standin_builder::hash::wire_digests(&b);
        }
        match self.read_blocks(&mut f, stamp, bs) {
            Some((_, b)) => standin_builder::hash::wire_digests(&b),
            None => Vec::new(),
        }
    }

    /// Read `f` (stamped `stamp` before) for its digest and block digests,
    /// and remember them.
    fn read_blocks(
        &self,
        f: &mut std::fs::File,
        stamp: Option<Stamp>,
        bs: u64,
    ) -> Option<([u8; 32], Vec<standin_builder::hash::Cv>)> {
        self.block_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (d, blocks) = standin_builder::hash::hash_blocks_of(f, bs).ok()?;
        if let Some(stamp) = stamp {
            crate::digest_cache::remember_blocks(stamp, d, bs, blocks.clone());
        }
        Some((d, blocks))
    }

    /// Files read for their block digests so far (by this reader and its
    /// forks).
    pub fn block_reads(&self) -> u64 {
        self.block_reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A regular file's stamp from its metadata.
pub fn stamp(md: &std::fs::Metadata) -> Option<Stamp> {
    Stamp::of_metadata(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use standin_builder::hash::{block_cv, content_digest};

    fn cvs16(data: &[u8], bs: usize) -> Vec<[u8; 16]> {
        data.chunks(bs)
            .enumerate()
            .map(|(i, c)| block_cv(c, (i * bs) as u64)[..16].try_into().unwrap())
            .collect()
    }

    #[test]
    fn a_file_is_read_once_for_its_digest_and_blocks_then_cached() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir/f"), &data).unwrap();
        let b = Beneath::new(d.path()).unwrap();
        let bs = 65536;
        let (digest, blocks) = b.hash_and_blocks(b"dir/f", bs).unwrap();
        assert_eq!(digest, content_digest(&data));
        assert_eq!(blocks, Some(cvs16(&data, bs as usize)));
        // The digest is remembered under the file's stamp: the next ask
        // answers from the cache, without the blocks.
        assert_eq!(b.hash_and_blocks(b"dir/f", bs), Some((digest, None)));
        assert_eq!(b.hash(b"dir/f", data.len() as u64), Some(digest));
        // Replaced (new stamp): read again.
        let mut changed = data.clone();
        changed[70_000] ^= 1;
        // (A new inode: a rewrite in place within one clock tick could
        // keep the stamp.)
        std::fs::write(d.path().join("dir/g"), &changed).unwrap();
        std::fs::rename(d.path().join("dir/g"), d.path().join("dir/f")).unwrap();
        let (digest2, blocks2) = b.hash_and_blocks(b"dir/f", bs).unwrap();
        assert_eq!(digest2, content_digest(&changed));
        assert_eq!(blocks2.unwrap(), cvs16(&changed, bs as usize));
        // Missing, or a path out of the replica: nothing.
        assert_eq!(b.hash_and_blocks(b"dir/none", bs), None);
        assert_eq!(b.hash_and_blocks(b"../etc/passwd", bs), None);
    }

    /// A large file's block values are remembered with its digest: the
    /// next ask for its blocks (same or bigger blocks) reads nothing, until
    /// the file changes.
    #[test]
    fn the_blocks_of_a_large_cached_file_are_answered_without_reading_it() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 + i / 5) as u8).collect();
        std::fs::write(d.path().join("big"), &data).unwrap();
        let b = Beneath::new(d.path()).unwrap();
        let bs = 2048u64;
        let (digest, blocks) = b.hash_and_blocks(b"big", bs).unwrap();
        assert_eq!(digest, content_digest(&data));
        assert_eq!(blocks, Some(cvs16(&data, bs as usize)));
        assert_eq!(b.block_reads(), 1);
        assert_eq!(b.blocks(b"big", bs), cvs16(&data, bs as usize));
        assert_eq!(b.blocks(b"big", 4 * bs), cvs16(&data, 4 * bs as usize));
        assert_eq!(b.block_reads(), 1, "answered from the cached values");
        // Smaller blocks than those remembered: read.
        assert_eq!(b.blocks(b"big", 1024), cvs16(&data, 1024));
        assert_eq!(b.block_reads(), 2);
        // Changed behind the cache (new stamp): read again.
        let mut changed = data.clone();
        changed[1_500_000] ^= 1;
        std::fs::write(d.path().join("new"), &changed).unwrap();
        std::fs::rename(d.path().join("new"), d.path().join("big")).unwrap();
        assert_eq!(b.blocks(b"big", bs), cvs16(&changed, bs as usize));
        assert_eq!(b.block_reads(), 3);
        // A file of one block: its content digest, from the cache.
        std::fs::write(d.path().join("small"), b"tiny").unwrap();
        let (small, _) = b.hash_and_blocks(b"small", 1024).unwrap();
        let reads = b.block_reads();
        assert_eq!(
            b.blocks(b"small", 1024),
            vec![<[u8; 16]>::try_from(&small[..16]).unwrap()]
        );
        assert_eq!(b.block_reads(), reads);
    }
}
