//! Where the staging area would live, its filesystem and free space, and
//! what a target state directory adds (configured path, reclaimable bytes).

use std::path::{Path, PathBuf};

use crate::facts::Facts;
use crate::profile::{Profile, Staging};
use crate::state::TargetConfig;

use super::CollectOptions;

/// Staging path used when neither the caller nor the state directory names one.
pub const DEFAULT_STAGING_PATH: &str = "/var/lib/standin/staging";

/// Bytes allocated under `dir` (0 when it does not exist).
pub fn dir_allocated_bytes(facts: &dyn Facts, dir: &Path) -> u64 {
    if !facts.exists(dir) {
        return 0;
    }
    facts.allocated_bytes(dir, &[]).unwrap_or(0)
}

pub(crate) fn staging(facts: &dyn Facts, opts: &CollectOptions, profile: &mut Profile) {
    let mut path = opts.staging_path.clone();
    if let Some(sd) = &opts.state_dir {
        if !facts.exists(sd) {
            profile
                .notes
                .push(format!("state directory {} does not exist", sd.display()));
        }
        match TargetConfig::load(sd) {
            Ok(cfg) => {
                path = path.or(cfg.staging_path);
                profile.services_to_stop = cfg.services_to_stop;
            }
            Err(e) => profile.notes.push(format!("{e:#}")),
        }
        profile.reclaimable_bytes = Some(dir_allocated_bytes(facts, &sd.join("rollback")));
    }
    let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_STAGING_PATH));
    let on_disk = facts.in_root(&path.to_string_lossy());
    let Some(existing) = on_disk.ancestors().find(|a| facts.exists(a)) else {
        profile
            .notes
            .push(format!("no part of staging path {} exists", path.display()));
        return;
    };
    let (Ok(st), Ok(vfs)) = (facts.stat(existing), facts.statvfs(existing)) else {
        profile.notes.push(format!(
            "cannot measure staging path {}",
            existing.display()
        ));
        return;
    };
    let root_dev = facts.stat(facts.root()).ok().map(|s| s.dev);
    let mount_point = profile
        .volume_for(&path.to_string_lossy())
        .map(|v| v.mount_point.clone())
        .unwrap_or_else(|| "/".into());
    profile.staging = Some(Staging {
        path,
        mount_point,
        device_id: Some(st.dev),
        free_bytes: vfs.free,
        same_fs_as_root: root_dev == Some(st.dev),
    });
}
