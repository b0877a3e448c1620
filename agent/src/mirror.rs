//! The mirror: make the target's replica equal to the source's tree.
//!
//! 1. **Compare**: the root is scanned and hashed (builder's `scan_tree`)
//!    while its entries stream to the target in [`MirrorEntries`] batches on
//!    a second connection; the target answers what differs ([`MirrorDiff`]),
//!    and an empty batch at the end asks for the paths it holds that the
//!    source does not. Only entries that differ (plus directories and hard
//!    links) are kept in memory.
//! 2. **Plan**: for files whose content differs in checksum mode, the source
//!    hashes its blocks and keeps the numbers of the blocks whose sha256
//!    differs from the target's.
//! 3. **Send**: `MirrorStart`, then ordinary change sets (so the mirror is
//!    journaled and crash-safe on the target like replication): deletes of
//!    extra paths, then in tree order Create/WriteExtent/Truncate/
//!    SetMetadata/Link records for what differs, then the metadata of the
//!    directories whose content changed. `MirrorEnd` carries the source's
//!    root digest; the target marks the mirror complete only when its
//!    replica's digest matches.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use standin_builder::changeset::Record;
use standin_builder::entry::{Entry, Kind};
use standin_builder::progress::Progress;
use standin_builder::scan::ScanOptions;
use standin_link::message::{
    DiffItem, Message, MirrorEnd, MirrorEntries, MirrorMode, MirrorStart, Role,
};

mod files;
use files::{whole_file, ReadAhead};

use crate::bwlimit::{Bucket, BwLimit};
use crate::link::{connect, LinkConfig, Sender};

/// Largest block of a checksum mirror (see `mirror_block_size`).
pub const DEFAULT_BLOCK_SIZE: u32 = 128 << 10;
const BATCH_ENTRIES: usize = 1000;
/// Manifest batches sent ahead of the target's answers.
const PIPELINE: usize = 4;
const BATCH_BLOCKS: u64 = 64 << 10;
/// Below the 16 MiB frame limit with room for the records' framing.
const SET_BYTES: usize = 14 << 20;
const SET_RECORDS: usize = 20_000;
const EXTENT: u64 = 4 << 20;
/// Change-set bytes queued (sent, not yet acknowledged) before the mirror
/// waits: enough for the target to apply one set while it reads the next.
const QUEUE_HIGH: u64 = 32 << 20;

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
    /// Regular files read and hashed by the scan.
    pub files_hashed: u64,
}

#[derive(Debug)]
enum Action {
    /// Create the entry; files get their whole content.
    Create,
    Metadata,
    /// Patch these blocks; then the content has this sha256.
    Blocks(Vec<u64>, [u8; 32]),
    /// Unchanged directory or hard link: kept for the directory pass and
    /// for links to files that are recreated.
    Keep,
}

struct Planned {
    entry: Entry,
    action: Action,
    /// Target's block digests (checksum mode, content items).
    target_blocks: Vec<[u8; 16]>,
    /// The differing blocks are known (from the scan's read).
    planned: bool,
}

