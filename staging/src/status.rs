//! Computing the status a target reports from its state.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use standin_link::status::{PathStatus, State, Status};

use crate::state::TargetState;

/// Default heartbeat silence after which the failover condition is met.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(35);

/// Default replication lag above which the status is a Warning.
pub const DEFAULT_LAG_WARNING: Duration = Duration::from_secs(30);

/// Thresholds of the status.
#[derive(Debug, Clone, Copy)]
pub struct StatusOptions {
    /// Silence on all heartbeat paths after which the failover condition is met.
    pub silence: Duration,
    /// Replication lag above which the status is a Warning.
    pub lag_warning: Duration,
}

impl Default for StatusOptions {
    fn default() -> StatusOptions {
        StatusOptions {
            silence: DEFAULT_SILENCE,
            lag_warning: DEFAULT_LAG_WARNING,
        }
    }
}

impl StatusOptions {
    /// Defaults with this silence.
    pub fn with_silence(silence: Duration) -> StatusOptions {
        StatusOptions {
            silence,
            ..Default::default()
        }
    }
}

/// Change sets journaled here and not yet applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Journal {
    pub pending_sets: u64,
    pub pending_bytes: u64,
    /// Newest sequence number in the journal (received, maybe not applied).
    pub newest_seq: u64,
}

/// The journal's backlog above `applied` (the journal directory of a state directory).
pub fn journal_info(journal: &Path, applied: u64) -> Journal {
    let mut j = Journal::default();
    if let Ok(rd) = std::fs::read_dir(journal) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name.strip_suffix(".cs").and_then(|s| s.parse::<u64>().ok()) {
                if seq > applied {
                    j.pending_sets += 1;
                    j.pending_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                    j.newest_seq = j.newest_seq.max(seq);
                }
            }
        }
    }
    j
}

/// How long one path may stay quiet before status calls it silent: three
/// heartbeat intervals (at least 2 s), never more than the failover silence.
/// Without the interval (an older agent) the failover silence.
pub fn path_quiet_ms(interval_ms: Option<u64>, silence: Duration) -> i64 {
    let silence = silence.as_millis() as i64;
    match interval_ms {
        Some(i) => ((3 * i) as i64).max(2000).min(silence),
        None => silence,
    }
}

fn path_label(name: &str) -> &str {
    match name {
        crate::state::PATH_LINK => "the replication link",
        crate::state::PATH_SECOND => "the second heartbeat path",
        other => other,
    }
}

