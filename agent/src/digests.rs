//! The source's digest cache: the content digest (BLAKE3-256, the link's
//! `standin_builder::hash::content_digest`) of each regular file of the
//! protected tree, remembered across agent runs in `digests.bin` in the
//! agent's state directory, sorted in tree order and read alongside the
//! scan (format and trust rule: [`standin_builder::digest_stream`]), so
//! its memory does not grow with the tree. A difference mirror then reads
//! only files whose stamp (device, inode, size, mtime, ctime) moved; an
//! agent restart costs a metadata scan. `--verify-all` ignores the cache.

use std::path::Path;

use standin_builder::digest_stream::{Reader, Writer};

/// The cache file's name in the agent's state directory.
pub const FILE: &str = "digests.bin";

/// An id of the tree at `root`: its canonical path, device and inode, so a
/// cache written for another tree is never trusted.
pub fn tree_id(root: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let canon = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    match std::fs::symlink_metadata(&canon) {
        Ok(m) => format!("source:{}:{}:{}", canon.display(), m.dev(), m.ino()),
        Err(_) => format!("source:{}", canon.display()),
    }
}

/// Open the cache at `file` for `tree`; an untrusted file is logged and
/// ignored (everything is hashed).
pub fn open(file: Option<&Path>, tree: &str) -> Reader {
    let Some(file) = file else {
        return Reader::empty();
    };
    match Reader::open(file, tree) {
        Ok(r) => r,
        Err(why) if standin_builder::digest_table::other_version(&why) => {
            // After an upgrade (e.g. sha256 digests before protocol 5).
            tracing::debug!(
                file = %file.display(),
                "dropping the digest cache of another format: {why}; every file is hashed and it is rebuilt"
            );
            Reader::empty()
        }
        Err(why) => {
            tracing::warn!(
                file = %file.display(),
                "ignoring the digest cache: {why}; every file is hashed"
            );
            Reader::empty()
        }
    }
}

/// Start writing the fresh cache to `file` (put in place by
/// [`Writer::commit`]); a failure is logged (the next mirror hashes again).
pub fn create(file: Option<&Path>, tree: &str) -> Option<Writer> {
    let file = file?;
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match Writer::create(file, tree) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("{e:#}; the next mirror hashes every file");
            None
        }
    }
}

/// Put the fresh cache in place; a failure is logged.
pub fn commit(w: Option<Writer>) {
    if let Some(w) = w {
        if let Err(e) = w.commit() {
            tracing::warn!("{e:#}; the next mirror hashes every file");
        }
    }
}
