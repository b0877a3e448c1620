//! Change capture: which paths under the protected root changed.
//!
//! [`Watcher::start`] marks the whole filesystem of the root with fanotify
//! (`FAN_MARK_FILESYSTEM`, FID reporting: no per-directory watches) and
//! keeps the events that fall under the root. Without fanotify (not root,
//! an old kernel, or `STANDIN_CAPTURE=inotify`) it falls back to inotify
//! with one watch per directory. A reader thread turns events into a
//! deduplicated *dirty set* of relative paths; [`Watcher::take_batch`] hands
//! it out after a short debounce. When the kernel's event queue overflows
//! (or an event cannot be resolved) the batch says `rescan`: the caller
//! must compare the whole tree (a difference sweep); changes are never
//! dropped silently.

mod fanotify;
mod inotify;
mod sys;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{info, warn};

/// Which kernel interface to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// fanotify if it works, else inotify (also chosen by `STANDIN_CAPTURE=inotify`).
    #[default]
    Auto,
    Fanotify,
    Inotify,
}

/// How to capture changes.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub backend: Backend,
    /// Wait this long after the last event before handing out a batch
    /// (bounded by `max_delay` while events keep coming).
    pub debounce: Duration,
    /// Longest a batch waits for quiet.
    pub max_delay: Duration,
    /// More distinct dirty paths than this turn into one rescan.
    pub max_dirty: usize,
    /// Absolute paths whose events are ignored (the agent's state directory,
    /// excluded trees).
    pub ignore: Vec<PathBuf>,
    /// Wait this long before each read of the kernel's events (zero by
    /// default): tests use it to let events pile up as on a busy machine,
    /// where the reader lags behind the tree.
    pub read_delay: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            debounce: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            max_dirty: 1 << 20,
            ignore: Vec::new(),
            read_delay: Duration::ZERO,
        }
    }
}

/// What happened to a dirty path (merged over all its events in a batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// Content or name may have changed (create, delete, move, write).
    pub content: bool,
    /// Only metadata (mode, owner, xattrs, times) reported.
    pub metadata: bool,
    /// Moved from or to this name (a rename; an inode number seen at
    /// another name without it may be a reused one).
    pub moved: bool,
}

/// A kernel file handle of the object an event was about (fanotify only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handle {
    kind: i32,
    bytes: Vec<u8>,
}

impl Handle {
    /// A handle from its type and opaque bytes (as the kernel reports them;
    /// tests make up their own).
    pub fn new(kind: i32, bytes: Vec<u8>) -> Handle {
        Handle { kind, bytes }
    }
}

/// Changed paths, relative to the root (raw bytes, `""` is the root).
#[derive(Debug, Default)]
pub struct Batch {
    pub paths: BTreeMap<Vec<u8>, Change>,
    /// Events were lost: compare the whole tree.
    pub rescan: bool,
    /// For changed paths of non-directories (fanotify): the handle of the
    /// object the last event was about, so that [`Watcher::inode_of`] finds
    /// the inode when the name is gone by the time the batch is diffed (a
    /// write through a hard link that was then removed).
    pub handles: HashMap<Vec<u8>, Handle>,
    /// Non-directory inodes (device, inode number) that events were about
    /// without a name under a directory that still exists: link count
    /// changes, or a write through a name whose directory was removed
    /// since. Their known hard links must be looked at (fanotify only).
    pub inodes: HashSet<(u64, u64)>,
    /// The directories events were in (fanotify: by file handle; inotify:
    /// by watch descriptor): each directory's handle
    /// and the names (relative to the root) its events were given. A
    /// directory that moves while its events are read gives them a name
    /// it no longer has by the time the batch is diffed; the diff finds
    /// its current name by the handle and compares its entries with the
    /// index (see `replicate::diff`).
    pub dirs: HashMap<Handle, BTreeSet<Vec<u8>>>,
    /// Directories that appeared (created, or moved in) during the batch:
    /// their entries are compared with the index whatever their name (a
    /// removed directory's inode number may be reused by a new one at the
    /// same name).
    pub appeared: HashSet<Handle>,
    /// A content or metadata event was about a name gone by the time it
    /// was read, so which inode it changed is unknown (inotify only: it
    /// gives no file identity). If it was a hard link, the inode's other
    /// names changed too: every known hard-linked name is compared.
    pub links_unknown: bool,
}

impl Batch {
    /// Nothing in it.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.inodes.is_empty() && !self.rescan && !self.links_unknown
    }
}

#[derive(Default)]
struct Dirty {
    paths: HashMap<Vec<u8>, Change>,
    handles: HashMap<Vec<u8>, Handle>,
    inodes: HashSet<(u64, u64)>,
    dirs: HashMap<Handle, BTreeSet<Vec<u8>>>,
    appeared: HashSet<Handle>,
    links_unknown: bool,
    rescan: bool,
    last_event: Option<Instant>,
    first_event: Option<Instant>,
    events: u64,
    overflows: u64,
}

