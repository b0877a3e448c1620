//! standin-agent: the source side of replication.
//!
//! - [`link`]: connecting to the target ([`link::connect`]), one-shot
//!   queries ([`link::query_status`], [`link::query_profile`]) and the
//!   [`link::Sender`] that queues change sets, sends heartbeats, reconnects
//!   with backoff and resumes from the target's last applied sequence number.
//! - [`capture`]: which paths changed ([`capture::Watcher`]: fanotify on the
//!   whole filesystem, inotify as the fallback).
//! - [`blockindex`]: what the target holds, per path and per 16 KiB block.
//! - [`replicate`]: the continuous replication loop ([`replicate::replicate`]).
//! - [`mirror`]: full and difference mirrors ([`mirror::mirror`]).
//! - [`digests`]: the source's digest cache between mirrors.
//! - [`protect`]: validate against the target, mirror, replicate ([`protect::protect`]).
//! - [`bwlimit`]: the bandwidth limit (token bucket with a daily window).

pub mod blockindex;
pub mod bwlimit;
pub mod capture;
pub mod digests;
pub mod link;
pub mod mirror;
pub mod protect;
pub mod replicate;
