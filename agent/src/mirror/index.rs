//! The agent's mirror index (`mirror-index.bin` beside the digest cache):
//! every entry the last completed mirror's scan saw, with its stamp and its
//! root-digest bytes, so the next mirror can list only what changed since
//! (a *sparse* mirror, see [`super::lean`]).
//!
//! Written streaming in tree order by every mirror scan, put in place only
//! when the target said the mirror is complete (the trailer names that
//! mirror: the *base*); read alongside the lean walk (one record held).
//!
//! ```text
//! "SIMX" | version u8 = 1 | 3 reserved | tree-id length u16 | tree id
//! | records in strictly increasing tree order:
//!   shared u32 | suffix length u32 | suffix
//!   | dev u64 | ino u64 | size u64 | mtime_ns i64 | ctime_ns i64 | flags u8
//!     (1: not a directory with more than one link, 2: directory)
//!   | file_bytes u64 | canonical length u32 | canonical (RootDigest::canonical)
//! | end: shared = 0xFFFF_FFFF | count u64
//! | base: mirror id, root digest, target (each u16 length + bytes) | last_seq u64
//! | base length u32 | sha256 of everything before (32)
//! ```
//! Integers big endian. [`Reader::open`] checks the checksum of all of it,
//! the tree and the target (the base is read from the end) before any
//! record is used; order and count are checked as the records are read (a
//! record out of order ends the index early: the entries after it are
//! then listed as new, which costs time and never hides a change).

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use standin_builder::durable::DurableFile;
use standin_builder::entry::{path_cmp, Entry, Kind};
use standin_builder::scan::Inode;

const MAGIC: &[u8; 4] = b"SIMX";
const VERSION: u8 = 1;
const END: u32 = u32::MAX;
const MAX_PATH: usize = 1 << 20;
const MAX_CANON: usize = 16 << 20;
const F_MULTI: u8 = 1;
const F_DIR: u8 = 2;

/// The index's file name in the agent's state directory.
pub const FILE: &str = "mirror-index.bin";

/// The index beside the digest cache `digests` (same state directory).
pub fn path_beside(digests: &Path) -> PathBuf {
    digests.with_file_name(FILE)
}

/// What the lean walk compares: an entry is unchanged while all of it is
/// (any write, chmod, chown, xattr, link or rename moves the change time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryStamp {
    pub dev: u64,
    pub ino: u64,
    /// Size of a regular file, else 0.
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Not a directory, more than one link: always read again (its
    /// hard-link group may have changed elsewhere).
    pub multi: bool,
    pub dir: bool,
}

impl EntryStamp {
    /// The stamp of a scanned entry `e` with its inode.
    pub fn of_scanned(e: &Entry, inode: &Inode) -> EntryStamp {
        let dir = e.kind == Kind::Dir;
        EntryStamp {
            dev: inode.dev,
            ino: inode.ino,
            size: if e.kind == Kind::File { e.size } else { 0 },
            mtime_ns: e.mtime_ns,
            ctime_ns: inode.ctime_ns,
            multi: !dir && inode.nlink > 1,
            dir,
        }
    }

    /// The stamp from an `lstat`.
    pub fn of_metadata(md: &std::fs::Metadata) -> EntryStamp {
        use std::os::unix::fs::MetadataExt;
        let dir = md.is_dir();
        EntryStamp {
            dev: md.dev(),
            ino: md.ino(),
            size: if md.is_file() { md.len() } else { 0 },
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            multi: !dir && md.nlink() > 1,
            dir,
        }
    }

    /// The stamp from a `statx` (basic stats).
    pub fn of_statx(st: &rustix::fs::Statx) -> EntryStamp {
        let mode = rustix::fs::FileType::from_raw_mode(st.stx_mode as _);
        let dir = mode == rustix::fs::FileType::Directory;
        let ns = |t: &rustix::fs::StatxTimestamp| t.tv_sec * 1_000_000_000 + t.tv_nsec as i64;
        EntryStamp {
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: if mode == rustix::fs::FileType::RegularFile {
                st.stx_size
            } else {
                0
            },
            mtime_ns: ns(&st.stx_mtime),
            ctime_ns: ns(&st.stx_ctime),
            multi: !dir && st.stx_nlink > 1,
            dir,
        }
    }
}

/// One remembered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u8>,
    pub stamp: EntryStamp,
    /// Its size when a regular file that is not a hard link to an earlier path.
    pub file_bytes: u64,
    /// Its root-digest bytes ([`standin_builder::manifest::RootDigest::canonical`]).
    pub canonical: Vec<u8>,
}

