//! Failover: swap the staged (or a snapshot's) system into the target root
//! by renames on one filesystem, journaled step by step; and rollback.
//!
//! Files in the state directory:
//!
//! ```text
//! failover.json              the failover record (state, image, sequence number, times)
//! rollback/<id>/plan.json    the steps, computed before anything moves
//! rollback/<id>/steps.log    `do N` / `undo N`, written durably before each step
//! rollback/<id>/target/      the target's own system while failed over
//! rollback/<id>/displaced/   staged entries replaced by the target's kept paths
//! rollback/<id>/replaced/    files replaced by generated ones (fstab, network)
//! ```
//!
//! See docs/failover.md for the rules (what is kept, fstab, network).

pub mod config;
pub mod fstab;
pub mod fsutil;
pub mod network;
pub mod plan;
pub mod steps;

mod check;
mod rollback;

pub use check::data_state;
pub use rollback::{rollback, RollbackReport};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use standin_builder::progress::Progress;
use tracing::info;

use crate::durable;
use crate::state::{now_ms, TargetState};
use config::{NetworkMode, TargetConfig};
use steps::{crash_point, Last, StepLog};

/// File name of the failover record in the state directory.
pub const RECORD_FILE: &str = "failover.json";

/// Which system image to fail over to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// The live staging area (the last applied sequence number).
    Live,
    /// A snapshot by id.
    Snapshot(String),
}

/// Settings of a failover.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    pub state_dir: PathBuf,
    /// The source whose replica to use (default: the one in state.json).
    pub source_id: Option<String>,
    pub target_root: PathBuf,
    pub image: Image,
    /// Wait until the source's queue is drained when the source is still reachable.
    pub graceful: bool,
    /// Longest wait for the drain.
    pub drain_timeout: Duration,
    /// Heartbeat silence after which the source counts as unreachable.
    pub heartbeat_silence: Duration,
    /// Command to reboot with (run by `sh -c`), `None` for no reboot.
    pub reboot: Option<String>,
}

impl FailoverOptions {
    /// Defaults: live image, graceful, 300 s drain timeout, 35 s silence, no reboot.
    pub fn new(state_dir: PathBuf, target_root: PathBuf) -> FailoverOptions {
        FailoverOptions {
            state_dir,
            source_id: None,
            target_root,
            image: Image::Live,
            graceful: true,
            drain_timeout: Duration::from_secs(300),
            heartbeat_silence: crate::status::DEFAULT_SILENCE,
            reboot: None,
        }
    }
}

/// What the target holds, checked before a failover.
#[derive(Debug, Clone, Serialize)]
pub struct DataState {
    pub source_id: String,
    pub image: String,
    pub staged_root: PathBuf,
    pub mirror_complete: bool,
    /// Sequence number of the image.
    pub seq: u64,
    /// The newest sequence number the source reported.
    pub source_seq: Option<u64>,
    /// What may be missing from the image; non-empty means confirmation is needed.
    pub missing: Vec<String>,
}

/// Where a failover stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordState {
    InProgress,
    Complete,
    RollingBack,
    RolledBack,
}

/// The failover record (`failover.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub format: u32,
    pub id: String,
    pub state: RecordState,
    /// `live` or `snapshot:<id>`.
    pub image: String,
    pub source_id: String,
    pub seq: u64,
    pub mirror_complete: bool,
    pub target_root: PathBuf,
    pub staged_root: PathBuf,
    pub rollback_dir: PathBuf,
    pub network_mode: NetworkMode,
    pub started_unix_ms: i64,
    pub finished_unix_ms: Option<i64>,
    /// Time of the swap itself (all steps), in milliseconds.
    pub swap_ms: Option<u64>,
    pub steps: usize,
    pub kept: Vec<String>,
    pub generated: Vec<String>,
    pub notes: Vec<String>,
    /// What may have been missing, as confirmed by the user.
    pub confirmed_missing: Vec<String>,
    pub rolled_back_unix_ms: Option<i64>,
}

