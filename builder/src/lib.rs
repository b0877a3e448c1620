//! standin-builder: everything that turns a system tree into data and back.
//!
//! - [`entry`]: one file's metadata as recorded in a manifest (the shared type).
//! - [`progress`]: the small progress trait that libraries report through and
//!   the binary draws.
//! - [`changeset`]: change sets, the numbered records replication sends.
//! - [`bytes`]: the reversible text encoding of raw path bytes used in JSON.
//! - [`scan`]: walk a root and yield entries with full metadata, streaming.
//! - [`manifest`]: per-file sha256 and the root digest; streaming manifest files.
//! - [`archive`]: PAX tar + zstd image archives (build, read).
//! - [`tree`]: [`tree::TreeWriter`], the safe writer of trees (restore, change sets).
//! - [`restore`], [`verify`]: the `image restore` and `image verify` operations.
//! - [`disk`]: bootable GPT disk images of trees; [`recipe`]: TOML recipes
//!   that describe a tree and its boot; [`boot`]: booting a disk in qemu.

pub mod archive;
pub mod boot;
pub mod bytes;
pub mod changeset;
pub mod compare;
pub mod count;
pub mod demo;
pub mod digest_stream;
pub mod digest_table;
pub mod disk;
pub mod durable;
pub mod entry;
pub mod hash;
pub mod manifest;
mod manifest_read;
pub mod progress;
pub mod recipe;
pub mod record_stream;
pub mod restore;
pub mod scan;
mod scan_cached;
pub mod test_hold;
pub mod tree;
pub mod verify;
pub mod wire;

pub use entry::{Entry, Kind};
pub use progress::{NoProgress, Progress};
