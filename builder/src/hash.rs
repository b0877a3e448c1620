//! Hashing helpers: sha256 of files (sparse-aware), and `Read`/`Write`
//! adapters that hash what passes through them.

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

/// Feed `len` zero bytes into a hasher (the holes of a sparse file).
pub fn hash_zeros(hasher: &mut Sha256, mut len: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// sha256 (hex) of a whole file's content. For a sparse file pass its data
/// extents: only those are read, holes hash as zeros. Returns the digest and
/// the number of bytes actually read.
pub fn hash_file(
    path: &Path,
    size: u64,
    sparse: Option<&[(u64, u64)]>,
) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE.min(size.max(1) as usize).max(4096)];
    let mut read_total = 0u64;
    match sparse {
        None => loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            read_total += n as u64;
        },
        Some(extents) => {
            let mut pos = 0u64;
            for &(off, len) in extents {
                hash_zeros(&mut hasher, off - pos);
                let mut r = crate::archive::sparse::ExtentReader::new(&mut file, off, len)?;
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                read_total += len;
                pos = off + len;
            }
            hash_zeros(&mut hasher, size.saturating_sub(pos));
        }
    }
    Ok((hex(&hasher.finalize()), read_total))
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
        let mut got = 0;
        while got < buf.len() {
            match r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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

/// The first 16 bytes of a block's BLAKE3 digest: what a checksum mirror
/// compares. BLAKE3, not sha256, because a changed large file is hashed
/// twice in the same read (its whole sha256 for the manifest, and these),
/// and the target reads its whole copy for them: BLAKE3 is 2-3x faster per
/// byte on the same CPU (measured 2.5 vs 1.1 GB/s on 8 KiB blocks, AVX-512)
/// and as collision-resistant; the whole sha256 is still checked after a
/// patch.
pub fn block_digest(block: &[u8]) -> [u8; 16] {
    blake3::hash(block).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

/// A file's sha256 and, in the same read, the [`block_digest`] of each
/// `block_size`-byte block: so a changed file is read once for both.
/// The two hashes of each ~1 MiB chunk run side by side (`rayon::join`):
/// a big changed file is often the last thing a scan waits for.
pub fn hash_file_blocks(path: &Path, block_size: u64) -> io::Result<([u8; 32], Vec<[u8; 16]>)> {
    let mut file = File::open(path)?;
    let bs = block_size.max(1) as usize;
    let mut whole = Sha256::new();
    let mut blocks = Vec::new();
    read_block_chunks(&mut file, block_size, |chunk| {
        rayon::join(
            || whole.update(chunk),
            || blocks.extend(chunk.chunks(bs).map(block_digest)),
        );
    })?;
    Ok((whole.finalize().into(), blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4099) as u8).collect()
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

    #[test]
    fn a_file_and_its_blocks_are_hashed_as_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        for (len, bs) in [
            (0usize, 1024u64),
            (3 * BLOCK_CHUNK + 5, 16384),
            (100_000, 3000),
        ] {
            let d = data(len);
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &d).unwrap();
            let (sha, blocks) = hash_file_blocks(&p, bs).unwrap();
            assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&d)));
            let want: Vec<[u8; 16]> = d.chunks(bs as usize).map(block_digest).collect();
            assert_eq!(blocks, want, "len {len} block {bs}");
        }
    }
}
