//! inotify fallback: one watch per directory, added as directories appear.
//!
//! inotify names an event by its watch descriptor and the entry's name; it
//! says nothing of where the watched directory is now. Each watch therefore
//! holds an `O_PATH` descriptor of its directory (the watch is added
//! through that descriptor, so both are the same inode): the directory's
//! current path is read from `/proc/self/fd` when its events are read and
//! when a batch is diffed, the way fanotify resolves a directory's file
//! handle. No path is tracked by replaying renames (a tracked path lags
//! behind the tree and goes wrong when a name is reused in the meantime).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{Mode, OFlags};
use tracing::debug;

use super::{Handle, Shared};

/// The `Handle` type of an inotify watch descriptor (fanotify's handle
/// types are not negative).
pub(super) const WD_HANDLE: i32 = i32::MIN;

/// Watch descriptor → an `O_PATH` descriptor of its directory, shared with
/// [`super::Watcher::locate`].
pub(super) type WdDirs = Arc<Mutex<HashMap<i32, OwnedFd>>>;

fn handle(wd: i32) -> Handle {
    Handle {
        kind: WD_HANDLE,
        bytes: wd.to_ne_bytes().to_vec(),
    }
}

/// Where the directory behind `fd` is now (absolute) and its inode; `None`
/// once it is removed.
fn dir_path(fd: &OwnedFd) -> Option<(PathBuf, (u64, u64))> {
    let st = rustix::fs::fstat(fd).ok()?;
    if st.st_nlink == 0 {
        return None;
    }
    let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    if !p.is_absolute() {
        return None;
    }
    Some((p, (st.st_dev, st.st_ino)))
}

/// The path a watch descriptor's directory has now and its inode.
pub(super) fn path_of(dirs: &WdDirs, h: &Handle) -> Option<(PathBuf, (u64, u64))> {
    if h.kind != WD_HANDLE {
        return None;
    }
    let wd = i32::from_ne_bytes(h.bytes.as_slice().try_into().ok()?);
    dir_path(dirs.lock().unwrap_or_else(|e| e.into_inner()).get(&wd)?)
}

fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::EXCL_UNLINK
        | WatchFlags::ONLYDIR
}

/// Let this process hold one descriptor per watched directory: the soft
/// limit on open files goes up to the hard one.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            debug!("raising the open files limit: {e}");
        }
    }
}

struct Watches {
    fd: OwnedFd,
    by_wd: WdDirs,
}

/// What [`Watches::watch`] found.
enum Watched {
    /// A directory watched for the first time.
    New(i32),
    /// A directory watched already (moved here since).
    Known(i32),
    /// Not a directory (any more), or it could not be watched.
    No,
}

