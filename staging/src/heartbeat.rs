//! Heartbeat times: soft state, kept apart from the durable `state.json`.
//!
//! Heartbeats arrive every fraction of a second on up to two paths. The
//! daemon records them in memory (a small mutex of their own, never the
//! store's, so a long apply does not hold them up) and writes
//! `heartbeats.json` at most once per flush interval (1 s by default) by
//! temp file and rename, without fsync. `state.json` stays the durable
//! record (applied sequence, mirror complete) and is fsynced as before; it
//! also carries the heartbeat times as of its last save.
//!
//! What failover's "silence on every path" needs after a daemon restart:
//! the heartbeat times are only a report of what this daemon heard. After
//! a crash or power loss `heartbeats.json` may be a few seconds old, or
//! lost (then the times in `state.json` are used). Either only makes the
//! times older, so the daemon never trusts them to start a silence: it
//! counts silence from the newer of the last heartbeat and the moment it
//! started listening ([`Beats::watching_since_unix_ms`]). A restarted
//! daemon therefore waits a whole silence for the source before the
//! failover condition can be met, and a stale or lost file cannot trigger
//! it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use standin_link::message::Heartbeat;

use crate::state::{HeartbeatState, PathBeat, TargetState};

/// File name of the heartbeat file in the state directory.
pub const HEARTBEAT_FILE: &str = "heartbeats.json";

/// Default interval between writes of [`HEARTBEAT_FILE`].
pub const DEFAULT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// The heartbeat part of the target's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Beats {
    /// The newest heartbeat on any path and when the last one arrived.
    pub last_heartbeat: Option<HeartbeatState>,
    /// When the last heartbeat arrived on each path (`link`, `second`).
    #[serde(default)]
    pub heartbeat_paths: BTreeMap<String, PathBeat>,
    /// When the running (or last) daemon started listening: silence is
    /// counted from here at the earliest.
    #[serde(default)]
    pub watching_since_unix_ms: Option<i64>,
}

impl Beats {
    /// The heartbeat part of `st`.
    pub fn of(st: &TargetState) -> Beats {
        Beats {
            last_heartbeat: st.last_heartbeat.clone(),
            heartbeat_paths: st.heartbeat_paths.clone(),
            watching_since_unix_ms: st.watching_since_unix_ms,
        }
    }

    /// Put these beats into `st` (replacing its heartbeat part).
    pub fn set_in(&self, st: &mut TargetState) {
        st.last_heartbeat = self.last_heartbeat.clone();
        st.heartbeat_paths = self.heartbeat_paths.clone();
        st.watching_since_unix_ms = self.watching_since_unix_ms;
    }

    /// Record a heartbeat (see [`record`]).
    pub fn record(&mut self, hb: &Heartbeat, path: &str, peer: Option<String>, now_ms: i64) {
        record(
            &mut self.last_heartbeat,
            &mut self.heartbeat_paths,
            hb,
            path,
            peer,
            now_ms,
        );
    }

    /// Merge into `st` what is newer here: the last heartbeat and each
    /// path by arrival time; the watching time from here when present.
    pub fn merge_into(&self, st: &mut TargetState) {
        if let Some(h) = &self.last_heartbeat {
            if st
                .last_heartbeat
                .as_ref()
                .is_none_or(|s| s.received_unix_ms < h.received_unix_ms)
            {
                st.last_heartbeat = Some(h.clone());
            }
        }
        for (name, p) in &self.heartbeat_paths {
            if st
                .heartbeat_paths
                .get(name)
                .is_none_or(|s| s.received_unix_ms < p.received_unix_ms)
            {
                st.heartbeat_paths.insert(name.clone(), p.clone());
            }
        }
        if self.watching_since_unix_ms.is_some() {
            st.watching_since_unix_ms = self.watching_since_unix_ms;
        }
    }

    /// Read `heartbeats.json` from `dir`. Soft state: a missing, torn or
    /// unreadable file is `None` (the times in `state.json` are used).
    pub fn load(dir: &Path) -> Option<Beats> {
        let p = dir.join(HEARTBEAT_FILE);
        let b = std::fs::read(&p).ok()?;
        match serde_json::from_slice(&b) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!("ignoring {}: {e}", p.display());
                None
            }
        }
    }

    /// Write `heartbeats.json` in `dir`: temp file and rename, no fsync (a
    /// reader sees the old or the new file whole; a crash may lose it).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("heartbeats serialize");
        let tmp = dir.join(format!(".{HEARTBEAT_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        drop(f);
        std::fs::rename(&tmp, dir.join(HEARTBEAT_FILE))
    }
}

/// Record a heartbeat that arrived on `path` at `now_ms`: the path's time
/// moves on; the heartbeat's content replaces the last one unless the agent
/// sent it before that one (the other path was faster).
pub fn record(
    last: &mut Option<HeartbeatState>,
    paths: &mut BTreeMap<String, PathBeat>,
    hb: &Heartbeat,
    path: &str,
    peer: Option<String>,
    now_ms: i64,
) {
    match last {
        Some(h) if hb.sent_unix_ms < h.heartbeat.sent_unix_ms => h.received_unix_ms = now_ms,
        _ => {
            *last = Some(HeartbeatState {
                received_unix_ms: now_ms,
                heartbeat: hb.clone(),
            })
        }
    }
    paths.insert(
        path.to_string(),
        PathBeat {
            received_unix_ms: now_ms,
            peer,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(sent: i64, seq: u64) -> Heartbeat {
        Heartbeat {
            sent_unix_ms: sent,
            source_seq: seq,
            ..Default::default()
        }
    }

    #[test]
    fn newer_wins_when_merging_and_the_file_round_trips() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Beats::load(d.path()), None);
        let mut b = Beats {
            watching_since_unix_ms: Some(50),
            ..Default::default()
        };
        b.record(&hb(10, 3), "link", None, 100);
        b.record(&hb(11, 4), "second", Some("p".into()), 200);
        b.write(d.path()).unwrap();
        assert_eq!(Beats::load(d.path()).as_ref(), Some(&b));

        // state.json saved earlier (older times) and a path only it knows.
        let mut st = TargetState::default();
        st.record_heartbeat(&hb(1, 1), "link", None, 90);
        st.record_heartbeat(&hb(2, 1), "other", None, 95);
        b.merge_into(&mut st);
        assert_eq!(st.last_heartbeat.as_ref().unwrap().received_unix_ms, 200);
        assert_eq!(st.last_heartbeat.as_ref().unwrap().heartbeat.source_seq, 4);
        assert_eq!(st.heartbeat_paths["link"].received_unix_ms, 100);
        assert_eq!(st.heartbeat_paths["other"].received_unix_ms, 95);
        assert_eq!(st.watching_since_unix_ms, Some(50));

        // A newer state.json wins over an older file.
        let mut newer = TargetState::default();
        newer.record_heartbeat(&hb(20, 9), "link", None, 300);
        b.merge_into(&mut newer);
        assert_eq!(newer.last_heartbeat.unwrap().heartbeat.source_seq, 9);
        assert_eq!(newer.heartbeat_paths["link"].received_unix_ms, 300);

        // A torn file is ignored.
        std::fs::write(d.path().join(HEARTBEAT_FILE), b"{\"last_hea").unwrap();
        assert_eq!(Beats::load(d.path()), None);
    }
}
