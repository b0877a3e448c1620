//! `standin demo`: the whole story on one machine, in a temp dir, by
//! running this same binary as the commands a user would type.
//!
//! Build a demo source and a small target system, start the target daemon
//! on loopback, validate, protect, change data, kill the source, wait for
//! the failover condition, fail over into the target root, boot it in qemu
//! (when installed), roll back.

mod failback;
mod run;
mod story;
mod trees;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

/// What the demo is asked to do.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Work here instead of a fresh temp dir (must not hold a demo yet).
    pub dir: Option<PathBuf>,
    /// Keep the work dir afterwards.
    pub keep: bool,
    /// Skip the qemu boot.
    pub no_boot: bool,
}

/// One step's outcome, for the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    /// Step number, 1-based.
    pub number: usize,
    /// Short title.
    pub title: String,
    /// passed, failed or skipped.
    pub result: String,
    /// What the step showed (one line).
    pub shown: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The demo's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Every step run (the failed one last when one failed).
    pub steps: Vec<StepReport>,
    /// All passed.
    pub ok: bool,
    /// Total wall-clock seconds.
    pub seconds: f64,
    /// The work dir, when kept.
    pub kept: Option<PathBuf>,
}

/// Steps in order, with their headline and a sentence for a newcomer.
pub(crate) struct Steps {
    started: Instant,
    reports: Vec<StepReport>,
    current: Option<(usize, String, Instant)>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            started: Instant::now(),
            reports: Vec::new(),
            current: None,
        }
    }

    /// Start step `n`: print its title and what it is about.
    pub(crate) fn begin(&mut self, n: usize, title: &str, about: &str) {
        println!("\n== step {n}: {title}");
        for line in about.lines() {
            println!("   {line}");
        }
        self.current = Some((n, title.to_string(), Instant::now()));
    }

    /// End the current step with `result` and a line of what it showed.
    pub(crate) fn end(&mut self, result: &str, shown: &str) {
        if let Some((n, title, t)) = self.current.take() {
            println!("   -> {shown}");
            self.reports.push(StepReport {
                number: n,
                title,
                result: result.to_string(),
                shown: shown.to_string(),
                seconds: t.elapsed().as_secs_f64(),
            });
        }
    }

    fn fail(&mut self, err: &anyhow::Error) {
        if let Some((n, title, t)) = self.current.take() {
            println!("\nstep {n} ({title}) FAILED: {err:#}");
            self.reports.push(StepReport {
                number: n,
                title,
                result: "failed".into(),
                shown: format!("{err:#}").lines().next().unwrap_or("").to_string(),
                seconds: t.elapsed().as_secs_f64(),
            });
        } else {
            println!("\nthe demo FAILED: {err:#}");
        }
    }
}

/// Run the demo, printing as it goes; the report says whether every check
/// passed. Errors only when the work dir cannot be set up.
pub fn run(opts: &DemoOptions) -> Result<DemoReport> {
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!(
            "standin demo needs root: it builds system trees with their owners and swaps \
             them like a real failover (all inside a temp dir); run it with sudo"
        );
    }
    let (base, tmp) = story::work_dir(opts)?;
    let mut steps = Steps::new();
    let res = story::story(opts, &base, &mut steps);
    if let Err(e) = &res {
        steps.fail(e);
    }
    let kept = if opts.keep || opts.dir.is_some() {
        if let Some(t) = tmp {
            let _ = t.keep();
        }
        Some(base.clone())
    } else {
        drop(tmp);
        None
    };
    let report = DemoReport {
        ok: res.is_ok(),
        steps: steps.reports,
        seconds: steps.started.elapsed().as_secs_f64(),
        kept,
    };
    print_summary(&report);
    Ok(report)
}

fn print_summary(r: &DemoReport) {
    println!("\n== summary");
    for s in &r.steps {
        println!(
            "  {:>2}. {:<44} {:<7} {:>6.1} s  {}",
            s.number, s.title, s.result, s.seconds, s.shown
        );
    }
    println!("  total {:.1} s", r.seconds);
    if let Some(k) = &r.kept {
        println!("  the demo files are in {} (logs in logs/)", k.display());
    }
    if r.ok {
        println!("demo: every step passed.");
    } else {
        println!("demo: FAILED (see the step above).");
    }
}

/// Poll `f` every 200 ms until it returns `Some`, at most `limit`.
pub(crate) fn wait_for<T>(
    limit: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let t = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if t.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
