//! The replication thread: batches → records → change sets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use standin_builder::changeset::{metadata_digest, Record};
use standin_builder::entry::{display_path, path_cmp, Entry, Kind};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{log_repairs, log_rescan, Cutter, Excluder, QueueFull, ReplicateOptions, Req};
use crate::blockindex::{BlockIndex, Ino};
use crate::capture::{Batch, Change, Handle, Watcher};

mod reconcile;
#[cfg(test)]
mod tests;

/// Finds where an object lives now by its file handle ([`Watcher`] with
/// fanotify; tests give their own).
pub(crate) trait Locate {
    /// The object's current path relative to the root and its inode, while
    /// it has a name under the root.
    fn locate(&self, h: &Handle) -> Option<(Vec<u8>, Ino)>;
}

impl Locate for Watcher {
    fn locate(&self, h: &Handle) -> Option<(Vec<u8>, Ino)> {
        Watcher::locate(self, h)
    }
}

pub(super) fn run(
    root: PathBuf,
    opts: ReplicateOptions,
    watcher: Watcher,
    index: BlockIndex,
    tx: mpsc::Sender<Req>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut w = Worker::new(root, &opts, index, tx)?;
    let mut rescan_after_drain = false;
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if w.cut.sender_stats()?.resync_needed {
            anyhow::bail!(
                "the target lost change sets this agent no longer holds; a difference mirror is needed"
            );
        }
        let res = if rescan_after_drain {
            w.cut.wait_drain()?;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            opts.counters.rescans.fetch_add(1, Ordering::Relaxed);
            w.sweep().map(|_| ())
        } else if opts
            .sweep_interval
            .is_some_and(|i| last_sweep.elapsed() >= i)
        {
            last_sweep = Instant::now();
            opts.counters.sweeps.fetch_add(1, Ordering::Relaxed);
            w.sweep().map(|n| {
                opts.counters.record_sweep(n);
                log_repairs(n);
            })
        } else {
            match watcher.take_batch(Duration::from_millis(100), opts.debounce, opts.max_delay) {
                // A path deferred by the last batch is looked at again
                // even when nothing else happens.
                None if !w.deferred.is_empty() => w.batch(Batch::default(), &watcher),
                None => continue,
                Some(b) if b.rescan => {
                    log_rescan("change capture lost events");
                    opts.counters.rescans.fetch_add(1, Ordering::Relaxed);
                    w.sweep().map(|_| ())
                }
                Some(b) => {
                    // Batches of nameless inode events only (link count
                    // changes anywhere on the filesystem) are not counted.
                    if !b.paths.is_empty() {
                        opts.counters.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    opts.counters
                        .paths_changed
                        .fetch_add(b.paths.len() as u64, Ordering::Relaxed);
                    w.batch(b, &watcher)
                }
            }
        };
        rescan_after_drain = false;
        if let Err(e) = res {
            if e.downcast_ref::<QueueFull>().is_none() {
                return Err(e);
            }
            opts.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            log_rescan("the link's queue is full");
            w.failed();
            rescan_after_drain = true;
        }
    }
    Ok(())
}

struct Worker {
    cut: Cutter,
    root: PathBuf,
    root_dev: u64,
    excl: Excluder,
    index: BlockIndex,
    /// Directories whose metadata is set at the end of the batch (after
    /// their children changed on the target).
    dirs: BTreeSet<Vec<u8>>,
    /// Paths that vanished together with an ancestor the batch does not
    /// explain yet (renamed or removed after the batch was cut): looked at
    /// again with the next batch, which holds the ancestor's event.
    deferred: BTreeMap<Vec<u8>, Change>,
    /// The deferred paths this batch looks at again (deferred once only).
    redo: BTreeSet<Vec<u8>>,
}

/// Add `extra` to `paths`, which then stay sorted with one entry per path
/// (the changes reported for a path merged).
fn merge_paths(paths: &mut Vec<(Vec<u8>, Change)>, extra: Vec<(Vec<u8>, Change)>) {
    paths.extend(extra);
    paths.sort_by(|a, b| path_cmp(&a.0, &b.0));
    paths.dedup_by(|a, b| {
        if a.0 == b.0 {
            b.1.content |= a.1.content;
            b.1.metadata |= a.1.metadata;
            b.1.moved |= a.1.moved;
            true
        } else {
            false
        }
    });
}

