//! Partition layout and the GPT itself (protective MBR, primary and backup
//! headers), written with the `gpt` crate.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{bail, Context, Result};
use uuid::Uuid;

/// Logical sector size of the disks.
pub const SECTOR: u64 = 512;
/// One mebibyte: the partition alignment.
pub const MIB: u64 = 1024 * 1024;
/// GPT type GUID of an EFI system partition.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// GPT type GUID of an x86-64 root partition (Discoverable Partitions Specification).
pub const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// Where the partitions go on the disk; all offsets and sizes in bytes and
/// multiples of [`MIB`] (except `disk_size`, a multiple of [`SECTOR`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub esp_offset: u64,
    pub esp_size: u64,
    pub root_offset: u64,
    pub root_size: u64,
}

impl Layout {
    /// The layout for an ESP of `esp_size` and a root of `root_size`, with
    /// 1 MiB before (MBR, primary GPT) and 1 MiB after (backup GPT).
    pub fn new(esp_size: u64, root_size: u64) -> Layout {
        let esp_size = esp_size.div_ceil(MIB) * MIB;
        let root_size = root_size.div_ceil(MIB) * MIB;
        Layout {
            disk_size: MIB + esp_size + root_size + MIB,
            esp_offset: MIB,
            esp_size,
            root_offset: MIB + esp_size,
            root_size,
        }
    }

    /// The layout for a disk of exactly `disk_size` bytes: the root takes
    /// what the ESP leaves. Fails when `disk_size` cannot hold `root_needed`.
    pub fn fixed(disk_size: u64, esp_size: u64, root_needed: u64) -> Result<Layout> {
        if disk_size % SECTOR != 0 {
            bail!(
                "--size {disk_size} is not a multiple of {SECTOR} bytes; pass a multiple of 1 MiB"
            );
        }
        let esp_size = esp_size.div_ceil(MIB) * MIB;
        let avail = disk_size.saturating_sub(2 * MIB + esp_size) / MIB * MIB;
        if avail < root_needed {
            bail!(
                "the tree does not fit: its root filesystem needs about {} MiB but --size {} ({} MiB) \
                 leaves {} MiB for it after the {} MiB EFI partition; pass --size {} or more, or leave --size out",
                root_needed.div_ceil(MIB),
                disk_size,
                disk_size / MIB,
                avail / MIB,
                esp_size / MIB,
                root_needed.div_ceil(MIB) * MIB + 2 * MIB + esp_size
            );
        }
        Ok(Layout {
            disk_size,
            esp_offset: MIB,
            esp_size,
            root_offset: MIB + esp_size,
            root_size: avail,
        })
    }
}

/// UUIDs written into the GPT.
#[derive(Debug, Clone, Copy)]
pub struct GptIds {
    pub disk_guid: Uuid,
    pub esp_uuid: Uuid,
    pub root_uuid: Uuid,
}

fn part_type(guid: &str) -> Result<gpt::partition_types::Type> {
    let guid = Uuid::parse_str(guid).context("parsing a partition type GUID")?;
    Ok(gpt::partition_types::Type {
        guid,
        os: gpt::partition_types::OperatingSystem::None,
    })
}

/// Write the protective MBR and both GPT headers with two partitions
/// (1: ESP, 2: root) into `file`, whose length must be `layout.disk_size`.
pub fn write_gpt(file: &mut File, layout: &Layout, ids: &GptIds, root_type: &str) -> Result<()> {
    let sectors = layout.disk_size / SECTOR;
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(0xFFFF_FFFF));
    mbr.overwrite_lba0(file)
        .context("writing the protective MBR")?;

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, Some(ids.disk_guid))
        .context("creating the GPT header")?;
    let mut parts = BTreeMap::new();
    parts.insert(
        1,
        gpt::partition::Partition {
            part_type_guid: part_type(ESP_TYPE)?,
            part_guid: ids.esp_uuid,
            first_lba: layout.esp_offset / SECTOR,
            last_lba: (layout.esp_offset + layout.esp_size) / SECTOR - 1,
            flags: 0,
            name: "ESP".to_string(),
        },
    );
    parts.insert(
        2,
        gpt::partition::Partition {
            part_type_guid: part_type(root_type)?,
            part_guid: ids.root_uuid,
            first_lba: layout.root_offset / SECTOR,
            last_lba: (layout.root_offset + layout.root_size) / SECTOR - 1,
            flags: 0,
            name: "root".to_string(),
        },
    );
    disk.update_partitions(parts)
        .context("setting the partition table")?;
    disk.write().context("writing the partition table")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_mib_aligned() {
        let l = Layout::new(64 * MIB, 100 * MIB + 5);
        assert_eq!(l.esp_offset, MIB);
        assert_eq!(l.root_offset, 65 * MIB);
        assert_eq!(l.root_size, 101 * MIB);
        assert_eq!(l.disk_size, 167 * MIB);
    }

    #[test]
    fn fixed_size_too_small_names_the_sizes() {
        let e = Layout::fixed(100 * MIB, 64 * MIB, 50 * MIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit"), "{e}");
        assert!(e.contains("--size"), "{e}");
        let l = Layout::fixed(200 * MIB, 64 * MIB, 50 * MIB).unwrap();
        assert_eq!(l.root_size, 134 * MIB);
    }

    #[test]
    fn gpt_round_trips_through_the_crate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        let l = Layout::new(8 * MIB, 8 * MIB);
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(l.disk_size).unwrap();
        let ids = GptIds {
            disk_guid: Uuid::new_v4(),
            esp_uuid: Uuid::new_v4(),
            root_uuid: Uuid::new_v4(),
        };
        write_gpt(&mut f, &l, &ids, ROOT_X86_64_TYPE).unwrap();
        drop(f);
        let disk = gpt::GptConfig::new().open(&p).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts[&2].part_guid, ids.root_uuid);
        assert_eq!(parts[&2].first_lba * SECTOR, l.root_offset);
        assert_eq!(parts[&1].part_type_guid.guid.to_string(), ESP_TYPE);
        assert!(disk.backup_header().is_ok());
    }
}
