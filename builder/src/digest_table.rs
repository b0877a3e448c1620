//! Remembered content digests of regular files, keyed by the file's
//! identity and change stamp, and their crash-safe file format.
//!
//! A digest is trusted only while the file's [`Stamp`] — device, inode,
//! size, mtime and ctime, taken *before* the file was read — is unchanged.
//! Any write, truncate, chmod, chown, utimes, xattr or link-count change
//! moves the ctime, which userspace cannot set back, so a changed file is
//! hashed again (the rule git's index relies on). A file whose mtime was
//! restored with `touch -d` still has a new ctime.
//!
//! File (`digests.bin` in a state directory):
//!
//! ```text
//! "SIDT" | version u8 = 2 | 3 reserved | tree-id length u16 | tree id
//! | count u64 | count x (dev u64, ino u64, size u64, mtime_ns i64,
//! ctime_ns i64, content digest 32 bytes) | BLAKE3-256 of everything before (32)
//! ```
//!
//! The digests are the link's content digests (BLAKE3-256,
//! [`crate::hash::content_digest`]) since version 2, and so is the
//! checksum; version 1 held sha256 digests and checksum and is refused like any other version, so none of its
//! values is ever taken for a BLAKE3 digest.
//!
//! Integers are big endian. A file that is truncated, corrupt, of another
//! version or of another tree is refused as a whole ([`DigestTable::load`]
//! says why); the caller logs that and starts empty, which only costs
//! hashing.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::hash::{content_digest, ContentHasher};
use anyhow::{Context, Result};

const MAGIC: &[u8; 4] = b"SIDT";
/// Version 2: BLAKE3 content digests (1 held sha256).
const VERSION: u8 = 2;
const RECORD: usize = 72;

/// Largest number of remembered files (about 100 bytes each in memory, 72
/// on disk). Beyond it new digests are not remembered (they cost hashing).
pub const MAX_ENTRIES: usize = 4 << 20;

/// Whether `why` (a refusal of [`DigestTable::load`] or of a
/// [`crate::record_stream`] file such as the agent's cache) says only that
/// the file has another format version: an expected, one-time event
/// after an upgrade (callers log it at debug level and rebuild), not
/// damage.
pub fn other_version(why: &str) -> bool {
    why.contains("(this standin reads ")
}

/// A regular file's identity and change stamp.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    /// The stamp of a regular file's metadata (`None` for anything else).
    pub fn of_metadata(md: &std::fs::Metadata) -> Option<Stamp> {
        if !md.file_type().is_file() {
            return None;
        }
        Some(Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        })
    }

    /// The stamp of the regular file at `path` (symlinks not followed).
    pub fn of_path(path: &Path) -> Option<Stamp> {
        Stamp::of_metadata(&std::fs::symlink_metadata(path).ok()?)
    }
}

/// Digests by (device, inode), each with the stamp it was computed under.
#[derive(Debug, Default, Clone)]
pub struct DigestTable {
    map: HashMap<(u64, u64), (Stamp, [u8; 32])>,
}

impl DigestTable {
    /// An empty table.
    pub fn new() -> DigestTable {
        DigestTable::default()
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The digest of the file stamped `now`, if it was computed under exactly this stamp.
    pub fn get(&self, now: &Stamp) -> Option<[u8; 32]> {
        match self.map.get(&(now.dev, now.ino)) {
            Some((s, d)) if s == now => Some(*d),
            _ => None,
        }
    }

    /// Take out the digest of the file stamped `now` (see [`DigestTable::get`]);
    /// the file is forgotten either way.
    pub fn take(&mut self, now: &Stamp) -> Option<[u8; 32]> {
        let got = self.map.remove(&(now.dev, now.ino));
        // Give memory back as the table empties (a scan moves every entry
        // to a fresh table), so the two together stay near one table.
        if self.map.capacity() > 4096 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to_fit();
        }
        match got {
            Some((s, d)) if s == *now => Some(d),
            _ => None,
        }
    }

    /// Remember `digest` for the file stamped `stamp` (taken before reading it).
    pub fn insert(&mut self, stamp: Stamp, digest: [u8; 32]) {
        if self.map.len() >= MAX_ENTRIES && !self.map.contains_key(&(stamp.dev, stamp.ino)) {
            return;
        }
        self.map.insert((stamp.dev, stamp.ino), (stamp, digest));
    }

    /// Keep only the files `keep` says yes to (e.g. those seen in the last scan).
    pub fn retain(&mut self, mut keep: impl FnMut(&Stamp) -> bool) {
        self.map.retain(|_, (s, _)| keep(s));
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The table's bytes for `tree` (an id of the tree the digests describe).
    pub fn encode(&self, tree: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + tree.len() + self.map.len() * RECORD + 32);
        self.write_to(&mut out, tree).expect("writing to memory");
        out
    }

