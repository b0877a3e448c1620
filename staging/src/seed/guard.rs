//! Copy-out before write for hardlink seeds: the staging area gets its own
//! copy of an inode it shares with the live system before the apply path
//! changes it in place. The live system's files are never touched (their
//! names keep their inodes; only staging names move to the copy).

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, CWD};

use crate::durable;
use crate::failover::fsutil;
use crate::share::index::{Indexes, Watch};

/// The seed indexes of a state directory: live inode → sharers.
#[derive(Debug)]
pub struct Seeds(Indexes);

impl Seeds {
    /// The seeds of `state_dir` (loaded on first use).
    pub fn new(state_dir: &Path) -> Seeds {
        Seeds(Indexes::new(
            state_dir.join("staging"),
            super::INODES_FILE,
            Watch::Files,
        ))
    }

    /// Call before changing inode `ino` of a staging area in place;
    /// `current` names it (any path, e.g. `/proc/self/fd/N/name`). When a
    /// seed shares `ino` with the live system, `current` and every indexed
    /// staging path that still holds `ino` move to one new copy first.
    /// The entry stays in the index: a name the apply linked or renamed
    /// later is caught when it is written through.
    pub fn before_modify(&mut self, ino: u64, current: &Path) -> Result<()> {
        self.0.reload()?;
        let Some(list) = self.0.shared.get(&ino) else {
            return Ok(());
        };
        let m = std::fs::symlink_metadata(current)
            .with_context(|| format!("reading {}", current.display()))?;
        if m.ino() != ino || !m.is_file() {
            return Ok(());
        }
        let mut copied = false;
        for (root, paths) in list {
            if !copied {
                copy_over(current)?;
                copied = true;
            }
            for p in paths {
                relink(root, p, ino, current)?;
            }
        }
        Ok(())
    }
}

fn tmp_name(name: &[u8]) -> Vec<u8> {
    let mut t = b".".to_vec();
    t.extend_from_slice(name);
    t.extend_from_slice(b".standin-seed");
    t
}

/// Replace `current` by a copy of itself (content, holes, metadata), keeping
/// its directory's times.
fn copy_over(current: &Path) -> Result<()> {
    let dir = current.parent().unwrap_or(Path::new("/")).join(".");
    let name = current.file_name().unwrap_or(OsStr::new("x")).as_bytes();
    let dir_meta = fsutil::meta(&dir)?;
    let tmp = current.with_file_name(OsStr::from_bytes(&tmp_name(name)));
    let _ = std::fs::remove_file(&tmp);
    crate::snapshot::cow::copy_file(current, &tmp)?;
    fsutil::set_entry_meta(&tmp, &fsutil::meta(current)?, false)?;
    std::fs::rename(&tmp, current).with_context(|| format!("replacing {}", current.display()))?;
    durable::sync_dir(&dir)?;
    fsutil::set_meta(&dir, &dir_meta)?;
    Ok(())
}

fn proc_path(dir: &OwnedFd, name: &[u8]) -> PathBuf {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    PathBuf::from(OsStr::from_bytes(&p))
}

/// The directory of `rel` beneath `root`, resolved without symlinks, and its last component.
fn parent_beneath<'r>(root: &Path, rel: &'r [u8]) -> Option<(OwnedFd, &'r [u8])> {
    let (dir, name) = match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b"."[..], rel),
    };
    let rootfd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let flags = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let dfd = rustix::fs::openat2(
        &rootfd,
        OsStr::from_bytes(dir),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        flags,
    )
    .ok()?;
    Some((dfd, name))
}

/// `lstat` of `rel` beneath `root` (no symlink followed); `None` when missing.
pub(crate) fn stat_beneath(root: &Path, rel: &[u8]) -> Option<rustix::fs::Stat> {
    let (dfd, name) = parent_beneath(root, rel)?;
    rustix::fs::statat(&dfd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).ok()
}

/// If `rel` beneath `root` (resolved without symlinks) still holds `ino`,
/// make it a hard link of `copy`.
fn relink(root: &Path, rel: &[u8], ino: u64, copy: &Path) -> Result<()> {
    let Some((dfd, name)) = parent_beneath(root, rel) else {
        return Ok(());
    };
    match rustix::fs::statat(&dfd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_ino == ino => {}
        _ => return Ok(()),
    }
    let dpath = proc_path(&dfd, b".");
    let dir_meta = fsutil::meta(&dpath)?;
    let tmp = tmp_name(name);
    let _ = rustix::fs::unlinkat(&dfd, OsStr::from_bytes(&tmp), AtFlags::empty());
    rustix::fs::linkat(CWD, copy, &dfd, OsStr::from_bytes(&tmp), AtFlags::empty()).with_context(
        || {
            format!(
                "linking a copy to {}",
                root.join(OsStr::from_bytes(rel)).display()
            )
        },
    )?;
    rustix::fs::renameat(&dfd, OsStr::from_bytes(&tmp), &dfd, OsStr::from_bytes(name))
        .with_context(|| format!("replacing {}", root.join(OsStr::from_bytes(rel)).display()))?;
    durable::sync_dir(&dpath)?;
    fsutil::set_meta(&dpath, &dir_meta)?;
    Ok(())
}
