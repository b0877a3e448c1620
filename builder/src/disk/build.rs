//! `build_disk`: tree in, bootable GPT disk (and `DISK.json`) out.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::fs::OwnerFixup;
use super::layout::{write_gpt, GptIds, Layout, ESP_TYPE, MIB, ROOT_X86_64_TYPE, SECTOR};
use super::manifest::{parent_dir, sync_dir, BootInfo, DiskManifest, PartitionInfo};
use super::size::{estimate_tree, ext4_size_for, inode_count_for};
use super::tools::{newest_boot_file, run_tool};
use super::{digest, fs};
use crate::progress::Progress;

/// Disk image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain sparse disk image.
    #[default]
    Raw,
    /// qcow2, converted from raw with `qemu-img convert`.
    Qcow2,
}

impl DiskFormat {
    /// `raw` or `qcow2`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for DiskFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => bail!("unknown disk format {other:?}; use raw or qcow2"),
        }
    }
}

/// Which kernel boots the disk and with what command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootConfig {
    /// Kernel image; `None`: the newest `/boot/vmlinuz-*` of the build host.
    pub kernel: Option<PathBuf>,
    /// Initrd; `None`: the `/boot/initrd.img-<version>` matching the kernel.
    pub initrd: Option<PathBuf>,
    /// Kernel arguments after `root=PARTUUID=...`; `None`: `rw console=ttyS0 panic=1`.
    pub cmdline: Option<String>,
}

/// Default kernel arguments after `root=PARTUUID=...`.
pub const DEFAULT_CMDLINE: &str = "rw console=ttyS0 panic=1";

impl BootConfig {
    /// Resolve the kernel and initrd paths, failing with a clear message when
    /// one is missing.
    pub fn resolve(&self) -> Result<(PathBuf, Option<PathBuf>)> {
        let kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => newest_boot_file(Path::new("/boot"), "vmlinuz-").context(
                "no kernel found in /boot (no /boot/vmlinuz-*); install one with: apt-get install -y linux-image-amd64, or name one with --kernel (recipe: boot.kernel)",
            )?,
        };
        if !kernel.is_file() {
            bail!(
                "kernel {} not found; install linux-image-amd64 or name an existing one with --kernel (recipe: boot.kernel)",
                kernel.display()
            );
        }
        let initrd = match &self.initrd {
            Some(i) => Some(i.clone()),
            None => {
                let name = kernel.file_name().and_then(OsStr::to_str).unwrap_or("");
                name.strip_prefix("vmlinuz-")
                    .map(|v| kernel.with_file_name(format!("initrd.img-{v}")))
                    .filter(|p| p.is_file())
            }
        };
        if let Some(i) = &initrd {
            if !i.is_file() {
                bail!(
                    "initrd {} not found; name an existing one with --initrd (recipe: boot.initrd)",
                    i.display()
                );
            }
        }
        Ok((kernel, initrd))
    }
}

/// What to build and where.
#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    /// The tree that becomes the root filesystem.
    pub tree: PathBuf,
    /// The disk file to write (its manifest goes to `<output>.json`).
    pub output: PathBuf,
    /// raw or qcow2.
    pub format: DiskFormat,
    /// Total disk size in bytes; `None`: computed from the tree with headroom.
    pub size: Option<u64>,
    /// ESP size in bytes; `None`: 64 MiB or what the kernel and initrd need.
    pub esp_size: Option<u64>,
    /// Minimum root partition size in bytes.
    pub root_size: Option<u64>,
    /// Kernel, initrd, command line.
    pub boot: BootConfig,
    /// Owners to set after `mke2fs -d` (trees built without root).
    pub owners: Option<OwnerFixup>,
}

