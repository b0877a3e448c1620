//! The target side of a difference mirror: compare batches of the source's
//! manifest ([`MirrorEntries`]) with the replica and say what differs
//! ([`MirrorDiff`]); list what the replica holds that the source no longer
//! has; check the replica's root digest when a mirror ends.
//!
//! Every replica path is reached through its parent opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` beneath the staging
//! root, and the last component is never followed, so a path from the
//! network cannot make the target read outside the staging root.
//!
//! Answers (`DiffItem::state`):
//! - `same`: nothing to send;
//! - `missing`: absent, another type, another hardlink group, another
//!   symlink target or device, or other sparse extents: the source sends
//!   the whole entry (Create, content, metadata);
//! - `metadata`: content equal, owner/mode/mtime/xattrs differ: SetMetadata;
//! - `content`: a regular file whose content differs. With `block_size > 0`
//!   (checksum mode) `blocks` holds the block digest (BLAKE3) of each of the replica's
//!   blocks, so only differing blocks travel; with `block_size == 0`
//!   (date/time/size mode) `blocks` is empty and the whole file travels;
//! - `extra` (only in the answer to the empty batch that ends the entries):
//!   a path the replica holds and the source did not list; the source
//!   deletes it with an ordinary, journaled `Delete` record. Only the
//!   topmost such path is listed (Delete is recursive).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use standin_builder::digest_table::Stamp;
use standin_builder::entry::{path_cmp, Entry, Kind};
use standin_builder::progress::NoProgress;
use standin_builder::scan::ScanOptions;
use standin_link::message::{DiffItem, MirrorDiff, MirrorEntries};

use crate::state::RootCheck;

pub mod applied;
pub mod base;
mod beneath;
pub mod ledger;
pub mod precheck;
pub mod sparse;
use beneath::Beneath;

/// One source's difference mirror on one connection.
pub struct DiffSession {
    replica: Beneath,
    /// The replica's directories the listing is inside of (tree order),
    /// each with the names in it the source has not listed yet.
    open_dirs: Vec<(Vec<u8>, HashSet<Vec<u8>>)>,
    /// Topmost replica paths the source did not list, found so far.
    extras: Vec<Vec<u8>>,
    /// The last path listed (entries must come in tree order).
    last_path: Option<Vec<u8>>,
    links: HashMap<(u64, u64), Vec<u8>>,
    /// What the comparison learnt, for the root digest check at the end
    /// (see [`ledger`]); `None` when it cannot be written.
    ledger: Option<ledger::Writer>,
    /// The last proven mirror's ledger, read alongside the listing: an
    /// entry whose inode and change time are still the recorded ones is
    /// compared with its record, without reading its xattrs or content.
    prev: Option<ledger::Prev>,
    /// Entries decided from `prev` and entries read, in this session.
    known: u64,
    read: u64,
    /// A sparse mirror's comparison ([`sparse`]): only changed entries are
    /// listed; the others are carried from the last proven ledger.
    sparse: Option<sparse::Carry>,
    /// A sparse mirror's early check of the carried records ([`precheck`]).
    precheck: Option<std::sync::Arc<precheck::Precheck>>,
}

/// What the comparison knows of a replica entry (held a batch at a time,
/// so the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Seen {
    /// Read: the entry (no sha256) and its `lstat`; `None` when absent.
    Read(Option<(Entry, std::fs::Metadata)>),
    /// Unchanged since the last proven mirror recorded it, and equal to
    /// the source's entry.
    Known(ledger::Record),
}

/// A replica entry and a directory's names.
type Statted = (Seen, Option<Vec<Vec<u8>>>);

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

