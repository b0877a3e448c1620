//! Whole small files of a mirror, read ahead on their own thread.
//!
//! Every regular file the mirror creates that is not a hard link, not
//! sparse and at most [`FILE_RECORD_MAX`] bytes travels as one
//! [`Record::File`] (metadata, content and its content digest, BLAKE3). A reader thread
//! opens, reads and hashes those files in tree order while the mirror loop
//! cuts change sets and the sender compresses and sends them, so reading,
//! hashing and sending overlap. The bytes read ahead and not yet handed
//! to the change-set writer are bounded by [`READ_AHEAD`], so the agent's
//! memory stays flat however large the tree is.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{Mode, OFlags};

use standin_builder::changeset::Record;
use standin_builder::entry::{Entry, Kind};
use tokio::sync::mpsc;

mod pool;
pub use pool::Pool;

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

/// Files (or bytes) the reader hands over at once: one wake-up of the
/// mirror loop per batch, not per file.
const BATCH_FILES: usize = 32;
const BATCH_BYTES: u64 = 512 << 10;

/// Bytes read ahead, and the two sides' states.
struct Budget {
    used: Mutex<Used>,
    freed: Condvar,
}

#[derive(Default)]
struct Used {
    bytes: u64,
    /// The consumer is gone: the reader stops.
    stop: bool,
    /// The reader waits for room (the consumer wakes it).
    waiting: bool,
}

type Batch = Vec<(ReadResult, u64)>;

/// The reader thread: its input (files to read, in order) and its output
/// (their records, in the same order).
pub struct ReadAhead {
    input: Option<std::sync::mpsc::Sender<Entry>>,
    rx: mpsc::UnboundedReceiver<Batch>,
    ready: std::collections::VecDeque<ReadResult>,
    budget: Arc<Budget>,
}

impl ReadAhead {
    /// Start the reader thread for the tree at `root`; give it files with
    /// [`ReadAhead::push`]. It reads into buffers from `pool` (the
    /// consumer gives them back).
    pub fn start(root: PathBuf, pool: Arc<Pool>) -> ReadAhead {
        let (input, files) = std::sync::mpsc::channel::<Entry>();
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Budget {
            used: Mutex::new(Used::default()),
            freed: Condvar::new(),
        });
        let b = budget.clone();
        std::thread::Builder::new()
            .name("mirror-read".into())
            .spawn(move || read_loop(Dirs::new(root), files, tx, &b, &pool))
            .expect("spawning the mirror reader thread");
        ReadAhead {
            input: Some(input),
            rx,
            ready: Default::default(),
            budget,
        }
    }

    /// Queue one file (its entry, path relative to the root) to be read
    /// after the others.
    pub fn push(&mut self, e: Entry) {
        if let Some(i) = &self.input {
            // A stopped reader shows up in `next`.
            let _ = i.send(e);
        }
    }

    /// The next file's record (in the order given to [`ReadAhead::push`]).
    pub async fn next(&mut self) -> Option<ReadResult> {
        if self.ready.is_empty() {
            let batch = self.rx.recv().await?;
            let bytes: u64 = batch.iter().map(|(_, w)| w).sum();
            self.ready.extend(batch.into_iter().map(|(r, _)| r));
            let mut used = self.budget.used.lock().unwrap_or_else(|x| x.into_inner());
            used.bytes = used.bytes.saturating_sub(bytes);
            if used.waiting {
                self.budget.freed.notify_all();
            }
        }
        self.ready.pop_front()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.input = None;
        // Wake the reader so that it stops instead of waiting for room.
        let mut used = self.budget.used.lock().unwrap_or_else(|x| x.into_inner());
        used.stop = true;
        self.budget.freed.notify_all();
    }
}

