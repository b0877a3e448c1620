//! `state.json`: what the target knows durably about its source.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use standin_link::message::{Heartbeat, MirrorMode};
use standin_link::Fingerprint;

/// File name of the state file in the state directory.
pub const STATE_FILE: &str = "state.json";

/// The target's durable state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetState {
    /// Format of this file (1).
    pub format: u32,
    /// The source this target stages (the first agent that connected).
    pub source_id: Option<String>,
    /// Fingerprint of that agent's certificate when it first connected.
    pub source_fingerprint: Option<Fingerprint>,
    /// Last change set applied to the replica (0 = none).
    pub last_applied_seq: u64,
    /// When the source cut that change set (ms since the epoch).
    pub last_applied_created_unix_ms: Option<i64>,
    /// When it was applied here.
    pub last_applied_unix_ms: Option<i64>,
    /// Change-set bytes received.
    pub bytes_received: u64,
    /// The current or last mirror.
    pub mirror: Option<MirrorState>,
    /// Whether a mirror completed (the replica is a whole system).
    pub mirror_complete: bool,
    /// The mirror completed (its root digest matched) and the replica is
    /// being written to disk: `state.json` says complete only once that
    /// sync is done, so until then the file holds `mirror_complete: false`
    /// with this set, and a daemon that restarts finds the mirror
    /// incomplete (the next mirror compares and repairs the replica).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror_flushing: bool,
    /// The newest heartbeat on any path (the replication link or the
    /// second path), and when the last one on any path arrived.
    pub last_heartbeat: Option<HeartbeatState>,
    /// When the last heartbeat arrived on each path (`link`, `second`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub heartbeat_paths: BTreeMap<String, PathBeat>,
    /// When the daemon started listening: the failover condition counts
    /// silence from here at the earliest (see [`crate::heartbeat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watching_since_unix_ms: Option<i64>,
    /// Where the daemon listens for the second heartbeat path (`None`: not configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_listen: Option<String>,
    /// A condition that needs attention (refused records, verification
    /// failures); cleared by the next completed mirror.
    pub warning: Option<String>,
    /// Apply is paused (disk full or another I/O error); retried by itself.
    pub paused: Option<String>,
}

/// Progress of a mirror.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorState {
    pub mirror_id: String,
    pub mode: MirrorMode,
    pub total_entries: u64,
    pub total_bytes: u64,
    pub first_seq: u64,
    /// File data applied since the mirror started.
    pub bytes_applied: u64,
    pub started_unix_ms: i64,
    /// Sequence number of the mirror's last change set, once it ended.
    pub last_seq: Option<u64>,
    /// The source's root digest, as claimed at the end.
    pub root_digest: Option<String>,
    /// Whether the replica's root digest was checked against it. The check
    /// needs builder's manifest code and is switched on when it is merged.
    pub root_verified: bool,
    /// How the root digest check at the mirror's end went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_check: Option<RootCheck>,
}

/// How the replica's root digest was computed at a mirror's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCheck {
    /// `ledger` (folded from the mirror's ledger) or `walk` (the whole
    /// replica read).
    pub by: String,
    /// Entries taken from the ledger unchanged, and entries read again.
    pub reused: u64,
    pub reread: u64,
    /// Of the reused, entries taken as unchanged from the sparse mirror's
    /// early check, without an `lstat` at the end (`mirror::precheck`).
    #[serde(default)]
    pub prechecked: u64,
    /// Milliseconds the check took.
    pub ms: u64,
}

/// The last heartbeat and when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatState {
    pub received_unix_ms: i64,
    pub heartbeat: Heartbeat,
}

/// The last heartbeat on one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathBeat {
    pub received_unix_ms: i64,
    /// The agent's address on this path.
    pub peer: Option<String>,
}

/// Name of the replication link's heartbeat path.
pub const PATH_LINK: &str = "link";
/// Name of the second heartbeat path.
pub const PATH_SECOND: &str = "second";

impl TargetState {
    /// Record a heartbeat that arrived on `path` at `now_ms`: the path's
    /// time moves on; the heartbeat's content replaces the last one unless
    /// the agent sent it before that one (the other path was faster).
    pub fn record_heartbeat(
        &mut self,
        hb: &Heartbeat,
        path: &str,
        peer: Option<String>,
        now_ms: i64,
    ) {
        crate::heartbeat::record(
            &mut self.last_heartbeat,
            &mut self.heartbeat_paths,
            hb,
            path,
            peer,
            now_ms,
        );
    }

    /// Load `state.json` from `dir` with the newer heartbeat times of
    /// `heartbeats.json` merged in; a missing file is a fresh state.
    pub fn load(dir: &Path) -> Result<TargetState> {
        let mut st = Self::load_durable(dir)?;
        if let Some(b) = crate::heartbeat::Beats::load(dir) {
            b.merge_into(&mut st);
        }
        Ok(st)
    }

    /// Load `state.json` alone; a missing file is a fresh state.
    pub fn load_durable(dir: &Path) -> Result<TargetState> {
        let p = dir.join(STATE_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!("reading {}: it is not valid state JSON; restore it from a backup or move the state directory aside", p.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TargetState { format: 1, ..Default::default() }),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Save durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        crate::durable::write_atomic(&dir.join(STATE_FILE), &json)
    }
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
