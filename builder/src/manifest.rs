//! Manifests: one [`Entry`] per path in tree order, each regular file with
//! its sha256, plus a root digest over all entries (two trees are equal
//! exactly when their root digests are).
//!
//! File layout (`NAME.manifest.json`), written and read streaming:
//!
//! ```text
//! {"format":"standin-manifest","version":1,"tool":"standin 0.1.0",
//! "entries":[
//! {"path":"","type":"dir",...},
//! ...
//! ],
//! "entry_count":N,"total_bytes":B,"root_digest":"<hex>"}
//! ```
//!
//! The summary comes last so the writer never holds the tree; the reader
//! recomputes the root digest while it streams and reports an edited
//! manifest when they differ.
//!
//! ## Root digest encoding (version 1)
//!
//! sha256 over the bytes `b"standin-tree-v1\0"`, then for each entry in tree
//! order its canonical encoding, then the entry count as u64. Integers are
//! little-endian; `bytes(x)` is `u64 len` followed by the bytes; `opt(x)` is
//! `u8 0` for none or `u8 1` followed by x:
//!
//! ```text
//! bytes(path) u8 kind(file=0,dir=1,symlink=2,fifo=3,char=4,block=5)
//! u32 mode u32 uid u32 gid i64 mtime_ns u64 size
//! u64 n_xattrs { bytes(name) bytes(value) }*   (sorted by name)
//! opt(bytes(target)) opt(bytes(link)) opt(u32 major u32 minor)
//! opt(u64 n { u64 offset u64 length }*) opt(32 raw bytes sha256)
//! ```

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest_table::Stamp;
use crate::entry::{path_cmp, Entry, Kind};
use crate::progress::Progress;
use crate::scan::{ScanOptions, Scanned, Scanner};

/// The manifest format name written in every manifest.
pub const FORMAT: &str = "standin-manifest";
/// The manifest format version this build writes and reads.
pub const VERSION: u32 = 1;

/// The tool version string written into manifests.
pub fn tool_version() -> String {
    format!("standin {}", env!("CARGO_PKG_VERSION"))
}

/// What a manifest says about its tree as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSummary {
    pub format: String,
    pub version: u32,
    pub tool: String,
    pub entry_count: u64,
    /// Sum of the sizes of regular files (hardlinks counted once).
    pub total_bytes: u64,
    /// Lowercase hex sha256 over all entries (see the module docs).
    pub root_digest: String,
}

/// Incremental root digest over entries in tree order.
#[derive(Clone)]
pub struct RootDigest {
    hasher: Sha256,
    count: u64,
    total_bytes: u64,
}

impl Default for RootDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl RootDigest {
    /// Start a digest.
    pub fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"standin-tree-v1\0");
        Self {
            hasher,
            count: 0,
            total_bytes: 0,
        }
    }

    /// Add the next entry (in tree order).
    pub fn add(&mut self, e: &Entry) {
        let h = &mut self.hasher;
        feed(e, &mut |b: &[u8]| h.update(b));
        self.count += 1;
        if e.kind == Kind::File && e.link.is_none() {
            self.total_bytes += e.size;
        }
    }

    /// The bytes [`RootDigest::add`] hashes for `e` (its canonical
    /// encoding), to add later with [`RootDigest::add_canonical`].
    pub fn canonical(e: &Entry) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + e.path.len());
        feed(e, &mut |b: &[u8]| out.extend_from_slice(b));
        out
    }

    /// Add an entry by its [`RootDigest::canonical`] bytes; `file_bytes`
    /// is its size when it is a regular file that is not a hard link to
    /// an earlier path, else 0. Same result as [`RootDigest::add`].
    pub fn add_canonical(&mut self, bytes: &[u8], file_bytes: u64) {
        self.hasher.update(bytes);
        self.count += 1;
        self.total_bytes += file_bytes;
    }

    /// Entries added so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Finish: `(hex digest, entry count, total bytes)`.
    pub fn finish(self) -> (String, u64, u64) {
        let mut h = self.hasher;
        h.update(self.count.to_le_bytes());
        (hex::encode(h.finalize()), self.count, self.total_bytes)
    }
}

/// Feed `e`'s canonical encoding (module docs) to `h`.
fn feed(e: &Entry, h: &mut dyn FnMut(&[u8])) {
    let bytes = |h: &mut dyn FnMut(&[u8]), b: &[u8]| {
        h(&(b.len() as u64).to_le_bytes());
        h(b);
    };
    bytes(h, &e.path);
    h(&[kind_code(e.kind)]);
    h(&e.mode.to_le_bytes());
    h(&e.uid.to_le_bytes());
    h(&e.gid.to_le_bytes());
    h(&e.mtime_ns.to_le_bytes());
    h(&e.size.to_le_bytes());
    h(&(e.xattrs.len() as u64).to_le_bytes());
    for (k, v) in &e.xattrs {
        bytes(h, &k.0);
        bytes(h, &v.0);
    }
    for opt in [&e.target, &e.link] {
        match opt {
            None => h(&[0]),
            Some(b) => {
                h(&[1]);
                bytes(h, b);
            }
        }
    }
    match e.rdev {
        None => h(&[0]),
        Some((ma, mi)) => {
            h(&[1]);
            h(&ma.to_le_bytes());
            h(&mi.to_le_bytes());
        }
    }
    match &e.sparse {
        None => h(&[0]),
        Some(ext) => {
            h(&[1]);
            h(&(ext.len() as u64).to_le_bytes());
            for (o, l) in ext {
                h(&o.to_le_bytes());
                h(&l.to_le_bytes());
            }
        }
    }
    match &e.sha256 {
        None => h(&[0]),
        Some(hexd) => {
            h(&[1]);
            let raw = hex::decode(hexd).unwrap_or_else(|_| hexd.as_bytes().to_vec());
            h(&raw);
        }
    }
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Fifo => 3,
        Kind::Char => 4,
        Kind::Block => 5,
    }
}