impl Record {
    /// The full sha256 inside the canonical bytes, when it holds one.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        let c = &self.canonical;
        if c.len() < 33 || c[c.len() - 33] != 1 {
            return None;
        }
        c[c.len() - 32..].try_into().ok()
    }
}

/// The mirror an index describes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Base {
    pub mirror_id: String,
    pub root_digest: String,
    pub last_seq: u64,
    /// The target's identity (the pinned fingerprints).
    pub target: String,
}

/// Writes an index streaming (temp file until [`Writer::commit`]).
pub struct Writer {
    out: BufWriter<DurableFile>,
    hasher: Sha256,
    prev: Vec<u8>,
    count: u64,
    buf: Vec<u8>,
}

impl Writer {
    /// Start an index at `path` for `tree`.
    pub fn create(path: &Path, tree: &str) -> Result<Writer> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = DurableFile::create(path)
            .with_context(|| format!("saving the mirror index {}", path.display()))?;
        let mut w = Writer {
            out: BufWriter::with_capacity(1 << 16, f),
            hasher: Sha256::new(),
            prev: Vec::new(),
            count: 0,
            buf: Vec::with_capacity(512),
        };
        let tree = &tree.as_bytes()[..tree.len().min(u16::MAX as usize)];
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&[VERSION, 0, 0, 0]);
        head.extend_from_slice(&(tree.len() as u16).to_be_bytes());
        head.extend_from_slice(tree);
        w.put_buf(&head)?;
        Ok(w)
    }

    fn put_buf(&mut self, b: &[u8]) -> Result<()> {
        self.hasher.update(b);
        self.out.write_all(b).context("writing the mirror index")
    }

    /// Add the next entry; paths must come in strictly increasing tree
    /// order (others are left out: the lean walk then reads them).
    pub fn add(
        &mut self,
        path: &[u8],
        stamp: &EntryStamp,
        file_bytes: u64,
        canonical: &[u8],
    ) -> Result<()> {
        if self.count > 0 && path_cmp(&self.prev, path) != Ordering::Less {
            return Ok(());
        }
        let shared = self
            .prev
            .iter()
            .zip(path)
            .take_while(|(a, b)| a == b)
            .count();
        let mut b = std::mem::take(&mut self.buf);
        b.clear();
        b.extend_from_slice(&(shared as u32).to_be_bytes());
        b.extend_from_slice(&((path.len() - shared) as u32).to_be_bytes());
        b.extend_from_slice(&path[shared..]);
        for v in [stamp.dev, stamp.ino, stamp.size] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for v in [stamp.mtime_ns, stamp.ctime_ns] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let flags = if stamp.multi { F_MULTI } else { 0 } | if stamp.dir { F_DIR } else { 0 };
        b.push(flags);
        b.extend_from_slice(&file_bytes.to_be_bytes());
        b.extend_from_slice(&(canonical.len() as u32).to_be_bytes());
        b.extend_from_slice(canonical);
        let r = self.put_buf(&b);
        self.buf = b;
        r?;
        self.prev.clear();
        self.prev.extend_from_slice(path);
        self.count += 1;
        Ok(())
    }

    /// [`Writer::add`] of a scanned entry (full sha256) with its inode.
    pub fn add_scanned(&mut self, e: &Entry, inode: &Inode) -> Result<()> {
        let file_bytes = if e.kind == Kind::File && e.link.is_none() {
            e.size
        } else {
            0
        };
        let canon = standin_builder::manifest::RootDigest::canonical(e);
        self.add(
            &e.path,
            &EntryStamp::of_scanned(e, inode),
            file_bytes,
            &canon,
        )
    }

    /// [`Writer::add`] of a remembered record.
    pub fn add_record(&mut self, r: &Record) -> Result<()> {
        self.add(&r.path, &r.stamp, r.file_bytes, &r.canonical)
    }

    /// Entries written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Finish with the base it describes and put it in place.
    pub fn commit(mut self, base: &Base) -> Result<()> {
        let mut b = END.to_be_bytes().to_vec();
        b.extend_from_slice(&self.count.to_be_bytes());
        let start = b.len();
        for s in [&base.mirror_id, &base.root_digest, &base.target] {
            let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s);
        }
        b.extend_from_slice(&base.last_seq.to_be_bytes());
        let base_len = (b.len() - start) as u32;
        b.extend_from_slice(&base_len.to_be_bytes());
        self.put_buf(&b)?;
        let sum = self.hasher.finalize_reset();
        self.out.write_all(&sum)?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| anyhow::anyhow!("writing the mirror index: {}", e.error()))?;
        f.commit()
    }
}

