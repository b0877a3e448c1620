//! The apply ledger: the records of what the target itself applied during
//! an open mirror ([`crate::apply::applied`]), merged into the
//! comparison's [ledger] at the mirror's end, so that the root digest
//! check folds records instead of walking the replica.
//!
//! A full mirror onto an empty replica compares nothing (the source's
//! probe lists the root alone), so the comparison's ledger holds only the
//! root and the check used to walk every entry (`statx`, xattrs, digests
//! from the cache: 0.7–1.4 s for 104k entries). Yet the target made every
//! entry itself and read each one back. While a mirror is open, each set
//! applied in order appends those records to `mirror-applied.bin` (a
//! ledger file in tree order). The records come in tree order except that
//! a directory's metadata comes again when the source's walk leaves it
//! (and a file's after its content came in pieces): such a late record
//! replaces the earlier one of its path and is kept in memory (one per
//! directory). At `MirrorEnd`, [`merge`] merges the file, with the late
//! records in place, into the comparison's ledger (an applied record
//! replaces the comparison's: it is newer), and the result replaces that
//! ledger.
//!
//! The fold then checks every trusted record as before (inode and change
//! time unchanged, else the entry is read again), counts the entries of
//! the root, of directories that existed before the mirror made them and
//! of those the comparison counted, and a result other than the source's
//! digest is recomputed by the full walk. The records are used only when
//! every set of the mirror was applied and recorded by this daemon
//! process, in order, with no refused record and no rename or link
//! record; otherwise the comparison's ledger is used alone, as before.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use standin_builder::entry::path_cmp;

use super::ledger::{self, Prev, Record, Source, Writer};
use crate::apply::applied::Applied;

/// The apply ledger of the replica whose root is `staging_root`.
pub fn path_for(staging_root: &Path) -> PathBuf {
    staging_root.with_file_name("mirror-applied.bin")
}

/// The records of one open mirror's sets, as they are applied.
pub struct Log {
    mirror_id: String,
    path: PathBuf,
    /// The sequence number of the set to record next.
    next_seq: u64,
    writer: Option<Writer>,
    /// Why the records are not used (`None` while they are).
    why_not: Option<String>,
    records: u64,
    /// The greatest path written so far, and the records of paths that
    /// came again or out of tree order (kept here, not written).
    last: Option<Vec<u8>>,
    late: HashMap<Vec<u8>, Option<Record>>,
}

/// A finished apply ledger: its file (tree order) and the records that
/// replace some of it ([`Log`]).
pub struct Recorded {
    pub path: PathBuf,
    pub late: HashMap<Vec<u8>, Option<Record>>,
}

