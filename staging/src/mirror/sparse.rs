//! A sparse mirror's comparison (the source's [`MirrorBase`] accepted):
//! the source lists only entries that changed since the base mirror, and
//! the paths gone since (`MirrorEntries::gone`). Nothing is read to find
//! extra paths: they are the gone ones. The entries not listed are the
//! base's: their records in the last proven ledger are carried into the
//! new ledger in tree order (records at and beneath a gone path, or
//! beneath a listed entry that is not a directory, are dropped), so the
//! fold at `MirrorEnd` checks each of them with one `lstat` and reads
//! again what moved: the replica is still verified as a whole.
//!
//! [`MirrorBase`]: standin_link::message::MirrorBase

use std::path::Path;

use anyhow::{bail, Result};
use standin_builder::entry::{path_cmp, Entry, Kind};

use super::ledger;

fn beneath(dir: &[u8], path: &[u8]) -> bool {
    if dir.is_empty() {
        return !path.is_empty();
    }
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

/// The base's records, carried along the sparse listing.
pub struct Carry {
    prev: Option<ledger::Prev>,
    /// Gone paths so far, in tree order.
    gone: Vec<Vec<u8>>,
    /// The first gone path not yet passed by the carried records.
    cursor: usize,
    /// The last listed entry that is not a directory.
    replaced: Option<Vec<u8>>,
    /// Records carried into the new ledger.
    pub carried: u64,
}

impl Carry {
    /// Carry the last proven ledger of the replica at `root`.
    pub fn open(root: &Path) -> Carry {
        Carry {
            prev: ledger::Prev::open(&ledger::prev_path_for(root)),
            gone: Vec::new(),
            cursor: 0,
            replaced: None,
            carried: 0,
        }
    }

    /// A batch's gone paths (they must continue the tree order).
    pub fn add_gone(&mut self, gone: &[Vec<u8>]) -> Result<()> {
        for g in gone {
            if let Some(last) = self.gone.last() {
                if path_cmp(last, g) != std::cmp::Ordering::Less {
                    bail!(
                        "mirror gone path refused: {} is not after {} in tree order",
                        standin_builder::entry::display_path(g),
                        standin_builder::entry::display_path(last)
                    );
                }
            }
            self.gone.push(g.clone());
        }
        Ok(())
    }

    /// The listing reached `e`: carry the records before it into `w`.
    pub fn listed(&mut self, w: &mut ledger::Writer, e: &Entry) -> Result<()> {
        self.carry_to(w, Some(&e.path))?;
        if e.kind != Kind::Dir {
            self.replaced = Some(e.path.clone());
        }
        Ok(())
    }

    /// The listing ended: carry the rest.
    pub fn finish(&mut self, w: &mut ledger::Writer) -> Result<()> {
        self.carry_to(w, None)
    }

    /// Every gone path (the answer's extra paths).
    pub fn take_gone(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.gone)
    }

    fn carry_to(&mut self, w: &mut ledger::Writer, upto: Option<&[u8]>) -> Result<()> {
        let Some(prev) = self.prev.as_mut() else {
            return Ok(());
        };
        let (gone, cursor, replaced, carried) = (
            &self.gone,
            &mut self.cursor,
            &self.replaced,
            &mut self.carried,
        );
        prev.carry(upto, &mut |p, rec| {
            while *cursor < gone.len()
                && path_cmp(&gone[*cursor], p) == std::cmp::Ordering::Less
                && !beneath(&gone[*cursor], p)
            {
                *cursor += 1;
            }
            let at_gone = gone
                .get(*cursor)
                .is_some_and(|g| g.as_slice() == p || beneath(g, p));
            if at_gone || replaced.as_deref().is_some_and(|r| beneath(r, p)) {
                return Ok(());
            }
            *carried += 1;
            match rec {
                Some(r) => w.trusted_record(p, r),
                None => w.recheck(p),
            }
        })
    }
}
