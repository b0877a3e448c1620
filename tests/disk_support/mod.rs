//! Helpers shared by the disk tests: independent checks of a built disk with
//! sfdisk, sgdisk, e2fsck, fsck.vfat and debugfs, and small trees to build.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::common::{require_tool, run_ok};

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const MIB: u64 = 1024 * 1024;

/// The repository's images/ directory.
pub fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Every tool the disk tests use; a missing one fails with its install command.
pub fn require_disk_tools() {
    require_tool("mke2fs", "e2fsprogs");
    require_tool("e2fsck", "e2fsprogs");
    require_tool("debugfs", "e2fsprogs");
    require_tool("mkfs.vfat", "dosfstools");
    require_tool("fsck.vfat", "dosfstools");
    require_tool("mcopy", "mtools");
    require_tool("sgdisk", "gdisk");
    require_tool("sfdisk", "fdisk");
    require_tool("qemu-img", "qemu-utils");
    require_tool("busybox", "busybox-static");
}

/// `standin image disk --recipe RECIPE -o OUT` (add options with `.args`).
pub fn disk_from_recipe(recipe: impl AsRef<OsStr>, out: impl AsRef<OsStr>) -> Command {
    let mut cmd = crate::common::standin();
    cmd.args(["image", "disk", "--recipe"])
        .arg(recipe)
        .arg("-o")
        .arg(out);
    cmd
}

/// `standin image disk --root TREE -o OUT` (add options with `.args`).
pub fn disk_from_root(tree: impl AsRef<OsStr>, out: impl AsRef<OsStr>) -> Command {
    let mut cmd = crate::common::standin();
    cmd.args(["image", "disk", "--root"])
        .arg(tree)
        .arg("-o")
        .arg(out);
    cmd
}

/// `standin image boot DISK --expect EXPECT --timeout SECS` (add options with `.args`).
pub fn boot_cmd(disk: &Path, expect: &str, timeout_secs: u32) -> Command {
    let mut cmd = crate::common::standin();
    cmd.args(["image", "boot"])
        .arg(disk)
        .args(["--expect", expect, "--timeout"])
        .arg(timeout_secs.to_string());
    cmd
}

/// The disk manifest written beside `disk`.
pub fn manifest(disk: &Path) -> serde_json::Value {
    let p = PathBuf::from(format!("{}.json", disk.display()));
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_str(&text).expect("parsing the disk manifest")
}

/// A raw view of `disk`: itself, or a raw conversion of a qcow2 disk into `scratch`.
pub fn raw_view(disk: &Path, scratch: &Path) -> PathBuf {
    let m = manifest(disk);
    if m["format"] == "raw" {
        return disk.to_path_buf();
    }
    let info = run_ok(
        Command::new(require_tool("qemu-img", "qemu-utils"))
            .args(["info", "--output=json"])
            .arg(disk),
        None,
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "qemu-img info: {info}");
    assert_eq!(
        info["virtual-size"], m["size"],
        "qcow2 virtual size vs manifest"
    );
    let raw = scratch.join("converted.raw");
    run_ok(
        Command::new(require_tool("qemu-img", "qemu-utils"))
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
        None,
    );
    raw
}

