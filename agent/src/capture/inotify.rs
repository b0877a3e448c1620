//! inotify fallback: one watch per directory, added as directories appear.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use tracing::debug;

use super::{Handle, Shared};

/// The `Handle` type of an inotify watch descriptor (fanotify's handle
/// types are not negative).
pub(super) const WD_HANDLE: i32 = i32::MIN;

/// Watch descriptor → the directory's path as the reader knows it now,
/// shared with [`super::Watcher::locate`].
pub(super) type WdPaths = Arc<Mutex<HashMap<i32, PathBuf>>>;

/// The path a watch descriptor's directory has now, as the reader knows it.
pub(super) fn path_of(paths: &WdPaths, h: &Handle) -> Option<PathBuf> {
    if h.kind != WD_HANDLE {
        return None;
    }
    let wd = i32::from_ne_bytes(h.bytes.as_slice().try_into().ok()?);
    paths
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&wd)
        .cloned()
}

fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::DONT_FOLLOW
        | WatchFlags::EXCL_UNLINK
        | WatchFlags::ONLYDIR
}

struct Watches {
    fd: OwnedFd,
    by_wd: WdPaths,
    /// Directory moves whose MOVED_TO was not in the same read (cookie →
    /// old path): the kernel queues the pair together, so it is the first
    /// event of the next read, or the directory left the tree.
    pending_from: HashMap<u32, PathBuf>,
}

impl Watches {
    /// Watch `dir` and every directory below it (same filesystem). When
    /// `note` is set, every entry found is reported as changed (it may have
    /// been created before its directory was watched).
    fn add_tree(&mut self, shared: &Shared, dir: &Path, note: bool) {
        let dev = std::fs::symlink_metadata(dir).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
        let mut it = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .same_file_system(true)
            .into_iter();
        while let Some(e) = it.next() {
            let Ok(e) = e else { continue };
            if shared.ignore.iter().any(|i| e.path().starts_with(i)) {
                if e.file_type().is_dir() {
                    it.skip_current_dir();
                }
                continue;
            }
            if note && e.depth() > 0 {
                shared.note_abs(e.path(), true);
            }
            if e.file_type().is_dir() {
                let _ = &dev;
                match inotify::add_watch(&self.fd, e.path(), mask()) {
                    Ok(wd) => {
                        if note {
                            shared.note_appeared(Handle {
                                kind: WD_HANDLE,
                                bytes: wd.to_ne_bytes().to_vec(),
                            });
                        }
                        self.by_wd
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(wd, e.path().to_path_buf());
                    }
                    Err(rustix::io::Errno::NOSPC) => {
                        shared.overflow(
                            "too many inotify watches; raise fs.inotify.max_user_watches",
                        );
                    }
                    Err(err) => debug!("watching {}: {err}", e.path().display()),
                }
            }
        }
    }

    /// `dir` has a watch.
    fn watched(&self, dir: &Path) -> bool {
        self.by_wd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|p| p == dir)
    }

    /// A watched directory moved from `from` to `to`: rename its watches.
    fn moved(&mut self, from: &Path, to: &Path) {
        let mut by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
        for p in by_wd.values_mut() {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// A directory left the tree: drop its watches.
    fn forget(&mut self, from: &Path) {
        let mut by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<i32> = by_wd
            .iter()
            .filter(|(_, p)| p.starts_with(from))
            .map(|(w, _)| *w)
            .collect();
        for w in gone {
            let _ = inotify::remove_watch(&self.fd, w);
            by_wd.remove(&w);
        }
    }
}

pub(super) fn spawn(shared: Arc<Shared>) -> Result<(std::thread::JoinHandle<()>, WdPaths)> {
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
        .context("creating an inotify instance")?;
    let mut w = Watches {
        fd,
        by_wd: WdPaths::default(),
        pending_from: HashMap::new(),
    };
    let root = shared.root.clone();
    w.add_tree(&shared, &root, false);
    if w.by_wd.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
        anyhow::bail!("watching {} with inotify failed", root.display());
    }
    let paths = w.by_wd.clone();
    let t = std::thread::Builder::new()
        .name("standin-inotify".into())
        .spawn(move || read_loop(shared, w))
        .context("starting the inotify reader")?;
    Ok((t, paths))
}

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
        // Collect one read's events, then act (watch changes need &mut w).
        let mut events: Vec<(i32, ReadFlags, u32, Option<Vec<u8>>)> = Vec::new();
        {
            let mut r = inotify::Reader::new(&w.fd, &mut buf);
            loop {
                match r.next() {
                    Ok(e) => events.push((
                        e.wd(),
                        e.events(),
                        e.cookie(),
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
        handle(&shared, &mut w, events);
    }
}

fn handle(shared: &Shared, w: &mut Watches, events: Vec<(i32, ReadFlags, u32, Option<Vec<u8>>)>) {
    // Directory moves: cookie -> old path, paired with MOVED_TO in the same
    // read or the next one (a pair split by the read's end keeps the
    // directory's watches, renamed, so its events keep its identity).
    let mut prev = std::mem::take(&mut w.pending_from);
    let mut moved_from: HashMap<u32, PathBuf> = HashMap::new();
    for (wd, flags, cookie, name) in events {
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            shared.overflow("inotify queue overflow");
            continue;
        }
        if flags.contains(ReadFlags::IGNORED) {
            w.by_wd
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&wd);
            continue;
        }
        let Some(dir) = w
            .by_wd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&wd)
            .cloned()
        else {
            continue;
        };
        shared.note_dir(
            Handle {
                kind: WD_HANDLE,
                bytes: wd.to_ne_bytes().to_vec(),
            },
            &dir,
        );
        let path = match &name {
            Some(n) if !n.is_empty() => dir.join(OsStr::from_bytes(n)),
            _ => dir.clone(),
        };
        let content = !(flags & !(ReadFlags::ATTRIB | ReadFlags::ISDIR)).is_empty();
        let moved = flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO);
        shared.note_abs_object(&path, content, moved, None);
        let is_dir = flags.contains(ReadFlags::ISDIR);
        if is_dir && flags.contains(ReadFlags::MOVED_FROM) {
            moved_from.insert(cookie, path.clone());
        }
        if is_dir && flags.contains(ReadFlags::MOVED_TO) {
            match moved_from.remove(&cookie).or_else(|| prev.remove(&cookie)) {
                // Not watched under its old name (created and moved before
                // its creation was read): watched and walked now.
                Some(old) if w.watched(&old) => w.moved(&old, &path),
                _ => w.add_tree(shared, &path, true),
            }
        }
        if is_dir && flags.contains(ReadFlags::CREATE) {
            w.add_tree(shared, &path, true);
        }
    }
    // Unpaired for a whole read: moved out of the tree.
    for (_, old) in prev {
        w.forget(&old);
    }
    w.pending_from = moved_from;
}
