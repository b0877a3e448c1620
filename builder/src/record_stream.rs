//! The framing shared by standin's tree-ordered record files (the agent's
//! digest cache `digests.bin`, [`crate::digest_stream`], and its mirror
//! index `mirror-index.bin`): written streaming and read alongside a
//! sorted walk, so memory does not grow with the tree.
//!
//! ```text
//! MAGIC (4) | version u8 | 3 reserved | tree-id length u16 | tree id
//! | records in strictly increasing tree order ([`crate::entry::path_cmp`]):
//!   shared u32 (bytes of the previous path kept) | suffix length u32 | suffix
//!   | the file's own fields
//! | end: shared = 0xFFFF_FFFF | count u64 | the file's own trailer
//! | checksum of everything before (32): BLAKE3-256 (the files' version-2
//!   formats, `SIDS.2` and `SIMX.2`; version 1 had sha256)
//! ```
//!
//! Integers are big endian. [`verify`] checks the checksum of a whole
//! file in one streaming pass before any record of it is used.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use crate::hash::ContentHasher;
use anyhow::{Context, Result};

use crate::durable::DurableFile;
use crate::entry::path_cmp;

/// Bytes a [`RecordWriter`] hashes and writes at a time.
const PIECE: usize = 64 << 10;

/// The `shared` value that marks the end of the records.
const END: u32 = u32::MAX;
/// Longest path a record may hold.
const MAX_PATH: usize = 1 << 20;

/// Which file a stream is: its magic, version and name in messages.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub magic: &'static [u8; 4],
    pub version: u8,
    /// What it is, for messages ("digest cache", "mirror index").
    pub what: &'static str,
}

/// Writes a record file streaming to a temporary name, put in place by
/// [`RecordWriter::commit`] (fsync, rename, fsync of the directory).
pub struct RecordWriter {
    out: DurableFile,
    /// Bytes not yet hashed and written: records are ~100–200 bytes, and
    /// BLAKE3 fed that little at a time compresses block by block; fed
    /// [`PIECE`] bytes at once it hashes 16 chunks in parallel (the
    /// checksum of a 21 MB mirror index was ~5% of a difference mirror's
    /// agent CPU).
    pending: Vec<u8>,
    hasher: ContentHasher,
    prev: Vec<u8>,
    count: u64,
    what: &'static str,
}