fn parent(rel: &[u8]) -> Vec<u8> {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => rel[..i].to_vec(),
        None => Vec::new(),
    }
}

/// The rest of `p` after the directory `dir` (starting with `/`), if `p` is below it.
fn under<'a>(p: &'a [u8], dir: &[u8]) -> Option<&'a [u8]> {
    (p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/').then(|| &p[dir.len()..])
}

fn ino_of(md: &std::fs::Metadata) -> Ino {
    (md.dev(), md.ino())
}

impl Worker {
    fn new(
        root: PathBuf,
        opts: &ReplicateOptions,
        index: BlockIndex,
        tx: mpsc::Sender<Req>,
    ) -> Result<Worker> {
        let excl = Excluder::new(&root, &opts.scan)?;
        let root_dev = std::fs::symlink_metadata(&root)
            .with_context(|| format!("reading {}", root.display()))?
            .dev();
        Ok(Worker {
            cut: Cutter {
                tx,
                counters: opts.counters.clone(),
                records: Vec::new(),
                bytes: 0,
                max: opts.max_set_bytes,
                failed: None,
            },
            root,
            root_dev,
            excl,
            index,
            dirs: BTreeSet::new(),
            deferred: BTreeMap::new(),
            redo: BTreeSet::new(),
        })
    }

