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
//! "SIMX" | version u8 = 2 | 3 reserved | tree-id length u16 | tree id
//! | records in strictly increasing tree order:
//!   shared u32 | suffix length u32 | suffix
//!   | dev u64 | ino u64 | size u64 | mtime_ns i64 | ctime_ns i64 | flags u8
//!     (1: not a directory with more than one link, 2: directory)
//!   | file_bytes u64 | canonical length u32 | canonical (RootDigest::canonical)
//! | end: shared = 0xFFFF_FFFF | count u64
//! | base: mirror id, root digest, target (each u16 length + bytes) | last_seq u64
//! | base length u32 | BLAKE3-256 of everything before (32; version 1: sha256)
//! ```
//! The canonical bytes' content digest (a regular file's) is the link's
//! content digest, BLAKE3-256, since version 2; a version-1 index (sha256)
//! is refused whole like any other version (the mirror then compares the
//! whole tree), so no sha256 is taken for a BLAKE3 digest.
//! Beside it, `mirror-index.big` lists its big files ([`big`]), which a
//! difference mirror hashes ahead of its walk when they changed.
//!
//! Integers big endian. [`Reader::open`] checks the checksum of all of it,
//! the tree and the target (the base is read from the end) before any
//! record is used; order and count are checked as the records are read (a
//! record out of order ends the index early: the entries after it are
//! then listed as new, which costs time and never hides a change).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::Result;
use standin_builder::entry::{Entry, Kind};
use standin_builder::record_stream::{Framing, RecordReader, RecordWriter};
use standin_builder::scan::Inode;

const FRAMING: Framing = Framing {
    magic: b"SIMX",
    // 2: BLAKE3 content digests in the canonical bytes (1: sha256).
    version: 2,
    what: "mirror index",
};
const MAX_CANON: usize = 16 << 20;
const F_MULTI: u8 = 1;
const F_DIR: u8 = 2;

pub mod big;

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
    /// The full content digest (BLAKE3-256, not a sha256 despite the
    /// name) inside the canonical bytes, when it holds one.
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
    w: RecordWriter,
    buf: Vec<u8>,
    path: PathBuf,
    tree: String,
    /// Its big files, for the list beside it ([`big`]).
    big: big::Collect,
}

impl Writer {
    /// Start an index at `path` for `tree`.
    pub fn create(path: &Path, tree: &str) -> Result<Writer> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        Ok(Writer {
            w: RecordWriter::create(path, &FRAMING, tree)?,
            buf: Vec::with_capacity(512),
            path: path.to_path_buf(),
            tree: tree.to_string(),
            big: big::Collect::default(),
        })
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
        let mut b = std::mem::take(&mut self.buf);
        if !self.w.begin(path, &mut b) {
            self.buf = b;
            return Ok(());
        }
        put_stamp(&mut b, stamp);
        let flags = if stamp.multi { F_MULTI } else { 0 } | if stamp.dir { F_DIR } else { 0 };
        b.push(flags);
        b.extend_from_slice(&file_bytes.to_be_bytes());
        b.extend_from_slice(&(canonical.len() as u32).to_be_bytes());
        b.extend_from_slice(canonical);
        let r = self.w.put(path, &b);
        self.buf = b;
        if r.is_ok() {
            self.big.add(path, stamp, file_bytes);
        }
        r
    }

    /// [`Writer::add`] of a scanned entry (full content digest) with its inode.
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
        self.w.count()
    }

    /// Finish with the base it describes and put it in place, with the
    /// list of its big files beside it ([`big`]; a list that cannot be
    /// written is removed: it is only a hint).
    pub fn commit(self, base: &Base) -> Result<()> {
        let Writer {
            w, path, tree, big, ..
        } = self;
        let mut b = Vec::new();
        put_strings(&mut b, [&base.mirror_id, &base.root_digest, &base.target]);
        b.extend_from_slice(&base.last_seq.to_be_bytes());
        let base_len = b.len() as u32;
        b.extend_from_slice(&base_len.to_be_bytes());
        // Not synced: `Reader::open` verifies the whole index before any
        // of it is used, and an index lost to a crash, or an older one,
        // only makes the next mirror compare the whole tree (the target
        // accepts no base but its last proven mirror).
        w.commit_unsynced(&b)?;
        if let Err(e) = big.commit(&path, &tree, base) {
            tracing::debug!("{e:#}; no list of big files beside the mirror index");
            let _ = std::fs::remove_file(path.with_file_name(big::FILE));
        }
        Ok(())
    }
}

/// A stamp's fields in a record: dev, ino, size, mtime_ns, ctime_ns
/// (its flags are the record's own).
fn put_stamp(b: &mut Vec<u8>, s: &EntryStamp) {
    for v in [s.dev, s.ino, s.size] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    for v in [s.mtime_ns, s.ctime_ns] {
        b.extend_from_slice(&v.to_be_bytes());
    }
}

