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

    /// The (device, inode) of the last proven ledger carried, if any.
    pub fn prev_id(&self) -> Option<(u64, u64)> {
        self.prev.as_ref().map(|p| p.file_id())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::tests::{entries, sh};
    use crate::mirror::{check_and_keep, replica_digest, DiffSession};
    use standin_link::message::MirrorEntries;

    fn batch(n: u64, entries: Vec<Entry>, gone: &[&str]) -> MirrorEntries {
        MirrorEntries {
            batch: n,
            entries,
            block_size: 4096,
            gone: gone.iter().map(|g| g.as_bytes().to_vec()).collect(),
        }
    }

    fn fold(rep: &Path) -> String {
        match ledger::digest(rep, &ledger::path_for(rep))
            .unwrap()
            .unwrap()
        {
            ledger::Outcome::Digest { digest, .. } => digest,
            ledger::Outcome::Unsure(why) => format!("unsure: {why}"),
        }
    }

    #[test]
    fn unlisted_entries_are_carried_gone_ones_dropped_and_tampering_still_caught() {
        let t = tempfile::tempdir().unwrap();
        let (src, rep) = (t.path().join("src"), t.path().join("rep"));
        let (s, r) = (src.display(), rep.display());
        sh(&format!(
            "mkdir -p {s}/d {s}/gone/deep {s}/e && for i in 1 2 3 4 5 6; do echo $i > {s}/d/f$i; done && \
             echo g > {s}/gone/deep/g && echo x > {s}/e/x && cp -a {s} {r}"
        ));
        // A complete mirror proved the replica: its ledger is kept.
        let want = replica_digest(&src).unwrap();
        let mut full = DiffSession::new(&rep).unwrap();
        full.diff(&batch(1, entries(&src), &[])).unwrap();
        full.diff(&batch(2, vec![], &[])).unwrap();
        assert_eq!(check_and_keep(&rep, &want).unwrap(), want);

        // The source changes; the mirror brings the replica along.
        sh(&format!(
            "echo changed > {s}/d/f2 && echo new > {s}/d/new && rm -r {s}/gone && \
             cp -a {s}/d/f2 {s}/d/new {r}/d/ && rm -r {r}/gone && touch -r {s}/d {r}/d && touch -r {s} {r}"
        ));
        let want = replica_digest(&src).unwrap();
        let all = entries(&src);
        let listed: Vec<Entry> = all
            .iter()
            .filter(|e| ["", "d", "d/f2", "d/new"].contains(&&*String::from_utf8_lossy(&e.path)))
            .cloned()
            .collect();
        assert_eq!(listed.len(), 4);
        let mut sp = DiffSession::new_sparse(&rep).unwrap();
        assert!(sp.is_sparse());
        let d = sp.diff(&batch(1, listed[..2].to_vec(), &[])).unwrap();
        assert!(d.items.is_empty(), "{:?}", d.items);
        sp.diff(&batch(2, listed[2..].to_vec(), &[])).unwrap();
        let end = sp.diff(&batch(3, vec![], &["gone"])).unwrap();
        let extra: Vec<_> = end
            .items
            .iter()
            .map(|i| (i.path.clone(), i.state.clone()))
            .collect();
        assert_eq!(extra, [(b"gone".to_vec(), "extra".to_string())]);
        assert_eq!(
            sp.sparse.as_ref().unwrap().carried,
            all.len() as u64 - 4,
            "every unlisted entry carried, the gone subtree dropped"
        );
        assert_eq!(
            fold(&rep),
            want,
            "the carried ledger gives the replica's digest"
        );
        assert_eq!(check_and_keep(&rep, &want).unwrap(), want);

        // Tampering with an entry nobody listed: the fold sees it.
        let mut sp = DiffSession::new_sparse(&rep).unwrap();
        sp.diff(&batch(1, vec![], &[])).unwrap();
        sh(&format!(
            "printf '9\\n' > {r}/d/f5 && touch -r {s}/d/f5 {r}/d/f5"
        ));
        assert_ne!(fold(&rep), want, "a tampered unlisted file is caught");
        // Gone paths only in a sparse session, and in tree order.
        let mut plain = DiffSession::new(&rep).unwrap();
        assert!(plain.diff(&batch(1, vec![], &["d"])).is_err());
        let mut sp = DiffSession::new_sparse(&rep).unwrap();
        assert!(sp
            .diff(&batch(1, listed[..1].to_vec(), &["e", "d"]))
            .is_err());
    }
}
