//! The target's profile as served to `standin validate` and `standin
//! protect`, and the automatic fixes they ask the target to apply.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use standin_validate::{collect, CollectOptions, Fix, LiveFacts};

/// The profile of the target whose system tree is `root`, with what its
/// state directory configures (staging path, services to stop, rollback
/// space) applied.
pub fn local_profile(root: &Path, state_dir: &Path) -> Result<Value> {
    let opts = CollectOptions {
        standin_version: standin_link::STANDIN_VERSION.to_string(),
        staging_path: None,
        state_dir: Some(state_dir.to_path_buf()),
    };
    let mut p = collect(&LiveFacts::new(root), &opts);
    standin_validate::state::overlay(&mut p, state_dir).with_context(|| {
        format!(
            "reading the target configuration in {}",
            state_dir.display()
        )
    })?;
    serde_json::to_value(&p).context("encoding the profile")
}

/// Apply automatic fixes (a JSON list of the validate crate's [`Fix`]) to
/// the state directory; returns the validate crate's `AppliedFixes` as JSON.
pub fn apply_fixes(state_dir: &Path, fixes: Value) -> Result<Value> {
    let fixes: Vec<Fix> = serde_json::from_value(fixes).context("reading the fix request")?;
    for f in &fixes {
        tracing::info!(
            fix = f.describe(),
            "applying a fix requested by a validating peer"
        );
    }
    let applied = standin_validate::apply_fixes(state_dir, &fixes)?;
    serde_json::to_value(&applied).context("encoding the applied fixes")
}
