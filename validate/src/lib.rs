//! standin-validate: machine profiles, compatibility rules, findings and
//! fixes.
//!
//! - [`collect()`] builds a [`Profile`] from a [`Facts`] source ([`LiveFacts`]
//!   for this machine, [`MapFacts`] for fixed facts);
//! - [`Profile::load`] reads a profile file (schema `standin.profile/1`);
//! - [`validate()`] compares a source and a target and returns a [`Report`];
//! - [`apply_fixes`] / [`undo_fixes`] apply the automatic [`Fix`]es of a
//!   report to a target state directory, with an undo journal.
//!
//! ```
//! use standin_validate::{collect, validate, CollectOptions, MapFacts, Options, Severity};
//!
//! let mut facts = MapFacts::new();
//! facts
//!     .file("/etc/os-release", "ID=debian\nVERSION_ID=12\n")
//!     .file("/etc/hostname", "web1\n");
//! let opts = CollectOptions { standin_version: "0.1.0".into(), ..Default::default() };
//! let source = collect(&facts, &opts);
//! facts.file("/etc/hostname", "standby\n");
//! let target = collect(&facts, &opts);
//! let report = validate(&source, &target, &Options::default());
//! assert_eq!(report.get("os.match").unwrap().severity, Severity::Ok);
//! assert_eq!(report.get("hostname").unwrap().severity, Severity::Ok);
//! // No NIC, volume or boot loader facts were given: those rules complain.
//! assert!(report.has_errors());
//! ```

#![warn(missing_docs)]

pub mod collect;
pub mod facts;
pub mod fixes;
pub mod profile;
pub mod report;
pub mod rules;
pub mod side;
pub mod state;
pub mod text;
pub mod workflow;

pub use collect::{collect, CollectOptions};
pub use facts::{Facts, LiveFacts, MapFacts};
pub use fixes::{apply_fixes, plan_fixes, undo_fixes, AppliedFixes, Change, Fix, UndoneFixes};
pub use profile::{BootMode, Nic, Os, Profile, Staging, Volume, SCHEMA};
pub use report::{Finding, FixInfo, Report, Severity};
pub use rules::{validate, Options};
pub use side::Side;
pub use workflow::{Outcome, Request};
