//! The target state directory's configuration as far as validation fixes
//! touch it (`target-config.json`), durable writes, and how a state
//! directory changes a target profile.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::facts::LiveFacts;
use crate::profile::{Profile, Staging};

/// File name of the target configuration inside a state directory.
pub const CONFIG_FILE: &str = "target-config.json";

/// Target configuration written by fixes; fields other components add are
/// kept as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetConfig {
    /// Where the staging area lives (a path on the target's root filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_path: Option<PathBuf>,
    /// Services to stop and disable when protection starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services_to_stop: Vec<String>,
    /// Everything else in the file, kept untouched.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl TargetConfig {
    /// Path of the config file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(CONFIG_FILE)
    }

    /// Load it; a missing file is the default configuration.
    pub fn load(state_dir: &Path) -> Result<TargetConfig> {
        let p = Self::path(state_dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "reading {}: not a valid target configuration; fix or remove it",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TargetConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The JSON bytes this configuration is stored as.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = serde_json::to_string_pretty(self).expect("config serializes");
        s.push('\n');
        s.into_bytes()
    }
}

/// Write a file durably: temp file beside it, fsync, rename, fsync the directory.
pub fn write_durable(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode.unwrap_or(0o644)))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Remove a file durably (remove, fsync the directory).
pub fn remove_durable(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Apply what a target state directory says to a target profile: its
/// configured staging path (measured from the profile's volumes), the
/// services it will stop, and the bytes reclaimable from `rollback/`.
pub fn overlay(profile: &mut Profile, state_dir: &Path) -> Result<()> {
    let cfg = TargetConfig::load(state_dir)?;
    if let Some(path) = cfg.staging_path {
        if profile.staging.as_ref().is_none_or(|s| s.path != path) {
            let p = path.to_string_lossy().into_owned();
            let vol = profile.volume_for(&p);
            profile.staging = Some(Staging {
                mount_point: vol.map_or_else(|| "/".into(), |v| v.mount_point.clone()),
                device_id: None,
                free_bytes: vol.map_or(0, |v| v.free_bytes),
                same_fs_as_root: vol.is_none_or(|v| v.mount_point == "/"),
                path,
            });
        }
    }
    for s in cfg.services_to_stop {
        if !profile.services_to_stop.contains(&s) {
            profile.services_to_stop.push(s);
        }
    }
    let rollback = state_dir.join("rollback");
    if rollback.exists() {
        let facts = LiveFacts::new("/");
        profile.reclaimable_bytes = Some(crate::collect::dir_allocated_bytes(&facts, &rollback));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_unknown_fields() {
        let c: TargetConfig =
            serde_json::from_str(r#"{"staging_path":"/x","listen":"127.0.0.1:6320"}"#).unwrap();
        assert_eq!(c.staging_path.as_deref(), Some(Path::new("/x")));
        let back = String::from_utf8(c.to_bytes()).unwrap();
        assert!(back.contains("listen"), "{back}");
    }
}