impl Log {
    /// Start recording the sets of mirror `mirror_id` from `first_seq`.
    pub fn start(staging_root: &Path, mirror_id: &str, first_seq: u64) -> Log {
        let path = path_for(staging_root);
        let (writer, why_not) = match Writer::create(&path) {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        Log {
            mirror_id: mirror_id.to_string(),
            path,
            next_seq: first_seq,
            writer,
            why_not,
            records: 0,
            last: None,
            late: HashMap::new(),
        }
    }

    /// Whether change set `seq` is to be recorded (the next one, and
    /// nothing went wrong so far).
    pub fn wants(&self, seq: u64) -> bool {
        self.why_not.is_none() && seq == self.next_seq
    }

    /// The records are not to be used (a set applied without them).
    pub fn give_up(&mut self, why: String) {
        if self.why_not.is_none() {
            tracing::debug!("mirror apply ledger not used: {why}");
            self.why_not = Some(why);
            self.writer = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Append the records of change set `seq` (`None`: it was applied
    /// without being recorded faithfully).
    pub fn add(&mut self, seq: u64, applied: Option<Vec<Applied>>) {
        if !self.wants(seq) {
            self.give_up(format!("change set {seq} came out of order"));
            return;
        }
        let Some(applied) = applied else {
            self.give_up(format!(
                "change set {seq} holds records the apply does not record"
            ));
            return;
        };
        let w = self.writer.as_mut().expect("a log in use has a writer");
        let mut written = Ok(());
        for a in applied.iter() {
            if a.count {
                w.count_dir(&a.path);
            }
            // A record that does not come after every one before it (a
            // directory's metadata, set when the source's walk left it; a
            // file's metadata after its content came in pieces) replaces
            // the record of its path.
            let after = self
                .last
                .as_ref()
                .is_none_or(|l| path_cmp(&a.path, l) == std::cmp::Ordering::Greater);
            if !after {
                self.late.insert(a.path.clone(), a.record.clone());
                continue;
            }
            written = match &a.record {
                Some(r) => w.trusted_record(&a.path, r),
                None => w.recheck(&a.path),
            };
            if written.is_err() {
                break;
            }
            self.last = Some(a.path.clone());
        }
        match written {
            Ok(()) => {
                self.next_seq = seq + 1;
                self.records += applied.len() as u64;
            }
            Err(e) => self.give_up(format!("writing {}: {e:#}", self.path.display())),
        }
    }

    /// Finish the log of mirror `mirror_id`, whose last set is `last_seq`:
    /// its path when every set of the mirror was recorded.
    pub fn finish(mut self, mirror_id: &str, last_seq: u64) -> Option<Recorded> {
        if mirror_id != self.mirror_id {
            self.give_up(format!("mirror {mirror_id} is not the one recorded"));
        } else if self.next_seq != last_seq + 1 {
            self.give_up(format!(
                "recorded up to change set {}, the mirror ended with {last_seq}",
                self.next_seq.saturating_sub(1)
            ));
        }
        let w = self.writer.take()?;
        match w.finish() {
            Ok(()) => {
                tracing::debug!(
                    records = self.records,
                    late = self.late.len(),
                    "mirror apply ledger written"
                );
                Some(Recorded {
                    path: self.path.clone(),
                    late: std::mem::take(&mut self.late),
                })
            }
            Err(e) => {
                self.give_up(format!("{e:#}"));
                None
            }
        }
    }
}

/// One ledger's records in tree order, with the next one looked at.
struct Stream {
    prev: Option<Prev>,
    /// A record is looked at: its path, record and whether it is trusted.
    has: bool,
    path: Vec<u8>,
    rec: Record,
    trusted: bool,
}

impl Stream {
    fn open(path: &Path) -> Result<Stream> {
        let mut s = Stream {
            prev: Prev::open(path),
            has: false,
            path: Vec::new(),
            rec: Record::default(),
            trusted: false,
        };
        s.look()?;
        Ok(s)
    }

    /// Read the next record.
    fn look(&mut self) -> Result<()> {
        let got = match self.prev.as_mut() {
            Some(p) => p.next_into(&mut self.path, &mut self.rec)?,
            None => None,
        };
        self.has = got.is_some();
        self.trusted = got == Some(true);
        Ok(())
    }

    /// The path of the record looked at.
    fn head(&self) -> Option<&[u8]> {
        self.has.then_some(self.path.as_slice())
    }

    /// Take the record looked at into `path` and `rec` (their buffers
    /// swapped, not copied) and look at the next one, which must come
    /// after it: whether the record taken is trusted.
    fn take_into(&mut self, path: &mut Vec<u8>, rec: &mut Record) -> Result<Option<bool>> {
        if !self.has {
            return Ok(None);
        }
        std::mem::swap(&mut self.path, path);
        std::mem::swap(&mut self.rec, rec);
        let trusted = self.trusted;
        self.look()?;
        if self.has && ledger::tree_cmp(&self.path, path) != std::cmp::Ordering::Greater {
            bail!("ledger out of tree order");
        }
        Ok(Some(trusted))
    }
}

/// Every path the apply ledger `applied` has a record of (the early check
/// of a sparse mirror must not stand for them: [`super::precheck`]).
pub fn paths(applied: &Recorded) -> Result<Vec<Vec<u8>>> {
    let Some(mut p) = Prev::open(&applied.path) else {
        bail!("the apply ledger {} is unreadable", applied.path.display());
    };
    let mut out: Vec<Vec<u8>> = applied.late.keys().cloned().collect();
    while let Some((path, _)) = p
        .next_entry()
        .with_context(|| format!("reading {}", applied.path.display()))?
    {
        out.push(path);
    }
    Ok(out)
}

/// The comparison's ledger and the apply ledger merged as both are read,
/// in tree order (an applied record replaces the comparison's of the same
/// path: it is newer; a late record replaces the apply ledger's own), for
/// the fold at `MirrorEnd` ([`fold`]) or a merged ledger file ([`merge`]).
pub struct Merge {
    a: Stream,
    c: Stream,
    late: HashMap<Vec<u8>, Option<Record>>,
    applied: PathBuf,
    comparison: PathBuf,
    /// Records given so far.
    records: u64,
    /// Where a comparison's record replaced by the apply's goes.
    spare: (Vec<u8>, Record),
}

impl Merge {
    /// Open the apply ledger `applied` and the comparison's ledger of the
    /// replica at `root` ([`ledger::path_for`]; absent: none).
    pub fn open(root: &Path, applied: Recorded) -> Result<Merge> {
        let comparison = ledger::path_for(root);
        let Recorded { path, late } = applied;
        let a = Stream::open(&path)?;
        if a.prev.is_none() {
            bail!("the apply ledger {} is unreadable", path.display());
        }
        let c = Stream::open(&comparison)?;
        if c.prev.is_none() && comparison.exists() {
            bail!("the mirror ledger {} is unreadable", comparison.display());
        }
        Ok(Merge {
            a,
            c,
            late,
            applied: path,
            comparison,
            records: 0,
            spare: (Vec::new(), Record::default()),
        })
    }

    /// Records given so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The next merged record into `path` and `rec` (buffers reused):
    /// whether it is trusted; `None` after the last.
    fn step_into(&mut self, path: &mut Vec<u8>, rec: &mut Record) -> Result<Option<bool>> {
        let order = match (self.a.head(), self.c.head()) {
            (None, None) => return Ok(None),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(pa), Some(pc)) => ledger::tree_cmp(pa, pc),
        };
        if order == std::cmp::Ordering::Equal {
            // The apply's record is newer than the comparison's.
            let (p, r) = &mut self.spare;
            self.c.take_into(p, r)?;
        }
        let s = if order != std::cmp::Ordering::Greater {
            &mut self.a
        } else {
            &mut self.c
        };
        let mut trusted = s.take_into(path, rec)?.expect("checked");
        if !self.late.is_empty() {
            if let Some(r) = self.late.remove(path.as_slice()) {
                trusted = r.is_some();
                if let Some(r) = r {
                    *rec = r;
                }
            }
        }
        self.records += 1;
        Ok(Some(trusted))
    }

    fn end(&mut self) -> Result<HashSet<Vec<u8>>> {
        if let Some(p) = self.late.keys().next() {
            bail!(
                "the apply ledger has a late record of {} that nothing else lists",
                standin_builder::entry::display_path(p)
            );
        }
        // Both streams stand after their last record: their counted
        // directories follow (no second pass over either ledger).
        let mut counted: HashSet<Vec<u8>> = match self.a.prev.take() {
            Some(p) => p.counted_dirs()?,
            None => bail!("the apply ledger {} is unreadable", self.applied.display()),
        };
        match self.c.prev.take() {
            Some(p) => counted.extend(p.counted_dirs()?),
            None if self.comparison.exists() => {
                bail!(
                    "the mirror ledger {} is unreadable",
                    self.comparison.display()
                )
            }
            None => {}
        }
        // The root may hold what no record made.
        counted.insert(Vec::new());
        Ok(counted)
    }
}

impl ledger::Source for Merge {
    fn next_into(&mut self, path: &mut Vec<u8>, rec: &mut Record) -> std::io::Result<Option<bool>> {
        self.step_into(path, rec)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
    }

    fn counted_dirs(&mut self) -> std::io::Result<HashSet<Vec<u8>>> {
        self.end()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}

/// The root digest check's fold at `MirrorEnd` over the comparison's
/// ledger of the replica at `root` merged with the apply ledger `applied`
/// as both are read ([`Merge`]): no merged ledger is written and read
/// again. With `out`, the fold's own ledger ([`ledger::digest_into`]).
/// The outcome and how many records were folded; an error when either
/// ledger is unusable (nothing is known then: the caller folds the
/// comparison's ledger alone, as when the apply ledger is not used).
pub fn fold(
    root: &Path,
    applied: Recorded,
    skip: Option<&super::precheck::Skip>,
    out: Option<&Path>,
) -> Result<(ledger::Outcome, u64)> {
    let mut m = Merge::open(root, applied)?;
    let hints = ledger::Hints {
        skip,
        count_dirs: None,
    };
    let got = ledger::digest_from(root, &mut m, hints, out).context("merging the apply ledger")?;
    Ok((got, m.records()))
}

/// Merge the apply ledger `applied` into the comparison's ledger of the
/// replica at `root` ([`ledger::path_for`]; absent: none), replacing it.
/// How many records the merged ledger holds. On error the comparison's
/// ledger is left as it was. (The end folds the two directly: [`fold`].)
pub fn merge(root: &Path, applied: Recorded) -> Result<u64> {
    Ok(merge_counted(root, applied)?.0)
}

/// [`merge`], and the merged ledger's counted directories.
pub fn merge_counted(root: &Path, applied: Recorded) -> Result<(u64, HashSet<Vec<u8>>)> {
    let mut m = Merge::open(root, applied)?;
    let merged = root.with_file_name("mirror-ledger.merged");
    let mut w = Writer::create(&merged)?;
    let (mut p, mut r) = (Vec::new(), Record::default());
    while let Some(trusted) = m.step_into(&mut p, &mut r)? {
        if trusted {
            w.trusted_record(&p, &r)?;
        } else {
            w.recheck(&p)?;
        }
    }
    let counted = m.end()?;
    for d in &counted {
        w.count_dir(d);
    }
    w.finish()?;
    std::fs::rename(&merged, &m.comparison)
        .with_context(|| format!("renaming {} into place", merged.display()))?;
    Ok((m.records(), counted))
}

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
