//! The sparse mirror's early check of the carried records: as soon as the
//! target accepts a source's base ([`super::base`]), the records of the
//! last proven ledger are checked against the replica (one `lstat` each:
//! inode and change time, by name in the parent directory kept open) on a
//! thread of their own, while the source walks
//! its tree and the changes travel and apply. At `MirrorEnd` the fold of
//! the ledger ([`super::ledger::digest`]) then takes a carried record as
//! holding without its `lstat` when
//!
//! - the early check found its entry as recorded (else the path is in
//!   [`Skip::failed`] and the fold reads it again, as before);
//! - nothing this mirror listed, deleted or applied is at that path, nor
//!   directly inside it (a directory whose names the mirror changed has a
//!   new change time): such paths are [`Skip::touched`];
//! - every set of the mirror was applied and recorded by the apply ledger
//!   ([`super::applied`]: no rename and no hard link, the only records that
//!   change an inode no record names), and the last proven ledger is still
//!   the file the check read (a snapshot's carry-over replaces it).
//!
//! Anything else is folded as before (one `lstat` per record, read again
//! when it moved). A change made behind standin's back between the early
//! check and the end is not seen by this mirror: the same race as a change
//! made while the fold runs, or right after it. The record keeps the
//! inode and change time it had before, so the next mirror's check (early
//! or not) finds it and reads the entry again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::ledger::{self, Prev};
use dirs::Dirs;

mod dirs;

/// An early check running (or done) for one replica.
pub struct Precheck {
    root: PathBuf,
    /// The last proven ledger's file (device, inode) the check reads.
    prev_id: (u64, u64),
    job: Mutex<Option<std::thread::JoinHandle<Option<Checked>>>>,
    /// Paths the sparse listing named (listed or gone) and their parents.
    touched: Mutex<HashSet<Vec<u8>>>,
    /// The sparse listing ended and its ledger was written.
    sealed: std::sync::atomic::AtomicBool,
}

/// What the early check found.
struct Checked {
    failed: HashSet<Vec<u8>>,
    records: u64,
}

/// What the fold at `MirrorEnd` may take from the early check.
#[derive(Debug, Default)]
pub struct Skip {
    /// Paths whose record did not hold when checked.
    pub failed: HashSet<Vec<u8>>,
    /// Paths the mirror listed, deleted or applied, and their parents.
    pub touched: HashSet<Vec<u8>>,
    /// Trusted records the early check looked at.
    pub records: u64,
}

impl Skip {
    /// Whether the trusted record at `path` holds without an `lstat`
    /// (the caller has the merged ledger's record of a path the early
    /// check read from the last proven ledger: see the module docs).
    pub fn trusts(&self, path: &[u8]) -> bool {
        !self.failed.contains(path) && !self.touched.contains(path)
    }

    /// Mark `path` and its parent as touched by the mirror.
    pub fn touch(&mut self, path: &[u8]) {
        touch_into(&mut self.touched, path);
    }
}

fn touch_into(set: &mut HashSet<Vec<u8>>, path: &[u8]) {
    if !path.is_empty() {
        let parent = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => b"",
        };
        if !set.contains(parent) {
            set.insert(parent.to_vec());
        }
    }
    if !set.contains(path) {
        set.insert(path.to_vec());
    }
}

type Registry = Mutex<Vec<Arc<Precheck>>>;

fn registry() -> &'static Registry {
    static R: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    Some((md.dev(), md.ino()))
}

/// Set (to anything but empty or `0`) in the daemon's environment to do
/// without the early check (the end `lstat`s every record, as before):
/// for measuring it.
pub const OFF_ENV: &str = "STANDIN_NO_EARLY_CHECK";

/// Set to a file's path to hold the early check from starting while the
/// file exists (tests: a change made before the check runs).
pub const HOLD_ENV: &str = "STANDIN_TEST_PRECHECK_HOLD";

