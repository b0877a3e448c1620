//! Hashing helpers: file digests (sparse-aware), and `Read`/`Write`
//! adapters that hash what passes through them.
//!
//! Two digests of a file's content, for two jobs:
//! - **sha256** ([`hash_file`], [`HashingReader`], [`HashingWriter`]):
//!   archives and image manifests (`standin image`, verify, compare,
//!   restore, disk), whose format names it.
//! - **the link's content digest**, BLAKE3-256 (all 32 bytes:
//!   [`content_digest`], [`ContentHasher`], [`content_file`],
//!   [`hash_file_blocks`]): everything mirroring and replication compute
//!   and compare (change-set records, mirror batches, the mirror root
//!   digest's per-entry digest, the agent's mirror index and digest cache,
//!   the target's ledgers and digest cache). BLAKE3 is 2-3x faster per
//!   byte than sha256 with SHA-NI on the same CPU and as
//!   collision-resistant; every byte a mirror sends is hashed once on each
//!   side, so this is a good part of a mirror's CPU (protocol 5).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Size of the buffers used for file I/O.
pub const BUF_SIZE: usize = 1 << 20;

/// Lowercase hex of a sha256 digest.
pub fn hex(digest: &[u8]) -> String {
    hex::encode(digest)
}

/// A reader that hashes every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wrap a reader.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read, as lowercase hex, and the byte count.
    pub fn finish(self) -> (String, u64) {
        (hex(&self.hasher.finalize()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes every byte written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap a writer.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The inner writer and the digest (hex) of everything written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A hasher bytes can be fed to (sha256 or the link's [`ContentHasher`]).
pub trait Feed {
    /// Hash `b` next.
    fn feed(&mut self, b: &[u8]);
}

impl Feed for Sha256 {
    fn feed(&mut self, b: &[u8]) {
        self.update(b);
    }
}

impl Feed for ContentHasher {
    fn feed(&mut self, b: &[u8]) {
        self.update(b);
    }
}

/// A content digest as the link carries it (see [`content_digest`]).
pub type Digest32 = [u8; 32];

/// The link's content digest of `data`: its BLAKE3-256 digest (all 32
/// bytes). What change-set records (`File`, `WriteExtent`, `Truncate`),
/// mirror entries, the agent's index and cache and the target's ledgers
/// and cache hold for a regular file's content.
pub fn content_digest(data: &[u8]) -> Digest32 {
    *blake3::hash(data).as_bytes()
}

/// The link's content digest computed incrementally (same result as
/// [`content_digest`] of everything fed, in order).
#[derive(Clone, Default)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    /// An empty hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hash `b` next.
    pub fn update(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(b);
        self
    }

    /// The digest of everything fed so far.
    pub fn finalize(&self) -> Digest32 {
        *self.0.finalize().as_bytes()
    }
}

/// Feed `len` zero bytes into a hasher (the holes of a sparse file).
pub fn hash_zeros(hasher: &mut impl Feed, mut len: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.feed(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// sha256 (hex) of a whole file's content (archives and manifests). For a
/// sparse file pass its data extents: only those are read, holes hash as
/// zeros. Returns the digest and the number of bytes actually read.
pub fn hash_file(
    path: &Path,
    size: u64,
    sparse: Option<&[(u64, u64)]>,
) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let read = feed_file(&mut hasher, path, size, sparse)?;
    Ok((hex(&hasher.finalize()), read))
}

/// The link's content digest ([`content_digest`], hex) of a whole file,
/// as [`hash_file`] reads it (sparse-aware). Returns the digest and the
/// number of bytes actually read.
pub fn content_file(
    path: &Path,
    size: u64,
    sparse: Option<&[(u64, u64)]>,
) -> io::Result<(String, u64)> {
    let mut hasher = ContentHasher::new();
    let read = feed_file(&mut hasher, path, size, sparse)?;
    Ok((hex(&hasher.finalize()), read))
}

/// Feed what `r` reads, from where it is to its end, to `hasher` through
/// `buf`; returns the bytes read.
pub fn feed_reader(hasher: &mut impl Feed, r: &mut impl Read, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.feed(&buf[..n]);
        total += n as u64;
    }
}

/// Feed a file's content to `hasher` (holes of a sparse file as zeros);
/// returns the bytes read.
fn feed_file(
    hasher: &mut impl Feed,
    path: &Path,
    size: u64,
    sparse: Option<&[(u64, u64)]>,
) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; BUF_SIZE.min(size.max(1) as usize).max(4096)];
    let mut read_total = 0u64;
    match sparse {
        None => read_total = feed_reader(hasher, &mut file, &mut buf)?,
        Some(extents) => {
            let mut pos = 0u64;
            for &(off, len) in extents {
                hash_zeros(hasher, off - pos);
                let mut r = crate::archive::sparse::ExtentReader::new(&mut file, off, len)?;
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.feed(&buf[..n]);
                }
                read_total += len;
                pos = off + len;
            }
            hash_zeros(hasher, size.saturating_sub(pos));
        }
    }
    Ok(read_total)
}