/// Streaming manifest writer.
pub struct ManifestWriter<W: Write> {
    out: W,
    digest: RootDigest,
    last: Option<Vec<u8>>,
}

impl<W: Write> ManifestWriter<W> {
    /// Write the header.
    pub fn new(mut out: W) -> Result<Self> {
        write!(
            out,
            "{{\"format\":{},\"version\":{VERSION},\"tool\":{},\n\"entries\":[",
            serde_json::to_string(FORMAT)?,
            serde_json::to_string(&tool_version())?
        )
        .context("writing manifest header")?;
        Ok(Self {
            out,
            digest: RootDigest::new(),
            last: None,
        })
    }

    /// Append the next entry; entries must come in tree order.
    pub fn add(&mut self, e: &Entry) -> Result<()> {
        if let Some(last) = &self.last {
            if path_cmp(last, &e.path) != std::cmp::Ordering::Less {
                bail!("manifest entry {} is out of tree order", e.display_path());
            }
        }
        let sep = if self.last.is_some() { ",\n" } else { "\n" };
        self.out.write_all(sep.as_bytes())?;
        serde_json::to_writer(&mut self.out, e).context("writing manifest entry")?;
        self.digest.add(e);
        self.last = Some(e.path.clone());
        Ok(())
    }

    /// Write the summary; returns it and the writer.
    pub fn finish(mut self) -> Result<(ManifestSummary, W)> {
        let (root_digest, entry_count, total_bytes) = self.digest.finish();
        write!(
            self.out,
            "\n],\n\"entry_count\":{entry_count},\"total_bytes\":{total_bytes},\"root_digest\":\"{root_digest}\"}}\n"
        )
        .context("writing manifest summary")?;
        self.out.flush()?;
        Ok((
            ManifestSummary {
                format: FORMAT.into(),
                version: VERSION,
                tool: tool_version(),
                entry_count,
                total_bytes,
                root_digest,
            },
            self.out,
        ))
    }
}

/// Scan a tree and hash its regular files in parallel (bounded batches,
/// results kept in tree order); call `each` with every finished entry in
/// tree order. Returns the tree's summary.
pub fn scan_tree(
    root: &Path,
    opts: &ScanOptions,
    progress: &dyn Progress,
    each: impl FnMut(&Entry) -> Result<()>,
) -> Result<ManifestSummary> {
    let digest_of = |s: &Scanned| -> Result<String> {
        let (h, _) = crate::hash::hash_file(&s.abs, s.entry.size, s.entry.sparse.as_deref())
            .with_context(|| format!("hashing {}", s.abs.display()))?;
        Ok(h)
    };
    let mut each = each;
    scan_tree_with(
        root,
        opts,
        progress,
        &mut |_| Ok(()),
        &digest_of,
        &mut |s| each(&s.entry),
    )
}

/// The root digest a mirror compares: [`scan_tree`], but each regular
/// file's `sha256` field holds the link's content digest (BLAKE3-256,
/// [`crate::hash::content_digest`]) instead of its sha256. Both sides of a
/// mirror compute this one; a manifest's root digest (sha256 per file) of
/// the same tree differs.
pub fn scan_tree_mirror(
    root: &Path,
    opts: &ScanOptions,
    progress: &dyn Progress,
    mut each: impl FnMut(&Entry) -> Result<()>,
) -> Result<ManifestSummary> {
    scan_tree_mirror_scanned(root, opts, progress, &|_| None, |s| each(&s.entry))
}

/// [`scan_tree_mirror`] (link content digests, not sha256), where
/// `known(stamp)` may supply the content digest of a regular file the
/// caller already hashed and knows unchanged, giving `each` the whole
/// [`Scanned`] (with the entry's inode).
pub fn scan_tree_mirror_scanned(
    root: &Path,
    opts: &ScanOptions,
    progress: &dyn Progress,
    known: &(dyn Fn(&Stamp) -> Option<[u8; 32]> + Sync),
    each: impl FnMut(&Scanned) -> Result<()>,
) -> Result<ManifestSummary> {
    let digest_of = |s: &Scanned| -> Result<String> {
        if let Some(h) = s.stamp.as_ref().and_then(known) {
            return Ok(crate::hash::hex(&h));
        }
        let (h, _) = crate::hash::content_file(&s.abs, s.entry.size, s.entry.sparse.as_deref())
            .with_context(|| format!("hashing {}", s.abs.display()))?;
        Ok(h)
    };
    let mut each = each;
    scan_tree_with(
        root,
        opts,
        progress,
        &mut |_| Ok(()),
        &digest_of,
        &mut |s| each(s),
    )
}

