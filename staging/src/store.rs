//! The state directory and the journaled, ordered apply of change sets.
//!
//! ```text
//! STATE/state.json                 durable state (state.rs)
//! STATE/journal/<seq>.cs           a received change set, verbatim, written durably before apply
//! STATE/journal/<seq>.progress     records before this index are applied and durable
//! STATE/staging/<source-id>/root/  the replica
//! STATE/snapshots/  STATE/rollback/
//! ```
//!
//! Crash consistency (see docs/protect.md for the argument in full):
//! a change set is journaled (temp → fsync → rename → fsync dir) and its
//! checksum verified before any record touches the replica. Records are then
//! applied in order; each is idempotent, and the only records whose replay
//! could read state changed by later records (rename, link) are followed by
//! `syncfs` and a durable progress mark. After the last record the replica is
//! synced, `state.json` records the sequence number, and only then is the
//! journal entry deleted and the set acknowledged. On start every complete
//! journal entry above the recorded number is re-applied from its progress
//! mark; a torn entry (temp file, bad checksum) was never acknowledged and
//! is discarded, so the agent sends it again.
//!
//! During a mirror that has not completed, a set of records that can be
//! applied again from the start ([`Store::unjournaled`]: whole files, a
//! large file's pieces, metadata, deletions) skips the journal: after a
//! crash the agent sends it again (it keeps every unacknowledged set),
//! which writes what the crash cut short again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use standin_builder::changeset::{ChangeSet, Digest32, Record};
use standin_builder::entry::display_path;
use standin_link::message::{MirrorDone, MirrorEnd, MirrorStart};
use standin_link::Fingerprint;
use tracing::{info, warn};

use crate::apply::{ApplyError, ApplyTarget, DirTarget};
use crate::durable;
use crate::state::{now_ms, MirrorState, TargetState};

/// The outcome of receiving one change set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Applied; `problems` lists refused or unverified records (also in the state's warning).
    Applied { seq: u64, problems: Vec<String> },
    /// Already applied before (a resend after reconnect); acknowledged again.
    Duplicate { seq: u64 },
}

/// Why a change set was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("change set {got} is out of order: expected {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    /// Disk full or another I/O error: nothing is lost; send again later.
    #[error("apply paused: {0}")]
    Paused(String),
    #[error(transparent)]
    Fatal(#[from] anyhow::Error),
}

/// Opens the replica of a source; replaced by TreeWriter later.
pub type TargetFactory = Box<dyn Fn(&Path) -> Result<Box<dyn ApplyTarget>> + Send>;

/// The target's state directory.
pub struct Store {
    dir: PathBuf,
    state: TargetState,
    target: Option<Box<dyn ApplyTarget>>,
    factory: TargetFactory,
    /// The caller holds the apply lock for the store's whole life
    /// ([`replay_locked`]); applies do not take it again.
    lock_held: bool,
    /// When `state.json` was last written durably after a set of an open
    /// mirror that skipped the journal (see [`LAZY_SAVE_EVERY`]).
    lazy_saved_at: Option<std::time::Instant>,
    /// [`LAZY_SAVE_EVERY`] (tests set another).
    pub lazy_save_every: std::time::Duration,
    /// What the sets of the open mirror applied, for the root digest check
    /// at its end ([`crate::mirror::applied`]).
    applied: Option<crate::mirror::applied::Log>,
    /// How the last mirror end's root digest check went, recorded in the
    /// state when the mirror completes.
    root_check: Option<crate::state::RootCheck>,
}

/// How often `state.json` is written durably while the sets of an open
/// mirror skip the journal. Each durable write is an fsync, which forces a
/// filesystem journal commit of everything the mirror created since the
/// last one; per set (every 8 MiB) that stalls the apply. The state on
/// disk may then lag the sets applied (and acknowledged) by up to this
/// interval: after a crash the target reports the older number, the agent
/// finds itself ahead of it and runs a difference mirror, which is what a
/// crash in the middle of a mirror needs anyway (those sets' files were
/// not synced either; the mirror completes only after one sync at its end).
pub const LAZY_SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The replica as a directory tree (copy-on-write aware for snapshots).
fn default_factory(dir: &Path) -> TargetFactory {
    let state_dir = dir.to_path_buf();
    Box::new(move |root: &Path| {
        let mut t = DirTarget::open(root)?;
        t.cow = Some(crate::snapshot::cow::Guard::new(&state_dir));
        Ok(Box::new(t) as Box<dyn ApplyTarget>)
    })
}

