//! standin-agent: the source side of replication.
//!
//! - [`link`]: connecting to the target ([`link::connect`]), one-shot
//!   queries ([`link::query_status`], [`link::query_profile`]) and the
//!   [`link::Sender`] that queues change sets, sends heartbeats, reconnects
//!   with backoff and resumes from the target's last applied sequence number.
//! - [`mirror`]: full and difference mirrors ([`mirror::mirror`]).
//! - [`capture`], [`blockindex`], [`replicate`]: change capture and
//!   continuous replication after the mirror.
//! - [`protect`]: validate against the target, mirror, replicate ([`protect::protect`]).
//! - [`bwlimit`]: the bandwidth limit (token bucket with a daily window).

pub mod blockindex;
pub mod bwlimit;
pub mod capture;
pub mod link;
pub mod mirror;
pub mod protect;
pub mod replicate;