enum Pending {
    Done(&'static str),
    /// Regular file of the same size: hash to decide.
    Hash {
        size: u64,
        meta_same: bool,
    },
    /// Regular file of another size: content with block digests.
    Blocks,
}

impl DiffSession {
    /// Start comparing against the replica at `root` (which may not exist
    /// yet). The comparison's ledger goes next to it ([`ledger::path_for`]).
    pub fn new(root: &Path) -> Result<DiffSession> {
        // A comparison that is not sparse: no early check applies.
        precheck::forget(root);
        let path = ledger::path_for(root);
        let ledger = match root.parent().map(std::fs::create_dir_all) {
            Some(Ok(())) => match ledger::Writer::create(&path) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("{e:#}; the mirror's end walks the whole replica");
                    None
                }
            },
            _ => None,
        };
        Ok(DiffSession {
            replica: Beneath::new(root)?,
            open_dirs: Vec::new(),
            extras: Vec::new(),
            last_path: None,
            links: HashMap::new(),
            ledger,
            prev: ledger::Prev::open(&ledger::prev_path_for(root)),
            known: 0,
            read: 0,
            sparse: None,
            precheck: None,
        })
    }

    /// [`DiffSession::new`] for a sparse mirror (the source's base was
    /// accepted, see [`sparse`]). The carry opens the last proven ledger
    /// before the new one is written.
    pub fn new_sparse(root: &Path) -> Result<DiffSession> {
        let carry = sparse::Carry::open(root);
        let mut s = DiffSession::new(root)?;
        // The carried records are checked while the source walks its tree.
        s.precheck = carry.prev_id().and_then(|id| precheck::start(root, id));
        s.sparse = Some(carry);
        Ok(s)
    }

    /// Whether this session compares a sparse listing.
    pub fn is_sparse(&self) -> bool {
        self.sparse.is_some()
    }

    /// Follow the listing through the replica's directories: `path` is
    /// listed (so not extra); a directory's names not listed by the time
    /// the listing leaves it are extra.
    fn track(&mut self, path: &[u8], children: Option<Vec<Vec<u8>>>) {
        let inside = |dir: &[u8]| {
            (dir.is_empty() && !path.is_empty())
                || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
        };
        while let Some((top, _)) = self.open_dirs.last() {
            if inside(top) {
                break;
            }
            self.close_dir();
        }
        if let Some((top, names)) = self.open_dirs.last_mut() {
            if parent_of(path) == top.as_slice() {
                names.remove(&path[top.len() + usize::from(!top.is_empty())..]);
            }
        }
        if let Some(c) = children {
            self.open_dirs
                .push((path.to_vec(), c.into_iter().collect()));
        }
    }

    /// The listing left the innermost open directory: what it holds that
    /// was not listed is extra.
    fn close_dir(&mut self) {
        if let Some((dir, names)) = self.open_dirs.pop() {
            let mut names: Vec<Vec<u8>> = names.into_iter().collect();
            names.sort();
            for n in names {
                let mut p = dir.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&n);
                self.extras.push(p);
            }
        }
    }

    /// Record the entries of a batch in the ledger (a failure drops the
    /// ledger: the end then walks the replica).
    fn record(&mut self, entries: &[Entry], got: Vec<Seen>, items: &[DiffItem]) {
        let Some(w) = self.ledger.as_mut() else {
            return;
        };
        let mut differs = items.iter().map(|i| &i.path).peekable();
        let sparse = &mut self.sparse;
        let write = || -> Result<()> {
            for (e, g) in entries.iter().zip(got) {
                if let Some(c) = sparse.as_mut() {
                    c.listed(w, e)?;
                }
                let same = differs.peek().is_none_or(|p| **p != e.path);
                if !same {
                    differs.next();
                }
                let g = match g {
                    Seen::Known(r) => {
                        w.trusted_record(&e.path, &r)?;
                        continue;
                    }
                    Seen::Read(g) => g,
                };
                let trusted = match g {
                    Some((mut g, md)) if same => {
                        let needs_sha = g.kind == Kind::File && g.link.is_none();
                        let sha = beneath::stamp(&md)
                            .as_ref()
                            .and_then(crate::digest_cache::lookup_stamp);
                        match (needs_sha, sha) {
                            (false, _) => Some((g, md)),
                            (true, Some(d)) => {
                                g.sha256 = Some(hex::encode(d));
                                Some((g, md))
                            }
                            (true, None) => None,
                        }
                    }
                    _ => None,
                };
                match trusted {
                    Some((g, md)) => w.trusted(&g, &md)?,
                    None => w.recheck(&e.path)?,
                }
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(
                "writing the mirror ledger: {e:#}; the mirror's end walks the whole replica"
            );
            self.ledger = None;
        }
    }

    /// The replica's entries at the paths of `entries` (no sha256) with
    /// their `lstat`: read in parallel (runs of neighbours share their
    /// parent directory), hardlink groups then assigned in order, as the
    /// scan does. An entry the last proven mirror recorded is only
    /// `lstat`ed: when its inode and change time are the recorded ones
    /// (any write, chmod, chown, utimes, xattr, rename or link change moves
    /// the change time), is not a hard link, and the record equals the
    /// source's entry, it is [`Seen::Known`].
    /// A replica directory's names come along (to find extra paths).
    /// Entries go to the pool in chunks of [`STAT_CHUNK`].
    fn stat_all(&mut self, entries: &[Entry]) -> Vec<Statted> {
        use std::os::unix::fs::MetadataExt;
        let recs: Vec<Option<ledger::Record>> = match self.prev.as_mut() {
            Some(p) => entries.iter().map(|e| p.take(&e.path)).collect(),
            None => vec![None; entries.len()],
        };
        let replica = &self.replica;
        let dirs = self.sparse.is_none();
        let per_chunk = |(chunk, recs): (&[Entry], Vec<Option<ledger::Record>>)| -> Vec<Statted> {
            let mut r = replica.fork();
            chunk
                .iter()
                .zip(recs)
                .map(|(e, rec)| {
                    let known = rec.filter(|rec| {
                        r.quick_stat(&e.path).is_some_and(|q| rec.still(&q)) && rec.matches(e)
                    });
                    let seen = match known {
                        Some(rec) => Seen::Known(rec),
                        None => Seen::Read(r.stat(&e.path, &mut HashMap::new())),
                    };
                    let children = match &seen {
                        _ if !dirs => None,
                        Seen::Read(Some((g, _))) if g.kind == Kind::Dir => r.child_names(&e.path),
                        Seen::Known(rec) if rec.dir => r.child_names(&e.path),
                        _ => None,
                    };
                    (seen, children)
                })
                .collect()
        };
        // A batch of one chunk (most of a sparse mirror's) is read here:
        // handing it to the pool costs a wake-up and its threads' spinning.
        let chunks: Vec<Vec<Statted>> = if entries.len() <= STAT_CHUNK {
            vec![per_chunk((entries, recs))]
        } else {
            entries
                .par_chunks(STAT_CHUNK)
                .zip(recs.into_par_iter().chunks(STAT_CHUNK))
                .map(per_chunk)
                .collect()
        };
        let mut out: Vec<Statted> = chunks.into_iter().flatten().collect();
        for (e, s) in entries.iter().zip(out.iter_mut()) {
            // A known member of a hard-link group: its record holds the
            // group as it was; it still holds when the group's first path
            // is the same now (else the entry is read).
            if let Seen::Known(rec) = &s.0 {
                if rec.link_dev != 0 {
                    let key = (rec.link_dev - 1, rec.ino);
                    let holds = match (&e.link, self.links.get(&key)) {
                        (None, None) => {
                            self.links.insert(key, e.path.clone());
                            true
                        }
                        (Some(want), Some(first)) => want == first,
                        _ => false,
                    };
                    if !holds {
                        s.0 = Seen::Read(self.replica.stat(&e.path, &mut HashMap::new()));
                    }
                }
            }
            let Seen::Read(Some((g, md))) = &mut s.0 else {
                continue;
            };
            if g.kind != Kind::Dir && md.nlink() > 1 {
                let key = (md.dev(), md.ino());
                if let Some(first) = self.links.get(&key) {
                    g.link = Some(first.clone());
                    g.sparse = None;
                } else {
                    self.links.insert(key, g.path.clone());
                }
            }
        }
        out
    }

    /// Answer one batch. A batch with no entries ends the mirror's entries:
    /// the answer lists the extra paths.
    pub fn diff(&mut self, m: &MirrorEntries) -> Result<MirrorDiff> {
        let t0 = std::time::Instant::now();
        if !m.gone.is_empty() {
            let Some(c) = self.sparse.as_mut() else {
                anyhow::bail!("mirror gone paths refused: no base was accepted on this connection");
            };
            for g in &m.gone {
                standin_builder::changeset::check_path(g, false)
                    .map_err(|r| anyhow::anyhow!("mirror gone path refused: {r}"))?;
            }
            c.add_gone(&m.gone)?;
            if let Some(p) = &self.precheck {
                p.note(m.gone.iter().map(Vec::as_slice));
            }
        }
        if m.entries.is_empty() {
            let r = self.extras(m.batch);
            tracing::debug!(
                known = self.known,
                read = self.read,
                ms = t0.elapsed().as_millis() as u64,
                "mirror comparison: extra paths listed"
            );
            return r;
        }
        for e in &m.entries {
            standin_builder::changeset::check_path(&e.path, true)
                .map_err(|r| anyhow::anyhow!("mirror entry refused: {r}"))?;
            // Extra paths are found by following the listing through the
            // replica's directories, which needs the tree order.
            if let Some(prev) = &self.last_path {
                if path_cmp(prev, &e.path) != std::cmp::Ordering::Less {
                    anyhow::bail!(
                        "mirror entry refused: {} is not after {} in tree order",
                        e.display_path(),
                        standin_builder::entry::display_path(prev)
                    );
                }
            }
            self.last_path = Some(e.path.clone());
        }
        if let Some(p) = &self.precheck {
            p.note(m.entries.iter().map(|e| e.path.as_slice()));
        }
        let block_reads = self.replica.block_reads();
        let statted = self.stat_all(&m.entries);
        let mut pending = Vec::with_capacity(m.entries.len());
        let mut gots = Vec::with_capacity(m.entries.len());
        for (e, (seen, children)) in m.entries.iter().zip(statted) {
            if self.sparse.is_none() {
                self.track(&e.path, children);
            }
            let got = match seen {
                Seen::Known(r) => {
                    self.known += 1;
                    pending.push(Pending::Done("same"));
                    gots.push(Seen::Known(r));
                    continue;
                }
                Seen::Read(got) => got,
            };
            self.read += 1;
            let mut p = classify(e, got.as_ref().map(|g| &g.0), m.block_size);
            // A digest the target computed under the file's current stamp
            // decides without reading the file.
            let st = got.as_ref().and_then(|g| beneath::stamp(&g.1));
            if let (Pending::Hash { meta_same, .. }, Some(st)) = (&p, &st) {
                if let Some(d) = crate::digest_cache::lookup_stamp(st) {
                    p = if same_digest(&hex::encode(d), e.sha256.as_deref()) {
                        Pending::Done(if *meta_same { "same" } else { "metadata" })
                    } else {
                        Pending::Blocks
                    };
                }
            }
            pending.push(p);
            gots.push(Seen::Read(got));
        }
        let max_bs = m.block_size;
        let items: Vec<DiffItem> = m
            .entries
            .par_iter()
            .zip(pending.into_par_iter())
            .map(|(e, p)| {
                let bs = if max_bs == 0 {
                    0
                } else {
                    standin_link::message::mirror_block_size(e.size, max_bs)
                };
                let (state, blocks) = match p {
                    Pending::Done(s) => (s, Vec::new()),
                    Pending::Blocks => ("content", self.blocks(&e.path, bs)),
                    // A file of more than one block is read once for its
                    // digest and its blocks (it was listed: it most likely
                    // changed, and then its blocks are wanted).
                    Pending::Hash { size, meta_same } if bs > 0 && size > bs => {
                        match self.replica.hash_and_blocks(&e.path, bs) {
                            Some((h, _)) if same_digest(&hex::encode(h), e.sha256.as_deref()) => {
                                (if meta_same { "same" } else { "metadata" }, Vec::new())
                            }
                            Some((_, Some(blocks))) => ("content", blocks),
                            Some((_, None)) => ("content", self.blocks(&e.path, bs)),
                            None => ("missing", Vec::new()),
                        }
                    }
                    Pending::Hash { size, meta_same } => match self.replica.hash(&e.path, size) {
                        Some(h) if same_digest(&hex::encode(h), e.sha256.as_deref()) => {
                            (if meta_same { "same" } else { "metadata" }, Vec::new())
                        }
                        Some(_) => ("content", self.blocks(&e.path, bs)),
                        None => ("missing", Vec::new()),
                    },
                };
                DiffItem {
                    path: e.path.clone(),
                    state: state.to_string(),
                    blocks,
                }
            })
            .collect();
        let items: Vec<DiffItem> = items.into_iter().filter(|i| i.state != "same").collect();
        let t1 = std::time::Instant::now();
        self.record(&m.entries, gots, &items);
        tracing::debug!(
            batch = m.batch,
            entries = m.entries.len(),
            ms = t0.elapsed().as_millis() as u64,
            ledger_ms = t1.elapsed().as_millis() as u64,
            block_reads = self.replica.block_reads() - block_reads,
            "mirror comparison: batch answered"
        );
        Ok(MirrorDiff {
            batch: m.batch,
            items,
        })
    }

    /// Digest of each `bs`-byte block of the replica's file (empty in
    /// dts mode, or when unreadable: the whole file travels), from the
    /// digest cache's block values when it has them (no read).
    fn blocks(&self, path: &[u8], bs: u64) -> Vec<[u8; 16]> {
        self.replica.blocks(path, bs)
    }

    /// The topmost replica paths the source did not list (found while
    /// the listing went through the replica's directories: no second walk).
    fn extras(&mut self, batch: u64) -> Result<MirrorDiff> {
        while !self.open_dirs.is_empty() {
            self.close_dir();
        }
        if let Some(c) = self.sparse.as_mut() {
            if let Some(w) = self.ledger.as_mut() {
                if let Err(e) = c.finish(w) {
                    tracing::warn!(
                        "writing the mirror ledger: {e:#}; the mirror's end walks the whole replica"
                    );
                    self.ledger = None;
                }
            }
            self.extras.extend(c.take_gone());
            tracing::debug!(carried = c.carried, "sparse mirror: records carried");
        }
        let items: Vec<DiffItem> = std::mem::take(&mut self.extras)
            .into_iter()
            .map(|path| DiffItem {
                path,
                state: "extra".into(),
                blocks: Vec::new(),
            })
            .collect();
        if let Some(mut w) = self.ledger.take() {
            for i in &items {
                let parent = match i.path.iter().rposition(|&b| b == b'/') {
                    Some(k) => &i.path[..k],
                    None => b"",
                };
                w.count_dir(parent);
            }
            match w.finish() {
                Ok(()) => {
                    if let (Some(p), Some(_)) = (&self.precheck, &self.sparse) {
                        p.seal();
                    }
                }
                Err(e) => tracing::warn!("{e:#}; the mirror's end walks the whole replica"),
            }
        }
        Ok(MirrorDiff { batch, items })
    }
}

