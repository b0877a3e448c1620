//! Content digests the target already computed (while verifying an applied
//! change set, or comparing for a difference mirror), so the comparison of
//! a difference mirror and the root digest check at its end hash only
//! files nothing verified yet: the target compares by `lstat`, not by
//! re-reading its replica.
//!
//! A digest is remembered under the file's (device, inode) together with
//! its size, mtime and change time as they were *before* it was read
//! ([`standin_builder::digest_table`]). Any later change to the file
//! (write, truncate, chmod, chown, utimes, xattr, link count) moves its
//! change time, which userspace cannot set, so a remembered digest is used
//! only while the stamp is unchanged; otherwise the file is hashed again
//! (the same rule git's index relies on).
//!
//! The cache is saved to `digests.bin` in the state directory when a
//! mirror ends ([`save`]) and loaded when the daemon starts ([`load`]), so
//! a restarted daemon does not re-read its replica either. A cache file
//! that is corrupt, truncated or written for another replica is ignored
//! with a log line, never trusted.
//!
//! For a large file (at least [`MIN_CV_FILE`]) the cache also keeps, in
//! memory only, the BLAKE3 chaining values of its mirror blocks
//! ([`remember_blocks`]; at most [`MAX_CV_BYTES`] of them, about 32 bytes
//! per block, a block being about the square root of the file's size): a
//! difference mirror's comparison then answers a changed file's block
//! digests without reading it, and the check after a patch re-reads only
//! the blocks the patch touched (`apply`, docs/protect.md "Block digests and verifying a
//! patch without reading the whole file"). Same trust rule: the values are
//! used only under the exact stamp they were computed under.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use rustix::fs::Stat;
use standin_builder::digest_table::{self, DigestTable};
use standin_builder::hash::Cv;

/// Largest number of remembered digests; the cache starts over beyond
/// that, which only costs hashing.
const MAX_ENTRIES: usize = digest_table::MAX_ENTRIES;

/// The cache file in a state directory.
pub const FILE: &str = "digests.bin";

/// A file's identity and change stamp.
pub type Stamp = digest_table::Stamp;

fn of_stat(st: &Stat) -> Option<Stamp> {
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some(Stamp {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
        ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
    })
}

/// The stamp in a regular file's `stat` (`None` for anything else).
pub fn stamp_of_stat(st: &Stat) -> Option<Stamp> {
    of_stat(st)
}

/// Keep the digest remembered under `before` for the same file stamped
/// `after`, when only its metadata changed in between (same inode and
/// size; the caller changed nothing but owner, mode, xattrs or times).
pub fn carry_over(before: &Stamp, after: &Stamp) {
    if before.dev != after.dev || before.ino != after.ino || before.size != after.size {
        return;
    }
    let b = lookup_blocks(before);
    if let Some(d) = lookup_stamp(before) {
        match b {
            Some(b) => remember_blocks(*after, d, b.bs, b.cvs.to_vec()),
            None => remember(*after, d),
        }
    }
}

/// The stamp of an open regular file (`None` for anything else).
pub fn stamp_of_fd(fd: impl AsFd) -> Option<Stamp> {
    of_stat(&rustix::fs::fstat(fd).ok()?)
}

/// The stamp of the regular file at `path` (symlinks not followed).
pub fn stamp_of_path(path: &Path) -> Option<Stamp> {
    of_stat(&rustix::fs::lstat(path).ok()?)
}

fn cache() -> &'static Mutex<DigestTable> {
    static C: OnceLock<Mutex<DigestTable>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(DigestTable::new()))
}

/// Remember that the file stamped `stamp` (taken before reading it) has
/// content digest `digest` (block values remembered for an older stamp of
/// the same file are dropped).
pub fn remember(stamp: Stamp, digest: [u8; 32]) {
    {
        let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= MAX_ENTRIES {
            c.clear();
        }
        c.insert(stamp, digest);
    }
    let mut b = blocks().lock().unwrap_or_else(|e| e.into_inner());
    if b.map
        .get(&(stamp.dev, stamp.ino))
        .is_some_and(|(_, e)| e.stamp != stamp)
    {
        b.remove(&(stamp.dev, stamp.ino));
    }
}

/// Smallest file whose block chaining values are kept.
pub const MIN_CV_FILE: u64 = 1 << 20;

/// Smallest block for the chaining values a check computes only for the
/// cache. BLAKE3 hashes the 1 KiB chunks of one block side by side (SIMD):
/// blocks of a few KiB (a file of up to ~16 MiB gets 1-4 KiB mirror blocks)
/// hash at a fraction of a whole file's speed. Values of bigger blocks
/// still check a patch from its touched blocks; a comparison that wants
/// smaller blocks reads the file.
pub const MIN_CV_BLOCK: u64 = 8 << 10;