/// Check a disk with independent tools: GPT valid (sgdisk -v, sfdisk --json),
/// the expected type GUIDs and UUIDs, 1 MiB alignment, e2fsck -fn clean on
/// the root, fsck.vfat clean on the ESP. Returns the extracted root filesystem.
pub fn check_disk(disk: &Path, scratch: &Path) -> PathBuf {
    let m = manifest(disk);
    let raw = raw_view(disk, scratch);
    let out = run_ok(
        Command::new(require_tool("sgdisk", "gdisk"))
            .arg("-v")
            .arg(&raw),
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");

    let out = run_ok(
        Command::new(require_tool("sfdisk", "fdisk"))
            .arg("--json")
            .arg(&raw),
        None,
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sfdisk --json output");
    let table = &j["partitiontable"];
    assert_eq!(table["label"], "gpt", "{j}");
    assert_eq!(table["sectorsize"], 512, "{j}");
    assert_eq!(
        table["id"].as_str().unwrap().to_lowercase(),
        m["disk_guid"].as_str().unwrap(),
        "disk GUID vs manifest"
    );
    let parts = table["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 2, "{j}");
    let types = [ESP_TYPE, ROOT_X86_64_TYPE];
    for (i, p) in parts.iter().enumerate() {
        let start = p["start"].as_u64().unwrap();
        let size = p["size"].as_u64().unwrap();
        assert_eq!(
            start % 2048,
            0,
            "partition {} start {start} not 1 MiB aligned",
            i + 1
        );
        assert_eq!(
            size % 2048,
            0,
            "partition {} size {size} not a MiB multiple",
            i + 1
        );
        assert_eq!(p["type"], types[i], "partition {} type", i + 1);
        let mp = &m["partitions"][i];
        assert_eq!(
            p["uuid"].as_str().unwrap().to_lowercase(),
            mp["part_uuid"].as_str().unwrap()
        );
        assert_eq!(start * 512, mp["offset"].as_u64().unwrap());
        assert_eq!(size * 512, mp["size"].as_u64().unwrap());
    }
    let root = &m["partitions"][1];
    assert!(
        m["boot"]["cmdline"].as_str().unwrap().contains(&format!(
            "root=PARTUUID={}",
            root["part_uuid"].as_str().unwrap()
        )),
        "cmdline names the root partition: {m}"
    );

    let ext4 = scratch.join("root.ext4");
    extract(
        &raw,
        root["offset"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
        &ext4,
    );
    let out = run_ok(
        Command::new(require_tool("e2fsck", "e2fsprogs"))
            .arg("-fn")
            .arg(&ext4),
        None,
    );
    assert!(out.status.success());
    let out = run_ok(
        Command::new(require_tool("debugfs", "e2fsprogs"))
            .args(["-R", "stats"])
            .arg(&ext4),
        None,
    );
    let stats = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        stats.contains(root["fs_uuid"].as_str().unwrap()),
        "filesystem UUID from the manifest not in debugfs stats"
    );

    let esp = &m["partitions"][0];
    let vfat = scratch.join("esp.vfat");
    extract(
        &raw,
        esp["offset"].as_u64().unwrap(),
        esp["size"].as_u64().unwrap(),
        &vfat,
    );
    run_ok(
        Command::new(require_tool("fsck.vfat", "dosfstools"))
            .arg("-n")
            .arg(&vfat),
        None,
    );
    ext4
}

/// Copy `size` bytes at `offset` of `disk` to `to` (dd, sparse).
pub fn extract(disk: &Path, offset: u64, size: u64, to: &Path) {
    assert_eq!(offset % MIB, 0);
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", disk.display()))
            .arg(format!("of={}", to.display()))
            .args(["bs=1M", "conv=sparse", "status=none"])
            .arg(format!("skip={}", offset / MIB))
            .arg(format!("count={}", size / MIB)),
        None,
    );
}

/// `debugfs -R CMD fs` output.
pub fn debugfs(fs: &Path, cmd: &str) -> String {
    let out = run_ok(
        Command::new(require_tool("debugfs", "e2fsprogs"))
            .args(["-R", cmd])
            .arg(fs),
        None,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bootable busybox tree made by hand (no recipe): busybox and its applet
/// links, the demo init, a hostname, a data file, and init.conf that says
/// `AFTER`. Returns the data file's content.
pub fn busybox_tree(dir: &Path, hostname: &str, after: &str) -> Vec<u8> {
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/standin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "srv/data",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let bb = require_tool("busybox", "busybox-static");
    std::fs::copy(&bb, dir.join("bin/busybox")).unwrap();
    let list = run_ok(Command::new(&bb).arg("--list-full"), None);
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join(line.trim_start_matches('/'));
        if line.ends_with("/busybox") || link.symlink_metadata().is_ok() {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", link).unwrap();
    }
    std::fs::remove_file(dir.join("sbin/init")).ok();
    std::fs::copy(
        images_dir().join("demo-source/init.sh"),
        dir.join("sbin/init"),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("sbin/init"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.join("etc/hostname"), format!("{hostname}\n")).unwrap();
    std::fs::write(
        dir.join("etc/standin/init.conf"),
        format!("AFTER={after}\nDATA_FILE=/srv/data/data.txt\n"),
    )
    .unwrap();
    let data = format!(
        "data of {hostname}, made at {:?}\n",
        std::time::SystemTime::now()
    )
    .into_bytes();
    std::fs::write(dir.join("srv/data/data.txt"), &data).unwrap();
    data
}

/// Processes (pid, command line) whose command line mentions `needle`,
/// read from /proc (no procps needed). The caller's own process is left out.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Fail when a qemu for `disk` is still running.
pub fn assert_no_qemu_left(disk: &Path) {
    let left: Vec<_> = processes_mentioning(&disk.display().to_string())
        .into_iter()
        .filter(|(_, c)| c.contains("qemu-system"))
        .collect();
    assert!(
        left.is_empty(),
        "qemu still running for {}: {left:?}",
        disk.display()
    );
}
