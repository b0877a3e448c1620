//! Change sets: an ordered, numbered list of records that turn a replica of
//! sequence `seq - 1` into the replica of sequence `seq`.
//!
//! Binary layout (all integers big endian):
//!
//! ```text
//! magic "SICS" | version u8 = 4 | reserved u8 u8 u8 | seq u64 | created_unix_ms i64
//! | record count u32 | records... | checksum (32 bytes)
//! ```
//!
//! Version 4 (the only one this build writes and reads): every content
//! digest (`File`, `WriteExtent`, `Truncate`, an entry's optional digest)
//! is the link's content digest, BLAKE3-256
//! ([`crate::hash::content_digest`]), and so is the trailing checksum,
//! which covers everything but the data bytes of `File` records (each
//! carries the digest of its data, which the checksum covers and the
//! target checks before writing the file). Versions 1 to 3 held sha256
//! digests (1: no `File` record, checksum over every byte; 2: `File`
//! records; 3: the checksum leaves their data out): they are refused by
//! name, so a sha256 is never taken for a BLAKE3 digest.
//!
//! Each record is a tag byte and its fields; byte strings are a `u32` length
//! and the bytes. Every length is checked against a fixed limit *and* the
//! bytes that remain before anything is allocated, so a hostile length can
//! never make the decoder allocate more than the input's size. Decoding
//! rejects unknown tags, trailing bytes, bad digests and paths that are not
//! plain relative paths (see [`check_path`]).

use sha2::{Digest, Sha256};

use crate::hash::ContentHasher;

use crate::entry::{Entry, Kind};

mod codec;
mod encoder;
use codec::{decode_record, kind_tag, limit, put_bytes, put_opt, Reader};
pub use encoder::SetEncoder;

const MAGIC: &[u8; 4] = b"SICS";
/// The version written and read: BLAKE3 content digests and checksum;
/// the checksum leaves out the data of `File` records (module docs).
const VERSION: u8 = 4;
/// Newest version whose digests were sha256 (refused by name).
const LAST_SHA256_VERSION: u8 = 3;
const HEADER: usize = 4 + 4 + 8 + 8 + 4;

/// Longest path (bytes) a record may carry.
pub const MAX_PATH: usize = 4096;
/// Longest symlink target.
pub const MAX_TARGET: usize = 4096;
/// Longest xattr name.
pub const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value.
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// Most xattrs per entry.
pub const MAX_XATTRS: usize = 1024;
/// Most sparse extents per entry.
pub const MAX_EXTENTS: usize = 1 << 16;
/// Largest data of one WriteExtent record.
pub const MAX_EXTENT_DATA: usize = 16 << 20;
/// Most records per change set.
pub const MAX_RECORDS: usize = 1 << 20;

/// A 32-byte digest: in records, the link's content digest (BLAKE3-256,
/// [`crate::hash::content_digest`]); from [`metadata_digest`], a sha256.
pub type Digest32 = [u8; 32];

/// One change to a tree. Paths are raw bytes relative to the tree root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Create the entry (replacing whatever is at its path) with its metadata;
    /// a regular file is created empty and filled by later `WriteExtent`s.
    /// Afterwards the path must hold exactly `entry`'s metadata
    /// ([`metadata_digest`]).
    Create(Entry),
    /// Write `data` at `offset` of a regular file; afterwards the file's
    /// whole content has the content digest (BLAKE3-256) `content_digest`. The sender may leave the
    /// digest out (`None`) on all but the last content record of a file it
    /// sends in several pieces, so the target hashes each file once, not
    /// once per piece; a later record of the same file then carries it.
    WriteExtent {
        path: Vec<u8>,
        offset: u64,
        data: Vec<u8>,
        content_digest: Option<Digest32>,
    },
    /// Set a regular file's length; afterwards its content has the
    /// content digest `content_digest` (optional as for `WriteExtent`).
    Truncate {
        path: Vec<u8>,
        size: u64,
        content_digest: Option<Digest32>,
    },
    /// Set owner, mode, xattrs and mtime (not content) to `entry`'s.
    /// Afterwards the path must hold exactly `entry`'s metadata.
    SetMetadata(Entry),
    /// Rename `from` to `to`, replacing `to`.
    Rename { from: Vec<u8>, to: Vec<u8> },
    /// Make `new` a hard link to `existing`, replacing `new`.
    Link { existing: Vec<u8>, new: Vec<u8> },
    /// Remove `path` (recursively for a directory); absent is fine.
    Delete { path: Vec<u8> },
    /// A whole regular file in one record: replace whatever is at
    /// `entry.path` with a new file holding `data` (whose content digest,
    /// BLAKE3-256, is `content_digest`) and `entry`'s metadata. `entry.size`
    /// equals `data.len()`; no hard link, no sparse map. The target checks
    /// the digest before writing anything and makes the file visible only
    /// once it is complete (content and metadata).
    File {
        entry: Entry,
        data: Vec<u8>,
        content_digest: Digest32,
    },
}

