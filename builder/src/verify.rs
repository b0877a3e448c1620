//! `image verify`: the archive's digest against its `.sha256`, the
//! manifest's root digest against its entries, and every archive entry
//! (content sha256 and metadata) against the manifest.

use std::io::{self, Read};
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::{self, ImagePaths};
use crate::compare::{entry_diff, Comparer, Differences};
use crate::entry::{Entry, Kind};
use crate::hash::hash_zeros;
use crate::manifest::ManifestReader;
use crate::progress::Progress;

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub paths: ImagePaths,
    /// Entries read from the archive.
    pub entries: u64,
    /// Regular files whose content was hashed.
    pub files: u64,
    /// Bytes of file content hashed.
    pub bytes: u64,
    /// The manifest's root digest (when the manifest is intact).
    pub root_digest: Option<String>,
    /// Problems with the image as a whole (digest, damaged manifest, truncation).
    pub problems: Vec<String>,
    /// Entries that differ from the manifest, by path.
    pub differences: Differences,
}

impl VerifyReport {
    /// True when the image is intact.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.differences.is_empty()
    }
}

/// Hash an entry's data from a tar reader (holes of sparse files as zeros).
pub fn hash_data<R: Read>(r: &mut R, e: &Entry) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; (e.size.clamp(4096, 1 << 20)) as usize];
    let mut take = |r: &mut R, mut n: u64, h: &mut Sha256| -> io::Result<()> {
        while n > 0 {
            let want = buf.len().min(n as usize);
            let got = r.read(&mut buf[..want])?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "data ends early",
                ));
            }
            h.update(&buf[..got]);
            n -= got as u64;
        }
        Ok(())
    };
    match &e.sparse {
        Some(ext) => {
            let mut pos = 0;
            for &(o, l) in ext {
                hash_zeros(&mut h, o.saturating_sub(pos));
                take(r, l, &mut h)?;
                pos = o + l;
            }
            hash_zeros(&mut h, e.size.saturating_sub(pos));
        }
        None => take(r, e.size, &mut h)?,
    }
    Ok(hex::encode(h.finalize()))
}

/// Verify an image (archive, manifest and `.sha256` beside it).
pub fn verify(archive_path: &Path, progress: &dyn Progress) -> Result<VerifyReport> {
    let paths = ImagePaths::for_archive(archive_path);
    let mut report = VerifyReport {
        paths: paths.clone(),
        entries: 0,
        files: 0,
        bytes: 0,
        root_digest: None,
        problems: Vec::new(),
        differences: Differences::default(),
    };
    if let Err(e) = archive::check_sha256(&paths, progress) {
        report.problems.push(format!("{e:#}"));
    }
    let manifest = match ManifestReader::open(&paths.manifest) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(format!("{e:#}"));
            return Ok(report);
        }
    };
    let mut cmp = Comparer::new(manifest);
    progress.phase("verifying entries", None, None);
    let mut tar = match archive::open(&paths.archive) {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(format!("{e:#}"));
            return Ok(report);
        }
    };
    // Set when reading stops early: entries after that point are not listed as missing.
    // Set when reading stops early: later entries are not listed as missing.
    let mut manifest_failed = false;
    loop {
        let mut e = match tar.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(err) => {
                report.problems.push(format!(
                    "reading archive {}: {err}",
                    paths.archive.display()
                ));
                manifest_failed = true;
                break;
            }
        };
        report.entries += 1;
        let want = match cmp.expect(&e.path) {
            Ok(w) => w,
            Err(err) => {
                report.problems.push(format!("{err:#}"));
                manifest_failed = true;
                break;
            }
        };
        if e.kind == Kind::File && e.link.is_none() {
            match hash_data(&mut tar, &e) {
                Ok(h) => e.sha256 = Some(h),
                Err(err) => {
                    report.problems.push(format!(
                        "reading {} from the archive: {err}",
                        e.display_path()
                    ));
                    manifest_failed = true;
                    break;
                }
            }
            report.files += 1;
            report.bytes += e.size;
            progress.advance(e.size, 1);
        } else {
            progress.advance(0, 1);
        }
        if let Some(want) = want {
            if e.link.is_some() {
                e.kind = want.kind;
                e.size = want.size;
            }
            for d in entry_diff(&want, &e) {
                cmp.diffs.add(format!("{}: {d}", e.display_path()));
            }
        }
    }
    progress.finish();
    if !manifest_failed {
        let (d, res) = cmp.finish_all();
        report.differences = d;
        if let Err(err) = res {
            report.problems.push(format!("{err:#}"));
        }
    } else {
        report.differences = cmp.diffs;
    }
    if report.problems.is_empty() {
        report.root_digest = crate::manifest::read_summary(&paths.manifest)
            .ok()
            .map(|s| s.root_digest);
    }
    Ok(report)
}