/// Whether the replica's content digest (hex, BLAKE3) is the source's: the source sends at
/// least the first 16 bytes (32 hex digits) of it.
fn same_digest(replica: &str, source: Option<&str>) -> bool {
    source.is_some_and(|s| s.len() >= 32 && replica.starts_with(s))
}

fn classify(e: &Entry, got: Option<&Entry>, block_size: u32) -> Pending {
    let Some(g) = got else {
        return Pending::Done("missing");
    };
    if g.kind != e.kind
        || g.link != e.link
        || g.target != e.target
        || g.rdev != e.rdev
        || (e.kind == Kind::File && e.link.is_none() && g.sparse != e.sparse)
    {
        return Pending::Done("missing");
    }
    let meta_same = g.mode == e.mode
        && g.uid == e.uid
        && g.gid == e.gid
        && g.mtime_ns == e.mtime_ns
        && g.xattrs == e.xattrs;
    if e.kind == Kind::File && e.link.is_none() {
        if block_size == 0 {
            // Date, time and size.
            if g.size != e.size || g.mtime_ns != e.mtime_ns {
                return Pending::Done("content");
            }
        } else if g.size != e.size {
            return Pending::Blocks;
        } else if e.sha256.is_some() {
            return Pending::Hash {
                size: e.size,
                meta_same,
            };
        }
    }
    Pending::Done(if meta_same { "same" } else { "metadata" })
}

