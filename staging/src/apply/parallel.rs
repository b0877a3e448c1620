//! A run of whole-file records ([`Record::File`]) written on two threads
//! ([`ApplyTarget::apply_files`](super::ApplyTarget::apply_files)).
//!
//! In a full mirror the target's apply thread is the critical path: it
//! creates, writes, stamps and links every file alone. A run of file
//! records (consecutive in a set, their parent directories made by
//! earlier records) is split in two halves of about the same weight (data
//! plus a fixed cost per file), written at once on two threads, each with
//! its own [`FileCtx`] (parent-directory cache, what it applied, digests
//! to remember, files to write back); the
//! results and what each half collected are then put together in the
//! records' order, so the ledger, the digest cache, the problems and the
//! counts are those of the sequential apply. The second half runs on the
//! target's own [`Sidekick`](super::sidekick::Sidekick) thread, not on
//! rayon's pool (whose idle threads spin: see there).
//!
//! A run whose records could see each other's effects (the same path
//! twice, or a file where another record's parent directory is) is
//! written in order on the calling thread.

use std::collections::HashSet;

use standin_builder::changeset::{Digest32, Record};

use super::file::FileCtx;
use super::{ApplyError, DirTarget};

/// Runs of at least this many file records are written on two threads.
pub(super) const PARALLEL_FILES: usize = 8;

/// A file's fixed cost in bytes of data, for splitting a run in halves.
const PER_FILE_WEIGHT: u64 = 16 << 10;

/// Set (to anything but empty) to write every file record on the apply
/// thread alone (to measure [`ApplyTarget::apply_files`](super::ApplyTarget::apply_files)).
pub const ONE_APPLY_THREAD_ENV: &str = "STANDIN_ONE_APPLY_THREAD";

/// Whether [`ONE_APPLY_THREAD_ENV`] is set (read once).
pub(super) fn one_thread() -> bool {
    static ONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONE.get_or_init(|| std::env::var_os(ONE_APPLY_THREAD_ENV).is_some_and(|v| !v.is_empty()))
}

/// Whether an error stops the apply (it pauses: no space, I/O).
pub(super) fn pauses(r: &Result<(), ApplyError>) -> bool {
    matches!(r, Err(ApplyError::NoSpace(_) | ApplyError::Io(_)))
}

/// The path of a file record (`None` for any other record).
fn file_path(r: &Record) -> Option<&[u8]> {
    match r {
        Record::File { entry, .. } => Some(&entry.path),
        _ => None,
    }
}

/// Whether the records are all file records of distinct paths, none of
/// them a directory another one is in: then writing them in any order,
/// or at once, gives what writing them in order gives.
pub(super) fn independent(records: &[Record]) -> bool {
    let mut paths: HashSet<&[u8]> = HashSet::with_capacity(records.len());
    for r in records {
        match file_path(r) {
            Some(p) if paths.insert(p) => {}
            _ => return false,
        }
    }
    paths.iter().all(|p| {
        p.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .all(|(i, _)| !paths.contains(&p[..i]))
    })
}

/// Where to split `records` so both halves weigh about the same.
fn split_at(records: &[Record]) -> usize {
    let weight = |r: &Record| r.data_len() + PER_FILE_WEIGHT;
    let total: u64 = records.iter().map(weight).sum();
    let mut acc = 0;
    for (k, r) in records.iter().enumerate() {
        acc += weight(r);
        if acc * 2 >= total {
            return (k + 1).clamp(1, records.len() - 1);
        }
    }
    records.len() / 2
}

impl DirTarget {
    /// [`super::ApplyTarget::apply_files`] for the replica directory.
    pub(super) fn write_files_parallel(
        &mut self,
        records: &[Record],
        digests: &[Option<Digest32>],
    ) -> Vec<Result<(), ApplyError>> {
        if records.len() < PARALLEL_FILES || !self.two_threads || !independent(records) {
            return sequential(self, records, digests);
        }
        if self.sidekick.is_none() {
            self.sidekick = super::sidekick::Sidekick::start("apply-2");
        }
        // Taken out while `self` is lent to both halves; without it (no
        // thread could be started) the run is written in order here.
        let Some(mut side) = self.sidekick.take() else {
            return sequential(self, records, digests);
        };
        self.split_runs += 1;
        let split = split_at(records);
        let (first, second) = records.split_at(split);
        let (d1, d2) = digests.split_at(split.min(digests.len()));
        let mut ctx1 = std::mem::take(&mut self.files);
        let mut ctx2 = ctx1.beside();
        let this = &*self;
        // The second half on the sidekick, the first on this thread.
        let (mut r1, r2) = side.join(
            || this.write_files(&mut ctx1, first, d1),
            || this.write_files(&mut ctx2, second, d2),
        );
        self.sidekick = Some(side);
        if r1.len() == first.len() {
            r1.extend(r2);
            ctx1.append(ctx2);
        } else {
            // The first half stopped at an error that pauses the apply: the
            // caller stops there too. What the second half wrote is
            // whole files, written again when the set is (the ledger of a
            // set that did not apply is given up).
            ctx2.applied.clear();
            ctx1.append(ctx2);
        }
        self.absorb(&mut ctx1);
        self.files = ctx1;
        r1
    }

    /// Write the file records in order with `ctx`; stop after an error
    /// that pauses the apply.
    fn write_files(
        &self,
        ctx: &mut FileCtx,
        records: &[Record],
        digests: &[Option<Digest32>],
    ) -> Vec<Result<(), ApplyError>> {
        let mut out = Vec::with_capacity(records.len());
        for (k, r) in records.iter().enumerate() {
            let res = match r {
                Record::File {
                    entry,
                    data,
                    content_digest,
                } => self.write_file_with(
                    ctx,
                    entry,
                    data,
                    content_digest,
                    digests.get(k).and_then(Option::as_ref),
                ),
                other => Err(ApplyError::Io(format!(
                    "a {} record among file records",
                    other.name()
                ))),
            };
            let stop = pauses(&res);
            out.push(res);
            if stop {
                break;
            }
        }
        out
    }
}

/// Apply `records` one by one in order through `target`, stopping after
/// an error that pauses the apply (the default of
/// [`super::ApplyTarget::apply_files`]).
pub(super) fn sequential<T: super::ApplyTarget + ?Sized>(
    target: &mut T,
    records: &[Record],
    digests: &[Option<Digest32>],
) -> Vec<Result<(), ApplyError>> {
    let mut out = Vec::with_capacity(records.len());
    for (k, r) in records.iter().enumerate() {
        let res = target.apply_hashed(r, digests.get(k).and_then(Option::as_ref));
        let stop = pauses(&res);
        out.push(res);
        if stop {
            break;
        }
    }
    out
}
