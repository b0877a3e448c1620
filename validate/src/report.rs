//! Findings, the report, and how they are shown (table or JSON).

use serde::{Deserialize, Serialize};

use crate::fixes::Fix;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fine (possibly with a note).
    Ok,
    /// Works, but the user should know.
    Warning,
    /// The target cannot stand in for the source until this is fixed.
    Error,
}

impl Severity {
    /// `ok`, `warning` or `error`.
    pub fn word(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// How a finding is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixInfo {
    /// Whether `--fix-all` applies it.
    pub auto: bool,
    /// What to do (or what `--fix-all` does).
    pub description: String,
}

/// One validation result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable rule id (`os.match`, `volume./home.fs`, `capacity.staging`).
    pub id: String,
    /// error, warning or ok.
    pub severity: Severity,
    /// One line naming both sides' values.
    pub message: String,
    /// More explanation.
    pub details: String,
    /// How to remove it.
    pub fix: FixInfo,
    /// The automatic fix as data (listed under `fixes` in JSON).
    #[serde(skip)]
    pub action: Option<Fix>,
}

impl Finding {
    /// A finding with a manual (or no) fix.
    pub fn new(id: impl Into<String>, severity: Severity, message: impl Into<String>) -> Finding {
        Finding {
            id: id.into(),
            severity,
            message: message.into(),
            details: String::new(),
            fix: FixInfo {
                auto: false,
                description: String::new(),
            },
            action: None,
        }
    }
    /// Set the details.
    pub fn details(mut self, d: impl Into<String>) -> Finding {
        self.details = d.into();
        self
    }
    /// Set a manual fix.
    pub fn manual(mut self, d: impl Into<String>) -> Finding {
        self.fix = FixInfo {
            auto: false,
            description: d.into(),
        };
        self
    }
    /// Set an automatic fix.
    pub fn auto(mut self, fix: Fix) -> Finding {
        self.fix = FixInfo {
            auto: true,
            description: fix.describe(),
        };
        self.action = Some(fix);
        self
    }
}

/// All findings of one validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The findings, in rule order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
    /// Number of findings of a severity.
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
    /// The finding with this id.
    pub fn get(&self, id: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.id == id)
    }
    /// The automatic fixes of every error or warning.
    pub fn auto_fixes(&self) -> Vec<Fix> {
        self.findings
            .iter()
            .filter(|f| f.severity != Severity::Ok)
            .filter_map(|f| f.action.clone())
            .collect()
    }
    /// The JSON form: `{"findings": [...], "fixes": [...]}`.
    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::json!({
            "findings": self.findings,
            "fixes": self.auto_fixes(),
            "errors": self.count(Severity::Error),
            "warnings": self.count(Severity::Warning),
        })
    }

    /// A table of the findings; `color` adds marks (✔ ! ✖) and ANSI colour,
    /// otherwise severities are plain words.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        let idw = self
            .findings
            .iter()
            .map(|f| f.id.chars().count())
            .max()
            .unwrap_or(2)
            .max(4);
        let sevw = if color { 9 } else { 7 };
        out.push_str(&format!(
            "{:<sevw$}  {:<idw$}  {}\n",
            "result", "rule", "finding"
        ));
        for f in &self.findings {
            let mark = if color {
                match f.severity {
                    Severity::Ok => "\x1b[32m✔ ok     \x1b[0m",
                    Severity::Warning => "\x1b[33m! warning\x1b[0m",
                    Severity::Error => "\x1b[31m✖ error  \x1b[0m",
                }
                .to_string()
            } else {
                format!("{:<7}", f.severity.word())
            };
            out.push_str(&format!("{mark}  {:<idw$}  {}\n", f.id, f.message));
            let pad = " ".repeat(sevw + 2 + idw + 2);
            if !f.details.is_empty() {
                out.push_str(&format!("{pad}{}\n", f.details));
            }
            if f.severity != Severity::Ok && !f.fix.description.is_empty() {
                let kind = if f.fix.auto { "fix (auto)" } else { "fix" };
                out.push_str(&format!("{pad}{kind}: {}\n", f.fix.description));
            }
        }
        out.push_str(&format!(
            "{} error(s), {} warning(s), {} ok\n",
            self.count(Severity::Error),
            self.count(Severity::Warning),
            self.count(Severity::Ok)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_marks_and_colour() {
        let r = Report {
            findings: vec![
                Finding::new("a.ok", Severity::Ok, "fine"),
                Finding::new("b.warn", Severity::Warning, "hmm").manual("do this"),
                Finding::new("c.err", Severity::Error, "bad")
                    .details("why")
                    .auto(Fix::SetStagingPath { path: "/s".into() }),
            ],
        };
        let c = r.render(true);
        assert!(
            c.contains("\x1b[32m✔") && c.contains("\x1b[33m!") && c.contains("\x1b[31m✖"),
            "{c}"
        );
        let p = r.render(false);
        assert!(!p.contains('\x1b') && !p.contains('✖'), "{p}");
        assert!(p.contains("error    c.err   bad\n"), "{p}");
        assert!(p.contains("fix (auto): use staging path /s"), "{p}");
        assert!(p.contains("fix: do this"), "{p}");
        assert!(p.ends_with("1 error(s), 1 warning(s), 1 ok\n"), "{p}");
        assert!(r.has_errors());
        assert_eq!(
            r.auto_fixes(),
            vec![Fix::SetStagingPath { path: "/s".into() }]
        );
    }
}