/// systemd-boot's EFI binary, when installed (package systemd-boot-efi).
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Build the disk described by `opts`; returns its manifest (also written
/// beside the disk).
pub fn build_disk(opts: &DiskOptions, progress: &dyn Progress) -> Result<DiskManifest> {
    let tree = &opts.tree;
    let md =
        std::fs::metadata(tree).with_context(|| format!("reading the tree {}", tree.display()))?;
    if !md.is_dir() {
        bail!(
            "{} is not a directory; --root needs the top of a system tree",
            tree.display()
        );
    }
    check_output(&opts.output)?;
    let (kernel, initrd) = opts.boot.resolve()?;

    progress.phase("measuring tree", None, None);
    let usage = estimate_tree(tree)?;
    progress.advance(usage.data_bytes, usage.inodes);
    progress.finish();
    let root_needed = ext4_size_for(&usage).max(opts.root_size.unwrap_or(0));

    let boot_bytes = file_len(&kernel)? + initrd.as_deref().map(file_len).transpose()?.unwrap_or(0);
    let esp_size = opts.esp_size.unwrap_or_else(|| {
        (64 * MIB).max((boot_bytes + boot_bytes / 8 + 16 * MIB).div_ceil(MIB) * MIB)
    });
    if esp_size < 40 * MIB {
        bail!(
            "an EFI system partition of {} MiB is too small for FAT32; give it at least 40 MiB (recipe disk.esp_size)",
            esp_size / MIB
        );
    }
    let layout = match opts.size {
        Some(size) => Layout::fixed(size, esp_size, root_needed)
            .with_context(|| format!("sizing the disk for {} (--size)", tree.display()))?,
        None => Layout::new(esp_size, root_needed),
    };

    let ids = GptIds {
        disk_guid: Uuid::new_v4(),
        esp_uuid: Uuid::new_v4(),
        root_uuid: Uuid::new_v4(),
    };
    let fs_uuid = Uuid::new_v4();
    let vfat_id: u32 = rand_u32();
    let cmdline = format!(
        "root=PARTUUID={} {}",
        ids.root_uuid,
        opts.boot.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    );

    let out_dir = parent_dir(&opts.output);
    let raw = tempfile::Builder::new()
        .prefix(".standin-disk.")
        .suffix(".partial")
        .tempfile_in(&out_dir)
        .with_context(|| {
            format!(
                "creating a temporary file in {} for {}",
                out_dir.display(),
                opts.output.display()
            )
        })?;
    use std::os::unix::fs::PermissionsExt;
    raw.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", raw.path().display()))?;
    raw.as_file()
        .set_len(layout.disk_size)
        .with_context(|| format!("sizing {}", raw.path().display()))?;

    // The root digest reads the whole tree; do it while mke2fs runs.
    let (digest, fs_result) = std::thread::scope(|s| {
        let h = s.spawn(|| digest::tree_root_digest(tree));
        progress.phase(
            "writing root filesystem",
            Some(usage.data_bytes),
            Some(usage.inodes),
        );
        let r = fs::make_ext4(
            raw.path(),
            layout.root_offset,
            layout.root_size,
            tree,
            (md.uid(), md.gid()),
            fs_uuid,
            inode_count_for(&usage),
            usage.data_bytes,
        );
        if r.is_ok() {
            progress.advance(usage.data_bytes, usage.inodes);
        }
        progress.finish();
        (h.join(), r)
    });
    fs_result?;
    fs::fix_ext4(raw.path(), layout.root_offset, tree, opts.owners.as_ref())?;
    let root_digest = match digest {
        Ok(d) => d?,
        Err(_) => bail!("computing the root digest of {} failed", tree.display()),
    };

    progress.phase("writing EFI system partition", Some(boot_bytes), None);
    let esp_dir = tempfile::tempdir().context("creating a temporary directory for the ESP")?;
    let uefi = stage_esp(esp_dir.path(), &kernel, initrd.as_deref(), &cmdline)?;
    fs::make_vfat(
        raw.path(),
        layout.esp_offset,
        layout.esp_size,
        esp_dir.path(),
        vfat_id,
    )?;
    progress.advance(boot_bytes, 0);
    progress.finish();

    progress.phase("writing partition table", None, None);
    {
        let mut f = File::options()
            .read(true)
            .write(true)
            .open(raw.path())
            .with_context(|| format!("opening {}", raw.path().display()))?;
        write_gpt(&mut f, &layout, &ids, ROOT_X86_64_TYPE)?;
        f.sync_all()
            .with_context(|| format!("syncing {}", raw.path().display()))?;
    }
    progress.finish();

    let final_tmp = match opts.format {
        DiskFormat::Raw => raw,
        DiskFormat::Qcow2 => {
            progress.phase("converting to qcow2", Some(layout.disk_size), None);
            let q = tempfile::Builder::new()
                .prefix(".standin-disk.")
                .suffix(".qcow2.partial")
                .tempfile_in(&out_dir)
                .with_context(|| format!("creating a temporary file in {}", out_dir.display()))?;
            run_tool(
                "qemu-img",
                &[
                    OsStr::new("convert"),
                    OsStr::new("-f"),
                    OsStr::new("raw"),
                    OsStr::new("-O"),
                    OsStr::new("qcow2"),
                    raw.path().as_os_str(),
                    q.path().as_os_str(),
                ],
            )
            .context("converting the disk to qcow2")?;
            File::open(q.path())
                .and_then(|f| {
                    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
                    f.sync_all()
                })
                .with_context(|| format!("syncing {}", q.path().display()))?;
            progress.advance(layout.disk_size, 0);
            progress.finish();
            q
        }
    };
    final_tmp
        .persist(&opts.output)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the finished disk to {}", opts.output.display()))?;
    sync_dir(&out_dir)?;

    let manifest = DiskManifest {
        version: 1,
        disk: opts
            .output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format: opts.format.as_str().to_string(),
        size: layout.disk_size,
        sector_size: SECTOR,
        disk_guid: ids.disk_guid,
        partitions: vec![
            PartitionInfo {
                number: 1,
                name: "ESP".into(),
                type_guid: ESP_TYPE.into(),
                part_uuid: ids.esp_uuid,
                offset: layout.esp_offset,
                size: layout.esp_size,
                filesystem: "vfat".into(),
                fs_uuid: format!("{:04X}-{:04X}", vfat_id >> 16, vfat_id & 0xffff),
            },
            PartitionInfo {
                number: 2,
                name: "root".into(),
                type_guid: ROOT_X86_64_TYPE.into(),
                part_uuid: ids.root_uuid,
                offset: layout.root_offset,
                size: layout.root_size,
                filesystem: "ext4".into(),
                fs_uuid: fs_uuid.to_string(),
            },
        ],
        root_digest,
        tree_inodes: usage.inodes,
        tree_bytes: usage.apparent_bytes,
        boot: BootInfo {
            kernel_sha256: sha256_file(&kernel)?,
            kernel,
            initrd,
            cmdline,
            uefi,
        },
    };
    manifest.save_for(&opts.output)?;
    Ok(manifest)
}

/// Refuse outputs that are directories or devices, and missing directories.
fn check_output(output: &Path) -> Result<()> {
    if let Ok(md) = std::fs::metadata(output) {
        if !md.is_file() {
            bail!(
                "output {} exists and is not a regular file; name a new disk file",
                output.display()
            );
        }
    }
    let dir = parent_dir(output);
    if !dir.is_dir() {
        bail!(
            "output directory {} does not exist; create it or choose another -o",
            dir.display()
        );
    }
    Ok(())
}

/// Put the kernel, initrd, a systemd-boot entry and (when installed)
/// systemd-boot itself into `dir`. Returns whether the ESP can boot by itself.
fn stage_esp(dir: &Path, kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> Result<bool> {
    let copy = |from: &Path, to: &Path| -> Result<()> {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} into the ESP", from.display()))?;
        Ok(())
    };
    copy(kernel, &dir.join("vmlinuz"))?;
    let mut entry = String::from("title standin\nlinux /vmlinuz\n");
    if let Some(i) = initrd {
        copy(i, &dir.join("initrd.img"))?;
        entry.push_str("initrd /initrd.img\n");
    }
    entry.push_str(&format!("options {cmdline}\n"));
    let write = |to: &Path, text: &str| -> Result<()> {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))
    };
    write(&dir.join("loader/entries/standin.conf"), &entry)?;
    write(
        &dir.join("loader/loader.conf"),
        "default standin.conf\ntimeout 0\n",
    )?;
    write(&dir.join("standin/cmdline"), &format!("{cmdline}\n"))?;
    let sdboot = Path::new(SYSTEMD_BOOT);
    if sdboot.is_file() {
        copy(sdboot, &dir.join("EFI/BOOT/BOOTX64.EFI"))?;
        Ok(true)
    } else {
        Ok(false)
    }
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("reading {}", p.display()))?
        .len())
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn rand_u32() -> u32 {
    let b = Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