/// Read `r` in `block_size`-byte blocks (the last may be shorter; nothing
/// for an empty input) and hand each to `each`. Reads go in chunks of
/// whole blocks of about 1 MiB ([`read_block_chunks`]).
pub fn read_blocks(
    r: &mut impl Read,
    block_size: u64,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let bs = block_size.max(1) as usize;
    read_block_chunks(r, block_size, |chunk| chunk.chunks(bs).for_each(&mut each))
}

/// Bytes read at a time by [`read_block_chunks`] (rounded to whole blocks).
const BLOCK_CHUNK: usize = 1 << 20;

/// Read `r` in chunks of whole `block_size`-byte blocks: the first chunk
/// one block, the others about 1 MiB (one block when blocks are larger);
/// only the last chunk may end in a short block. Nothing for an empty input.
pub fn read_block_chunks(
    r: &mut impl Read,
    block_size: u64,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let bs = block_size.max(1) as usize;
    let chunk = (BLOCK_CHUNK / bs).max(1) * bs;
    // One block first: a small file (most of what a comparison reads)
    // costs no 1 MiB buffer; a longer one gets it from its second read on.
    let mut buf = vec![0u8; bs];
    loop {
        let got = fill(r, &mut buf)?;
        if got == 0 {
            return Ok(());
        }
        each(&buf[..got]);
        if got < buf.len() {
            return Ok(());
        }
        buf.resize(chunk, 0);
    }
}

/// The first 16 bytes of a block's BLAKE3 digest (the [`content_digest`]
/// of the block on its own): what replication's block index
/// (`agent::blockindex`, agent-internal, never compared with the target)
/// keeps per 16 KiB block. A checksum mirror's block digests are
/// [`block_cv`]s instead (see [`hash_file_blocks`]).
pub fn block_digest(block: &[u8]) -> [u8; 16] {
    blake3::hash(block).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

/// A BLAKE3 chaining value: the non-root hash of one block of a file at
/// its offset, 32 bytes. The file's content digest is the merge of its
/// blocks' chaining values ([`merge_cvs`]).
pub type Cv = [u8; 32];

/// The chaining value of `block` found at byte `offset` of a file (BLAKE3
/// `hazmat`): `offset` must be a multiple of 1024 and `block` at most a
/// power-of-two subtree there (a whole mirror block always is: its size is
/// a power of two of at least 1 KiB and its offset a multiple of it). The
/// same bytes at another offset give another value.
pub fn block_cv(block: &[u8], offset: u64) -> Cv {
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(block);
    h.finalize_non_root()
}

/// Whether `bs` can be a block size of chaining values: a power of two of
/// at least 1 KiB (every `mirror_block_size` is).
pub fn cv_block_size(bs: u64) -> bool {
    bs >= 1024 && bs.is_power_of_two()
}

/// The content digest of a file of `len` bytes (more than one block,
/// `len > bs`) from the chaining values of its `bs`-byte blocks, merged in
/// BLAKE3's left-balanced tree: equal to [`content_digest`] of the whole
/// file. `None` when the counts do not fit (`cvs.len() != len / bs`
/// rounded up, or `bs` not a [`cv_block_size`]).
pub fn merge_cvs(cvs: &[Cv], bs: u64, len: u64) -> Option<Digest32> {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_root, Mode};
    if !cv_block_size(bs) || len <= bs || cvs.len() as u64 != len.div_ceil(bs) {
        return None;
    }
    // Split where BLAKE3 splits: a power of two of chunks, so of blocks.
    let l = left_subtree_len(len);
    let n = (l / bs) as usize;
    let root = merge_subtrees_root(
        &merge_sub(&cvs[..n], bs, l),
        &merge_sub(&cvs[n..], bs, len - l),
        Mode::Hash,
    );
    Some(*root.as_bytes())
}