    fn abs(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn lstat(&self, rel: &[u8]) -> Option<std::fs::Metadata> {
        std::fs::symlink_metadata(self.abs(rel)).ok()
    }

    fn emit(&mut self, r: Record) -> Result<()> {
        self.cut.push(r)
    }

    /// After the queue refused a set: what it and the unsent rest named is unknown.
    fn failed(&mut self) {
        self.deferred.clear();
        let mut recs = self.cut.failed.take().unwrap_or_default();
        recs.extend(self.cut.discard());
        self.dirs.clear();
        for r in &recs {
            match r {
                Record::Rename { from, to } => {
                    self.index.remove_tree(to);
                    self.index.mark_unknown(from, Kind::Dir);
                    self.index.mark_unknown(to, Kind::Dir);
                }
                Record::Delete { path } if !path.is_empty() => {
                    self.index.mark_unknown(path, Kind::Dir)
                }
                other => {
                    for p in other.paths().into_iter().filter(|p| !p.is_empty()) {
                        if let Some(st) = self.index.get(p).cloned() {
                            if st.kind == Kind::File {
                                self.index.forget_file(st.ino);
                            }
                        }
                        self.index.mark_unknown(p, Kind::File);
                    }
                }
            }
        }
    }

    /// One batch of changed paths.
    fn batch(&mut self, b: Batch, watcher: &dyn Locate) -> Result<()> {
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(
                paths = ?b.paths.iter().map(|(p, c)| format!("{}{}{}{}", display_path(p), if c.content {" c"} else {""}, if c.metadata {" m"} else {""}, if c.moved {" mv"} else {""})).collect::<Vec<_>>(),
                dirs = ?b.dirs.values().map(|n| n.iter().map(|p| display_path(p)).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "batch"
            );
        }
        let mut all = b.paths;
        let deferred = std::mem::take(&mut self.deferred);
        self.redo = deferred.keys().cloned().collect();
        for (p, c) in deferred {
            let e = all.entry(p).or_default();
            e.content |= c.content;
            e.metadata |= c.metadata;
        }
        let mut paths: Vec<(Vec<u8>, Change)> = all
            .into_iter()
            .filter(|(p, _)| !self.excl.excluded(p))
            .collect();
        paths.sort_by(|a, b| path_cmp(&a.0, &b.0));
        // Parents' mtimes change with their entries.
        for (p, _) in &paths {
            if !p.is_empty() {
                self.dirs.insert(parent(p));
            }
        }
        // A changed path below a moved directory may have been reported by
        // its old name: look at the new name too; then look for renames
        // again, since a name moved to inside a moved directory (events
        // named by an intermediate name) only resolves now (bounded).
        let mut moved = Vec::new();
        for _ in 0..3 {
            let more = self.renames(&paths)?;
            if more.is_empty() {
                break;
            }
            self.map_moved(&mut paths, &more);
            moved.extend(more);
        }
        self.check_moved_dirs(&moved, &mut paths);
        if b.links_unknown {
            // A write or metadata change through a name gone before its
            // event was read (inotify): if it was a hard link, its other
            // names changed. Each known hard-linked name is compared with
            // the index (its content is read only when its size or mtime
            // differs).
            let extra = self
                .index
                .linked_inodes()
                .into_iter()
                .flat_map(|ino| self.index.link_names(ino))
                .map(|p| {
                    let c = Change {
                        content: false,
                        metadata: true,
                        moved: false,
                    };
                    (p, c)
                })
                .collect();
            merge_paths(&mut paths, extra);
        }
        self.add_orphaned_links(&mut paths, &b.handles, &b.inodes, watcher);
        for (p, c) in &paths {
            if let Err(e) = self.sync_path(p, *c, false) {
                if e.downcast_ref::<QueueFull>().is_some() {
                    return Err(e);
                }
                // One unreadable path does not stop replication: the next
                // change or sweep sends it whole.
                warn!(
                    "replicating {}: {e:#}; it is sent again later",
                    display_path(p)
                );
                if !p.is_empty() {
                    self.index.mark_unknown(p, Kind::File);
                }
            }
        }
        self.reconcile_dirs(&b.dirs, &b.appeared, &paths, watcher)?;
        self.finish_dirs()?;
        self.cut.flush()
    }

    /// After renames: changed paths and directories whose metadata the
    /// batch sets, below a moved directory, are looked at by their new
    /// names too.
    fn map_moved(&mut self, paths: &mut Vec<(Vec<u8>, Change)>, moved: &[(Vec<u8>, Vec<u8>)]) {
        let mut extra = Vec::new();
        for (p, c) in paths.iter() {
            for (from, to) in moved {
                if let Some(rest) = under(p, from) {
                    let mut np = to.clone();
                    np.extend_from_slice(rest);
                    extra.push((np, *c));
                }
            }
        }
        merge_paths(paths, extra);
        let mut moved_dirs = Vec::new();
        for d in &self.dirs {
            for (from, to) in moved {
                if let Some(rest) = under(d, from) {
                    let mut nd = to.clone();
                    nd.extend_from_slice(rest);
                    moved_dirs.push(nd);
                }
            }
        }
        self.dirs.extend(moved_dirs);
    }

    /// A directory rename is inferred from an inode number, and a removed
    /// directory's number may be reused by a new one that is then moved:
    /// after each directory rename, the entries directly below the new
    /// name that the index and the source disagree on are looked at too
    /// (a genuine move costs one lstat per entry and one listing).
    fn check_moved_dirs(
        &mut self,
        moved: &[(Vec<u8>, Vec<u8>)],
        paths: &mut Vec<(Vec<u8>, Change)>,
    ) {
        let mut extra = Vec::new();
        let all = Change {
            content: true,
            metadata: true,
            moved: false,
        };
        for (_, to) in moved {
            if !self.index.get(to).is_some_and(|s| s.kind == Kind::Dir) {
                continue;
            }
            let known = self.index.children(to);
            for c in &known {
                let same = self
                    .index
                    .get(c)
                    .zip(self.lstat(c))
                    .is_some_and(|(s, m)| s.ino == ino_of(&m));
                if !same {
                    extra.push((c.clone(), all));
                }
            }
            let known: BTreeSet<Vec<u8>> = known.into_iter().collect();
            if let Ok(rd) = std::fs::read_dir(self.abs(to)) {
                for d in rd.flatten() {
                    let mut c = to.clone();
                    c.push(b'/');
                    c.extend_from_slice(d.file_name().as_bytes());
                    if !known.contains(&c) {
                        extra.push((c, all));
                    }
                }
            }
        }
        if extra.is_empty() {
            return;
        }
        debug!(
            paths = ?extra.iter().map(|(p, _)| display_path(p)).collect::<Vec<_>>(),
            "entries of moved directories that differ from what the target holds"
        );
        merge_paths(paths, extra);
    }

    /// A changed name of a hard-linked file that no longer holds its inode
    /// (deleted or replaced since the event): a write through that name
    /// changed the inode's content, and nothing names its other links. They
    /// are diffed too (only changed blocks travel).
    fn add_orphaned_links(
        &mut self,
        paths: &mut Vec<(Vec<u8>, Change)>,
        handles: &HashMap<Vec<u8>, Handle>,
        inodes: &std::collections::HashSet<Ino>,
        watcher: &dyn Locate,
    ) {
        let mut extra = Vec::new();
        for ino in inodes {
            for other in self.index.link_names(*ino) {
                extra.push((
                    other,
                    Change {
                        content: true,
                        metadata: true,
                        moved: false,
                    },
                ));
            }
        }
        for (p, _) in paths.iter() {
            let now = self.lstat(p).map(|m| ino_of(&m));
            // The inode the index knows at this name, and the one the last
            // event was about (a name created and removed within the batch
            // is not in the index).
            let mut inos: Vec<Ino> = Vec::new();
            if let Some(s) = self.index.get(p) {
                if s.kind == Kind::File && !s.unknown && now != Some(s.ino) {
                    inos.push(s.ino);
                }
            }
            if now.is_none() {
                if let Some((at, ino)) = handles.get(p).and_then(|h| watcher.locate(h)) {
                    inos.push(ino);
                    // The object lives on under another name (an ancestor
                    // moved, maybe more than once, since the event): look
                    // at it there.
                    let pa = parent(&at);
                    let parent_known = pa.is_empty()
                        || self
                            .index
                            .get(&pa)
                            .is_some_and(|s| s.kind == Kind::Dir && !s.unknown);
                    if &at != p && parent_known {
                        extra.push((
                            at,
                            Change {
                                content: true,
                                metadata: true,
                                moved: false,
                            },
                        ));
                    }
                }
            }
            for ino in inos {
                for other in self.index.link_names(ino) {
                    if &other != p {
                        extra.push((
                            other,
                            Change {
                                content: true,
                                metadata: true,
                                moved: false,
                            },
                        ));
                    }
                }
            }
        }
        if extra.is_empty() {
            return;
        }
        debug!(
            paths = ?extra.iter().map(|(p, _)| display_path(p)).collect::<Vec<_>>(),
            "diffing other links of hard-linked files whose changed name is gone"
        );
        merge_paths(paths, extra);
    }

    /// Renames: a known entry that is gone (or replaced) whose inode now
    /// sits at another changed path.
    fn renames(&mut self, paths: &[(Vec<u8>, Change)]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut lost: HashMap<Ino, Vec<u8>> = HashMap::new();
        let mut now: Vec<(Vec<u8>, Option<Ino>)> = Vec::new();
        for (p, c) in paths {
            let md = self.lstat(p);
            let ino = md.as_ref().map(ino_of);
            if let Some(st) = self.index.get(p) {
                // An inode number at another name is a move only when this
                // name was moved from: a removed entry's number is reused by
                // the next one created (a file removed and another made, or
                // linked and moved, in the same batch is no rename; the new
                // name is sent whole).
                if !st.unknown && ino != Some(st.ino) && c.moved {
                    lost.insert(st.ino, p.clone());
                }
            }
            // Only a name moved to (or a non-directory) can be the new name.
            let ino = ino.filter(|_| c.moved || md.as_ref().is_some_and(|m| !m.is_dir()));
            now.push((p.clone(), ino));
        }
        if lost.is_empty() {
            return Ok(Vec::new());
        }
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (q, ino) in &now {
            let Some(ino) = ino else { continue };
            let Some(from) = lost.get(ino) else { continue };
            if from == q || q.starts_with(from) && q.get(from.len()) == Some(&b'/') {
                continue;
            }
            // Another known name that still holds the inode on the source
            // makes this one a removed file whose number was reused (or a
            // hard link removed): the new name is linked to that one.
            if self
                .index
                .link_names(*ino)
                .iter()
                .any(|r| r != from && r != q && self.lstat(r).is_some_and(|m| ino_of(&m) == *ino))
            {
                continue;
            }
            // Same kind only (a reused inode number may be another kind).
            let was_dir = self.index.get(from).is_some_and(|s| s.kind == Kind::Dir);
            if self.lstat(q).is_none_or(|m| m.is_dir() != was_dir) {
                continue;
            }
            let known_same = self
                .index
                .get(q)
                .is_some_and(|s| s.ino == *ino && !s.unknown);
            if !known_same {
                pending.push((from.clone(), q.clone()));
                lost.remove(ino);
            }
        }
        // Order: a rename whose destination is another's source goes after it.
        let mut done: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        while !pending.is_empty() {
            // Ready: the destination is no other pending rename's source, and
            // its parent exists on the target (it may arrive by a rename).
            let ready = (0..pending.len()).find(|&i| {
                let to = &pending[i].1;
                let p = parent(to);
                !pending.iter().any(|(f, _)| f == to)
                    && (p.is_empty()
                        || self
                            .index
                            .get(&p)
                            .is_some_and(|s| s.kind == Kind::Dir && !s.unknown))
            });
            let Some(i) = ready else {
                debug!("renames left that cannot be ordered; sending them as new entries");
                break;
            };
            let (from, to) = pending.remove(i);
            if self.index.get(&from).is_none() {
                continue;
            }
            self.dirs.insert(parent(&from));
            self.dirs.insert(parent(&to));
            // rename(2) replaces a file by a file only: a directory (the
            // source's was emptied or removed first) or an entry of the
            // other kind at the destination goes first.
            let from_dir = self.index.get(&from).is_some_and(|s| s.kind == Kind::Dir);
            if self
                .index
                .get(&to)
                .is_some_and(|t| t.kind == Kind::Dir || from_dir || t.unknown)
            {
                self.emit(Record::Delete { path: to.clone() })?;
                self.index.remove_tree(&to);
            }
            self.emit(Record::Rename {
                from: from.clone(),
                to: to.clone(),
            })?;
            self.index.rename_tree(&from, &to);
            // Pending renames below the moved directory now start at its new name.
            for (f, _) in pending.iter_mut() {
                if let Some(rest) = under(f, &from) {
                    let mut nf = to.clone();
                    nf.extend_from_slice(rest);
                    *f = nf;
                }
            }
            done.push((from, to));
        }
        Ok(done)
    }

    /// Bring one path on the target up to date. `force_new`: send it whole
    /// (its parent was just created).
    fn sync_path(&mut self, rel: &[u8], change: Change, force_new: bool) -> Result<()> {
        if self.excl.excluded(rel) {
            return Ok(());
        }
        let abs = self.abs(rel);
        let md = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(_) => return self.gone(rel),
        };
        let Some(kind) = Kind::of(md.file_type()) else {
            return Ok(()); // a socket
        };
        let ino = ino_of(&md);
        let mut e = match standin_builder::scan::stat_entry(&abs, rel.to_vec(), &mut HashMap::new())
        {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(()),
            Err(_) => return self.gone(rel),
        };
        e.link = None;
        e.sparse = None;
        e.sha256 = None;
        if rel.is_empty() {
            // The root always exists on the target: only its metadata moves.
            self.index.record(&e, ino);
            self.dirs.insert(Vec::new());
            return Ok(());
        }
        let known = self.index.get(rel).cloned();
        if let Some(s) = known
            .as_ref()
            .filter(|s| !force_new && !s.unknown && s.ino == ino && s.kind == kind)
        {
            let mut content = false;
            if kind == Kind::File {
                let f = self.index.file(ino);
                let need = change.content
                    || f.is_none_or(|f| f.size != e.size || f.mtime_ns != e.mtime_ns);
                if need {
                    content = self.diff_content(&abs, &e, ino, false)?;
                }
                if content && md.nlink() > 1 {
                    self.relink(rel, ino)?;
                }
                self.index.note_links(rel, ino, md.nlink());
            }
            if kind == Kind::Dir {
                self.dirs.insert(rel.to_vec());
            } else if kind != Kind::File && s.meta != metadata_digest(&e) {
                // A symlink's target or a device's numbers cannot change in
                // place (a reused inode number): replace it.
                self.emit(Record::Create(e.clone()))?;
            } else if content || s.meta != metadata_digest(&e) {
                self.emit(Record::SetMetadata(e.clone()))?;
            }
            self.index.record(&e, ino);
            return Ok(());
        }
        if let Some(s) = &known {
            if s.kind == Kind::Dir || kind == Kind::Dir || s.unknown {
                self.emit(Record::Delete { path: rel.to_vec() })?;
            }
            self.index.remove_tree(rel);
        }
        self.dirs.insert(parent(rel));
        self.new_entry(&abs, e, ino, md.nlink(), md.dev())
    }