/// The record, if a failover ever ran here.
pub fn load_record(state_dir: &Path) -> Result<Option<FailoverRecord>> {
    let p = state_dir.join(RECORD_FILE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub(crate) fn save_record(state_dir: &Path, r: &FailoverRecord) -> Result<()> {
    let p = state_dir.join(RECORD_FILE);
    durable::write_atomic(&p, &serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", p.display()))
}

/// The result of a failover.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub record: FailoverRecord,
    /// Whether an interrupted failover was completed.
    pub resumed: bool,
    /// Whether the reboot command ran.
    pub rebooted: bool,
}

pub(crate) fn canonical(p: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("resolving the {what} {}", p.display()))
}

pub(crate) fn check_target_root(root: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => canonical(root, "target root"),
        Ok(_) => bail!(
            "the target root {} is not a directory; give the directory the target's system lives in (--target-root, default /)",
            root.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading the target root {}", root.display())),
    }
}

fn same_fs(a: &Path, what_a: &str, b: &Path) -> Result<()> {
    let da = std::fs::metadata(a)
        .with_context(|| format!("reading {}", a.display()))?
        .dev();
    let db = std::fs::metadata(b)
        .with_context(|| format!("reading {}", b.display()))?
        .dev();
    if da != db {
        bail!(
            "the {what_a} {} is on another filesystem (device {}:{}) than the target root {} (device {}:{}); the swap is a set of renames on one filesystem: put the state directory on the target root's filesystem",
            a.display(),
            rustix::fs::major(da),
            rustix::fs::minor(da),
            b.display(),
            rustix::fs::major(db),
            rustix::fs::minor(db)
        );
    }
    Ok(())
}

pub(crate) fn source_id(opts: &FailoverOptions, st: &TargetState) -> Result<String> {
    if let Some(s) = &opts.source_id {
        return Ok(s.clone());
    }
    if let Some(s) = &st.source_id {
        return Ok(s.clone());
    }
    bail!(
        "no source is staged in {}; protect a source first (`standin protect --target ...`)",
        opts.state_dir.display()
    )
}

pub(crate) fn state_dir_in_target(state_dir: &Path, target: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    state_dir
        .strip_prefix(target)
        .ok()
        .map(|r| r.as_os_str().as_bytes().to_vec())
}

fn new_id(state_dir: &Path) -> String {
    let secs = now_ms() / 1000;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil(days);
    let base = format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let mut id = base.clone();
    let mut n = 1;
    while state_dir.join("rollback").join(&id).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub(crate) fn load_plan(dir: &Path) -> Result<plan::Plan> {
    let p = dir.join("plan.json");
    let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))
}

fn run_steps(plan: &plan::Plan, dir: &Path, from: usize, progress: &dyn Progress) -> Result<()> {
    let mut log = StepLog::open(&dir.join("steps.log"))?;
    let total = plan.steps.len() as u64;
    progress.phase("swap", None, Some(total));
    progress.advance(0, from as u64);
    for (i, step) in plan.steps.iter().enumerate().skip(from) {
        log.append(&format!("do {i}"))?;
        crash_point(&format!("do-journal:{i}"));
        step.apply(&plan.bases)
            .with_context(|| format!("step {i}: {}", step.describe(&plan.bases)))?;
        crash_point(&format!("do:{i}"));
        progress.advance(0, 1);
    }
    progress.finish();
    Ok(())
}

pub(crate) fn sync_fs(p: &Path) {
    if let Ok(f) = std::fs::File::open(p) {
        let _ = rustix::fs::syncfs(&f);
    }
}

