//! The whole `validate` run as one call: load both sides, apply the target
//! state directory, validate, optionally fix and validate again.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::fixes::{apply_fixes, plan_fixes, AppliedFixes};
use crate::report::Report;
use crate::rules::{validate, Options};
use crate::side::Side;
use crate::state::overlay;

/// What to validate and whether to fix.
#[derive(Debug, Clone)]
pub struct Request {
    /// The source side.
    pub source: Side,
    /// The target side.
    pub target: Side,
    /// The target's state directory (its configuration and rollback area
    /// are applied to the target profile; fixes are written there).
    pub target_state_dir: Option<PathBuf>,
    /// Apply every automatic fix, then validate again.
    pub fix_all: bool,
    /// With `fix_all`: only plan, change nothing.
    pub dry_run: bool,
    /// Rule tunables.
    pub options: Options,
}

/// What a run found and did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Findings before any fix.
    pub before: Report,
    /// The fixes planned (`--dry-run`) or applied (`--fix-all`).
    pub fixes: Option<AppliedFixes>,
    /// Whether the fixes were only planned.
    pub dry_run: bool,
    /// Findings after the fixes were applied.
    pub after: Option<Report>,
}

impl Outcome {
    /// The report that decides the exit code: after fixes if any were applied.
    pub fn final_report(&self) -> &Report {
        self.after.as_ref().unwrap_or(&self.before)
    }

    /// `{"findings": [...final...], "fixes": [...], "before": {...}, "applied": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.final_report().to_json_value();
        if self.after.is_some() || self.fixes.is_some() {
            v["before"] = self.before.to_json_value();
        }
        if let Some(f) = &self.fixes {
            v[if self.dry_run { "planned" } else { "applied" }] =
                serde_json::to_value(&f.changes).expect("changes serialize");
        }
        v
    }
}

/// Run a validation as `req` says.
pub fn run(req: &Request) -> Result<Outcome> {
    if req.fix_all && req.target_state_dir.is_none() {
        bail!("--fix-all needs --target-state-dir DIR: the fixes are written to the target's state directory");
    }
    if let Some(sd) = &req.target_state_dir {
        if !sd.is_dir() {
            bail!(
                "target state directory {} does not exist; create it (mkdir -p) or pass the one `standin target serve` uses",
                sd.display()
            );
        }
    }
    let source = req.source.load()?;
    let load_target = || -> Result<crate::profile::Profile> {
        let mut t = req.target.load()?;
        if let Some(sd) = &req.target_state_dir {
            overlay(&mut t, sd)?;
        }
        Ok(t)
    };
    let target = load_target()?;
    let before = validate(&source, &target, &req.options);
    if !req.fix_all {
        return Ok(Outcome {
            before,
            fixes: None,
            dry_run: false,
            after: None,
        });
    }
    let sd = req.target_state_dir.as_ref().expect("checked above");
    let fixes = before.auto_fixes();
    if req.dry_run {
        let planned = plan_fixes(sd, &fixes)?;
        return Ok(Outcome {
            before,
            fixes: Some(planned),
            dry_run: true,
            after: None,
        });
    }
    let applied = apply_fixes(sd, &fixes)?;
    let target = load_target()?;
    let after = validate(&source, &target, &req.options);
    Ok(Outcome {
        before,
        fixes: Some(applied),
        dry_run: false,
        after: Some(after),
    })
}