    /// `rel` is sent as a new file with inode `ino`: a known name of that
    /// inode number that does not hold it on the source any more is a
    /// removed file whose number was reused (its removal not yet seen, e.g.
    /// named under a directory's intermediate name). It is not the same
    /// file: mark it unknown, so that it is neither taken for a rename's
    /// source nor linked to, and its own event replaces or removes it.
    fn drop_stale_names(&mut self, rel: &[u8], ino: Ino) {
        for q in self.index.link_names(ino) {
            if q != rel && self.lstat(&q).is_none_or(|m| ino_of(&m) != ino) {
                self.index.mark_unknown(&q, Kind::File);
            }
        }
    }

    /// The content of a hard-linked inode changed through `rel`: make every
    /// other known name of it on the target the same inode again (the
    /// target may hold them as separate files).
    fn relink(&mut self, rel: &[u8], ino: Ino) -> Result<()> {
        let others: Vec<Vec<u8>> = self
            .index
            .link_names(ino)
            .into_iter()
            .filter(|p| p.as_slice() != rel)
            .collect();
        for o in others {
            if self.lstat(&o).is_some_and(|m| ino_of(&m) == ino) {
                self.emit(Record::Link {
                    existing: rel.to_vec(),
                    new: o,
                })?;
            } else {
                // Not at that name any more (moved or removed since): the
                // target's copy there keeps the old content, so it must not
                // be carried along by a rename; its next change sends it
                // as new (linked to `rel` again).
                self.index.mark_unknown(&o, Kind::File);
            }
        }
        Ok(())
    }