/// What [`put_stamp`] wrote (no flags set).
fn read_stamp<R: Read>(r: &mut RecordReader<R>) -> Result<EntryStamp, String> {
    let (dev, ino, size) = (r.u64()?, r.u64()?, r.u64()?);
    let (mtime_ns, ctime_ns) = (r.u64()? as i64, r.u64()? as i64);
    Ok(EntryStamp {
        dev,
        ino,
        size,
        mtime_ns,
        ctime_ns,
        multi: false,
        dir: false,
    })
}

/// Strings of a trailer, each as a u16 length and at most that many bytes.
fn put_strings<'a>(b: &mut Vec<u8>, strings: impl IntoIterator<Item = &'a String>) {
    for s in strings {
        let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        b.extend_from_slice(&(s.len() as u16).to_be_bytes());
        b.extend_from_slice(s);
    }
}

/// Parses records from a stream.
struct Records<R: Read>(RecordReader<R>);

impl<R: Read> Records<R> {
    fn string(&mut self) -> Result<String, String> {
        let n = self.0.u16()? as usize;
        String::from_utf8(self.0.read(n)?).map_err(|_| "bad text in the trailer".to_string())
    }

    /// The next record, `None` at the end marker (count checked).
    fn next(&mut self) -> Result<Option<Record>, String> {
        let r = &mut self.0;
        let Some(path) = r.next_path()? else {
            return Ok(None);
        };
        let stamp = read_stamp(r)?;
        let mut flags = [0u8];
        r.read_into(&mut flags)?;
        let file_bytes = r.u64()?;
        let cl = r.u32()? as usize;
        if cl > MAX_CANON {
            return Err("bad record length".into());
        }
        let canonical = r.read(cl)?;
        r.done(&path);
        Ok(Some(Record {
            path,
            stamp: EntryStamp {
                multi: flags[0] & F_MULTI != 0,
                dir: flags[0] & F_DIR != 0,
                ..stamp
            },
            file_bytes,
            canonical,
        }))
    }

    fn base(&mut self) -> Result<Base, String> {
        let mirror_id = self.string()?;
        let root_digest = self.string()?;
        let target = self.string()?;
        let last_seq = self.0.u64()?;
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
    /// Its big files, from the list beside it (empty when there is no
    /// usable one).
    pub big: Vec<big::BigFile>,
}

impl Reader {
    /// Open the index at `path`, written for `tree` and the target
    /// `target`, after checking all of it in one pass. `Ok(None)` when
    /// there is none; `Err(why)` when it cannot be used.
    pub fn open(path: &Path, tree: &str, target: &str) -> Result<Option<Reader>, String> {
        // The checksum of all of it; the base is among the last bytes.
        let keep = 3 * (u16::MAX as usize) + 64;
        let min = 10 + 4 + 8 + 14 + 4 + 32;
        let Some(tail) = standin_builder::record_stream::verify(path, &FRAMING, tree, min, keep)?
        else {
            return Ok(None);
        };
        let base_len = u32::from_be_bytes(tail[tail.len() - 4..].try_into().expect("4")) as usize;
        if base_len + 4 > tail.len() {
            return Err("bad base length".into());
        }
        let mut rb = Records(RecordReader::new(
            &tail[tail.len() - 4 - base_len..tail.len() - 4],
        ));
        let base = rb.base()?;
        if base.target != target {
            return Err(format!(
                "written for another target ({}, this is {target})",
                base.target
            ));
        }
        let f = File::open(path).map_err(|_| "the index vanished".to_string())?;
        let mut records = Records(RecordReader::new(BufReader::with_capacity(1 << 16, f)));
        records.0.header(&FRAMING, tree)?;
        let current = records.next()?;
        let big = big::read(path, tree, &base).unwrap_or_else(|why| {
            tracing::debug!("no list of the index's big files: {why}");
            Vec::new()
        });
        Ok(Some(Reader {
            held_peak: usize::from(current.is_some()),
            records,
            current,
            base,
            big,
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

    /// A version-1 index (sha256 digests in its canonical bytes), complete
    /// and well formed, is refused: the mirror then compares the whole
    /// tree instead of trusting an old sha256 as a BLAKE3 digest.
    #[test]
    fn a_sha256_index_of_version_1_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(FILE);
        let old = Framing {
            version: 1,
            ..FRAMING
        };
        let mut w = Writer {
            w: RecordWriter::create(&p, &old, "tree").unwrap(),
            buf: Vec::new(),
            path: p.clone(),
            tree: "tree".into(),
            big: Default::default(),
        };
        w.add_record(&rec("", 0)).unwrap();
        w.commit(&base()).unwrap();
        let err = Reader::open(&p, "tree", "fpr").err().unwrap();
        assert!(err.contains("SIMX.1") && err.contains("SIMX.2"), "{err}");
    }
}
