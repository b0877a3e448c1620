//! Image archives: `NAME.tar.zst` (PAX tar + zstd, readable by GNU tar),
//! beside it `NAME.manifest.json` and `NAME.tar.zst.sha256`.
//!
//! [`build`] scans a root once: every regular file is read once, hashed
//! while it is written into the tar stream, and zstd compresses on its own
//! worker threads. All three outputs are written durably (temp file, fsync,
//! rename, fsync dir).

pub mod read;
pub mod sparse;
pub mod tar;
pub mod write;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::durable::DurableFile;
use crate::entry::Kind;
use crate::hash::HashingWriter;
use crate::manifest::{ManifestSummary, ManifestWriter};
use crate::progress::Progress;
use crate::scan::{ScanOptions, Scanner};

pub use read::TarReader;
pub use write::TarWriter;

/// How to build an archive.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub scan: ScanOptions,
    /// zstd level (1..=19); default 3.
    pub level: i32,
    /// zstd worker threads; 0 = one per CPU.
    pub threads: u32,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            scan: ScanOptions::default(),
            level: 3,
            threads: 0,
        }
    }
}

/// The files that make up one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePaths {
    pub archive: PathBuf,
    pub manifest: PathBuf,
    pub sha256: PathBuf,
}

impl ImagePaths {
    /// `NAME.tar.zst` → `NAME.manifest.json`, `NAME.tar.zst.sha256`.
    pub fn for_archive(archive: &Path) -> Self {
        let s = archive.as_os_str().to_string_lossy();
        let stem = s.strip_suffix(".tar.zst").unwrap_or(&s);
        let mut sha = archive.as_os_str().to_owned();
        sha.push(".sha256");
        Self {
            archive: archive.to_path_buf(),
            manifest: PathBuf::from(format!("{stem}.manifest.json")),
            sha256: PathBuf::from(sha),
        }
    }
}

/// What [`build`] made.
#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub paths: ImagePaths,
    /// Entries in the image (files, dirs, links, ...).
    pub entries: u64,
    /// Regular files (hardlink members counted once).
    pub files: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Size of the compressed archive.
    pub archive_bytes: u64,
    /// sha256 of the archive file.
    pub archive_sha256: String,
    /// Root digest of the tree (from the manifest).
    pub root_digest: String,
    #[serde(skip)]
    pub manifest: ManifestSummary,
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Build `archive` (and its manifest and `.sha256`) from the tree at `root`.
pub fn build(
    root: &Path,
    archive: &Path,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildSummary> {
    let paths = ImagePaths::for_archive(archive);
    if let Some(dir) = archive.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "output directory {} does not exist; create it first",
                dir.display()
            );
        }
    }
    let mut arch_file = DurableFile::create(&paths.archive)?;
    let mut man_file = DurableFile::create(&paths.manifest)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    } else {
        opts.threads
    };
    progress.phase("building archive", None, None);
    let (summary, files, archive_bytes, archive_sha256) = {
        let hashing = HashingWriter::new(Counting {
            inner: BufWriter::with_capacity(1 << 20, arch_file.file()),
            n: 0,
        });
        let mut enc =
            zstd::stream::write::Encoder::new(hashing, opts.level).context("starting zstd")?;
        enc.multithread(threads)
            .context("starting zstd worker threads")?;
        enc.include_checksum(true)?;
        let mut tar = TarWriter::new(BufWriter::with_capacity(1 << 20, enc));
        let mut man = ManifestWriter::new(BufWriter::with_capacity(1 << 20, man_file.file()))?;
        let mut files = 0u64;
        for item in Scanner::new(root, &opts.scan, progress)? {
            let mut s = item?;
            let mut content = None;
            if s.entry.kind == Kind::File && s.entry.link.is_none() {
                match File::open(&s.abs) {
                    Ok(f) => content = Some(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        progress.note(&format!(
                            "{} vanished while archiving; left out",
                            s.abs.display()
                        ));
                        continue;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("opening {}", s.abs.display()))
                    }
                }
            }
            let sha = tar
                .append(&s.entry, content.as_mut())
                .with_context(|| format!("archiving {}", s.abs.display()))?;
            if sha.is_some() {
                files += 1;
            }
            s.entry.sha256 = sha;
            man.add(&s.entry)?;
            progress.advance(
                if files > 0 && s.entry.sha256.is_some() {
                    s.entry.size
                } else {
                    0
                },
                1,
            );
        }
        let buf = tar.finish().context("finishing archive")?;
        let enc = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing archive")?;
        let hashing = enc.finish().context("finishing zstd stream")?;
        let (mut counting, digest) = hashing.finish();
        counting.flush().context("writing archive")?;
        let (summary, mut mbuf) = man.finish()?;
        mbuf.flush().context("writing manifest")?;
        (summary, files, counting.n, digest)
    };
    progress.finish();
    man_file.commit()?;
    arch_file.commit()?;
    let name = paths
        .archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::durable::write_file(
        &paths.sha256,
        format!("{archive_sha256}  {name}\n").as_bytes(),
    )?;
    Ok(BuildSummary {
        paths,
        entries: summary.entry_count,
        files,
        bytes: summary.total_bytes,
        archive_bytes,
        archive_sha256,
        root_digest: summary.root_digest.clone(),
        manifest: summary,
    })
}

/// Read the digest from `NAME.tar.zst.sha256` (`sha256sum` format).
pub fn read_sha256_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {}; it is written beside the archive by `standin image build`",
            path.display()
        )
    })?;
    let hexd = text.split_whitespace().next().unwrap_or("");
    if hexd.len() != 64 || !hexd.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("{} does not hold a sha256 digest", path.display());
    }
    Ok(hexd.to_ascii_lowercase())
}

/// sha256 (hex) of a whole file.
pub fn sha256_of(path: &Path, progress: &dyn Progress) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).ok();
    progress.phase("checking archive digest", len, None);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        progress.advance(n as u64, 0);
    }
    progress.finish();
    Ok(hex::encode(h.finalize()))
}

/// Check an archive against its `.sha256` file; error names both digests.
pub fn check_sha256(paths: &ImagePaths, progress: &dyn Progress) -> Result<()> {
    let want = read_sha256_file(&paths.sha256)?;
    let got = sha256_of(&paths.archive, progress)?;
    if want != got {
        bail!(
            "archive {} is damaged or was changed: its sha256 is {got} but {} says {want}",
            paths.archive.display(),
            paths.sha256.display()
        );
    }
    Ok(())
}

/// Open an archive for streaming reads (zstd-decompressed tar).
pub fn open(
    archive: &Path,
) -> Result<TarReader<zstd::stream::read::Decoder<'static, BufReader<File>>>> {
    let f =
        File::open(archive).with_context(|| format!("opening archive {}", archive.display()))?;
    let dec = zstd::stream::read::Decoder::new(f).context("starting zstd decoder")?;
    Ok(TarReader::new(dec))
}