    fn diff_content(&mut self, abs: &Path, e: &Entry, ino: Ino, fresh: bool) -> Result<bool> {
        let cut = &mut self.cut;
        match self
            .index
            .diff_file(abs, e, ino, fresh, &mut |r| cut.push(r))
        {
            Ok(d) => Ok(d.changed),
            Err(err) => {
                // Whatever was sent of it is not verified: send it whole next time.
                self.index.forget_file(ino);
                Err(err)
            }
        }
    }

    /// Send an entry the target does not have (and, for a directory,
    /// everything below it).
    fn new_entry(&mut self, abs: &Path, e: Entry, ino: Ino, nlink: u64, dev: u64) -> Result<()> {
        let rel = e.path.clone();
        if e.kind == Kind::File && nlink > 1 && self.index.file(ino).is_some() {
            // A known name that still holds the inode on the source (the
            // one the content state was recorded under first).
            let mut names = self.index.link_names(ino);
            if let Some(f) = self.index.file(ino) {
                if let Some(i) = names.iter().position(|n| *n == f.path) {
                    let first = names.remove(i);
                    names.insert(0, first);
                }
            }
            let found = names.into_iter().find(|other| {
                *other != rel
                    && self
                        .index
                        .get(other)
                        .is_some_and(|s| s.ino == ino && !s.unknown)
                    && self.lstat(other).is_some_and(|m| ino_of(&m) == ino)
            });
            if let Some(other) = found {
                self.emit(Record::Link {
                    existing: other,
                    new: rel.clone(),
                })?;
                self.diff_content(abs, &e, ino, false)?;
                self.emit(Record::SetMetadata(e.clone()))?;
                self.index.record(&e, ino);
                self.index.note_links(&rel, ino, nlink);
                return Ok(());
            }
        }
        self.emit(Record::Create(e.clone()))?;
        match e.kind {
            Kind::File => {
                self.drop_stale_names(&rel, ino);
                if self.diff_content(abs, &e, ino, true)? {
                    self.emit(Record::SetMetadata(e.clone()))?;
                }
                self.index.record(&e, ino);
                if nlink > 1 {
                    self.relink(&rel, ino)?;
                }
                self.index.note_links(&rel, ino, nlink);
            }
            Kind::Dir => {
                self.index.record(&e, ino);
                self.dirs.insert(rel.clone());
                if dev != self.root_dev {
                    return Ok(()); // a mount point: its content is not replicated
                }
                let mut children: Vec<Vec<u8>> = match std::fs::read_dir(abs) {
                    Ok(rd) => rd
                        .filter_map(|d| d.ok())
                        .map(|d| {
                            let mut c = rel.clone();
                            if !c.is_empty() {
                                c.push(b'/');
                            }
                            c.extend_from_slice(d.file_name().as_bytes());
                            c
                        })
                        .collect(),
                    Err(_) => Vec::new(),
                };
                children.sort();
                for c in children {
                    self.sync_path(
                        &c,
                        Change {
                            content: true,
                            metadata: true,
                            moved: false,
                        },
                        true,
                    )?;
                }
            }
            _ => self.index.record(&e, ino),
        }
        Ok(())
    }