/// The chaining values of `big`-byte blocks from those of `bs`-byte blocks
/// of the same file (`big` a power-of-two multiple of `bs`): each bigger
/// block is the merge of the smaller ones it covers. `None` when `big` is
/// not such a multiple, or the file is not longer than one `big` block
/// (its one block digest is then its content digest).
pub fn regroup_cvs(cvs: &[Cv], bs: u64, big: u64, len: u64) -> Option<Vec<Cv>> {
    if !cv_block_size(bs)
        || !cv_block_size(big)
        || big < bs
        || len <= big
        || cvs.len() as u64 != len.div_ceil(bs)
    {
        return None;
    }
    if big == bs {
        return Some(cvs.to_vec());
    }
    let per = (big / bs) as usize;
    Some(
        cvs.chunks(per)
            .enumerate()
            .map(|(k, c)| {
                let off = k as u64 * big;
                let sub_len = (len - off).min(big);
                merge_sub(c, bs, sub_len)
            })
            .collect(),
    )
}

/// The chaining value of the subtree of `len` bytes (at a block boundary)
/// whose `bs`-byte blocks have the chaining values `cvs`: one block, or
/// the merge of its two halves as BLAKE3's left-balanced tree splits it.
fn merge_sub(cvs: &[Cv], bs: u64, len: u64) -> Cv {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, Mode};
    if cvs.len() == 1 {
        return cvs[0];
    }
    let l = left_subtree_len(len);
    let n = (l / bs) as usize;
    merge_subtrees_non_root(
        &merge_sub(&cvs[..n], bs, l),
        &merge_sub(&cvs[n..], bs, len - l),
        Mode::Hash,
    )
}

/// The first 16 bytes of each block digest: what the link carries
/// (`DiffItem::blocks`).
pub fn wire_digests(blocks: &[Cv]) -> Vec<[u8; 16]> {
    blocks
        .iter()
        .map(|b| b[..16].try_into().expect("16 bytes"))
        .collect()
}

/// A file's [`content_digest`] and, in the same read, its block digests
/// for `block_size`-byte blocks (a [`cv_block_size`]): for a file of more
/// than one block, the [`block_cv`] of each block, and the content digest
/// is their merge ([`merge_cvs`]), so each byte is hashed once; for a file
/// of at most one block, the content digest is the only block digest (an
/// empty file has none). The blocks of each read chunk (about 1 MiB) are
/// hashed in parallel (rayon): a big changed file is often the last thing
/// a scan waits for.
///
/// The link carries the first 16 bytes of each ([`wire_digests`]); caches
/// keep all 32 (the target merges them after a patch).
pub fn hash_file_blocks(path: &Path, block_size: u64) -> io::Result<(Digest32, Vec<Cv>)> {
    hash_blocks_of(&mut File::open(path)?, block_size)
}

/// [`hash_file_blocks`] of an open file (any reader), from its current
/// offset.
pub fn hash_blocks_of(r: &mut impl Read, block_size: u64) -> io::Result<(Digest32, Vec<Cv>)> {
    // One read buffer per thread (up to a chunk, 1 MiB): a fresh one per
    // file cost a 1 MiB allocation and its zeroing for every small changed
    // file of a difference mirror, on both sides. (A thread that takes up
    // another file while its blocks are hashed finds it borrowed: a fresh
    // one then.)
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => hash_blocks_with(r, block_size, &mut buf),
        Err(_) => hash_blocks_with(r, block_size, &mut Vec::new()),
    })
}

