//! Durable file writing: write to a temp file beside the target, fsync it,
//! rename it into place, fsync the directory. A reader never sees a
//! half-written file under the final name.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A file being written that appears under its final name only on [`commit`](Self::commit).
pub struct DurableFile {
    tmp: Option<tempfile::NamedTempFile>,
    target: PathBuf,
}

impl DurableFile {
    /// Start writing `target` (a temp file in the same directory).
    pub fn create(target: &Path) -> Result<Self> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
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
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", self.target.display()))?;
        tmp.persist(&self.target)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming into place {}", self.target.display()))?;
        sync_dir(&parent_dir(&self.target))
    }
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
    use std::io::Write;
    let mut f = DurableFile::create(target)?;
    f.write_all(content)
        .with_context(|| format!("writing {}", target.display()))?;
    f.commit()
}

/// fsync a directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