    /// Every ancestor of `rel` is still the directory the index knows
    /// (present, and the same inode where the index knows it).
    fn ancestors_intact(&self, rel: &[u8]) -> bool {
        let mut p = parent(rel);
        while !p.is_empty() {
            let Some(md) = self.lstat(&p) else {
                return false;
            };
            if let Some(s) = self.index.get(&p).filter(|s| !s.unknown) {
                if s.ino != ino_of(&md) || !md.is_dir() {
                    return false;
                }
            }
            p = parent(&p);
        }
        true
    }

    fn gone(&mut self, rel: &[u8]) -> Result<()> {
        if rel.is_empty() {
            anyhow::bail!("the protected root {} vanished", self.root.display());
        }
        if !self.redo.contains(rel) && !self.ancestors_intact(rel) {
            // An ancestor moved or went away after this batch was cut: its
            // own event (in the next batch) says which. Deleting the path
            // now would lose it if the ancestor was only renamed.
            debug!(
                path = %display_path(rel),
                "vanished with an ancestor; looked at again with the next batch"
            );
            self.deferred.insert(
                rel.to_vec(),
                Change {
                    content: true,
                    metadata: true,
                    moved: false,
                },
            );
            return Ok(());
        }
        let p = parent(rel);
        let parent_known = p.is_empty() || self.index.get(&p).is_some_and(|s| s.kind == Kind::Dir);
        if self.index.get(rel).is_some() || parent_known {
            self.emit(Record::Delete { path: rel.to_vec() })?;
            self.index.remove_tree(rel);
            self.dirs.insert(p);
        }
        Ok(())
    }

