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

/// One heartbeat path as the target sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    /// `link` (the replication link) or `second` (the second address).
    pub name: String,
    /// The agent's address as the target saw it on this path.
    pub peer: Option<String>,
    /// When the last heartbeat arrived on this path, ms since the epoch.
    pub last_heartbeat_unix_ms: i64,
    pub age_seconds: f64,
    /// Nothing arrived for longer than this path is allowed to be quiet.
    pub silent: bool,
}

/// Everything `standin status` shows; also its `--json` shape. Fields added
/// after the first release have serde defaults, so a status client reads
/// the answer of an older target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// Why the state is Warning (all reasons, joined), or a note for the others.
    pub reason: Option<String>,
    /// Every warning reason on its own.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// No heartbeat on any path for the configured silence (the mirror completed).
    #[serde(default)]
    pub failover_condition_met: bool,
    /// The source this target stages, once one connected.
    pub source_id: Option<String>,
    /// Mirror progress 0–100 while synchronizing; 100 when complete.
    pub mirror_percent: Option<f64>,
    pub mirror_complete: bool,
    /// Last change-set sequence number applied to the replica.
    pub last_applied_seq: u64,
    /// Newest change set received here (journaled, maybe not applied yet).
    #[serde(default)]
    pub last_received_seq: u64,
    /// Newest sequence number the source reported (heartbeat).
    pub source_seq: u64,
    /// Age of the oldest change not yet applied, in seconds (0 when current).
    pub lag_seconds: f64,
    /// Bytes not yet applied: queued at the source plus journaled here.
    pub lag_bytes: u64,
    /// Change sets queued at the source (heartbeat), memory and disk.
    pub queue_sets: u64,
    /// Bytes queued at the source (heartbeat), memory and disk.
    pub queue_bytes: u64,
    /// Of the queue: change sets spilled to the agent's disk.
    #[serde(default)]
    pub queue_spilled_sets: u64,
    /// Of the queue: bytes spilled to the agent's disk.
    #[serde(default)]
    pub queue_spilled_bytes: u64,
    /// Change sets journaled here but not yet applied.
    pub journal_pending: u64,
    /// Time of the last heartbeat on any path, ms since the epoch.
    pub last_heartbeat_unix_ms: Option<i64>,
    /// Seconds since the last heartbeat on any path.
    pub heartbeat_age_seconds: Option<f64>,
    /// Each heartbeat path heard from.
    #[serde(default)]
    pub heartbeat_paths: Vec<PathStatus>,
    /// Change-set bytes received since the state directory was created.
    pub bytes_received: u64,
    /// Checksum sweeps the agent ran (heartbeat).
    #[serde(default)]
    pub sweeps: u64,
    /// Paths the sweeps repaired (found different on the target).
    #[serde(default)]
    pub sweep_repairs: u64,
    /// When the last sweep ended, ms since the epoch.
    #[serde(default)]
    pub last_sweep_unix_ms: Option<i64>,
    /// Paths the last sweep repaired.
    #[serde(default)]
    pub last_sweep_repairs: u64,
    /// The first paths the last sweep repaired (at most 20).
    #[serde(default)]
    pub last_sweep_repaired_paths: Vec<String>,
    /// Times the agent's queue was full and it fell back to a difference sweep.
    #[serde(default)]
    pub queue_full_fallbacks: u64,
}

fn ms_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Status {
    /// Human-readable lines for the terminal.
    pub fn render(&self) -> String {
        let mut s = format!("state: {}", self.state);
        if let (State::Synchronizing, Some(p)) = (&self.state, self.mirror_percent) {
            s.push_str(&format!(" (mirror {p:.1}%)"));
        }
        s.push('\n');
        if self.warnings.len() > 1 {
            for w in &self.warnings {
                s.push_str(&format!("warning: {w}\n"));
            }
        } else if let Some(r) = &self.reason {
            s.push_str(&format!("reason: {r}\n"));
        }
        s.push_str(&format!(
            "failover condition: {}\n",
            if self.failover_condition_met {
                "MET (no heartbeat on any path)"
            } else {
                "not met"
            }
        ));
        s.push_str(&format!(
            "source: {}\nsequence: applied {}, received {}, source at {}\nlag: {:.1} s, {} bytes\nqueue: {} change sets, {} bytes at the source ({} sets, {} bytes spilled to disk); {} journaled here\n",
            self.source_id.as_deref().unwrap_or("(none yet)"),
            self.last_applied_seq,
            self.last_received_seq,
            self.source_seq,
            self.lag_seconds,
            self.lag_bytes,
            self.queue_sets,
            self.queue_bytes,
            self.queue_spilled_sets,
            self.queue_spilled_bytes,
            self.journal_pending,
        ));
        match (self.last_heartbeat_unix_ms, self.heartbeat_age_seconds) {
            (Some(t), Some(a)) => {
                s.push_str(&format!("last heartbeat: {} ({a:.1} s ago)\n", ms_utc(t)))
            }
            _ => s.push_str("last heartbeat: never\n"),
        }
        for p in &self.heartbeat_paths {
            s.push_str(&format!(
                "  path {:<8} {} ({:.1} s ago{}){}\n",
                p.name,
                ms_utc(p.last_heartbeat_unix_ms),
                p.age_seconds,
                p.peer
                    .as_deref()
                    .map(|x| format!(", from {x}"))
                    .unwrap_or_default(),
                if p.silent { " SILENT" } else { "" }
            ));
        }
        s.push_str(&format!(
            "sweeps: {} run, {} paths repaired{}\nqueue full: {} fallbacks to a difference sweep\nreceived: {} bytes of change sets\n",
            self.sweeps,
            self.sweep_repairs,
            match self.last_sweep_unix_ms {
                Some(t) => format!(
                    " (last at {}: {} repaired)",
                    ms_utc(t),
                    self.last_sweep_repairs
                ),
                None => String::new(),
            },
            self.queue_full_fallbacks,
            self.bytes_received,
        ));
        for p in &self.last_sweep_repaired_paths {
            s.push_str(&format!("  repaired {p}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_render() {
        assert_eq!(ms_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(ms_utc(1_795_343_696_000), "2026-11-22 10:34:56 UTC");
        assert_eq!(ms_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn an_older_targets_status_still_parses() {
        let old = r#"{"state":"protected","reason":null,"source_id":"s","mirror_percent":100.0,
            "mirror_complete":true,"last_applied_seq":4,"source_seq":4,"lag_seconds":0.0,"lag_bytes":0,
            "queue_sets":0,"queue_bytes":0,"journal_pending":0,"last_heartbeat_unix_ms":1,
            "heartbeat_age_seconds":0.5,"bytes_received":9}"#;
        let s: Status = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.state, s.last_applied_seq, s.sweeps),
            (State::Protected, 4, 0)
        );
        assert!(s.render().contains("applied 4"));
    }
}
