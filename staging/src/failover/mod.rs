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

fn save_record(state_dir: &Path, r: &FailoverRecord) -> Result<()> {
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

fn canonical(p: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("resolving the {what} {}", p.display()))
}

fn check_target_root(root: &Path) -> Result<PathBuf> {
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

fn source_id(opts: &FailoverOptions, st: &TargetState) -> Result<String> {
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

/// Check the data state: what the image holds and what may be missing.
pub fn data_state(opts: &FailoverOptions) -> Result<DataState> {
    let st = TargetState::load(&opts.state_dir)?;
    let id = source_id(opts, &st)?;
    let source_seq = st.last_heartbeat.as_ref().map(|h| h.heartbeat.source_seq);
    let mut missing = Vec::new();
    let (image, staged_root, seq, complete) = match &opts.image {
        Image::Live => {
            let root = opts.state_dir.join("staging").join(&id).join("root");
            if !st.mirror_complete {
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
                    "the mirror has not completed{pct}: files not mirrored yet are missing or older than on the source"
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
            (
                "live".to_string(),
                root,
                st.last_applied_seq,
                st.mirror_complete,
            )
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
fn drain(opts: &FailoverOptions, progress: &dyn Progress) -> Result<()> {
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

fn state_dir_in_target(state_dir: &Path, target: &Path) -> Option<Vec<u8>> {
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

fn load_plan(dir: &Path) -> Result<plan::Plan> {
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

fn sync_fs(p: &Path) {
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
        drain(&opts, progress)?;
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
    let _lock = crate::lock::lock(&state_dir)?;
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
        seq: ds.seq,
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
