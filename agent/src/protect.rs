//! `standin protect` as one call: validate this machine against the
//! target (fixing the target's automatic findings on request), start change
//! capture, mirror, then replicate continuously until stopped.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use standin_builder::progress::Progress;
use standin_link::message::{Message, Role};
use standin_validate::{collect, validate, AppliedFixes, CollectOptions, LiveFacts, Outcome};

use crate::link::{connect, query_profile, LinkConfig, Sender, SenderStats};
use crate::mirror::{mirror, MirrorOptions, MirrorReport};

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
}

/// How `protect` ended.
#[derive(Debug, Serialize)]
pub struct ProtectOutcome {
    /// The validation (before and after fixes).
    pub validation: Outcome,
    /// `false`: errors remained, nothing was mirrored.
    pub started: bool,
    pub mirror: Option<MirrorReport>,
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
    let source = tokio::task::spawn_blocking(move || {
        collect(
            &LiveFacts::new(root_owned),
            &CollectOptions {
                standin_version: standin_link::STANDIN_VERSION.to_string(),
                ..Default::default()
            },
        )
    })
    .await
    .context("collecting this machine's profile")?;
    validate_against(link, &source, fix_all, opts).await
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
    let source = source.clone();
    let target = fetch_profile(link).await?;
    let before = validate(&source, &target, opts);
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
    let after = validate(&source, &target, opts);
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

/// Change capture, started before the mirror scan so that nothing changed
/// during the mirror is missed, and handed to replication afterwards.
///
/// INTEGRATION POINT (capture helper): `start_capture` becomes
/// `crate::capture::Watcher::start(root, &CaptureOptions { .. })` and
/// [`replicate_until_stopped`] calls `crate::replicate::replicate(..)`.
pub struct Capture {
    #[allow(dead_code)]
    root: PathBuf,
}

/// Start change capture on `root` (see [`Capture`]).
pub fn start_capture(root: &std::path::Path) -> Result<Capture> {
    Ok(Capture {
        root: root.to_path_buf(),
    })
}

/// Continuous replication until SIGINT/SIGTERM, then drain the queue.
///
/// INTEGRATION POINT (capture helper): the capture helper's
/// `replicate(capture, sender, ..)` runs here. Until it lands this keeps
/// the link (heartbeats) and the status line alive and drains on stop.
pub async fn replicate_until_stopped(
    _capture: Capture,
    sender: &Sender,
    on_tick: &(dyn Fn(&SenderStats) + Sync),
) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => on_tick(&sender.stats()),
        }
    }
    // Drain: wait (bounded) for what is queued to be acknowledged.
    let last = sender.next_seq().saturating_sub(1);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), sender.wait_acked(last)).await;
    Ok(())
}

/// Validate, then mirror, then (unless `once`) replicate until stopped.
pub async fn protect(
    opts: &ProtectOptions,
    progress: Arc<dyn Progress>,
    on_tick: &(dyn Fn(&SenderStats) + Sync),
) -> Result<ProtectOutcome> {
    let validation = validate_remote(&opts.link, &opts.mirror.root, opts.fix_all, &opts.validate)
        .await
        .context("validating against the target")?;
    if validation.final_report().has_errors() {
        return Ok(ProtectOutcome {
            validation,
            started: false,
            mirror: None,
            link: None,
        });
    }
    let mut link = opts.link.clone();
    if let Some(sd) = &opts.state_dir {
        link.spill_dir = Some(sd.join("queue"));
    }
    let sender = Sender::start(link.clone()).await?;
    let capture = start_capture(&opts.mirror.root)?;
    let report = mirror(&sender, &link, &opts.mirror, progress).await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            sender.close().await;
            return Err(e);
        }
    };
    if !opts.once && report.complete {
        replicate_until_stopped(capture, &sender, on_tick).await?;
    }
    let stats = sender.stats();
    sender.close().await;
    Ok(ProtectOutcome {
        validation,
        started: true,
        mirror: Some(report),
        link: Some(stats),
    })
}
