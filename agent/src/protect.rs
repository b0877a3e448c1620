//! `standin protect` as one call: validate this machine against the
//! target (fixing the target's automatic findings on request), start change
//! capture, mirror, then replicate continuously until stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use standin_builder::progress::Progress;
use standin_link::message::{Message, Role};
use standin_validate::{collect, validate, AppliedFixes, CollectOptions, LiveFacts, Outcome};

use crate::blockindex::BlockIndex;
use crate::capture::{CaptureOptions, Watcher};
use crate::link::{connect, query_profile, LinkConfig, Sender, SenderStats};
use crate::mirror::{mirror, MirrorOptions, MirrorReport};
use crate::replicate::{replicate, ReplicateOptions, ReplicateReport};

/// What `standin protect` does.
#[derive(Debug, Clone)]
pub struct ProtectOptions {
    pub link: LinkConfig,
    pub mirror: MirrorOptions,
    /// Apply the target's automatic fixes, then validate again.
    pub fix_all: bool,
    /// Mirror, then stop (no continuous replication).
    pub once: bool,
    /// The agent's state directory (queue spill, block index).
    pub state_dir: Option<PathBuf>,
    pub validate: standin_validate::Options,
    /// Interval of the checksum sweep during replication (`None`: never).
    pub sweep_interval: Option<std::time::Duration>,
}

/// How `protect` ended.
#[derive(Debug, Serialize)]
pub struct ProtectOutcome {
    /// The validation (before and after fixes).
    pub validation: Outcome,
    /// `false`: errors remained, nothing was mirrored.
    pub started: bool,
    pub mirror: Option<MirrorReport>,
    /// Continuous replication's counters (not with `once`).
    pub replication: Option<ReplicateReport>,
    /// The link's counters when protect stopped.
    pub link: Option<SenderStats>,
}

/// This machine's profile (of `root`) validated against the target's,
/// fetched over the link; with `fix_all` the target applies its automatic
/// fixes and is validated again.
pub async fn validate_remote(
    link: &LinkConfig,
    root: &std::path::Path,
    fix_all: bool,
    opts: &standin_validate::Options,
) -> Result<Outcome> {
    let root_owned = root.to_path_buf();
    let collecting = tokio::task::spawn_blocking(move || {
        collect(
            &LiveFacts::new(root_owned),
            &CollectOptions {
                standin_version: standin_link::STANDIN_VERSION.to_string(),
                ..Default::default()
            },
        )
    });
    // The target collects its profile while this machine collects its own.
    let (source, target) = tokio::join!(collecting, fetch_profile(link));
    let source = source.context("collecting this machine's profile")?;
    validate_fetched(link, &source, target?, fix_all, opts).await
}

/// `source` validated against the target's profile fetched over `link`;
/// with `fix_all` the target applies its automatic fixes and is validated
/// again (used by `standin validate --target HOST:PORT`).
pub async fn validate_against(
    link: &LinkConfig,
    source: &standin_validate::Profile,
    fix_all: bool,
    opts: &standin_validate::Options,
) -> Result<Outcome> {
    let target = fetch_profile(link).await?;
    validate_fetched(link, source, target, fix_all, opts).await
}

/// [`validate_against`] with the target's profile already fetched.
async fn validate_fetched(
    link: &LinkConfig,
    source: &standin_validate::Profile,
    target: standin_validate::Profile,
    fix_all: bool,
    opts: &standin_validate::Options,
) -> Result<Outcome> {
    let before = validate(source, &target, opts);
    let fixes = before.auto_fixes();
    if !fix_all || fixes.is_empty() {
        return Ok(Outcome {
            before,
            fixes: None,
            dry_run: false,
            after: None,
        });
    }
    let applied = apply_remote_fixes(link, &fixes).await?;
    let target = fetch_profile(link).await?;
    let after = validate(source, &target, opts);
    Ok(Outcome {
        before,
        fixes: Some(applied),
        dry_run: false,
        after: Some(after),
    })
}

/// The target's profile over the link.
pub async fn fetch_profile(link: &LinkConfig) -> Result<standin_validate::Profile> {
    let v = query_profile(link)
        .await
        .with_context(|| format!("fetching the profile of {}", link.target))?;
    standin_validate::Profile::from_json(&serde_json::to_vec(&v)?, &link.target)
}

/// Ask the target to apply automatic fixes to its state directory.
pub async fn apply_remote_fixes(
    link: &LinkConfig,
    fixes: &[standin_validate::Fix],
) -> Result<AppliedFixes> {
    let mut c = connect(link, Role::Validate).await?;
    match c
        .request(&Message::FixRequest(serde_json::to_value(fixes)?))
        .await
        .with_context(|| format!("applying fixes on {}", link.target))?
    {
        Message::FixResponse(v) => {
            Ok(serde_json::from_value(v).context("reading the fix response")?)
        }
        other => bail!("expected a fix response, got {}", other.name()),
    }
}

