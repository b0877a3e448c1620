//! The compact binary encoding of [`MirrorEntries`] and [`MirrorDiff`]
//! (protocol 2): front-coded paths, LEB128 varints, mtimes as deltas, the
//! first 16 bytes of each file's content digest (BLAKE3-256 since batch
//! version 3, protocol 5; sha256 before). The frame's zstd compression then
//! squeezes the rest. See docs/protocol.md.
//!
//! Decoding checks every count and length against both its limit and the
//! remaining input before allocating, refuses overlong varints, trailing
//! bytes and paths that are not plain relative paths, and says why.

use std::collections::BTreeMap;

use standin_builder::changeset::{
    check_path, MAX_EXTENTS, MAX_PATH, MAX_TARGET, MAX_XATTRS, MAX_XATTR_NAME, MAX_XATTR_VALUE,
};
use standin_builder::entry::{Entry, Kind, Xattr};
use standin_builder::wire::{WireError, WireReader};

use crate::message::{DiffItem, MirrorDiff, MirrorEntries};

const ENTRIES_MAGIC: &[u8; 4] = b"SIME";
const DIFF_MAGIC: &[u8; 4] = b"SIMD";
/// 3: content digests are BLAKE3's (2: sha256's).
const VERSION: u8 = 3;
/// Most entries (or diff items) in one batch.
pub const MAX_BATCH: usize = 1 << 17;
/// Most block digests for one file.
pub const MAX_BLOCKS: usize = 1 << 20;
/// Bytes of a file's content digest on the wire (a prefix of its BLAKE3-256
/// content digest, `builder::hash::content_digest`).
pub const DIGEST_BYTES: usize = 16;

const F_XATTRS: u8 = 1;
const F_TARGET: u8 = 2;
const F_LINK: u8 = 4;
const F_RDEV: u8 = 8;
const F_SPARSE: u8 = 16;
const F_SHA: u8 = 32;

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i(out: &mut Vec<u8>, v: i64) {
    put(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn put_path(out: &mut Vec<u8>, prev: &[u8], path: &[u8]) {
    let n = shared_prefix(prev, path);
    put(out, n as u64);
    put_bytes(out, &path[n..]);
}

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::File => 1,
        Kind::Dir => 2,
        Kind::Symlink => 3,
        Kind::Fifo => 4,
        Kind::Char => 5,
        Kind::Block => 6,
    }
}

fn digest_prefix(hex_sha: &str) -> anyhow::Result<[u8; DIGEST_BYTES]> {
    let b = hex::decode(hex_sha.get(..2 * DIGEST_BYTES).unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("bad content digest {hex_sha:?}: {e}"))?;
    b.try_into()
        .map_err(|_| anyhow::anyhow!("content digest {hex_sha:?} is too short"))
}

