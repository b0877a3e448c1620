//! Whole small files of a mirror, read ahead on their own thread.
//!
//! Every regular file the mirror creates that is not a hard link, not
//! sparse and at most [`FILE_RECORD_MAX`] bytes travels as one
//! [`Record::File`] (metadata, content and its sha256). A reader thread
//! opens, reads and hashes those files in tree order while the mirror loop
//! cuts change sets and the sender compresses and sends them, so reading,
//! hashing and sending overlap. The bytes read ahead and not yet handed
//! to the change-set writer are bounded by [`READ_AHEAD`], so the agent's
//! memory stays flat however large the tree is.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest, Sha256};
use standin_builder::changeset::Record;
use standin_builder::entry::{Entry, Kind};
use tokio::sync::mpsc;

/// Largest file sent as one [`Record::File`]; larger ones travel in
/// extents (below the 16 MiB frame limit with room for other records).
pub const FILE_RECORD_MAX: u64 = 8 << 20;
/// Most file bytes read ahead of the change-set writer.
pub const READ_AHEAD: u64 = 8 << 20;

/// Whether `e` (to be created) travels as one [`Record::File`].
pub fn whole_file(e: &Entry) -> bool {
    e.kind == Kind::File && e.link.is_none() && e.sparse.is_none() && e.size <= FILE_RECORD_MAX
}

/// A file read ahead: its record, or `None` when it grew past
/// [`FILE_RECORD_MAX`] since the scan (then it travels in extents).
pub type ReadResult = std::io::Result<Option<Record>>;

/// Bytes read ahead (and whether the consumer is gone).
struct Budget {
    used: Mutex<(u64, bool)>,
    freed: Condvar,
}

/// The reader thread: its input (files to read, in order) and its output
/// (their records, in the same order).
pub struct ReadAhead {
    input: Option<std::sync::mpsc::Sender<(PathBuf, Entry)>>,
    rx: mpsc::UnboundedReceiver<(ReadResult, u64)>,
    budget: Arc<Budget>,
}

impl ReadAhead {
    /// Start the reader thread; give it files with [`ReadAhead::push`].
    pub fn start() -> ReadAhead {
        let (input, files) = std::sync::mpsc::channel::<(PathBuf, Entry)>();
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Budget {
            used: Mutex::new((0, false)),
            freed: Condvar::new(),
        });
        let b = budget.clone();
        std::thread::Builder::new()
            .name("mirror-read".into())
            .spawn(move || {
                for (abs, e) in files {
                    let want = e.size.min(READ_AHEAD);
                    {
                        let mut used = b.used.lock().unwrap_or_else(|x| x.into_inner());
                        while !used.1 && used.0 > 0 && used.0 + want > READ_AHEAD {
                            used = b.freed.wait(used).unwrap_or_else(|x| x.into_inner());
                        }
                        if used.1 {
                            return;
                        }
                        used.0 += want;
                    }
                    if tx.send((read_file(&abs, e), want)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the mirror reader thread");
        ReadAhead {
            input: Some(input),
            rx,
            budget,
        }
    }

    /// Queue one file (absolute path, entry) to be read after the others.
    pub fn push(&mut self, abs: PathBuf, e: Entry) {
        if let Some(i) = &self.input {
            // A stopped reader shows up in `next`.
            let _ = i.send((abs, e));
        }
    }

    /// The next file's record (in the order given to [`ReadAhead::start`]).
    pub async fn next(&mut self) -> Option<ReadResult> {
        let (r, want) = self.rx.recv().await?;
        let mut used = self.budget.used.lock().unwrap_or_else(|x| x.into_inner());
        used.0 = used.0.saturating_sub(want);
        self.budget.freed.notify_all();
        Some(r)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.input = None;
        // Wake the reader so that it stops instead of waiting for room.
        let mut used = self.budget.used.lock().unwrap_or_else(|x| x.into_inner());
        used.1 = true;
        self.budget.freed.notify_all();
    }
}

fn read_file(abs: &std::path::Path, mut e: Entry) -> ReadResult {
    let f = File::open(abs)?;
    let mut data = Vec::with_capacity(e.size as usize);
    f.take(FILE_RECORD_MAX + 1).read_to_end(&mut data)?;
    if data.len() as u64 > FILE_RECORD_MAX {
        return Ok(None);
    }
    // The file may have changed since the scan: send what was read (change
    // capture sends the change itself).
    e.size = data.len() as u64;
    e.sha256 = None;
    let content_sha256 = Sha256::digest(&data).into();
    Ok(Some(Record::File {
        entry: e,
        data,
        content_sha256,
    }))
}
