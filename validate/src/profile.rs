//! The profile of one machine and its versioned JSON form
//! (`"schema": "standin.profile/1"`, documented in docs/profile-schema.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The schema tag every profile file carries.
pub const SCHEMA: &str = "standin.profile/1";

/// Facts about one machine (or one system tree on this machine's hardware).
///
/// Required fields: `schema`, `os.id`, `os.version_id`, `arch`, `cpus`,
/// `memory_bytes`, `volumes`, `boot_mode`, `nics`, `hostname`. Everything
/// else may be absent: a fact that could not be collected is left out and
/// explained in `notes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The operating system (from os-release).
    pub os: Os,
    /// Kernel release (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Machine architecture as `uname -m` says it (`x86_64`, `aarch64`).
    pub arch: String,
    /// Number of logical CPUs.
    pub cpus: u32,
    /// CPU model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Filesystems that hold data.
    pub volumes: Vec<Volume>,
    /// How the machine boots.
    pub boot_mode: BootMode,
    /// The boot loader found in the tree (`grub`, `systemd-boot`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_loader: Option<String>,
    /// Network interfaces (loopback excluded).
    pub nics: Vec<Nic>,
    /// Host name (without domain).
    pub hostname: String,
    /// DNS domain, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Running services (systemd units); absent when they could not be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Services a target state directory says will be stopped and disabled
    /// when protection starts (set by the `services.target-running` fix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services_to_stop: Vec<String>,
    /// Version of the standin that collected this profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standin_version: Option<String>,
    /// Where the staging area would live (target side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<Staging>,
    /// Bytes that an earlier failover attempt left behind and that may be
    /// reclaimed (the state directory's `rollback/` area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimable_bytes: Option<u64>,
    /// Explanations of facts that are absent or approximate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Operating system identity from os-release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// `ID` (`debian`, `ubuntu`, `rhel`).
    pub id: String,
    /// `VERSION_ID` (`12`, `22.04`); empty when the release has none.
    pub version_id: String,
    /// `PRETTY_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
}

impl Os {
    /// The major version: `VERSION_ID` up to the first dot.
    pub fn major(&self) -> &str {
        self.version_id.split('.').next().unwrap_or("")
    }
}

/// UEFI or legacy BIOS boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// UEFI firmware (`/sys/firmware/efi` exists).
    Uefi,
    /// Legacy BIOS.
    Bios,
}

impl std::fmt::Display for BootMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootMode::Uefi => "UEFI",
            BootMode::Bios => "BIOS",
        })
    }
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Where it is mounted (`/`, `/home`).
    pub mount_point: String,
    /// Filesystem type (`ext4`, `xfs`).
    pub fs_type: String,
    /// Total size in bytes.
    pub size_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes free for ordinary use.
    pub free_bytes: u64,
    /// Source device (`/dev/sda2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Filesystem UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_uuid: Option<String>,
    /// GPT partition type GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_type: Option<String>,
    /// GPT partition UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_uuid: Option<String>,
    /// Sits on an LVM logical volume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lvm: bool,
    /// Sits on md-raid.
    #[serde(default, skip_serializing_if = "is_false")]
    pub md: bool,
    /// Sits on device-mapper (LVM, crypt, multipath).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dm: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Interface name (`eth0`, `enp1s0`).
    pub name: String,
    /// Hardware address; `null` when unknown.
    pub mac: Option<String>,
    /// Addresses in CIDR form (`192.0.2.10/24`).
    pub addresses: Vec<String>,
    /// Link state (`up`, `down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Kernel driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// Where the staging area lives (or would live) on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staging {
    /// The staging path.
    pub path: PathBuf,
    /// Mount point of the filesystem it lives on.
    pub mount_point: String,
    /// Device id (`st_dev`) of that filesystem, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<u64>,
    /// Free bytes on that filesystem.
    pub free_bytes: u64,
    /// Whether that filesystem is the one holding the root (`/`).
    pub same_fs_as_root: bool,
}

impl Profile {
    /// The volume holding `path`: the one with the longest mount point that
    /// is a prefix of it.
    pub fn volume_for(&self, path: &str) -> Option<&Volume> {
        self.volumes
            .iter()
            .filter(|v| path_is_under(path, &v.mount_point))
            .max_by_key(|v| v.mount_point.len())
    }

    /// Serialize as pretty JSON (with a trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("profile serializes");
        s.push('\n');
        s
    }

    /// Parse profile JSON; `name` (a file name) heads error messages.
    pub fn from_json(bytes: &[u8], name: &str) -> Result<Profile> {
        Self::parse(bytes).with_context(|| format!("loading profile {name}"))
    }

    fn parse(bytes: &[u8]) -> Result<Profile> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .context("not JSON; expected a standin profile (from `standin profile --json`)")?;
        match value.get("schema") {
            None => bail!("field `schema` is missing; expected \"{SCHEMA}\""),
            Some(serde_json::Value::String(s)) if s == SCHEMA => {}
            Some(serde_json::Value::String(s)) => bail!(
                "field `schema`: unknown schema version \"{s}\"; this standin reads \"{SCHEMA}\" (collect the profile again with this version)"
            ),
            Some(other) => bail!("field `schema`: expected a string, found {other}"),
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let profile: Profile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            let field = missing_field(&msg).map(|f| {
                if path == "." {
                    f.to_string()
                } else {
                    format!("{path}.{f}")
                }
            });
            match field {
                Some(f) => anyhow::anyhow!("field `{f}` is missing ({msg})"),
                None => anyhow::anyhow!("field `{path}`: {msg}"),
            }
        })?;
        Ok(profile)
    }

    /// Load a profile file, with errors that name the file and the field.
    pub fn load(path: &Path) -> Result<Profile> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading profile {}", path.display()))?;
        Profile::from_json(&bytes, &path.display().to_string())
    }
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Whether `path` is `mount` or lies beneath it (by whole components).
pub fn path_is_under(path: &str, mount: &str) -> bool {
    if mount == "/" {
        return path.starts_with('/');
    }
    let mount = mount.trim_end_matches('/');
    path == mount || path.strip_prefix(mount).is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under() {
        assert!(path_is_under("/var/lib", "/"));
        assert!(path_is_under("/var/lib", "/var"));
        assert!(!path_is_under("/variable", "/var"));
        assert!(path_is_under("/var", "/var"));
    }
}
