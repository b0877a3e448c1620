//! The few system calls change capture needs that no safe wrapper covers:
//! `fanotify_init`, `fanotify_mark` and `open_by_handle_at`. Each is wrapped
//! in a safe function; nothing else in the crate uses `unsafe`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `fanotify_init(flags, event_f_flags)`: a new fanotify group.
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments; it returns a new file
    // descriptor or -1.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel, is open, and is owned by
    // nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(fd, flags, mask, AT_FDCWD, path)`.
pub fn fanotify_mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `fd` is a valid open descriptor for the duration of the call and
    // `c` is a NUL-terminated string that outlives it.
    let r = unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `open_by_handle_at(mount, handle, O_PATH | O_CLOEXEC)` for a file handle
/// reported by fanotify (`handle_type` and the opaque `handle` bytes).
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
) -> io::Result<OwnedFd> {
    if handle.len() > 128 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file handle too long",
        ));
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; },
    // built in a u64 buffer for alignment.
    let mut b = [0u8; 8 + 128];
    b[..4].copy_from_slice(&(handle.len() as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&handle_type.to_ne_bytes());
    b[8..8 + handle.len()].copy_from_slice(handle);
    let mut buf = [0u64; (8 + 128) / 8];
    for (w, chunk) in buf.iter_mut().zip(b.chunks_exact(8)) {
        let mut x = [0u8; 8];
        x.copy_from_slice(chunk);
        *w = u64::from_ne_bytes(x);
    }
    // SAFETY: `buf` is a properly aligned, initialised `struct file_handle`
    // whose `handle_bytes` matches the bytes that follow it inside `buf`;
    // the kernel only reads it. `mount` is a valid descriptor for the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
