//! What the apply itself learnt about each entry it made during an open
//! mirror, as a [mirror ledger](crate::mirror::ledger) record: the
//! replica's entry as the apply read it back (owner, mode, mtime, xattrs,
//! symlink target, device numbers compared with the source's entry; a
//! file's size and the content digest (BLAKE3) of the data it wrote), with its inode and
//! change time as they were right after. The mirror's end folds these
//! records instead of walking the replica ([`crate::mirror::applied`]).
//!
//! Only what was read back becomes a trusted record. A regular file whose
//! content came in pieces (`WriteExtent`) or that is sparse, or anything
//! whose `lstat` disagrees with the entry, is recorded to be read again.

use rustix::fs::Stat;
use standin_builder::changeset::Digest32;
use standin_builder::entry::{Entry, Kind};
use standin_builder::manifest::RootDigest;

use crate::mirror::ledger::Record;

/// One entry the apply made, for the mirror's ledger.
#[derive(Debug, Clone)]
pub struct Applied {
    pub path: Vec<u8>,
    /// The trusted record; `None`: read it again at the end.
    pub record: Option<Record>,
    /// A directory that existed before the mirror made it: its entries are
    /// counted at the end (it may hold paths no record made).
    pub count: bool,
}

/// The content digest of no bytes (an empty regular file's content).
fn empty_digest() -> Digest32 {
    standin_builder::hash::content_digest(&[])
}

/// The record of entry `e` as applied, `st` its `lstat` (or `fstat`)
/// taken after the last change the apply made to it, `sha` the content
/// digest (BLAKE3) of the content the apply wrote and checked (a whole-file record).
pub fn of(e: &Entry, st: &Stat, sha: Option<&Digest32>) -> Applied {
    Applied {
        path: e.path.clone(),
        record: record(e, st, sha),
        count: false,
    }
}

#[allow(clippy::unnecessary_cast)]
fn record(e: &Entry, st: &Stat, sha: Option<&Digest32>) -> Option<Record> {
    let mtime = st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64;
    let ctime = st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64;
    let size = st.st_size as u64;
    let same = Kind::from_mode(st.st_mode as u32) == Some(e.kind)
        && st.st_mode as u32 & 0o7777 == e.mode
        && (st.st_uid, st.st_gid) == (e.uid, e.gid)
        && mtime == e.mtime_ns
        && e.sparse.is_none();
    if !same {
        return None;
    }
    let plain_file = e.kind == Kind::File && e.link.is_none();
    let content = match e.kind {
        Kind::File if e.link.is_some() && size == e.size => None,
        Kind::File if e.link.is_some() => return None,
        Kind::File => {
            // The size the apply wrote, all of it allocated (a file with
            // holes would be read as sparse by the walk).
            if size != e.size || (st.st_blocks as u64).saturating_mul(512) < size {
                return None;
            }
            match (sha, size) {
                (Some(d), _) => Some(*d),
                (None, 0) => Some(empty_digest()),
                (None, _) => return None,
            }
        }
        Kind::Symlink if size == e.size => None,
        Kind::Dir | Kind::Fifo | Kind::Char | Kind::Block if e.size == 0 => None,
        _ => return None,
    };
    let canonical = match (&e.sha256, content) {
        (None, None) => RootDigest::canonical(e),
        (None, Some(d)) => {
            // The encoding ends with "no digest" (0); the replica's has it.
            let mut c = RootDigest::canonical(e);
            if c.pop() != Some(0) {
                return None;
            }
            c.push(1);
            c.extend_from_slice(&d);
            c
        }
        (Some(h), Some(d)) if hex::decode(h).is_ok_and(|h| h == d) => RootDigest::canonical(e),
        _ => return None,
    };
    let dir = e.kind == Kind::Dir;
    Some(Record {
        ino: st.st_ino as u64,
        ctime,
        dir,
        link_dev: if !dir && st.st_nlink > 1 {
            (st.st_dev as u64).wrapping_add(1)
        } else {
            0
        },
        file_bytes: if plain_file { e.size } else { 0 },
        canonical,
    })
}
