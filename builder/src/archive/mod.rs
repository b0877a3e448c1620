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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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
    // Our own temp files may live inside the root: never archive them.
    let own: Vec<(u64, u64)> = [arch_file.file().metadata(), man_file.file().metadata()]
        .into_iter()
        .filter_map(|m| m.ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let stop = AtomicBool::new(false);
    let (summary, files, archive_bytes, archive_sha256) =
        std::thread::scope(|scope| -> Result<_> {
            if progress.wants_totals() {
                scope.spawn(|| count_ahead(root, &opts.scan, progress, &stop));
            }
            let r = archive_tree(
                root,
                opts,
                threads,
                &own,
                arch_file.file(),
                man_file.file(),
                progress,
            );
            stop.store(true, Ordering::Relaxed);
            r
        })?;
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

type Built = (ManifestSummary, u64, u64, String);

fn archive_tree(
    root: &Path,
    opts: &BuildOptions,
    threads: u32,
    own: &[(u64, u64)],
    arch_out: &mut File,
    man_out: &mut File,
    progress: &dyn Progress,
) -> Result<Built> {
    let hashing = HashingWriter::new(Counting {
        inner: BufWriter::with_capacity(1 << 20, arch_out),
        n: 0,
    });
    let mut enc =
        zstd::stream::write::Encoder::new(hashing, opts.level).context("starting zstd")?;
    enc.multithread(threads)
        .context("starting zstd worker threads")?;
    enc.include_checksum(true)?;
    let mut tar = TarWriter::new(BufWriter::with_capacity(1 << 20, enc));
    let mut man = ManifestWriter::new(BufWriter::with_capacity(1 << 20, man_out))?;
    let mut files = 0u64;
    for item in Scanner::new(root, &opts.scan, progress)? {
        let mut s = item?;
        let mut content = None;
        if s.entry.kind == Kind::File && s.entry.link.is_none() {
            match File::open(&s.abs) {
                Ok(f) => {
                    let md = f
                        .metadata()
                        .with_context(|| format!("reading {}", s.abs.display()))?;
                    if own.contains(&(md.dev(), md.ino())) {
                        continue;
                    }
                    content = Some(f)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    progress.note(&format!(
                        "{} vanished while archiving; left out",
                        s.abs.display()
                    ));
                    continue;
                }
                Err(e) => {
                    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        "; run as root to image every file"
                    } else {
                        ""
                    };
                    return Err(e).with_context(|| format!("opening {}{hint}", s.abs.display()));
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
    Ok((summary, files, counting.n, digest))
}

/// Count files and bytes ahead of the build (for an ETA), in the background.
fn count_ahead(root: &Path, opts: &ScanOptions, progress: &dyn Progress, stop: &AtomicBool) {
    if let Some(t) = crate::count::count_tree(root, opts, stop) {
        progress.totals(Some(t.bytes), Some(t.entries));
    }
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

/// The zstd stream of an archive, with decoder errors explained.
pub struct Decompressed {
    inner: zstd::stream::read::Decoder<'static, BufReader<File>>,
}

impl Read for Decompressed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let msg = e.to_string();
            let what = if msg.contains("incomplete frame") {
                "the archive is truncated; it was cut off while being written or copied".to_string()
            } else {
                format!("the archive is damaged (zstd: {msg})")
            };
            std::io::Error::new(std::io::ErrorKind::InvalidData, what)
        })
    }
}

/// Open an archive for streaming reads (zstd-decompressed tar).
pub fn open(archive: &Path) -> Result<TarReader<Decompressed>> {
    let f =
        File::open(archive).with_context(|| format!("opening archive {}", archive.display()))?;
    let inner = zstd::stream::read::Decoder::new(f).context("starting zstd decoder")?;
    Ok(TarReader::new(Decompressed { inner }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Entry, Xattr};
    use std::collections::BTreeMap;

    fn entry(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            xattrs: BTreeMap::new(),
            target: None,
            link: None,
            rdev: None,
            sparse: None,
            sha256: None,
        }
    }

    #[test]
    fn tar_writer_and_reader_round_trip_odd_entries() {
        let t = tempfile::tempdir().unwrap();
        // A sparse file of 64 MiB with one small island.
        let sparse_path = t.path().join("sparse");
        let mut f = File::create(&sparse_path).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(b"island").unwrap();
        drop(f);
        let plain_path = t.path().join("plain");
        std::fs::write(&plain_path, b"hello").unwrap();

        let mut root = entry(b"", Kind::Dir);
        root.mtime_ns = -1_000_000_123;
        let long: Vec<u8> = [&b"d/"[..], &[b'x'; 150][..], b"\xff\n"].concat();
        let mut file = entry(&long, Kind::File);
        file.size = 5;
        file.uid = 3_000_000;
        file.gid = 4_000_000;
        file.mtime_ns = 4_102_444_800_123_456_789;
        file.xattrs
            .insert(Xattr(b"user.a=b%".to_vec()), Xattr(vec![0, b'\n', 0xff]));
        let mut sp = entry(b"s", Kind::File);
        sp.size = 64 << 20;
        sp.sparse = Some(vec![(32 << 20, 4096)]);
        let mut link = entry(b"t", Kind::File);
        link.link = Some(b"s".to_vec());
        let mut sym = entry(b"u", Kind::Symlink);
        sym.target = Some(vec![b'y'; 200]);
        sym.size = 200;
        let mut dev = entry(b"v", Kind::Block);
        dev.rdev = Some((259, 1_048_575));
        let fifo = entry(b"w", Kind::Fifo);

        let mut tw = TarWriter::new(Vec::new());
        let mut pf = File::open(&plain_path).unwrap();
        let mut sf = File::open(&sparse_path).unwrap();
        tw.append(&root, None).unwrap();
        let h1 = tw.append(&file, Some(&mut pf)).unwrap().unwrap();
        let h2 = tw.append(&sp, Some(&mut sf)).unwrap().unwrap();
        for e in [&link, &sym, &dev, &fifo] {
            assert!(tw.append(e, None).unwrap().is_none());
        }
        let data = tw.finish().unwrap();
        assert!(data.len() < 64 << 10, "sparse data was stored in full");
        let (want_h2, _) =
            crate::hash::hash_file(&sparse_path, sp.size, sp.sparse.as_deref()).unwrap();
        assert_eq!(h2, want_h2);

        let mut r = TarReader::new(&data[..]);
        let mut got = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut content = Vec::new();
            r.read_to_end(&mut content).unwrap();
            got.push((e, content));
        }
        assert_eq!(got.len(), 7);
        assert_eq!(got[0].0, root);
        assert_eq!(got[1].0, file);
        assert_eq!(got[1].1, b"hello");
        assert_eq!(got[2].0, sp);
        assert_eq!(got[2].1.len(), 4096);
        assert_eq!(&got[2].1[..6], b"island");
        assert_eq!(got[3].0.link.as_deref(), Some(&b"s"[..]));
        assert_eq!(got[4].0, sym);
        assert_eq!(got[5].0, dev);
        assert_eq!(got[6].0, fifo);
        assert_ne!(h1, h2);
        // Cut-off data is an error, never a silent end.
        let mut r = TarReader::new(&data[..1500]);
        let mut err = None;
        for _ in 0..8 {
            match r.next_entry() {
                Ok(Some(_)) => {
                    let mut sink = Vec::new();
                    if let Err(e) = r.read_to_end(&mut sink) {
                        err = Some(e);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(err
            .expect("truncation detected")
            .to_string()
            .contains("truncated"));
    }
}
