//! Retention: which snapshots `prune` keeps.
//!
//! Default policy: one snapshot per 10 minutes for the last hour, one per
//! hour for the last 24 hours, one per day for the last 7 days (the newest
//! in each slot), and always the newest snapshot.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::SnapshotMeta;

/// One tier: one snapshot per `every_ms` for the last `keep_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub every_ms: i64,
    pub keep_ms: i64,
}

/// A retention policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub tiers: Vec<Tier>,
}

const MIN: i64 = 60_000;

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            tiers: vec![
                Tier {
                    every_ms: 10 * MIN,
                    keep_ms: 60 * MIN,
                },
                Tier {
                    every_ms: 60 * MIN,
                    keep_ms: 24 * 60 * MIN,
                },
                Tier {
                    every_ms: 24 * 60 * MIN,
                    keep_ms: 7 * 24 * 60 * MIN,
                },
            ],
        }
    }
}

/// The ids to keep among `snaps` at time `now_ms`.
pub fn keep(snaps: &[SnapshotMeta], now_ms: i64, policy: &Policy) -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    if let Some(newest) = snaps
        .iter()
        .max_by_key(|s| (s.created_unix_ms, s.id.clone()))
    {
        keep.insert(newest.id.clone());
    }
    for t in &policy.tiers {
        let mut slots: std::collections::BTreeMap<i64, &SnapshotMeta> = Default::default();
        for s in snaps {
            if now_ms - s.created_unix_ms > t.keep_ms {
                continue;
            }
            let slot = s.created_unix_ms.div_euclid(t.every_ms);
            let e = slots.entry(slot).or_insert(s);
            if (s.created_unix_ms, &s.id) > (e.created_unix_ms, &e.id) {
                *e = s;
            }
        }
        keep.extend(slots.values().map(|s| s.id.clone()));
    }
    keep
}

/// Delete the snapshots the policy does not keep; returns the deleted ids.
/// A snapshot in use by a failover is kept.
pub fn prune(state_dir: &Path, now_ms: i64, policy: &Policy) -> Result<Vec<String>> {
    let _lock = crate::lock::lock(state_dir)?;
    super::clean(state_dir)?;
    let snaps = super::list(state_dir)?;
    let keep = keep(&snaps, now_ms, policy);
    let in_use = crate::failover::load_record(state_dir)?
        .filter(|r| r.state != crate::failover::RecordState::RolledBack)
        .and_then(|r| r.image.strip_prefix("snapshot:").map(str::to_string));
    let mut deleted = Vec::new();
    for s in snaps {
        if !keep.contains(&s.id) && in_use.as_deref() != Some(s.id.as_str()) {
            super::delete(state_dir, &s.id)?;
            deleted.push(s.id);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, t: i64) -> SnapshotMeta {
        SnapshotMeta {
            id: id.into(),
            source_id: "s".into(),
            created_unix_ms: t,
            seq: 1,
            mirror_complete: true,
            root_digest: None,
            method: super::super::Method::Hardlink,
            files: 0,
            bytes: 0,
            took_ms: 0,
        }
    }

    #[test]
    fn default_policy_thins_out() {
        let now = 1_000 * 24 * 60 * MIN;
        // one snapshot per minute for 10 days
        let snaps: Vec<_> = (0..10 * 24 * 60)
            .map(|i| snap(&format!("{i:06}"), now - i * MIN))
            .collect();
        let k = keep(&snaps, now, &Policy::default());
        // 6-7 ten-minute slots in the hour, ~24-25 hourly, ~7-8 daily, overlapping.
        assert!(k.len() >= 30 && k.len() <= 40, "{}", k.len());
        assert!(k.contains("000000"));
        // nothing older than 7 days (+ the slot edge)
        assert!(k.iter().all(|id| id.parse::<i64>().unwrap() <= 8 * 24 * 60));
        // within the last hour, no two kept snapshots share a 10-minute slot
        let recent: Vec<i64> = k
            .iter()
            .map(|id| now - id.parse::<i64>().unwrap() * MIN)
            .filter(|t| now - t <= 60 * MIN)
            .collect();
        let slots: BTreeSet<i64> = recent.iter().map(|t| t.div_euclid(10 * MIN)).collect();
        assert_eq!(slots.len(), recent.len());
    }
}
