//! The mirror: make the target's replica equal to the source's tree,
//! streaming: entries leave as change sets as soon as the target has said
//! whether they differ, so scanning, comparing, reading and sending
//! overlap and the agent's memory is bounded by the pipeline, not by the
//! tree ([`sink`]).
//!
//! 1. **Probe**: on a second connection the root's entry alone goes to the
//!    target ([`MirrorEntries`] batch 1), then an empty batch (which asks
//!    for the replica's paths the source did not list). When the target
//!    answers that the replica's root is missing or holds nothing else,
//!    the replica is empty and nothing needs
//!    comparing (**empty-replica path**): the tree is walked without
//!    hashing and every entry is created; each file is hashed once, while
//!    it is read for its record, and the root digest is built from those
//!    digests (the same definition as builder's manifest).
//! 2. **Compare** (otherwise): the root is scanned and hashed (builder's
//!    `scan_tree_cached`) while its entries stream to the target in
//!    batches; the target answers what differs ([`MirrorDiff`]). For files
//!    whose content differs in checksum mode, the source hashes their
//!    blocks and keeps the numbers of the blocks whose digest differs from
//!    the target's. An empty batch at the end asks for the paths the
//!    replica holds that the source does not.
//! 3. **Send**, interleaved with 1–2: `MirrorStart`, then ordinary change
//!    sets, in tree order Create/File/WriteExtent/Truncate/SetMetadata/Link
//!    records for what differs; a directory's metadata when the walk leaves
//!    it; at the end deletes of the extra paths and the metadata of their
//!    parents. `MirrorEnd` carries the source's root digest; the target
//!    marks the mirror complete only when its replica's digest matches.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use standin_builder::entry::{Entry, Kind};
use standin_builder::manifest::FileBlocks;
use standin_builder::progress::Progress;
use standin_builder::scan::{ScanOptions, Scanner};
use standin_link::message::{
    DiffItem, Message, MirrorBase, MirrorDiff, MirrorEnd, MirrorEntries, MirrorMode, MirrorStart,
    Role,
};

mod files;
pub mod index;
pub mod lean;
mod sets;
mod sink;

use sets::SetWriter;
use sink::{Item, Sink};

use crate::bwlimit::{Bucket, BwLimit};
use crate::link::{connect, Connection, LinkConfig, Sender};

/// Largest block of a checksum mirror (see `mirror_block_size`).
pub const DEFAULT_BLOCK_SIZE: u32 = standin_link::message::DEFAULT_MIRROR_BLOCK_SIZE;
/// Entries per comparison batch (and per batch of the empty-replica walk).
pub const BATCH_ENTRIES: usize = 1000;
/// Manifest batches sent ahead of the target's answers.
const PIPELINE: usize = 4;
const BATCH_BLOCKS: u64 = 64 << 10;
/// A difference mirror's changes wait at most this long for more before
/// they leave as a change set, so the target applies them while the
/// agent still walks and compares (instead of one set at the end).
const SET_AGE: std::time::Duration = std::time::Duration::from_millis(75);
/// The same for a full mirror over a replica that is not empty: its sets
/// fill with whole files and its throughput depends on big sets.
const SET_AGE_FULL: std::time::Duration = std::time::Duration::from_millis(300);
/// Set to a file's path to hold the comparison's scan after its first
/// batch while the file exists (tests: what was compared leaves as a set
/// while the scan has not ended).
pub const SCAN_HOLD_ENV: &str = "STANDIN_TEST_SCAN_HOLD";

/// Holds the calling thread while the file named by [`SCAN_HOLD_ENV`]
/// exists (at most a minute).
fn scan_hold() {
    if let Some(h) = standin_builder::test_hold::file_of(SCAN_HOLD_ENV) {
        standin_builder::test_hold::wait_while_exists(Path::new(&h));
    }
}

/// How to mirror.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// The tree to protect (`/`).
    pub root: PathBuf,
    /// What the scan leaves out.
    pub scan: ScanOptions,
    pub mode: MirrorMode,
    pub block_size: u32,
    pub bwlimit: Option<BwLimit>,
    /// Where the source's digest cache lives (`digests.bin` in the agent's
    /// state directory); `None` keeps no cache between runs.
    pub digest_cache: Option<PathBuf>,
    /// Hash every file, ignoring remembered digests (`--verify-all`).
    pub verify_all: bool,
}

