//! Durable file updates (write temp → fsync → rename → fsync dir): builder's
//! [`standin_builder::durable`], whose plain functions return bare I/O
//! errors so the journal can tell a full disk (`ENOSPC`) from other failures.

pub use standin_builder::durable::{create_dirs, fsync_count, remove, sync_dir, write_atomic};