/// Start the early check of the last proven ledger of the replica at
/// `root`, whose file the sparse comparison's carry opened as `prev_id`;
/// replaces an earlier check of that replica. `None` when the ledger is
/// not that file any more.
pub fn start(root: &Path, prev_id: (u64, u64)) -> Option<Arc<Precheck>> {
    forget(root);
    if std::env::var_os(OFF_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        return None;
    }
    let prev_path = ledger::prev_path_for(root);
    let prev = Prev::open(&prev_path)?;
    if prev.file_id() != prev_id {
        return None;
    }
    let replica = Dirs::new(root)?;
    let hold = standin_builder::test_hold::file_of(HOLD_ENV);
    let job = std::thread::Builder::new()
        .name("mirror-precheck".into())
        .spawn(move || {
            if let Some(h) = hold {
                standin_builder::test_hold::wait_while_exists(Path::new(&h));
            }
            check(prev, replica)
        })
        .ok()?;
    let p = Arc::new(Precheck {
        root: root.to_path_buf(),
        prev_id,
        job: Mutex::new(Some(job)),
        touched: Mutex::new(HashSet::new()),
        sealed: std::sync::atomic::AtomicBool::new(false),
    });
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(p.clone());
    Some(p)
}

/// Drop any early check of the replica at `root` (a comparison that is
/// not sparse, or a mirror's end, no longer relies on it).
pub fn forget(root: &Path) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p.root != root);
}

impl Precheck {
    /// The sparse listing named these paths (listed entries, gone paths).
    pub fn note<'a>(&self, paths: impl Iterator<Item = &'a [u8]>) {
        let mut t = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        for p in paths {
            touch_into(&mut t, p);
        }
    }

    /// The sparse listing ended with its ledger written: the check may be
    /// used at the mirror's end.
    pub fn seal(&self) {
        self.sealed
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The early check of the replica at `root`, removed from the registry:
/// waits for it to finish. `None` when there was none, the listing did not
/// end, the check failed, or the last proven ledger was replaced since.
pub fn take(root: &Path) -> Option<Skip> {
    let p = {
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        let i = r.iter().position(|p| p.root == root)?;
        r.swap_remove(i)
    };
    let job = p.job.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let t0 = std::time::Instant::now();
    let checked = job.join().ok()??;
    tracing::debug!(
        wait_ms = t0.elapsed().as_millis() as u64,
        "mirror end: early check of the carried records joined"
    );
    if !p.sealed.load(std::sync::atomic::Ordering::Acquire)
        || file_id(&ledger::prev_path_for(root)) != Some(p.prev_id)
    {
        return None;
    }
    let touched = std::mem::take(&mut *p.touched.lock().unwrap_or_else(|e| e.into_inner()));
    Some(Skip {
        failed: checked.failed,
        touched,
        records: checked.records,
    })
}

/// Check every trusted record of `prev` against the replica (`dirs`);
/// `None` when the ledger is damaged. One thread, in the ledger's order:
/// it runs while the source walks its tree, on the CPUs that walk needs,
/// so it costs as little CPU as it can (one `lstat` by name per record in
/// its parent kept open, no record made of the canonical bytes).
fn check(mut prev: Prev, mut dirs: Dirs) -> Option<Checked> {
    let t0 = std::time::Instant::now();
    let mut out = Checked {
        failed: HashSet::new(),
        records: 0,
    };
    let mut path = Vec::new();
    loop {
        match prev.next_stamp(&mut path) {
            Ok(Some(Some(stamp))) => {
                out.records += 1;
                if dirs.stamp(&path) != Some(stamp) {
                    out.failed.insert(path.clone());
                }
            }
            Ok(Some(None)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("early check: last mirror ledger unusable: {e}");
                return None;
            }
        }
    }
    tracing::debug!(
        records = out.records,
        failed = out.failed.len(),
        ms = t0.elapsed().as_millis() as u64,
        "early check of the carried records done"
    );
    Some(out)
}

#[cfg(test)]
mod tests;