    /// Write the table for `tree` to `w` (streaming; see the module docs).
    pub fn write_to(&self, w: &mut impl std::io::Write, tree: &str) -> std::io::Result<()> {
        let mut h = ContentHasher::new();
        let mut put = |b: &[u8]| -> std::io::Result<()> {
            h.update(b);
            w.write_all(b)
        };
        let tree = &tree.as_bytes()[..tree.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(64 * RECORD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&(tree.len() as u16).to_be_bytes());
        out.extend_from_slice(tree);
        out.extend_from_slice(&(self.map.len() as u64).to_be_bytes());
        for (s, d) in self.map.values() {
            if out.len() >= 63 * RECORD {
                put(&out)?;
                out.clear();
            }
            out.extend_from_slice(&s.dev.to_be_bytes());
            out.extend_from_slice(&s.ino.to_be_bytes());
            out.extend_from_slice(&s.size.to_be_bytes());
            out.extend_from_slice(&s.mtime_ns.to_be_bytes());
            out.extend_from_slice(&s.ctime_ns.to_be_bytes());
            out.extend_from_slice(d);
        }
        put(&out)?;
        let sum = h.finalize();
        w.write_all(&sum)
    }

    /// Parse a table written for `tree`; `Err` says why it cannot be trusted.
    pub fn decode(b: &[u8], tree: &str) -> Result<DigestTable, String> {
        if b.len() < 18 + 32 {
            return Err(format!("truncated ({} bytes)", b.len()));
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if &b[..4] != MAGIC {
            return Err("not a standin digest table (bad magic)".into());
        }
        if b[4] != VERSION {
            return Err(format!("version {} (this standin reads {VERSION})", b[4]));
        }
        if content_digest(body) != sum {
            return Err("checksum mismatch (truncated or corrupt)".into());
        }
        let tl = u16::from_be_bytes([b[8], b[9]]) as usize;
        let Some(tid) = body.get(10..10 + tl) else {
            return Err("truncated tree id".into());
        };
        if tid != tree.as_bytes() {
            return Err(format!(
                "written for another tree ({:?}, this is {tree:?})",
                String::from_utf8_lossy(tid)
            ));
        }
        let rest = &body[10 + tl..];
        let Some(cb) = rest.get(..8) else {
            return Err("truncated count".into());
        };
        let count = u64::from_be_bytes(cb.try_into().expect("8 bytes"));
        let recs = &rest[8..];
        if count > MAX_ENTRIES as u64 || recs.len() as u64 != count * RECORD as u64 {
            return Err(format!(
                "count {count} does not match its {} bytes of records",
                recs.len()
            ));
        }
        let mut t = DigestTable::new();
        t.map.reserve(count as usize);
        for r in recs.chunks_exact(RECORD) {
            let u = |i: usize| u64::from_be_bytes(r[i..i + 8].try_into().expect("8 bytes"));
            let s = Stamp {
                dev: u(0),
                ino: u(8),
                size: u(16),
                mtime_ns: u(24) as i64,
                ctime_ns: u(32) as i64,
            };
            t.map
                .insert((s.dev, s.ino), (s, r[40..72].try_into().expect("32 bytes")));
        }
        Ok(t)
    }

    /// Load the table at `path` written for `tree`. A missing file is an
    /// empty table; an unreadable, corrupt, truncated or foreign one is
    /// `Err(reason)` (nothing of it is trusted).
    pub fn load(path: &Path, tree: &str) -> Result<DigestTable, String> {
        let limit = (MAX_ENTRIES * RECORD + 64 * 1024) as u64;
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DigestTable::new()),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
            Ok(m) if m.len() > limit => {
                return Err(format!("{} bytes is more than the limit", m.len()))
            }
            Ok(_) => {}
        }
        let b = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        DigestTable::decode(&b, tree)
    }

    /// Write the table for `tree` to `path` durably (temp file, fsync, rename, fsync dir).
    pub fn save(&self, path: &Path, tree: &str) -> Result<()> {
        let save = || -> Result<()> {
            let mut f = crate::durable::DurableFile::create(path)?;
            {
                let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut f);
                self.write_to(&mut w, tree)?;
                std::io::Write::flush(&mut w)?;
            }
            f.commit()
        };
        save().with_context(|| format!("saving the digest cache {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64) -> Stamp {
        Stamp {
            dev: 1,
            ino,
            size: 3,
            mtime_ns: 5,
            ctime_ns: 7,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let mut t = DigestTable::new();
        t.insert(stamp(1), [1; 32]);
        t.insert(stamp(2), [2; 32]);
        let b = t.encode("tree-a");
        let back = DigestTable::decode(&b, "tree-a").unwrap();
        assert_eq!(back.get(&stamp(1)), Some([1; 32]));
        assert_eq!(back.get(&stamp(2)), Some([2; 32]));
        let moved = Stamp {
            ctime_ns: 8,
            ..stamp(1)
        };
        assert_eq!(back.get(&moved), None, "a moved ctime is not trusted");
        let err = DigestTable::decode(&b, "tree-b").unwrap_err();
        assert!(err.contains("another tree"), "{err}");
        let err = DigestTable::decode(&b[..b.len() - 1], "tree-a").unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        let err = DigestTable::decode(&b[..10], "tree-a").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(DigestTable::decode(&bad, "tree-a").is_err());
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("digests.bin");
        assert!(
            DigestTable::load(&p, "x").unwrap().is_empty(),
            "missing = empty"
        );
        back.save(&p, "tree-a").unwrap();
        assert_eq!(DigestTable::load(&p, "tree-a").unwrap().len(), 2);
    }

    /// A version-1 table (sha256 digests) with a valid checksum is refused
    /// whole: none of its digests is taken for a BLAKE3 one.
    #[test]
    fn a_sha256_table_of_version_1_is_not_trusted() {
        let mut t = DigestTable::new();
        t.insert(stamp(1), [1; 32]);
        let mut b = t.encode("tree-a");
        b[4] = 1;
        let n = b.len() - 32;
        let sum = {
            use sha2::{Digest, Sha256};
            Sha256::digest(&b[..n])
        };
        b[n..].copy_from_slice(&sum);
        let err = DigestTable::decode(&b, "tree-a").unwrap_err();
        assert!(
            err.contains("version 1") && err.contains("reads 2"),
            "{err}"
        );
        assert!(other_version(&err));
        assert!(!other_version("checksum mismatch (truncated or corrupt)"));
    }
}