/// Run a mirror over `sender`'s link. The caller starts change capture
/// before calling this, so nothing changed during the mirror is missed.
pub async fn mirror(
    sender: &Sender,
    link: &LinkConfig,
    opts: &MirrorOptions,
    progress: Arc<dyn Progress>,
) -> Result<MirrorReport> {
    let started = Instant::now();
    let wire0 = sender.stats().bytes_sent;
    let (plan, extras, summary, (compare_bytes, compare_in), counts) =
        compare(link, opts, progress.clone()).await?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "mirror: compared"
    );
    let mut plan = plan;
    let block_size = opts.block_size as u64;
    // Plan block patches.
    progress.phase("comparing blocks", None, None);
    let root = opts.root.clone();
    let plan_done = tokio::task::spawn_blocking(move || -> Result<Vec<Planned>> {
        plan.par_iter_mut()
            .filter(|p| {
                p.entry.kind == Kind::File && matches!(p.action, Action::Blocks(..)) && !p.planned
            })
            .try_for_each(|p| -> Result<()> {
                let abs = abs_path(&root, &p.entry.path);
                let bs = standin_link::message::mirror_block_size(p.entry.size, block_size as u32);
                p.action = diff_blocks(&abs, bs, &p.target_blocks)
                    .with_context(|| format!("reading {}", abs.display()))?;
                p.target_blocks = Vec::new();
                Ok(())
            })?;
        Ok(plan)
    })
    .await
    .context("block comparison task")??;
    let plan = plan_done;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "mirror: blocks planned"
    );
    let data_total: u64 = plan
        .iter()
        .map(|p| match &p.action {
            Action::Create if p.entry.kind == Kind::File && p.entry.link.is_none() => {
                match &p.entry.sparse {
                    Some(ext) => ext.iter().map(|e| e.1).sum(),
                    None => p.entry.size,
                }
            }
            Action::Blocks(b, _) => {
                b.len() as u64
                    * standin_link::message::mirror_block_size(p.entry.size, block_size as u32)
            }
            _ => 0,
        })
        .sum();
    let mirror_id = uuid::Uuid::new_v4().to_string();
    let first_seq = sender.next_seq();
    sender
        .mirror_start(MirrorStart {
            mirror_id: mirror_id.clone(),
            mode: opts.mode,
            total_entries: summary.entry_count,
            total_bytes: data_total,
            first_seq,
        })
        .await
        .context("starting the mirror on the target")?;
    progress.phase("mirroring", Some(data_total), None);
    let mut out = SetWriter {
        sender,
        records: Vec::new(),
        bytes: 0,
        bucket: Bucket::new(opts.bwlimit),
        last_seq: first_seq.saturating_sub(1),
        data: 0,
        progress: progress.clone(),
    };
    let mut report = MirrorReport {
        mirror_id: mirror_id.clone(),
        mode: format!("{:?}", opts.mode).to_lowercase(),
        entries: summary.entry_count,
        tree_bytes: summary.total_bytes,
        root_digest: summary.root_digest.clone(),
        compare_bytes_sent: compare_bytes,
        compare_bytes_received: compare_in,
        first_seq,
        digests_reused: counts.reused,
        files_hashed: counts.hashed,
        ..Default::default()
    };
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    for path in &extras {
        touched.insert(parent_of(path).to_vec());
        out.push(Record::Delete { path: path.clone() }).await?;
        report.deleted += 1;
    }
    let mut recreated: HashSet<Vec<u8>> = HashSet::new();
    let mut ahead = ReadAhead::start(
        plan.iter()
            .filter(|p| matches!(p.action, Action::Create) && whole_file(&p.entry))
            .map(|p| (abs_path(&opts.root, &p.entry.path), p.entry.clone()))
            .collect(),
    );
    for p in &plan {
        let e = &p.entry;
        let action = match (&p.action, &e.link) {
            (Action::Keep, Some(first)) if recreated.contains(first) => &Action::Create,
            (a, _) => a,
        };
        match action {
            Action::Keep => continue,
            Action::Create if matches!(p.action, Action::Create) && whole_file(e) => {
                touched.insert(parent_of(&e.path).to_vec());
                recreated.insert(e.path.clone());
                let read = ahead
                    .next()
                    .await
                    .context("the mirror's reader thread stopped")?;
                match read.with_context(|| format!("reading {}", e.display_path()))? {
                    Some(r) => out.push(r).await?,
                    // Grew past the one-record size since the scan.
                    None => {
                        out.push(Record::Create(e.clone())).await?;
                        send_whole(&mut out, &opts.root, e).await?;
                        out.push(Record::SetMetadata(e.clone())).await?;
                    }
                }
            }
            Action::Create => {
                touched.insert(parent_of(&e.path).to_vec());
                out.push(Record::Create(e.clone())).await?;
                if e.kind == Kind::File && e.link.is_none() {
                    recreated.insert(e.path.clone());
                    if e.size > 0 {
                        send_whole(&mut out, &opts.root, e).await?;
                        out.push(Record::SetMetadata(e.clone())).await?;
                    }
                }
            }
            Action::Metadata => out.push(Record::SetMetadata(e.clone())).await?,
            Action::Blocks(blocks, sha) => {
                let bs = standin_link::message::mirror_block_size(e.size, block_size as u32);
                send_blocks(&mut out, &opts.root, e, blocks, bs, *sha).await?;
                out.push(Record::SetMetadata(e.clone())).await?;
            }
        }
        report.changed += 1;
    }
    // Directory metadata last: creating and deleting entries changed the
    // mtimes of their parents.
    for p in &plan {
        if p.entry.kind == Kind::Dir
            && (!matches!(p.action, Action::Keep) || touched.contains(&p.entry.path))
        {
            out.push(Record::SetMetadata(p.entry.clone())).await?;
        }
    }
    out.flush().await?;
    let last_seq = out.last_seq;
    report.data_bytes = out.data;
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
            mirror_id,
            last_seq,
            root_digest: Some(summary.root_digest.clone()),
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
    Ok(report)
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