/// Start change capture on `root` before the mirror scan, so that nothing
/// changed during the mirror is missed; it is handed to replication after
/// the mirror. fanotify on the whole filesystem, inotify as the fallback.
pub fn start_capture(root: &Path, ignore: Vec<PathBuf>) -> Result<Watcher> {
    Watcher::start(
        root,
        &CaptureOptions {
            ignore,
            ..Default::default()
        },
    )
    .with_context(|| format!("starting change capture on {}", root.display()))
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Continuous replication after a mirror that started at `mirror_started`,
/// until SIGINT/SIGTERM; then the queue drains (up to 30 s).
pub async fn replicate_until_stopped(
    opts: &ProtectOptions,
    watcher: Watcher,
    index_dir: &Path,
    mirror_started: std::time::SystemTime,
    sender: &Sender,
    on_tick: &(dyn Fn(&SenderStats) + Sync),
) -> Result<ReplicateReport> {
    let root = opts.mirror.root.clone();
    let scan = opts.mirror.scan.clone();
    let dir = index_dir.to_path_buf();
    let index = tokio::task::spawn_blocking(move || -> Result<BlockIndex> {
        let mut index = BlockIndex::open(&dir)?;
        index.seed(&root, &scan, mirror_started)?;
        Ok(index)
    })
    .await
    .context("block index task")?
    .context("recording what the target holds")?;
    let ropts = ReplicateOptions {
        scan: opts.mirror.scan.clone(),
        sweep_interval: opts.sweep_interval,
        ..Default::default()
    };
    let repl = replicate(
        &opts.mirror.root,
        ropts,
        watcher,
        index,
        sender,
        stop_signal(),
    );
    tokio::pin!(repl);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let report = loop {
        tokio::select! {
            r = &mut repl => break r?,
            _ = tick.tick() => on_tick(&sender.stats()),
        }
    };
    let last = sender.next_seq().saturating_sub(1);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), sender.wait_acked(last)).await;
    Ok(report)
}

/// How long a stopped replication may take to drain before protect gives
/// up on it (the drain itself waits at most 30 s).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(35);

/// Validate, then mirror, then (unless `once`) replicate until stopped.
///
/// SIGINT or SIGTERM stops it at any point: during replication the queue
/// drains first (at most 35 s, `STOP_GRACE`); before that (validation, the
/// link coming up, the mirror) it stops at once, and the next protect
/// resumes with a difference mirror.
pub async fn protect(
    opts: &ProtectOptions,
    progress: Arc<dyn Progress>,
    on_tick: &(dyn Fn(&SenderStats) + Sync),
) -> Result<ProtectOutcome> {
    let replicating = std::sync::atomic::AtomicBool::new(false);
    let work = protect_phases(opts, progress, on_tick, &replicating);
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        _ = stop_signal() => {}
    }
    if replicating.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(r) = tokio::time::timeout(STOP_GRACE, &mut work).await {
            return r;
        }
        bail!(
            "stopped by a signal; the queue did not drain within {} s (the next protect resumes with a difference mirror)",
            STOP_GRACE.as_secs()
        );
    }
    bail!("stopped by a signal before replication began; the next protect resumes with a difference mirror")
}

async fn protect_phases(
    opts: &ProtectOptions,
    progress: Arc<dyn Progress>,
    on_tick: &(dyn Fn(&SenderStats) + Sync),
    replicating: &std::sync::atomic::AtomicBool,
) -> Result<ProtectOutcome> {
    let t0 = std::time::Instant::now();
    let validation = validate_remote(&opts.link, &opts.mirror.root, opts.fix_all, &opts.validate)
        .await
        .context("validating against the target")?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "validated");
    if validation.final_report().has_errors() {
        return Ok(ProtectOutcome {
            validation,
            started: false,
            mirror: None,
            replication: None,
            link: None,
        });
    }
    let mut link = opts.link.clone();
    if let Some(sd) = &opts.state_dir {
        link.spill_dir = Some(sd.join("queue"));
    }
    let sender = Sender::start(link.clone()).await?;
    // Capture starts before the mirror scan (not needed with --once).
    let capture = if opts.once {
        None
    } else {
        let ignore = opts.state_dir.iter().cloned().collect();
        Some(start_capture(&opts.mirror.root, ignore)?)
    };
    let mirror_started = std::time::SystemTime::now();
    let mut mopts = opts.mirror.clone();
    if let (None, Some(sd)) = (&mopts.digest_cache, &opts.state_dir) {
        mopts.digest_cache = Some(sd.join(crate::digests::FILE));
    }
    let report = mirror(&sender, &link, &mopts, progress).await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            sender.close().await;
            return Err(e);
        }
    };
    let mut replication = None;
    if let (Some(watcher), true) = (capture, report.complete) {
        let tmp;
        let index_dir = match &opts.state_dir {
            Some(sd) => sd.join("blockindex"),
            None => {
                tmp = tempfile::tempdir().context("creating a temporary block index")?;
                tmp.path().to_path_buf()
            }
        };
        replicating.store(true, std::sync::atomic::Ordering::Relaxed);
        replication = Some(
            replicate_until_stopped(opts, watcher, &index_dir, mirror_started, &sender, on_tick)
                .await?,
        );
    }
    let stats = sender.stats();
    sender.close().await;
    Ok(ProtectOutcome {
        validation,
        started: true,
        mirror: Some(report),
        replication,
        link: Some(stats),
    })
}