/// State shared by the reader thread and [`Watcher::take_batch`].
pub(crate) struct Shared {
    root: PathBuf,
    ignore: Vec<PathBuf>,
    max_dirty: usize,
    read_delay: Duration,
    dirty: Mutex<Dirty>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// Record an event for an absolute path (ignored outside the root):
    /// `moved` for a rename's name, with the handle of the (non-directory)
    /// object.
    pub(crate) fn note_abs_object(
        &self,
        abs: &Path,
        content: bool,
        moved: bool,
        obj: Option<Handle>,
    ) {
        let Some(rel) = self.relative(abs) else {
            return;
        };
        self.note_rel(rel, content, moved, obj);
    }

    /// An event was in the directory `h`, named `abs` when it was read
    /// (ignored outside the root).
    pub(crate) fn note_dir(&self, h: Handle, abs: &Path) {
        let Some(rel) = self.relative(abs) else {
            return;
        };
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if d.rescan {
            return;
        }
        d.dirs.entry(h).or_default().insert(rel);
    }

    /// The directory `h` appeared (created or moved in).
    pub(crate) fn note_appeared(&self, h: Handle) {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if !d.rescan {
            d.appeared.insert(h);
        }
    }

    /// An event was about a name gone when it was read (inotify): its
    /// inode is unknown.
    pub(crate) fn note_links_unknown(&self) {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if d.rescan || d.links_unknown {
            return;
        }
        d.links_unknown = true;
        d.events += 1;
        let now = Instant::now();
        d.last_event = Some(now);
        d.first_event.get_or_insert(now);
        self.cv.notify_all();
    }

    /// An event about a live non-directory inode without a usable name.
    pub(crate) fn note_inode(&self, ino: (u64, u64)) {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if d.rescan || d.inodes.contains(&ino) {
            return;
        }
        d.events += 1;
        let now = Instant::now();
        d.last_event = Some(now);
        d.first_event.get_or_insert(now);
        d.inodes.insert(ino);
        if d.paths.len() + d.inodes.len() > self.max_dirty {
            warn!(
                "more than {} changed paths pending; falling back to a rescan",
                self.max_dirty
            );
            d.paths.clear();
            d.handles.clear();
            d.inodes.clear();
            d.dirs.clear();
            d.appeared.clear();
            d.links_unknown = false;
            d.rescan = true;
        }
        self.cv.notify_all();
    }

    fn relative(&self, abs: &Path) -> Option<Vec<u8>> {
        if self.ignore.iter().any(|i| abs.starts_with(i)) {
            return None;
        }
        let rel = abs.strip_prefix(&self.root).ok()?;
        Some(rel.as_os_str().as_bytes().to_vec())
    }

    pub(crate) fn note_rel(&self, rel: Vec<u8>, content: bool, moved: bool, obj: Option<Handle>) {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        d.events += 1;
        let now = Instant::now();
        d.last_event = Some(now);
        d.first_event.get_or_insert(now);
        if d.rescan {
            self.cv.notify_all();
            return;
        }
        if let Some(h) = obj {
            d.handles.insert(rel.clone(), h);
        }
        let c = d.paths.entry(rel).or_default();
        c.moved |= moved;
        if content {
            c.content = true;
        } else {
            c.metadata = true;
        }
        if d.paths.len() > self.max_dirty {
            warn!(
                "more than {} changed paths pending; falling back to a rescan",
                self.max_dirty
            );
            d.paths.clear();
            d.handles.clear();
            d.inodes.clear();
            d.dirs.clear();
            d.appeared.clear();
            d.links_unknown = false;
            d.rescan = true;
        }
        self.cv.notify_all();
    }

    /// Events were lost (queue overflow, unresolvable event).
    pub(crate) fn overflow(&self, why: &str) {
        warn!("change capture lost events ({why}); a rescan follows");
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        d.rescan = true;
        d.overflows += 1;
        d.paths.clear();
        d.handles.clear();
        d.inodes.clear();
        d.dirs.clear();
        d.appeared.clear();
        d.links_unknown = false;
        let now = Instant::now();
        d.last_event = Some(now);
        d.first_event.get_or_insert(now);
        self.cv.notify_all();
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Before a read of events: the configured delay, if any.
    pub(crate) fn before_read(&self) {
        if !self.read_delay.is_zero() {
            std::thread::sleep(self.read_delay);
        }
    }
}

/// Counters of a [`Watcher`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    /// Events seen under the root.
    pub events: u64,
    /// Times events were lost and a rescan was requested.
    pub overflows: u64,
}