/// Most bytes of chaining values kept (beyond, the oldest files' values
/// are dropped: that costs reading those files again).
pub const MAX_CV_BYTES: usize = 64 << 20;

/// A large file's block chaining values, under the stamp they were
/// computed under.
#[derive(Clone)]
pub struct Blocks {
    pub stamp: Stamp,
    /// Block size (a power of two of at least 1 KiB).
    pub bs: u64,
    /// One per block; [`standin_builder::hash::merge_cvs`] gives the
    /// content digest.
    pub cvs: std::sync::Arc<[Cv]>,
}

#[derive(Default)]
struct BlockTable {
    map: std::collections::HashMap<(u64, u64), (u64, Blocks)>,
    /// Insertion order (a counter), for dropping the oldest first.
    order: std::collections::BTreeMap<u64, (u64, u64)>,
    next: u64,
    bytes: usize,
}

impl BlockTable {
    fn remove(&mut self, key: &(u64, u64)) {
        if let Some((n, b)) = self.map.remove(key) {
            self.order.remove(&n);
            self.bytes -= b.cvs.len() * 32;
        }
    }
}

fn blocks() -> &'static Mutex<BlockTable> {
    static B: OnceLock<Mutex<BlockTable>> = OnceLock::new();
    B.get_or_init(Mutex::default)
}

/// Remember the content digest of the file stamped `stamp` and, for a
/// file of at least [`MIN_CV_FILE`] bytes and more than one block, the
/// chaining values of its `bs`-byte blocks (what
/// [`standin_builder::hash::hash_blocks_of`] gives).
pub fn remember_blocks(stamp: Stamp, digest: [u8; 32], bs: u64, cvs: Vec<Cv>) {
    remember(stamp, digest);
    if stamp.size < MIN_CV_FILE
        || stamp.size <= bs
        || cvs.len() as u64 != stamp.size.div_ceil(bs)
        || cvs.len() * 32 > MAX_CV_BYTES / 4
    {
        return;
    }
    let mut t = blocks().lock().unwrap_or_else(|e| e.into_inner());
    let key = (stamp.dev, stamp.ino);
    t.remove(&key);
    let add = cvs.len() * 32;
    while t.bytes + add > MAX_CV_BYTES {
        let Some((_, old)) = t.order.pop_first() else {
            break;
        };
        t.remove(&old);
    }
    let n = t.next;
    t.next += 1;
    t.order.insert(n, key);
    t.bytes += add;
    t.map.insert(
        key,
        (
            n,
            Blocks {
                stamp,
                bs,
                cvs: cvs.into(),
            },
        ),
    );
}

/// The block chaining values remembered for the file stamped exactly `now`.
pub fn lookup_blocks(now: &Stamp) -> Option<Blocks> {
    let t = blocks().lock().unwrap_or_else(|e| e.into_inner());
    match t.map.get(&(now.dev, now.ino)) {
        Some((_, b)) if b.stamp == *now => Some(b.clone()),
        _ => None,
    }
}

/// The block digests (32 bytes; the link carries 16) of the file stamped
/// `now` for `bs`-byte blocks, without reading it: from its remembered
/// chaining values (merged into bigger blocks when `bs` is a multiple of
/// theirs), or its content digest when it is one block long. `None` when
/// not known under this stamp.
pub fn block_digests(now: &Stamp, bs: u64) -> Option<Vec<Cv>> {
    if now.size <= bs {
        let d = lookup_stamp(now)?;
        return Some(if now.size == 0 { Vec::new() } else { vec![d] });
    }
    let b = lookup_blocks(now)?;
    standin_builder::hash::regroup_cvs(&b.cvs, b.bs, bs, now.size)
}

/// Bytes of block chaining values held (see [`MAX_CV_BYTES`]).
pub fn block_bytes() -> usize {
    blocks().lock().unwrap_or_else(|e| e.into_inner()).bytes
}

/// The remembered digest of the file stamped `now`.
pub fn lookup_stamp(now: &Stamp) -> Option<[u8; 32]> {
    cache().lock().unwrap_or_else(|e| e.into_inner()).get(now)
}

/// The remembered digest of the file at `path`, if it is `size` bytes long
/// and has not changed since it was hashed.
pub fn lookup(path: &Path, size: u64) -> Option<[u8; 32]> {
    let now = stamp_of_path(path).filter(|s| s.size == size)?;
    lookup_stamp(&now)
}

/// An id of the replica at `root` for the cache file: its path, device and
/// inode (a cache written for another replica is not loaded).
pub fn tree_id(root: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(root) {
        Ok(m) => format!("target:{}:{}:{}", root.display(), m.dev(), m.ino()),
        Err(_) => format!("target:{}", root.display()),
    }
}