/// The root digest of the replica at `root` (a full scan), to compare with
/// the source's when a mirror ends. Files whose digest the target already
/// computed and that have not changed since (see [`crate::digest_cache`])
/// are not read again.
pub fn replica_digest(root: &Path) -> Result<String> {
    Ok(replica_digest_recorded(root, None)?.0)
}

/// [`replica_digest`]; with `ledger`, every entry the walk read is written
/// there as a trusted record (see [`ledger`]), so the next comparison can
/// start from it. Whether the ledger was written.
fn replica_digest_recorded(root: &Path, ledger: Option<&Path>) -> Result<(String, bool)> {
    let mut w = ledger.and_then(|p| match ledger::Writer::create(p) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!("{e:#}; the walk of the replica writes no ledger");
            None
        }
    });
    let opts = ScanOptions {
        excludes: Vec::new(),
        one_file_system: true,
        system_excludes: Vec::new(),
        always_system_excludes: false,
    };
    let known = |st: &Stamp| crate::digest_cache::lookup_stamp(st);
    let s = standin_builder::manifest::scan_tree_mirror_scanned(
        root,
        &opts,
        &NoProgress,
        &known,
        |s| {
            if let Some(wr) = w.as_mut() {
                if wr.trusted_inode(&s.entry, &s.inode).is_err() {
                    w = None;
                }
            }
            Ok(())
        },
    )
    .with_context(|| {
        format!(
            "computing the root digest of the replica {}",
            root.display()
        )
    })?;
    let written = w.is_some_and(|w| w.finish().is_ok());
    Ok((s.root_digest, written))
}

/// Entries `lstat`ed per job of the pool in a comparison batch.
const STAT_CHUNK: usize = 64;

