//! Automatic fixes as data, applied to a target state directory with an
//! undo journal. The target daemon can receive the same [`Fix`] values over
//! the network and call [`apply_fixes`] there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::state::{remove_durable, write_durable, TargetConfig, CONFIG_FILE};

/// File name of the undo journal inside a state directory.
pub const JOURNAL_FILE: &str = "fixes-undo.json";

/// One automatic fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Fix {
    /// Put the staging area at `path` (on the target root's filesystem).
    SetStagingPath {
        /// The staging path on the target.
        path: PathBuf,
    },
    /// Stop and disable these target services when protection starts.
    StopServicesOnProtect {
        /// systemd unit names.
        services: Vec<String>,
    },
}

impl Fix {
    /// What the fix does, in words.
    pub fn describe(&self) -> String {
        match self {
            Fix::SetStagingPath { path } => {
                format!(
                    "use staging path {} on the target's root filesystem",
                    path.display()
                )
            }
            Fix::StopServicesOnProtect { services } => format!(
                "stop and disable {} when protection starts",
                services.join(", ")
            ),
        }
    }
}

/// One change an applied fix made (or found already made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The fix.
    pub fix: Fix,
    /// Whether anything changed (false: it was already in place).
    pub changed: bool,
    /// What was (or would be) done, naming the file.
    pub summary: String,
}

/// The result of [`apply_fixes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFixes {
    /// One entry per fix, in order.
    pub changes: Vec<Change>,
}

/// The result of [`undo_fixes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoneFixes {
    /// Files restored or removed, in the order it was done.
    pub restored: Vec<String>,
}

/// What a file held before the first fix touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JournalEntry {
    /// File name inside the state directory.
    file: String,
    /// Hex of its previous bytes; `None`: it did not exist.
    previous: Option<String>,
    /// Its previous permission bits.
    mode: Option<u32>,
    /// Hex of what the last fix wrote: undo refuses to overwrite a file
    /// that changed since, so no later change is lost silently.
    #[serde(default)]
    written: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    entries: Vec<JournalEntry>,
}

