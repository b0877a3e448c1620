//! fanotify backend: one mark on the whole filesystem, events with the
//! parent directory's file handle and the entry's name (FID mode).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::debug;

use super::{sys, Handle, Shared};

const MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_ONDIR;

/// Events that only change metadata.
const META_ONLY: u64 = libc::FAN_ATTRIB;

/// Set up the fanotify group and start the reader thread.
pub(super) fn spawn(shared: Arc<Shared>) -> Result<std::thread::JoinHandle<()>> {
    let fd = sys::fanotify_init(
        libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME
            | libc::FAN_REPORT_FID,
        (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
    )
    .context("creating a fanotify group (needs root and Linux 5.9 or later)")?;
    sys::fanotify_mark(
        fd.as_fd(),
        libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
        MASK,
        &shared.root,
    )
    .with_context(|| {
        format!(
            "marking the filesystem of {} for fanotify",
            shared.root.display()
        )
    })?;
    let mount = std::fs::File::open(&shared.root)
        .with_context(|| format!("opening {}", shared.root.display()))?;
    let mount = OwnedFd::from(mount);
    std::thread::Builder::new()
        .name("standin-fanotify".into())
        .spawn(move || read_loop(shared, fd, mount))
        .context("starting the fanotify reader")
}

fn read_loop(shared: Arc<Shared>, fd: OwnedFd, mount: OwnedFd) {
    let mut file = std::fs::File::from(fd);
    let mut buf = vec![0u8; 256 << 10];
    // Directory handle -> path, kept across reads: the filesystem's other
    // activity (outside the root) is then filtered without system calls.
    // Cleared whenever a directory moves or goes away.
    let mut cache: HashMap<Vec<u8>, Option<PathBuf>> = HashMap::new();
    while !shared.stopped() {
        let mut pfd = [rustix::event::PollFd::new(
            &file,
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
                shared.overflow(&format!("polling fanotify: {e}"));
                return;
            }
        }
        shared.before_read();
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shared.overflow(&format!("reading fanotify events: {e}"));
                return;
            }
        };
        if cache.len() > 65536 {
            cache.clear();
        }
        parse(&shared, &buf[..n], &mount, &mut cache);
    }
    let _ = file.as_raw_fd();
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_ne_bytes(x)
}

/// Walk the events in one read: `struct fanotify_event_metadata` followed by
/// info records (header, fsid, file handle, optional name).
fn parse(
    shared: &Shared,
    buf: &[u8],
    mount: &OwnedFd,
    cache: &mut HashMap<Vec<u8>, Option<PathBuf>>,
) {
    let mut off = 0usize;
    while off + 24 <= buf.len() {
        let event_len = u32_at(buf, off) as usize;
        let meta_len = u16_at(buf, off + 6) as usize;
        if event_len < 24 || off + event_len > buf.len() {
            shared.overflow("malformed fanotify event");
            return;
        }
        let mask = u64_at(buf, off + 8);
        let ev = &buf[off..off + event_len];
        off += event_len;
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            shared.overflow("fanotify queue overflow");
            continue;
        }
        let content = mask & !(META_ONLY | libc::FAN_ONDIR) != 0;
        if mask & libc::FAN_ONDIR != 0
            && mask & (libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO | libc::FAN_DELETE) != 0
        {
            cache.clear();
        }
        let mut i = meta_len;
        let mut seen_dfid = false;
        let mut names: Vec<PathBuf> = Vec::new();
        let mut obj: Option<Handle> = None;
        while i + 4 <= ev.len() {
            let kind = ev[i];
            let len = u16_at(ev, i + 2) as usize;
            if len < 4 || i + len > ev.len() {
                break;
            }
            let rec = &ev[i..i + len];
            i += len;
            if !matches!(
                kind,
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME
                    | libc::FAN_EVENT_INFO_TYPE_DFID
                    | libc::FAN_EVENT_INFO_TYPE_FID
            ) {
                continue;
            }
            // header(4) fsid(8) handle_bytes(4) handle_type(4) handle name\0
            if rec.len() < 20 {
                continue;
            }
            let hb = u32_at(rec, 12) as usize;
            let ht = u32_at(rec, 16) as i32;
            if 20 + hb > rec.len() {
                continue;
            }
            let handle = &rec[20..20 + hb];
            if kind == libc::FAN_EVENT_INFO_TYPE_FID {
                // The object itself (kept for non-directories only; a
                // directory created or moved in is compared whole).
                if mask & libc::FAN_ONDIR != 0
                    && mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0
                {
                    shared.note_appeared(Handle {
                        kind: ht,
                        bytes: handle.to_vec(),
                    });
                }
                if mask & libc::FAN_ONDIR == 0 {
                    obj = Some(Handle {
                        kind: ht,
                        bytes: handle.to_vec(),
                    });
                }
                continue;
            }
            let name = if kind == libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
                let rest = &rec[20 + hb..];
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                &rest[..end]
            } else {
                &b""[..]
            };
            seen_dfid = true;
            let mut key = Vec::with_capacity(hb + 4);
            key.extend_from_slice(&ht.to_ne_bytes());
            key.extend_from_slice(handle);
            let dir = cache
                .entry(key)
                .or_insert_with(|| resolve(mount, ht, handle))
                .clone();
            let Some(dir) = dir else { continue };
            shared.note_dir(
                Handle {
                    kind: ht,
                    bytes: handle.to_vec(),
                },
                &dir,
            );
            let path = if name.is_empty() || name == b"." {
                dir
            } else {
                dir.join(OsStr::from_bytes(name))
            };
            names.push(path);
        }
        let moved = mask & (libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO) != 0;
        for path in &names {
            shared.note_abs_object(path, content, moved, obj.clone());
        }
        if names.is_empty() {
            // No name under a live directory (a link count change, or a
            // write through a name whose directory is gone by now): the
            // inode itself, while it still has a link somewhere.
            // Only when one of its names is under the root: the mark
            // covers the whole filesystem.
            if let Some((path, ino)) = obj.as_ref().and_then(|h| locate(mount, h)) {
                if shared.relative(&path).is_some() {
                    shared.note_inode(ino);
                }
            }
        }
        if !seen_dfid && obj.is_none() {
            debug!(mask, "fanotify event without a directory handle");
        }
    }
}

/// Device and inode number of a live object by its handle.
pub(super) fn inode_of(mount: &OwnedFd, h: &Handle) -> Option<(u64, u64)> {
    let fd = sys::open_by_handle(mount.as_fd(), h.kind, &h.bytes).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (st.st_nlink > 0).then_some((st.st_dev, st.st_ino))
}

/// Current path (one of its names) and inode of a live object by its handle.
pub(super) fn locate(mount: &OwnedFd, h: &Handle) -> Option<(PathBuf, (u64, u64))> {
    let fd = sys::open_by_handle(mount.as_fd(), h.kind, &h.bytes).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if st.st_nlink == 0 {
        return None;
    }
    let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some((p, (st.st_dev, st.st_ino)))
}

/// Path of a directory file handle, `None` when it no longer exists (its
/// removal is reported by its parent's event).
fn resolve(mount: &OwnedFd, handle_type: i32, handle: &[u8]) -> Option<PathBuf> {
    let fd = match sys::open_by_handle(mount.as_fd(), handle_type, handle) {
        Ok(fd) => fd,
        Err(e) => {
            debug!("resolving a directory handle: {e}");
            return None;
        }
    };
    if rustix::fs::fstat(&fd)
        .map(|st| st.st_nlink == 0)
        .unwrap_or(true)
    {
        return None;
    }
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}
