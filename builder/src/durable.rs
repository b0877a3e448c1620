//! Durable file updates: write a temp file beside the target (`.NAME.XXXXXX.tmp`),
//! fsync it, rename it over the target, fsync the directory. A reader never
//! sees a half-written file under the final name; a crash leaves either the
//! old or the new content, and at most a leftover `.*.tmp` file (garbage to
//! delete).
//!
//! The plain functions return [`io::Error`]s, so callers can tell a full
//! disk (`ENOSPC`, `EDQUOT`) from other failures and add their own context;
//! [`DurableFile`] and [`write_file`] return errors that name the file.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A file being written that appears under its final name only on [`commit`](Self::commit).
pub struct DurableFile {
    tmp: Option<tempfile::NamedTempFile>,
    target: PathBuf,
}

static FSYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// fsyncs made through this module in this process (files and directories),
/// so tests can count what an operation costs without timing it.
pub fn fsync_count() -> u64 {
    FSYNCS.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    static THREAD_FSYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// [`fsync_count`] of the calling thread only (for tests that run beside
/// others in one process).
pub fn thread_fsync_count() -> u64 {
    THREAD_FSYNCS.with(|c| c.get())
}

/// `sync_all`, counted in [`fsync_count`].
fn counted_sync(f: &File) -> io::Result<()> {
    FSYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    THREAD_FSYNCS.with(|c| c.set(c.get() + 1));
    f.sync_all()
}

/// A new temp file in `target`'s directory (removed when dropped
/// unpersisted): mode 0600, or `mode` less the umask.
fn temp_beside(target: &Path, mode: Option<u32>) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).suffix(".tmp");
    if let Some(m) = mode {
        b.permissions(std::fs::Permissions::from_mode(m));
    }
    b.tempfile_in(parent_dir(target))
}

impl DurableFile {
    /// Start writing `target` (a temp file in the same directory, mode 0600:
    /// archives and manifests hold a whole system's secrets).
    pub fn create(target: &Path) -> Result<Self> {
        let tmp = temp_beside(target, None)
            .with_context(|| format!("creating a temp file in {}", parent_dir(target).display()))?;
        Ok(Self {
            tmp: Some(tmp),
            target: target.to_path_buf(),
        })
    }

    /// The open temp file.
    pub fn file(&mut self) -> &mut File {
        self.tmp
            .as_mut()
            .expect("durable file already committed")
            .as_file_mut()
    }

    /// fsync, rename into place, fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("durable file already committed");
        counted_sync(tmp.as_file())
            .with_context(|| format!("syncing {}", self.target.display()))?;
        tmp.persist(&self.target)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming into place {}", self.target.display()))?;
        let dir = parent_dir(&self.target);
        sync_dir(&dir).with_context(|| format!("syncing directory {}", dir.display()))
    }
}

impl DurableFile {
    /// Rename into place without any fsync ([`replace_unflushed`]): for
    /// caches whose reader verifies the whole file (length, count,
    /// checksum) before using any of it, where a crash may leave the old
    /// file, the new one, none, or a torn one that is refused. Saves a data
    /// flush on the way out.
    pub fn commit_unsynced(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("durable file already committed");
        let path = tmp.into_temp_path();
        replace_unflushed(&path, &self.target)
            .with_context(|| format!("renaming into place {}", self.target.display()))?;
        // Renamed away: nothing is left to remove under the temp name.
        let _ = path.keep();
        Ok(())
    }
}

/// Rename `from` over `to`, removing `to` first: ext4 starts writing a
/// file renamed over another at once (`auto_da_alloc`), a data write (and,
/// for the next `fsync` on that filesystem, a wait) that a file meant to
/// stay unsynced does not need. Nothing is synced. A crash between the two
/// leaves no file at `to`; a missing `from` fails and leaves `to` as it was.
pub fn replace_unflushed(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::symlink_metadata(from)?;
    match std::fs::remove_file(to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::rename(from, to)
}

impl io::Write for DurableFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

/// Write a whole small file durably.
pub fn write_file(target: &Path, content: &[u8]) -> Result<()> {
    let mut f = DurableFile::create(target)?;
    f.write_all(content)
        .with_context(|| format!("writing {}", target.display()))?;
    f.commit()
}

/// Replace `path` with `data` durably (a new file's mode is 0666 less the
/// umask, as `File::create`); the bare I/O error on failure (the temp file
/// is removed again).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = temp_beside(path, Some(0o666))?;
    tmp.write_all(data)?;
    counted_sync(tmp.as_file())?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(&parent_dir(path))
}

/// fsync a directory (makes renames, creations and removals in it durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    counted_sync(&File::open(dir)?)
}

/// Remove a file durably (missing is fine).
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(&parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Create a directory and its parents, fsyncing each parent that gained an entry.
pub fn create_dirs(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dirs(parent)?;
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let parent = parent_dir(dir);
    sync_dir(&parent).with_context(|| format!("syncing {}", parent.display()))
}

/// The directory holding `p` (`.` for a bare file name).
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_replace_remove() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/state.json");
        super::create_dirs(p.parent().unwrap()).unwrap();
        super::write_atomic(&p, b"1").unwrap();
        super::write_atomic(&p, b"22").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"22");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
        assert_ne!(
            mode, 0o600,
            "{mode:o}: 0666 less the umask, as File::create"
        );
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        super::write_file(&p, b"333").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"333");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        super::remove(&p).unwrap();
        super::remove(&p).unwrap();
        assert!(!p.exists());
    }

    /// A cache's unsynced commit puts the file in place with no fsync and
    /// no temp file left; the durable commit syncs the file and directory.
    #[test]
    fn an_unsynced_commit_renames_without_fsync() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.bin");
        let mut f = super::DurableFile::create(&p).unwrap();
        f.write_all(b"cache").unwrap();
        let before = super::thread_fsync_count();
        f.commit_unsynced().unwrap();
        assert_eq!(super::thread_fsync_count(), before, "no fsync");
        assert_eq!(std::fs::read(&p).unwrap(), b"cache");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let mut f = super::DurableFile::create(&p).unwrap();
        f.write_all(b"cache2").unwrap();
        f.commit().unwrap();
        assert_eq!(
            super::thread_fsync_count(),
            before + 2,
            "file and directory"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"cache2");
    }

    /// The replacement: the new file under the old name (a different
    /// inode: the old one was removed, not renamed over), with or without
    /// one there before; a missing source fails and keeps the old.
    #[test]
    fn replace_unflushed_removes_then_renames() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("new"), d.path().join("ledger"));
        std::fs::write(&a, b"new").unwrap();
        super::replace_unflushed(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        std::fs::write(&a, b"newer").unwrap();
        let ino = std::fs::metadata(&a).unwrap().ino();
        super::replace_unflushed(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"newer");
        assert_eq!(std::fs::metadata(&b).unwrap().ino(), ino);
        assert!(!a.exists());
        assert!(super::replace_unflushed(&a, &b).is_err());
        assert_eq!(std::fs::read(&b).unwrap(), b"newer");
    }

    #[test]
    fn failed_writes_leave_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("no/such/dir/f");
        let e = super::write_atomic(&missing, b"x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        let e = super::write_file(&missing, b"x").unwrap_err();
        assert!(format!("{e:#}").contains("no/such/dir"), "{e:#}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
