//! Taking a snapshot.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use standin_builder::progress::Progress;

use super::{Method, SnapshotMeta};
use crate::durable;
use crate::failover::fsutil;
use crate::share::{self, index, Share};
use crate::state::{now_ms, TargetState};

/// File name of the inode index (hardlink method).
pub const INODES_FILE: &str = "inodes.json";

struct Walk<'a> {
    /// How files share data with the replica (chosen on the first file).
    how: Option<Share>,
    /// Replica inode → first snapshot path (hard-link groups; reflink method).
    groups: HashMap<u64, std::path::PathBuf>,
    /// Replica inode → snapshot paths (hardlink method).
    index: index::Index,
    files: u64,
    bytes: u64,
    progress: &'a dyn Progress,
}

impl Walk<'_> {
    fn file(&mut self, src: &Path, dst: &Path, rel: &[u8], m: &std::fs::Metadata) -> Result<()> {
        self.files += 1;
        self.bytes += m.len();
        self.progress.advance(m.len(), 1);
        if self.how != Some(Share::Hardlink) && m.nlink() > 1 {
            if let Some(first) = self.groups.get(&m.ino()) {
                std::fs::hard_link(first, dst)
                    .with_context(|| format!("linking {}", dst.display()))?;
                return Ok(());
            }
        }
        share::place(&mut self.how, src, dst).with_context(|| match self.how {
            Some(Share::Hardlink) => format!("linking {} to {}", dst.display(), src.display()),
            _ => format!("cloning {} to {}", src.display(), dst.display()),
        })?;
        if self.how == Some(Share::Hardlink) {
            index::add(&mut self.index, m.ino(), rel);
            return Ok(());
        }
        fsutil::set_entry_meta(dst, &fsutil::meta(src)?, false)?;
        if m.nlink() > 1 {
            self.groups.insert(m.ino(), dst.to_path_buf());
        }
        Ok(())
    }

    fn dir(&mut self, src: &Path, dst: &Path, rel: &[u8]) -> Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading {}", src.display()))?;
        names.sort();
        for n in names {
            let s = src.join(&n);
            let d = dst.join(&n);
            let r = fsutil::child(rel, n.as_bytes());
            let m = std::fs::symlink_metadata(&s)
                .with_context(|| format!("reading {}", s.display()))?;
            let ft = m.file_type();
            if ft.is_dir() {
                std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                self.dir(&s, &d, &r)?;
                fsutil::set_meta(&d, &fsutil::meta(&s)?)?;
            } else if ft.is_file() {
                self.file(&s, &d, &r, &m)?;
            } else if ft.is_symlink() {
                let t =
                    std::fs::read_link(&s).with_context(|| format!("reading {}", s.display()))?;
                std::os::unix::fs::symlink(&t, &d)
                    .with_context(|| format!("creating {}", d.display()))?;
                fsutil::set_entry_meta(&d, &fsutil::meta(&s)?, true)?;
            } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
                let kind = if ft.is_fifo() {
                    rustix::fs::FileType::Fifo
                } else if ft.is_char_device() {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::BlockDevice
                };
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &d,
                    kind,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    m.rdev(),
                )
                .with_context(|| format!("creating {}", d.display()))?;
                fsutil::set_meta(&d, &fsutil::meta(&s)?)?;
            }
            // sockets are not part of a system image
        }
        Ok(())
    }
}

