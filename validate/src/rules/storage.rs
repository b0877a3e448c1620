//! Volumes, capacity (three steps) and where the staging area lives.

use std::path::PathBuf;

use crate::collect::DEFAULT_STAGING_PATH;
use crate::fixes::Fix;
use crate::profile::{Profile, Staging};
use crate::report::{Finding, Severity};

use super::bytes;

/// The source's system paths whose used data must fit (capacity step 2).
pub const SYSTEM_PATHS: &[&str] = &[
    "/", "/usr", "/etc", "/var", "/opt", "/home", "/srv", "/boot",
];

/// Mount points the swap keeps from the target (its boot loader's).
const TARGET_KEEPS: &[&str] = &["/boot/efi", "/efi"];

/// Where the target's staging area is: as the profile says, or the default
/// path placed on the target's volumes.
fn staging_of(t: &Profile) -> Staging {
    if let Some(s) = &t.staging {
        return s.clone();
    }
    let vol = t.volume_for(DEFAULT_STAGING_PATH);
    Staging {
        path: PathBuf::from(DEFAULT_STAGING_PATH),
        mount_point: vol.map_or_else(|| "/".into(), |v| v.mount_point.clone()),
        device_id: None,
        free_bytes: vol.map_or(0, |v| v.free_bytes),
        same_fs_as_root: vol.is_none_or(|v| v.mount_point == "/"),
    }
}

/// A staging path on the target's root filesystem (not under another volume).
pub fn choose_staging_path(t: &Profile) -> PathBuf {
    for c in [
        DEFAULT_STAGING_PATH,
        "/srv/standin/staging",
        "/standin/staging",
    ] {
        if t.volume_for(c).is_none_or(|v| v.mount_point == "/") {
            return PathBuf::from(c);
        }
    }
    PathBuf::from("/.standin-staging")
}

pub(super) fn volumes(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    for sv in s.volumes.iter().filter(|v| v.used_bytes > 0) {
        if TARGET_KEEPS.contains(&sv.mount_point.as_str()) {
            continue;
        }
        let id = format!("volume.{}.fs", sv.mount_point);
        match t.volumes.iter().find(|tv| tv.mount_point == sv.mount_point) {
            None => f.push(
                Finding::new(
                    id,
                    Severity::Error,
                    format!(
                        "source volume {} ({}, {} used) has no target volume at the same mount point",
                        sv.mount_point,
                        sv.fs_type,
                        bytes(sv.used_bytes)
                    ),
                )
                .details(format!(
                    "target volumes: {}",
                    t.volumes.iter().map(|v| format!("{} ({})", v.mount_point, v.fs_type)).collect::<Vec<_>>().join(", ")
                ))
                .manual(format!("create a {} volume mounted at {} on the target", sv.fs_type, sv.mount_point)),
            ),
            Some(tv) if tv.fs_type != sv.fs_type => f.push(
                Finding::new(
                    id,
                    Severity::Error,
                    format!(
                        "filesystem types differ at {}: source {}, target {}",
                        sv.mount_point, sv.fs_type, tv.fs_type
                    ),
                )
                .details(format!("a {} volume cannot go onto {}: ownership, attributes and limits differ", sv.fs_type, tv.fs_type))
                .manual(format!("make the target's {} a {} filesystem", sv.mount_point, sv.fs_type)),
            ),
            Some(tv) => f.push(Finding::new(
                id,
                Severity::Ok,
                format!("{}: {} on both (source {} used, target {} free)", sv.mount_point, sv.fs_type, bytes(sv.used_bytes), bytes(tv.free_bytes)),
            )),
        }
    }
}

pub(super) fn capacity(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let st = staging_of(t);
    let avail = st.free_bytes;
    let reclaim = t.reclaimable_bytes.unwrap_or(0);
    let full: u64 = s.volumes.iter().map(|v| v.used_bytes + v.free_bytes).sum();
    let sys: u64 = s
        .volumes
        .iter()
        .filter(|v| SYSTEM_PATHS.contains(&v.mount_point.as_str()))
        .map(|v| v.used_bytes)
        .sum();
    let where_ = format!(
        "staging filesystem {} (for {})",
        st.mount_point,
        st.path.display()
    );
    let id = "capacity.staging";
    let details = format!(
        "step 1: all source volumes, used and free: {}; step 2: used data of {}: {}; step 3: reclaimable from an earlier failover attempt: {}",
        bytes(full),
        SYSTEM_PATHS.join(" "),
        bytes(sys),
        bytes(reclaim)
    );
    let grow = "free space on the target's root filesystem or grow it";
    if avail >= full {
        f.push(
            Finding::new(
                id,
                Severity::Ok,
                format!(
                    "{where_} has {} free; all source volumes need {}",
                    bytes(avail),
                    bytes(full)
                ),
            )
            .details(details),
        );
    } else if avail >= sys {
        f.push(
            Finding::new(
                id,
                Severity::Warning,
                format!(
                    "{where_} has {} free: {} short of all source volumes ({}), but holds the used data of the system paths ({})",
                    bytes(avail),
                    bytes(full - avail),
                    bytes(full),
                    bytes(sys)
                ),
            )
            .details(details)
            .manual(format!("{grow}, so the replica can grow as the source fills its volumes")),
        );
    } else if avail + reclaim >= sys {
        f.push(
            Finding::new(
                id,
                Severity::Warning,
                format!(
                    "{where_} has {} free, {} short of the used data of the system paths ({}); with {} reclaimable from an earlier failover attempt it fits",
                    bytes(avail),
                    bytes(sys - avail),
                    bytes(sys),
                    bytes(reclaim)
                ),
            )
            .details(details)
            .manual("the earlier failover attempt's rollback area will be reclaimed when protection starts; free space to keep it"),
        );
    } else {
        let missing = sys - avail - reclaim;
        f.push(
            Finding::new(
                id,
                Severity::Error,
                format!(
                    "{where_} has {} free and {} reclaimable; the used data of the system paths needs {}: {} missing",
                    bytes(avail),
                    bytes(reclaim),
                    bytes(sys),
                    bytes(missing)
                ),
            )
            .details(details)
            .manual(format!("{grow} by at least {}", bytes(missing))),
        );
    }
}

pub(super) fn same_fs(t: &Profile, f: &mut Vec<Finding>) {
    let st = staging_of(t);
    if st.same_fs_as_root {
        f.push(Finding::new(
            "staging.same-fs",
            Severity::Ok,
            format!(
                "staging path {} is on the target's root filesystem ({})",
                st.path.display(),
                st.mount_point
            ),
        ));
    } else {
        let path = choose_staging_path(t);
        f.push(
            Finding::new(
                "staging.same-fs",
                Severity::Error,
                format!(
                    "staging path {} is on {}, not on the target's root filesystem /",
                    st.path.display(),
                    st.mount_point
                ),
            )
            .details("the failover swap is a set of renames, which only work within one filesystem")
            .auto(Fix::SetStagingPath { path }),
        );
    }
}
