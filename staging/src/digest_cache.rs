//! Content digests the target already computed (while verifying an applied
//! change set, or comparing for a difference mirror), so the root digest
//! check at the end of a mirror hashes only files nothing verified yet.
//!
//! A digest is remembered under the file's (device, inode) together with
//! its change time and size as they were *before* it was read. Any later
//! change to the file (write, truncate, chmod, chown, utimes, xattr, link
//! count) moves its change time, which userspace cannot set, so a
//! remembered digest is used only while the stamp is unchanged; otherwise
//! the file is hashed again (the same rule git's index relies on). The cache
//! lives in memory only: after a restart everything is hashed again.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use rustix::fs::Stat;

/// Largest number of remembered digests (about 100 bytes each); the cache
/// starts over beyond that, which only costs hashing.
const MAX_ENTRIES: usize = 1 << 20;

/// A file's identity and change stamp.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    size: u64,
}

impl Stamp {
    fn of(st: &Stat) -> Option<Stamp> {
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return None;
        }
        Some(Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            #[allow(clippy::unnecessary_cast)]
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
            size: st.st_size as u64,
        })
    }

    /// The stamp of an open regular file (`None` for anything else).
    pub fn of_fd(fd: impl AsFd) -> Option<Stamp> {
        Stamp::of(&rustix::fs::fstat(fd).ok()?)
    }

    /// The stamp of the regular file at `path` (symlinks not followed).
    pub fn of_path(path: &Path) -> Option<Stamp> {
        Stamp::of(&rustix::fs::lstat(path).ok()?)
    }
}

/// (device, inode) -> stamp and digest.
type Cache = Mutex<HashMap<(u64, u64), (Stamp, [u8; 32])>>;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Remember that the file stamped `stamp` (taken before reading it) has
/// content digest `digest`.
pub fn remember(stamp: Stamp, digest: [u8; 32]) {
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= MAX_ENTRIES {
        c.clear();
    }
    c.insert((stamp.dev, stamp.ino), (stamp, digest));
}

/// The remembered digest of the file at `path`, if it is `size` bytes long
/// and has not changed since it was hashed.
pub fn lookup(path: &Path, size: u64) -> Option<[u8; 32]> {
    let now = Stamp::of_path(path).filter(|s| s.size == size)?;
    let c = cache().lock().unwrap_or_else(|e| e.into_inner());
    match c.get(&(now.dev, now.ino)) {
        Some((s, d)) if *s == now => Some(*d),
        _ => None,
    }
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
        remember(Stamp::of_fd(&f).unwrap(), [7; 32]);
        assert_eq!(lookup(&p, 3), Some([7; 32]));
        assert_eq!(lookup(&p, 4), None, "another size");
        // Same size, new content: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, "two").unwrap();
        assert_eq!(lookup(&p, 3), None);
        remember(Stamp::of_path(&p).unwrap(), [8; 32]);
        assert_eq!(lookup(&p, 3), Some([8; 32]));
        // A metadata change forgets it too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&p, 3), None);
        assert_eq!(lookup(&t.path().join("absent"), 0), None);
        assert_eq!(
            Stamp::of_path(t.path()),
            None,
            "directories are not stamped"
        );
    }
}
