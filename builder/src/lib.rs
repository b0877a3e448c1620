//! standin-builder: everything that turns a system tree into data and back.
//!
//! - [`entry`]: one file's metadata as recorded in a manifest (the shared type).
//! - [`progress`]: the small progress trait that libraries report through and
//!   the binary draws.
//! - [`changeset`]: change sets, the numbered records replication sends.
//! - [`bytes`]: the reversible text encoding of raw path bytes used in JSON.

pub mod bytes;
pub mod changeset;
pub mod entry;
pub mod progress;

pub use entry::{Entry, Kind};
pub use progress::{NoProgress, Progress};