/// What a mirror did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MirrorReport {
    pub mirror_id: String,
    pub mode: String,
    /// Entries in the source's tree.
    pub entries: u64,
    /// Bytes of regular files in the source's tree.
    pub tree_bytes: u64,
    pub root_digest: String,
    /// Entries that differed (created, rewritten, patched or re-stamped).
    pub changed: u64,
    /// Paths deleted on the target.
    pub deleted: u64,
    /// File data put into change sets.
    pub data_bytes: u64,
    /// Bytes on the wire for the comparison: manifest batches sent.
    pub compare_bytes_sent: u64,
    /// The target's answers (payload size before compression, an upper bound).
    pub compare_bytes_received: u64,
    /// Bytes on the wire for change sets and control during the mirror.
    pub bytes_sent: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub complete: bool,
    pub reason: Option<String>,
    pub seconds: f64,
    /// Regular files whose remembered digest was used (unchanged stamp).
    pub digests_reused: u64,
    /// Regular files read and hashed by the scan (or, on the empty-replica
    /// path, while read for their records).
    pub files_hashed: u64,
    /// The replica was empty: nothing was compared and each file was read
    /// and hashed once.
    pub empty_replica: bool,
    /// Most entries held at once between the comparison and the change
    /// sets (bounded by the pipeline: two batches, not the tree).
    pub max_plan_entries: u64,
    /// The target accepted the last mirror as the base: only what changed
    /// since was read and listed (a sparse mirror).
    pub base_used: bool,
    /// Entries listed to the target for comparison (all of them unless
    /// the base was used).
    pub entries_listed: u64,
    /// Entries taken from the mirror index unread (sparse mirror).
    pub entries_reused: u64,
    /// Paths gone since the base (sparse mirror; topmost only).
    pub entries_gone: u64,
    /// Why a sparse mirror was not enough and an ordinary comparison ran
    /// right after it (in this report), if it happened.
    pub sparse_retry: Option<String>,
}

/// What to send for one entry.
#[derive(Debug)]
enum Action {
    /// Create the entry; files get their whole content.
    Create,
    Metadata,
    /// Patch these blocks; then the content has this content digest (BLAKE3).
    Blocks(Vec<u64>, [u8; 32]),
    /// Unchanged directory or hard link: a directory's metadata is sent
    /// again when entries were created in it; a link is made again when
    /// its group's first member was recreated.
    Keep,
}

/// Run a mirror over `sender`'s link. The caller starts change capture
/// before calling this, so nothing changed during the mirror is missed.
///
/// When the agent's mirror index describes the replica as the last
/// completed mirror left it and the target confirms that base, only what
/// changed since is read and listed (sparse mirror, [`lean`]); when that
/// mirror's end finds the replica otherwise, an ordinary comparison mirror
/// runs at once.
pub async fn mirror(
    sender: &Sender,
    link: &LinkConfig,
    opts: &MirrorOptions,
    progress: Arc<dyn Progress>,
) -> Result<MirrorReport> {
    let first = mirror_once(sender, link, opts, progress.clone(), true).await?;
    if !first.base_used || first.complete {
        return Ok(first);
    }
    let why = first
        .reason
        .clone()
        .unwrap_or_else(|| "the target did not complete it".into());
    tracing::warn!(
        "the sparse mirror did not complete ({why}); running a comparison mirror of the whole tree now"
    );
    let mut again = mirror_once(sender, link, opts, progress, false).await?;
    // The report is the invocation's: what both mirrors did.
    again.sparse_retry = Some(why);
    again.seconds += first.seconds;
    again.changed += first.changed;
    again.deleted += first.deleted;
    again.data_bytes += first.data_bytes;
    again.bytes_sent += first.bytes_sent;
    again.compare_bytes_sent += first.compare_bytes_sent;
    again.compare_bytes_received += first.compare_bytes_received;
    again.files_hashed += first.files_hashed;
    Ok(again)
}

/// The target's identity as the index records it (the pinned fingerprints).
fn target_identity(link: &LinkConfig) -> String {
    let mut t: Vec<String> = link.trust.iter().map(|f| f.to_string()).collect();
    t.sort();
    t.join(",")
}

