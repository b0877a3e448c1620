//! standin-validate: machine profiles, compatibility rules, findings and
//! fixes.
//!
//! - [`collect()`] builds a [`Profile`] from a [`Facts`] source ([`LiveFacts`]
//!   for this machine, [`MapFacts`] for fixed facts);
//! - [`Profile::load`] reads a profile file (schema `standin.profile/1`);
//! - [`validate()`] compares a source and a target and returns a [`Report`];
//! - [`apply_fixes`] / [`undo_fixes`] apply the automatic [`Fix`]es of a
//!   report to a target state directory, with an undo journal.

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
