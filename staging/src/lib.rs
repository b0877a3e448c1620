//! standin-staging: the target side of replication.
//!
//! - [`durable`]: write temp → fsync → rename → fsync dir.
//! - [`state`]: `state.json`, the target's durable state.
//! - [`apply`]: applying records safely beneath the staging root ([`apply::ApplyTarget`]).
//! - [`store`]: the state directory: journal, apply in order, replay after a crash.
//! - [`status`]: the status a target reports.
//! - [`daemon`]: `standin target serve`.
//! - [`profile`]: the profile the target serves (the one place to switch to
//!   standin-validate's `Profile`).

pub mod apply;
pub mod daemon;
pub mod durable;
pub mod profile;
pub mod state;
pub mod status;
pub mod store;

pub use daemon::{serve, ServeConfig};
pub use store::Store;