/// Set to force the full walk of the replica for the root digest check
/// at the end of every mirror (the ledger is not used).
pub const FULL_CHECK_ENV: &str = "STANDIN_FULL_REPLICA_CHECK";

/// The replica's root digest for the check at the end of a mirror: from
/// the comparison's [`ledger`] when there is one (no second walk), else,
/// or when that gives another digest than `want`, or with
/// [`FULL_CHECK_ENV`] set, by the full walk ([`replica_digest`]).
pub fn checked_digest(root: &Path, want: &str) -> Result<String> {
    Ok(checked_digest_by(root, want)?.0)
}

/// [`checked_digest`], and whether the ledger alone gave `want` (then it
/// describes the replica as the mirror left it).
fn checked_digest_by(root: &Path, want: &str) -> Result<(String, bool)> {
    let (digest, proven, _) = checked(root, want, ledger::Hints::default(), None)?;
    Ok((digest, proven))
}

/// [`checked_digest_by`] and how it went (`by` is `ledger` when the ledger
/// alone gave `want`, else `walk`; a walk that wrote its records into
/// the ledger proves it too).
/// With `skip`, records the early check trusts are not `lstat`ed again
/// ([`precheck`]). With `applied`, the apply ledger is merged into the
/// comparison's ledger as the fold reads both ([`applied::fold`]); when
/// it cannot be, the comparison's ledger is folded alone, without the
/// early check.
fn checked(
    root: &Path,
    want: &str,
    mut hints: ledger::Hints<'_>,
    applied: Option<applied::Recorded>,
) -> Result<(String, bool, RootCheck)> {
    let t0 = std::time::Instant::now();
    let ledger = ledger::path_for(root);
    let full = std::env::var_os(FULL_CHECK_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if !full {
        // The fold's own ledger (entries read again recorded as read)
        // replaces the comparison's when it proves `want`.
        let folded = ledger.with_extension("folded");
        let mut got = None;
        if let Some(a) = applied {
            match applied::fold(root, a, hints.skip, Some(&folded)) {
                Ok((o, records)) => {
                    tracing::debug!(
                        records,
                        ms = t0.elapsed().as_millis() as u64,
                        "mirror end: apply ledger merged into the fold"
                    );
                    got = Some(o);
                }
                Err(e) => {
                    tracing::info!("{e:#}; the apply ledger is not used");
                    hints.skip = None;
                }
            }
        }
        let got = match got {
            Some(o) => Some(o),
            None => ledger::digest_into(root, &ledger, hints, Some(&folded))?,
        };
        let proven = matches!(&got, Some(ledger::Outcome::Digest { digest, .. }) if digest == want);
        // Not renamed over the old ledger: ext4 would write the 22 MB at
        // once and the state's durable save at the end would wait for it.
        if !(proven && standin_builder::durable::replace_unflushed(&folded, &ledger).is_ok()) {
            let _ = std::fs::remove_file(&folded);
        }
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            early = hints.skip.is_some(),
            "mirror end: root digest from the ledger"
        );
        match got {
            Some(ledger::Outcome::Digest {
                digest,
                reused,
                reread,
                prechecked,
            }) if digest == want => {
                let check = RootCheck {
                    by: "ledger".into(),
                    reused,
                    reread,
                    prechecked,
                    ms: t0.elapsed().as_millis() as u64,
                };
                return Ok((digest, true, check));
            }
            Some(ledger::Outcome::Digest { digest: d, .. }) => {
                tracing::info!(
                    ledger = d,
                    want,
                    "the mirror ledger's digest differs; walking the replica"
                )
            }
            Some(ledger::Outcome::Unsure(why)) => {
                tracing::info!("{why}; walking the replica")
            }
            None => {}
        }
    }
    // The walk's records replace the comparison's ledger: they describe
    // the replica as it is now.
    let (digest, written) = replica_digest_recorded(root, Some(&ledger))?;
    tracing::debug!(
        ms = t0.elapsed().as_millis() as u64,
        "mirror end: root digest from the walk"
    );
    let check = RootCheck {
        by: "walk".into(),
        reused: 0,
        reread: 0,
        prechecked: 0,
        ms: t0.elapsed().as_millis() as u64,
    };
    Ok((digest, written, check))
}

/// The root digest check at a mirror's end ([`checked_digest`]); a ledger
/// that proved the replica's digest is kept as the next comparison's
/// starting point ([`ledger::prev_path_for`]); any other is dropped, and
/// so is an older one.
pub fn check_and_keep(root: &Path, want: &str) -> Result<String> {
    Ok(check_and_keep_by(root, want)?.0)
}

/// [`check_and_keep`] and how the check went.
pub fn check_and_keep_by(root: &Path, want: &str) -> Result<(String, RootCheck)> {
    check_and_keep_with(root, want, ledger::Hints::default())
}

/// [`check_and_keep_by`], taking what the early check found ([`precheck`])
/// and the ledger's counted directories when known.
pub fn check_and_keep_with(
    root: &Path,
    want: &str,
    hints: ledger::Hints<'_>,
) -> Result<(String, RootCheck)> {
    check_and_keep_applied(root, want, hints, None)
}

/// [`check_and_keep_with`], folding the apply ledger `applied` merged
/// into the comparison's ledger ([`applied::fold`]; an apply ledger that
/// cannot be used is left out, and so is the early check then).
pub fn check_and_keep_applied(
    root: &Path,
    want: &str,
    hints: ledger::Hints<'_>,
    applied: Option<applied::Recorded>,
) -> Result<(String, RootCheck)> {
    let (got, proven, check) = checked(root, want, hints, applied)?;
    let (ledger, prev) = (ledger::path_for(root), ledger::prev_path_for(root));
    if !(proven
        && got == want
        && standin_builder::durable::replace_unflushed(&ledger, &prev).is_ok())
    {
        let _ = std::fs::remove_file(&ledger);
        let _ = std::fs::remove_file(&prev);
    }
    Ok((got, check))
}