impl RecordWriter {
    /// Start the file at `path` for the tree `tree`.
    pub fn create(path: &Path, f: &Framing, tree: &str) -> Result<RecordWriter> {
        let file = DurableFile::create(path)
            .with_context(|| format!("saving the {} {}", f.what, path.display()))?;
        let mut w = RecordWriter {
            out: file,
            pending: Vec::with_capacity(PIECE),
            hasher: ContentHasher::new(),
            prev: Vec::new(),
            count: 0,
            what: f.what,
        };
        let tree = &tree.as_bytes()[..tree.len().min(u16::MAX as usize)];
        let mut head = f.magic.to_vec();
        head.extend_from_slice(&[f.version, 0, 0, 0]);
        head.extend_from_slice(&(tree.len() as u16).to_be_bytes());
        head.extend_from_slice(tree);
        w.write(&head)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(b);
        if self.pending.len() >= PIECE {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// Hash and write what is pending.
    fn flush_pending(&mut self) -> Result<()> {
        self.hasher.update(&self.pending);
        let r = self
            .out
            .write_all(&self.pending)
            .with_context(|| format!("writing the {}", self.what));
        self.pending.clear();
        r
    }

    /// Begin the record of `path` in `b` (cleared first): its front-coded
    /// path; the caller appends its fields and calls [`RecordWriter::put`].
    /// `false` when `path` does not come after the last record in tree
    /// order (it is then left out).
    pub fn begin(&self, path: &[u8], b: &mut Vec<u8>) -> bool {
        b.clear();
        if self.count > 0 && path_cmp(&self.prev, path) != Ordering::Less {
            return false;
        }
        let shared = crate::entry::common_prefix(&self.prev, path);
        b.extend_from_slice(&(shared as u32).to_be_bytes());
        b.extend_from_slice(&((path.len() - shared) as u32).to_be_bytes());
        b.extend_from_slice(&path[shared..]);
        true
    }

    /// Write the record of `path` that [`RecordWriter::begin`] started in `b`.
    pub fn put(&mut self, path: &[u8], b: &[u8]) -> Result<()> {
        self.write(b)?;
        self.prev.clear();
        self.prev.extend_from_slice(path);
        self.count += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// End the records, add `trailer` and the checksum, and put the file
    /// in place.
    pub fn commit(self, trailer: &[u8]) -> Result<()> {
        self.finish(trailer)?.commit()
    }

    /// [`RecordWriter::commit`] without the fsyncs
    /// ([`DurableFile::commit_unsynced`]): only for a file whose reader
    /// [`verify`]s all of it before using any record.
    pub fn commit_unsynced(self, trailer: &[u8]) -> Result<()> {
        self.finish(trailer)?.commit_unsynced()
    }

    fn finish(mut self, trailer: &[u8]) -> Result<DurableFile> {
        let mut b = END.to_be_bytes().to_vec();
        b.extend_from_slice(&self.count.to_be_bytes());
        b.extend_from_slice(trailer);
        self.write(&b)?;
        self.flush_pending()?;
        let sum = self.hasher.finalize();
        self.out
            .write_all(&sum)
            .with_context(|| format!("writing the {}", self.what))?;
        Ok(self.out)
    }
}

/// Reads a record file (or a part of one) from `r`.
pub struct RecordReader<R: Read> {
    pub r: R,
    prev: Vec<u8>,
    /// Records read so far.
    pub count: u64,
}

impl<R: Read> RecordReader<R> {
    pub fn new(r: R) -> RecordReader<R> {
        RecordReader {
            r,
            prev: Vec::new(),
            count: 0,
        }
    }

    pub fn read_into(&mut self, b: &mut [u8]) -> Result<(), String> {
        self.r.read_exact(b).map_err(|_| "truncated".to_string())
    }

    pub fn read(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; n];
        self.read_into(&mut b)?;
        Ok(b)
    }

    pub fn u16(&mut self) -> Result<u16, String> {
        let mut b = [0u8; 2];
        self.read_into(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.read_into(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.read_into(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    /// The header: magic, version and tree must be `f`'s and `tree`.
    pub fn header(&mut self, f: &Framing, tree: &str) -> Result<(), String> {
        let head = self.read(10)?;
        if &head[..4] != f.magic {
            return Err(format!("not a standin {} (bad magic)", f.what));
        }
        if head[4] != f.version {
            let m = String::from_utf8_lossy(f.magic);
            return Err(format!(
                "format {m}.{} (this standin reads {m}.{})",
                head[4], f.version
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

    /// The next record's path (its fields follow; then call
    /// [`RecordReader::done`]), or `None` at the end marker, whose count is
    /// checked. Paths out of tree order are refused.
    pub fn next_path(&mut self) -> Result<Option<Vec<u8>>, String> {
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
        let shared = shared as usize;
        let mut path = Vec::with_capacity(shared + len);
        path.extend_from_slice(&self.prev[..shared]);
        path.resize(shared + len, 0);
        self.read_into(&mut path[shared..])?;
        if self.count > 0 && path_cmp(&self.prev, &path) != Ordering::Less {
            return Err("records out of tree order".into());
        }
        Ok(Some(path))
    }

    /// The record of `path` (from [`RecordReader::next_path`]) is read.
    pub fn done(&mut self, path: &[u8]) {
        self.prev.clear();
        self.prev.extend_from_slice(path);
        self.count += 1;
    }
}

/// Check the file at `path` as a whole before it is used: at least
/// `min_len` bytes, and the checksum (BLAKE3-256) at its end over everything before
/// (on a mismatch, a header of another kind, version or tree is named
/// instead). `Ok(None)` when there is no file; else the last `keep` bytes
/// before the checksum (a trailer to read from the end).
pub fn verify(
    path: &Path,
    f: &Framing,
    tree: &str,
    min_len: u64,
    keep: usize,
) -> Result<Option<Vec<u8>>, String> {
    let file = match File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
        Ok(file) => file,
    };
    let err = |e: std::io::Error| format!("reading {}: {e}", path.display());
    let len = file.metadata().map_err(err)?.len();
    if len < min_len {
        return Err(format!("truncated ({len} bytes)"));
    }
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut h = ContentHasher::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 16];
    let mut tail: Vec<u8> = Vec::new();
    while left > 0 {
        let n = (left as usize).min(buf.len());
        r.read_exact(&mut buf[..n]).map_err(err)?;
        h.update(&buf[..n]);
        if keep > 0 {
            tail.extend_from_slice(&buf[..n]);
            let drop = tail.len().saturating_sub(keep);
            tail.drain(..drop);
        }
        left -= n as u64;
    }
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).map_err(err)?;
    if h.finalize() != sum {
        let mut head = RecordReader::new(File::open(path).map_err(err)?);
        head.header(f, tree)?;
        return Err("checksum mismatch (truncated or corrupt)".into());
    }
    Ok(Some(tail))
}