pub use crate::scan_cached::{scan_tree_cached, CacheCounts, CachedScan, FileBlocks};

/// The scan loop: `prepare` sees each batch first, in tree order, on the
/// calling thread (it may fill in `sha256`); `digest_of` gives the digest
/// (hex: sha256 for a manifest, the link's content digest for a mirror)
/// of each regular file still without one, in parallel; `each` gets
/// every finished entry in tree order.
pub(crate) fn scan_tree_with(
    root: &Path,
    opts: &ScanOptions,
    progress: &dyn Progress,
    prepare: &mut dyn FnMut(&mut [Scanned]) -> Result<()>,
    digest_of: &(dyn Fn(&Scanned) -> Result<String> + Sync),
    each: &mut dyn FnMut(&Scanned) -> Result<()>,
) -> Result<ManifestSummary> {
    const MAX_ITEMS: usize = 2048;
    const MAX_BYTES: u64 = 256 << 20;
    let scanner = Scanner::new(root, opts, progress)?;
    let mut digest = RootDigest::new();
    let mut batch: Vec<Scanned> = Vec::with_capacity(MAX_ITEMS);
    let mut batch_bytes = 0u64;
    let mut flush = |batch: &mut Vec<Scanned>, digest: &mut RootDigest| -> Result<()> {
        prepare(batch)?;
        batch
            .par_iter_mut()
            .filter(|s| s.entry.kind == Kind::File && s.entry.link.is_none())
            .try_for_each(|s| -> Result<()> {
                if s.entry.sha256.is_none() {
                    s.entry.sha256 = Some(digest_of(s)?);
                }
                progress.advance(s.entry.size, 1);
                Ok(())
            })?;
        for s in batch.drain(..) {
            if !(s.entry.kind == Kind::File && s.entry.link.is_none()) {
                progress.advance(0, 1);
            }
            digest.add(&s.entry);
            each(&s)?;
        }
        Ok(())
    };
    for item in scanner {
        let s = item?;
        if s.entry.kind == Kind::File && s.entry.link.is_none() {
            batch_bytes += s.entry.size;
        }
        batch.push(s);
        if batch.len() >= MAX_ITEMS || batch_bytes >= MAX_BYTES {
            flush(&mut batch, &mut digest)?;
            batch_bytes = 0;
        }
    }
    flush(&mut batch, &mut digest)?;
    let (root_digest, entry_count, total_bytes) = digest.finish();
    Ok(ManifestSummary {
        format: FORMAT.into(),
        version: VERSION,
        tool: tool_version(),
        entry_count,
        total_bytes,
        root_digest,
    })
}

/// Scan `root` and write its manifest to `out` durably.
pub fn write_manifest(
    root: &Path,
    opts: &ScanOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ManifestSummary> {
    let mut file = crate::durable::DurableFile::create(out)?;
    let summary = {
        let mut w = ManifestWriter::new(BufWriter::with_capacity(1 << 20, file.file()))?;
        scan_tree(root, opts, progress, |e| w.add(e))?;
        let (summary, mut buf) = w.finish()?;
        buf.flush()?;
        summary
    };
    file.commit()?;
    Ok(summary)
}

pub use crate::manifest_read::{read_summary, ManifestReader};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn manifest_round_trips_and_detects_edits() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "h\n").unwrap();
        std::fs::write(root.join("etc/odd\nname\\x"), "o").unwrap();
        let out = t.path().join("m.manifest.json");
        let s = write_manifest(&root, &ScanOptions::default(), &out, &NoProgress).unwrap();
        assert_eq!(s.entry_count, 4);
        assert_eq!(s.total_bytes, 3);
        let again = scan_tree(&root, &ScanOptions::default(), &NoProgress, |_| Ok(())).unwrap();
        assert_eq!(again.root_digest, s.root_digest, "deterministic");
        let entries: Vec<Entry> = ManifestReader::open(&out)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(entries.len(), 4);
        assert_eq!(read_summary(&out).unwrap(), s);
        // Any change to a file changes the root digest.
        std::fs::write(root.join("etc/hostname"), "H\n").unwrap();
        let changed = scan_tree(&root, &ScanOptions::default(), &NoProgress, |_| Ok(())).unwrap();
        assert_ne!(changed.root_digest, s.root_digest);
        // An edited manifest is detected.
        let text = std::fs::read_to_string(&out).unwrap();
        std::fs::write(&out, text.replace("\"size\":2", "\"size\":3")).unwrap();
        let err = read_summary(&out).unwrap_err().to_string();
        assert!(err.contains("edited"), "{err}");
        std::fs::write(&out, &text[..text.len() / 2]).unwrap();
        assert!(read_summary(&out).is_err());
    }
}