/// End a mirror: when the source sent its root digest and the mirror's
/// last change set is applied, the replica's digest must match before the
/// mirror counts as complete ("verify before visible").
pub fn end(
    store: &mut crate::Store,
    source_id: &str,
    m: &standin_link::message::MirrorEnd,
) -> Result<standin_link::message::MirrorDone> {
    let root = store.staging_root(source_id);
    // The state's durable save at the end forces a journal commit of all
    // the metadata the mirror's sets changed (an open mirror's sets are not
    // synced one by one): start that commit now, beside the merge and the
    // fold, so that the save finds little left to write.
    let commit = {
        let dir = store.dir().to_path_buf();
        std::thread::Builder::new()
            .name("mirror-end-commit".into())
            .spawn(move || {
                let t0 = std::time::Instant::now();
                let r = crate::durable::sync_dir(&dir);
                (r, t0.elapsed())
            })
            .ok()
    };
    // A sparse mirror's early check of the carried records (see
    // [`precheck`]): used only with the apply ledger of every set.
    let mut skip = precheck::take(&root);
    // What the mirror's sets applied, merged into the comparison's ledger
    // as the fold reads it (see [`applied`]); used only when every set was
    // recorded.
    let mut log = store.take_applied(m);
    let applied_file = log.as_ref().map(|l| l.path.clone());
    let check = m.root_digest.is_some() && store.state().last_applied_seq >= m.last_seq;
    if !check {
        log = None;
    }
    if let (Some(s), Some(l)) = (skip.as_mut(), log.as_ref()) {
        match applied::paths(l) {
            Ok(paths) => paths.iter().for_each(|p| s.touch(p)),
            Err(e) => {
                tracing::info!("{e:#}; the apply ledger is not used");
                log = None;
            }
        }
    }
    if log.is_none() {
        skip = None;
    }
    // The proven ledger is about to be replaced or dropped (see [`base`]).
    base::forget(&root);
    let checked = match (&m.root_digest, check) {
        (Some(want), true) => {
            let hints = ledger::Hints {
                skip: skip.as_ref(),
                count_dirs: None,
            };
            Some((want, check_and_keep_applied(&root, want, hints, log)))
        }
        _ => None,
    };
    if let Some(f) = applied_file {
        let _ = std::fs::remove_file(f);
    }
    if let Some((want, got)) = checked {
        let (got, check) = got?;
        store.note_root_check(check);
        if &got != want {
            tracing::warn!(
                mirror = m.mirror_id,
                want,
                got,
                "replica root digest differs from the source's; the mirror is not complete"
            );
            return Ok(standin_link::message::MirrorDone {
                mirror_id: m.mirror_id.clone(),
                complete: false,
                reason: Some(format!(
                    "the replica's root digest {got} differs from the source's {want}; run the mirror again"
                )),
            });
        }
    }
    if let Some((r, took)) = commit.and_then(|c| c.join().ok()) {
        tracing::debug!(
            ms = took.as_millis() as u64,
            ok = r.is_ok(),
            "mirror end: early journal commit"
        );
    }
    let t0 = std::time::Instant::now();
    let done = store.mirror_end(m)?;
    tracing::debug!(
        ms = t0.elapsed().as_millis() as u64,
        "mirror end: state recorded"
    );
    if let (true, Some(want)) = (done.complete, &m.root_digest) {
        base::remember(&root, &m.mirror_id, want);
    }
    // A completed mirror's replica is synced after the answer, and the
    // digest cache is saved then ([`save_digest_cache`], by the daemon's
    // flush): not on the way to the answer.
    if store.flush_pending().is_none() {
        save_digest_cache(store.dir(), &root);
    }
    Ok(done)
}

/// Keep what the comparison and the check hashed for the next mirror,
/// also across a daemon restart: the digest cache of the replica at
/// `root`, in the state directory `dir` (no `fsync`: a cache).
pub fn save_digest_cache(dir: &Path, root: &Path) {
    if let Err(e) = crate::digest_cache::save(dir, &crate::digest_cache::tree_id(root)) {
        tracing::warn!("{e:#}; the next mirror hashes the replica again");
    }
}