/// Open a directory as an `O_PATH` descriptor, `name` relative to `at`.
fn open_dir(
    at: impl rustix::fd::AsFd,
    name: impl rustix::path::Arg,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Watches {
    /// Watch the directory `dir` (an `O_PATH` descriptor): the watch is
    /// added through the descriptor, so both are the same inode whatever
    /// happens to its name meanwhile.
    fn watch(&mut self, shared: &Shared, dir: OwnedFd) -> Watched {
        match inotify::add_watch(
            &self.fd,
            format!("/proc/self/fd/{}", dir.as_raw_fd()),
            mask(),
        ) {
            Ok(wd) => {
                let mut by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
                match by_wd.entry(wd) {
                    std::collections::hash_map::Entry::Occupied(_) => Watched::Known(wd),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(dir);
                        Watched::New(wd)
                    }
                }
            }
            Err(rustix::io::Errno::NOSPC) => {
                shared.overflow("too many inotify watches; raise fs.inotify.max_user_watches");
                Watched::No
            }
            Err(err) => {
                debug!("adding an inotify watch: {err}");
                Watched::No
            }
        }
    }

    /// [`Watches::watch`] of the directory `name` in the watched directory
    /// `parent` (as it is now).
    fn watch_entry(&mut self, shared: &Shared, parent: i32, name: &[u8]) -> Watched {
        let dir = {
            let by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = by_wd.get(&parent) else {
                return Watched::No;
            };
            match open_dir(p, OsStr::from_bytes(name)) {
                Ok(d) => d,
                Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) => {
                    drop(by_wd);
                    shared.overflow(
                        "too many open files to watch every directory with inotify; \
                         raise the open files limit (ulimit -n)",
                    );
                    return Watched::No;
                }
                Err(_) => return Watched::No,
            }
        };
        self.watch(shared, dir)
    }

    /// The directories below the newly watched `top` are watched too; when
    /// `note` is set, every entry found is reported as changed (it may have
    /// been created before its directory was watched) and each newly
    /// watched directory as appeared. A directory watched already (moved in
    /// under a directory that was not watched yet) is reported as moved and
    /// not descended into: its own watches report what happens below it.
    /// Directories are opened by identity (relative to their parent's
    /// descriptor), so a rename meanwhile cannot make it watch another one
    /// or miss one; names are only for the reports.
    fn scan(&mut self, shared: &Shared, top: i32, note: bool) {
        let mut todo = vec![top];
        while let Some(wd) = todo.pop() {
            let (list, here) = {
                let by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
                let Some(fd) = by_wd.get(&wd) else { continue };
                let list = rustix::fs::openat(
                    fd,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                );
                let here = dir_path(fd);
                (list, here)
            };
            let (Ok(list), Some((here, (dev, _)))) = (list, here) else {
                continue; // removed meanwhile
            };
            if shared.ignore.iter().any(|i| here.starts_with(i)) {
                continue;
            }
            let Ok(entries) = rustix::fs::Dir::new(list) else {
                continue;
            };
            for e in entries {
                let Ok(e) = e else { break };
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let path = here.join(OsStr::from_bytes(name));
                if shared.ignore.iter().any(|i| path.starts_with(i)) {
                    continue;
                }
                let mut moved = false;
                let ft = e.file_type();
                if ft == rustix::fs::FileType::Directory || ft == rustix::fs::FileType::Unknown {
                    match self.watch_entry_on(shared, wd, name, dev) {
                        Watched::New(sub) => {
                            if note {
                                shared.note_appeared(handle(sub));
                            }
                            todo.push(sub);
                        }
                        Watched::Known(sub) => {
                            if note {
                                shared.note_appeared(handle(sub));
                                moved = true;
                            }
                        }
                        Watched::No => {}
                    }
                }
                if note {
                    shared.note_abs_object(&path, true, moved, None);
                }
            }
        }
    }

    /// [`Watches::watch_entry`] on the filesystem `dev` only (a mount
    /// point's content is not replicated).
    fn watch_entry_on(&mut self, shared: &Shared, parent: i32, name: &[u8], dev: u64) -> Watched {
        let same_fs = {
            let by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = by_wd.get(&parent) else {
                return Watched::No;
            };
            rustix::fs::statat(
                p,
                OsStr::from_bytes(name),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| {
                st.st_dev == dev
                    && rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::Directory
            })
        };
        if !same_fs {
            return Watched::No;
        }
        self.watch_entry(shared, parent, name)
    }

    /// A write or metadata change through the non-directory `name` in the
    /// watched directory `parent`: inotify does not say which inode, so it
    /// is looked up now. A hard-linked inode's other names changed too
    /// (reported by inode); when the name is gone already, which inode it
    /// was is unknown and the batch says so.
    fn identify(&self, shared: &Shared, parent: i32, name: &[u8]) {
        let st = {
            let by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = by_wd.get(&parent) else {
                return;
            };
            rustix::fs::statat(
                p,
                OsStr::from_bytes(name),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
        };
        match st {
            Ok(st) => {
                if st.st_nlink > 1
                    && rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::RegularFile
                {
                    shared.note_inode((st.st_dev, st.st_ino));
                }
            }
            Err(_) => shared.note_links_unknown(),
        }
    }

    /// A directory created or moved in as `name` in the watched directory
    /// `parent`: watched and scanned when it is new to the watches, else
    /// reported as appeared there.
    fn appeared(&mut self, shared: &Shared, parent: i32, name: &[u8]) {
        match self.watch_entry(shared, parent, name) {
            Watched::New(wd) => {
                shared.note_appeared(handle(wd));
                self.scan(shared, wd, true);
            }
            Watched::Known(wd) => shared.note_appeared(handle(wd)),
            Watched::No => {}
        }
    }
}

pub(super) fn spawn(shared: Arc<Shared>) -> Result<(std::thread::JoinHandle<()>, WdDirs)> {
    raise_nofile();
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
        .context("creating an inotify instance")?;
    let mut w = Watches {
        fd,
        by_wd: WdDirs::default(),
    };
    let root = open_dir(rustix::fs::CWD, &shared.root)
        .with_context(|| format!("opening {}", shared.root.display()))?;
    let Watched::New(top) = w.watch(&shared, root) else {
        anyhow::bail!("watching {} with inotify failed", shared.root.display());
    };
    w.scan(&shared, top, false);
    let dirs = w.by_wd.clone();
    let t = std::thread::Builder::new()
        .name("standin-inotify".into())
        .spawn(move || read_loop(shared, w))
        .context("starting the inotify reader")?;
    Ok((t, dirs))
}

