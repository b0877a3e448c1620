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
/// for an empty input) and hand each to `each`.
pub fn read_blocks(
    r: &mut impl Read,
    block_size: u64,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; block_size.max(1) as usize];
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
    }
}

/// The first 16 bytes of a block's sha256: what a checksum mirror compares.
pub fn block_digest(block: &[u8]) -> [u8; 16] {
    Sha256::digest(block)[..16].try_into().expect("16 bytes")
}

/// A file's sha256 and, in the same read, the [`block_digest`] of each
/// `block_size`-byte block: so a changed file is read once for both.
///
/// A file of more than one read buffer (4 MiB) is read a buffer at a time,
/// and each buffer's whole-file update and block digests are computed at
/// the same time on two threads (`rayon::join`): the two hashes of a large
/// changed file take about half the wall time when a CPU is free.
pub fn hash_file_blocks(path: &Path, block_size: u64) -> io::Result<([u8; 32], Vec<[u8; 16]>)> {
    let mut file = File::open(path)?;
    let bs = block_size.max(1) as usize;
    let size = file.metadata()?.len();
    let per_read = (PAIR_READ / bs).max(1) * bs;
    if size <= per_read as u64 {
        let mut whole = Sha256::new();
        let mut blocks = Vec::new();
        read_blocks(&mut file, block_size, |b| {
            whole.update(b);
            blocks.push(block_digest(b));
        })?;
        return Ok((whole.finalize().into(), blocks));
    }
    PAIR_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < per_read {
            buf.resize(per_read, 0);
        }
        let buf = &mut buf[..per_read];
        let mut whole = Sha256::new();
        let mut blocks = Vec::with_capacity(size.div_ceil(bs as u64) as usize);
        // Buffers of whole blocks: a block never spans two reads.
        loop {
            let mut got = 0;
            while got < buf.len() {
                match file.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let b = &buf[..got];
            let mut part = Vec::new();
            rayon::join(
                || whole.update(b),
                || part.extend(b.chunks(bs).map(block_digest)),
            );
            blocks.append(&mut part);
            if got < buf.len() {
                return Ok((whole.finalize().into(), blocks));
            }
        }
    })
}

/// Read size of [`hash_file_blocks`] for a large file.
const PAIR_READ: usize = 4 << 20;

thread_local! {
    /// [`hash_file_blocks`]'s read buffer, reused by each thread (a fresh
    /// buffer per file costs its first-touch page faults every time).
    static PAIR_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod pair_tests {
    use super::*;

    /// The reference: one read, whole-file sha256 and each block's digest.
    fn reference(data: &[u8], bs: usize) -> ([u8; 32], Vec<[u8; 16]>) {
        (
            Sha256::digest(data).into(),
            data.chunks(bs).map(block_digest).collect(),
        )
    }

    #[test]
    fn hash_file_blocks_of_large_files_on_two_threads_equals_one_read() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        for (size, bs) in [
            (0usize, 4096usize),
            (10_000, 4096),
            (PAIR_READ, 4096),
            (PAIR_READ + 1, 4096),
            (3 * PAIR_READ - 7, 4096),
            (9_000_001, 131_072),
            (9_000_001, 3 << 20),
            (2 * PAIR_READ + 5, 5 << 20),
        ] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(&p, &data).unwrap();
            let got = hash_file_blocks(&p, bs as u64).unwrap();
            assert!(got == reference(&data, bs), "size {size}, block {bs}");
        }
    }
}

#[cfg(test)]
mod pair_timing {
    /// Wall time of `hash_file_blocks` on the files named in
    /// `STANDIN_HASH_FILES` (space-separated), on two threads and as one
    /// read: `cargo test --release -p standin-builder pair_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn pair_timing() {
        use sha2::Digest;
        let files = std::env::var("STANDIN_HASH_FILES").unwrap_or_default();
        for round in 0..3 {
            let t0 = std::time::Instant::now();
            for f in files.split_whitespace() {
                super::hash_file_blocks(std::path::Path::new(f), 131_072).unwrap();
            }
            let pair = t0.elapsed();
            let t0 = std::time::Instant::now();
            for f in files.split_whitespace() {
                let mut file = std::fs::File::open(f).unwrap();
                let mut whole = sha2::Sha256::new();
                let mut blocks = Vec::new();
                super::read_blocks(&mut file, 131_072, |b| {
                    whole.update(b);
                    blocks.push(super::block_digest(b));
                })
                .unwrap();
            }
            eprintln!(
                "round {round}: two threads {} ms, one read {} ms",
                pair.as_millis(),
                t0.elapsed().as_millis()
            );
        }
    }
}
