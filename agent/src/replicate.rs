//! Continuous replication: take batches of changed paths from the
//! [`Watcher`], diff them against the [`BlockIndex`], cut change sets and
//! queue them on the link's [`Sender`].
//!
//! The diff runs on its own thread (it reads files); the async side only
//! hands its change sets to the Sender. A change set is cut per batch (a
//! batch with more than `max_set_bytes` of data is cut into several sets;
//! each file's last set carries its content digest). When the Sender's
//! queue is full, the set is not queued: the paths it named are marked
//! unknown in the index, and once the link has drained a difference sweep
//! (the whole tree against the index) sends what the target lacks. A
//! periodic checksum sweep does the same to repair anything the capture
//! missed, and counts the repairs.

mod diff;
mod exclude;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use standin_builder::changeset::Record;
use standin_builder::scan::ScanOptions;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::blockindex::BlockIndex;
use crate::capture::Watcher;
use crate::link::{SendError, Sender, SenderStats};

pub use exclude::Excluder;

/// How to replicate.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// Excludes (as for the mirror's scan).
    pub scan: ScanOptions,
    /// Quiet time after the last event before a batch is cut.
    pub debounce: Duration,
    /// Longest a batch waits for quiet while events keep coming.
    pub max_delay: Duration,
    /// File data per change set before it is cut (below the frame limit).
    pub max_set_bytes: u64,
    /// Interval of the checksum sweep (`None`: never).
    pub sweep_interval: Option<Duration>,
    /// Live counters (shared with status reporting).
    pub counters: Arc<ReplicateCounters>,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        Self {
            scan: ScanOptions::default(),
            debounce: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            max_set_bytes: 8 << 20,
            sweep_interval: Some(Duration::from_secs(3600)),
            counters: Arc::default(),
        }
    }
}

/// Live counters of a replication loop.
#[derive(Debug, Default)]
pub struct ReplicateCounters {
    pub batches: AtomicU64,
    pub paths_changed: AtomicU64,
    pub sets_sent: AtomicU64,
    pub records_sent: AtomicU64,
    /// File data bytes in the records queued (before framing/compression).
    pub data_bytes_sent: AtomicU64,
    /// Queue-full fallbacks (each followed by a difference sweep).
    pub queue_full: AtomicU64,
    /// Difference sweeps after lost events or a full queue.
    pub rescans: AtomicU64,
    /// Periodic checksum sweeps run.
    pub sweeps: AtomicU64,
    /// Paths the sweeps found different from what the target holds.
    pub sweep_repairs: AtomicU64,
    /// When the last sweep ended (ms since the epoch; 0 = never).
    pub last_sweep_unix_ms: AtomicI64,
    /// Paths the last sweep repaired.
    pub last_sweep_repairs: AtomicU64,
    /// The first paths the last sweep of any kind repaired.
    pub sweep_paths: std::sync::Mutex<Vec<Vec<u8>>>,
    /// The first paths the last periodic sweep repaired.
    pub last_sweep_paths: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// How many repaired paths of one sweep status shows.
pub const REPAIRED_PATHS_KEPT: usize = 20;

/// What a replication loop did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicateReport {
    pub batches: u64,
    pub paths_changed: u64,
    pub sets_sent: u64,
    pub records_sent: u64,
    pub data_bytes_sent: u64,
    pub queue_full: u64,
    pub rescans: u64,
    pub sweeps: u64,
    pub sweep_repairs: u64,
    pub last_sweep_unix_ms: Option<i64>,
    pub last_sweep_repairs: u64,
}