/// Fail over: check, confirm (`confirm` is asked when the image may be
/// incomplete and returns whether to go on), swap, record, reboot.
/// An interrupted failover is completed instead.
pub fn failover(
    opts: &FailoverOptions,
    confirm: &mut dyn FnMut(&DataState) -> bool,
    progress: &dyn Progress,
) -> Result<FailoverReport> {
    let target = check_target_root(&opts.target_root)?;
    let state_dir = canonical(&opts.state_dir, "state directory")?;
    let opts = FailoverOptions {
        state_dir: state_dir.clone(),
        ..opts.clone()
    };
    if let Some(rec) = load_record(&state_dir)? {
        match rec.state {
            RecordState::InProgress => return resume(&opts, &target, rec, progress),
            RecordState::Complete => bail!(
                "this target already failed over (failover {} into {}); run `standin failover --rollback` first to fail over again",
                rec.id,
                rec.target_root.display()
            ),
            RecordState::RollingBack => bail!(
                "a rollback of failover {} was interrupted; finish it with `standin failover --rollback`",
                rec.id
            ),
            RecordState::RolledBack => {}
        }
    }
    if opts.graceful && opts.image == Image::Live {
        check::drain(&opts, progress)?;
    }
    if opts.image == Image::Live {
        // A daemon killed half way through a change set left it in the
        // journal: finish it before looking at the replica.
        let n = crate::store::replay_pending(&state_dir)?;
        if n > 0 {
            progress.note(&format!(
                "finished {n} change set(s) the target daemon left half applied"
            ));
        }
    }
    let ds = data_state(&opts)?;
    match std::fs::symlink_metadata(&ds.staged_root) {
        Ok(m) if m.is_dir() => {}
        _ => bail!(
            "the staged system {} is missing; protect the source first or pick a snapshot (`standin snapshot list`)",
            ds.staged_root.display()
        ),
    }
    if std::fs::read_dir(&ds.staged_root)?.next().is_none() {
        bail!(
            "the staged system {} is empty; nothing to fail over to",
            ds.staged_root.display()
        );
    }
    same_fs(&ds.staged_root, "staging area", &target)?;
    durable::create_dirs(&state_dir.join("rollback"))?;
    same_fs(&state_dir.join("rollback"), "rollback directory", &target)?;
    if !ds.missing.is_empty() && !confirm(&ds) {
        bail!(
            "failover cancelled: the replica may be incomplete ({}); pass --yes to fail over anyway",
            ds.missing.join("; ")
        );
    }
    let lock = crate::lock::lock(&state_dir)?;
    // Under the lock nothing is applied any more; a set journaled since the
    // check above (and left half applied) is finished now, and the record
    // names the sequence number the swapped system holds.
    let seq = if opts.image == Image::Live {
        crate::store::replay_locked(&state_dir, &lock)?;
        crate::state::TargetState::load(&state_dir)?.last_applied_seq
    } else {
        ds.seq
    };
    let cfg = TargetConfig::load(&state_dir)?;
    let id = new_id(&state_dir);
    let rdir = state_dir.join("rollback").join(&id);
    durable::create_dirs(&rdir)?;
    let bases = steps::Bases {
        target: target.clone(),
        staged: canonical(&ds.staged_root, "staged system")?,
        rollback: rdir.clone(),
    };
    let pinned: Vec<Vec<u8>> = state_dir_in_target(&state_dir, &target)
        .into_iter()
        .collect();
    let plan = plan::build(&bases, &pinned, &cfg)?;
    durable::write_atomic(&rdir.join("plan.json"), &serde_json::to_vec_pretty(&plan)?)
        .with_context(|| format!("writing {}", rdir.join("plan.json").display()))?;
    let rec = FailoverRecord {
        format: 1,
        id: id.clone(),
        state: RecordState::InProgress,
        image: ds.image.clone(),
        source_id: ds.source_id.clone(),
        seq,
        mirror_complete: ds.mirror_complete,
        target_root: target.clone(),
        staged_root: bases.staged.clone(),
        rollback_dir: rdir.clone(),
        network_mode: cfg.network_mode,
        started_unix_ms: now_ms(),
        finished_unix_ms: None,
        swap_ms: None,
        steps: plan.steps.len(),
        kept: plan.kept.clone(),
        generated: plan.generated.clone(),
        notes: plan.notes.clone(),
        confirmed_missing: ds.missing.clone(),
        rolled_back_unix_ms: None,
    };
    save_record(&state_dir, &rec)?;
    crash_point("planned");
    for n in &plan.notes {
        progress.note(n);
    }
    info!(id, steps = plan.steps.len(), "failover: swapping");
    finish(&opts, &target, rec, &plan, 0, false, progress)
}

fn finish(
    opts: &FailoverOptions,
    target: &Path,
    mut rec: FailoverRecord,
    plan: &plan::Plan,
    from: usize,
    resumed: bool,
    progress: &dyn Progress,
) -> Result<FailoverReport> {
    let t0 = Instant::now();
    run_steps(plan, &rec.rollback_dir, from, progress)?;
    sync_fs(target);
    rec.state = RecordState::Complete;
    rec.finished_unix_ms = Some(now_ms());
    rec.swap_ms = Some(t0.elapsed().as_millis() as u64);
    save_record(&opts.state_dir, &rec)?;
    info!(id = rec.id, ms = rec.swap_ms, "failover complete");
    let rebooted = match &opts.reboot {
        Some(cmd) => {
            progress.note(&format!("rebooting: {cmd}"));
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .with_context(|| format!("running the reboot command {cmd:?}"))?;
            if !st.success() {
                bail!("the reboot command {cmd:?} failed ({st}); the failover is complete, reboot by hand");
            }
            true
        }
        None => false,
    };
    Ok(FailoverReport {
        record: rec,
        resumed,
        rebooted,
    })
}

fn resume(
    opts: &FailoverOptions,
    target: &Path,
    rec: FailoverRecord,
    progress: &dyn Progress,
) -> Result<FailoverReport> {
    if rec.target_root != target {
        bail!(
            "an interrupted failover into {} is pending; finish it with --target-root {} (or roll it back)",
            rec.target_root.display(),
            rec.target_root.display()
        );
    }
    let _lock = crate::lock::lock(&opts.state_dir)?;
    let plan = load_plan(&rec.rollback_dir)?;
    let from = match StepLog::last(&rec.rollback_dir.join("steps.log"))? {
        Last::None => 0,
        Last::Do(i) => i,
        Last::Undo(_) => bail!(
            "a rollback of failover {} was interrupted; finish it with `standin failover --rollback`",
            rec.id
        ),
    };
    progress.note(&format!(
        "completing the interrupted failover {} from step {from} of {}",
        rec.id,
        plan.steps.len()
    ));
    finish(opts, target, rec, &plan, from, true, progress)
}
