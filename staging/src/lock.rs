//! The apply lock: `STATE/apply.lock`, held (flock, exclusive) by the apply
//! of each whole change set, by a snapshot while it is taken, and by a
//! failover or rollback while it runs. A snapshot therefore always sees the
//! replica as of one sequence number, and nothing is applied to a staging
//! area that is being swapped.

use std::path::Path;

use anyhow::{Context, Result};

/// File name of the lock in the state directory.
pub const LOCK_FILE: &str = "apply.lock";

/// A held apply lock; released when dropped.
#[derive(Debug)]
pub struct ApplyLock {
    _file: std::fs::File,
}

/// Open (creating it, never truncating) a lock file.
fn open_lock_file(p: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))
}

/// Take the apply lock of `state_dir`, waiting for the holder.
pub fn lock(state_dir: &Path) -> Result<ApplyLock> {
    let p = state_dir.join(LOCK_FILE);
    let file = open_lock_file(&p)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", p.display()))?;
    Ok(ApplyLock { _file: file })
}

/// Take the apply lock for applying a change set: refused while a failover
/// is in progress or complete (the staged system is in the target root).
pub fn for_apply(state_dir: &Path) -> Result<ApplyLock> {
    let l = lock(state_dir)?;
    if let Some(r) = crate::failover::load_record(state_dir)? {
        if r.state != crate::failover::RecordState::RolledBack {
            anyhow::bail!(
                "the staged system was swapped into {} (failover {}, {:?}); nothing is applied until `standin failover --rollback`",
                r.target_root.display(),
                r.id,
                r.state
            );
        }
    }
    Ok(l)
}

/// File name of the daemon's lock in the state directory.
pub const DAEMON_LOCK_FILE: &str = "daemon.lock";

/// Held (flock, exclusive) by `standin target serve` for as long as it runs;
/// released when dropped or when the process dies, even by kill -9. Readers
/// of the replica (failover, snapshot take) use it to tell a journaled change
/// set the daemon is about to apply from one left by a crash.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

/// How long [`daemon`] retries a held lock before it says a daemon runs.
const DAEMON_LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Take the daemon lock of `state_dir`: refused while a `standin target
/// serve` uses this state directory. A lock still held is tried again for
/// up to [`DAEMON_LOCK_GRACE`]: right after a daemon was killed and
/// reaped, its lock was seen still held for 5–12 ms (while the profile
/// commands it had started, lsblk and blkid, were still starting; the
/// holder is not proven), and a test that restarted at once was refused.
pub fn daemon(state_dir: &Path) -> Result<DaemonLock> {
    let p = state_dir.join(DAEMON_LOCK_FILE);
    let file = open_lock_file(&p)?;
    let start = std::time::Instant::now();
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let waited = start.elapsed();
                if waited.as_millis() > 0 {
                    tracing::info!(
                        ms = waited.as_millis() as u64,
                        "the daemon lock was held a moment after the last daemon stopped"
                    );
                }
                return Ok(DaemonLock { _file: file });
            }
            Err(rustix::io::Errno::WOULDBLOCK) if start.elapsed() < DAEMON_LOCK_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => anyhow::bail!(
                "a `standin target serve` is running with the state directory {}; stop it first",
                state_dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("locking {}", p.display())),
        }
    }
}

/// Whether a `standin target serve` holds the daemon lock of `state_dir` now.
pub fn daemon_running(state_dir: &Path) -> Result<bool> {
    let p = state_dir.join(DAEMON_LOCK_FILE);
    if !p.exists() {
        return Ok(false);
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(e).with_context(|| format!("locking {}", p.display())),
    }
}
