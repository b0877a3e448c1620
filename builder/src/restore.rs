//! `image restore`: extract an image into a directory with exact metadata,
//! verified before it becomes visible.
//!
//! 1. The target directory must be empty (or `force`).
//! 2. The archive is checked against its `.sha256`.
//! 3. Entries are extracted through [`TreeWriter`] into a hidden staging
//!    directory `DIR/.standin-restore-XXXX` (so `..`, absolute paths and
//!    symlink escapes are refused by name), each file's content checked
//!    against the manifest while it is written. A directory's metadata is
//!    applied when its children are done.
//! 4. The staging directory is re-scanned and compared with the manifest
//!    (every entry, then the root digest); differences are named.
//! 5. Only then are the top-level entries renamed into DIR and DIR gets the
//!    root's metadata. On any failure the staging directory is removed and
//!    the error is returned: DIR never holds a half-written tree that was
//!    reported as restored.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::archive::{self, ImagePaths};
use crate::compare::{entry_diff, Comparer};
use crate::entry::{Entry, Kind};
use crate::manifest::{self, ManifestReader};
use crate::progress::Progress;
use crate::scan::ScanOptions;
use crate::tree::TreeWriter;

/// Options of [`restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore into a non-empty directory, replacing entries with the same names.
    pub force: bool,
}

/// What [`restore`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub paths: ImagePaths,
    pub to: PathBuf,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Root digest of the restored tree (equal to the manifest's).
    pub root_digest: String,
}

/// Prefix of the hidden staging directory inside the target.
pub const STAGING_PREFIX: &str = ".standin-restore-";

/// Restore `archive` into `to`.
pub fn restore(
    archive: &Path,
    to: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let paths = ImagePaths::for_archive(archive);
    if !paths.archive.exists() {
        bail!("archive {} does not exist", paths.archive.display());
    }
    if to.exists() {
        if !to.is_dir() {
            bail!("{} exists and is not a directory", to.display());
        }
        let non_empty = std::fs::read_dir(to)
            .with_context(|| format!("listing {}", to.display()))?
            .next()
            .is_some();
        if non_empty && !opts.force {
            bail!(
                "{} is not empty; restore into an empty directory, or pass --force to replace entries with the same names",
                to.display()
            );
        }
    } else {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    }
    archive::check_sha256(&paths, progress)?;
    let staging = to.join(format!("{STAGING_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = extract_and_check(&paths, &staging, progress).and_then(|(root, report)| {
        move_into_place(&staging, to, &root, opts.force)?;
        Ok(report)
    });
    match result {
        Ok((entries, files, bytes, root_digest)) => Ok(RestoreReport {
            paths,
            to: to.to_path_buf(),
            entries,
            files,
            bytes,
            root_digest,
        }),
        Err(e) => {
            if staging.exists() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            Err(e.context(format!(
                "restoring {} into {}; nothing was restored",
                archive.display(),
                to.display()
            )))
        }
    }
}

type Counts = (u64, u64, u64, String);

