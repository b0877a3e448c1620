//! New trees that share data with the tree they are made from: hardlink
//! snapshots of the replica ([`crate::snapshot`]) and seeds of a staging
//! area from the live system ([`crate::seed`]). Both place each regular
//! file with [`place`] (a reflink where the filesystem can clone, else a
//! hard link recorded in an inode [`index`]), and both are protected by
//! the same copy-out before write ([`crate::snapshot::cow::Guard`]), which
//! reads those indexes through [`index::Indexes`].

pub mod index;

use std::path::Path;

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// How a new tree's regular files share data with the tree they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    /// Cloned (`FICLONE`): the filesystem shares the data copy-on-write.
    Reflink,
    /// Hard links to the source's inodes, listed in an inode index.
    Hardlink,
    /// Copied (another filesystem).
    Copy,
}

/// Place `src`'s data at `dst` (which must not exist) by `how`. `None`
/// (not chosen yet) tries a reflink and chooses [`Share::Reflink`] when it
/// works, or [`Share::Hardlink`] for this and every later file when the
/// filesystem cannot clone.
pub fn place(how: &mut Option<Share>, src: &Path, dst: &Path) -> std::io::Result<()> {
    match *how {
        Some(Share::Hardlink) => std::fs::hard_link(src, dst),
        Some(Share::Copy) => std::fs::copy(src, dst).map(drop),
        None | Some(Share::Reflink) => match reflink(src, dst) {
            Ok(()) => {
                *how = Some(Share::Reflink);
                Ok(())
            }
            Err(e) if how.is_none() && unsupported(&e) => {
                *how = Some(Share::Hardlink);
                std::fs::hard_link(src, dst)
            }
            Err(e) => Err(e),
        },
    }
}

/// Whether a failed clone means the filesystem cannot clone here.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM)
    )
}

/// Clone `src` to the new file `dst` (removed again when cloning fails).
fn reflink(src: &Path, dst: &Path) -> std::io::Result<()> {
    let s = std::fs::File::open(src)?;
    let d = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    match rustix::fs::ioctl_ficlone(&d, &s) {
        Ok(()) => Ok(()),
        Err(e) => {
            drop(d);
            let _ = std::fs::remove_file(dst);
            Err(e.into())
        }
    }
}