/// Parses records from a stream.
struct Records<R: Read> {
    r: R,
    prev: Vec<u8>,
    hasher: Option<Sha256>,
    count: u64,
}

impl<R: Read> Records<R> {
    fn read_into(&mut self, b: &mut [u8]) -> Result<(), String> {
        self.r.read_exact(b).map_err(|_| "truncated".to_string())?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&*b);
        }
        Ok(())
    }

    fn read(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; n];
        self.read_into(&mut b)?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let mut b = [0u8; 2];
        self.read_into(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.read_into(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.read_into(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.read(n)?).map_err(|_| "bad text in the trailer".to_string())
    }

    fn header(&mut self, tree: &str) -> Result<(), String> {
        let head = self.read(10)?;
        if &head[..4] != MAGIC {
            return Err("not a standin mirror index (bad magic)".into());
        }
        if head[4] != VERSION {
            return Err(format!(
                "format version {} (this standin reads {VERSION})",
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

    /// The next record, `None` at the end marker (count checked).
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
        let mut path = self.prev[..shared as usize].to_vec();
        path.extend_from_slice(&self.read(len)?);
        if self.count > 0 && path_cmp(&self.prev, &path) != Ordering::Less {
            return Err("records out of tree order".into());
        }
        let (dev, ino, size) = (self.u64()?, self.u64()?, self.u64()?);
        let (mtime_ns, ctime_ns) = (self.u64()? as i64, self.u64()? as i64);
        let mut flags = [0u8];
        self.read_into(&mut flags)?;
        let file_bytes = self.u64()?;
        let cl = self.u32()? as usize;
        if cl > MAX_CANON {
            return Err("bad record length".into());
        }
        let canonical = self.read(cl)?;
        self.prev.clone_from(&path);
        self.count += 1;
        Ok(Some(Record {
            path,
            stamp: EntryStamp {
                dev,
                ino,
                size,
                mtime_ns,
                ctime_ns,
                multi: flags[0] & F_MULTI != 0,
                dir: flags[0] & F_DIR != 0,
            },
            file_bytes,
            canonical,
        }))
    }

    fn base(&mut self) -> Result<Base, String> {
        let mirror_id = self.string()?;
        let root_digest = self.string()?;
        let target = self.string()?;
        let last_seq = self.u64()?;
        Ok(Base {
            mirror_id,
            root_digest,
            last_seq,
            target,
        })
    }
}

/// Reads an index alongside a walk in tree order.
pub struct Reader {
    records: Records<BufReader<File>>,
    current: Option<Record>,
    /// The mirror the index describes.
    pub base: Base,
    /// Most records held at once (one).
    pub held_peak: usize,
}

impl Reader {
    /// Open the index at `path`, written for `tree` and the target
    /// `target`, after checking all of it in one pass. `Ok(None)` when
    /// there is none; `Err(why)` when it cannot be used.
    pub fn open(path: &Path, tree: &str, target: &str) -> Result<Option<Reader>, String> {
        let open = || -> Result<Option<Records<BufReader<File>>>, String> {
            let f = match File::open(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("reading {}: {e}", path.display())),
                Ok(f) => f,
            };
            Ok(Some(Records {
                r: BufReader::with_capacity(1 << 16, f),
                prev: Vec::new(),
                hasher: None,
                count: 0,
            }))
        };
        let Some(mut check) = open()? else {
            return Ok(None);
        };
        // The checksum of everything before the last 32 bytes.
        let len = check
            .r
            .get_ref()
            .metadata()
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len();
        if len < 10 + 4 + 8 + 14 + 4 + 32 {
            return Err(format!("truncated ({len} bytes)"));
        }
        let mut h = Sha256::new();
        let mut left = len - 32;
        let mut buf = vec![0u8; 1 << 16];
        let mut tail: Vec<u8> = Vec::new();
        while left > 0 {
            let n = (left as usize).min(buf.len());
            check
                .r
                .read_exact(&mut buf[..n])
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            h.update(&buf[..n]);
            // Keep the last bytes read: the base is among them.
            tail.extend_from_slice(&buf[..n]);
            let keep = tail.len().saturating_sub(3 * (u16::MAX as usize) + 64);
            tail.drain(..keep);
            left -= n as u64;
        }
        let mut sum = [0u8; 32];
        check.read_into(&mut sum)?;
        if h.finalize().as_slice() != sum {
            // Say "bad magic" or "another tree" when that is what it is.
            if let Some(mut head) = open()? {
                head.header(tree)?;
            }
            return Err("checksum mismatch (truncated or corrupt)".into());
        }
        let base_len = u32::from_be_bytes(tail[tail.len() - 4..].try_into().expect("4")) as usize;
        if base_len + 4 > tail.len() {
            return Err("bad base length".into());
        }
        let mut rb = Records {
            r: &tail[tail.len() - 4 - base_len..tail.len() - 4],
            prev: Vec::new(),
            hasher: None,
            count: 0,
        };
        let base = rb.base()?;
        if base.target != target {
            return Err(format!(
                "written for another target ({}, this is {target})",
                base.target
            ));
        }
        let mut records = open()?.ok_or("the index vanished")?;
        records.header(tree)?;
        let current = records.next()?;
        Ok(Some(Reader {
            held_peak: usize::from(current.is_some()),
            records,
            current,
            base,
        }))
    }

    /// The next record not yet taken.
    pub fn peek(&self) -> Option<&Record> {
        self.current.as_ref()
    }

    /// Take the next record.
    pub fn take(&mut self) -> Option<Record> {
        let cur = self.current.take()?;
        // Checked at open; a file changed since reads as ended.
        self.current = self.records.next().ok().flatten();
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, ino: u64) -> Record {
        Record {
            path: path.as_bytes().to_vec(),
            stamp: EntryStamp {
                dev: 1,
                ino,
                size: 3,
                mtime_ns: 5,
                ctime_ns: -7,
                multi: ino == 2,
                dir: ino == 0,
            },
            file_bytes: ino * 10,
            canonical: vec![ino as u8; 40 + ino as usize],
        }
    }

    fn base() -> Base {
        Base {
            mirror_id: "m-1".into(),
            root_digest: "ab".repeat(32),
            last_seq: 42,
            target: "fpr".into(),
        }
    }

    #[test]
    fn round_trip_with_one_record_held_and_refusals() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(FILE);
        assert!(Reader::open(&p, "tree", "fpr").unwrap().is_none());
        let recs: Vec<Record> = ["", "a", "a/b", "a/b/c", "a.d"]
            .iter()
            .enumerate()
            .map(|(i, p)| rec(p, i as u64))
            .collect();
        let mut w = Writer::create(&p, "tree").unwrap();
        for r in &recs {
            w.add_record(r).unwrap();
        }
        // Out of order: left out.
        w.add_record(&rec("a", 9)).unwrap();
        assert_eq!(w.count(), 5);
        w.commit(&base()).unwrap();
        let mut r = Reader::open(&p, "tree", "fpr").unwrap().unwrap();
        assert_eq!(r.base, base());
        let mut back = Vec::new();
        while let Some(x) = r.take() {
            back.push(x);
        }
        assert_eq!(back, recs);
        assert_eq!(r.held_peak, 1, "one record held");
        // Foreign tree or target, corruption, truncation: refused with why.
        let err = Reader::open(&p, "other", "fpr").err().unwrap();
        assert!(err.contains("another tree"), "{err}");
        let err = Reader::open(&p, "tree", "other").err().unwrap();
        assert!(err.contains("another target"), "{err}");
        let good = std::fs::read(&p).unwrap();
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(Reader::open(&p, "tree", "fpr").is_err());
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        let err = Reader::open(&p, "tree", "fpr").err().unwrap();
        assert!(err.contains("truncated"), "{err}");
        // An uncommitted index leaves nothing behind.
        let q = t.path().join("other.bin");
        let mut w = Writer::create(&q, "tree").unwrap();
        w.add_record(&recs[0]).unwrap();
        drop(w);
        assert!(Reader::open(&q, "tree", "fpr").unwrap().is_none());
    }

    #[test]
    fn sha256_is_read_from_the_canonical_bytes() {
        let mut r = rec("f", 0);
        assert_eq!(r.sha256(), None);
        r.canonical = vec![0u8; 10];
        r.canonical.push(1);
        r.canonical.extend_from_slice(&[7u8; 32]);
        assert_eq!(r.sha256(), Some([7u8; 32]));
    }
}