/// The reader thread: read files in order, hand them over in batches,
/// never more than [`READ_AHEAD`] bytes ahead of the consumer.
fn read_loop(
    mut dirs: Dirs,
    files: std::sync::mpsc::Receiver<Entry>,
    tx: mpsc::UnboundedSender<Batch>,
    b: &Budget,
    pool: &Pool,
) {
    let mut batch: Batch = Vec::new();
    let mut batch_bytes = 0u64;
    // Hand the batch over; false when the consumer is gone.
    let flush = |batch: &mut Batch, bytes: &mut u64| -> bool {
        *bytes = 0;
        batch.is_empty() || tx.send(std::mem::take(batch)).is_ok()
    };
    loop {
        let next = match files.try_recv() {
            Ok(f) => Some(f),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                // Nothing more to read for now: hand over what was read.
                if !flush(&mut batch, &mut batch_bytes) {
                    return;
                }
                files.recv().ok()
            }
        };
        let Some(e) = next else {
            flush(&mut batch, &mut batch_bytes);
            return;
        };
        let want = e.size.min(READ_AHEAD);
        let mut used = b.used.lock().unwrap_or_else(|x| x.into_inner());
        if used.bytes > 0 && used.bytes + want > READ_AHEAD && !batch.is_empty() {
            // Room comes only from what the consumer has: hand it over.
            drop(used);
            if !flush(&mut batch, &mut batch_bytes) {
                return;
            }
            used = b.used.lock().unwrap_or_else(|x| x.into_inner());
        }
        while !used.stop && used.bytes > 0 && used.bytes + want > READ_AHEAD {
            used.waiting = true;
            used = b.freed.wait(used).unwrap_or_else(|x| x.into_inner());
        }
        used.waiting = false;
        if used.stop {
            return;
        }
        used.bytes += want;
        drop(used);
        let read = dirs.open(&e.path).and_then(|f| read_file(f, e, pool));
        batch.push((read, want));
        batch_bytes += want;
        if (batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES)
            && !flush(&mut batch, &mut batch_bytes)
        {
            return;
        }
    }
}

/// Opens files of the tree relative to their directory, kept open while
/// the files come from it (tree order): one path lookup per directory
/// instead of one per file.
struct Dirs {
    root: PathBuf,
    /// The last directory (path relative to the root) and its descriptor.
    last: Option<(Vec<u8>, OwnedFd)>,
}

impl Dirs {
    fn new(root: PathBuf) -> Dirs {
        Dirs { root, last: None }
    }

