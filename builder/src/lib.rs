//! standin-builder: everything that turns a system tree into data and back.
//!
//! - [`entry`]: one file's metadata as recorded in a manifest (the shared type).
//! - [`progress`]: the small progress trait that libraries report through and
//!   the binary draws.
//! - [`bytes`]: the reversible text encoding of raw path bytes used in JSON.
//! - [`disk`]: bootable GPT disk images of trees; [`recipe`]: TOML recipes
//!   that describe a tree and its boot; [`boot`]: booting a disk in qemu.

pub mod boot;
pub mod bytes;
pub mod disk;
pub mod entry;
pub mod progress;
pub mod recipe;

pub use entry::{Entry, Kind};
pub use progress::{NoProgress, Progress};