/// Encode a batch of entries.
pub fn encode_entries(m: &MirrorEntries) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + m.entries.len() * 48);
    out.extend_from_slice(ENTRIES_MAGIC);
    out.push(VERSION);
    put(&mut out, m.batch);
    put(&mut out, m.block_size as u64);
    put(&mut out, m.entries.len() as u64);
    let mut prev: &[u8] = b"";
    let mut prev_mtime = 0i64;
    for e in &m.entries {
        put_path(&mut out, prev, &e.path);
        prev = &e.path;
        out.push(kind_byte(e.kind));
        put(&mut out, e.mode as u64);
        put(&mut out, e.uid as u64);
        put(&mut out, e.gid as u64);
        put_i(&mut out, e.mtime_ns.wrapping_sub(prev_mtime));
        prev_mtime = e.mtime_ns;
        put(&mut out, e.size);
        let mut flags = 0;
        for (on, f) in [
            (!e.xattrs.is_empty(), F_XATTRS),
            (e.target.is_some(), F_TARGET),
            (e.link.is_some(), F_LINK),
            (e.rdev.is_some(), F_RDEV),
            (e.sparse.is_some(), F_SPARSE),
            (e.sha256.is_some(), F_SHA),
        ] {
            if on {
                flags |= f;
            }
        }
        out.push(flags);
        if !e.xattrs.is_empty() {
            put(&mut out, e.xattrs.len() as u64);
            for (k, v) in &e.xattrs {
                put_bytes(&mut out, &k.0);
                put_bytes(&mut out, &v.0);
            }
        }
        if let Some(t) = &e.target {
            put_bytes(&mut out, t);
        }
        if let Some(l) = &e.link {
            put_bytes(&mut out, l);
        }
        if let Some((a, b)) = e.rdev {
            put(&mut out, a as u64);
            put(&mut out, b as u64);
        }
        if let Some(ext) = &e.sparse {
            put(&mut out, ext.len() as u64);
            for (o, l) in ext {
                put(&mut out, *o);
                put(&mut out, *l);
            }
        }
        if let Some(h) = &e.sha256 {
            out.extend_from_slice(&digest_prefix(h)?);
        }
    }
    // Paths gone from the source since a sparse mirror's base (protocol
    // addition: absent when empty, so older peers read the batch as before).
    if !m.gone.is_empty() {
        put(&mut out, m.gone.len() as u64);
        let mut prev: &[u8] = b"";
        for g in &m.gone {
            put_path(&mut out, prev, g);
            prev = g;
        }
    }
    Ok(out)
}

/// Encode the target's answer.
pub fn encode_diff(m: &MirrorDiff) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(32 + m.items.len() * 24);
    out.extend_from_slice(DIFF_MAGIC);
    out.push(VERSION);
    put(&mut out, m.batch);
    put(&mut out, m.items.len() as u64);
    let mut prev: &[u8] = b"";
    for i in &m.items {
        out.push(match i.state.as_str() {
            "same" => 0,
            "missing" => 1,
            "metadata" => 2,
            "content" => 3,
            "extra" => 4,
            other => anyhow::bail!("unknown diff state {other:?}"),
        });
        put_path(&mut out, prev, &i.path);
        prev = &i.path;
        put(&mut out, i.blocks.len() as u64);
        for b in &i.blocks {
            out.extend_from_slice(b);
        }
    }
    Ok(out)
}

/// A cursor over a payload: builder's one bounded reader
/// ([`standin_builder::wire`]), its errors as text.
struct Rd<'a>(WireReader<'a>);

fn why(e: WireError) -> String {
    e.to_string()
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], String> {
        self.0.take(n, what).map_err(why)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, String> {
        self.0.u8(what).map_err(why)
    }

    fn var(&mut self, what: &'static str) -> Result<u64, String> {
        self.0.var(what).map_err(why)
    }

    fn var32(&mut self, what: &'static str) -> Result<u32, String> {
        self.0.var32(what).map_err(why)
    }

    fn vari(&mut self, what: &'static str) -> Result<i64, String> {
        self.0.vari(what).map_err(why)
    }

    /// A count, at most `max` and at most one per `min_each` bytes left.
    fn count(&mut self, what: &'static str, max: usize, min_each: usize) -> Result<usize, String> {
        self.0.count(what, max, min_each).map_err(why)
    }

    fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, String> {
        Ok(self.0.bytes_var(what, max).map_err(why)?.to_vec())
    }

    fn path(&mut self, prev: &[u8]) -> Result<Vec<u8>, String> {
        let shared = self.var("path prefix")?;
        if shared > prev.len() as u64 {
            return Err(format!(
                "path prefix {shared} is longer than the previous path ({} bytes)",
                prev.len()
            ));
        }
        let tail = self.bytes("path", MAX_PATH)?;
        let mut p = Vec::with_capacity(shared as usize + tail.len());
        p.extend_from_slice(&prev[..shared as usize]);
        p.extend_from_slice(&tail);
        check_path(&p, true)?;
        Ok(p)
    }

    fn header(&mut self, magic: &[u8; 4]) -> Result<(), String> {
        if self.take(4, "magic")? != magic {
            return Err("bad magic".into());
        }
        let v = self.u8("version")?;
        if v != VERSION {
            return Err(format!("version {v} (this standin speaks {VERSION})"));
        }
        Ok(())
    }

    fn end(&self) -> Result<(), String> {
        self.0.end().map_err(why)
    }
}

