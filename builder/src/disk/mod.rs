//! Bootable GPT disk images of system trees.
//!
//! A disk holds a protective MBR, a GPT (primary and backup headers, written
//! with the `gpt` crate), an EFI system partition (vfat, filled with the
//! kernel, initrd and a systemd-boot entry when systemd-boot is installed)
//! and a root partition whose type GUID follows the Discoverable Partitions
//! Specification, formatted ext4 and filled from the tree with `mke2fs -d`.
//! Partitions start on 1 MiB boundaries. Nothing needs root or loop devices:
//! `mke2fs -E offset=` and `mkfs.vfat --offset` write straight into the disk
//! file. A [`DiskManifest`] (`DISK.json` beside the disk) records the layout,
//! the filesystem UUIDs, the root digest of the tree and how to boot it.
//!
//! The disk is built under a temporary name in the output directory, fsynced
//! and renamed, so the final name only ever holds a complete disk.

mod build;
mod digest;
mod fs;
mod layout;
mod manifest;
mod size;
mod tools;

pub use build::{build_disk, BootConfig, DiskFormat, DiskOptions};
pub use digest::tree_root_digest;
pub use fs::OwnerFixup;
pub use layout::{Layout, ESP_TYPE, MIB, ROOT_X86_64_TYPE, SECTOR};
pub use manifest::{manifest_path, BootInfo, DiskManifest, PartitionInfo};
pub use size::{estimate_tree, TreeUsage};
pub use tools::{find_qemu, find_tool, newest_boot_file, run_tool};