impl ReplicateCounters {
    /// A snapshot.
    pub fn report(&self) -> ReplicateReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReplicateReport {
            batches: g(&self.batches),
            paths_changed: g(&self.paths_changed),
            sets_sent: g(&self.sets_sent),
            records_sent: g(&self.records_sent),
            data_bytes_sent: g(&self.data_bytes_sent),
            queue_full: g(&self.queue_full),
            rescans: g(&self.rescans),
            sweeps: g(&self.sweeps),
            sweep_repairs: g(&self.sweep_repairs),
            last_sweep_unix_ms: Some(self.last_sweep_unix_ms.load(Ordering::Relaxed))
                .filter(|&t| t > 0),
            last_sweep_repairs: g(&self.last_sweep_repairs),
        }
    }

    /// A periodic sweep ended having repaired `n` paths (the first of them
    /// in `last_sweep_paths`).
    pub fn record_sweep(&self, n: u64) {
        self.sweep_repairs.fetch_add(n, Ordering::Relaxed);
        self.last_sweep_repairs.store(n, Ordering::Relaxed);
        let paths =
            std::mem::take(&mut *self.sweep_paths.lock().unwrap_or_else(|e| e.into_inner()));
        *self
            .last_sweep_paths
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = paths;
        self.last_sweep_unix_ms
            .store(crate::link::now_ms(), Ordering::Relaxed);
    }

    /// The counters a heartbeat carries.
    pub fn heartbeat_counters(&self) -> standin_link::message::ReplicationCounters {
        let r = self.report();
        standin_link::message::ReplicationCounters {
            sweeps: r.sweeps,
            sweep_repairs: r.sweep_repairs,
            last_sweep_unix_ms: r.last_sweep_unix_ms,
            last_sweep_repairs: r.last_sweep_repairs,
            queue_full: r.queue_full,
            rescans: r.rescans,
            last_sweep_paths: if r.last_sweep_repairs > 0 {
                self.last_sweep_paths
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|p| format!("/{}", String::from_utf8_lossy(p)))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Requests of the diff thread to the async side.
enum Req {
    /// Queue a change set: `Some(seq)`, or `None` when the queue is full.
    Send(Vec<Record>, oneshot::Sender<Result<Option<u64>>>),
    /// Wait until the Sender's queue is empty (or stop).
    WaitDrain(oneshot::Sender<()>),
    Stats(oneshot::Sender<SenderStats>),
}

/// Replicate `root` until `stop` completes. `watcher` must have been
/// started before the mirror; `index` describes what the target holds
/// (see [`crate::blockindex`]). Returns the counters.
pub async fn replicate(
    root: &Path,
    opts: ReplicateOptions,
    watcher: Watcher,
    index: BlockIndex,
    sender: &Sender,
    stop: impl Future<Output = ()>,
) -> Result<ReplicateReport> {
    let root: PathBuf =
        std::fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
    let counters = opts.counters.clone();
    // Heartbeats carry the counters to the target's status.
    sender.attach_counters(counters.clone());
    let (tx, mut rx) = mpsc::channel::<Req>(1);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let flag = stop_flag.clone();
    let worker = std::thread::Builder::new()
        .name("standin-replicate".into())
        .spawn(move || diff::run(root, opts, watcher, index, tx, flag))
        .context("starting the replication thread")?;
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = &mut stop, if !stopping => {
                stopping = true;
                stop_flag.store(true, Ordering::Relaxed);
            }
            r = rx.recv() => match r {
                None => break,
                Some(Req::Send(records, reply)) => {
                    let res = match sender.send(records) {
                        Ok(seq) => Ok(Some(seq)),
                        Err(SendError::QueueFull { .. }) => Ok(None),
                        Err(SendError::Other(e)) => Err(e),
                    };
                    let _ = reply.send(res);
                }
                Some(Req::Stats(reply)) => {
                    let _ = reply.send(sender.stats());
                }
                Some(Req::WaitDrain(reply)) => {
                    while !stopping && sender.stats().queue_sets > 0 {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = &mut stop => {
                                stopping = true;
                                stop_flag.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    let _ = reply.send(());
                }
            }
        }
    }
    let res = tokio::task::spawn_blocking(move || worker.join())
        .await
        .context("joining the replication thread")?;
    match res {
        Ok(r) => r.map(|()| counters.report()),
        Err(_) => anyhow::bail!("the replication thread panicked"),
    }
}

/// The queue was full: the set was not queued.
#[derive(Debug, thiserror::Error)]
#[error("the link's queue is full")]
pub(crate) struct QueueFull;

/// Collects records into change sets and hands them to the async side.
pub(crate) struct Cutter {
    tx: mpsc::Sender<Req>,
    counters: Arc<ReplicateCounters>,
    records: Vec<Record>,
    bytes: u64,
    max: u64,
    /// The records of a set the queue refused.
    pub failed: Option<Vec<Record>>,
}

impl Cutter {
    pub(crate) fn push(&mut self, r: Record) -> Result<()> {
        tracing::trace!(record = r.name(), paths = ?r.paths().iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(), "record");
        self.bytes += r.data_len() + 64;
        self.records.push(r);
        if self.bytes >= self.max {
            self.flush()?;
        }
        Ok(())
    }

    /// Queue what is collected as one change set.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.records);
        self.bytes = 0;
        let n = records.len() as u64;
        let data: u64 = records.iter().map(Record::data_len).sum();
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Req::Send(records.clone(), tx))
            .map_err(|_| anyhow::anyhow!("the replication loop stopped"))?;
        match rx
            .blocking_recv()
            .context("the replication loop stopped")??
        {
            Some(_) => {
                let c = &self.counters;
                c.sets_sent.fetch_add(1, Ordering::Relaxed);
                c.records_sent.fetch_add(n, Ordering::Relaxed);
                c.data_bytes_sent.fetch_add(data, Ordering::Relaxed);
                Ok(())
            }
            None => {
                self.failed = Some(records);
                Err(QueueFull.into())
            }
        }
    }

    /// Drop what is collected (after a failure).
    pub(crate) fn discard(&mut self) -> Vec<Record> {
        self.bytes = 0;
        std::mem::take(&mut self.records)
    }

    fn wait_drain(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Req::WaitDrain(tx))
            .map_err(|_| anyhow::anyhow!("the replication loop stopped"))?;
        rx.blocking_recv().context("the replication loop stopped")
    }

    fn sender_stats(&self) -> Result<SenderStats> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Req::Stats(tx))
            .map_err(|_| anyhow::anyhow!("the replication loop stopped"))?;
        rx.blocking_recv().context("the replication loop stopped")
    }
}

fn log_rescan(why: &str) {
    warn!("{why}; comparing the whole tree with what the target holds");
}

fn log_repairs(n: u64) {
    if n > 0 {
        warn!("checksum sweep repaired {n} paths that change capture missed");
    } else {
        info!("checksum sweep: the target matches");
    }
}