/// [`hash_blocks_of`] reading through `buf` (grown to a chunk as needed and
/// kept, so a caller hashing many files reuses one buffer).
pub fn hash_blocks_with(
    r: &mut impl Read,
    block_size: u64,
    buf: &mut Vec<u8>,
) -> io::Result<(Digest32, Vec<Cv>)> {
    use rayon::prelude::*;
    if !cv_block_size(block_size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("block size {block_size} is not a power of two of at least 1024"),
        ));
    }
    let bs = block_size as usize;
    let chunk = (BLOCK_CHUNK / bs).max(1) * bs;
    // The first block, and whether anything follows it, decide between a
    // file of one block (its plain digest) and one of several.
    if buf.len() < bs {
        buf.resize(bs, 0);
    }
    let got = fill(r, &mut buf[..bs])?;
    if got < bs {
        let d = content_digest(&buf[..got]);
        return Ok((d, if got == 0 { Vec::new() } else { vec![d] }));
    }
    let first = buf[..bs].to_vec();
    if buf.len() < chunk {
        buf.resize(chunk, 0);
    }
    let mut n = fill(r, &mut buf[..chunk])?;
    if n == 0 {
        let d = content_digest(&first);
        return Ok((d, vec![d]));
    }
    let mut cvs = vec![block_cv(&first, 0)];
    let mut off = bs as u64;
    while n > 0 {
        let base = off;
        let part: Vec<Cv> = buf[..n]
            .par_chunks(bs)
            .enumerate()
            .map(|(i, b)| block_cv(b, base + (i * bs) as u64))
            .collect();
        cvs.extend(part);
        off += n as u64;
        if n < chunk {
            break;
        }
        n = fill(r, &mut buf[..chunk])?;
    }
    let d = merge_cvs(&cvs, block_size, off).expect("as many blocks as bytes read");
    Ok((d, cvs))
}