type Compared = (
    Vec<Planned>,
    Vec<Vec<u8>>,
    standin_builder::manifest::ManifestSummary,
    (u64, u64),
    standin_builder::manifest::CacheCounts,
);

/// Phase 1: scan, stream the manifest to the target, collect what differs.
async fn compare(
    link: &LinkConfig,
    opts: &MirrorOptions,
    progress: Arc<dyn Progress>,
) -> Result<Compared> {
    let mut conn = connect(link, Role::Agent)
        .await
        .context("opening the comparison connection")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Entry>>(4);
    let root = opts.root.clone();
    let scan_opts = opts.scan.clone();
    let bs = opts.block_size.max(1) as u64;
    let prog = progress.clone();
    let cache_file = opts.digest_cache.clone();
    let trust = !opts.verify_all;
    let checksum = opts.mode == MirrorMode::Checksum;
    let scan = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        prog.phase("scanning", None, None);
        let tree = crate::digests::tree_id(&root);
        let cache = crate::digests::open(cache_file.as_deref(), &tree);
        let fresh = crate::digests::create(cache_file.as_deref(), &tree);
        let mut batch = Vec::new();
        let mut blocks = 0u64;
        let checksum_bs =
            move |size: u64| standin_link::message::mirror_block_size(size, bs as u32);
        let scanned = standin_builder::manifest::scan_tree_cached(
            &root,
            &scan_opts,
            prog.as_ref(),
            cache,
            fresh,
            trust,
            checksum.then_some(&checksum_bs as &(dyn Fn(u64) -> u64 + Sync)),
            |e| {
                blocks += e.size / standin_link::message::mirror_block_size(e.size, bs as u32) + 1;
                batch.push(e.clone());
                if batch.len() >= BATCH_ENTRIES || blocks >= BATCH_BLOCKS {
                    blocks = 0;
                    if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                        bail!("the comparison stopped");
                    }
                }
                Ok(())
            },
        )?;
        if !batch.is_empty() && tx.blocking_send(batch).is_err() {
            bail!("the comparison stopped");
        }
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "mirror: scanned");
        crate::digests::commit(scanned.fresh);
        Ok((scanned.summary, scanned.counts, scanned.blocks))
    });
    let wire_block = if opts.mode == MirrorMode::Checksum {
        opts.block_size
    } else {
        0
    };
    let mut plan = Vec::new();
    let mut n = 0u64;
    let mut sent = 0u64;
    let mut received = 0u64;
    let extras: Vec<Vec<u8>>;
    // Batches sent and not answered yet (the target answers in order), so
    // the target compares while the source scans and the link is never idle.
    let mut inflight: std::collections::VecDeque<(u64, Vec<Entry>)> = Default::default();
    let mut scan_done = false;
    loop {
        // Send what the scan has ready (at most PIPELINE ahead); wait for
        // the scan only when nothing is in flight.
        while !scan_done && inflight.len() < PIPELINE {
            let next = if inflight.is_empty() {
                Some(rx.recv().await.unwrap_or_default())
            } else {
                match rx.try_recv() {
                    Ok(b) => Some(b),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(Vec::new()),
                }
            };
            let Some(entries) = next else { break };
            scan_done = entries.is_empty();
            n += 1;
            let msg = Message::MirrorEntries(MirrorEntries {
                batch: n,
                entries,
                block_size: wire_block,
            });
            sent += conn.send(&msg).await? as u64;
            let Message::MirrorEntries(MirrorEntries { entries, .. }) = msg else {
                unreachable!()
            };
            inflight.push_back((n, entries));
        }
        let (b, entries) = inflight.pop_front().expect("a batch is in flight");
        let last = entries.is_empty();
        let answer = conn.recv().await?;
        received += answer
            .encode()
            .map(|(_, p)| p.len() as u64 + 6)
            .unwrap_or(0);
        let diff = match answer {
            Message::MirrorDiff(d) if d.batch == b => d,
            other => bail!(
                "expected the target's comparison of batch {b}, got {}",
                other.name()
            ),
        };
        if last {
            extras = diff.items.into_iter().map(|i| i.path).collect();
            break;
        }
        let mut by_path: HashMap<Vec<u8>, DiffItem> = diff
            .items
            .into_iter()
            .map(|i| (i.path.clone(), i))
            .collect();
        for e in entries {
            let item = by_path.remove(&e.path);
            let state = item.as_ref().map(|i| i.state.as_str()).unwrap_or("same");
            let action = match (opts.mode, state) {
                (MirrorMode::Full, _) => Action::Create,
                (_, "missing") => Action::Create,
                (_, "metadata") => Action::Metadata,
                (MirrorMode::Checksum, "content") if e.sparse.is_none() => {
                    Action::Blocks(Vec::new(), [0; 32])
                }
                (_, "content") => Action::Create,
                (_, "same") if e.kind == Kind::Dir || e.link.is_some() => Action::Keep,
                (_, "same") => continue,
                (_, other) => bail!(
                    "the target answered {other:?} for {}; upgrade standin on both sides",
                    e.display_path()
                ),
            };
            plan.push(Planned {
                entry: e,
                action,
                target_blocks: item.map(|i| i.blocks).unwrap_or_default(),
                planned: false,
            });
        }
    }
    let (summary, counts, blocks) = scan.await.context("scan task")??;
    // Block digests the scan read with the sha256 (changed files).
    let mut blocks = blocks;
    for p in &mut plan {
        if let (Action::Blocks(..), Some(e)) = (&p.action, p.entry.sha256.as_deref()) {
            if let (Some((_, b)), Ok(sha)) = (blocks.remove(&p.entry.path), hex::decode(e)) {
                if let Ok(sha) = <[u8; 32]>::try_from(sha.as_slice()) {
                    p.action = Action::Blocks(differing(&b, &p.target_blocks), sha);
                    p.target_blocks = Vec::new();
                    p.planned = true;
                }
            }
        }
    }
    Ok((plan, extras, summary, (sent, received), counts))
}