fn kind_of(b: u8) -> Result<Kind, String> {
    Ok(match b {
        1 => Kind::File,
        2 => Kind::Dir,
        3 => Kind::Symlink,
        4 => Kind::Fifo,
        5 => Kind::Char,
        6 => Kind::Block,
        o => return Err(format!("unknown entry type {o}")),
    })
}

/// Decode a batch of entries; `Err` says what is wrong. An entry's
/// `sha256` holds the 32 hex digits of the digest prefix.
pub fn decode_entries(b: &[u8]) -> Result<MirrorEntries, String> {
    let mut r = Rd(WireReader::new(b));
    r.header(ENTRIES_MAGIC)?;
    let batch = r.var("batch")?;
    let block_size = r.var32("block size")?;
    let n = r.count("entry count", MAX_BATCH, 9)?;
    let mut entries: Vec<Entry> = Vec::with_capacity(n);
    let mut prev_mtime = 0i64;
    for i in 0..n {
        let prev: &[u8] = entries.last().map(|e| e.path.as_slice()).unwrap_or(b"");
        let path = r.path(prev).map_err(|e| format!("entry {i}: {e}"))?;
        let ctx = |e: String| format!("entry {i} ({}): {e}", String::from_utf8_lossy(&path));
        let kind = kind_of(r.u8("type").map_err(ctx)?).map_err(ctx)?;
        let mode = r.var32("mode").map_err(ctx)?;
        if mode > 0o7777 {
            return Err(ctx(format!("mode {mode:o} has bits beyond 7777")));
        }
        let uid = r.var32("uid").map_err(ctx)?;
        let gid = r.var32("gid").map_err(ctx)?;
        let mtime_ns = prev_mtime.wrapping_add(r.vari("mtime").map_err(ctx)?);
        prev_mtime = mtime_ns;
        let size = r.var("size").map_err(ctx)?;
        let flags = r.u8("flags").map_err(ctx)?;
        if flags & !(F_XATTRS | F_TARGET | F_LINK | F_RDEV | F_SPARSE | F_SHA) != 0 {
            return Err(ctx(format!("unknown flags {flags:#x}")));
        }
        let mut xattrs = BTreeMap::new();
        if flags & F_XATTRS != 0 {
            let nx = r.count("xattr count", MAX_XATTRS, 2).map_err(ctx)?;
            for _ in 0..nx {
                let k = r.bytes("xattr name", MAX_XATTR_NAME).map_err(ctx)?;
                let v = r.bytes("xattr value", MAX_XATTR_VALUE).map_err(ctx)?;
                xattrs.insert(Xattr(k), Xattr(v));
            }
        }
        let target = if flags & F_TARGET != 0 {
            Some(r.bytes("symlink target", MAX_TARGET).map_err(ctx)?)
        } else {
            None
        };
        let link = if flags & F_LINK != 0 {
            let l = r.bytes("hardlink", MAX_PATH).map_err(ctx)?;
            check_path(&l, false).map_err(ctx)?;
            Some(l)
        } else {
            None
        };
        let rdev = if flags & F_RDEV != 0 {
            Some((
                r.var32("major").map_err(ctx)?,
                r.var32("minor").map_err(ctx)?,
            ))
        } else {
            None
        };
        let sparse = if flags & F_SPARSE != 0 {
            let ne = r.count("extent count", MAX_EXTENTS, 2).map_err(ctx)?;
            let mut v = Vec::with_capacity(ne);
            for _ in 0..ne {
                v.push((r.var("extent").map_err(ctx)?, r.var("extent").map_err(ctx)?));
            }
            Some(v)
        } else {
            None
        };
        let sha256 = if flags & F_SHA != 0 {
            Some(hex::encode(r.take(DIGEST_BYTES, "sha256").map_err(ctx)?))
        } else {
            None
        };
        entries.push(Entry {
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
        });
    }
    let mut gone: Vec<Vec<u8>> = Vec::new();
    if r.0.left() > 0 {
        let n = r.count("gone count", MAX_BATCH, 2)?;
        if n == 0 {
            return Err("trailing bytes after the entries".into());
        }
        for i in 0..n {
            let prev: &[u8] = gone.last().map(|g| g.as_slice()).unwrap_or(b"");
            let g = r.path(prev).map_err(|e| format!("gone path {i}: {e}"))?;
            gone.push(g);
        }
    }
    r.end()?;
    Ok(MirrorEntries {
        batch,
        entries,
        block_size,
        gone,
    })
}

