//! Change sets: an ordered, numbered list of records that turn a replica of
//! sequence `seq - 1` into the replica of sequence `seq`.
//!
//! Binary layout (all integers big endian):
//!
//! ```text
//! magic "SICS" | version u8 = 1 | reserved u8 u8 u8 | seq u64 | created_unix_ms i64
//! | record count u32 | records... | sha256 (32 bytes) of everything before it
//! ```
//!
//! Each record is a tag byte and its fields; byte strings are a `u32` length
//! and the bytes. Every length is checked against a fixed limit *and* the
//! bytes that remain before anything is allocated, so a hostile length can
//! never make the decoder allocate more than the input's size. Decoding
//! rejects unknown tags, trailing bytes, bad digests and paths that are not
//! plain relative paths (see [`check_path`]).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::entry::{Entry, Kind, Xattr};

const MAGIC: &[u8; 4] = b"SICS";
const VERSION: u8 = 1;
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

/// A sha256 digest.
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
    /// whole content has sha256 `content_sha256`. The sender may leave the
    /// digest out (`None`) on all but the last content record of a file it
    /// sends in several pieces, so the target hashes each file once, not
    /// once per piece; a later record of the same file then carries it.
    WriteExtent {
        path: Vec<u8>,
        offset: u64,
        data: Vec<u8>,
        content_sha256: Option<Digest32>,
    },
    /// Set a regular file's length; afterwards its content has sha256
    /// `content_sha256` (optional as for `WriteExtent`).
    Truncate {
        path: Vec<u8>,
        size: u64,
        content_sha256: Option<Digest32>,
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
        }
    }

    /// Every path the record names (for checks and logs).
    pub fn paths(&self) -> Vec<&[u8]> {
        match self {
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
            Record::WriteExtent { data, .. } => data.len() as u64,
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
    #[error("change set format version {0} is not supported (this build reads version 1)")]
    BadVersion(u8),
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
    let shown = crate::entry::display_path(path);
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
        return Err(format!("path {shown} contains a NUL byte"));
    }
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" => return Err(format!("path {shown} has an empty component")),
            b"." | b".." => {
                return Err(format!(
                    "path {shown} contains {:?}",
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

    /// Binary encoding with the trailing checksum.
    pub fn encode(&self) -> Result<Vec<u8>, ChangeSetError> {
        let mut w = Vec::with_capacity(HEADER + 64 + self.data_len() as usize);
        w.extend_from_slice(MAGIC);
        w.extend_from_slice(&[VERSION, 0, 0, 0]);
        w.extend_from_slice(&self.seq.to_be_bytes());
        w.extend_from_slice(&self.created_unix_ms.to_be_bytes());
        limit("record count", self.records.len(), MAX_RECORDS)?;
        w.extend_from_slice(&(self.records.len() as u32).to_be_bytes());
        for r in &self.records {
            encode_record(&mut w, r)?;
        }
        let sum = Sha256::digest(&w);
        w.extend_from_slice(&sum);
        Ok(w)
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
        let computed = Sha256::digest(body);
        if computed[..] != sum[..] {
            return Err(ChangeSetError::BadChecksum {
                expected: hex::encode(sum),
                computed: hex::encode(computed),
            });
        }
        let mut r = Reader { buf: body, pos: 4 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(ChangeSetError::BadVersion(version));
        }
        r.take(3)?;
        let seq = r.u64()?;
        let created_unix_ms = r.u64()? as i64;
        let count = r.u32()? as usize;
        limit("record count", count, MAX_RECORDS)?;
        // Each record takes at least 5 bytes, so the count is also bounded by the input.
        limit("record count", count, r.remaining() / 5 + 1)?;
        let mut records = Vec::with_capacity(count);
        for index in 0..count {
            records.push(decode_record(&mut r).map_err(|e| match e {
                ChangeSetError::BadRecord { .. } => e,
                other => ChangeSetError::BadRecord {
                    index,
                    reason: other.to_string(),
                },
            })?);
        }
        if r.remaining() != 0 {
            return Err(ChangeSetError::Trailing(r.remaining()));
        }
        let cs = ChangeSet {
            seq,
            created_unix_ms,
            records,
        };
        cs.check_paths()?;
        Ok(cs)
    }
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

fn limit(what: &'static str, len: usize, max: usize) -> Result<(), ChangeSetError> {
    if len > max {
        Err(ChangeSetError::TooLong {
            what,
            len: len as u64,
            max: max as u64,
        })
    } else {
        Ok(())
    }
}

fn kind_tag(k: Kind) -> u8 {
    match k {
        Kind::File => 1,
        Kind::Dir => 2,
        Kind::Symlink => 3,
        Kind::Fifo => 4,
        Kind::Char => 5,
        Kind::Block => 6,
    }
}

fn kind_from(tag: u8) -> Result<Kind, ChangeSetError> {
    Ok(match tag {
        1 => Kind::File,
        2 => Kind::Dir,
        3 => Kind::Symlink,
        4 => Kind::Fifo,
        5 => Kind::Char,
        6 => Kind::Block,
        tag => {
            return Err(ChangeSetError::BadTag {
                what: "file type",
                tag,
            })
        }
    })
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

fn put_opt(w: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            w.push(1);
            put_bytes(w, b);
        }
        None => w.push(0),
    }
}

fn put_digest(w: &mut Vec<u8>, d: Option<&Digest32>) {
    match d {
        Some(d) => {
            w.push(1);
            w.extend_from_slice(d);
        }
        None => w.push(0),
    }
}

fn put_path(w: &mut Vec<u8>, p: &[u8]) -> Result<(), ChangeSetError> {
    limit("path length", p.len(), MAX_PATH)?;
    put_bytes(w, p);
    Ok(())
}

fn encode_entry(w: &mut Vec<u8>, e: &Entry) -> Result<(), ChangeSetError> {
    put_path(w, &e.path)?;
    w.push(kind_tag(e.kind));
    w.extend_from_slice(&e.mode.to_be_bytes());
    w.extend_from_slice(&e.uid.to_be_bytes());
    w.extend_from_slice(&e.gid.to_be_bytes());
    w.extend_from_slice(&e.mtime_ns.to_be_bytes());
    w.extend_from_slice(&e.size.to_be_bytes());
    limit("xattr count", e.xattrs.len(), MAX_XATTRS)?;
    w.extend_from_slice(&(e.xattrs.len() as u32).to_be_bytes());
    for (k, v) in &e.xattrs {
        limit("xattr name", k.0.len(), MAX_XATTR_NAME)?;
        limit("xattr value", v.0.len(), MAX_XATTR_VALUE)?;
        put_bytes(w, &k.0);
        put_bytes(w, &v.0);
    }
    if let Some(t) = &e.target {
        limit("symlink target", t.len(), MAX_TARGET)?;
    }
    put_opt(w, e.target.as_deref());
    if let Some(l) = &e.link {
        limit("path length", l.len(), MAX_PATH)?;
    }
    put_opt(w, e.link.as_deref());
    match e.rdev {
        Some((a, b)) => {
            w.push(1);
            w.extend_from_slice(&a.to_be_bytes());
            w.extend_from_slice(&b.to_be_bytes());
        }
        None => w.push(0),
    }
    match &e.sparse {
        Some(x) => {
            limit("sparse extents", x.len(), MAX_EXTENTS)?;
            w.push(1);
            w.extend_from_slice(&(x.len() as u32).to_be_bytes());
            for (o, l) in x {
                w.extend_from_slice(&o.to_be_bytes());
                w.extend_from_slice(&l.to_be_bytes());
            }
        }
        None => w.push(0),
    }
    match &e.sha256 {
        Some(h) => {
            let raw = hex::decode(h)
                .ok()
                .filter(|r| r.len() == 32)
                .ok_or_else(|| ChangeSetError::BadRecord {
                    index: 0,
                    reason: format!("entry {} has a malformed sha256 {h:?}", e.display_path()),
                })?;
            w.push(1);
            w.extend_from_slice(&raw);
        }
        None => w.push(0),
    }
    Ok(())
}

fn encode_record(w: &mut Vec<u8>, r: &Record) -> Result<(), ChangeSetError> {
    match r {
        Record::Create(e) => {
            w.push(1);
            encode_entry(w, e)?;
        }
        Record::WriteExtent {
            path,
            offset,
            data,
            content_sha256,
        } => {
            w.push(2);
            put_path(w, path)?;
            w.extend_from_slice(&offset.to_be_bytes());
            limit("extent data", data.len(), MAX_EXTENT_DATA)?;
            put_bytes(w, data);
            put_digest(w, content_sha256.as_ref());
        }
        Record::Truncate {
            path,
            size,
            content_sha256,
        } => {
            w.push(3);
            put_path(w, path)?;
            w.extend_from_slice(&size.to_be_bytes());
            put_digest(w, content_sha256.as_ref());
        }
        Record::SetMetadata(e) => {
            w.push(4);
            encode_entry(w, e)?;
        }
        Record::Rename { from, to } => {
            w.push(5);
            put_path(w, from)?;
            put_path(w, to)?;
        }
        Record::Link { existing, new } => {
            w.push(6);
            put_path(w, existing)?;
            put_path(w, new)?;
        }
        Record::Delete { path } => {
            w.push(7);
            put_path(w, path)?;
        }
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ChangeSetError> {
        if n > self.remaining() {
            return Err(ChangeSetError::Truncated("a field runs past the end"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, ChangeSetError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ChangeSetError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, ChangeSetError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn digest(&mut self) -> Result<Digest32, ChangeSetError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    fn opt_digest(&mut self) -> Result<Option<Digest32>, ChangeSetError> {
        if self.flag()? {
            Ok(Some(self.digest()?))
        } else {
            Ok(None)
        }
    }

    fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, ChangeSetError> {
        let len = self.u32()? as usize;
        limit(what, len, max)?;
        Ok(self.take(len)?.to_vec())
    }

    fn flag(&mut self) -> Result<bool, ChangeSetError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(ChangeSetError::BadTag {
                what: "option",
                tag,
            }),
        }
    }

    fn opt(&mut self, what: &'static str, max: usize) -> Result<Option<Vec<u8>>, ChangeSetError> {
        if self.flag()? {
            Ok(Some(self.bytes(what, max)?))
        } else {
            Ok(None)
        }
    }
}

fn decode_entry(r: &mut Reader<'_>) -> Result<Entry, ChangeSetError> {
    let path = r.bytes("path length", MAX_PATH)?;
    let kind = kind_from(r.u8()?)?;
    let mode = r.u32()?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let mtime_ns = r.u64()? as i64;
    let size = r.u64()?;
    let n = r.u32()? as usize;
    limit("xattr count", n, MAX_XATTRS)?;
    let mut xattrs = BTreeMap::new();
    for _ in 0..n {
        let k = r.bytes("xattr name", MAX_XATTR_NAME)?;
        let v = r.bytes("xattr value", MAX_XATTR_VALUE)?;
        xattrs.insert(Xattr(k), Xattr(v));
    }
    let target = r.opt("symlink target", MAX_TARGET)?;
    let link = r.opt("path length", MAX_PATH)?;
    let rdev = if r.flag()? {
        Some((r.u32()?, r.u32()?))
    } else {
        None
    };
    let sparse = if r.flag()? {
        let n = r.u32()? as usize;
        limit("sparse extents", n, MAX_EXTENTS)?;
        limit("sparse extents", n * 16, r.remaining())?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push((r.u64()?, r.u64()?));
        }
        Some(v)
    } else {
        None
    };
    let sha256 = if r.flag()? {
        Some(hex::encode(r.digest()?))
    } else {
        None
    };
    if mode > 0o7777 {
        return Err(ChangeSetError::TooLong {
            what: "mode",
            len: mode as u64,
            max: 0o7777,
        });
    }
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime_ns,
        size,
        xattrs,
        target,
        link,
        rdev,
        sparse,
        sha256,
    })
}

fn decode_record(r: &mut Reader<'_>) -> Result<Record, ChangeSetError> {
    Ok(match r.u8()? {
        1 => Record::Create(decode_entry(r)?),
        2 => {
            let path = r.bytes("path length", MAX_PATH)?;
            let offset = r.u64()?;
            let data = r.bytes("extent data", MAX_EXTENT_DATA)?;
            let content_sha256 = r.opt_digest()?;
            if offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > i64::MAX as u64)
            {
                return Err(ChangeSetError::TooLong {
                    what: "extent end",
                    len: offset,
                    max: i64::MAX as u64,
                });
            }
            Record::WriteExtent {
                path,
                offset,
                data,
                content_sha256,
            }
        }
        3 => {
            let path = r.bytes("path length", MAX_PATH)?;
            let size = r.u64()?;
            if size > i64::MAX as u64 {
                return Err(ChangeSetError::TooLong {
                    what: "file size",
                    len: size,
                    max: i64::MAX as u64,
                });
            }
            Record::Truncate {
                path,
                size,
                content_sha256: r.opt_digest()?,
            }
        }
        4 => Record::SetMetadata(decode_entry(r)?),
        5 => Record::Rename {
            from: r.bytes("path length", MAX_PATH)?,
            to: r.bytes("path length", MAX_PATH)?,
        },
        6 => Record::Link {
            existing: r.bytes("path length", MAX_PATH)?,
            new: r.bytes("path length", MAX_PATH)?,
        },
        7 => Record::Delete {
            path: r.bytes("path length", MAX_PATH)?,
        },
        tag => {
            return Err(ChangeSetError::BadTag {
                what: "record",
                tag,
            })
        }
    })
}

#[cfg(test)]
mod tests;
