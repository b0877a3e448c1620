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
//! "SIDS" | version u8 = 1 | 3 reserved | tree-id length u16 | tree id
//! | records in strictly increasing tree order ([`crate::entry::path_cmp`]):
//!   shared u32 (bytes of the previous path kept) | suffix length u32 | suffix
//!   | dev u64 | ino u64 | size u64 | mtime_ns i64 | ctime_ns i64 | sha256 (32)
//! | end: shared = 0xFFFF_FFFF | count u64 | sha256 of everything before (32)
//! ```
//!
//! Integers are big endian. The whole file is checked (checksum, order,
//! count) in one streaming pass before any digest of it is used; a file
//! that is truncated, corrupt, of another version or of another tree is
//! refused as a whole ([`Reader::open`] says why) and the caller hashes.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::digest_table::Stamp;
use crate::entry::path_cmp;

const MAGIC: &[u8; 4] = b"SIDS";
const VERSION: u8 = 1;
const END: u32 = u32::MAX;
const MAX_PATH: usize = 1 << 20;

/// One remembered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u8>,
    pub stamp: Stamp,
    pub sha256: [u8; 32],
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
struct Records<R: Read> {
    r: R,
    prev: Vec<u8>,
    hasher: Option<Sha256>,
    count: u64,
}

impl<R: Read> Records<R> {
    fn read(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; n];
        self.r
            .read_exact(&mut b)
            .map_err(|_| "truncated".to_string())?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&b);
        }
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.read(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.read(8)?.try_into().expect("8")))
    }

    /// The header; checks magic, version and tree.
    fn header(&mut self, tree: &str) -> Result<(), String> {
        let head = self.read(10)?;
        if &head[..4] != MAGIC {
            return Err("not a standin digest table (bad magic)".into());
        }
        if head[4] != VERSION {
            return Err(format!(
                "format {}.{} (this standin reads SIDS.{VERSION})",
                String::from_utf8_lossy(&head[..4]),
                head[4]
            ));
        }
        let tl = u16::from_be_bytes([head[8], head[9]]) as usize;
        let tid = self.read(tl)?;
        if tid != tree.as_bytes() {
            return Err(format!(
                "written for another tree ({:?}, this is {tree:?})",
                String::from_utf8_lossy(&tid)
            ));
        }
        Ok(())
    }

    /// The next record, `None` at the end marker (the count is checked).
    fn next(&mut self) -> Result<Option<Record>, String> {
        let shared = self.u32()?;
        if shared == END {
            let count = self.u64()?;
            if count != self.count {
                return Err(format!("count {count} but {} records", self.count));
            }
            return Ok(None);
        }
        let len = self.u32()? as usize;
        if shared as usize > self.prev.len() || shared as usize + len > MAX_PATH {
            return Err("bad path length".into());
        }
        let suffix = self.read(len)?;
        let mut path = self.prev[..shared as usize].to_vec();
        path.extend_from_slice(&suffix);
        if self.count > 0 && path_cmp(&self.prev, &path) != Ordering::Less {
            return Err("records out of tree order".into());
        }
        let stamp = Stamp {
            dev: self.u64()?,
            ino: self.u64()?,
            size: self.u64()?,
            mtime_ns: self.u64()? as i64,
            ctime_ns: self.u64()? as i64,
        };
        let sha256 = self.read(32)?.try_into().expect("32");
        self.prev.clone_from(&path);
        self.count += 1;
        Ok(Some(Record {
            path,
            stamp,
            sha256,
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
        let f = match File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reader::empty()),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
            Ok(f) => f,
        };
        let len = f
            .metadata()
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len();
        if len < 10 + 4 + 8 + 32 {
            return Err(format!("truncated ({len} bytes)"));
        }
        // Pass 1: the checksum over everything before the last 32 bytes.
        let mut r = BufReader::with_capacity(1 << 16, f);
        let mut h = Sha256::new();
        let mut left = len - 32;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            r.read_exact(&mut buf[..n])
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let mut sum = [0u8; 32];
        r.read_exact(&mut sum)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if h.finalize().as_slice() != sum {
            // Say "bad magic"/"another tree" when that is what it is.
            let mut head = Records {
                r: File::open(path).map_err(|e| e.to_string())?,
                prev: Vec::new(),
                hasher: None,
                count: 0,
            };
            head.header(tree)?;
            return Err("checksum mismatch (truncated or corrupt)".into());
        }
        // Pass 2: header, order and count.
        let open = || -> Result<Records<BufReader<File>>, String> {
            let mut rec = Records {
                r: BufReader::with_capacity(1 << 16, File::open(path).map_err(|e| e.to_string())?),
                prev: Vec::new(),
                hasher: None,
                count: 0,
            };
            rec.header(tree)?;
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
                Ordering::Equal if cur.stamp == *now => return Found::Same(cur.sha256),
                Ordering::Equal => return Found::Changed,
                Ordering::Greater => return Found::Unknown,
            }
        }
    }
}

/// Writes a cache file streaming, in tree order, then puts it in place
/// durably (temp file, fsync, rename, fsync dir).
pub struct Writer {
    out: BufWriter<crate::durable::DurableFile>,
    hasher: Sha256,
    prev: Vec<u8>,
    count: u64,
}

impl Writer {
    /// Start a cache file at `path` for `tree`.
    pub fn create(path: &Path, tree: &str) -> Result<Writer> {
        let f = crate::durable::DurableFile::create(path)
            .with_context(|| format!("saving the digest cache {}", path.display()))?;
        let mut w = Writer {
            out: BufWriter::with_capacity(1 << 16, f),
            hasher: Sha256::new(),
            prev: Vec::new(),
            count: 0,
        };
        let tree = &tree.as_bytes()[..tree.len().min(u16::MAX as usize)];
        w.put(MAGIC)?;
        w.put(&[VERSION, 0, 0, 0])?;
        w.put(&(tree.len() as u16).to_be_bytes())?;
        w.put(tree)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.hasher.update(b);
        self.out.write_all(b).context("writing the digest cache")
    }

    /// Add the next file; paths must come in strictly increasing tree order
    /// (others are left out).
    pub fn add(&mut self, path: &[u8], stamp: &Stamp, sha256: &[u8; 32]) -> Result<()> {
        if self.count > 0 && path_cmp(&self.prev, path) != Ordering::Less {
            return Ok(());
        }
        let shared = self
            .prev
            .iter()
            .zip(path)
            .take_while(|(a, b)| a == b)
            .count();
        let mut b = Vec::with_capacity(8 + path.len() - shared + 72);
        b.extend_from_slice(&(shared as u32).to_be_bytes());
        b.extend_from_slice(&((path.len() - shared) as u32).to_be_bytes());
        b.extend_from_slice(&path[shared..]);
        for v in [stamp.dev, stamp.ino, stamp.size] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for v in [stamp.mtime_ns, stamp.ctime_ns] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(sha256);
        self.put(&b)?;
        self.prev.clear();
        self.prev.extend_from_slice(path);
        self.count += 1;
        Ok(())
    }

    /// Files written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Finish the file and put it in place.
    pub fn commit(mut self) -> Result<()> {
        self.put(&END.to_be_bytes())?;
        let count = self.count;
        self.put(&count.to_be_bytes())?;
        let sum = self.hasher.finalize_reset();
        self.out.write_all(&sum)?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| anyhow::anyhow!("writing the digest cache: {}", e.error()))?;
        f.commit()
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
}
