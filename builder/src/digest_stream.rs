//! The source's digest cache as a table sorted in tree order on disk, read
//! alongside the scan's sorted walk (a merge join) and written streaming
//! as the scan goes, so its memory does not grow with the tree: the reader
//! holds one record, the writer none.
//!
//! Trust rule as in [`crate::digest_table`]: a digest is used only while
//! the file's [`Stamp`] (device, inode, size, mtime, ctime, taken before it
//! was read) is unchanged.
//!
//! File (`digests.bin` in the agent's state directory):
//!
//! ```text
//! "SIDS" | version u8 = 2 | 3 reserved | tree-id length u16 | tree id
//! | records in strictly increasing tree order ([`crate::entry::path_cmp`]):
//!   shared u32 (bytes of the previous path kept) | suffix length u32 | suffix
//!   | dev u64 | ino u64 | size u64 | mtime_ns i64 | ctime_ns i64 | digest (32)
//! | end: shared = 0xFFFF_FFFF | count u64 | BLAKE3-256 of everything before (32)
//! ```
//!
//! The digest is the link's content digest (BLAKE3-256,
//! [`crate::hash::content_digest`]) since version 2; a version-1 file
//! (sha256 digests) is refused whole like any other version.
//!
//! Integers are big endian. The whole file is checked (checksum, order,
//! count) in one streaming pass before any digest of it is used; a file
//! that is truncated, corrupt, of another version or of another tree is
//! refused as a whole ([`Reader::open`] says why) and the caller hashes.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::Result;

use crate::digest_table::Stamp;
use crate::entry::path_cmp;
use crate::record_stream::{Framing, RecordReader, RecordWriter};

const FRAMING: Framing = Framing {
    magic: b"SIDS",
    // 2: BLAKE3 content digests (1 held sha256).
    version: 2,
    what: "digest cache",
};

/// One remembered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u8>,
    pub stamp: Stamp,
    /// The file's content digest (BLAKE3-256).
    pub digest: [u8; 32],
}

/// What [`Reader::lookup`] found for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Remembered under exactly this stamp: the digest.
    Same([u8; 32]),
    /// Remembered under another stamp (the file changed).
    Changed,
    /// Not remembered.
    Unknown,
}

/// Parses records from a stream.
struct Records<R: Read>(RecordReader<R>);

impl<R: Read> Records<R> {
    /// The next record, `None` at the end marker (the count is checked).
    fn next(&mut self) -> Result<Option<Record>, String> {
        let r = &mut self.0;
        let Some(path) = r.next_path()? else {
            return Ok(None);
        };
        let stamp = Stamp {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
        };
        let digest = r.read(32)?.try_into().expect("32");
        r.done(&path);
        Ok(Some(Record {
            path,
            stamp,
            digest,
        }))
    }
}

/// Reads a cache file alongside a walk in tree order.
pub struct Reader {
    records: Option<Records<BufReader<File>>>,
    current: Option<Record>,
    /// Largest number of records held in memory at once (one).
    pub held_peak: usize,
}

impl Reader {
    /// A reader of nothing (no cache, or `--verify-all`).
    pub fn empty() -> Reader {
        Reader {
            records: None,
            current: None,
            held_peak: 0,
        }
    }

    /// Open the cache at `path` written for `tree`, after checking all of
    /// it in one streaming pass. A missing file reads as empty; an
    /// unreadable, corrupt, truncated or foreign one is `Err(reason)`.
    pub fn open(path: &Path, tree: &str) -> Result<Reader, String> {
        // Pass 1: the checksum of all of it.
        if crate::record_stream::verify(path, &FRAMING, tree, 10 + 4 + 8 + 32, 0)?.is_none() {
            return Ok(Reader::empty());
        }
        // Pass 2: header, order and count.
        let open = || -> Result<Records<BufReader<File>>, String> {
            let f = File::open(path).map_err(|e| e.to_string())?;
            let mut rec = Records(RecordReader::new(BufReader::with_capacity(1 << 16, f)));
            rec.0.header(&FRAMING, tree)?;
            Ok(rec)
        };
        let mut check = open()?;
        while check.next()?.is_some() {}
        let mut records = open()?;
        let current = records.next()?;
        Ok(Reader {
            held_peak: usize::from(current.is_some()),
            records: Some(records),
            current,
        })
    }

