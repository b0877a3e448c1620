//! The source's digest cache: the sha256 of each regular file of the
//! protected tree, remembered across agent runs in `digests.bin` in the
//! agent's state directory (format and trust rule:
//! [`standin_builder::digest_table`]). A difference mirror then reads only
//! files whose stamp (device, inode, size, mtime, ctime) moved; an agent
//! restart costs a metadata scan. `--verify-all` ignores the cache.

use std::path::Path;

use standin_builder::digest_table::DigestTable;

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

/// Load the cache at `file` for `tree`; an untrusted file is logged and
/// ignored (everything is hashed).
pub fn load(file: Option<&Path>, tree: &str) -> DigestTable {
    let Some(file) = file else {
        return DigestTable::new();
    };
    match DigestTable::load(file, tree) {
        Ok(t) => t,
        Err(why) => {
            tracing::warn!(
                file = %file.display(),
                "ignoring the digest cache: {why}; every file is hashed"
            );
            DigestTable::new()
        }
    }
}

/// Save the table for `tree` to `file` (durably); a failure is logged (the
/// next mirror hashes again).
pub fn save(file: Option<&Path>, tree: &str, table: &DigestTable) {
    if let Some(file) = file {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = table.save(file, tree) {
            tracing::warn!("{e:#}; the next mirror hashes every file");
        }
    }
}
