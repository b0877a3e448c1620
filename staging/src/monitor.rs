//! The failover condition and what the daemon does about it: a hook
//! command (once per outage), opt-in automatic failover once the condition
//! has held long enough, and periodic snapshots with retention while
//! protected.
//!
//! The condition: the mirror completed, a heartbeat was received once, and
//! none arrived for the configured silence (35 s by default), and no
//! failover is active. `standin status` reports it (see [`crate::status`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::state::TargetState;

/// Opt-in automatic failover.
#[derive(Debug, Clone)]
pub struct AutoFailover {
    /// How long the condition must hold first.
    pub after: Duration,
    pub target_root: PathBuf,
    /// Reboot command (`None`: no reboot).
    pub reboot: Option<String>,
}

/// Monitoring settings of the daemon.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Command run (by `sh -c`) once when the condition is met.
    pub on_condition: Option<String>,
    pub auto_failover: Option<AutoFailover>,
    /// Take a snapshot this often while protected (`None`: never).
    pub snapshot_every: Option<Duration>,
    /// How often the monitor looks.
    pub tick: Duration,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            on_condition: None,
            auto_failover: None,
            snapshot_every: Some(Duration::from_secs(600)),
            tick: Duration::from_secs(1),
        }
    }
}

/// What the daemon should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The condition was just met: log it and run the hook (if any).
    ConditionMet { silent_ms: i64 },
    /// Heartbeats came back.
    ConditionCleared,
    /// Fail over now (automatic failover configured).
    AutoFailover,
    /// Take a snapshot and prune.
    Snapshot,
}

/// The monitor's memory between ticks.
#[derive(Debug, Default)]
pub struct Monitor {
    since_ms: Option<i64>,
    auto_started: bool,
    last_snapshot_ms: Option<i64>,
    last_snapshot_seq: Option<u64>,
}

/// Whether the failover condition holds; returns the silence in ms.
///
/// Silence is counted from the last heartbeat, or from when the daemon
/// started listening if that is later (a restarted daemon cannot know
/// what it missed while down; see [`crate::heartbeat`]).
pub fn condition(st: &TargetState, now_ms: i64, silence: Duration) -> Option<i64> {
    let hb = st.last_heartbeat.as_ref()?;
    let since = hb
        .received_unix_ms
        .max(st.watching_since_unix_ms.unwrap_or(i64::MIN));
    let age = now_ms - since;
    (st.mirror_complete && age > silence.as_millis() as i64).then_some(age)
}

impl Monitor {
    /// Look at the state; `failed_over` says whether a failover is active.
    pub fn tick(
        &mut self,
        cfg: &MonitorConfig,
        st: &TargetState,
        failed_over: bool,
        now_ms: i64,
        silence: Duration,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if failed_over {
            return out;
        }
        match (condition(st, now_ms, silence), self.since_ms) {
            (Some(age), None) => {
                self.since_ms = Some(now_ms);
                out.push(Action::ConditionMet { silent_ms: age });
            }
            (None, Some(_)) => {
                self.since_ms = None;
                self.auto_started = false;
                out.push(Action::ConditionCleared);
            }
            _ => {}
        }
        if let (Some(since), Some(a)) = (self.since_ms, &cfg.auto_failover) {
            if !self.auto_started && now_ms - since >= a.after.as_millis() as i64 {
                self.auto_started = true;
                out.push(Action::AutoFailover);
            }
        }
        if let Some(every) = cfg.snapshot_every {
            let due = self
                .last_snapshot_ms
                .is_none_or(|t| now_ms - t >= every.as_millis() as i64);
            let changed = self.last_snapshot_seq != Some(st.last_applied_seq);
            if st.mirror_complete && st.paused.is_none() && due && changed {
                self.last_snapshot_ms = Some(now_ms);
                self.last_snapshot_seq = Some(st.last_applied_seq);
                out.push(Action::Snapshot);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::HeartbeatState;

    fn st(hb_ms: i64) -> TargetState {
        let hb = standin_link::message::Heartbeat {
            sent_unix_ms: 0,
            source_seq: 3,
            queue_sets: 0,
            queue_bytes: 0,
            oldest_pending_unix_ms: None,
            ..Default::default()
        };
        TargetState {
            mirror_complete: true,
            last_applied_seq: 3,
            last_heartbeat: Some(HeartbeatState {
                received_unix_ms: hb_ms,
                heartbeat: hb,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn condition_hook_once_then_auto_failover() {
        let cfg = MonitorConfig {
            on_condition: Some("true".into()),
            auto_failover: Some(AutoFailover {
                after: Duration::from_secs(10),
                target_root: "/".into(),
                reboot: None,
            }),
            snapshot_every: None,
            tick: Duration::from_secs(1),
        };
        let s = Duration::from_secs(35);
        let mut m = Monitor::default();
        let st = st(0);
        assert!(m.tick(&cfg, &st, false, 30_000, s).is_empty());
        assert_eq!(
            m.tick(&cfg, &st, false, 36_000, s),
            vec![Action::ConditionMet { silent_ms: 36_000 }]
        );
        assert!(m.tick(&cfg, &st, false, 40_000, s).is_empty());
        assert_eq!(
            m.tick(&cfg, &st, false, 46_000, s),
            vec![Action::AutoFailover]
        );
        assert!(m.tick(&cfg, &st, false, 50_000, s).is_empty());
        let back = super::tests::st(49_000);
        assert_eq!(
            m.tick(&cfg, &back, false, 50_000, s),
            vec![Action::ConditionCleared]
        );
        assert!(m.tick(&cfg, &st, true, 99_000, s).is_empty());
    }

    #[test]
    fn a_restarted_daemon_counts_silence_from_its_start() {
        let s = Duration::from_secs(35);
        // The last heartbeat is old (or its file was lost): the daemon that
        // started listening at 100 s waits a whole silence from there.
        let mut st = st(0);
        st.watching_since_unix_ms = Some(100_000);
        assert_eq!(condition(&st, 130_000, s), None);
        assert_eq!(condition(&st, 136_000, s), Some(36_000));
        // A heartbeat after the start counts from the heartbeat.
        st.last_heartbeat.as_mut().unwrap().received_unix_ms = 120_000;
        assert_eq!(condition(&st, 136_000, s), None);
        assert_eq!(condition(&st, 156_000, s), Some(36_000));
    }

    #[test]
    fn snapshots_while_protected_when_data_changed() {
        let cfg = MonitorConfig {
            snapshot_every: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        let s = Duration::from_secs(35);
        let mut m = Monitor::default();
        let st = st(0);
        assert_eq!(m.tick(&cfg, &st, false, 1_000, s), vec![Action::Snapshot]);
        assert!(m.tick(&cfg, &st, false, 2_000, s).is_empty());
        let mut later = super::tests::st(700_000);
        later.last_applied_seq = 9;
        assert_eq!(
            m.tick(&cfg, &later, false, 700_000, s),
            vec![Action::Snapshot]
        );
    }
}
