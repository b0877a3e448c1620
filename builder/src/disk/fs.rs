//! Filesystems written straight into the disk file at a partition's offset:
//! ext4 with `mke2fs -d` (keeps owners, modes, xattrs, hardlinks, device
//! nodes) and vfat with `mkfs.vfat --offset` + `mcopy`.

use std::ffi::{OsStr, OsString};
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

/// Owners to put right in a filesystem after `mke2fs -d`, for trees built
/// without root, whose files carry the builder's uid: every path gets
/// `default` unless `explicit` names it (paths relative to the tree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerFixup {
    pub default: (u32, u32),
    pub explicit: std::collections::BTreeMap<std::path::PathBuf, (u32, u32)>,
}

/// Set, with `debugfs -w`, what `mke2fs -d` does not copy or what the tree
/// could not hold: the root directory's mode and, with `owners`, the owner
/// of every path.
pub fn fix_ext4(disk: &Path, offset: u64, tree: &Path, owners: Option<&OwnerFixup>) -> Result<()> {
    use std::fmt::Write as _;
    use std::os::unix::fs::MetadataExt;
    let mut script = String::new();
    let md = std::fs::metadata(tree).with_context(|| format!("reading {}", tree.display()))?;
    if md.mode() & 0o7777 != 0o755 {
        let _ = writeln!(script, "sif / mode 0{:o}", 0o40000 | (md.mode() & 0o7777));
    }
    if let Some(fix) = owners {
        for entry in walkdir::WalkDir::new(tree).follow_links(false) {
            let entry = entry.with_context(|| format!("reading the tree {}", tree.display()))?;
            let rel = entry
                .path()
                .strip_prefix(tree)
                .unwrap_or(entry.path())
                .to_path_buf();
            let md = entry
                .metadata()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            let (uid, gid) = fix.explicit.get(&rel).copied().unwrap_or(fix.default);
            if md.uid() == uid && md.gid() == gid {
                continue;
            }
            let name = rel.to_string_lossy();
            if name.contains(['"', '\n']) {
                anyhow::bail!("cannot set the owner of {name:?} in the image: its name holds a quote or newline");
            }
            let _ = writeln!(
                script,
                "sif \"/{name}\" uid {uid}\nsif \"/{name}\" gid {gid}"
            );
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    let mut file = tempfile::NamedTempFile::new().context("creating a debugfs script")?;
    std::io::Write::write_all(&mut file, script.as_bytes()).context("writing a debugfs script")?;
    let mut target = disk.as_os_str().to_owned();
    target.push(format!("?offset={offset}"));
    let out = run_tool(
        "debugfs",
        &[
            OsStr::new("-w"),
            OsStr::new("-f"),
            file.path().as_os_str(),
            &target,
        ],
    )
    .context("setting owners and modes in the root filesystem")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = err
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        anyhow::bail!("setting owners and modes in the root filesystem: debugfs: {line}");
    }
    Ok(())
}
