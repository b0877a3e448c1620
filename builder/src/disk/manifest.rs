//! `DISK.json`: the small manifest written beside every disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionInfo {
    /// GPT partition number (1-based).
    pub number: u32,
    /// GPT partition name (`ESP`, `root`).
    pub name: String,
    /// GPT type GUID.
    pub type_guid: String,
    /// Unique partition UUID (`root=PARTUUID=` uses the root's).
    pub part_uuid: Uuid,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// `ext4` or `vfat`.
    pub filesystem: String,
    /// Filesystem UUID (ext4) or volume id (vfat, `XXXX-XXXX`).
    pub fs_uuid: String,
}

/// How to boot a disk with an external kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootInfo {
    /// Kernel on the build host (also copied to `/vmlinuz` on the ESP).
    pub kernel: PathBuf,
    /// Initrd on the build host (also copied to `/initrd.img` on the ESP).
    pub initrd: Option<PathBuf>,
    /// Full kernel command line, `root=PARTUUID=...` included.
    pub cmdline: String,
    /// sha256 of the kernel, to notice a kernel that changed since the build.
    pub kernel_sha256: String,
    /// Whether the ESP holds systemd-boot, so the disk boots by itself under UEFI.
    pub uefi: bool,
}

/// What `standin image disk` built: layout, identities, content and boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskManifest {
    /// Manifest format version (1).
    pub version: u32,
    /// File name of the disk (beside this manifest).
    pub disk: String,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Logical sector size.
    pub sector_size: u64,
    /// GPT disk GUID.
    pub disk_guid: Uuid,
    /// Partitions in GPT order.
    pub partitions: Vec<PartitionInfo>,
    /// Root digest of the tree that went into the root partition.
    pub root_digest: String,
    /// Inodes and data bytes of that tree.
    pub tree_inodes: u64,
    pub tree_bytes: u64,
    /// How to boot it.
    pub boot: BootInfo,
}

impl DiskManifest {
    /// The root partition.
    pub fn root(&self) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.name == "root")
    }

    /// The EFI system partition.
    pub fn esp(&self) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.name == "ESP")
    }

    /// Read the manifest of `disk` (`DISK.json` beside it).
    pub fn load_for(disk: &Path) -> Result<DiskManifest> {
        let p = manifest_path(disk);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    /// Write the manifest of `disk` durably (temp file, fsync, rename, fsync dir).
    pub fn save_for(&self, disk: &Path) -> Result<PathBuf> {
        let p = manifest_path(disk);
        let dir = parent_dir(&p);
        let mut tmp = tempfile::Builder::new()
            .prefix(".standin-disk-json.")
            .tempfile_in(&dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let mut text = serde_json::to_string_pretty(self).context("encoding the disk manifest")?;
        text.push('\n');
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
        tmp.write_all(text.as_bytes())
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", p.display()))?;
        tmp.persist(&p)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming into {}", p.display()))?;
        sync_dir(&dir)?;
        Ok(p)
    }
}

/// `DISK.json` for `DISK`: the disk's file name with `.json` appended.
pub fn manifest_path(disk: &Path) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

pub(crate) use crate::durable::parent_dir;

/// fsync a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    crate::durable::sync_dir(dir)
        .with_context(|| format!("syncing the directory {}", dir.display()))
}