fn read_journal(state_dir: &Path) -> Result<Journal> {
    let p = state_dir.join(JOURNAL_FILE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "reading undo journal {}: damaged; restore it by hand",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Compute the changes `fixes` would make, without writing anything.
pub fn plan_fixes(state_dir: &Path, fixes: &[Fix]) -> Result<AppliedFixes> {
    Ok(compute(state_dir, fixes)?.0)
}

fn compute(state_dir: &Path, fixes: &[Fix]) -> Result<(AppliedFixes, TargetConfig)> {
    let mut cfg = TargetConfig::load(state_dir)?;
    let file = TargetConfig::path(state_dir);
    let mut out = AppliedFixes::default();
    for fix in fixes {
        let (changed, summary) = match fix {
            Fix::SetStagingPath { path } => {
                if cfg.staging_path.as_ref() == Some(path) {
                    (
                        false,
                        format!(
                            "staging_path is already {} in {}",
                            path.display(),
                            file.display()
                        ),
                    )
                } else {
                    let was = cfg
                        .staging_path
                        .replace(path.clone())
                        .map_or_else(|| "unset".to_string(), |p| p.display().to_string());
                    (
                        true,
                        format!(
                            "set staging_path to {} in {} (was {was})",
                            path.display(),
                            file.display()
                        ),
                    )
                }
            }
            Fix::StopServicesOnProtect { services } => {
                let new: Vec<&String> = services
                    .iter()
                    .filter(|s| !cfg.services_to_stop.contains(s))
                    .collect();
                if new.is_empty() {
                    (
                        false,
                        format!(
                            "services_to_stop already lists {} in {}",
                            services.join(", "),
                            file.display()
                        ),
                    )
                } else {
                    let names: Vec<String> = new.iter().map(|s| s.to_string()).collect();
                    cfg.services_to_stop.extend(names.iter().cloned());
                    cfg.services_to_stop.sort();
                    (
                        true,
                        format!(
                            "added {} to services_to_stop in {}",
                            names.join(", "),
                            file.display()
                        ),
                    )
                }
            }
        };
        out.changes.push(Change {
            fix: fix.clone(),
            changed,
            summary,
        });
    }
    Ok((out, cfg))
}

/// Apply `fixes` to the target state directory `state_dir`: durable writes,
/// an undo journal recording what each touched file held before the first
/// fix, and idempotence (a fix already in place changes nothing).
pub fn apply_fixes(state_dir: &Path, fixes: &[Fix]) -> Result<AppliedFixes> {
    use std::os::unix::fs::PermissionsExt;
    if !state_dir.is_dir() {
        bail!(
            "target state directory {} does not exist; create it (mkdir -p) or pass the one `standin target serve` uses",
            state_dir.display()
        );
    }
    let (applied, cfg) = compute(state_dir, fixes)?;
    if !applied.changes.iter().any(|c| c.changed) {
        return Ok(applied);
    }
    let file = TargetConfig::path(state_dir);
    let mut journal = read_journal(state_dir)?;
    if !journal.entries.iter().any(|e| e.file == CONFIG_FILE) {
        let (previous, mode) = match std::fs::read(&file) {
            Ok(b) => {
                let mode = std::fs::metadata(&file)?.permissions().mode() & 0o7777;
                (Some(hex::encode(b)), Some(mode))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        journal.entries.push(JournalEntry {
            file: CONFIG_FILE.into(),
            previous,
            mode,
            written: None,
        });
    }
    let new_bytes = cfg.to_bytes();
    for e in journal.entries.iter_mut().filter(|e| e.file == CONFIG_FILE) {
        e.written = Some(hex::encode(&new_bytes));
    }
    // The journal goes first: a crash between the two writes leaves a
    // journal that still undoes correctly.
    let jbytes = serde_json::to_vec_pretty(&journal).expect("journal serializes");
    write_durable(&state_dir.join(JOURNAL_FILE), &jbytes, Some(0o600))
        .context("recording the undo journal")?;
    let mode = std::fs::metadata(&file)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    write_durable(&file, &new_bytes, mode)?;
    for c in applied.changes.iter().filter(|c| c.changed) {
        tracing::debug!("fix applied: {}", c.summary);
    }
    Ok(applied)
}

/// Undo every fix applied since the journal was started: each touched file
/// gets back its exact previous bytes and mode (or is removed if it did not
/// exist), then the journal is removed.
pub fn undo_fixes(state_dir: &Path) -> Result<UndoneFixes> {
    let jpath = state_dir.join(JOURNAL_FILE);
    if !jpath.exists() {
        bail!("no fixes to undo: {} does not exist", jpath.display());
    }
    let journal = read_journal(state_dir)?;
    // Check everything before changing anything.
    for e in &journal.entries {
        if e.file.contains('/') || e.file.starts_with('.') {
            bail!(
                "undo journal {} names a file outside the state directory: {}",
                jpath.display(),
                e.file
            );
        }
        let p = state_dir.join(&e.file);
        let now = match std::fs::read(&p) {
            Ok(b) => Some(hex::encode(b)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).with_context(|| format!("reading {}", p.display())),
        };
        if e.written.is_some() && now != e.written {
            bail!(
                "{} changed after the fixes were applied; undoing would lose that change. \
                 Its content before the fixes is saved (hex) in {}: restore it by hand, then remove that file",
                p.display(),
                jpath.display()
            );
        }
    }
    let mut out = UndoneFixes::default();
    for e in journal.entries.iter().rev() {
        let p = state_dir.join(&e.file);
        match &e.previous {
            Some(h) => {
                let bytes = hex::decode(h)
                    .with_context(|| format!("decoding the saved copy of {}", e.file))?;
                write_durable(&p, &bytes, e.mode)?;
                out.restored.push(format!("restored {}", p.display()));
            }
            None => {
                if p.exists() {
                    remove_durable(&p)?;
                }
                out.restored.push(format!("removed {}", p.display()));
            }
        }
    }
    remove_durable(&jpath)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixes() -> Vec<Fix> {
        vec![
            Fix::SetStagingPath {
                path: "/var/lib/standin/staging".into(),
            },
            Fix::StopServicesOnProtect {
                services: vec!["b.service".into(), "a.service".into()],
            },
        ]
    }

    #[test]
    fn apply_is_idempotent_and_undo_restores() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join(CONFIG_FILE);
        std::fs::write(&cfg, b"{\"x\": 1}").unwrap();
        let plan = plan_fixes(d.path(), &fixes()).unwrap();
        assert!(plan.changes.iter().all(|c| c.changed));
        assert_eq!(
            std::fs::read(&cfg).unwrap(),
            b"{\"x\": 1}",
            "planning writes nothing"
        );
        let a = apply_fixes(d.path(), &fixes()).unwrap();
        assert!(a.changes.iter().all(|c| c.changed), "{a:?}");
        let c = TargetConfig::load(d.path()).unwrap();
        assert_eq!(c.services_to_stop, ["a.service", "b.service"]);
        assert_eq!(c.other.get("x"), Some(&serde_json::json!(1)));
        let after = std::fs::read(&cfg).unwrap();
        let again = apply_fixes(d.path(), &fixes()).unwrap();
        assert!(again.changes.iter().all(|c| !c.changed), "{again:?}");
        assert_eq!(std::fs::read(&cfg).unwrap(), after);
        // A later different fix keeps the first journal entry (the original).
        apply_fixes(d.path(), &[Fix::SetStagingPath { path: "/s2".into() }]).unwrap();
        let u = undo_fixes(d.path()).unwrap();
        assert_eq!(u.restored.len(), 1);
        assert_eq!(std::fs::read(&cfg).unwrap(), b"{\"x\": 1}");
        assert!(!d.path().join(JOURNAL_FILE).exists());
        assert!(undo_fixes(d.path()).is_err());
    }

    #[test]
    fn undo_refuses_to_lose_a_later_change() {
        let d = tempfile::tempdir().unwrap();
        apply_fixes(d.path(), &fixes()).unwrap();
        let cfg = d.path().join(CONFIG_FILE);
        std::fs::write(&cfg, b"{\"changed\": true}").unwrap();
        let e = format!("{:#}", undo_fixes(d.path()).unwrap_err());
        assert!(e.contains("changed after the fixes were applied"), "{e}");
        assert_eq!(
            std::fs::read(&cfg).unwrap(),
            b"{\"changed\": true}",
            "nothing lost"
        );
    }

    #[test]
    fn bad_config_is_an_error_and_untouched() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join(CONFIG_FILE);
        std::fs::write(&cfg, b"not json").unwrap();
        let e = format!("{:#}", apply_fixes(d.path(), &fixes()).unwrap_err());
        assert!(
            e.contains("target-config.json") && e.contains("fix or remove it"),
            "{e}"
        );
        assert_eq!(std::fs::read(&cfg).unwrap(), b"not json");
        assert!(apply_fixes(&d.path().join("missing"), &fixes()).is_err());
    }

    #[test]
    fn fixes_are_data() {
        let j = serde_json::to_string(&fixes()).unwrap();
        assert!(j.contains(r#""action":"set-staging-path""#), "{j}");
        assert!(j.contains(r#""action":"stop-services-on-protect""#), "{j}");
        let back: Vec<Fix> = serde_json::from_str(&j).unwrap();
        assert_eq!(back, fixes());
    }
}