fn extract_and_check(
    paths: &ImagePaths,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<(Entry, Counts)> {
    let tw = TreeWriter::open(staging)?;
    let mut manifest = ManifestReader::open(&paths.manifest)?;
    let mut tar = archive::open(&paths.archive)?;
    // Directories whose metadata is applied once their children are done
    // (so a read-only directory can still be filled, and its mtime sticks).
    let mut dirs: Vec<Entry> = Vec::new();
    let mut root: Option<Entry> = None;
    let (mut entries, mut files, mut bytes) = (0u64, 0u64, 0u64);
    progress.phase("restoring", None, None);
    while let Some(mut e) = tar
        .next_entry()
        .with_context(|| format!("reading archive {}", paths.archive.display()))?
    {
        tw.check(&e.path)?;
        if let Some(l) = &e.link {
            tw.check(l)?;
        }
        let want = match manifest.next() {
            Some(w) => w?,
            None => bail!("archive entry {} is not in the manifest", e.display_path()),
        };
        if want.path != e.path {
            bail!(
                "archive entry {} does not match the manifest (expected {})",
                e.display_path(),
                want.display_path()
            );
        }
        if e.link.is_some() {
            e.kind = want.kind;
            e.size = want.size;
        }
        let mut meta_want = want.clone();
        meta_want.sha256 = None;
        let diffs = entry_diff(&meta_want, &e);
        if !diffs.is_empty() {
            bail!(
                "archive entry {} differs from the manifest: {}",
                e.display_path(),
                diffs.join("; ")
            );
        }
        while let Some(d) = dirs.last() {
            if is_under(&e.path, &d.path) {
                break;
            }
            let d = dirs.pop().expect("dir");
            tw.set_metadata(&d).map_err(root_hint)?;
        }
        let content: Option<&mut dyn std::io::Read> =
            if want.kind == Kind::File && want.link.is_none() {
                Some(&mut tar)
            } else {
                None
            };
        let sha = tw.create(&want, content).map_err(root_hint)?;
        if want.kind == Kind::File && want.link.is_none() {
            if sha != want.sha256 {
                bail!(
                    "content of {} does not match the manifest (sha256 {} expected {})",
                    want.display_path(),
                    sha.as_deref().unwrap_or("-"),
                    want.sha256.as_deref().unwrap_or("-")
                );
            }
            files += 1;
            bytes += want.size;
        }
        if want.kind == Kind::Dir && want.link.is_none() {
            dirs.push(want.clone());
        } else {
            tw.set_metadata(&want).map_err(root_hint)?;
        }
        if want.path.is_empty() {
            root = Some(want.clone());
        }
        entries += 1;
        progress.advance(if sha.is_some() { want.size } else { 0 }, 1);
    }
    while let Some(d) = dirs.pop() {
        tw.set_metadata(&d).map_err(root_hint)?;
    }
    if let Some(extra) = manifest.next() {
        let extra = extra?;
        bail!(
            "manifest entry {} is missing from the archive",
            extra.display_path()
        );
    }
    let summary = manifest
        .summary()
        .cloned()
        .context("reading the manifest summary")?;
    progress.finish();
    let root = root.context("the archive has no root directory entry")?;

    // Check the restored tree against the manifest, independently of the
    // extraction above: re-scan, re-hash, compare every entry.
    progress.phase(
        "checking restored tree",
        Some(summary.total_bytes),
        Some(summary.entry_count),
    );
    let mut cmp = Comparer::new(ManifestReader::open(&paths.manifest)?);
    let opts = ScanOptions {
        system_excludes: Vec::new(),
        ..Default::default()
    };
    let scanned = manifest::scan_tree(staging, &opts, progress, |e| cmp.push(e))?;
    let diffs = cmp.finish()?;
    progress.finish();
    if !diffs.is_empty() || scanned.root_digest != summary.root_digest {
        let mut msg = format!(
            "the restored tree does not match the manifest ({} differences",
            diffs.count
        );
        if scanned.root_digest != summary.root_digest {
            msg.push_str(&format!(
                "; root digest {} expected {}",
                scanned.root_digest, summary.root_digest
            ));
        }
        msg.push(')');
        for l in diffs.listed.iter().take(50) {
            msg.push_str("\n  ");
            msg.push_str(l);
        }
        bail!(msg);
    }
    Ok((root, (entries, files, bytes, summary.root_digest)))
}

/// Owners, device nodes and `trusted.*` xattrs need root: say so.
fn root_hint(e: crate::tree::TreeError) -> anyhow::Error {
    let denied = matches!(&e, crate::tree::TreeError::Io { source, .. }
        if source.kind() == std::io::ErrorKind::PermissionDenied || source.raw_os_error() == Some(1));
    if denied && !rustix::process::geteuid().is_root() {
        anyhow::Error::new(e).context(
            "restoring exact owners, device nodes and trusted xattrs needs root; run as root",
        )
    } else {
        anyhow::Error::new(e)
    }
}

fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

fn move_into_place(staging: &Path, to: &Path, root: &Entry, force: bool) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let tw = TreeWriter::open(to)?;
    let staging_name = staging
        .file_name()
        .context("staging directory name")?
        .as_bytes()
        .to_vec();
    for item in
        std::fs::read_dir(staging).with_context(|| format!("listing {}", staging.display()))?
    {
        let item = item.with_context(|| format!("listing {}", staging.display()))?;
        let name = item.file_name().as_bytes().to_vec();
        let dest = to.join(item.file_name());
        if std::fs::symlink_metadata(&dest).is_ok() {
            if !force {
                bail!(
                    "{} appeared while restoring; not replacing it",
                    dest.display()
                );
            }
            tw.remove(&name)?;
        }
        let mut from = staging_name.clone();
        from.push(b'/');
        from.extend_from_slice(&name);
        tw.rename(&from, &name)?;
    }
    std::fs::remove_dir(staging).with_context(|| format!("removing {}", staging.display()))?;
    tw.set_metadata(root)?;
    tw.sync()?;
    Ok(())
}