/// Decode the target's answer; `Err` says what is wrong.
pub fn decode_diff(b: &[u8]) -> Result<MirrorDiff, String> {
    let mut r = Rd(WireReader::new(b));
    r.header(DIFF_MAGIC)?;
    let batch = r.var("batch")?;
    let n = r.count("item count", MAX_BATCH, 3)?;
    let mut items: Vec<DiffItem> = Vec::with_capacity(n);
    for i in 0..n {
        let state = match r.u8("state")? {
            0 => "same",
            1 => "missing",
            2 => "metadata",
            3 => "content",
            4 => "extra",
            o => return Err(format!("item {i}: unknown state {o}")),
        };
        let prev: &[u8] = items.last().map(|e| e.path.as_slice()).unwrap_or(b"");
        let path = r.path(prev).map_err(|e| format!("item {i}: {e}"))?;
        let nb = r
            .count("block count", MAX_BLOCKS, 16)
            .map_err(|e| format!("item {i}: {e}"))?;
        let mut blocks = Vec::with_capacity(nb);
        for _ in 0..nb {
            blocks.push(r.take(16, "block digest")?.try_into().expect("16 bytes"));
        }
        items.push(DiffItem {
            path,
            state: state.into(),
            blocks,
        });
    }
    r.end()?;
    Ok(MirrorDiff { batch, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime_ns: 1_700_000_000_123_456_789,
            size: 0,
            xattrs: BTreeMap::new(),
            target: None,
            link: None,
            rdev: None,
            sparse: None,
            sha256: None,
        }
    }

    fn sample() -> MirrorEntries {
        let mut f = entry("etc/passwd", Kind::File);
        f.size = 1234;
        f.sha256 = Some("ab".repeat(16));
        f.xattrs
            .insert(Xattr(b"user.k".to_vec()), Xattr(vec![0, 255, 7]));
        let mut s = entry("etc/link", Kind::Symlink);
        s.path.push(0xff);
        s.target = Some(b"../x".to_vec());
        s.mtime_ns = -5;
        let mut h = entry("etc/pw2", Kind::File);
        h.link = Some(b"etc/passwd".to_vec());
        let mut d = entry("dev/null", Kind::Char);
        d.rdev = Some((1, 3));
        let mut sp = entry("var/sparse", Kind::File);
        sp.sparse = Some(vec![(0, 4096), (1 << 30, 10)]);
        sp.size = (1 << 30) + 10;
        sp.sha256 = Some("cd".repeat(16));
        MirrorEntries {
            batch: 7,
            entries: vec![entry("", Kind::Dir), f, s, h, d, sp],
            block_size: 128 << 10,
            gone: vec![b"etc/old".to_vec(), b"etc/old.d".to_vec(), b"var".to_vec()],
        }
    }

    #[test]
    fn entries_and_diffs_round_trip() {
        let m = sample();
        let b = encode_entries(&m).unwrap();
        assert_eq!(decode_entries(&b).unwrap(), m);
        let d = MirrorDiff {
            batch: 3,
            items: vec![
                DiffItem {
                    path: b"a/b".to_vec(),
                    state: "content".into(),
                    blocks: vec![[1; 16], [2; 16]],
                },
                DiffItem {
                    path: b"a/c".to_vec(),
                    state: "extra".into(),
                    blocks: vec![],
                },
            ],
        };
        assert_eq!(decode_diff(&encode_diff(&d).unwrap()).unwrap(), d);
        // A full sha256 travels as its 16-byte prefix.
        let mut full = sample();
        full.entries[1].sha256 = Some("ab".repeat(32));
        let back = decode_entries(&encode_entries(&full).unwrap()).unwrap();
        assert_eq!(back.entries[1].sha256.as_deref(), Some(&*"ab".repeat(16)));
    }

    fn err_of(b: &[u8]) -> String {
        decode_entries(b).unwrap_err()
    }

    #[test]
    fn hostile_batches_are_refused_with_a_reason() {
        // (Without gone paths: a batch cut right before them is whole.)
        let mut plain = sample();
        plain.gone.clear();
        let good = encode_entries(&plain).unwrap();
        // Gone paths are checked like entries' paths.
        for p in ["../etc", "/etc", "a//b"] {
            let mut m = sample();
            m.gone[1] = p.as_bytes().to_vec();
            let e = err_of(&encode_entries(&m).unwrap());
            assert!(e.contains("gone path 1"), "{p}: {e}");
        }
        let err = |b: &[u8]| decode_entries(b).unwrap_err();
        // Every truncation is refused, never a panic.
        for n in 0..good.len() {
            let _ = err(&good[..n]);
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(err(&trailing).contains("trailing"));
        // An oversized count is refused before allocating.
        let mut huge = ENTRIES_MAGIC.to_vec();
        huge.push(VERSION);
        put(&mut huge, 1);
        put(&mut huge, 4096);
        put(&mut huge, u64::MAX);
        assert!(err(&huge).contains("limit"), "{}", err(&huge));
        let mut many = huge[..huge.len() - 10].to_vec();
        put(&mut many, 100_000);
        assert!(err(&many).contains("bytes left"), "{}", err(&many));
        // Bad varints.
        let mut bad = ENTRIES_MAGIC.to_vec();
        bad.push(VERSION);
        bad.extend_from_slice(&[0xff; 11]);
        assert!(err(&bad).contains("varint"), "{}", err(&bad));
        let mut overlong = ENTRIES_MAGIC.to_vec();
        overlong.push(VERSION);
        overlong.extend_from_slice(&[0x81, 0x00]);
        assert!(err(&overlong).contains("overlong"), "{}", err(&overlong));
        // Paths that escape, by themselves or through the front coding.
        for p in ["../etc/shadow", "/etc/shadow", "a/../../x", "a//b"] {
            let mut m = sample();
            m.entries[1].path = p.as_bytes().to_vec();
            let e = err(&encode_entries(&m).unwrap());
            assert!(e.contains("entry 1"), "{p}: {e}");
        }
        let mut m = sample();
        m.entries[3].link = Some(b"../../x".to_vec());
        assert!(err(&encode_entries(&m).unwrap()).contains(".."));
        let mut fc = ENTRIES_MAGIC.to_vec();
        fc.push(VERSION);
        put(&mut fc, 1);
        put(&mut fc, 0);
        put(&mut fc, 1);
        put(&mut fc, 5); // shares 5 bytes with the (empty) previous path
        put_bytes(&mut fc, b"x");
        fc.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0]);
        assert!(err(&fc).contains("prefix"), "{}", err(&fc));
        // Random bytes.
        let mut x = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let mut b = ENTRIES_MAGIC.to_vec();
            b.push(VERSION);
            for _ in 0..(x % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = decode_entries(&b);
            let _ = decode_diff(&b);
        }
        let mut d = DIFF_MAGIC.to_vec();
        d.push(VERSION);
        put(&mut d, 1);
        put(&mut d, 1);
        d.push(3);
        put(&mut d, 0);
        put_bytes(&mut d, b"f");
        put(&mut d, 1 << 40);
        assert!(decode_diff(&d).unwrap_err().contains("block count"));
    }
}