/// The numbers of the source's blocks that differ from the target's.
fn differing(source: &[[u8; 16]], target: &[[u8; 16]]) -> Vec<u64> {
    (0..source.len())
        .filter(|&i| target.get(i) != Some(&source[i]))
        .map(|i| i as u64)
        .collect()
}

/// Which of the source file's blocks differ from the target's; the file's sha256.
fn diff_blocks(abs: &Path, bs: u64, target: &[[u8; 16]]) -> Result<Action> {
    let mut f = File::open(abs)?;
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; bs as usize];
    let mut differ = Vec::new();
    let mut i = 0u64;
    loop {
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got == 0 {
            break;
        }
        whole.update(&buf[..got]);
        let h = Sha256::digest(&buf[..got]);
        if target.get(i as usize).map(|t| &t[..]) != Some(&h[..16]) {
            differ.push(i);
        }
        i += 1;
        if got < buf.len() {
            break;
        }
    }
    Ok(Action::Blocks(differ, whole.finalize().into()))
}

/// Cuts records into change sets and hands them to the sender, with flow
/// control (bounded queue) and the bandwidth limit.
struct SetWriter<'a> {
    sender: &'a Sender,
    records: Vec<Record>,
    bytes: usize,
    bucket: Bucket,
    last_seq: u64,
    data: u64,
    progress: Arc<dyn Progress>,
}

