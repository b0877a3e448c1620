//! The target's profile as served to `standin validate` and `standin
//! protect`, and the automatic fixes they ask the target to apply.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How long the daemon serves a profile it computed before computing it
/// again (fixes applied through the daemon recompute it at once).
pub const PROFILE_MAX_AGE: Duration = Duration::from_secs(300);

/// The daemon's profile, computed once (at start, after fixes, and when
/// older than [`PROFILE_MAX_AGE`]) and served from memory: collecting it
/// reads the target's system tree.
pub struct ProfileCache {
    root: PathBuf,
    state_dir: PathBuf,
    slot: Mutex<Option<(Instant, Value)>>,
    computed: AtomicU64,
}

impl ProfileCache {
    /// A cache of the profile of the target at `root` with state in `state_dir`.
    pub fn new(root: &Path, state_dir: &Path) -> ProfileCache {
        ProfileCache {
            root: root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            slot: Mutex::new(None),
            computed: AtomicU64::new(0),
        }
    }

    /// The profile (blocking: computes it when there is none or it is too old).
    pub fn get(&self) -> Result<Value> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, v)) = slot.as_ref() {
            if at.elapsed() < PROFILE_MAX_AGE {
                return Ok(v.clone());
            }
        }
        let v = local_profile(&self.root, &self.state_dir)?;
        self.computed.fetch_add(1, Ordering::Relaxed);
        *slot = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// Forget the profile (something it reports changed).
    pub fn invalidate(&self) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Apply fixes ([`apply_fixes`]), then compute the profile again.
    pub fn apply_fixes(&self, fixes: Value) -> Result<Value> {
        let r = apply_fixes(&self.state_dir, fixes);
        self.invalidate();
        if let Err(e) = self.get() {
            tracing::warn!("collecting the profile after fixes: {e:#}");
        }
        r
    }

    /// How many times the profile was computed.
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_served_from_memory_and_reflects_fixes() {
        let t = tempfile::tempdir().unwrap();
        let (root, sd) = (t.path().join("root"), t.path().join("state"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&sd).unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "ID=debian\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        let c = ProfileCache::new(&root, &sd);
        let first = c.get().unwrap();
        assert_eq!(c.get().unwrap(), first);
        assert_eq!(c.computed(), 1, "the second request is served from memory");
        let fixes = serde_json::to_value(vec![Fix::StopServicesOnProtect {
            services: vec!["nginx.service".into()],
        }])
        .unwrap();
        c.apply_fixes(fixes).unwrap();
        let after = c.get().unwrap();
        assert_eq!(c.computed(), 2, "fixes recompute the profile once");
        assert_ne!(after, first);
        assert!(
            after.to_string().contains("nginx.service"),
            "the served profile reflects the fix: {after}"
        );
    }
}
