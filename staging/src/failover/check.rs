//! Before a failover: the data state, and the graceful drain.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use standin_builder::progress::Progress;

use super::{source_id, DataState, FailoverOptions, Image};
use crate::state::{now_ms, TargetState};

/// Check the data state: what the image holds and what may be missing.
pub fn data_state(opts: &FailoverOptions) -> Result<DataState> {
    let st = TargetState::load(&opts.state_dir)?;
    let id = source_id(opts, &st)?;
    let source_seq = st.last_heartbeat.as_ref().map(|h| h.heartbeat.source_seq);
    let mut missing = Vec::new();
    let (image, staged_root, seq, complete) = match &opts.image {
        Image::Live => {
            let root = opts.state_dir.join("staging").join(&id).join("root");
            // A mirror that completed while its replica is still being
            // synced by the daemon (`mirror_flushing`): synced here too,
            // it is complete.
            let complete = st.mirror_complete
                || (st.mirror_flushing && crate::store::sync_filesystem(&root).is_ok());
            if !complete {
                let pct = st
                    .mirror
                    .as_ref()
                    .filter(|m| m.total_bytes > 0)
                    .map(|m| {
                        format!(
                            " ({:.0}% of the data applied)",
                            m.bytes_applied as f64 * 100.0 / m.total_bytes as f64
                        )
                    })
                    .unwrap_or_default();
                missing.push(format!(
                    "the mirror has not completed{pct}: files not mirrored yet are missing or older than on the source, and the one being written when the target daemon last stopped may be cut short"
                ));
            }
            if let Some(ss) = source_seq.filter(|&s| s > st.last_applied_seq) {
                missing.push(format!(
                    "the source had cut change sets up to {ss}, the replica holds {}: the last {} change set(s) are missing",
                    st.last_applied_seq,
                    ss - st.last_applied_seq
                ));
            }
            let (pending, _) =
                crate::store::journal_backlog(&opts.state_dir.join("journal"), st.last_applied_seq);
            if pending > 0 {
                missing.push(format!(
                    "{pending} received change set(s) are journaled but not applied yet"
                ));
            }
            if let Some(p) = &st.paused {
                missing.push(format!("apply is paused: {p}"));
            }
            if let Some(w) = &st.warning {
                missing.push(format!("the replica has a warning: {w}"));
            }
            let (n, some) = crate::seed::shared_changes(&opts.state_dir, &id)?;
            if n > 0 {
                missing.push(format!(
                    "{n} file(s) of the staging area still share their inode with this machine's own system (hard-link seed) and were changed in place by it since the seed (e.g. {}): the staged system holds this machine's version of them; run the source's difference mirror again (`standin protect --once` there) first",
                    some.join(", ")
                ));
            }
            ("live".to_string(), root, st.last_applied_seq, complete)
        }
        Image::Snapshot(sid) => {
            let meta = crate::snapshot::load(&opts.state_dir, sid)?;
            if !meta.mirror_complete {
                missing.push(format!(
                    "snapshot {sid} was taken before the mirror completed: files not mirrored by then are missing"
                ));
            }
            (
                format!("snapshot:{sid}"),
                crate::snapshot::root(&opts.state_dir, sid),
                meta.seq,
                meta.mirror_complete,
            )
        }
    };
    Ok(DataState {
        source_id: id,
        image,
        staged_root,
        mirror_complete: complete,
        seq,
        source_seq,
        missing,
    })
}

/// Graceful: while the source still sends heartbeats, wait until everything
/// it queued is applied (or the timeout passes).
pub(super) fn drain(opts: &FailoverOptions, progress: &dyn Progress) -> Result<()> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let st = TargetState::load(&opts.state_dir)?;
        let Some(hb) = &st.last_heartbeat else {
            return Ok(());
        };
        let age = (now_ms() - hb.received_unix_ms).max(0) as u128;
        if age > opts.heartbeat_silence.as_millis() {
            return Ok(()); // the source is gone: nothing more will come
        }
        let (pending, _) =
            crate::store::journal_backlog(&opts.state_dir.join("journal"), st.last_applied_seq);
        let drained = hb.heartbeat.source_seq <= st.last_applied_seq
            && hb.heartbeat.queue_bytes == 0
            && pending == 0;
        if drained {
            return Ok(());
        }
        if !said {
            progress.note(&format!(
                "the source is reachable: waiting until its queue is applied (at {}, source at {})",
                st.last_applied_seq, hb.heartbeat.source_seq
            ));
            said = true;
        }
        if start.elapsed() > opts.drain_timeout {
            bail!(
                "the source's queue was not drained after {} s (applied {}, source at {}); stop the source's applications and try again, or use --immediate",
                opts.drain_timeout.as_secs(),
                st.last_applied_seq,
                hb.heartbeat.source_seq
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_still_being_synced_counts_as_complete_once_synced_here() {
        let d = tempfile::tempdir().unwrap();
        let state_dir = d.path().join("state");
        std::fs::create_dir_all(state_dir.join("staging/src1/root/etc")).unwrap();
        let mut st = TargetState {
            source_id: Some("src1".into()),
            last_applied_seq: 7,
            mirror_complete: false,
            mirror_flushing: true,
            ..Default::default()
        };
        st.save(&state_dir).unwrap();
        let opts = FailoverOptions::new(state_dir.clone(), d.path().join("target"));
        let ds = data_state(&opts).unwrap();
        assert!(ds.mirror_complete, "{ds:?}");
        assert!(ds.missing.is_empty(), "{ds:?}");
        // Not complete and not being synced: incomplete, and said so.
        st.mirror_flushing = false;
        st.save(&state_dir).unwrap();
        let ds = data_state(&opts).unwrap();
        assert!(!ds.mirror_complete, "{ds:?}");
        assert!(
            ds.missing.iter().any(|m| m.contains("has not completed")),
            "{ds:?}"
        );
    }
}
