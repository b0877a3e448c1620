//! The change set's snapshot copy-outs in batches (see
//! [`crate::snapshot::cow::Guard::before_modify_all`]).

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::FileType;
use standin_builder::changeset::Record;
use standin_builder::entry::Kind;

use super::fsops::{lstat, proc_path};
use super::{ApplyError, DirTarget};

/// Inodes copied out per batch (each keeps its directory open until then).
const BATCH: usize = 256;

impl DirTarget {
    /// Copy out, in batches, the shared inodes that `records` change in
    /// place as the replica is now (what a record changes after an earlier
    /// record moved it is left to [`DirTarget::guard`]; copying out an
    /// inode that then does not change only costs the snapshot its space).
    pub(super) fn prepare_cow(&mut self, records: &[Record]) -> Result<(), ApplyError> {
        match self.cow.as_mut().map(|g| g.shares_nothing()) {
            None | Some(Ok(true)) => return Ok(()),
            Some(Ok(false)) => {}
            Some(Err(e)) => return Err(cow_err(e)),
        }
        // The directories stay open while their /proc paths are used.
        let mut dirs: Vec<OwnedFd> = Vec::new();
        let mut inodes: Vec<(u64, PathBuf)> = Vec::new();
        let mut seen = HashSet::new();
        for r in records {
            let path = match r {
                Record::SetMetadata(e) if e.kind == Kind::File => &e.path,
                Record::WriteExtent { path, .. } | Record::Truncate { path, .. } => path,
                _ => continue,
            };
            // A path that is not there yet, or refused, is left to `apply`.
            let Ok((dir, name)) = self.parent(path, false) else {
                continue;
            };
            let Ok(Some(st)) = lstat(&dir, name) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
                || st.st_nlink < 2
                || !seen.insert(st.st_ino)
            {
                continue;
            }
            inodes.push((st.st_ino, proc_path(&dir, name)));
            dirs.push(dir);
            if inodes.len() == BATCH {
                self.copy_out(&mut inodes)?;
                dirs.clear();
            }
        }
        self.copy_out(&mut inodes)
    }

    fn copy_out(&mut self, inodes: &mut Vec<(u64, PathBuf)>) -> Result<(), ApplyError> {
        if inodes.is_empty() {
            return Ok(());
        }
        let g = self.cow.as_mut().expect("checked by prepare_cow");
        g.before_modify_all(inodes).map_err(cow_err)?;
        inodes.clear();
        Ok(())
    }
}

fn cow_err(e: anyhow::Error) -> ApplyError {
    ApplyError::Io(format!("copying changed files out to snapshots: {e:#}"))
}