    /// Directory metadata last, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs: Vec<Vec<u8>> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by(|a, b| path_cmp(b, a));
        for d in dirs {
            if self.excl.excluded(&d) {
                continue;
            }
            let Some(s) = self.index.get(&d).cloned() else {
                if d.is_empty() {
                    // The root is always on the target.
                    if let Ok(Some(e)) = standin_builder::scan::stat_entry(
                        &self.root,
                        Vec::new(),
                        &mut HashMap::new(),
                    ) {
                        let md = self.lstat(&d).context("reading the root")?;
                        self.emit(Record::SetMetadata(e.clone()))?;
                        self.index.record(&e, ino_of(&md));
                    }
                }
                continue;
            };
            if s.kind != Kind::Dir {
                continue;
            }
            if s.unknown {
                // Seeded unknown (changed around the mirror) and not named
                // by an event itself: its entries are known one by one, only
                // its own state is not. Make it exist with the source's
                // metadata (a Create of an existing directory keeps its
                // entries); without this its mtime would stay as the
                // target's apply of its entries left it.
                self.resolve_unknown_dir(&d)?;
                continue;
            }
            let abs = self.abs(&d);
            if !self
                .lstat(&d)
                .is_some_and(|m| ino_of(&m) == s.ino && m.is_dir())
            {
                // Moved (or removed) since its entries changed: its new
                // name gets its metadata with the batch that holds the move.
                if !self.redo.contains(&d) {
                    self.deferred.entry(d.clone()).or_default().metadata = true;
                }
                continue;
            }
            if let Ok(Some(e)) =
                standin_builder::scan::stat_entry(&abs, d.clone(), &mut HashMap::new())
            {
                self.emit(Record::SetMetadata(e.clone()))?;
                self.index.record(&e, s.ino);
            }
        }
        Ok(())
    }

    /// An unknown directory that is a directory on the source: send it as a
    /// Create (keeps its entries on the target, sets its metadata), after
    /// its unknown ancestors. Returns whether it is now known.
    fn resolve_unknown_dir(&mut self, d: &[u8]) -> Result<bool> {
        if d.is_empty() {
            return Ok(true);
        }
        match self.index.get(d) {
            Some(s) if s.kind == Kind::Dir && !s.unknown => return Ok(true),
            Some(s) if s.kind == Kind::Dir => {}
            _ => return Ok(false),
        }
        let Some(md) = self.lstat(d) else {
            return Ok(false);
        };
        if !md.is_dir() || self.excl.excluded(d) || !self.resolve_unknown_dir(&parent(d))? {
            return Ok(false);
        }
        let Ok(Some(e)) =
            standin_builder::scan::stat_entry(&self.abs(d), d.to_vec(), &mut HashMap::new())
        else {
            return Ok(false);
        };
        self.emit(Record::Create(e.clone()))?;
        self.index.record(&e, ino_of(&md));
        Ok(true)
    }

    /// Compare the whole tree with the index and send every difference.
    /// Returns how many paths differed.
    pub(super) fn sweep(&mut self) -> Result<u64> {
        let started = Instant::now();
        let before = self.cut.counters.records_sent.load(Ordering::Relaxed);
        let mut repairs = 0u64;
        // The first repaired paths, for status.
        let mut repaired: Vec<Vec<u8>> = Vec::new();
        let mut seen: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        let mut walk = walkdir::WalkDir::new(&self.root)
            .follow_links(false)
            .same_file_system(true)
            .sort_by_file_name()
            .into_iter();
        let mut entries: Vec<Vec<u8>> = Vec::new();
        while let Some(d) = walk.next() {
            let Ok(d) = d else { continue };
            let rel = d
                .path()
                .strip_prefix(&self.root)
                .map(|r| r.as_os_str().as_bytes().to_vec())
                .unwrap_or_default();
            if self.excl.excluded(&rel) {
                if d.file_type().is_dir() && d.depth() > 0 {
                    walk.skip_current_dir();
                }
                continue;
            }
            entries.push(rel);
        }
        // Known paths that are gone first (deepest last is fine: Delete is recursive).
        let present: std::collections::HashSet<&Vec<u8>> = entries.iter().collect();
        let stale: Vec<Vec<u8>> = self
            .index
            .paths()
            .filter(|(p, _)| !present.contains(p))
            .map(|(p, _)| p.clone())
            .collect();
        drop(present);
        for p in stale {
            if self.index.get(&p).is_none() {
                continue; // removed with its parent
            }
            repairs += 1;
            note_repair(&mut repaired, &p);
            self.dirs.insert(parent(&p));
            self.emit(Record::Delete { path: p.clone() })?;
            self.index.remove_tree(&p);
        }
        for rel in entries {
            if seen.contains_key(&rel) {
                continue;
            }
            let sent_before = self.cut.records.len()
                + self.cut.counters.records_sent.load(Ordering::Relaxed) as usize;
            let known = self.index.get(&rel).cloned();
            // A known, unchanged path still gets its content re-hashed.
            if let (Some(s), Some(md)) = (&known, self.lstat(&rel)) {
                if !s.unknown && s.ino == ino_of(&md) && s.kind == Kind::File {
                    if let Ok(Some(mut e)) = standin_builder::scan::stat_entry(
                        &self.abs(&rel),
                        rel.clone(),
                        &mut HashMap::new(),
                    ) {
                        e.link = None;
                        e.sparse = None;
                        let ch = self.diff_content(&self.abs(&rel), &e, s.ino, false)?;
                        if ch || s.meta != metadata_digest(&e) {
                            self.emit(Record::SetMetadata(e.clone()))?;
                        }
                        self.index.record(&e, s.ino);
                    }
                    let after = self.cut.records.len()
                        + self.cut.counters.records_sent.load(Ordering::Relaxed) as usize;
                    if after != sent_before {
                        repairs += 1;
                        note_repair(&mut repaired, &rel);
                    }
                    seen.insert(rel, ());
                    continue;
                }
            }
            self.sync_path(
                &rel,
                Change {
                    content: false,
                    metadata: true,
                    moved: false,
                },
                false,
            )?;
            let after = self.cut.records.len()
                + self.cut.counters.records_sent.load(Ordering::Relaxed) as usize;
            if after != sent_before {
                repairs += 1;
                note_repair(&mut repaired, &rel);
            }
            seen.insert(rel, ());
        }
        self.finish_dirs()?;
        self.cut.flush()?;
        *self
            .cut
            .counters
            .sweep_paths
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = repaired;
        let sent = self.cut.counters.records_sent.load(Ordering::Relaxed) - before;
        info!(
            repairs,
            records = sent,
            seconds = started.elapsed().as_secs_f64(),
            "tree compared with what the target holds"
        );
        Ok(repairs)
    }
}

/// Keep the first few repaired paths of a sweep (for status).
fn note_repair(repaired: &mut Vec<Vec<u8>>, path: &[u8]) {
    if repaired.len() < super::REPAIRED_PATHS_KEPT {
        repaired.push(path.to_vec());
    }
}