/// The mirror index to offer as the base, when there is a usable one.
fn open_index(opts: &MirrorOptions, tree: &str, target: &str) -> Option<index::Reader> {
    if opts.mode == MirrorMode::Full || opts.verify_all {
        return None;
    }
    let path = index::path_beside(opts.digest_cache.as_deref()?);
    match index::Reader::open(&path, tree, target) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(
                file = %path.display(),
                "ignoring the mirror index: {why}; the whole tree is compared"
            );
            None
        }
    }
}

async fn mirror_once(
    sender: &Sender,
    link: &LinkConfig,
    opts: &MirrorOptions,
    progress: Arc<dyn Progress>,
    allow_base: bool,
) -> Result<MirrorReport> {
    let started = Instant::now();
    let wire0 = sender.stats().bytes_sent;
    let tree = crate::digests::tree_id(&opts.root);
    let target = target_identity(link);
    let index_path = opts.digest_cache.as_deref().map(index::path_beside);
    // The index is checked (one pass over it) while the connection opens.
    let opening = allow_base.then(|| {
        let (opts, tree, target) = (opts.clone(), tree.clone(), target.clone());
        tokio::task::spawn_blocking(move || open_index(&opts, &tree, &target))
    });
    let mut conn = connect(link, Role::Agent)
        .await
        .context("opening the comparison connection")?;
    let offered = match opening {
        Some(t) => t.await.context("mirror index task")?,
        None => None,
    };
    let mut base = None;
    if let Some(r) = offered {
        match offer_base(&mut conn, &r.base).await? {
            Some(true) => base = Some(r),
            Some(false) => {}
            // An older target: it closed the connection; open another.
            None => {
                conn = connect(link, Role::Agent)
                    .await
                    .context("opening the comparison connection")?;
            }
        }
    }
    let wire_block = if opts.mode == MirrorMode::Checksum {
        opts.block_size
    } else {
        0
    };
    let mut cmp = Compare {
        conn: &mut conn,
        sent: 0,
        received: 0,
        batch: 0,
        wire_block,
    };
    let sparse = base.is_some();
    let empty = !sparse && cmp.replica_is_empty(&opts.root).await?;
    let fresh_index = index_path.as_deref().and_then(|p| {
        index::Writer::create(p, &tree)
            .map_err(|e| tracing::warn!("{e:#}; the next mirror compares the whole tree"))
            .ok()
    });
    let mirror_id = uuid::Uuid::new_v4().to_string();
    let first_seq = sender.next_seq();
    // The totals are not known before the walk. Onto an empty replica
    // every file is sent, so a counting scan in the background gives the
    // bar and the target's status a percent; `MirrorStart` is sent again
    // with them (the target keeps what it applied). A difference mirror
    // sends what the comparison finds: no totals until it completes.
    let start = MirrorStart {
        mirror_id: mirror_id.clone(),
        mode: opts.mode,
        total_entries: 0,
        total_bytes: 0,
        first_seq,
    };
    sender
        .mirror_start(start.clone())
        .await
        .context("starting the mirror on the target")?;
    let counting = empty.then(|| Counting::start(opts, start));
    progress.phase("mirroring", None, None);
    let out = SetWriter::new(
        sender,
        Bucket::new(opts.bwlimit),
        first_seq.saturating_sub(1),
        progress.clone(),
    );
    let track_links = !empty && opts.mode != MirrorMode::Full;
    let mut sink = Sink::new(out, opts.root.clone(), opts.block_size, empty, track_links);
    let mut report = MirrorReport {
        mirror_id: mirror_id.clone(),
        mode: format!("{:?}", opts.mode).to_lowercase(),
        first_seq,
        empty_replica: empty,
        base_used: sparse,
        ..Default::default()
    };
    let fresh_index = if empty {
        drop(conn);
        sink.fresh = crate::digests::create(opts.digest_cache.as_deref(), &tree);
        sink.index = fresh_index;
        walk_empty(opts, &mut sink, progress.clone(), counting).await?;
        crate::digests::commit(sink.fresh.take());
        let (root_digest, entries, bytes) = sink
            .digest
            .take()
            .expect("an empty-replica sink builds the root digest")
            .finish();
        report.root_digest = root_digest;
        report.entries = entries;
        report.entries_listed = entries;
        report.tree_bytes = bytes;
        report.files_hashed = sink.files_read;
        sink.index.take()
    } else {
        let done = cmp
            .stream(opts, &mut sink, progress.clone(), base, fresh_index)
            .await?;
        report.compare_bytes_sent = cmp.sent;
        report.compare_bytes_received = cmp.received;
        report.root_digest = done.root_digest;
        report.entries = done.entries;
        report.tree_bytes = done.total_bytes;
        report.digests_reused = done.counts.reused;
        report.files_hashed = done.counts.hashed;
        report.entries_listed = done.listed;
        report.entries_reused = done.reused;
        report.entries_gone = done.gone;
        done.fresh
    };
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "mirror: all sent"
    );
    sink.out.flush().await?;
    let last_seq = sink.out.last_seq;
    report.data_bytes = sink.out.data;
    report.changed = sink.changed;
    report.deleted = sink.deleted;
    report.max_plan_entries = sink.max_pending as u64;
    drop(sink);
    if last_seq >= first_seq {
        sender
            .wait_acked(last_seq)
            .await
            .context("waiting for the target to apply the mirror")?;
    }
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "mirror: data applied"
    );
    progress.phase("verifying the replica on the target", None, None);
    let done = sender
        .mirror_end(MirrorEnd {
            mirror_id: mirror_id.clone(),
            last_seq,
            root_digest: Some(report.root_digest.clone()),
        })
        .await
        .context("ending the mirror on the target")?;
    progress.finish();
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "mirror: root digest checked"
    );
    report.last_seq = last_seq;
    report.complete = done.complete;
    report.reason = done.reason;
    report.bytes_sent = sender.stats().bytes_sent - wire0;
    report.seconds = started.elapsed().as_secs_f64();
    // The index describes this mirror's replica only once it is complete.
    match (fresh_index, report.complete) {
        (Some(w), true) => {
            let b = index::Base {
                mirror_id,
                root_digest: report.root_digest.clone(),
                last_seq,
                target,
            };
            if let Err(e) = w.commit(&b) {
                tracing::warn!("{e:#}; the next mirror compares the whole tree");
            }
        }
        _ => {
            if let Some(p) = &index_path {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    Ok(report)
}

/// Offer the index's base to the target: `Some(accepted)`, or `None` when
/// the target does not know the message (it closed the connection).
async fn offer_base(conn: &mut Connection, base: &index::Base) -> Result<Option<bool>> {
    let msg = Message::MirrorBase(MirrorBase {
        mirror_id: base.mirror_id.clone(),
        root_digest: base.root_digest.clone(),
        last_seq: base.last_seq,
    });
    conn.send(&msg).await?;
    match conn.recv().await {
        Ok(Message::MirrorBaseAnswer(a)) => {
            match &a.reason {
                Some(why) if !a.accepted => tracing::info!(
                    "the target refused the last mirror as the base ({why}); the whole tree is compared"
                ),
                _ => tracing::debug!(accepted = a.accepted, "mirror base answered"),
            }
            Ok(Some(a.accepted))
        }
        Ok(other) => {
            tracing::info!(
                "the target answered the mirror base with {}; the whole tree is compared",
                other.name()
            );
            Ok(None)
        }
        Err(e) => {
            tracing::info!(
                "the target did not answer the mirror base ({e:#}); the whole tree is compared"
            );
            Ok(None)
        }
    }
}

fn abs_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// The empty-replica path: walk without hashing, create everything.
/// A counting scan running beside an empty-replica mirror.
struct Counting {
    rx: tokio::sync::oneshot::Receiver<standin_builder::count::Totals>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: MirrorStart,
}

impl Counting {
    fn start(opts: &MirrorOptions, start: MirrorStart) -> Counting {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (root, scan, halt) = (opts.root.clone(), opts.scan.clone(), stop.clone());
        std::thread::spawn(move || {
            if let Some(t) = standin_builder::count::count_tree(&root, &scan, &halt) {
                let _ = tx.send(t);
            }
        });
        Counting { rx, stop, start }
    }

    /// The count is done: the bar's totals, and the target's.
    async fn send(
        &self,
        t: standin_builder::count::Totals,
        sink: &mut Sink<'_>,
        progress: &dyn Progress,
    ) -> Result<()> {
        progress.totals(Some(t.bytes), Some(t.entries));
        let mut m = self.start.clone();
        m.total_entries = t.entries;
        m.total_bytes = t.bytes;
        sink.out
            .sender
            .mirror_start(m)
            .await
            .context("sending the mirror's totals to the target")
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn walk_empty(
    opts: &MirrorOptions,
    sink: &mut Sink<'_>,
    progress: Arc<dyn Progress>,
    mut counting: Option<Counting>,
) -> Result<()> {
    let bar = progress.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Item>>(2);
    let root = opts.root.clone();
    let scan_opts = opts.scan.clone();
    let walk = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut batch = Vec::with_capacity(BATCH_ENTRIES);
        let mut n = 1u64;
        for s in Scanner::new(&root, &scan_opts, progress.as_ref())? {
            let s = s?;
            let istamp = index::EntryStamp::of_scanned(&s.entry, &s.inode);
            batch.push(Item {
                entry: s.entry,
                action: Action::Create,
                batch: n,
                stamp: s.stamp,
                istamp: Some(istamp),
            });
            if batch.len() >= BATCH_ENTRIES {
                n += 1;
                if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok(())
    });
    enum Next {
        Items(Option<Vec<Item>>),
        Counted(Option<standin_builder::count::Totals>),
    }
    loop {
        let next = match counting.as_mut() {
            Some(c) => tokio::select! {
                t = &mut c.rx => Next::Counted(t.ok()),
                items = rx.recv() => Next::Items(items),
            },
            None => Next::Items(rx.recv().await),
        };
        let items = match next {
            Next::Counted(t) => {
                if let (Some(t), Some(c)) = (t, counting.take()) {
                    c.send(t, sink, bar.as_ref()).await?;
                }
                continue;
            }
            Next::Items(None) => break,
            Next::Items(Some(items)) => items,
        };
        let n = items.first().map(|i| i.batch).unwrap_or(0);
        for item in items {
            sink.push(item);
        }
        sink.drain_before(n).await?;
    }
    walk.await.context("walk task")??;
    // The walk is over, so the count of the same tree is about to be: the
    // last sets still draw a bar with a percent.
    if let Some(mut c) = counting.take() {
        if let Ok(t) = (&mut c.rx).await {
            c.send(t, sink, bar.as_ref()).await?;
        }
    }
    sink.finish(Vec::new()).await
}

/// What the comparison's scan gave.
struct Streamed {
    root_digest: String,
    entries: u64,
    total_bytes: u64,
    counts: standin_builder::manifest::CacheCounts,
    listed: u64,
    reused: u64,
    gone: u64,
    fresh: Option<index::Writer>,
}

/// The comparison connection.
struct Compare<'c> {
    conn: &'c mut Connection,
    /// Bytes of manifest batches sent, answers received.
    sent: u64,
    received: u64,
    /// Last batch number used.
    batch: u64,
    wire_block: u32,
}

impl Compare<'_> {
    async fn send(&mut self, entries: Vec<Entry>) -> Result<(u64, Vec<Entry>)> {
        self.send_gone(entries, Vec::new()).await
    }

    async fn send_gone(
        &mut self,
        entries: Vec<Entry>,
        gone: Vec<Vec<u8>>,
    ) -> Result<(u64, Vec<Entry>)> {
        self.batch += 1;
        let msg = Message::MirrorEntries(MirrorEntries {
            batch: self.batch,
            entries,
            block_size: self.wire_block,
            gone,
        });
        self.sent += self.conn.send(&msg).await? as u64;
        let Message::MirrorEntries(MirrorEntries { entries, .. }) = msg else {
            unreachable!()
        };
        Ok((self.batch, entries))
    }

    async fn answer(&mut self, b: u64) -> Result<MirrorDiff> {
        let answer = self.conn.recv().await?;
        self.received += answer
            .encode()
            .map(|(_, p)| p.len() as u64 + 6)
            .unwrap_or(0);
        match answer {
            Message::MirrorDiff(d) if d.batch == b => Ok(d),
            other => bail!(
                "expected the target's comparison of batch {b}, got {}",
                other.name()
            ),
        }
    }

    /// Send the root's entry alone, then an empty batch: the replica is
    /// empty when the target answers that its root is missing, or that it
    /// holds nothing beneath it that the source did not list. The target's
    /// comparison goes on afterwards as if nothing happened (paths it has
    /// seen stay seen; the extras are listed again at the end).
    async fn replica_is_empty(&mut self, root: &Path) -> Result<bool> {
        let e = standin_builder::scan::stat_entry(root, Vec::new(), &mut HashMap::new())
            .with_context(|| format!("reading root {}", root.display()))?
            .with_context(|| format!("root {} is not a directory", root.display()))?;
        let (b, _) = self.send(vec![e]).await?;
        let d = self.answer(b).await?;
        if d.items
            .iter()
            .any(|i| i.path.is_empty() && i.state == "missing")
        {
            return Ok(true);
        }
        let (b, _) = self.send(Vec::new()).await?;
        Ok(self.answer(b).await?.items.is_empty())
    }

    /// Scan and hash, stream the manifest, hand what differs to `sink`.
    /// With `base` (accepted by the target) the scan is the lean one and
    /// lists only what changed since. Every entry goes to `index`.
    async fn stream(
        &mut self,
        opts: &MirrorOptions,
        sink: &mut Sink<'_>,
        progress: Arc<dyn Progress>,
        base: Option<index::Reader>,
        index: Option<index::Writer>,
    ) -> Result<Streamed> {
        // A lean scan's batches are small (what changed): it may run
        // further ahead of the comparison, hashing while the target answers.
        let ahead = if base.is_some() { 32 } else { 4 };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<lean::Batch>(ahead);
        let root = opts.root.clone();
        let scan_opts = opts.scan.clone();
        let bs = opts.block_size.max(1);
        let cache_file = opts.digest_cache.clone();
        let trust = !opts.verify_all;
        let checksum = opts.mode == MirrorMode::Checksum;
        let scan = tokio::task::spawn_blocking(move || -> Result<Streamed> {
            let t0 = Instant::now();
            let block_size = move |size: u64| standin_link::message::mirror_block_size(size, bs);
            let mut first = true;
            if let Some(base) = base {
                let mut emit = |b: lean::Batch| -> Result<()> {
                    if tx.blocking_send(b).is_err() {
                        bail!("the comparison stopped");
                    }
                    if std::mem::take(&mut first) {
                        scan_hold();
                    }
                    Ok(())
                };
                let (sum, gone) = lean::scan(
                    &root,
                    &scan_opts,
                    base,
                    index,
                    checksum.then_some(&block_size as &(dyn Fn(u64) -> u64 + Sync)),
                    progress.as_ref(),
                    &mut emit,
                )?;
                tracing::debug!(
                    ms = t0.elapsed().as_millis() as u64,
                    listed = sum.listed,
                    reused = sum.reused,
                    gone = sum.gone,
                    hashed = sum.hashed,
                    "mirror: lean scan"
                );
                // The end of the listing carries the last gone paths.
                if tx.blocking_send((Vec::new(), Vec::new(), gone)).is_err() {
                    bail!("the comparison stopped");
                }
                return Ok(Streamed {
                    root_digest: sum.root_digest,
                    entries: sum.entries,
                    total_bytes: sum.total_bytes,
                    counts: standin_builder::manifest::CacheCounts {
                        reused: sum.digests_reused,
                        hashed: sum.hashed,
                    },
                    listed: sum.listed,
                    reused: sum.reused,
                    gone: sum.gone,
                    fresh: sum.fresh,
                });
            }
            let tree = crate::digests::tree_id(&root);
            let cache = crate::digests::open(cache_file.as_deref(), &tree);
            let fresh = crate::digests::create(cache_file.as_deref(), &tree);
            let mut index = index;
            let mut batch = Vec::new();
            let mut batch_blocks: Vec<FileBlocks> = Vec::new();
            let mut blocks = 0u64;
            let mut listed = 0u64;
            // A file that changed since the digest cache remembered it
            // gets its block digests from the scan's read (checksum mode),
            // so its blocks are compared without reading it again when its
            // batch is answered.
            let scanned = standin_builder::manifest::scan_tree_cached(
                &root,
                &scan_opts,
                progress.as_ref(),
                cache,
                fresh,
                trust,
                checksum.then_some(&block_size as &(dyn Fn(u64) -> u64 + Sync)),
                |e, inode, b| {
                    if let Some(w) = index.as_mut() {
                        if let Err(err) = w.add_scanned(e, inode) {
                            tracing::warn!("{err:#}; the next mirror compares the whole tree");
                            index = None;
                        }
                    }
                    listed += 1;
                    blocks += e.size / standin_link::message::mirror_block_size(e.size, bs) + 1;
                    batch.push(e.clone());
                    batch_blocks.push(b.take());
                    if batch.len() >= BATCH_ENTRIES || blocks >= BATCH_BLOCKS {
                        blocks = 0;
                        let out = (
                            std::mem::take(&mut batch),
                            std::mem::take(&mut batch_blocks),
                            Vec::new(),
                        );
                        if tx.blocking_send(out).is_err() {
                            bail!("the comparison stopped");
                        }
                        if std::mem::take(&mut first) {
                            scan_hold();
                        }
                    }
                    Ok(())
                },
            )?;
            if !batch.is_empty() && tx.blocking_send((batch, batch_blocks, Vec::new())).is_err() {
                bail!("the comparison stopped");
            }
            tracing::debug!(ms = t0.elapsed().as_millis() as u64, "mirror: scanned");
            crate::digests::commit(scanned.fresh);
            Ok(Streamed {
                root_digest: scanned.summary.root_digest,
                entries: scanned.summary.entry_count,
                total_bytes: scanned.summary.total_bytes,
                counts: scanned.counts,
                listed,
                reused: 0,
                gone: 0,
                fresh: index,
            })
        });
        // Batches sent and not answered yet (the target answers in order), so
        // the target compares while the source scans and the link is never idle.
        let mut inflight: std::collections::VecDeque<(u64, Vec<Entry>, Vec<FileBlocks>)> =
            Default::default();
        let mut scan_done = false;
        let age = if opts.mode == MirrorMode::Full {
            SET_AGE_FULL
        } else {
            SET_AGE
        };
        // Since when compared changes wait in the sink unsent (the oldest).
        let mut held: Option<Instant> = None;
        let extras = loop {
            // Send what the scan has ready (at most PIPELINE ahead); wait for
            // the scan only when nothing is in flight.
            while !scan_done && inflight.len() < PIPELINE {
                let next = if inflight.is_empty() {
                    // While the scan is slower than the comparison, what was
                    // compared leaves once it has waited `age`.
                    Some(loop {
                        let Some(since) = held else {
                            break rx.recv().await.unwrap_or_default();
                        };
                        tokio::select! {
                            b = rx.recv() => break b.unwrap_or_default(),
                            _ = tokio::time::sleep_until((since + age).into()) => {
                                sink.drain_before(u64::MAX).await?;
                                sink.out.flush().await?;
                                held = None;
                            }
                        }
                    })
                } else {
                    match rx.try_recv() {
                        Ok(b) => Some(b),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            Some(Default::default())
                        }
                    }
                };
                let Some((entries, blocks, gone)) = next else {
                    break;
                };
                scan_done = entries.is_empty();
                let (b, entries) = self.send_gone(entries, gone).await?;
                inflight.push_back((b, entries, blocks));
            }
            let (b, entries, blocks) = inflight.pop_front().expect("a batch is in flight");
            let last = entries.is_empty();
            let diff = self.answer(b).await?;
            if last {
                break diff.items.into_iter().map(|i| i.path).collect();
            }
            let items = plan_batch(opts, b, entries, blocks, diff.items).await?;
            if !items.is_empty() && held.is_none() {
                held = Some(Instant::now());
            }
            for item in items {
                sink.push(item);
            }
            // Write the batch before this one while this one is read.
            sink.drain_before(b).await?;
            if held.is_some_and(|t| t.elapsed() >= age) {
                sink.out.flush().await?;
                // What is left is this batch's, compared just now.
                held = sink.holds().then(Instant::now);
            }
        };
        let streamed = scan.await.context("scan task")??;
        sink.finish(extras).await?;
        Ok(streamed)
    }
}

/// What to send for the entries of one answered batch; for files whose
/// content differs in checksum mode, which blocks (compared with the
/// scan's block digests `scanned` when it took them, else read).
async fn plan_batch(
    opts: &MirrorOptions,
    batch: u64,
    entries: Vec<Entry>,
    scanned: Vec<FileBlocks>,
    answer: Vec<DiffItem>,
) -> Result<Vec<Item>> {
    let mut by_path: HashMap<Vec<u8>, DiffItem> =
        answer.into_iter().map(|i| (i.path.clone(), i)).collect();
    let mut items = Vec::new();
    let mut blocks = Vec::new();
    let mut scanned = scanned.into_iter();
    for e in entries {
        let theirs = scanned.next().flatten();
        let item = by_path.remove(&e.path);
        let state = item.as_ref().map(|i| i.state.as_str()).unwrap_or("same");
        let action = match (opts.mode, state) {
            (MirrorMode::Full, _) => Action::Create,
            (_, "missing") => Action::Create,
            (_, "metadata") => Action::Metadata,
            (MirrorMode::Checksum, "content") if e.sparse.is_none() => {
                let target = item.as_ref().map(|i| i.blocks.as_slice()).unwrap_or(&[]);
                match scanned_blocks(&e, theirs, opts.block_size, target) {
                    Some(action) => {
                        items.push(Item {
                            entry: e,
                            action,
                            batch,
                            stamp: None,
                            istamp: None,
                        });
                        blocks.push(Vec::new());
                        continue;
                    }
                    None => Action::Blocks(Vec::new(), [0; 32]),
                }
            }
            (_, "content") => Action::Create,
            (_, "same") if e.kind == Kind::Dir || e.link.is_some() => Action::Keep,
            (_, "same") => continue,
            (_, other) => bail!(
                "the target answered {other:?} for {}; upgrade standin on both sides",
                e.display_path()
            ),
        };
        blocks.push(match action {
            Action::Blocks(..) => item.map(|i| i.blocks).unwrap_or_default(),
            _ => Vec::new(),
        });
        items.push(Item {
            entry: e,
            action,
            batch,
            stamp: None,
            istamp: None,
        });
    }
    if !items
        .iter()
        .any(|i| matches!(&i.action, Action::Blocks(_, sha) if *sha == [0; 32]))
    {
        return Ok(items);
    }
    let root = opts.root.clone();
    let block_size = opts.block_size;
    tokio::task::spawn_blocking(move || -> Result<Vec<Item>> {
        items
            .par_iter_mut()
            .zip(blocks.par_iter())
            .filter(|(i, _)| matches!(&i.action, Action::Blocks(_, sha) if *sha == [0; 32]))
            .try_for_each(|(i, target)| -> Result<()> {
                let abs = abs_path(&root, &i.entry.path);
                let bs = standin_link::message::mirror_block_size(i.entry.size, block_size);
                i.action = sets::diff_blocks(&abs, bs, target)
                    .with_context(|| format!("reading {}", abs.display()))?;
                Ok(())
            })?;
        Ok(items)
    })
    .await
    .context("block comparison task")?
}

/// The blocks of `e` that differ from the target's `target` block digests,
/// from the scan's block digests `scanned` of the same read that gave
/// `e`'s content digest; `None` when the scan did not take them (or with another
/// block size or count): then the file is read.
fn scanned_blocks(
    e: &Entry,
    scanned: FileBlocks,
    max_block: u32,
    target: &[[u8; 16]],
) -> Option<Action> {
    let (bs, ours) = scanned?;
    if bs != standin_link::message::mirror_block_size(e.size, max_block)
        || ours.len() as u64 != e.size.div_ceil(bs)
    {
        return None;
    }
    let sha: [u8; 32] = hex::decode(e.sha256.as_deref()?).ok()?.try_into().ok()?;
    if sha == [0; 32] {
        return None;
    }
    let differ = ours
        .iter()
        .enumerate()
        .filter(|(i, b)| target.get(*i) != Some(*b))
        .map(|(i, _)| i as u64)
        .collect();
    Some(Action::Blocks(differ, sha))
}