    /// Open `rel` for reading (symlinks followed as by [`File::open`] on
    /// the root joined with `rel`).
    fn open(&mut self, rel: &[u8]) -> std::io::Result<File> {
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        if self.last.as_ref().is_none_or(|(p, _)| p != parent) {
            self.last = None;
            let dir = if parent.is_empty() {
                self.root.clone()
            } else {
                self.root.join(OsStr::from_bytes(parent))
            };
            let fd = rustix::fs::open(
                &dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            self.last = Some((parent.to_vec(), fd));
        }
        let (_, dir) = self.last.as_ref().expect("opened above");
        let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }
}

/// Read `f` from where it is to its end into `data` (empty), or until
/// more than `max` bytes are in. `size` is the file's size as the scan saw
/// it: a read that returns less than asked once exactly that much is in is
/// the end of a regular file, so an unchanged file takes one `read` into a
/// buffer of `size + 1` bytes, not a second one that returns 0 (one
/// syscall in ~7 of the agent's full mirror). Any other short read reads on.
fn read_whole(f: &File, data: &mut Vec<u8>, size: u64, max: u64) -> std::io::Result<()> {
    loop {
        if data.len() == data.capacity() {
            if data.len() as u64 > max {
                return Ok(());
            }
            data.reserve(data.len().clamp(8 << 10, 1 << 20));
        }
        let room = data.capacity() - data.len();
        match rustix::io::read(f, rustix::buffer::spare_capacity(data)) {
            Ok(0) => return Ok(()),
            Ok(n) if n < room && data.len() as u64 == size => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_file(f: File, mut e: Entry, pool: &Pool) -> ReadResult {
    let mut data = pool.take(e.size.min(FILE_RECORD_MAX) as usize + 1);
    if let Err(err) = read_whole(&f, &mut data, e.size, FILE_RECORD_MAX) {
        pool.give(data);
        return Err(err);
    }
    if data.len() as u64 > FILE_RECORD_MAX {
        pool.give(data);
        return Ok(None);
    }
    // The file may have changed since the scan: send what was read (change
    // capture sends the change itself).
    e.size = data.len() as u64;
    e.sha256 = None;
    let content_digest = standin_builder::hash::content_digest(&data);
    Ok(Some(Record::File {
        entry: e,
        data,
        content_digest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use standin_builder::entry::Kind;

    fn entry(path: &str, size: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size,
            xattrs: Default::default(),
            target: None,
            link: None,
            rdev: None,
            sparse: None,
            sha256: None,
        }
    }

    fn open(p: &std::path::Path) -> File {
        File::open(p).unwrap()
    }

    fn data_of(r: ReadResult) -> Vec<u8> {
        match r.unwrap() {
            Some(Record::File {
                data,
                content_digest,
                entry,
            }) => {
                assert_eq!(content_digest, standin_builder::hash::content_digest(&data));
                assert_eq!(entry.size, data.len() as u64);
                data
            }
            other => panic!("not a file record: {other:?}"),
        }
    }

    #[test]
    fn a_file_is_read_whole_whatever_its_size_became_since_the_scan() {
        let d = tempfile::tempdir().unwrap();
        let pool = Pool::default();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(d.path().join("f"), &body).unwrap();
        // The scan saw it smaller (it grew), larger (it shrank), the same.
        for seen in [10, 99_999, 100_000, 100_001, 5 << 20] {
            let got = data_of(read_file(
                open(&d.path().join("f")),
                entry("f", seen),
                &pool,
            ));
            assert_eq!(got, body, "scan size {seen}");
            pool.give(got);
        }
        // Grown past the record limit since the scan: no record.
        let big = d.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(FILE_RECORD_MAX + 10)
            .unwrap();
        assert!(read_file(open(&big), entry("big", 100), &pool)
            .unwrap()
            .is_none());
    }

    #[test]
    fn short_reads_before_the_scans_size_is_in_do_not_end_the_read() {
        // A pipe returns what was written so far: short reads that are not
        // the end. Three pieces with pauses, then the writer closes.
        let (r, w) = rustix::pipe::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let w = File::from(w);
            for piece in [&b"first "[..], b"second ", b"third"] {
                std::io::Write::write_all(&mut &w, piece).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
        });
        let f = File::from(r);
        let mut data = Vec::with_capacity(64);
        read_whole(&f, &mut data, 18, FILE_RECORD_MAX).unwrap();
        writer.join().unwrap();
        assert_eq!(data, b"first second third");
    }

    #[test]
    fn a_reused_buffer_holds_only_its_own_files_bytes() {
        let d = tempfile::tempdir().unwrap();
        let pool = Pool::default();
        let big = vec![0xaau8; 300 << 10];
        std::fs::write(d.path().join("big"), &big).unwrap();
        let small: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("small"), &small).unwrap();
        std::fs::write(d.path().join("empty"), b"").unwrap();

        let a = data_of(read_file(
            open(&d.path().join("big")),
            entry("big", 300 << 10),
            &pool,
        ));
        assert_eq!(a, big);
        let cap = a.capacity();
        pool.give(a);
        // The 300 KiB buffer fits the 200 000-byte file: it is reused, and
        // holds that file's bytes only.
        let b = data_of(read_file(
            open(&d.path().join("small")),
            entry("small", 200_000),
            &pool,
        ));
        assert_eq!(b.capacity(), cap, "the pooled buffer was reused");
        assert_eq!(b, small);
        pool.give(b);
        // A file that shrank since the scan (entry says 250 000 bytes).
        std::fs::write(d.path().join("small"), &small[..1000]).unwrap();
        let c = data_of(read_file(
            open(&d.path().join("small")),
            entry("small", 250_000),
            &pool,
        ));
        assert_eq!(c, &small[..1000]);
        pool.give(c);
        let e = data_of(read_file(
            open(&d.path().join("empty")),
            entry("empty", 0),
            &pool,
        ));
        assert!(e.is_empty());
    }

    #[test]
    fn read_ahead_returns_every_file_in_order_within_the_budget() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pool = Arc::new(Pool::default());
        let mut ra = ReadAhead::start(d.path().to_path_buf(), pool.clone());
        // More files and bytes than one batch and than the read-ahead, in
        // the root and in directories (one left and entered again).
        let n = 300usize;
        for dir in ["a", "a/b", "c"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        let rel = |i: usize| match i % 7 {
            0..=2 => format!("f{i}"),
            3 | 4 => format!("a/b/f{i}"),
            5 => format!("a/f{i}"),
            _ => format!("c/f{i}"),
        };
        for i in 0..n {
            let size = if i % 50 == 0 { 1 << 20 } else { 100 + i * 37 };
            std::fs::write(d.path().join(rel(i)), vec![(i % 256) as u8; size]).unwrap();
            ra.push(entry(&rel(i), size as u64));
        }
        rt.block_on(async {
            for i in 0..n {
                let data = data_of(ra.next().await.unwrap());
                assert_eq!(
                    data.len(),
                    std::fs::metadata(d.path().join(rel(i))).unwrap().len() as usize
                );
                let size = if i % 50 == 0 { 1 << 20 } else { 100 + i * 37 };
                assert_eq!(data.len(), size, "file {i}");
                assert!(data.iter().all(|&b| b == (i % 256) as u8), "file {i}");
                let used = ra.budget.used.lock().unwrap().bytes;
                assert!(used <= READ_AHEAD, "read ahead {used} bytes");
                pool.give(data);
            }
        });
    }
}
