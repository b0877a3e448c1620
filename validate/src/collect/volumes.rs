//! Volumes: mounted filesystems (live) or fstab entries (a tree), with
//! sizes from statvfs and block-device facts from /sys, /dev/disk and lsblk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::facts::Facts;
use crate::profile::Volume;

/// Filesystem types that hold data.
pub const DISK_FS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "f2fs", "jfs", "reiserfs", "zfs",
    "ntfs", "ntfs3", "bcachefs",
];

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    pub majmin: String,
    pub root: String,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn mountinfo(facts: &dyn Facts) -> Vec<Mount> {
    let Some(text) = facts.read_text(Path::new("/proc/self/mountinfo")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 5 || r.len() < 2 {
                return None;
            }
            Some(Mount {
                majmin: f[2].to_string(),
                root: unescape(f[3]),
                mount_point: unescape(f[4]),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

fn pseudo_path(mp: &str) -> bool {
    ["/proc", "/sys", "/dev", "/run"]
        .iter()
        .any(|p| crate::profile::path_is_under(mp, p))
}

pub(crate) fn volumes(facts: &dyn Facts, notes: &mut Vec<String>) -> Vec<Volume> {
    let mounts = mountinfo(facts);
    if mounts.is_empty() {
        notes.push("/proc/self/mountinfo unreadable: no volumes".into());
    }
    let block = BlockInfo::load(facts);
    let vols = if facts.root() == Path::new("/") {
        live_volumes(facts, &mounts, &block, notes)
    } else {
        tree_volumes(facts, &mounts, &block, notes)
    };
    if vols.is_empty() && !mounts.is_empty() {
        notes.push(format!(
            "no data filesystem mounted (looked for {})",
            DISK_FS.join(", ")
        ));
    }
    vols
}

fn live_volumes(
    facts: &dyn Facts,
    mounts: &[Mount],
    block: &BlockInfo,
    notes: &mut Vec<String>,
) -> Vec<Volume> {
    let mut by_mp: BTreeMap<String, &Mount> = BTreeMap::new();
    for m in mounts {
        if !DISK_FS.contains(&m.fs_type.as_str()) || pseudo_path(&m.mount_point) {
            continue;
        }
        if m.root != "/" && m.fs_type != "btrfs" {
            continue; // a bind mount of a sub-directory: not a volume of its own
        }
        by_mp.insert(m.mount_point.clone(), m);
    }
    let mut out = Vec::new();
    for (mp, m) in by_mp {
        let Ok(st) = facts.statvfs(Path::new(&mp)) else {
            notes.push(format!("statvfs {mp} failed: volume left out"));
            continue;
        };
        let mut v = Volume {
            mount_point: mp,
            fs_type: m.fs_type.clone(),
            size_bytes: st.size,
            used_bytes: st.used,
            free_bytes: st.free,
            source: Some(m.source.clone()),
            fs_uuid: None,
            part_type: None,
            part_uuid: None,
            lvm: false,
            md: false,
            dm: false,
        };
        block.fill(facts, &m.majmin, &mut v);
        out.push(v);
    }
    out
}

/// A tree's volumes: `/` plus its fstab's data filesystems, measured where
/// the tree lies on this machine.
fn tree_volumes(
    facts: &dyn Facts,
    mounts: &[Mount],
    block: &BlockInfo,
    notes: &mut Vec<String>,
) -> Vec<Volume> {
    let mut entries: Vec<(String, String, String)> = Vec::new(); // (spec, mp, type)
    if let Some(text) = facts.read_text(&facts.in_root("etc/fstab")) {
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 3 || w[0].starts_with('#') {
                continue;
            }
            let mp = unescape(w[1]);
            if !mp.starts_with('/') || pseudo_path(&mp) {
                continue;
            }
            if DISK_FS.contains(&w[2]) || w[2] == "auto" {
                entries.push((w[0].to_string(), mp, w[2].to_string()));
            }
        }
    }
    if !entries.iter().any(|e| e.1 == "/") {
        entries.insert(0, (String::new(), "/".into(), String::new()));
    }
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    entries.dedup_by(|a, b| a.1 == b.1);
    let mut out = Vec::new();
    let all_mps: Vec<String> = entries.iter().map(|e| e.1.clone()).collect();
    for (spec, mp, fs_type) in entries {
        let path: PathBuf = facts.in_root(&mp);
        let Ok(st) = facts.stat(&path) else {
            notes.push(format!(
                "fstab names {mp} but the tree has no such directory: volume left out"
            ));
            continue;
        };
        let Ok(vfs) = facts.statvfs(&path) else {
            notes.push(format!(
                "statvfs {} failed: volume left out",
                path.display()
            ));
            continue;
        };
        let majmin = format!(
            "{}:{}",
            rustix::fs::major(st.dev),
            rustix::fs::minor(st.dev)
        );
        let live = mounts
            .iter()
            .filter(|m| m.majmin == majmin && DISK_FS.contains(&m.fs_type.as_str()))
            .min_by_key(|m| m.mount_point.len());
        let is_mount_point = live.is_some_and(|m| Path::new(&m.mount_point) == path);
        let (mut used, mut size) = (vfs.used, vfs.size);
        if !is_mount_point {
            // The tree is a directory on a bigger filesystem: its own data is
            // what it holds, not the whole filesystem's.
            used = facts
                .allocated_bytes(&path, &skip_under(facts, &mp, &all_mps))
                .unwrap_or(vfs.used);
            size = used + vfs.free;
            notes.push(format!(
                "{mp}: tree is not a mount point; used bytes counted from its files, free from the filesystem holding it"
            ));
        }
        let mut v = Volume {
            mount_point: mp.clone(),
            fs_type: if fs_type.is_empty() || fs_type == "auto" {
                live.map(|m| m.fs_type.clone())
                    .unwrap_or_else(|| "unknown".into())
            } else {
                fs_type
            },
            size_bytes: size,
            used_bytes: used,
            free_bytes: vfs.free,
            source: if spec.is_empty() {
                live.map(|m| m.source.clone())
            } else {
                Some(spec.clone())
            },
            fs_uuid: spec.strip_prefix("UUID=").map(str::to_string),
            part_type: None,
            part_uuid: spec.strip_prefix("PARTUUID=").map(str::to_string),
            lvm: false,
            md: false,
            dm: false,
        };
        if spec.is_empty() || is_mount_point {
            block.fill(facts, &majmin, &mut v);
        }
        out.push(v);
    }
    out
}

/// What not to count under volume `mp` of a tree: virtual directories and
/// the other volumes' mount points (counted on their own).
fn skip_under(facts: &dyn Facts, mp: &str, all: &[String]) -> Vec<PathBuf> {
    ["proc", "sys", "dev", "run"]
        .iter()
        .map(|p| facts.in_root(p))
        .chain(
            all.iter()
                .filter(|o| o.as_str() != mp && crate::profile::path_is_under(o, mp))
                .map(|o| facts.in_root(o)),
        )
        .collect()
}

/// Filesystem UUID, partition type and partition UUID from lsblk.
type LsblkIds = (Option<String>, Option<String>, Option<String>);

/// Block device facts keyed by `major:minor`.
#[derive(Debug, Default)]
struct BlockInfo {
    /// From `lsblk -J`: maj:min → (uuid, parttype, partuuid).
    lsblk: BTreeMap<String, LsblkIds>,
}

impl BlockInfo {
    fn load(facts: &dyn Facts) -> BlockInfo {
        let mut info = BlockInfo::default();
        let Ok(out) = facts.run("lsblk", &["-J", "-o", "MAJ:MIN,UUID,PARTTYPE,PARTUUID"]) else {
            return info;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return info;
        };
        fn walk(v: &serde_json::Value, info: &mut BlockInfo) {
            let Some(arr) = v.as_array() else { return };
            for d in arr {
                let s = |k: &str| d.get(k).and_then(|x| x.as_str()).map(str::to_string);
                if let Some(mm) = s("maj:min") {
                    info.lsblk.insert(
                        mm.trim().to_string(),
                        (s("uuid"), s("parttype"), s("partuuid")),
                    );
                }
                if let Some(c) = d.get("children") {
                    walk(c, info);
                }
            }
        }
        if let Some(devs) = v.get("blockdevices") {
            walk(devs, &mut info);
        }
        info
    }

    fn fill(&self, facts: &dyn Facts, majmin: &str, v: &mut Volume) {
        let sys = PathBuf::from(format!("/sys/dev/block/{majmin}"));
        let name = facts
            .read_link(&sys)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if let Some((uuid, ptype, puuid)) = self.lsblk.get(majmin) {
            v.fs_uuid = v.fs_uuid.take().or_else(|| uuid.clone());
            v.part_type = v.part_type.take().or_else(|| ptype.clone());
            v.part_uuid = v.part_uuid.take().or_else(|| puuid.clone());
        }
        let Some(name) = name else { return };
        if v.fs_uuid.is_none() {
            v.fs_uuid = link_naming(facts, "/dev/disk/by-uuid", &name);
        }
        if v.part_uuid.is_none() {
            v.part_uuid = link_naming(facts, "/dev/disk/by-partuuid", &name).or_else(|| {
                let ue = facts.read_text(&sys.join("uevent"))?;
                crate::collect::system::parse_env(&ue)
                    .into_iter()
                    .find(|(k, _)| k == "PARTUUID")
                    .map(|(_, u)| u)
            });
        }
        if v.fs_uuid.is_none() || v.part_uuid.is_none() || v.part_type.is_none() {
            blkid(facts, &name, v);
        }
        v.dm = name.starts_with("dm-");
        v.md = name.starts_with("md");
        if v.dm {
            v.lvm = facts
                .read_text(&sys.join("dm/uuid"))
                .is_some_and(|u| u.starts_with("LVM-"));
        }
    }
}

/// The name of the link in `dir` that points at device `name`.
fn link_naming(facts: &dyn Facts, dir: &str, name: &str) -> Option<String> {
    let dir = Path::new(dir);
    for l in facts.read_dir(dir).ok()? {
        let target = facts.read_link(&dir.join(&l)).ok()?;
        if target.file_name().is_some_and(|n| n == name) {
            return Some(l);
        }
    }
    None
}

/// Last resort for UUIDs: `blkid -p -o export /dev/NAME` (needs root).
fn blkid(facts: &dyn Facts, name: &str, v: &mut Volume) {
    let dev = format!("/dev/{name}");
    let Ok(out) = facts.run("blkid", &["-p", "-o", "export", &dev]) else {
        return;
    };
    if !out.success {
        return;
    }
    let env = crate::collect::system::parse_env(&String::from_utf8_lossy(&out.stdout));
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, x)| x.clone());
    v.fs_uuid = v.fs_uuid.take().or_else(|| get("UUID"));
    v.part_type = v.part_type.take().or_else(|| get("PART_ENTRY_TYPE"));
    v.part_uuid = v.part_uuid.take().or_else(|| get("PART_ENTRY_UUID"));
}
