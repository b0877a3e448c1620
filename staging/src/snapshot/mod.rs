//! Snapshots of a staging area: `STATE/snapshots/<id>/{meta.json,root/,inodes.json}`.
//!
//! A snapshot is taken under the apply lock ([`crate::lock`]), so it holds
//! the replica exactly as of one sequence number. It is cheap:
//!
//! - **reflink** (XFS, Btrfs, …): every regular file is cloned with
//!   `FICLONE`; data blocks are shared copy-on-write by the filesystem.
//! - **hardlink** (ext4, tmpfs, …): every regular file of the snapshot is a
//!   hard link to the replica's inode; `inodes.json` maps each shared inode
//!   number to the snapshot paths that hold it. Before the apply path
//!   changes an inode in place (write, truncate, metadata), the
//!   [`cow::Guard`] copies that inode out to the snapshot's paths (a new
//!   inode there), so the snapshot never changes. Because the index is
//!   keyed by inode number, a snapshot's extra links are told apart from the
//!   source's own hard-link groups: the replica keeps its inodes and groups,
//!   only the snapshot's names move to the copy.
//!
//! Directories, symlinks and device nodes are always copied (they are small).

pub mod cow;
pub mod retention;
mod take;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use take::{take, take_with};

/// How a snapshot shares data with the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Reflink,
    Hardlink,
}

/// `meta.json` of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub id: String,
    pub source_id: String,
    pub created_unix_ms: i64,
    /// The replica's sequence number when it was taken.
    pub seq: u64,
    pub mirror_complete: bool,
    /// The source's root digest, when the replica was exactly the mirror's end state.
    pub root_digest: Option<String>,
    pub method: Method,
    pub files: u64,
    pub bytes: u64,
    /// Time the snapshot took, in milliseconds.
    pub took_ms: u64,
}

/// Directory of all snapshots.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshots")
}

/// Root of a snapshot's tree.
pub fn root(state_dir: &Path, id: &str) -> PathBuf {
    dir(state_dir).join(id).join("root")
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.starts_with('.') || id.contains('/') {
        bail!("{id:?} is not a snapshot id; see `standin snapshot list`");
    }
    Ok(())
}

/// The metadata of one snapshot.
pub fn load(state_dir: &Path, id: &str) -> Result<SnapshotMeta> {
    check_id(id)?;
    let p = dir(state_dir).join(id).join("meta.json");
    let b = std::fs::read(&p).with_context(|| {
        format!(
            "reading snapshot {id} ({}); see `standin snapshot list`",
            p.display()
        )
    })?;
    serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))
}

/// All complete snapshots, oldest first.
pub fn list(state_dir: &Path) -> Result<Vec<SnapshotMeta>> {
    let d = dir(state_dir);
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("reading {}", d.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().join("meta.json").exists() {
            continue;
        }
        out.push(load(state_dir, &name)?);
    }
    out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
    Ok(out)
}

/// Delete a snapshot (refused while a failover uses it).
pub fn delete(state_dir: &Path, id: &str) -> Result<()> {
    check_id(id)?;
    if let Some(r) = crate::failover::load_record(state_dir)? {
        if r.image == format!("snapshot:{id}")
            && r.state != crate::failover::RecordState::RolledBack
        {
            bail!(
                "snapshot {id} is in use by failover {}; roll it back first",
                r.id
            );
        }
    }
    let d = dir(state_dir).join(id);
    // Rename first, so a crash never leaves a half-deleted snapshot that looks complete.
    let gone = dir(state_dir).join(format!(".{id}.deleting"));
    std::fs::rename(&d, &gone).with_context(|| format!("removing snapshot {}", d.display()))?;
    crate::durable::sync_dir(&dir(state_dir))?;
    std::fs::remove_dir_all(&gone).with_context(|| format!("removing {}", gone.display()))?;
    Ok(())
}

/// Remove leftovers of interrupted takes and deletes (`.*.tmp`, `.*.deleting`).
pub fn clean(state_dir: &Path) -> Result<()> {
    let d = dir(state_dir);
    if let Ok(rd) = std::fs::read_dir(&d) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && (n.ends_with(".tmp") || n.ends_with(".deleting")) {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}