fn new_id(d: &Path) -> String {
    let ms = now_ms();
    let secs = ms / 1000;
    let (y, mo, da) = crate::failover::civil(secs.div_euclid(86400));
    let rem = secs.rem_euclid(86400);
    let base = format!(
        "{y:04}{mo:02}{da:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let mut id = base.clone();
    let mut n = 1;
    while d.join(&id).exists() || d.join(format!(".{id}.tmp")).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// Take a snapshot of the replica of `source_id` (default: the staged source)
/// at its current sequence number.
pub fn take(
    state_dir: &Path,
    source_id: Option<&str>,
    progress: &dyn Progress,
) -> Result<SnapshotMeta> {
    take_with(state_dir, source_id, false, progress)
}

/// Like [`take`]; with `digest`, the snapshot's root digest (builder's
/// manifest digest over every entry) is computed after it is taken (outside
/// the apply lock: the snapshot no longer changes) and stored in its meta.
pub fn take_with(
    state_dir: &Path,
    source_id: Option<&str>,
    digest: bool,
    progress: &dyn Progress,
) -> Result<SnapshotMeta> {
    let mut meta = take_locked(state_dir, source_id, progress)?;
    if digest {
        let root = super::root(state_dir, &meta.id);
        let opts = standin_builder::scan::ScanOptions::default();
        // The mirror's root digest (BLAKE3 content digests), the one the
        // meta holds when the replica was exactly a mirror's end state.
        let summary =
            standin_builder::manifest::scan_tree_mirror(&root, &opts, progress, |_| Ok(()))
                .with_context(|| format!("computing the root digest of snapshot {}", meta.id))?;
        meta.root_digest = Some(summary.root_digest);
        let p = super::dir(state_dir).join(&meta.id).join("meta.json");
        durable::write_atomic(&p, &serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(meta)
}

fn take_locked(
    state_dir: &Path,
    source_id: Option<&str>,
    progress: &dyn Progress,
) -> Result<SnapshotMeta> {
    let t0 = Instant::now();
    let lock = crate::lock::for_apply(state_dir)?;
    // A change set a dead daemon left half applied is finished first (or
    // the snapshot is refused): a snapshot holds whole change sets only.
    let replayed = crate::store::replay_locked(state_dir, &lock)
        .context("finishing the journaled change set before the snapshot")?;
    if replayed > 0 {
        progress.note(&format!(
            "finished {replayed} change set(s) the target daemon left half applied"
        ));
    }
    let st = TargetState::load(state_dir)?;
    let Some(sid) = source_id.map(str::to_string).or(st.source_id.clone()) else {
        bail!(
            "no source is staged in {}; protect a source first",
            state_dir.display()
        );
    };
    let src = state_dir.join("staging").join(&sid).join("root");
    if !src.is_dir() {
        bail!(
            "the staging area {} is missing; protect the source first",
            src.display()
        );
    }
    let d = super::dir(state_dir);
    durable::create_dirs(&d)?;
    super::clean(state_dir)?;
    let id = new_id(&d);
    let tmp = d.join(format!(".{id}.tmp"));
    let troot = tmp.join("root");
    durable::create_dirs(&troot)?;
    progress.phase("snapshot", None, None);
    let mut w = Walk {
        how: None,
        groups: HashMap::new(),
        index: index::Index::new(),
        files: 0,
        bytes: 0,
        progress,
    };
    w.dir(&src, &troot, b"")?;
    fsutil::set_meta(&troot, &fsutil::meta(&src)?)?;
    let method = match w.how {
        Some(Share::Reflink) => Method::Reflink,
        _ => Method::Hardlink,
    };
    if method == Method::Hardlink {
        durable::write_atomic(&tmp.join(INODES_FILE), &serde_json::to_vec(&w.index)?)
            .context("writing the snapshot's inode index")?;
    }
    let root_digest = st
        .mirror
        .as_ref()
        .filter(|m| st.mirror_complete && m.last_seq == Some(st.last_applied_seq))
        .and_then(|m| m.root_digest.clone());
    let meta = SnapshotMeta {
        id: id.clone(),
        source_id: sid,
        created_unix_ms: now_ms(),
        seq: st.last_applied_seq,
        mirror_complete: st.mirror_complete,
        root_digest,
        method,
        files: w.files,
        bytes: w.bytes,
        took_ms: t0.elapsed().as_millis() as u64,
    };
    durable::write_atomic(&tmp.join("meta.json"), &serde_json::to_vec_pretty(&meta)?)
        .context("writing the snapshot's meta.json")?;
    let f = std::fs::File::open(&tmp)?;
    rustix::fs::syncfs(&f).context("syncing the snapshot")?;
    std::fs::rename(&tmp, d.join(&id)).with_context(|| format!("completing snapshot {id}"))?;
    durable::sync_dir(&d)?;
    progress.finish();
    Ok(meta)
}