impl Record {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Record::Create(_) => "create",
            Record::WriteExtent { .. } => "write",
            Record::Truncate { .. } => "truncate",
            Record::SetMetadata(_) => "set-metadata",
            Record::Rename { .. } => "rename",
            Record::Link { .. } => "link",
            Record::Delete { .. } => "delete",
            Record::File { .. } => "file",
        }
    }

    /// Every path the record names (for checks and logs).
    pub fn paths(&self) -> Vec<&[u8]> {
        match self {
            Record::File { entry, .. } => vec![&entry.path[..]],
            Record::Create(e) | Record::SetMetadata(e) => {
                let mut v = vec![&e.path[..]];
                if let Some(l) = &e.link {
                    v.push(l);
                }
                v
            }
            Record::WriteExtent { path, .. }
            | Record::Truncate { path, .. }
            | Record::Delete { path } => vec![path],
            Record::Rename { from, to } => vec![from, to],
            Record::Link { existing, new } => vec![existing, new],
        }
    }

    /// Bytes of file data the record carries.
    pub fn data_len(&self) -> u64 {
        match self {
            Record::WriteExtent { data, .. } | Record::File { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

/// A numbered change set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    /// Sequence number, starting at 1; the replica after applying it is "as of `seq`".
    pub seq: u64,
    /// When the source cut the set (ms since the epoch), for lag.
    pub created_unix_ms: i64,
    pub records: Vec<Record>,
}

/// Why a change set could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeSetError {
    #[error("change set is truncated ({0})")]
    Truncated(&'static str),
    #[error("change set does not start with the SICS magic")]
    BadMagic,
    #[error("change set format version {0} is not supported (this build reads version 4); install the same standin version on both sides")]
    BadVersion(u8),
    #[error("change set format version {0} holds sha256 content digests (written by an older standin; this build reads version 4, BLAKE3); install the same standin version on both sides")]
    OldDigests(u8),
    #[error("change set checksum does not match (expected {expected}, computed {computed})")]
    BadChecksum { expected: String, computed: String },
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("unknown {what} tag {tag}")]
    BadTag { what: &'static str, tag: u8 },
    #[error("{0} trailing bytes after the last record")]
    Trailing(usize),
    #[error("record {index}: {reason}")]
    BadRecord { index: usize, reason: String },
}

/// Check that `path` is a plain relative path: not empty (unless `allow_root`),
/// no leading `/`, no `.`/`..`/empty components, no NUL, at most [`MAX_PATH`].
pub fn check_path(path: &[u8], allow_root: bool) -> Result<(), String> {
    // Made only for an error (every path of every set passes here).
    let shown = || crate::entry::display_path(path);
    if path.is_empty() {
        return if allow_root {
            Ok(())
        } else {
            Err("the root itself may not be named here".into())
        };
    }
    if path.len() > MAX_PATH {
        return Err(format!(
            "path of {} bytes is longer than {MAX_PATH}",
            path.len()
        ));
    }
    if path[0] == b'/' {
        return Err(format!(
            "absolute path {:?} is refused",
            String::from_utf8_lossy(path)
        ));
    }
    if path.contains(&0) {
        return Err(format!("path {} contains a NUL byte", shown()));
    }
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" => return Err(format!("path {} has an empty component", shown())),
            b"." | b".." => {
                return Err(format!(
                    "path {} contains {:?}",
                    shown(),
                    String::from_utf8_lossy(c)
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

impl ChangeSet {
    /// Check every path of every record ([`check_path`]).
    pub fn check_paths(&self) -> Result<(), ChangeSetError> {
        for (index, r) in self.records.iter().enumerate() {
            let allow_root = matches!(r, Record::SetMetadata(_) | Record::Create(_));
            if let Record::File { entry, data, .. } = r {
                if entry.kind != Kind::File
                    || entry.link.is_some()
                    || entry.sparse.is_some()
                    || entry.size != data.len() as u64
                {
                    return Err(ChangeSetError::BadRecord {
                        index,
                        reason: format!(
                            "file record {} must be a plain regular file whose size ({}) equals its data ({} bytes)",
                            entry.display_path(),
                            entry.size,
                            data.len()
                        ),
                    });
                }
            }
            for (i, p) in r.paths().into_iter().enumerate() {
                check_path(p, allow_root && i == 0)
                    .map_err(|reason| ChangeSetError::BadRecord { index, reason })?;
            }
            if let Record::Create(e) = r {
                if e.path.is_empty() && e.kind != Kind::Dir {
                    return Err(ChangeSetError::BadRecord {
                        index,
                        reason: "the root can only be a directory".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Total bytes of file data in the set.
    pub fn data_len(&self) -> u64 {
        self.records.iter().map(Record::data_len).sum()
    }

    /// Binary encoding with the trailing checksum (see [`SetEncoder`] to
    /// encode records as they come).
    pub fn encode(&self) -> Result<Vec<u8>, ChangeSetError> {
        limit("record count", self.records.len(), MAX_RECORDS)?;
        let mut enc = SetEncoder::with_buffer(Vec::with_capacity(
            HEADER + 32 + self.data_len() as usize + 256 * self.records.len(),
        ));
        for r in &self.records {
            enc.push(r)?;
        }
        Ok(enc.finish(self.seq, self.created_unix_ms))
    }

    /// Decode and verify a change set (checksum, limits, tags, paths).
    pub fn decode(bytes: &[u8]) -> Result<ChangeSet, ChangeSetError> {
        if bytes.len() < HEADER + 32 {
            return Err(ChangeSetError::Truncated(
                "shorter than header and checksum",
            ));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if &body[..4] != MAGIC {
            return Err(ChangeSetError::BadMagic);
        }
        let version = body[4];
        if (1..=LAST_SHA256_VERSION).contains(&version) {
            return Err(ChangeSetError::OldDigests(version));
        }
        if version != VERSION {
            return Err(ChangeSetError::BadVersion(version));
        }
        // The checksum skips the data of File records, so the (hardened)
        // parse comes first to find them.
        let mut r = Reader::at(body, 5);
        r.take(3)?;
        let seq = r.u64()?;
        let created_unix_ms = r.u64()? as i64;
        let count = r.u32()? as usize;
        limit("record count", count, MAX_RECORDS)?;
        // Each record takes at least 5 bytes, so the count is also bounded by the input.
        limit("record count", count, r.remaining() / 5 + 1)?;
        let mut records = Vec::with_capacity(count);
        let mut skip = Vec::new();
        for index in 0..count {
            let rec = decode_record(&mut r).map_err(|e| match e {
                ChangeSetError::BadRecord { .. } => e,
                other => ChangeSetError::BadRecord {
                    index,
                    reason: other.to_string(),
                },
            })?;
            if let Record::File { data, .. } = &rec {
                let end = r.pos() - 32;
                skip.push((end - data.len(), end));
            }
            records.push(rec);
        }
        if r.remaining() != 0 {
            return Err(ChangeSetError::Trailing(r.remaining()));
        }
        verify(body, &skip, sum)?;
        let cs = ChangeSet {
            seq,
            created_unix_ms,
            records,
        };
        cs.check_paths()?;
        Ok(cs)
    }
}

/// The trailing checksum: the content digest (BLAKE3-256) of `body`
/// without the byte ranges in `skip` (the data of File records; in order,
/// disjoint).
fn checksum(body: &[u8], skip: &[(usize, usize)]) -> [u8; 32] {
    let mut h = ContentHasher::new();
    let mut at = 0;
    for &(start, end) in skip {
        h.update(&body[at..start]);
        at = end;
    }
    h.update(&body[at..]);
    h.finalize()
}

fn verify(body: &[u8], skip: &[(usize, usize)], sum: &[u8]) -> Result<(), ChangeSetError> {
    let computed = checksum(body, skip);
    if computed[..] != sum[..] {
        return Err(ChangeSetError::BadChecksum {
            expected: hex::encode(sum),
            computed: hex::encode(computed),
        });
    }
    Ok(())
}

/// Digest of an entry's metadata as a target must hold it after `Create` or
/// `SetMetadata`: kind, mode, uid, gid, mtime, xattrs, symlink target and
/// device numbers (not path, size, content, sparse map or hardlink group).
pub fn metadata_digest(e: &Entry) -> Digest32 {
    let mut w = Vec::new();
    w.push(kind_tag(e.kind));
    w.extend_from_slice(&e.mode.to_be_bytes());
    w.extend_from_slice(&e.uid.to_be_bytes());
    w.extend_from_slice(&e.gid.to_be_bytes());
    w.extend_from_slice(&e.mtime_ns.to_be_bytes());
    w.extend_from_slice(&(e.xattrs.len() as u32).to_be_bytes());
    for (k, v) in &e.xattrs {
        put_bytes(&mut w, &k.0);
        put_bytes(&mut w, &v.0);
    }
    put_opt(&mut w, e.target.as_deref());
    match e.rdev {
        Some((a, b)) => {
            w.push(1);
            w.extend_from_slice(&a.to_be_bytes());
            w.extend_from_slice(&b.to_be_bytes());
        }
        None => w.push(0),
    }
    Sha256::digest(&w).into()
}

#[cfg(test)]
mod tests;
