//! Computing the status a target reports from its state.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use standin_link::status::{State, Status};

use crate::state::TargetState;

/// Default heartbeat silence after which the failover condition is met.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(35);

/// Status from a state, the journal backlog and the time now.
pub fn compute(st: &TargetState, journal: (u64, u64), now_ms: i64, silence: Duration) -> Status {
    let hb_age = st
        .last_heartbeat
        .as_ref()
        .map(|h| (now_ms - h.received_unix_ms).max(0) as f64 / 1000.0);
    let hb = st.last_heartbeat.as_ref().map(|h| &h.heartbeat);
    let mirror_percent = st.mirror.as_ref().map(|m| {
        if st.mirror_complete {
            100.0
        } else if m.total_bytes == 0 {
            0.0
        } else {
            (m.bytes_applied as f64 * 100.0 / m.total_bytes as f64).min(100.0)
        }
    });
    let source_seq = hb
        .map(|h| h.source_seq)
        .unwrap_or(0)
        .max(st.last_applied_seq);
    let lag_seconds = match hb {
        Some(h) if h.source_seq > st.last_applied_seq => h
            .oldest_pending_unix_ms
            .map(|t| (now_ms - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0),
        _ => 0.0,
    };
    let queue_bytes = hb.map(|h| h.queue_bytes).unwrap_or(0);
    let (state, reason) = if let Some(p) = &st.paused {
        (State::Warning, Some(format!("apply paused: {p}")))
    } else if let Some(w) = &st.warning {
        (State::Warning, Some(w.clone()))
    } else if st.mirror.is_some() && !st.mirror_complete {
        (State::Synchronizing, None)
    } else if st.mirror_complete {
        match hb_age {
            Some(a) if a > silence.as_secs_f64() => (
                State::Warning,
                Some(format!(
                    "no heartbeat from the source for {a:.0} s (limit {} s): failover condition met",
                    silence.as_secs()
                )),
            ),
            None => (State::Warning, Some("no heartbeat from the source yet".into())),
            _ => (State::Protected, None),
        }
    } else {
        (
            State::Unprotected,
            Some("no mirror has completed; run `standin protect` on the source".into()),
        )
    };
    Status {
        state,
        reason,
        source_id: st.source_id.clone(),
        mirror_percent,
        mirror_complete: st.mirror_complete,
        last_applied_seq: st.last_applied_seq,
        source_seq,
        lag_seconds,
        lag_bytes: queue_bytes + journal.1,
        queue_sets: hb.map(|h| h.queue_sets).unwrap_or(0),
        queue_bytes,
        journal_pending: journal.0,
        last_heartbeat_unix_ms: st.last_heartbeat.as_ref().map(|h| h.received_unix_ms),
        heartbeat_age_seconds: hb_age,
        bytes_received: st.bytes_received,
    }
}

/// Status read from a state directory without changing it (works while the daemon runs).
pub fn from_state_dir(dir: &Path, silence: Duration) -> Result<Status> {
    if !dir.join(crate::state::STATE_FILE).exists() && !dir.join("journal").exists() {
        anyhow::bail!(
            "{} is not a standin state directory (no state.json); start the target with `standin target serve --state-dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let st = TargetState::load(dir)?;
    let journal = crate::store::journal_backlog(&dir.join("journal"), st.last_applied_seq);
    Ok(compute(&st, journal, crate::state::now_ms(), silence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{HeartbeatState, MirrorState};
    use standin_link::message::{Heartbeat, MirrorMode};

    fn hb(at: i64, source_seq: u64, oldest: Option<i64>) -> HeartbeatState {
        HeartbeatState {
            received_unix_ms: at,
            heartbeat: Heartbeat {
                sent_unix_ms: at,
                source_seq,
                queue_sets: source_seq.saturating_sub(5),
                queue_bytes: 1000,
                oldest_pending_unix_ms: oldest,
            },
        }
    }

    fn mirror(total: u64, applied: u64) -> MirrorState {
        MirrorState {
            mirror_id: "m".into(),
            mode: MirrorMode::Checksum,
            total_entries: 1,
            total_bytes: total,
            first_seq: 1,
            bytes_applied: applied,
            started_unix_ms: 0,
            last_seq: None,
            root_digest: None,
            root_verified: false,
        }
    }

    #[test]
    fn states_follow_the_rules() {
        let silence = Duration::from_secs(35);
        let now = 1_000_000;
        let mut st = TargetState::default();
        assert_eq!(compute(&st, (0, 0), now, silence).state, State::Unprotected);

        st.mirror = Some(mirror(400, 100));
        let s = compute(&st, (0, 0), now, silence);
        assert_eq!(
            (s.state, s.mirror_percent),
            (State::Synchronizing, Some(25.0))
        );

        st.mirror_complete = true;
        st.last_applied_seq = 5;
        st.last_heartbeat = Some(hb(now - 1000, 5, None));
        let s = compute(&st, (0, 0), now, silence);
        assert_eq!(
            (s.state, s.mirror_percent, s.lag_seconds),
            (State::Protected, Some(100.0), 0.0)
        );

        // Behind: lag from the oldest pending change, bytes from both sides.
        st.last_heartbeat = Some(hb(now - 1000, 9, Some(now - 4000)));
        let s = compute(&st, (2, 300), now, silence);
        assert_eq!(
            (s.lag_seconds, s.lag_bytes, s.source_seq, s.journal_pending),
            (4.0, 1300, 9, 2)
        );

        // Silence beyond the limit: the failover condition.
        st.last_heartbeat = Some(hb(now - 36_000, 5, None));
        let s = compute(&st, (0, 0), now, silence);
        assert_eq!(s.state, State::Warning);
        assert!(s.reason.unwrap().contains("failover condition met"));

        // A paused apply wins over everything.
        st.paused = Some("disk full".into());
        let s = compute(&st, (0, 0), now, silence);
        assert!(s.reason.unwrap().contains("apply paused: disk full"));
    }
}