/// A running change capture for one root. Dropping it stops the reader.
pub struct Watcher {
    shared: Arc<Shared>,
    backend: Backend,
    /// inotify: each watch descriptor's directory (an `O_PATH` descriptor).
    wd_dirs: Option<inotify::WdDirs>,
    /// The root, for `open_by_handle_at` (fanotify only).
    mount: Option<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Start capturing changes under `root`. Start it before the mirror
    /// scans the tree so that nothing changed during the mirror is missed.
    pub fn start(root: &Path, opts: &CaptureOptions) -> Result<Watcher> {
        let root = std::fs::canonicalize(root)
            .with_context(|| format!("resolving the protected root {}", root.display()))?;
        let ignore = opts
            .ignore
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let shared = Arc::new(Shared {
            root: root.clone(),
            ignore,
            max_dirty: opts.max_dirty,
            read_delay: opts.read_delay,
            dirty: Mutex::new(Dirty::default()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut backend = opts.backend;
        if backend == Backend::Auto
            && std::env::var("STANDIN_CAPTURE").is_ok_and(|v| v.eq_ignore_ascii_case("inotify"))
        {
            backend = Backend::Inotify;
        }
        let mut wd_dirs = None;
        let mut start_inotify = |shared: &Arc<Shared>| -> Result<std::thread::JoinHandle<()>> {
            let (t, dirs) = inotify::spawn(shared.clone())?;
            wd_dirs = Some(dirs);
            Ok(t)
        };
        let (backend, thread) = match backend {
            Backend::Inotify => (Backend::Inotify, start_inotify(&shared)?),
            Backend::Fanotify => (Backend::Fanotify, fanotify::spawn(shared.clone())?),
            Backend::Auto => match fanotify::spawn(shared.clone()) {
                Ok(t) => (Backend::Fanotify, t),
                Err(e) => {
                    warn!("fanotify is not available ({e:#}); watching with inotify (one watch per directory)");
                    (Backend::Inotify, start_inotify(&shared)?)
                }
            },
        };
        info!(root = %root.display(), ?backend, "change capture started");
        let mount = match backend {
            Backend::Fanotify => Some(std::os::fd::OwnedFd::from(
                std::fs::File::open(&root)
                    .with_context(|| format!("opening {}", root.display()))?,
            )),
            _ => None,
        };
        Ok(Watcher {
            shared,
            backend,
            wd_dirs,
            mount,
            thread: Some(thread),
        })
    }

    /// The kernel interface in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The canonical root being watched.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Device and inode number of the object `h` names, while it still has
    /// a link somewhere (`None` once it is deleted, or without fanotify).
    pub fn inode_of(&self, h: &Handle) -> Option<(u64, u64)> {
        fanotify::inode_of(self.mount.as_ref()?, h)
    }

    /// Where the object `h` is now: its path relative to the root (one of
    /// its names) and its inode, while it still has a link under the root.
    /// With inotify, only a directory's watch is located: by the
    /// descriptor of the directory the watch holds.
    pub fn locate(&self, h: &Handle) -> Option<(Vec<u8>, (u64, u64))> {
        if let Some(dirs) = &self.wd_dirs {
            let (abs, ino) = inotify::path_of(dirs, h)?;
            let rel = self.shared.relative(&abs)?;
            return Some((rel, ino));
        }
        let (abs, ino) = fanotify::locate(self.mount.as_ref()?, h)?;
        let rel = self.shared.relative(&abs)?;
        Some((rel, ino))
    }

    /// Ask for a full comparison at the next batch (e.g. after a queue overflow).
    pub fn request_rescan(&self) {
        let mut d = self.shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
        d.rescan = true;
        d.paths.clear();
        d.handles.clear();
        d.inodes.clear();
        d.dirs.clear();
        d.appeared.clear();
        d.links_unknown = false;
        d.last_event = Some(Instant::now());
        d.first_event.get_or_insert(Instant::now());
        self.shared.cv.notify_all();
    }

    /// Counters.
    pub fn stats(&self) -> CaptureStats {
        let d = self.shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
        CaptureStats {
            events: d.events,
            overflows: d.overflows,
        }
    }

    /// Wait up to `wait` for changes; then wait until events pause for the
    /// debounce (at most `max_delay` after the first) and take them all.
    /// `None` when nothing changed within `wait`.
    pub fn take_batch(
        &self,
        wait: Duration,
        debounce: Duration,
        max_delay: Duration,
    ) -> Option<Batch> {
        let deadline = Instant::now() + wait;
        let mut d = self.shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
        while d.paths.is_empty() && d.inodes.is_empty() && !d.rescan && !d.links_unknown {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            d = self
                .shared
                .cv
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        loop {
            let now = Instant::now();
            let quiet = d
                .last_event
                .map(|t| now.duration_since(t))
                .unwrap_or(debounce);
            let age = d
                .first_event
                .map(|t| now.duration_since(t))
                .unwrap_or(max_delay);
            if quiet >= debounce || age >= max_delay {
                break;
            }
            let w = (debounce - quiet).min(max_delay - age);
            d = self
                .shared
                .cv
                .wait_timeout(d, w)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let paths = std::mem::take(&mut d.paths);
        let handles = std::mem::take(&mut d.handles);
        let inodes = std::mem::take(&mut d.inodes);
        let dirs = std::mem::take(&mut d.dirs);
        let appeared = std::mem::take(&mut d.appeared);
        let links_unknown = std::mem::take(&mut d.links_unknown);
        let rescan = std::mem::take(&mut d.rescan);
        d.first_event = None;
        Some(Batch {
            paths: paths.into_iter().collect(),
            rescan,
            handles,
            inodes,
            dirs,
            appeared,
            links_unknown,
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
