//! Starting the writeback of an open mirror's files while the mirror goes on.
//!
//! The sets of a mirror that has not completed are not synced one by one:
//! the replica is synced once (`syncfs`) when the mirror ends (see
//! docs/protect.md, "Mirror sets that skip the journal"). Left alone, the
//! kernel writes none of that data before then (a full mirror of a few GiB
//! stays below the dirty thresholds and ends within the 30 s dirty expiry),
//! so the disk idles while the data arrives and the final `syncfs` writes
//! it all: 2–4 s for 1.26 GiB on the benchmark's machine.
//!
//! [`Writeback`] hands the descriptor of each file written during an open
//! mirror (a whole-file record once linked into place; a file sent in
//! pieces once its last piece is checked, which reads it back) to a
//! thread of its own, which starts its writeback without
//! waiting for it and without a journal commit (`posix_fadvise
//! (POSIX_FADV_DONTNEED)`, which first starts writeback of the range —
//! what `sync_file_range(SYNC_FILE_RANGE_WRITE)` does, for which there is
//! no safe wrapper — and then drops those of its pages that are already
//! clean: the replica's data is not read again soon) and closes it. The
//! final `syncfs` stays (the crash argument rests on it); it finds most of
//! the data written. Durability does not change: nothing waits for this
//! writeback, and nothing counts on it.
//!
//! Files go over in batches (one wake-up of the thread per batch). The
//! queue is short and never blocks the apply: when the thread lags, a
//! batch is left to the final `syncfs` (each queued file holds a
//! descriptor, and the daemon's descriptor limit may be 1024: at most
//! about 160 are held).

use std::num::NonZeroU64;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use rustix::fs::Advice;

/// Files handed to the writeback thread at once (one wake-up per batch,
/// not per file), or fewer when they hold [`BATCH_BYTES`].
const BATCH_FILES: usize = 32;
const BATCH_BYTES: u64 = 4 << 20;
/// Batches queued for the writeback thread at most.
const QUEUE: usize = 4;

/// A range of an open file whose writeback is to start.
struct Job {
    fd: OwnedFd,
    offset: u64,
    len: u64,
}

/// What the writeback thread did (for the debug log and tests).
#[derive(Debug, Default)]
pub struct Counters {
    /// Ranges whose writeback was started.
    pub started: AtomicU64,
    /// Bytes in those ranges.
    pub bytes: AtomicU64,
    /// Ranges left to the final sync because the queue was full.
    pub skipped: AtomicU64,
}

/// The writeback thread of one replica (started on first use).
#[derive(Default)]
pub struct Writeback {
    tx: Option<SyncSender<Vec<Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Files not handed over yet, and their bytes.
    batch: Vec<Job>,
    batch_bytes: u64,
    /// Shared with the thread.
    pub counters: Arc<Counters>,
}

impl Writeback {
    /// Start the writeback of `len` bytes of `fd` from `offset` (and close
    /// `fd` afterwards), on the writeback thread; dropped when it lags.
    pub fn submit(&mut self, fd: OwnedFd, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.batch.push(Job { fd, offset, len });
        self.batch_bytes += len;
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Hand the files submitted so far to the writeback thread.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_FILES));
        self.batch_bytes = 0;
        if self.tx.is_none() {
            let (tx, rx) = sync_channel::<Vec<Job>>(QUEUE);
            let counters = self.counters.clone();
            let spawned = std::thread::Builder::new()
                .name("standin-writeback".into())
                .spawn(move || {
                    for jobs in rx {
                        for job in jobs {
                            start(&job);
                            counters.started.fetch_add(1, Ordering::Relaxed);
                            counters.bytes.fetch_add(job.len, Ordering::Relaxed);
                        }
                    }
                });
            match spawned {
                Ok(t) => {
                    self.thread = Some(t);
                    self.tx = Some(tx);
                }
                Err(e) => {
                    tracing::debug!("no writeback thread ({e}); the mirror's end writes it all");
                    return;
                }
            }
        }
        let tx = self.tx.as_ref().expect("just set");
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                self.counters
                    .skipped
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.batch.clear();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start the writeback of the job's range. A range within one page starts
/// at its second byte: the writeback still covers the page, and the page
/// is then not a whole page of the range, which the kernel leaves cached
/// (no cross-CPU drain of the page lists for it).
fn start(job: &Job) {
    let page = 4096;
    let (offset, len) = if job.offset % page == 0 && job.len <= page {
        (job.offset + 1, job.len.saturating_sub(1))
    } else {
        (job.offset, job.len)
    };
    // Errors only mean the writeback starts later (at the final sync).
    let _ = rustix::fs::fadvise(&job.fd, offset, NonZeroU64::new(len), Advice::DontNeed);
}