/// Status from a state, the journal backlog and the time now.
pub fn compute(st: &TargetState, journal: &Journal, now_ms: i64, opts: &StatusOptions) -> Status {
    let silence = opts.silence;
    let hb_age = st
        .last_heartbeat
        .as_ref()
        .map(|h| (now_ms - h.received_unix_ms).max(0) as f64 / 1000.0);
    let hb = st.last_heartbeat.as_ref().map(|h| &h.heartbeat);
    let mirror_percent = st.mirror.as_ref().map(|m| {
        if st.mirror_complete || st.mirror_flushing {
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
    let quiet = path_quiet_ms(hb.and_then(|h| h.interval_ms), silence);
    let paths: Vec<PathStatus> = st
        .heartbeat_paths
        .iter()
        .map(|(name, p)| {
            let age = (now_ms - p.received_unix_ms).max(0);
            PathStatus {
                name: name.clone(),
                peer: p.peer.clone(),
                last_heartbeat_unix_ms: p.received_unix_ms,
                age_seconds: age as f64 / 1000.0,
                silent: age > quiet,
            }
        })
        .collect();
    let met = crate::monitor::condition(st, now_ms, silence);
    let repl = hb.and_then(|h| h.replication.clone()).unwrap_or_default();
    let spilled = hb
        .map(|h| (h.spilled_sets, h.spilled_bytes))
        .unwrap_or((0, 0));

    let mut warnings = Vec::new();
    if let Some(p) = &st.paused {
        warnings.push(format!("apply paused: {p}"));
    }
    if let Some(w) = &st.warning {
        warnings.push(w.clone());
    }
    let hard = !warnings.is_empty();
    // A mirror whose replica is still being synced to disk is not yet
    // durable: still synchronizing (at 100%).
    let syncing = st.mirror.is_some() && (!st.mirror_complete || st.mirror_flushing);
    if st.mirror_complete && !syncing {
        if let Some(age) = met {
            let heard: Vec<_> = paths.iter().map(|p| path_label(&p.name)).collect();
            // After a restart silence counts from the daemon's start.
            let restarted = match (&st.last_heartbeat, st.watching_since_unix_ms) {
                (Some(h), Some(w)) => w > h.received_unix_ms,
                _ => false,
            };
            warnings.push(format!(
                "no heartbeat from the source for {:.0} s on any path{} ({}; limit {} s): failover condition met",
                age as f64 / 1000.0,
                if restarted { " since this daemon started" } else { "" },
                if heard.is_empty() { "the replication link".to_string() } else { heard.join(", ") },
                silence.as_secs()
            ));
        } else if hb.is_none() {
            warnings.push("no heartbeat from the source yet".into());
        } else {
            let alive: Vec<_> = paths
                .iter()
                .filter(|p| !p.silent)
                .map(|p| path_label(&p.name))
                .collect();
            // A silent path while another still delivers: the source lives.
            // (All paths late but not yet for the whole silence is not a
            // warning: the failover condition speaks then.)
            if !alive.is_empty() {
                for p in paths.iter().filter(|p| p.silent) {
                    warnings.push(format!(
                        "{} is silent for {:.0} s but heartbeats arrive on {}: the source is alive, failover condition not met",
                        path_label(&p.name),
                        p.age_seconds,
                        alive.join(", ")
                    ));
                }
            }
        }
        if let (Some(addr), false) = (
            &st.heartbeat_listen,
            st.heartbeat_paths.contains_key(crate::state::PATH_SECOND),
        ) {
            warnings.push(format!(
                "the second heartbeat path (this target listens on {addr}) was never heard from: only the replication link guards against split brain; run `standin protect` with --heartbeat-target"
            ));
        }
        if spilled.1 > 0 {
            warnings.push(format!(
                "the agent's queue is spilling to disk ({} change sets, {} bytes on disk)",
                spilled.0, spilled.1
            ));
        }
        if repl.last_sweep_repairs > 0 {
            let mut w = format!(
                "the last checksum sweep repaired {} paths that change capture missed",
                repl.last_sweep_repairs
            );
            if !repl.last_sweep_paths.is_empty() {
                let shown: Vec<&str> = repl
                    .last_sweep_paths
                    .iter()
                    .take(3)
                    .map(String::as_str)
                    .collect();
                w.push_str(&format!(
                    " ({}{})",
                    shown.join(", "),
                    if repl.last_sweep_repairs > 3 {
                        ", …"
                    } else {
                        ""
                    }
                ));
            }
            warnings.push(w);
        }
        if lag_seconds > opts.lag_warning.as_secs_f64() {
            warnings.push(format!(
                "replication lag {lag_seconds:.0} s is above {} s",
                opts.lag_warning.as_secs()
            ));
        }
    }
    let (state, reason) = if hard || (st.mirror_complete && !syncing && !warnings.is_empty()) {
        (State::Warning, Some(warnings.join("; ")))
    } else if syncing && st.mirror_flushing {
        (
            State::Synchronizing,
            Some("the mirror is complete; its replica is being written to disk".into()),
        )
    } else if syncing {
        (State::Synchronizing, None)
    } else if st.mirror_complete {
        (State::Protected, None)
    } else {
        (
            State::Unprotected,
            Some("no mirror has completed; run `standin protect` on the source".into()),
        )
    };
    Status {
        state,
        reason,
        warnings,
        failover_condition_met: met.is_some(),
        source_id: st.source_id.clone(),
        mirror_percent,
        mirror_complete: st.mirror_complete,
        last_applied_seq: st.last_applied_seq,
        last_received_seq: journal.newest_seq.max(st.last_applied_seq),
        source_seq,
        lag_seconds,
        lag_bytes: queue_bytes + journal.pending_bytes,
        queue_sets: hb.map(|h| h.queue_sets).unwrap_or(0),
        queue_bytes,
        queue_spilled_sets: spilled.0,
        queue_spilled_bytes: spilled.1,
        journal_pending: journal.pending_sets,
        last_heartbeat_unix_ms: st.last_heartbeat.as_ref().map(|h| h.received_unix_ms),
        heartbeat_age_seconds: hb_age,
        heartbeat_paths: paths,
        bytes_received: st.bytes_received,
        sweeps: repl.sweeps,
        sweep_repairs: repl.sweep_repairs,
        last_sweep_unix_ms: repl.last_sweep_unix_ms,
        last_sweep_repairs: repl.last_sweep_repairs,
        last_sweep_repaired_paths: repl.last_sweep_paths.clone(),
        queue_full_fallbacks: repl.queue_full,
    }
}

/// Status read from a state directory without changing it (works while the daemon runs).
pub fn from_state_dir(dir: &Path, opts: &StatusOptions) -> Result<Status> {
    if !dir.join(crate::state::STATE_FILE).exists() && !dir.join("journal").exists() {
        anyhow::bail!(
            "{} is not a standin state directory (no state.json); start the target with `standin target serve --state-dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let st = TargetState::load(dir)?;
    let journal = journal_info(&dir.join("journal"), st.last_applied_seq);
    Ok(compute(&st, &journal, crate::state::now_ms(), opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{HeartbeatState, MirrorState, PATH_LINK, PATH_SECOND};
    use standin_link::message::{Heartbeat, MirrorMode, ReplicationCounters};

    fn hb(at: i64, source_seq: u64, oldest: Option<i64>) -> HeartbeatState {
        HeartbeatState {
            received_unix_ms: at,
            heartbeat: Heartbeat {
                sent_unix_ms: at,
                source_seq,
                queue_sets: source_seq.saturating_sub(5),
                queue_bytes: 1000,
                oldest_pending_unix_ms: oldest,
                ..Default::default()
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
            root_check: None,
        }
    }

    fn j(pending_sets: u64, pending_bytes: u64, newest_seq: u64) -> Journal {
        Journal {
            pending_sets,
            pending_bytes,
            newest_seq,
        }
    }

    fn protected(now: i64) -> TargetState {
        let mut st = TargetState {
            mirror: Some(mirror(10, 10)),
            mirror_complete: true,
            last_applied_seq: 5,
            ..Default::default()
        };
        let mut h = hb(now - 500, 5, None).heartbeat;
        h.interval_ms = Some(1000);
        st.record_heartbeat(&h, PATH_LINK, Some("198.18.0.1:5000".into()), now - 500);
        st
    }

    #[test]
    fn states_follow_the_rules() {
        let opts = StatusOptions::with_silence(Duration::from_secs(35));
        let now = 1_000_000;
        let mut st = TargetState::default();
        assert_eq!(
            compute(&st, &j(0, 0, 0), now, &opts).state,
            State::Unprotected
        );

        st.mirror = Some(mirror(400, 100));
        let s = compute(&st, &j(0, 0, 0), now, &opts);
        assert_eq!(
            (s.state, s.mirror_percent),
            (State::Synchronizing, Some(25.0))
        );

        // Complete but its replica not yet synced: as the daemon holds it
        // (complete) and as state.json holds it (not complete).
        st.last_applied_seq = 5;
        st.last_heartbeat = Some(hb(now - 1000, 5, None));
        st.mirror_flushing = true;
        for complete in [true, false] {
            st.mirror_complete = complete;
            let s = compute(&st, &j(0, 0, 0), now, &opts);
            assert_eq!(
                (s.state, s.mirror_percent),
                (State::Synchronizing, Some(100.0)),
                "{s:?}"
            );
            assert!(
                s.reason.as_deref().unwrap().contains("written to disk"),
                "{s:?}"
            );
        }
        st.mirror_flushing = false;

        st.mirror_complete = true;
        let s = compute(&st, &j(0, 0, 0), now, &opts);
        assert_eq!(
            (s.state, s.mirror_percent, s.lag_seconds),
            (State::Protected, Some(100.0), 0.0)
        );

        // Behind: lag from the oldest pending change, bytes from both sides,
        // received ahead of applied.
        st.last_heartbeat = Some(hb(now - 1000, 9, Some(now - 4000)));
        let s = compute(&st, &j(2, 300, 7), now, &opts);
        assert_eq!(
            (
                s.lag_seconds,
                s.lag_bytes,
                s.source_seq,
                s.journal_pending,
                s.last_received_seq
            ),
            (4.0, 1300, 9, 2, 7)
        );

        // Silence beyond the limit: the failover condition.
        st.last_heartbeat = Some(hb(now - 36_000, 5, None));
        let s = compute(&st, &j(0, 0, 0), now, &opts);
        assert_eq!((s.state, s.failover_condition_met), (State::Warning, true));
        assert!(s.reason.unwrap().contains("failover condition met"));

        // A paused apply comes first.
        st.paused = Some("disk full".into());
        let s = compute(&st, &j(0, 0, 0), now, &opts);
        assert!(s.reason.unwrap().starts_with("apply paused: disk full"));
    }

    #[test]
    fn one_silent_path_is_a_warning_but_not_the_condition() {
        let opts = StatusOptions::with_silence(Duration::from_secs(10));
        let now = 1_000_000;
        let mut st = protected(now);
        let s = compute(&st, &j(0, 0, 5), now, &opts);
        assert_eq!(s.state, State::Protected, "{s:?}");
        assert_eq!(s.heartbeat_paths.len(), 1);
        assert!(!s.heartbeat_paths[0].silent);

        // The link goes quiet; heartbeats keep arriving on the second path.
        let mut h = st.last_heartbeat.clone().unwrap().heartbeat;
        h.sent_unix_ms = now + 3500;
        st.record_heartbeat(&h, PATH_SECOND, None, now + 3500);
        let later = now + 4000;
        let s = compute(&st, &j(0, 0, 5), later, &opts);
        assert_eq!((s.state, s.failover_condition_met), (State::Warning, false));
        let link = s.heartbeat_paths.iter().find(|p| p.name == "link").unwrap();
        let second = s
            .heartbeat_paths
            .iter()
            .find(|p| p.name == "second")
            .unwrap();
        assert!(link.silent && !second.silent, "{s:?}");
        let r = s.reason.unwrap();
        assert!(r.contains("the replication link is silent"), "{r}");
        assert!(r.contains("failover condition not met"), "{r}");

        // Configured but never heard: a warning of its own.
        let mut lone = protected(now);
        lone.heartbeat_listen = Some("10.9.0.2:6321".into());
        let s = compute(&lone, &j(0, 0, 5), now, &opts);
        assert_eq!(s.state, State::Warning);
        assert!(s.reason.unwrap().contains("was never heard from"));

        // Both quiet past the silence: met.
        let s = compute(&st, &j(0, 0, 5), now + 14_000, &opts);
        assert!(s.failover_condition_met);
        assert!(s.heartbeat_paths.iter().all(|p| p.silent));
        assert!(s.reason.unwrap().contains("failover condition met"));

        // An older heartbeat (sent before the newest) moves the path's time
        // but does not replace the counters.
        let mut old = h.clone();
        old.sent_unix_ms = now - 5000;
        old.source_seq = 1;
        st.record_heartbeat(&old, PATH_LINK, None, now + 15_000);
        assert_eq!(st.last_heartbeat.as_ref().unwrap().heartbeat.source_seq, 5);
        assert_eq!(
            st.last_heartbeat.as_ref().unwrap().received_unix_ms,
            now + 15_000
        );
    }

    #[test]
    fn after_a_restart_silence_counts_from_the_start() {
        let opts = StatusOptions::with_silence(Duration::from_secs(10));
        let now = 1_000_000;
        let mut st = protected(now - 60_000);
        st.watching_since_unix_ms = Some(now - 5_000);
        let s = compute(&st, &j(0, 0, 5), now, &opts);
        assert!(!s.failover_condition_met, "{s:?}");
        // The last heartbeat is still reported as it was.
        assert_eq!(s.last_heartbeat_unix_ms, Some(now - 60_500));
        let s = compute(&st, &j(0, 0, 5), now + 6_000, &opts);
        assert!(s.failover_condition_met, "{s:?}");
        let r = s.reason.unwrap();
        assert!(
            r.contains("for 11 s on any path since this daemon started"),
            "{r}"
        );
    }

    #[test]
    fn spill_sweep_repairs_and_lag_are_warnings() {
        let opts = StatusOptions {
            silence: Duration::from_secs(35),
            lag_warning: Duration::from_secs(10),
        };
        let now = 1_000_000;
        let mut st = protected(now);
        let h = &mut st.last_heartbeat.as_mut().unwrap().heartbeat;
        h.spilled_sets = 2;
        h.spilled_bytes = 4096;
        h.queue_bytes = 5000;
        h.source_seq = 8;
        h.oldest_pending_unix_ms = Some(now - 12_000);
        h.replication = Some(ReplicationCounters {
            sweeps: 3,
            sweep_repairs: 4,
            last_sweep_unix_ms: Some(now - 60_000),
            last_sweep_repairs: 4,
            queue_full: 1,
            rescans: 1,
            last_sweep_paths: vec!["/etc/a".into(), "/etc/b".into()],
        });
        let s = compute(&st, &j(0, 0, 5), now, &opts);
        assert_eq!(s.state, State::Warning);
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("spilling to disk"));
        assert!(s.warnings[1].contains("repaired 4 paths"));
        assert!(
            s.warnings[1].contains("(/etc/a, /etc/b, …)"),
            "{}",
            s.warnings[1]
        );
        assert!(s.warnings[2].contains("lag 12 s"));
        assert_eq!(
            (
                s.queue_spilled_bytes,
                s.sweeps,
                s.sweep_repairs,
                s.queue_full_fallbacks
            ),
            (4096, 3, 4, 1)
        );
        let text = s.render();
        assert!(text.contains("4096 bytes spilled"), "{text}");
        assert!(text.contains("3 run, 4 paths repaired"), "{text}");
        assert!(text.contains("  repaired /etc/b\n"), "{text}");
    }

    #[test]
    fn journal_info_counts_what_is_not_applied() {
        let d = tempfile::tempdir().unwrap();
        for (seq, len) in [(3u64, 10usize), (4, 20), (6, 30)] {
            std::fs::write(d.path().join(format!("{seq:020}.cs")), vec![0; len]).unwrap();
        }
        std::fs::write(d.path().join("junk"), b"x").unwrap();
        assert_eq!(journal_info(d.path(), 3), j(2, 50, 6));
        assert_eq!(journal_info(&d.path().join("none"), 0), j(0, 0, 0));
    }
}
