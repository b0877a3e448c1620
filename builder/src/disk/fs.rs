//! Filesystems written straight into the disk file at a partition's offset:
//! ext4 with `mke2fs -d` (keeps owners, modes, xattrs, hardlinks, device
//! nodes) and vfat with `mkfs.vfat --offset` + `mcopy`.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result};
use uuid::Uuid;

use super::size::{journal_mib, BLOCK};
use super::tools::run_tool;

/// Format `size` bytes at `offset` of `disk` as ext4 holding `tree`.
#[allow(clippy::too_many_arguments)]
pub fn make_ext4(
    disk: &Path,
    offset: u64,
    size: u64,
    tree: &Path,
    root_owner: (u32, u32),
    fs_uuid: Uuid,
    inodes: u64,
    data_bytes: u64,
) -> Result<()> {
    let blocks = size / BLOCK;
    let args: Vec<OsString> = vec![
        "-q".into(),
        "-F".into(),
        "-t".into(),
        "ext4".into(),
        "-b".into(),
        BLOCK.to_string().into(),
        "-I".into(),
        "256".into(),
        "-N".into(),
        inodes.to_string().into(),
        "-m".into(),
        "1".into(),
        "-J".into(),
        format!("size={}", journal_mib(data_bytes)).into(),
        "-L".into(),
        "root".into(),
        "-U".into(),
        fs_uuid.to_string().into(),
        "-E".into(),
        format!(
            "offset={offset},nodiscard,root_owner={}:{}",
            root_owner.0, root_owner.1
        )
        .into(),
        "-d".into(),
        tree.as_os_str().to_owned(),
        disk.as_os_str().to_owned(),
        blocks.to_string().into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_tool("mke2fs", &refs).map_err(|e| {
        let text = e.to_string();
        if text.contains("Could not allocate") || text.contains("No space") || text.contains("ext2fs_new") {
            e.context(format!(
                "the tree {} does not fit in a {} MiB root filesystem; pass a larger --size (or leave it out)",
                tree.display(),
                size / (1024 * 1024)
            ))
        } else {
            e.context(format!("writing the ext4 root filesystem from {}", tree.display()))
        }
    })?;
    Ok(())
}

/// Format `size` bytes at `offset` of `disk` as FAT32 and copy every entry
/// of `content` into it. `volume_id` is the FAT serial number.
pub fn make_vfat(
    disk: &Path,
    offset: u64,
    size: u64,
    content: &Path,
    volume_id: u32,
) -> Result<()> {
    let sector_offset = offset / super::SECTOR;
    let kib = size / 1024;
    let args: Vec<OsString> = vec![
        "-F".into(),
        "32".into(),
        // One sector per cluster: enough clusters for FAT32 whatever the
        // disk size (mkfs.vfat would size clusters for the whole file).
        "-s".into(),
        "1".into(),
        "-h".into(),
        sector_offset.to_string().into(),
        "-n".into(),
        "ESP".into(),
        "-i".into(),
        format!("{volume_id:08x}").into(),
        format!("--offset={sector_offset}").into(),
        disk.as_os_str().to_owned(),
        kib.to_string().into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_tool("mkfs.vfat", &refs).context("formatting the EFI system partition")?;

    let mut image = disk.as_os_str().to_owned();
    image.push(format!("@@{offset}"));
    let mut entries: Vec<_> = std::fs::read_dir(content)
        .with_context(|| format!("reading {}", content.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", content.display()))?;
    entries.sort_by_key(|e| e.file_name());
    if entries.is_empty() {
        return Ok(());
    }
    let mut args: Vec<OsString> = vec!["-i".into(), image, "-s".into(), "-p".into(), "-m".into()];
    args.extend(entries.iter().map(|e| e.path().into_os_string()));
    args.push("::/".into());
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_tool("mcopy", &refs).context("copying boot files into the EFI system partition")?;
    Ok(())
}
