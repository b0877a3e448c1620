//! The binary encoding of records and entries (see the layout in the
//! parent module). Every length is checked against its limit and against the
//! bytes that remain before anything is allocated.

use std::collections::BTreeMap;

use super::*;
use crate::entry::Xattr;
use crate::wire::{WireError, WireReader};

pub(super) fn limit(what: &'static str, len: usize, max: usize) -> Result<(), ChangeSetError> {
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

pub(super) fn kind_tag(k: Kind) -> u8 {
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

pub(super) fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

pub(super) fn put_opt(w: &mut Vec<u8>, b: Option<&[u8]>) {
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
                    reason: format!(
                        "entry {} has a malformed content digest {h:?}",
                        e.display_path()
                    ),
                })?;
            w.push(1);
            w.extend_from_slice(&raw);
        }
        None => w.push(0),
    }
    Ok(())
}

pub(super) fn encode_record(w: &mut Vec<u8>, r: &Record) -> Result<(), ChangeSetError> {
    match r {
        Record::Create(e) => {
            w.push(1);
            encode_entry(w, e)?;
        }
        Record::WriteExtent {
            path,
            offset,
            data,
            content_digest,
        } => {
            w.push(2);
            put_path(w, path)?;
            w.extend_from_slice(&offset.to_be_bytes());
            limit("extent data", data.len(), MAX_EXTENT_DATA)?;
            put_bytes(w, data);
            put_digest(w, content_digest.as_ref());
        }
        Record::Truncate {
            path,
            size,
            content_digest,
        } => {
            w.push(3);
            put_path(w, path)?;
            w.extend_from_slice(&size.to_be_bytes());
            put_digest(w, content_digest.as_ref());
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
        Record::File {
            entry,
            data,
            content_digest,
        } => {
            w.push(8);
            encode_entry(w, entry)?;
            limit("file data", data.len(), MAX_EXTENT_DATA)?;
            put_bytes(w, data);
            w.extend_from_slice(content_digest);
        }
    }
    Ok(())
}

/// The change set's reader: the one bounded reader of [`crate::wire`].
pub(super) struct Reader<'a>(WireReader<'a>);

const FIELD: &str = "a field runs past the end";

impl From<WireError> for ChangeSetError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLong { what, len, max } => ChangeSetError::TooLong { what, len, max },
            _ => ChangeSetError::Truncated(FIELD),
        }
    }
}

impl<'a> Reader<'a> {
    /// Read `buf` from `pos`.
    pub(super) fn at(buf: &'a [u8], pos: usize) -> Self {
        Reader(WireReader::at(buf, pos))
    }

    pub(super) fn pos(&self) -> usize {
        self.0.pos()
    }

    pub(super) fn remaining(&self) -> usize {
        self.0.left()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], ChangeSetError> {
        Ok(self.0.take(n, FIELD)?)
    }

    pub(super) fn u8(&mut self) -> Result<u8, ChangeSetError> {
        Ok(self.0.u8(FIELD)?)
    }

    pub(super) fn u32(&mut self) -> Result<u32, ChangeSetError> {
        Ok(self.0.u32_be(FIELD)?)
    }

    pub(super) fn u64(&mut self) -> Result<u64, ChangeSetError> {
        Ok(self.0.u64_be(FIELD)?)
    }

    pub(super) fn digest(&mut self) -> Result<Digest32, ChangeSetError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    pub(super) fn opt_digest(&mut self) -> Result<Option<Digest32>, ChangeSetError> {
        if self.flag()? {
            Ok(Some(self.digest()?))
        } else {
            Ok(None)
        }
    }

    pub(super) fn bytes(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<Vec<u8>, ChangeSetError> {
        Ok(self.0.bytes_u32(what, max)?.to_vec())
    }

    pub(super) fn flag(&mut self) -> Result<bool, ChangeSetError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(ChangeSetError::BadTag {
                what: "option",
                tag,
            }),
        }
    }

    pub(super) fn opt(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<Option<Vec<u8>>, ChangeSetError> {
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

pub(super) fn decode_record(r: &mut Reader<'_>) -> Result<Record, ChangeSetError> {
    Ok(match r.u8()? {
        8 => {
            let entry = decode_entry(r)?;
            let data = r.bytes("file data", MAX_EXTENT_DATA)?;
            let content_digest = r.digest()?;
            Record::File {
                entry,
                data,
                content_digest,
            }
        }
        1 => Record::Create(decode_entry(r)?),
        2 => {
            let path = r.bytes("path length", MAX_PATH)?;
            let offset = r.u64()?;
            let data = r.bytes("extent data", MAX_EXTENT_DATA)?;
            let content_digest = r.opt_digest()?;
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
                content_digest,
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
                content_digest: r.opt_digest()?,
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