fn journal_name(seq: u64, ext: &str) -> String {
    format!("{seq:020}.{ext}")
}

/// Number and bytes of complete journal entries above `applied`.
pub fn journal_backlog(journal: &Path, applied: u64) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    if let Ok(rd) = std::fs::read_dir(journal) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name.strip_suffix(".cs").and_then(|s| s.parse::<u64>().ok()) {
                if seq > applied {
                    n += 1;
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
    (n, bytes)
}

impl Store {
    /// Open (creating the layout) and recover: replay complete journal
    /// entries, discard torn ones.
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_with(dir, default_factory(dir))
    }

    /// Like [`Store::open`] with another [`ApplyTarget`] implementation.
    pub fn open_with(dir: &Path, factory: TargetFactory) -> Result<Store> {
        for sub in ["journal", "staging", "snapshots", "rollback"] {
            durable::create_dirs(&dir.join(sub))?;
        }
        // The replica holds the source's setuid programs and device nodes:
        // only root on the target may reach it.
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.to_path_buf(), dir.join("staging")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to its owner", d.display()))?;
        }
        let mut state = TargetState::load(dir)?;
        if state.mirror_flushing {
            // The daemon stopped before the replica of its last mirror was
            // written to disk: that mirror stays incomplete.
            info!("the last mirror's replica was not synced before the daemon stopped; the next mirror compares it");
            state.mirror_flushing = false;
            state.mirror_complete = false;
        }
        let mut store = Store {
            dir: dir.to_path_buf(),
            state,
            target: None,
            factory,
            lock_held: false,
            lazy_saved_at: None,
            lazy_save_every: LAZY_SAVE_EVERY,
            applied: None,
            root_check: None,
        };
        if !dir.join(crate::state::STATE_FILE).exists() {
            store
                .save()
                .with_context(|| format!("writing the state in {}", dir.display()))?;
        }
        store.recover()?;
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durable state.
    pub fn state(&self) -> &TargetState {
        &self.state
    }

    /// The replica of `source_id`.
    pub fn staging_root(&self, source_id: &str) -> PathBuf {
        self.dir.join("staging").join(source_id).join("root")
    }

    fn journal(&self) -> PathBuf {
        self.dir.join("journal")
    }

    fn save(&self) -> std::io::Result<()> {
        if self.state.mirror_flushing {
            // What is on disk must not claim a mirror whose replica is not
            // durable yet (see [`Store::mirror_flushed`]).
            let mut durable = self.state.clone();
            durable.mirror_complete = false;
            return durable.save(&self.dir);
        }
        self.state.save(&self.dir)
    }

    fn save_ctx(&self) -> Result<()> {
        self.save().with_context(|| {
            format!(
                "writing {}",
                self.dir.join(crate::state::STATE_FILE).display()
            )
        })
    }

    /// Journal entries waiting (count, bytes).
    pub fn backlog(&self) -> (u64, u64) {
        journal_backlog(&self.journal(), self.state.last_applied_seq)
    }

    /// Bind the target to a source on its first connection; refuse others.
    pub fn bind_source(&mut self, source_id: &str, fingerprint: Fingerprint) -> Result<(), String> {
        match &self.state.source_id {
            Some(s) if s != source_id => Err(format!(
                "this target stages source {s:?}, not {source_id:?}; use another state directory for another source"
            )),
            Some(_) => Ok(()),
            None => {
                self.state.source_id = Some(source_id.to_string());
                self.state.source_fingerprint = Some(fingerprint);
                durable::create_dirs(&self.staging_root(source_id)).map_err(|e| format!("{e:#}"))?;
                self.save().map_err(|e| format!("writing state.json: {e}"))?;
                info!(source = source_id, %fingerprint, "target now stages this source");
                Ok(())
            }
        }
    }

    fn target(&mut self) -> Result<&mut Box<dyn ApplyTarget>> {
        if self.target.is_none() {
            let Some(src) = self.state.source_id.clone() else {
                bail!("no source is bound to this target yet");
            };
            let root = self.staging_root(&src);
            durable::create_dirs(&root)?;
            self.target = Some((self.factory)(&root)?);
        }
        Ok(self.target.as_mut().expect("just set"))
    }

    /// Replay complete journal entries above the last applied number; drop the rest.
    pub fn recover(&mut self) -> Result<()> {
        let journal = self.journal();
        let mut entries: Vec<(u64, PathBuf)> = Vec::new();
        for e in
            std::fs::read_dir(&journal).with_context(|| format!("reading {}", journal.display()))?
        {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.ends_with(".tmp") {
                warn!("discarding torn journal write {}", path.display());
                durable::remove(&path)?;
            } else if let Some(seq) = name.strip_suffix(".cs").and_then(|s| s.parse().ok()) {
                entries.push((seq, path));
            } else if let Some(stem) = name.strip_suffix(".progress") {
                // A progress mark whose change set is gone (crash while dropping it).
                if !journal.join(format!("{stem}.cs")).exists() {
                    durable::remove(&path)?;
                }
            }
        }
        entries.sort();
        for (seq, path) in entries {
            if seq <= self.state.last_applied_seq {
                self.drop_entry(seq)?;
                continue;
            }
            let raw =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let cs = match ChangeSet::decode(&raw) {
                Ok(cs) if cs.seq == seq => cs,
                Ok(cs) => {
                    warn!(
                        "discarding journal entry {}: it holds change set {}",
                        path.display(),
                        cs.seq
                    );
                    self.drop_entry(seq)?;
                    continue;
                }
                Err(e @ standin_builder::changeset::ChangeSetError::OldDigests(_)) => {
                    // Left by an older standin before the upgrade: its
                    // sha256 digests cannot be checked; the agent's next
                    // difference mirror catches up.
                    warn!("discarding journal entry {}: {e}", path.display());
                    self.drop_entry(seq)?;
                    continue;
                }
                Err(e) => {
                    warn!("discarding torn journal entry {}: {e}", path.display());
                    self.drop_entry(seq)?;
                    continue;
                }
            };
            if seq != self.state.last_applied_seq + 1 {
                warn!(
                    "discarding journal entry {}: expected change set {}",
                    path.display(),
                    self.state.last_applied_seq + 1
                );
                self.drop_entry(seq)?;
                continue;
            }
            info!(seq, "replaying journaled change set after a restart");
            match self.apply_journaled(&cs, raw.len() as u64, &[]) {
                Ok(_) => {}
                Err(ReceiveError::Paused(m)) => {
                    warn!(seq, "replay paused: {m}");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Delete a journal entry. Not synced: should the deletion be lost in a
    /// crash, recovery finds the entry at or below the recorded number and
    /// deletes it again.
    fn drop_entry(&self, seq: u64) -> Result<()> {
        let j = self.journal();
        for ext in ["cs", "progress"] {
            let p = j.join(journal_name(seq, ext));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
            }
        }
        Ok(())
    }

    /// Journal, apply and record one change set (`raw` is its encoding).
    pub fn receive(&mut self, raw: &[u8], cs: &ChangeSet) -> Result<Received, ReceiveError> {
        self.receive_hashed(raw, cs, &[])
    }

    /// [`Store::receive`] with the content digest of each `File` record's data
    /// already computed (`data_digest[i]` for record `i`; see
    /// [`file_data_digests`]), e.g. on another thread while the previous
    /// set applied: the apply then compares instead of hashing again.
    /// Records beyond the slice (or `None`) are hashed during the apply.
    pub fn receive_hashed(
        &mut self,
        raw: &[u8],
        cs: &ChangeSet,
        data_digest: &[Option<Digest32>],
    ) -> Result<Received, ReceiveError> {
        let expected = self.state.last_applied_seq + 1;
        if cs.seq < expected {
            return Ok(Received::Duplicate { seq: cs.seq });
        }
        if cs.seq != expected {
            return Err(ReceiveError::OutOfOrder {
                expected,
                got: cs.seq,
            });
        }
        let path = self.journal().join(journal_name(cs.seq, "cs"));
        if self.unjournaled(cs) && !path.exists() {
            return self.apply_journaled(cs, raw.len() as u64, data_digest);
        }
        let t0 = std::time::Instant::now();
        let same = std::fs::read(&path).map(|b| b == raw).unwrap_or(false);
        if !same {
            durable::remove(&self.journal().join(journal_name(cs.seq, "progress")))
                .map_err(|e| self.pause(e.to_string()))?;
            durable::write_atomic(&path, raw).map_err(|e| {
                let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
                let what = if full { "disk full: " } else { "" };
                self.pause(format!("{what}journaling change set {}: {e}", cs.seq))
            })?;
        }
        tracing::debug!(
            seq = cs.seq,
            ms = t0.elapsed().as_millis() as u64,
            "change set journaled"
        );
        self.apply_journaled(cs, raw.len() as u64, data_digest)
    }

    /// Whether `cs` is applied without being journaled first: a set of a
    /// mirror that has not completed yet, made only of records that the
    /// agent's resend re-applies from the start ([`Record::File`],
    /// `Create` (a hard link too: it is made again when the name holds
    /// another inode, left when it already is one), `SetMetadata`, `Delete`, and a
    /// large file's pieces, `WriteExtent` and `Truncate`: each writes the
    /// same bytes at the same offsets, or sets the same length, however
    /// often it is applied). Such a set costs its data once on disk instead
    /// of twice, and its new files are created under their names
    /// ([`ApplyTarget::new_files_named`]). After a crash in the middle of it
    /// the replica holds part of it (whole files; the large files it was
    /// filling or patching part-written, as they also are between two of a
    /// mirror's sets; at most the one new file being written cut short,
    /// its mtime not yet the source's) while the state still says
    /// `seq - 1`; the mirror is not complete, so status and failover say
    /// files are missing, and the agent, which keeps every unacknowledged
    /// set, sends it again, which writes those files again from the
    /// set's first record. (An agent that is gone too leaves it to the next
    /// mirror: the part-written files' ctimes are newer than any ledger
    /// record, so it reads and repairs them.) `Rename` and `Link` are
    /// journaled: applied again they would find their source moved. Such a
    /// set also has no durable state save of its own ([`LAZY_SAVE_EVERY`]).
    /// A journaled set of an open mirror is not synced either (the
    /// mirror's end syncs once), so the journal never made a mirror's
    /// pieces crash-proof; it only cost four `fsync`s a set (the entry and
    /// its directory, `state.json` and its directory: 10–100 ms a set on a
    /// journaled ext4 during a mirror).
    pub fn unjournaled(&self, cs: &ChangeSet) -> bool {
        self.in_open_mirror(cs)
            && cs.records.iter().all(|r| {
                matches!(
                    r,
                    Record::File { .. }
                        | Record::Create(_)
                        | Record::SetMetadata(_)
                        | Record::Delete { .. }
                        | Record::WriteExtent { .. }
                        | Record::Truncate { .. }
                )
            })
    }

    /// Whether `cs` belongs to a mirror that has not completed: such a set
    /// is not synced by itself (the mirror's end syncs the replica once,
    /// before the mirror is recorded complete). Of those, the ones that
    /// skip the journal ([`Store::unjournaled`]) also save `state.json`
    /// durably at most once a second ([`LAZY_SAVE_EVERY`]).
    pub fn in_open_mirror(&self, cs: &ChangeSet) -> bool {
        !self.state.mirror_complete
            && self
                .state
                .mirror
                .as_ref()
                .is_some_and(|m| cs.seq >= m.first_seq)
    }

    /// Retry a paused apply from the journal. Returns whether it is no longer paused.
    pub fn retry_paused(&mut self) -> Result<bool> {
        if self.state.paused.is_none() {
            return Ok(true);
        }
        let seq = self.state.last_applied_seq + 1;
        let path = self.journal().join(journal_name(seq, "cs"));
        if !path.exists() {
            // Nothing journaled: the agent still holds the set and sends it again.
            self.state.paused = None;
            let _ = self.save();
            return Ok(true);
        }
        self.recover()?;
        Ok(self.state.paused.is_none())
    }

    fn pause(&mut self, reason: String) -> ReceiveError {
        warn!("{reason}; apply paused, nothing is lost, retrying by itself");
        self.state.paused = Some(reason.clone());
        if let Err(e) = self.save() {
            warn!("could not record the pause in state.json: {e}");
        }
        ReceiveError::Paused(reason)
    }

    fn apply_journaled(
        &mut self,
        cs: &ChangeSet,
        raw_len: u64,
        data_digest: &[Option<Digest32>],
    ) -> Result<Received, ReceiveError> {
        let progress_path = self.journal().join(journal_name(cs.seq, "progress"));
        let start: usize = std::fs::read_to_string(&progress_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let seq = cs.seq;
        // Whole change sets only: snapshots and failovers wait for this lock.
        let _lock = if self.lock_held {
            None
        } else {
            match crate::lock::for_apply(&self.dir) {
                Ok(l) => Some(l),
                Err(e) => return Err(self.pause(format!("{e:#}"))),
            }
        };
        // A set of a mirror that has not completed is not synced by itself,
        // journaled or not: the mirror completes only after one sync at its
        // end (a `syncfs` here wrote out every file the mirror had made so
        // far, and stalled both sides for a second or more each time).
        let lazy = self.in_open_mirror(cs);
        // Only sets that skipped the journal defer their state save (see
        // [`LAZY_SAVE_EVERY`]); a journaled one records its number at once.
        let lazy_save = self.unjournaled(cs);
        // New files go in under their names only for a set that really
        // skipped the journal (not one replayed from it).
        let named = lazy_save && !self.journal().join(journal_name(seq, "cs")).exists();
        // The open mirror's sets are recorded for its end, in order and
        // from their first record.
        let record = lazy && start == 0 && self.applied.as_ref().is_some_and(|l| l.wants(seq));
        if lazy && !record {
            if let Some(l) = self.applied.as_mut() {
                l.give_up(format!("change set {seq} was not recorded from its start"));
            }
        }
        let mut problems = Vec::new();
        let mut pending: BTreeMap<Vec<u8>, Digest32> = BTreeMap::new();
        let result: Result<(), ApplyError> = (|| {
            let target = self
                .target()
                .map_err(|e| ApplyError::Io(format!("{e:#}")))?;
            target.record_applied(record);
            // Only a set that skipped the journal may leave a new file torn
            // under its name in a crash (the agent sends it again whole).
            target.new_files_named(named);
            if start == 0 {
                // Pause before the first record rather than half way: the
                // replica then stays exactly as of `seq - 1` while paused.
                let (bytes, inodes) = crate::apply::space_needed(&cs.records);
                let (free, free_inodes) = target.available()?;
                if free < bytes || free_inodes.is_some_and(|i| i < inodes) {
                    return Err(ApplyError::NoSpace(format!(
                        "{free} bytes and {} inodes free on the staging filesystem, change set {seq} needs about {bytes} bytes and {inodes} inodes; free space there",
                        free_inodes.map(|i| i.to_string()).unwrap_or_else(|| "unlimited".into())
                    )));
                }
            }
            let t_records = std::time::Instant::now();
            target.mirror_writeback(lazy);
            target.prepare(cs.records.get(start..).unwrap_or_default())?;
            let is_file = |r: &Record| matches!(r, Record::File { .. });
            // A set that skipped the journal gives its runs of whole-file
            // records to the target together (it may write them on two
            // threads, see `ApplyTarget::apply_files`); every other record
            // is applied alone, in order, as a barrier. The results come
            // back in the records' order.
            let mut results: std::collections::VecDeque<Result<(), ApplyError>> =
                Default::default();
            for (i, r) in cs.records.iter().enumerate() {
                track(&mut pending, r);
                if i < start {
                    continue;
                }
                let res = if lazy_save && is_file(r) {
                    if results.is_empty() {
                        let run = cs.records[i..].iter().take_while(|r| is_file(r)).count();
                        let digests = data_digest.get(i..).unwrap_or_default();
                        let digests = &digests[..run.min(digests.len())];
                        results.extend(target.apply_files(&cs.records[i..i + run], digests));
                    }
                    results.pop_front().unwrap_or_else(|| {
                        Err(ApplyError::Io(format!(
                            "change set {seq} record {i}: the target gave no result"
                        )))
                    })
                } else {
                    target.apply_hashed(r, data_digest.get(i).and_then(Option::as_ref))
                };
                match res {
                    Ok(()) => {}
                    Err(
                        e @ (ApplyError::Refused(_)
                        | ApplyError::Inconsistent(_)
                        | ApplyError::Mismatch(_)),
                    ) => {
                        let paths: Vec<String> =
                            r.paths().iter().map(|p| display_path(p)).collect();
                        warn!(seq, record = i, kind = r.name(), paths = ?paths, "record not applied: {e}");
                        problems.push(format!("change set {seq} record {i} ({}): {e}", r.name()));
                    }
                    Err(e) => return Err(e),
                }
                crate::test_hook::hold_mid_apply(seq, i + 1, cs.records.len());
                if matches!(r, Record::Rename { .. } | Record::Link { .. }) {
                    target.sync()?;
                    durable::write_atomic(&progress_path, (i + 1).to_string().as_bytes()).map_err(
                        |e| {
                            ApplyError::NoSpace(format!("writing {}: {e}", progress_path.display()))
                        },
                    )?;
                }
            }
            let t_check = std::time::Instant::now();
            let paths: Vec<&[u8]> = pending.keys().map(Vec::as_slice).collect();
            let reads0 = target.check_reads();
            let digests = target.content_digests(&paths);
            let reads = target.check_reads();
            for ((path, want), got) in pending.iter().zip(digests) {
                let got = match got {
                    Ok(got) => got,
                    Err(
                        e @ (ApplyError::Refused(_)
                        | ApplyError::Inconsistent(_)
                        | ApplyError::Mismatch(_)),
                    ) => {
                        problems.push(format!(
                            "change set {seq}: verifying {}: {e}",
                            display_path(path)
                        ));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match got {
                    Some(d) if d == *want => {}
                    got => {
                        let msg = format!(
                            "change set {seq}: content of {} is {} after apply, the source has {}",
                            display_path(path),
                            got.map(hex::encode).unwrap_or_else(|| "missing".into()),
                            hex::encode(want)
                        );
                        warn!("{msg}");
                        problems.push(msg);
                    }
                }
            }
            tracing::debug!(
                seq,
                records_ms = t_records
                    .elapsed()
                    .saturating_sub(t_check.elapsed())
                    .as_millis() as u64,
                check_ms = t_check.elapsed().as_millis() as u64,
                checked = paths.len(),
                checked_partly = reads.partial - reads0.partial,
                partial_bytes = reads.partial_bytes - reads0.partial_bytes,
                streamed = reads.streamed - reads0.streamed,
                "change set records applied"
            );
            if lazy {
                Ok(())
            } else {
                target.sync()
            }
        })();
        let recorded = self.target.as_mut().and_then(|t| {
            let r = t.take_applied();
            t.record_applied(false);
            r
        });
        if let (true, Some(log)) = (record, self.applied.as_mut()) {
            if result.is_ok() && problems.is_empty() {
                log.add(seq, recorded);
            } else {
                log.give_up(format!("change set {seq} did not apply cleanly"));
            }
        }
        if let Err(e) = result {
            return Err(self.pause(format!("applying change set {seq}: {e}")));
        }
        let st = &mut self.state;
        st.last_applied_seq = seq;
        st.last_applied_created_unix_ms = Some(cs.created_unix_ms);
        st.last_applied_unix_ms = Some(now_ms());
        st.bytes_received += raw_len;
        st.paused = None;
        if let Some(m) = st.mirror.as_mut() {
            if !st.mirror_complete && seq >= m.first_seq {
                m.bytes_applied += cs.data_len();
            }
        }
        if let Some(first) = problems.first() {
            st.warning = Some(format!(
                "{} record(s) were refused or did not verify; first: {first}; a difference mirror repairs the replica",
                problems.len()
            ));
        }
        let defer = lazy_save
            && self
                .lazy_saved_at
                .is_some_and(|t| t.elapsed() < self.lazy_save_every);
        if !defer {
            let t_save = std::time::Instant::now();
            let saved = self.save();
            tracing::debug!(
                seq,
                ms = t_save.elapsed().as_millis() as u64,
                "change set recorded in state.json"
            );
            if let Err(e) = saved {
                return Err(self.pause(format!("recording change set {seq} in state.json: {e}")));
            }
            self.lazy_saved_at = lazy_save.then(std::time::Instant::now);
        }
        self.drop_entry(seq).map_err(ReceiveError::Fatal)?;
        Ok(Received::Applied { seq, problems })
    }

    /// Replace the heartbeat part of the state (kept by the daemon apart
    /// from the store, see [`crate::heartbeat`]) so that the next durable
    /// save of `state.json` carries it; saves nothing by itself.
    pub fn set_beats(&mut self, beats: &crate::heartbeat::Beats) {
        beats.set_in(&mut self.state);
    }

    /// Record where the second heartbeat path is served (at daemon start),
    /// so status can tell when it is expected but never heard.
    pub fn set_heartbeat_listen(&mut self, addr: Option<String>) -> Result<()> {
        if self.state.heartbeat_listen != addr {
            self.state.heartbeat_listen = addr;
            self.save().context("writing state.json")?;
        }
        Ok(())
    }

    /// A mirror begins. The same mirror's start again carries its totals,
    /// counted by the source while it sends: only those change.
    pub fn mirror_start(&mut self, m: &MirrorStart) -> Result<()> {
        if let Some(cur) = self.state.mirror.as_mut() {
            if cur.mirror_id == m.mirror_id && !self.state.mirror_complete {
                cur.total_entries = m.total_entries;
                cur.total_bytes = m.total_bytes;
                return self.save_ctx();
            }
        }
        self.applied = self.state.source_id.clone().map(|src| {
            crate::mirror::applied::Log::start(&self.staging_root(&src), &m.mirror_id, m.first_seq)
        });
        self.root_check = None;
        self.state.mirror = Some(MirrorState {
            mirror_id: m.mirror_id.clone(),
            mode: m.mode,
            total_entries: m.total_entries,
            total_bytes: m.total_bytes,
            first_seq: m.first_seq,
            bytes_applied: 0,
            started_unix_ms: now_ms(),
            last_seq: None,
            root_digest: None,
            root_verified: false,
            root_check: None,
        });
        self.state.mirror_complete = false;
        self.state.mirror_flushing = false;
        self.save_ctx()
    }

    /// The apply ledger of mirror `m` ([`crate::mirror::applied`]) when
    /// every one of its sets was applied and recorded by this store, in
    /// order; recording stops either way.
    pub fn take_applied(&mut self, m: &MirrorEnd) -> Option<crate::mirror::applied::Recorded> {
        self.applied.take()?.finish(&m.mirror_id, m.last_seq)
    }

    /// How the root digest check at the end of the mirror being ended went
    /// (kept in the state's mirror when it completes).
    pub fn note_root_check(&mut self, check: crate::state::RootCheck) {
        self.root_check = Some(check);
    }

    /// How the root digest check of the mirror being ended went, until
    /// the mirror completes (then it is in the state's mirror).
    pub fn root_check(&self) -> Option<&crate::state::RootCheck> {
        self.root_check.as_ref()
    }

    /// A mirror ended: complete once its last change set is applied.
    pub fn mirror_end(&mut self, m: &MirrorEnd) -> Result<MirrorDone> {
        let done = |complete, reason: Option<String>| MirrorDone {
            mirror_id: m.mirror_id.clone(),
            complete,
            reason,
        };
        match &self.state.mirror {
            Some(ms) if ms.mirror_id == m.mirror_id => {}
            _ => {
                return Ok(done(
                    false,
                    Some(format!("mirror {} was never started here", m.mirror_id)),
                ))
            }
        }
        if self.state.last_applied_seq < m.last_seq {
            return Ok(done(
                false,
                Some(format!(
                    "change set {} is not applied yet (at {})",
                    m.last_seq, self.state.last_applied_seq
                )),
            ));
        }
        // Sets of the mirror that skipped the journal were not synced one
        // by one (`apply_journaled`). The mirror is complete now (the
        // source may go on), and durable once the replica is synced: until
        // [`Store::mirror_flushed`] says so, `state.json` keeps it
        // incomplete ([`Store::save`]).
        let ms = self.state.mirror.as_mut().expect("checked");
        ms.last_seq = Some(m.last_seq);
        ms.root_digest = m.root_digest.clone();
        ms.root_verified = false;
        ms.root_check = self.root_check.take();
        self.state.mirror_complete = true;
        self.state.mirror_flushing = true;
        self.state.warning = None;
        self.save_ctx()?;
        info!(
            mirror = m.mirror_id,
            seq = m.last_seq,
            "mirror complete; syncing the replica"
        );
        Ok(done(true, None))
    }

    /// The mirror `mirror_id` whose end [`Store::mirror_end`] accepted
    /// still waits for its replica to be synced: the caller syncs the
    /// staging filesystem (without this store's lock) and reports with
    /// [`Store::mirror_flushed`].
    pub fn flush_pending(&self) -> Option<String> {
        self.state
            .mirror_flushing
            .then(|| self.state.mirror.as_ref().map(|m| m.mirror_id.clone()))
            .flatten()
    }

    /// The replica of mirror `mirror_id` was synced (`Ok`) or the sync
    /// failed: record the mirror complete durably, or not complete with a
    /// warning. Nothing happens when another mirror started meanwhile.
    pub fn mirror_flushed(&mut self, mirror_id: &str, synced: std::io::Result<()>) -> Result<()> {
        if self.flush_pending().as_deref() != Some(mirror_id) {
            return Ok(());
        }
        self.state.mirror_flushing = false;
        if let Err(e) = synced {
            self.state.mirror_complete = false;
            self.state.warning = Some(format!(
                "syncing the replica of mirror {mirror_id}: {e}; the mirror is not complete, the source's next mirror repairs it (restart `standin protect`)"
            ));
            tracing::warn!(
                mirror = mirror_id,
                "syncing the replica: {e}; the mirror is not complete"
            );
        } else {
            info!(mirror = mirror_id, "mirror complete and synced");
        }
        self.save_ctx()
    }
}

/// `syncfs` of the filesystem that holds the directory `dir` (a replica
/// whose mirror completed, see [`Store::mirror_flushed`]).
pub(crate) fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::fs::syncfs(&fd)?;
    Ok(())
}

/// The content digest (BLAKE3-256, `standin_builder::hash::content_digest`)
/// of each `File` record's data (`None` for other records), for
/// [`Store::receive_hashed`].
pub fn file_data_digests(cs: &ChangeSet) -> Vec<Option<Digest32>> {
    cs.records
        .iter()
        .map(|r| match r {
            Record::File { data, .. } => Some(standin_builder::hash::content_digest(data)),
            _ => None,
        })
        .collect()
}

fn under(p: &[u8], base: &[u8]) -> bool {
    p == base || (p.len() > base.len() && p.starts_with(base) && p[base.len()] == b'/')
}

/// Track the content digest each file must have at the end of the set.
fn track(pending: &mut BTreeMap<Vec<u8>, Digest32>, r: &Record) {
    match r {
        Record::WriteExtent {
            path,
            content_digest,
            ..
        }
        | Record::Truncate {
            path,
            content_digest,
            ..
        } => match content_digest {
            Some(d) => {
                pending.insert(path.clone(), *d);
            }
            // A later record of this file carries the digest; an earlier
            // expectation no longer holds.
            None => {
                pending.remove(path);
            }
        },
        Record::Create(e) | Record::File { entry: e, .. } => {
            pending.retain(|k, _| !under(k, &e.path))
        }
        Record::Delete { path } => pending.retain(|k, _| !under(k, path)),
        Record::Link { new, .. } => {
            pending.remove(new);
        }
        Record::Rename { from, to } => {
            pending.retain(|k, _| !under(k, to));
            let moved: Vec<(Vec<u8>, Digest32)> = pending
                .iter()
                .filter(|(k, _)| under(k, from))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            pending.retain(|k, _| !under(k, from));
            for (k, v) in moved {
                let mut n = to.clone();
                n.extend_from_slice(&k[from.len()..]);
                pending.insert(n, v);
            }
        }
        Record::SetMetadata(_) => {}
    }
}

mod replay;
pub use replay::{replay_locked, replay_pending};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod create_tests;
