//! The root digest of a tree, recorded in the disk manifest: the same value
//! `standin image build` writes into `*.manifest.json` (see
//! [`crate::manifest`]), so a disk can be matched to its archive or staged
//! tree.

use std::path::Path;

use anyhow::{Context, Result};

use crate::manifest::scan_tree;
use crate::progress::NoProgress;
use crate::scan::ScanOptions;

/// Root digest of the tree at `dir`, lowercase hex.
pub fn tree_root_digest(dir: &Path) -> Result<String> {
    let summary = scan_tree(dir, &ScanOptions::default(), &NoProgress, |_| Ok(()))
        .with_context(|| format!("computing the root digest of {}", dir.display()))?;
    Ok(summary.root_digest)
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