impl SetWriter<'_> {
    async fn push(&mut self, r: Record) -> Result<()> {
        let len = match &r {
            Record::WriteExtent { data, .. } => data.len() + 64,
            Record::File { entry: e, data, .. } => {
                data.len()
                    + 200
                    + e.path.len()
                    + e.xattrs
                        .iter()
                        .map(|(k, v)| k.0.len() + v.0.len() + 8)
                        .sum::<usize>()
            }
            Record::Create(e) | Record::SetMetadata(e) => {
                160 + 2 * e.path.len()
                    + e.target.as_ref().map_or(0, |t| t.len())
                    + e.xattrs
                        .iter()
                        .map(|(k, v)| k.0.len() + v.0.len() + 8)
                        .sum::<usize>()
            }
            _ => 96,
        };
        if let Record::WriteExtent { data, .. } | Record::File { data, .. } = &r {
            self.data += data.len() as u64;
            self.progress.advance(data.len() as u64, 0);
        }
        if self.bytes + len > SET_BYTES || self.records.len() >= SET_RECORDS {
            self.flush().await?;
        }
        self.records.push(r);
        self.bytes += len;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        loop {
            let st = self.sender.stats();
            if st.queue_bytes < QUEUE_HIGH || st.queue_sets == 0 {
                break;
            }
            self.sender.wait_acked(st.last_acked + 1).await?;
        }
        self.bucket.take(self.bytes as u64).await;
        let records = std::mem::take(&mut self.records);
        self.bytes = 0;
        self.last_seq = self
            .sender
            .send(records)
            .map_err(|e| anyhow::anyhow!("queueing a mirror change set: {e}"))?;
        Ok(())
    }
}

fn read_at(f: &File, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Whole content of a (possibly sparse) file: its data extents in pieces;
/// the last piece carries the sha256 of what was sent, or, when the file
/// ends in a hole, a Truncate to its size does.
async fn send_whole(out: &mut SetWriter<'_>, root: &Path, e: &Entry) -> Result<()> {
    let abs = abs_path(root, &e.path);
    let f = File::open(&abs).with_context(|| format!("opening {}", abs.display()))?;
    let extents = e.sparse.clone().unwrap_or_else(|| vec![(0, e.size)]);
    let mut h = Sha256::new();
    let mut pos = 0u64;
    let mut pending: Option<(u64, Vec<u8>)> = None;
    for (off, len) in extents {
        standin_builder::hash::hash_zeros(&mut h, off.saturating_sub(pos));
        let mut o = off;
        while o < off + len {
            let n = EXTENT.min(off + len - o);
            let data = read_at(&f, o, n).with_context(|| format!("reading {}", abs.display()))?;
            if data.is_empty() {
                break;
            }
            h.update(&data);
            if let Some((at, d)) = pending.take() {
                out.push(Record::WriteExtent {
                    path: e.path.clone(),
                    offset: at,
                    data: d,
                    content_sha256: None,
                })
                .await?;
            }
            let at = o;
            o += data.len() as u64;
            pending = Some((at, data));
        }
        pos = o;
    }
    standin_builder::hash::hash_zeros(&mut h, e.size.saturating_sub(pos));
    let sha: [u8; 32] = h.finalize().into();
    match pending {
        Some((at, d)) if pos == e.size => {
            out.push(Record::WriteExtent {
                path: e.path.clone(),
                offset: at,
                data: d,
                content_sha256: Some(sha),
            })
            .await
        }
        last => {
            if let Some((at, d)) = last {
                out.push(Record::WriteExtent {
                    path: e.path.clone(),
                    offset: at,
                    data: d,
                    content_sha256: None,
                })
                .await?;
            }
            out.push(Record::Truncate {
                path: e.path.clone(),
                size: e.size,
                content_sha256: Some(sha),
            })
            .await
        }
    }
}

/// Only the differing blocks, then a Truncate to the source's size with the
/// sha256 of the whole content.
async fn send_blocks(
    out: &mut SetWriter<'_>,
    root: &Path,
    e: &Entry,
    blocks: &[u64],
    bs: u64,
    sha: [u8; 32],
) -> Result<()> {
    let abs = abs_path(root, &e.path);
    let f = File::open(&abs).with_context(|| format!("opening {}", abs.display()))?;
    let mut i = 0;
    while i < blocks.len() {
        // Coalesce runs of adjacent blocks into one extent.
        let mut j = i + 1;
        while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 && (j - i) as u64 * bs < EXTENT {
            j += 1;
        }
        let off = blocks[i] * bs;
        let data = read_at(&f, off, (j - i) as u64 * bs)
            .with_context(|| format!("reading {}", abs.display()))?;
        if !data.is_empty() {
            out.push(Record::WriteExtent {
                path: e.path.clone(),
                offset: off,
                data,
                content_sha256: None,
            })
            .await?;
        }
        i = j;
    }
    out.push(Record::Truncate {
        path: e.path.clone(),
        size: e.size,
        content_sha256: Some(sha),
    })
    .await
}
