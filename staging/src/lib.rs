//! standin-staging: the target side of replication.
//!
//! - [`durable`]: write temp → fsync → rename → fsync dir.
//! - [`state`]: `state.json`, the target's durable state.
//! - [`apply`]: applying records safely beneath the staging root ([`apply::ApplyTarget`]).
//! - [`store`]: the state directory: journal, apply in order, replay after a crash.
//! - [`heartbeat`]: heartbeat times, soft state written without fsync.
//! - [`status`]: the status a target reports.
//! - [`daemon`]: `standin target serve`.
//! - [`lock`]: the apply lock shared by apply, snapshots and failover.
//! - [`snapshot`]: snapshots of a staging area and their retention.
//! - [`failover`]: the swap into the target root, and rollback.
//! - [`seed`]: a staging area started from this machine's own system (reverse protection).
//! - [`share`]: reflink or hardlink placing and inode indexes, shared by snapshots and seeds.
//! - [`monitor`]: the failover condition and what the daemon does about it.
//! - [`profile`]: the profile the target serves (the one place to switch to
//!   standin-validate's `Profile`).

pub mod apply;
pub mod daemon;
pub mod digest_cache;
pub mod durable;
pub mod failover;
pub mod heartbeat;
pub mod lock;
pub mod mirror;
pub mod monitor;
pub mod profile;
pub mod seed;
pub mod share;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod store;
pub mod test_hook;

pub use daemon::{serve, serve_until, ServeConfig};
pub use store::Store;
