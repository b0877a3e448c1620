//! The protection status a target reports (`standin status`).

use serde::{Deserialize, Serialize};

/// Overall protection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No source has completed a mirror to this target.
    Unprotected,
    /// A mirror is in progress (see `mirror_percent`).
    Synchronizing,
    /// The mirror completed and replication is current.
    Protected,
    /// Something needs attention (see `reason`).
    Warning,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Unprotected => "Unprotected",
            State::Synchronizing => "Synchronizing",
            State::Protected => "Protected",
            State::Warning => "Warning",
        })
    }
}

/// Everything `standin status` shows; also its `--json` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// Why the state is Warning (or a note for the others).
    pub reason: Option<String>,
    /// The source this target stages, once one connected.
    pub source_id: Option<String>,
    /// Mirror progress 0–100 while synchronizing; 100 when complete.
    pub mirror_percent: Option<f64>,
    pub mirror_complete: bool,
    /// Last change-set sequence number applied to the replica.
    pub last_applied_seq: u64,
    /// Newest sequence number the source reported (heartbeat).
    pub source_seq: u64,
    /// Age of the oldest change not yet applied, in seconds (0 when current).
    pub lag_seconds: f64,
    /// Bytes not yet applied: queued at the source plus journaled here.
    pub lag_bytes: u64,
    /// Change sets queued at the source (heartbeat).
    pub queue_sets: u64,
    /// Bytes queued at the source (heartbeat).
    pub queue_bytes: u64,
    /// Change sets journaled here but not yet applied.
    pub journal_pending: u64,
    /// Time of the last heartbeat, ms since the epoch.
    pub last_heartbeat_unix_ms: Option<i64>,
    /// Seconds since the last heartbeat.
    pub heartbeat_age_seconds: Option<f64>,
    /// Change-set bytes received since the state directory was created.
    pub bytes_received: u64,
}

impl Status {
    /// Human-readable lines for the terminal.
    pub fn render(&self) -> String {
        let mut s = format!("state: {}", self.state);
        if let (State::Synchronizing, Some(p)) = (&self.state, self.mirror_percent) {
            s.push_str(&format!(" (mirror {p:.1}%)"));
        }
        s.push('\n');
        if let Some(r) = &self.reason {
            s.push_str(&format!("reason: {r}\n"));
        }
        s.push_str(&format!(
            "source: {}\nlast sequence: {} (source at {})\nlag: {:.1} s, {} bytes\nqueue: {} change sets, {} bytes at the source; {} journaled here\n",
            self.source_id.as_deref().unwrap_or("(none yet)"),
            self.last_applied_seq,
            self.source_seq,
            self.lag_seconds,
            self.lag_bytes,
            self.queue_sets,
            self.queue_bytes,
            self.journal_pending,
        ));
        match self.heartbeat_age_seconds {
            Some(a) => s.push_str(&format!("last heartbeat: {a:.1} s ago\n")),
            None => s.push_str("last heartbeat: never\n"),
        }
        s
    }
}