/// Load `state_dir/digests.bin` for the replica `tree` into the cache. A
/// file that cannot be trusted is logged and ignored (and removed).
pub fn load(state_dir: &Path, tree: &str) -> usize {
    let path = state_dir.join(FILE);
    match DigestTable::load(&path, tree) {
        Ok(t) => {
            let n = t.len();
            *cache().lock().unwrap_or_else(|e| e.into_inner()) = t;
            n
        }
        Err(why) if digest_table::other_version(&why) => {
            // After an upgrade (e.g. sha256 digests before protocol 5).
            tracing::debug!(
                file = %path.display(),
                "dropping the digest cache of another format: {why}; it is rebuilt"
            );
            let _ = std::fs::remove_file(&path);
            0
        }
        Err(why) => {
            tracing::warn!(
                file = %path.display(),
                "ignoring the digest cache: {why}; the replica's files will be hashed again"
            );
            let _ = std::fs::remove_file(&path);
            0
        }
    }
}

/// Save the cache to `state_dir/digests.bin` for the replica `tree`
/// (temp file, rename). Not synced: it is a cache, saved after the replica
/// it describes was synced; a file torn by a crash fails its checksum and
/// is ignored at load (the files are hashed again), and an fsync of its
/// megabytes held up every mirror's end (the agent waits for it).
pub fn save(state_dir: &Path, tree: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let t0 = std::time::Instant::now();
    let table = cache().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let path = state_dir.join(FILE);
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
        table.write_to(&mut w, tree)?;
        w.flush()?;
        std::fs::rename(&tmp, &path)
    };
    let r = write().with_context(|| format!("saving the digest cache {}", path.display()));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "digest cache saved");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_to_the_file_forgets_its_digest() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, "one").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        remember(stamp_of_fd(&f).unwrap(), [7; 32]);
        assert_eq!(lookup(&p, 3), Some([7; 32]));
        assert_eq!(lookup(&p, 4), None, "another size");
        // Same size, new content: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, "two").unwrap();
        assert_eq!(lookup(&p, 3), None);
        remember(stamp_of_path(&p).unwrap(), [8; 32]);
        assert_eq!(lookup(&p, 3), Some([8; 32]));
        // A metadata change forgets it too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&p, 3), None);
        assert_eq!(lookup(&t.path().join("absent"), 0), None);
        // A metadata change made by the apply carries the digest over.
        let before = stamp_of_path(&p).unwrap();
        remember(before, [9; 32]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let after = stamp_of_path(&p).unwrap();
        assert_eq!(lookup(&p, 3), None);
        carry_over(&before, &after);
        assert_eq!(lookup(&p, 3), Some([9; 32]));
        let grown = Stamp {
            size: 4,
            ctime_ns: after.ctime_ns + 1,
            ..after
        };
        carry_over(&after, &grown);
        assert_eq!(lookup_stamp(&grown), None, "not across a size change");
        assert_eq!(stamp_of_path(t.path()), None, "directories are not stamped");
    }

    /// Block values are kept for a large file under its exact stamp,
    /// answered for bigger blocks too, and dropped when the file is
    /// remembered under another stamp.
    #[test]
    fn block_values_hold_only_under_their_stamp() {
        use standin_builder::hash::{content_digest, hash_blocks_of};
        let data: Vec<u8> = (0..2_100_000u32)
            .map(|i| ((i * 5) ^ (i >> 11)) as u8)
            .collect();
        let (d, cvs) = hash_blocks_of(&mut &data[..], 2048).unwrap();
        assert_eq!(d, content_digest(&data));
        let st = Stamp {
            dev: 1 << 40,
            ino: 77,
            size: data.len() as u64,
            mtime_ns: 5,
            ctime_ns: 6,
        };
        remember_blocks(st, d, 2048, cvs.clone());
        assert!(block_bytes() >= cvs.len() * 32);
        assert_eq!(block_digests(&st, 2048), Some(cvs.clone()));
        let (_, big) = hash_blocks_of(&mut &data[..], 8192).unwrap();
        assert_eq!(block_digests(&st, 8192), Some(big));
        assert_eq!(block_digests(&st, 1024), None, "smaller blocks: read");
        let later = Stamp { ctime_ns: 7, ..st };
        assert_eq!(block_digests(&later, 2048), None);
        remember(later, [1; 32]);
        assert!(lookup_blocks(&st).is_none(), "dropped with the old stamp");
        // A small file's values are not kept.
        let small = Stamp {
            ino: 78,
            size: 5000,
            ..st
        };
        remember_blocks(small, [2; 32], 2048, vec![[0; 32]; 3]);
        assert!(lookup_blocks(&small).is_none());
    }
}
