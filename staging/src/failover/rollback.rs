//! Rollback: undo a failover's steps in reverse.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use standin_builder::progress::Progress;
use tracing::info;

use super::steps::{self, crash_point, Last, StepLog};
use super::{
    canonical, check_target_root, fsutil, load_plan, load_record, plan, save_record,
    state_dir_in_target, sync_fs, FailoverRecord, RecordState,
};
use crate::durable;
use crate::state::now_ms;

/// The result of a rollback.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub record: FailoverRecord,
    pub steps_undone: usize,
}

/// Put the target's own system back (and the staged system back where it
/// was), undoing the failover's steps in reverse; completes an interrupted
/// rollback too.
pub fn rollback(
    state_dir: &Path,
    target_root: Option<&Path>,
    progress: &dyn Progress,
) -> Result<RollbackReport> {
    let state_dir = canonical(state_dir, "state directory")?;
    let Some(mut rec) = load_record(&state_dir)? else {
        bail!(
            "no failover happened with the state directory {}; nothing to roll back",
            state_dir.display()
        );
    };
    if rec.state == RecordState::RolledBack {
        bail!(
            "failover {} was already rolled back; nothing to roll back",
            rec.id
        );
    }
    if let Some(t) = target_root {
        let t = check_target_root(t)?;
        if t != rec.target_root {
            bail!(
                "failover {} went into {}, not {}; pass --target-root {}",
                rec.id,
                rec.target_root.display(),
                t.display(),
                rec.target_root.display()
            );
        }
    }
    let _lock = crate::lock::lock(&state_dir)?;
    let plan = load_plan(&rec.rollback_dir)?;
    let log_path = rec.rollback_dir.join("steps.log");
    let start = match StepLog::last(&log_path)? {
        Last::None => None,
        Last::Do(i) | Last::Undo(i) => Some(i),
    };
    rec.state = RecordState::RollingBack;
    save_record(&state_dir, &rec)?;
    // Only once every step of the failover happened (the system may have
    // run since): then every entry of the target root not named by the plan is new.
    if matches!(StepLog::last(&log_path)?, Last::Do(i) if i + 1 == plan.steps.len()) {
        set_aside_new_entries(&plan, &state_dir, progress)?;
    }
    let mut log = StepLog::open(&log_path)?;
    let n = start.map(|i| i + 1).unwrap_or(0);
    progress.phase("rollback", None, Some(n as u64));
    for i in (0..n).rev() {
        let step = &plan.steps[i];
        log.append(&format!("undo {i}"))?;
        crash_point(&format!("undo-journal:{i}"));
        step.undo(&plan.bases)
            .with_context(|| format!("undoing step {i}: {}", step.describe(&plan.bases)))?;
        crash_point(&format!("undo:{i}"));
        progress.advance(0, 1);
    }
    progress.finish();
    sync_fs(&rec.target_root);
    rec.state = RecordState::RolledBack;
    rec.rolled_back_unix_ms = Some(now_ms());
    save_record(&state_dir, &rec)?;
    info!(id = rec.id, "rollback complete");
    Ok(RollbackReport {
        record: rec,
        steps_undone: n,
    })
}

/// Top-level entries the failed-over system created in the target root
/// (not part of the swap) move to `rollback/<id>/created/`, so the target's
/// own entries can come back and the root is exactly the target's again.
fn set_aside_new_entries(
    plan: &plan::Plan,
    state_dir: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let first = |p: &[u8]| p.split(|&b| b == b'/').next().unwrap_or(b"").to_vec();
    let mut known: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
    for st in &plan.steps {
        match st {
            steps::Step::Rename {
                to: steps::Base::Target,
                to_path,
                ..
            } => {
                known.insert(first(to_path));
            }
            steps::Step::Mkdir {
                base: steps::Base::Target,
                path,
            }
            | steps::Step::Write {
                base: steps::Base::Target,
                path,
                ..
            }
            | steps::Step::Meta {
                base: steps::Base::Target,
                path,
                ..
            } => {
                known.insert(first(path));
            }
            _ => {}
        }
    }
    let target = &plan.bases.target;
    if let Some(rel) = state_dir_in_target(state_dir, target) {
        known.insert(first(&rel));
    }
    let dev = std::fs::metadata(target)
        .with_context(|| format!("reading {}", target.display()))?
        .dev();
    let created = plan.bases.rollback.join("created");
    for e in std::fs::read_dir(target).with_context(|| format!("reading {}", target.display()))? {
        let e = e?;
        let name = e.file_name();
        if known.contains(name.as_bytes()) {
            continue;
        }
        let m = std::fs::symlink_metadata(e.path())?;
        if m.dev() != dev {
            continue; // a mount point stays
        }
        durable::create_dirs(&created)?;
        fsutil::rename_durable(&e.path(), &created.join(&name))?;
        progress.note(&format!(
            "{} was created after the failover; moved to {}",
            e.path().display(),
            created.join(&name).display()
        ));
    }
    Ok(())
}