/// Read into `buf` until it is full or the input ends; the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    /// The link's content digest is BLAKE3-256: the official test vectors
    /// (BLAKE3 repository, test_vectors.json: input byte i is i % 251),
    /// whole, incremental, and read from a file (sparse too).
    #[test]
    fn content_digest_is_blake3_256() {
        let input = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        let vectors = [
            (
                0usize,
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            ),
            (
                1,
                "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
            ),
            (
                1024,
                "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
            ),
            (
                1025,
                "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
            ),
            (
                102400,
                "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (n, want) in vectors {
            let d = input(n);
            assert_eq!(hex(&content_digest(&d)), want, "{n} bytes");
            let mut h = ContentHasher::new();
            d.chunks(1000).for_each(|c| {
                h.update(c);
            });
            assert_eq!(hex(&h.finalize()), want, "{n} bytes incrementally");
            let p = dir.path().join(format!("v{n}"));
            std::fs::write(&p, &d).unwrap();
            assert_eq!(content_file(&p, n as u64, None).unwrap().0, want);
            assert_eq!(hash_file_blocks(&p, 4096).unwrap().0, content_digest(&d));
        }
        // Holes hash as zeros, and differ from sha256's digest.
        let p = dir.path().join("sparse");
        let mut d = vec![0u8; 300_000];
        d[200_000..200_010].copy_from_slice(b"0123456789");
        std::fs::write(&p, &d).unwrap();
        let (got, read) = content_file(&p, d.len() as u64, Some(&[(200_000, 10)])).unwrap();
        assert_eq!((got.clone(), read), (hex(&content_digest(&d)), 10));
        assert_ne!(got, hash_file(&p, d.len() as u64, None).unwrap().0);
        // A file of one block: its block digest is its content digest's prefix.
        assert_eq!(block_digest(&d[..4096]), content_digest(&d[..4096])[..16]);
    }

    #[test]
    fn blocks_are_whole_across_chunks_and_the_last_may_be_short() {
        for (len, bs) in [
            (0usize, 4096u64),
            (10, 4096),
            (3 * BLOCK_CHUNK + 17, 3000),
            (2 * BLOCK_CHUNK, 4096),
            (5 << 20, 3 << 20),
        ] {
            let d = data(len);
            let mut got: Vec<Vec<u8>> = Vec::new();
            read_blocks(&mut &d[..], bs, |b| got.push(b.to_vec())).unwrap();
            let want: Vec<Vec<u8>> = d.chunks(bs as usize).map(<[u8]>::to_vec).collect();
            assert_eq!(got, want, "len {len} block {bs}");
        }
    }

    /// A reader that hands out at most `step` bytes per read (odd sizes).
    struct Odd<'a>(&'a [u8], usize);

    impl Read for Odd<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// One pass gives the content digest (the merge of the blocks'
    /// chaining values equals BLAKE3 of the whole) and the block digests
    /// (each block's chaining value at its offset; a file of one block has
    /// its content digest as its only block digest).
    #[test]
    fn the_merged_block_cvs_are_the_content_digest() {
        let dir = tempfile::tempdir().unwrap();
        for bs in [1024u64, 4096, 65536] {
            let b = bs as usize;
            let sizes = [
                0,
                1,
                1023,
                1024,
                1025,
                b - 1,
                b,
                b + 1,
                3 * b,
                7 * b + 5,
                BLOCK_CHUNK + b + 3,
            ];
            for len in sizes {
                let d = data(len);
                let want = content_digest(&d);
                let (got, blocks) = hash_blocks_of(&mut &d[..], bs).unwrap();
                assert_eq!(got, want, "len {len} block {bs}");
                if len as u64 > bs {
                    let cvs: Vec<Cv> = d
                        .chunks(b)
                        .enumerate()
                        .map(|(i, c)| block_cv(c, (i * b) as u64))
                        .collect();
                    assert_eq!(blocks, cvs, "len {len} block {bs}");
                    assert_eq!(merge_cvs(&cvs, bs, len as u64), Some(want));
                    assert_eq!(merge_cvs(&cvs[1..], bs, len as u64), None, "a count off");
                } else if len == 0 {
                    assert!(blocks.is_empty());
                } else {
                    assert_eq!(blocks, vec![want], "len {len}: one block");
                }
                // Read in odd pieces, or from a file: the same.
                for step in [1usize, 333, 4097, 1 << 20] {
                    if step == 1 && len > 70_000 {
                        continue;
                    }
                    let again = hash_blocks_of(&mut Odd(&d, step), bs).unwrap();
                    assert_eq!(again, (got, blocks.clone()), "len {len} step {step}");
                }
                let p = dir.path().join(format!("f{len}-{bs}"));
                std::fs::write(&p, &d).unwrap();
                assert_eq!(hash_file_blocks(&p, bs).unwrap(), (got, blocks.clone()));
                // Bigger blocks from smaller ones: as if hashed with them.
                for big in [bs * 2, bs * 8] {
                    let (_, direct) = hash_blocks_of(&mut &d[..], big).unwrap();
                    match regroup_cvs(&blocks, bs, big, len as u64) {
                        Some(r) => assert_eq!(r, direct, "len {len} {bs} -> {big}"),
                        None => assert!(len as u64 <= big, "len {len} {bs} -> {big}"),
                    }
                }
            }
        }
        // Not a power of two of at least 1 KiB: refused, no panic.
        assert!(hash_blocks_of(&mut &data(5000)[..], 3000).is_err());
        assert!(hash_blocks_of(&mut &data(5000)[..], 512).is_err());
    }

    /// The per-thread read buffer is taken again while in use (a rayon
    /// worker that picks up another file while its blocks are hashed): the
    /// inner hash gets a buffer of its own and both are right.
    #[test]
    fn hashing_blocks_inside_a_hash_of_blocks_uses_a_second_buffer() {
        struct Nested<'a>(&'a [u8], Option<(Digest32, usize)>);
        impl std::io::Read for Nested<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.1.is_none() {
                    let inner = data(5000);
                    let (d, cvs) = hash_blocks_of(&mut &inner[..], 1024).unwrap();
                    self.1 = Some((d, cvs.len()));
                }
                self.0.read(out)
            }
        }
        let outer = data(300_000);
        let mut r = Nested(&outer, None);
        let (d, cvs) = hash_blocks_of(&mut r, 4096).unwrap();
        assert_eq!(d, content_digest(&outer));
        assert_eq!(cvs.len(), 300_000usize.div_ceil(4096));
        assert_eq!(r.1, Some((content_digest(&data(5000)), 5)));
    }

    #[test]
    fn a_chaining_value_depends_on_its_offset_and_is_not_a_digest() {
        let block = data(4096);
        assert_ne!(block_cv(&block, 0), block_cv(&block, 4096));
        assert_ne!(block_cv(&block, 4096), block_cv(&block, 8192));
        assert_ne!(block_cv(&block, 0), content_digest(&block));
        // The wire keeps the first 16 bytes.
        let cvs = [block_cv(&block, 0), block_cv(&block, 4096)];
        assert_eq!(wire_digests(&cvs)[1], cvs[1][..16]);
        // A change inside one block changes only that block's value.
        let mut d = data(5 * 4096);
        let (before, a) = hash_blocks_of(&mut &d[..], 4096).unwrap();
        d[2 * 4096 + 7] ^= 1;
        let (after, b) = hash_blocks_of(&mut &d[..], 4096).unwrap();
        assert_ne!(before, after);
        let differ: Vec<usize> = (0..5).filter(|&i| a[i] != b[i]).collect();
        assert_eq!(differ, vec![2]);
    }
}
