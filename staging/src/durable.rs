//! Durable file updates: write a temp file, fsync it, rename it over the
//! target, fsync the directory. A crash leaves either the old or the new
//! content, never a mix; a leftover `.*.tmp` file is garbage to delete.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

static FSYNCS: AtomicU64 = AtomicU64::new(0);

/// fsyncs made through this module in this process (files and directories),
/// so tests can count what an operation costs without timing it.
pub fn fsync_count() -> u64 {
    FSYNCS.load(Ordering::Relaxed)
}

fn counted(f: &std::fs::File) -> std::io::Result<()> {
    FSYNCS.fetch_add(1, Ordering::Relaxed);
    f.sync_all()
}

/// Replace `path` with `data` durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    let r = f.write_all(data).and_then(|_| counted(&f));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsync a directory (makes renames, creations and removals in it durable).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    counted(&std::fs::File::open(dir)?)
}

/// Remove a file durably (missing is fine).
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
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
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))
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
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        super::remove(&p).unwrap();
        super::remove(&p).unwrap();
        assert!(!p.exists());
    }
}