/// Load the digest cache of the bound source's replica (daemon start).
pub fn load_digest_cache(store: &crate::Store) {
    if let Some(id) = &store.state().source_id {
        let root = store.staging_root(id);
        let n = crate::digest_cache::load(store.dir(), &crate::digest_cache::tree_id(&root));
        tracing::info!(digests = n, "digest cache loaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use standin_builder::scan::Scanner;
    use std::os::unix::ffi::OsStrExt;

    pub(super) fn entries(root: &Path) -> Vec<Entry> {
        let mut out = Vec::new();
        for s in Scanner::new(root, &ScanOptions::default(), &NoProgress).unwrap() {
            let mut e = s.unwrap().entry;
            if e.kind == Kind::File && e.link.is_none() {
                let (h, _) = standin_builder::hash::content_file(
                    &root.join(std::ffi::OsStr::from_bytes(&e.path)),
                    e.size,
                    None,
                )
                .unwrap();
                e.sha256 = Some(h);
            }
            out.push(e);
        }
        out
    }

    #[test]
    fn diff_states_extras_and_refusals() {
        let t = tempfile::tempdir().unwrap();
        let (src, rep) = (t.path().join("src"), t.path().join("rep"));
        for r in [&src, &rep] {
            std::fs::create_dir_all(r.join("d")).unwrap();
            std::fs::write(r.join("d/same"), "same").unwrap();
            std::fs::write(r.join("d/content"), vec![1u8; 10_000]).unwrap();
        }
        // Same content and times, so only the mode differs.
        std::fs::write(src.join("d/meta"), "m").unwrap();
        std::fs::write(rep.join("d/meta"), "m").unwrap();
        std::fs::write(src.join("d/missing"), "new").unwrap();
        std::fs::write(rep.join("d/extra"), "old").unwrap();
        std::fs::create_dir_all(rep.join("gone/deep")).unwrap();
        std::fs::write(src.join("d/content"), vec![2u8; 10_000]).unwrap();
        let t0 = std::fs::FileTimes::new().set_modified(std::time::SystemTime::UNIX_EPOCH);
        for r in [&src, &rep] {
            for f in ["d/same", "d/meta"] {
                std::fs::File::options()
                    .write(true)
                    .open(r.join(f))
                    .unwrap()
                    .set_times(t0)
                    .unwrap();
            }
        }
        std::fs::set_permissions(
            src.join("d/meta"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let es: Vec<Entry> = entries(&src)
            .into_iter()
            .filter(|e| !e.path.is_empty() && e.path != b"d")
            .collect();
        let mut s = DiffSession::new(&rep).unwrap();
        let d = s
            .diff(&MirrorEntries {
                batch: 1,
                entries: es.clone(),
                block_size: 4096,
                gone: Vec::new(),
            })
            .unwrap();
        let state = |p: &str| {
            d.items
                .iter()
                .find(|i| i.path == p.as_bytes())
                .map(|i| i.state.clone())
                .unwrap_or_else(|| "same".into())
        };
        assert_eq!(state("d/same"), "same");
        assert_eq!(state("d/meta"), "metadata");
        assert_eq!(state("d/missing"), "missing");
        assert_eq!(state("d/content"), "content");
        let blocks = &d
            .items
            .iter()
            .find(|i| i.path == b"d/content")
            .unwrap()
            .blocks;
        let bs = standin_link::message::mirror_block_size(10_000, 4096) as usize;
        assert_eq!(blocks.len(), 10_000usize.div_ceil(bs));
        // dts mode: equal size and mtime count as equal content.
        let mut s2 = DiffSession::new(&rep).unwrap();
        let d2 = s2
            .diff(&MirrorEntries {
                batch: 1,
                entries: es.clone(),
                block_size: 0,
                gone: Vec::new(),
            })
            .unwrap();
        assert!(d2.items.iter().all(|i| i.blocks.is_empty()));
        // The empty batch lists the topmost paths the source did not list.
        // (The whole listing, in tree order, as the source sends it.)
        let listed = entries(&src);
        let mut s3 = DiffSession::new(&rep).unwrap();
        s3.diff(&MirrorEntries {
            batch: 1,
            entries: listed,
            block_size: 4096,
            gone: Vec::new(),
        })
        .unwrap();
        let extras = s3
            .diff(&MirrorEntries {
                batch: 2,
                entries: vec![],
                block_size: 4096,
                gone: Vec::new(),
            })
            .unwrap();
        let mut paths: Vec<_> = extras
            .items
            .iter()
            .map(|i| String::from_utf8_lossy(&i.path).into_owned())
            .collect();
        paths.sort();
        assert_eq!(paths, ["d/extra", "gone"]);
        assert!(extras.items.iter().all(|i| i.state == "extra"));
        // Paths from the network are checked.
        let mut bad = es[0].clone();
        bad.path = b"../outside".to_vec();
        assert!(s3
            .diff(&MirrorEntries {
                batch: 3,
                entries: vec![bad],
                block_size: 4096,
                gone: Vec::new(),
            })
            .is_err());
        // So are entries out of tree order (extra paths depend on it).
        let mut s4 = DiffSession::new(&rep).unwrap();
        let err = s4
            .diff(&MirrorEntries {
                batch: 1,
                entries: vec![es[1].clone(), es[0].clone()],
                block_size: 4096,
                gone: Vec::new(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("tree order"), "{err}");
    }

    /// Run `cmd` with `sh -c`; it must succeed.
    pub(super) fn sh(cmd: &str) {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{cmd}");
    }

    /// Compare the whole listing in batches of 5; the answers' states by path.
    fn compare_all(rep: &Path, es: &[Entry]) -> (HashMap<String, String>, u64, u64) {
        let mut s = DiffSession::new(rep).unwrap();
        let mut states = HashMap::new();
        for (i, chunk) in es.chunks(5).enumerate() {
            let d = s
                .diff(&MirrorEntries {
                    batch: i as u64 + 1,
                    entries: chunk.to_vec(),
                    block_size: 4096,
                    gone: Vec::new(),
                })
                .unwrap();
            for it in d.items {
                states.insert(String::from_utf8_lossy(&it.path).into_owned(), it.state);
            }
        }
        let d = s
            .diff(&MirrorEntries {
                batch: 999,
                entries: vec![],
                block_size: 4096,
                gone: Vec::new(),
            })
            .unwrap();
        for it in d.items {
            states.insert(String::from_utf8_lossy(&it.path).into_owned(), it.state);
        }
        (states, s.known, s.read)
    }

    #[test]
    fn the_last_proven_ledger_decides_unchanged_entries_and_never_hides_a_change() {
        let t = tempfile::tempdir().unwrap();
        let (src, rep) = (t.path().join("src"), t.path().join("rep"));
        std::fs::create_dir_all(src.join("d/sub")).unwrap();
        for i in 0..30 {
            std::fs::write(src.join(format!("d/f{i}")), format!("file {i}")).unwrap();
        }
        std::fs::write(src.join("d/sub/big"), vec![7u8; 50_000]).unwrap();
        std::fs::hard_link(src.join("d/f1"), src.join("d/sub/link")).unwrap();
        std::os::unix::fs::symlink("../f2", src.join("d/sub/sym")).unwrap();
        sh(&format!("cp -a {} {}", src.display(), rep.display()));
        sh(&format!(
            "setfattr -n user.k -v v {}/d/f4 {}/d/f4",
            src.display(),
            rep.display()
        ));
        let es = entries(&src);
        let want = replica_digest(&src).unwrap();

        // No proven ledger yet: every entry is read.
        let (states, known, read) = compare_all(&rep, &es);
        assert!(states.is_empty(), "{states:?}");
        assert_eq!((known, read), (0, es.len() as u64));
        assert_eq!(check_and_keep(&rep, &want).unwrap(), want);
        assert!(
            ledger::prev_path_for(&rep).exists(),
            "the proven ledger is kept"
        );

        // Nothing changed: every entry is decided from the ledger.
        let (states, known, read) = compare_all(&rep, &es);
        assert!(states.is_empty(), "{states:?}");
        assert_eq!((known, read), (es.len() as u64, 0));
        assert_eq!(check_and_keep(&rep, &want).unwrap(), want);

        // A snapshot's hard links move every file's change time; the ledger
        // is carried across it, except for an entry changed before it.
        let snap = t.path().join("snap");
        sh(&format!("chmod 640 {}/d/f6", rep.display()));
        ledger::across_snapshot(&rep, || {
            sh(&format!("cp -al {} {}", rep.display(), snap.display()));
            // Someone else writes while the snapshot runs: a chmod, and
            // an append whose mtime is put back (the size still moves).
            sh(&format!(
                "chmod 600 {r}/d/f5 && printf x >> {r}/d/f3 && touch -r {s}/d/f3 {r}/d/f3",
                r = rep.display(),
                s = src.display()
            ));
            Ok(())
        })
        .unwrap();
        let (states, known, read) = compare_all(&rep, &es);
        assert_eq!(states.get("d/f6").map(String::as_str), Some("metadata"));
        assert_eq!(
            states.get("d/f5").map(String::as_str),
            Some("metadata"),
            "a chmod while the snapshot ran is not carried over: {states:?}"
        );
        assert_eq!(
            states.get("d/f3").map(String::as_str),
            Some("content"),
            "an append while the snapshot ran is not carried over: {states:?}"
        );
        assert_eq!(states.len(), 3, "{states:?}");
        assert_eq!(
            read, 3,
            "only the entries changed before and during the snapshot are read"
        );
        assert_eq!(known, es.len() as u64 - 3);
        sh(&format!(
            "chmod 644 {}/d/f6 {}/d/f5",
            rep.display(),
            rep.display()
        ));
        sh(&format!(
            "printf 'file 3' > {r}/d/f3 && touch -r {s}/d/f3 {r}/d/f3",
            s = src.display(),
            r = rep.display()
        ));
        sh(&format!("rm -rf {}", snap.display()));
        // The full walk (no comparison ledger) records the replica too.
        std::fs::remove_file(ledger::path_for(&rep)).ok();
        assert_eq!(check_and_keep(&rep, &want).unwrap(), want);
        let (states, known, _) = compare_all(&rep, &es);
        assert!(states.is_empty(), "{states:?}");
        assert_eq!(known, es.len() as u64, "the walk's records are used");
        assert_eq!(check_and_keep(&rep, &want).unwrap(), want);

        // Changes behind standin's back on the replica, and on the source:
        // none of them is taken from the ledger.
        sh(&format!(
            "printf 'FILE 9' > {r}/d/f9 && touch -r {s}/d/f9 {r}/d/f9 && \
             chmod 600 {r}/d/f5 && touch -r {s}/d/f5 {r}/d/f5 && \
             setfattr -n user.k -v w {r}/d/f4 && \
             echo extra > {r}/d/sub/extra && touch -r {s}/d/sub {r}/d/sub && \
             printf 'changed' > {s}/d/f7 && touch -r {r}/d/f7 {s}/d/f7",
            s = src.display(),
            r = rep.display()
        ));
        let es = entries(&src);
        let (states, known, read) = compare_all(&rep, &es);
        let state = |p: &str| states.get(p).map(String::as_str).unwrap_or("same");
        assert_eq!(
            state("d/f9"),
            "content",
            "a same-size rewrite with the mtime put back"
        );
        assert_eq!(state("d/f5"), "metadata", "a chmod");
        assert_eq!(state("d/f4"), "metadata", "an xattr change");
        assert_eq!(state("d/sub/extra"), "extra", "an unlisted path");
        assert_eq!(state("d/f7"), "content", "the source's change");
        assert_eq!(
            state("d/sub/link"),
            "same",
            "the hard link group still holds"
        );
        assert!(read >= 5 && known > read, "{known} known, {read} read");
        assert_eq!(known + read, es.len() as u64);
        // The replica differs, so its ledger proves nothing and is not kept.
        assert_ne!(check_and_keep(&rep, &want).unwrap(), want);
        assert!(!ledger::prev_path_for(&rep).exists());
        let (_, known, _) = compare_all(&rep, &es);
        assert_eq!(known, 0, "without a proven ledger everything is read");
    }
}