/// One event as read: watch descriptor, flags, name.
type Event = (i32, ReadFlags, Option<Vec<u8>>);

fn read_loop(shared: Arc<Shared>, mut w: Watches) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 256 << 10];
    while !shared.stopped() {
        {
            let mut pfd = [rustix::event::PollFd::new(
                &w.fd,
                rustix::event::PollFlags::IN,
            )];
            let t = rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            match rustix::event::poll(&mut pfd, Some(&t)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    shared.overflow(&format!("polling inotify: {e}"));
                    return;
                }
            }
        }
        shared.before_read();
        // Collect one read's events, then act (watch changes need &mut w).
        let mut events: Vec<Event> = Vec::new();
        {
            let mut r = inotify::Reader::new(&w.fd, &mut buf);
            loop {
                match r.next() {
                    Ok(e) => events.push((
                        e.wd(),
                        e.events(),
                        e.file_name().map(|n| n.to_bytes().to_vec()),
                    )),
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        shared.overflow(&format!("reading inotify events: {e}"));
                        break;
                    }
                }
                if r.is_buffer_empty() {
                    break;
                }
            }
        }
        handle_events(&shared, &mut w, events);
    }
}

fn handle_events(shared: &Shared, w: &mut Watches, events: Vec<Event>) {
    // Each watch's directory path, resolved once until a directory moves
    // or goes away (as fanotify's reader resolves a directory's handle).
    let mut cache: HashMap<i32, Option<PathBuf>> = HashMap::new();
    // Where each name last changed its object in this read: a write
    // through a name before that went to an inode the name may no longer
    // hold by now.
    let renamed =
        ReadFlags::CREATE | ReadFlags::DELETE | ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO;
    let mut last_change: HashMap<(i32, &[u8]), usize> = HashMap::new();
    for (i, (wd, flags, name)) in events.iter().enumerate() {
        if let Some(n) = name.as_deref().filter(|_| flags.intersects(renamed)) {
            last_change.insert((*wd, n), i);
        }
    }
    for (i, (wd, flags, name)) in events.iter().enumerate() {
        let (wd, flags) = (*wd, *flags);
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            shared.overflow("inotify queue overflow");
            continue;
        }
        if flags.contains(ReadFlags::IGNORED) {
            w.by_wd
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&wd);
            cache.remove(&wd);
            continue;
        }
        let dir = cache
            .entry(wd)
            .or_insert_with(|| {
                let by_wd = w.by_wd.lock().unwrap_or_else(|e| e.into_inner());
                dir_path(by_wd.get(&wd)?).map(|(p, _)| p)
            })
            .clone();
        let Some(dir) = dir else {
            // Removed since: its removal is its parent's event. A write or
            // metadata change through a name in it went to an inode that
            // may have other names elsewhere: which one is unknown now.
            if !flags.contains(ReadFlags::ISDIR)
                && flags.intersects(ReadFlags::MODIFY | ReadFlags::CLOSE_WRITE | ReadFlags::ATTRIB)
            {
                shared.note_links_unknown();
            }
            continue;
        };
        if shared.relative(&dir).is_none() {
            // Moved out of the tree (or into an ignored one): its events
            // are not ours; its watch goes, with those below it as their
            // own events come.
            let _ = inotify::remove_watch(&w.fd, wd);
            continue;
        }
        shared.note_dir(handle(wd), &dir);
        let path = match &name {
            Some(n) if !n.is_empty() => dir.join(OsStr::from_bytes(n)),
            _ => dir.clone(),
        };
        let content = !(flags & !(ReadFlags::ATTRIB | ReadFlags::ISDIR)).is_empty();
        let moved = flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO);
        shared.note_abs_object(&path, content, moved, None);
        if !flags.contains(ReadFlags::ISDIR)
            && flags.intersects(ReadFlags::MODIFY | ReadFlags::CLOSE_WRITE | ReadFlags::ATTRIB)
        {
            if let Some(n) = name.as_deref().filter(|n| !n.is_empty()) {
                if last_change.get(&(wd, n)).is_some_and(|&j| j > i) {
                    shared.note_links_unknown();
                } else {
                    w.identify(shared, wd, n);
                }
            }
        }
        if flags.contains(ReadFlags::ISDIR) {
            if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO | ReadFlags::DELETE) {
                cache.clear();
            }
            if let Some(n) = name.as_deref().filter(|n| !n.is_empty()) {
                if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                    w.appeared(shared, wd, n);
                }
            }
        }
    }
}
