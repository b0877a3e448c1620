//! Whole change sets for every reader of the replica, not only the daemon.
//!
//! The daemon applies a change set record by record under the apply lock
//! and, after a crash, replays a half-applied set when it starts
//! ([`Store::recover`]). A failover or a snapshot taken while the daemon is
//! dead must not read the replica with half a set in it: they call
//! [`replay_pending`] (or [`replay_locked`] under a lock they hold), which
//! finishes the set exactly as the daemon's restart would, or refuses with
//! what to do.
//!
//! A running daemon holds `STATE/daemon.lock` ([`crate::lock::daemon`]) for its
//! whole life, so a reader knows whether a journaled set is the daemon's
//! business (it is about to apply it, or its apply is paused) or left by a
//! crash (the reader replays it).

use std::path::Path;

use anyhow::{bail, Context, Result};
use tracing::info;

use super::{default_factory, journal_backlog, Store};
use crate::lock::{daemon_running, ApplyLock};
use crate::state::TargetState;

/// [`replay_locked`] under the apply lock, taken here (waits for an apply
/// in progress). Refused after a failover swapped the staged system.
pub fn replay_pending(dir: &Path) -> Result<u64> {
    if !dir.join("journal").is_dir() {
        return Ok(0);
    }
    let lock = crate::lock::for_apply(dir)?;
    replay_locked(dir, &lock)
}

/// Make the replica hold whole change sets before it is read, with the
/// apply lock held by the caller. When a complete journaled set above the
/// recorded number was left by a dead daemon (kill -9, power loss) it is
/// re-applied from its progress mark, as the daemon's restart would.
/// Returns how many sets were replayed.
///
/// Refused (with what to do) when the set cannot be finished: its apply
/// is paused (disk full) — then the replica may hold part of it.
/// A running daemon's journaled set that is not paused is left alone: the
/// daemon applies sets only under the apply lock, so the replica is exactly
/// as of the recorded number.
pub fn replay_locked(dir: &Path, _lock: &ApplyLock) -> Result<u64> {
    let st = TargetState::load(dir)?;
    let journal = dir.join("journal");
    if journal_backlog(&journal, st.last_applied_seq).0 == 0 {
        return Ok(0);
    }
    let next = st.last_applied_seq + 1;
    if daemon_running(dir)? {
        if let Some(p) = &st.paused {
            bail!(
                "change set {next} is journaled but its apply is paused ({p}); the replica may hold part of it. Free space on the staging filesystem (the running target daemon then finishes it by itself) and run this again, or use a snapshot (`standin snapshot list`)"
            );
        }
        return Ok(0);
    }
    let before = st.last_applied_seq;
    let mut store = Store {
        dir: dir.to_path_buf(),
        state: st,
        target: None,
        factory: default_factory(dir),
        lock_held: true,
        lazy_saved_at: None,
        lazy_save_every: super::LAZY_SAVE_EVERY,
        applied: None,
        root_check: None,
    };
    store
        .recover()
        .with_context(|| format!("replaying the journal in {}", journal.display()))?;
    let after = store.state.last_applied_seq;
    if journal_backlog(&journal, after).0 > 0 {
        bail!(
            "change set {} is journaled but could not be applied ({}); the replica may hold part of it. Free space on the staging filesystem and run this again (or start `standin target serve`, which finishes it), or use a snapshot (`standin snapshot list`)",
            after + 1,
            store.state.paused.as_deref().unwrap_or("no reason recorded")
        );
    }
    if after > before {
        info!(
            from = before + 1,
            to = after,
            "replayed change sets the target daemon left half applied"
        );
    }
    Ok(after - before)
}
