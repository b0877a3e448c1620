//! The root digest of a tree, recorded in the disk manifest.
//!
//! PLACEHOLDER until the foundation branch's `standin_builder::manifest` is
//! merged: at merge, [`tree_root_digest`] should call the manifest scanner's
//! root digest so the value equals the one in `*.manifest.json` and in the
//! staging area. Until then it computes a sha256 over every entry's path,
//! type, mode, owner, size, device numbers, symlink target and content.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::entry::path_cmp;

/// Root digest of the tree at `dir`, lowercase hex.
///
/// MERGE NOTE (foundation): replace the body with the manifest module's
/// scan + root digest (`standin_builder::manifest`).
pub fn tree_root_digest(dir: &Path) -> Result<String> {
    let mut paths: Vec<(Vec<u8>, std::path::PathBuf)> = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.with_context(|| format!("reading the tree {}", dir.display()))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .unwrap_or(entry.path())
            .as_os_str()
            .as_bytes()
            .to_vec();
        paths.push((rel, entry.path().to_path_buf()));
    }
    paths.sort_by(|a, b| path_cmp(&a.0, &b.0));
    let mut root = Sha256::new();
    root.update(b"standin-tree-digest-placeholder-v0\n");
    for (rel, path) in paths {
        let md = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "fifo"
        };
        root.update(&rel);
        root.update(format!(
            "\0{kind} {:o} {}:{} {} {}\0",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            if ft.is_dir() { 0 } else { md.len() },
            md.rdev()
        ));
        if ft.is_symlink() {
            let t =
                std::fs::read_link(&path).with_context(|| format!("reading {}", path.display()))?;
            root.update(t.as_os_str().as_bytes());
        } else if ft.is_file() {
            let mut f = std::fs::File::open(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f
                    .read(&mut buf)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            root.update(h.finalize());
        }
        root.update(b"\n");
    }
    Ok(hex::encode(root.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_changes_with_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"one").unwrap();
        let a = tree_root_digest(d.path()).unwrap();
        assert_eq!(a, tree_root_digest(d.path()).unwrap());
        std::fs::write(d.path().join("f"), b"two").unwrap();
        assert_ne!(a, tree_root_digest(d.path()).unwrap());
    }
}
