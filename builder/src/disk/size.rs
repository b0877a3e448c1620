//! How much room a tree needs as ext4, so a disk can be sized from its
//! content.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::layout::MIB;

/// ext4 block size the disks use.
pub const BLOCK: u64 = 4096;

/// What a tree occupies: data blocks (hardlinks counted once, holes not
/// counted) and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Bytes of data blocks the tree needs (rounded up to whole 4 KiB blocks).
    pub data_bytes: u64,
    /// Number of inodes (files, directories, links, devices).
    pub inodes: u64,
    /// Sum of apparent file sizes, for messages.
    pub apparent_bytes: u64,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Walk `dir` (not following symlinks) and add up what ext4 will need.
pub fn estimate_tree(dir: &Path) -> Result<TreeUsage> {
    let mut usage = TreeUsage::default();
    let mut seen = HashSet::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.with_context(|| format!("reading the tree {}", dir.display()))?;
        let md = entry
            .metadata()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        usage.inodes += 1;
        let ft = md.file_type();
        if ft.is_file() {
            usage.apparent_bytes += md.len();
            // Sparse files: count allocated blocks, not the apparent size.
            let used = md.len().min(md.blocks() * 512);
            usage.data_bytes += round_up(used, BLOCK);
            // Extent tree blocks for big files.
            usage.data_bytes += (md.len() / (128 * MIB)) * BLOCK;
        } else if ft.is_dir() {
            usage.data_bytes += round_up(md.len().max(BLOCK), BLOCK);
        } else if ft.is_symlink() && md.len() >= 60 {
            usage.data_bytes += BLOCK;
        }
    }
    Ok(usage)
}

/// Bytes of ext4 filesystem to give a tree: its data and inode tables, a
/// journal, and headroom (a quarter more plus 32 MiB), rounded to MiB.
pub fn ext4_size_for(usage: &TreeUsage) -> u64 {
    let inodes = inode_count_for(usage);
    let meta = inodes * 256 + usage.data_bytes / 64;
    let journal = journal_mib(usage.data_bytes) * MIB;
    let raw = usage.data_bytes + meta + journal;
    round_up(raw + raw / 4 + 32 * MIB, MIB).max(48 * MIB)
}

/// The inode count to ask mke2fs for: double the tree's, at least 8192.
pub fn inode_count_for(usage: &TreeUsage) -> u64 {
    (usage.inodes * 2).max(8192)
}

/// Journal size in MiB for a filesystem holding this much data.
pub fn journal_mib(data_bytes: u64) -> u64 {
    if data_bytes < 512 * MIB {
        8
    } else if data_bytes < 4096 * MIB {
        32
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hardlinks_once_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 5000]).unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let u = estimate_tree(d.path()).unwrap();
        assert_eq!(u.inodes, 3); // root, a (=b), sub
        assert_eq!(u.data_bytes, 8192 + 2 * 4096);
        assert_eq!(u.apparent_bytes, 5000);
        assert!(ext4_size_for(&u) >= 48 * MIB);
    }
}