    /// What the cache says about `path` stamped `now`. Calls must come in
    /// tree order; records before `path` are passed over.
    pub fn lookup(&mut self, path: &[u8], now: &Stamp) -> Found {
        loop {
            let Some(cur) = &self.current else {
                return Found::Unknown;
            };
            match path_cmp(&cur.path, path) {
                Ordering::Less => {
                    self.current = match self.records.as_mut().map(|r| r.next()) {
                        Some(Ok(r)) => r,
                        // Checked at open; a file changed since reads as ended.
                        _ => None,
                    };
                }
                Ordering::Equal if cur.stamp == *now => return Found::Same(cur.digest),
                Ordering::Equal => return Found::Changed,
                Ordering::Greater => return Found::Unknown,
            }
        }
    }
}

/// Writes a cache file streaming, in tree order, then puts it in place
/// durably (temp file, fsync, rename, fsync dir).
pub struct Writer(RecordWriter);

impl Writer {
    /// Start a cache file at `path` for `tree`.
    pub fn create(path: &Path, tree: &str) -> Result<Writer> {
        Ok(Writer(RecordWriter::create(path, &FRAMING, tree)?))
    }

    /// Add the next file; paths must come in strictly increasing tree order
    /// (others are left out).
    pub fn add(&mut self, path: &[u8], stamp: &Stamp, digest: &[u8; 32]) -> Result<()> {
        let mut b = Vec::with_capacity(8 + path.len() + 72);
        if !self.0.begin(path, &mut b) {
            return Ok(());
        }
        for v in [stamp.dev, stamp.ino, stamp.size] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for v in [stamp.mtime_ns, stamp.ctime_ns] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(digest);
        self.0.put(path, &b)
    }

    /// Files written so far.
    pub fn count(&self) -> u64 {
        self.0.count()
    }

    /// Finish the file and put it in place.
    pub fn commit(self) -> Result<()> {
        self.0.commit(&[])
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
    fn round_trip_merge_join_and_refusals() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("digests.bin");
        let paths: [&[u8]; 4] = [b"a", b"a/b", b"a/b/c", b"a.d"];
        let mut w = Writer::create(&p, "tree-a").unwrap();
        for (i, path) in paths.iter().enumerate() {
            w.add(path, &stamp(i as u64), &[i as u8; 32]).unwrap();
        }
        w.commit().unwrap();
        let mut r = Reader::open(&p, "tree-a").unwrap();
        assert_eq!(r.lookup(b"a", &stamp(0)), Found::Same([0; 32]));
        assert_eq!(r.lookup(b"a/a", &stamp(9)), Found::Unknown);
        assert_eq!(r.lookup(b"a/b/c", &stamp(9)), Found::Changed);
        assert_eq!(r.lookup(b"a.d", &stamp(3)), Found::Same([3; 32]));
        assert_eq!(r.lookup(b"z", &stamp(3)), Found::Unknown);
        assert_eq!(r.held_peak, 1);
        assert!(Reader::open(&t.path().join("none"), "x").is_ok());
        let err = Reader::open(&p, "tree-b").err().unwrap();
        assert!(err.contains("another tree"), "{err}");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        let err = Reader::open(&p, "tree-a").err().unwrap();
        assert!(err.contains("checksum"), "{err}");
        let mut bad = b.clone();
        bad[b.len() / 2] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let err = Reader::open(&p, "tree-a").err().unwrap();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&p, &b[..20]).unwrap();
        let err = Reader::open(&p, "tree-a").err().unwrap();
        assert!(err.contains("truncated"), "{err}");
    }

    /// A version-1 cache (sha256 digests), complete and well formed, is
    /// refused whole: none of its digests is taken for a BLAKE3 one.
    #[test]
    fn a_sha256_cache_of_version_1_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("digests.bin");
        let old = Framing {
            version: 1,
            ..FRAMING
        };
        let mut w = RecordWriter::create(&p, &old, "tree-a").unwrap();
        let mut b = Vec::new();
        assert!(w.begin(b"a", &mut b));
        for v in [1u64, 0, 3, 5, 7] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&[9; 32]);
        w.put(b"a", &b).unwrap();
        w.commit(&[]).unwrap();
        let err = Reader::open(&p, "tree-a").err().unwrap();
        assert!(err.contains("SIDS.1") && err.contains("SIDS.2"), "{err}");
        assert!(crate::digest_table::other_version(&err), "{err}");
    }
}
