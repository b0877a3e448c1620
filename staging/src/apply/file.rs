//! The bulk [`Record::File`](standin_builder::changeset::Record::File):
//! a whole regular file (content, owner, mode, xattrs, mtime) in one record.
//!
//! The parent directory is resolved beneath the root like every other path
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) and kept open
//! while consecutive file records name the same directory. The data's
//! content digest (BLAKE3-256) is checked before anything is written. The file is created
//! unnamed (`O_TMPFILE`), written, given its owner, mode, xattrs and mtime
//! through its descriptor, checked (`fstat` and its xattrs, compared by
//! [`metadata_digest`]) and only then linked into place, replacing what was
//! there: a crash at any moment leaves the old entry, no entry, or the
//! complete new file — never a torn one. The digest of what was written is
//! remembered ([`crate::digest_cache`]), so the file is not read back.
//! Filesystems without `O_TMPFILE` get the file created under its name.
//!
//! In a set that skipped the journal (an open mirror's,
//! [`ApplyTarget::new_files_named`](super::ApplyTarget::new_files_named))
//! a file with no entry at its path yet is created under its name
//! (`O_CREAT | O_EXCL | O_NOFOLLOW`) and written there: no orphan-list
//! handling of an unnamed inode, no `linkat`, one `fstat` less. Only a
//! crash can then leave it torn, with the creation time as its mtime; the
//! mirror is not complete and the set is sent again, which replaces it
//! (docs/protect.md, "Crash consistency").

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;
use standin_builder::changeset::{check_path, Digest32};
use standin_builder::digest_table::Stamp;
use standin_builder::entry::{display_path, Entry, Kind, Xattr};

use super::fsops::{kind_of, lstat, remove_at};
use super::{io_err, ApplyError, DirTarget};

/// What writing whole files changes besides the replica, kept apart from
/// [`DirTarget`] so that a run of file records can be written on two
/// threads, each with its own ([`super::parallel`]). What a file adds to
/// the target's records (the ledger, the digest cache, the writeback) is
/// collected here and handed over in record order ([`DirTarget::absorb`]).
#[derive(Default)]
pub(super) struct FileCtx {
    /// The parent directory of the last file record (path, descriptor),
    /// reused while consecutive file records name the same directory.
    pub(super) parent_cache: Option<(Vec<u8>, OwnedFd)>,
    /// Link new unnamed files by descriptor (`AT_EMPTY_PATH`); cleared
    /// when that is not permitted, then `/proc/self/fd` is used.
    pub(super) link_by_fd: bool,
    /// Files created under their names and unnamed ([`DirTarget::files_created`]).
    pub(super) created: (u64, u64),
    /// Entries applied, for the mirror's ledger (when recording).
    pub(super) applied: Vec<super::applied::Applied>,
    /// Digests of the files written, under their stamps ([`crate::digest_cache`]).
    pub(super) remembered: Vec<(Stamp, Digest32)>,
    /// Files written, for the writeback: descriptor and size.
    pub(super) written: Vec<(OwnedFd, u64)>,
}

impl FileCtx {
    /// A context for a second writer beside `self` (same link method).
    pub(super) fn beside(&self) -> FileCtx {
        FileCtx {
            link_by_fd: self.link_by_fd,
            ..FileCtx::default()
        }
    }

    /// Take over `other`'s state as if its records came after this one's.
    pub(super) fn append(&mut self, mut other: FileCtx) {
        if other.parent_cache.is_some() {
            self.parent_cache = other.parent_cache.take();
        }
        self.link_by_fd &= other.link_by_fd;
        self.created.0 += other.created.0;
        self.created.1 += other.created.1;
        self.applied.append(&mut other.applied);
        self.remembered.append(&mut other.remembered);
        self.written.append(&mut other.written);
    }
}

impl DirTarget {
    /// The parent directory of `path` (cached while consecutive records
    /// name the same one) and the last component.
    /// Also returns the parent's path, to put back into the cache.
    fn cached_parent<'p>(
        &self,
        ctx: &mut FileCtx,
        path: &'p [u8],
    ) -> Result<(Vec<u8>, OwnedFd, &'p [u8]), ApplyError> {
        check_path(path, false).map_err(ApplyError::Refused)?;
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b"."[..], path),
        };
        if let Some((cached, fd)) = ctx.parent_cache.take() {
            if cached == dir {
                return Ok((cached, fd, name));
            }
        }
        Ok((dir.to_vec(), self.open_beneath(dir, path)?, name))
    }

    /// Apply a [`Record::File`](standin_builder::changeset::Record::File);
    /// `hashed` is the content digest of `data` if the caller computed it already.
    pub(super) fn write_file(
        &mut self,
        e: &Entry,
        data: &[u8],
        sha: &Digest32,
        hashed: Option<&Digest32>,
    ) -> Result<(), ApplyError> {
        let mut ctx = std::mem::take(&mut self.files);
        let r = self.write_file_with(&mut ctx, e, data, sha, hashed);
        self.absorb(&mut ctx);
        self.files = ctx;
        r
    }

    /// Hand what `ctx` collected (applied entries, digests, files to write
    /// back) to the target, in the order it was collected.
    pub(super) fn absorb(&mut self, ctx: &mut FileCtx) {
        self.applied.append(&mut ctx.applied);
        for (stamp, digest) in ctx.remembered.drain(..) {
            crate::digest_cache::remember(stamp, digest);
        }
        for (fd, len) in ctx.written.drain(..) {
            self.writeback.submit(fd, 0, len);
        }
    }

    /// [`Self::write_file`] with the state in `ctx`: the target itself is
    /// only read, so two of these can run at once.
    pub(super) fn write_file_with(
        &self,
        ctx: &mut FileCtx,
        e: &Entry,
        data: &[u8],
        sha: &Digest32,
        hashed: Option<&Digest32>,
    ) -> Result<(), ApplyError> {
        // Hashed beforehand (on another thread) or now: before anything is written.
        let got: Digest32 = match hashed {
            Some(d) => *d,
            None => standin_builder::hash::content_digest(data),
        };
        if got != *sha {
            return Err(ApplyError::Refused(format!(
                "file record {}: its data has content digest {}, the record says {}; nothing written",
                display_path(&e.path),
                hex::encode(got),
                hex::encode(sha)
            )));
        }
        if e.kind != Kind::File || e.size != data.len() as u64 {
            return Err(ApplyError::Refused(format!(
                "file record {} is not a plain regular file of {} bytes",
                display_path(&e.path),
                data.len()
            )));
        }
        let (parent, dir, name) = self.cached_parent(ctx, &e.path)?;
        let r = self.write_file_in(ctx, &dir, name, e, data, sha);
        // A directory replaced by this file does not invalidate its parent.
        ctx.parent_cache = Some((parent, dir));
        r
    }

    fn write_file_in(
        &self,
        ctx: &mut FileCtx,
        dir: &OwnedFd,
        name: &[u8],
        e: &Entry,
        data: &[u8],
        sha: &Digest32,
    ) -> Result<(), ApplyError> {
        let n = OsStr::from_bytes(name);
        // A new file is made with its final mode and owned by this process;
        // when that is what the entry says, no fchmod or fchown is needed
        // (the read-back check confirms it, else they are done).
        let fits = self.fresh_file_fits(e);
        let mode = Mode::from_raw_mode(if fits { e.mode & 0o777 } else { 0o600 });
        if self.new_files_named {
            // A set of an open mirror that skipped the journal: a new file
            // is created under its name (see `ApplyTarget::new_files_named`);
            // an entry in the way is replaced atomically below.
            match rustix::fs::openat(
                dir,
                n,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                mode,
            ) {
                Ok(fd) => return self.fill_named(ctx, fd, dir, name, e, data, sha, fits),
                Err(Errno::EXIST) => {}
                Err(x) => return Err(io_err("creating", &e.path, x)),
            }
        }
        let tmp = rustix::fs::openat(
            dir,
            ".",
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
            mode,
        );
        let (fd, named) = match tmp {
            Ok(fd) => {
                ctx.created.1 += 1;
                (fd, false)
            }
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
                // No O_TMPFILE here: create it under its name.
                self.remove_existing(dir, name, &e.path)?;
                let fd = rustix::fs::openat(
                    dir,
                    n,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|x| io_err("creating", &e.path, x))?;
                ctx.created.0 += 1;
                (fd, true)
            }
            Err(x) => return Err(io_err("creating", &e.path, x)),
        };
        write_all(&fd, data).map_err(|x| io_err("writing", &e.path, x))?;
        // Metadata set and read back (the check) before the file gets its
        // name; a mismatch is reported after linking (the content is right).
        let (_, meta) = self.set_and_verify(&fd, e, fits && !named)?;
        if !named {
            link_into_place(&mut ctx.link_by_fd, &fd, dir, name, &e.path)?;
        }
        // Stamped after the link, which moves the change time.
        if let Ok(st) = rustix::fs::fstat(&fd) {
            self.written(ctx, fd, e, &st, sha, meta.is_ok());
        }
        meta
    }

    /// The rest of [`Self::write_file_in`] for a file just created under
    /// its name (`O_EXCL`): write, set and check the metadata, remember.
    /// A write that fails removes the name again, so no torn file is left
    /// by an error (a crash may leave one: docs/protect.md, "Crash
    /// consistency").
    #[allow(clippy::too_many_arguments)]
    fn fill_named(
        &self,
        ctx: &mut FileCtx,
        fd: OwnedFd,
        dir: &OwnedFd,
        name: &[u8],
        e: &Entry,
        data: &[u8],
        sha: &Digest32,
        fits: bool,
    ) -> Result<(), ApplyError> {
        ctx.created.0 += 1;
        let r = write_all(&fd, data)
            .map_err(|x| io_err("writing", &e.path, x))
            .and_then(|()| self.set_and_verify(&fd, e, fits));
        let (st, meta) = match r {
            Ok(v) => v,
            Err(err) => {
                let _ = remove_at(dir, name, 0);
                return Err(err);
            }
        };
        // Nothing changes the file after the read-back: its `fstat` is the stamp.
        self.written(ctx, fd, e, &st, sha, meta.is_ok());
        meta
    }

    /// Set the metadata through the descriptor and read it back; `fits`:
    /// owner and mode may already be right ([`Self::fresh_file_fits`]).
    /// Returns the read-back `fstat` and the verdict (a mismatch is
    /// reported after the file is in place: its content is right); I/O
    /// errors and a full disk are returned as errors.
    fn set_and_verify(
        &self,
        fd: &OwnedFd,
        e: &Entry,
        fits: bool,
    ) -> Result<(rustix::fs::Stat, Result<(), ApplyError>), ApplyError> {
        let mut r = self
            .set_fd_metadata(fd, e, fits)
            .and_then(|()| self.verify_fd_metadata(fd, e));
        if fits
            && matches!(
                r,
                Ok((_, Err(ApplyError::Mismatch(_)))) | Err(ApplyError::Mismatch(_))
            )
        {
            // Not as expected (a setgid directory's group, an inherited
            // ACL's mode): set everything.
            r = self
                .set_fd_metadata(fd, e, false)
                .and_then(|()| self.verify_fd_metadata(fd, e));
        }
        match r {
            Err(err @ (ApplyError::NoSpace(_) | ApplyError::Io(_))) => Err(err),
            Err(err) => {
                // Setting failed for a reason retrying cannot fix (an
                // xattr the filesystem cannot hold): report it, keep the file.
                let st = rustix::fs::fstat(fd).map_err(|x| io_err("reading", &e.path, x))?;
                Ok((st, Err(err)))
            }
            Ok(v) => Ok(v),
        }
    }

    /// A file is complete and in place: remember its digest under its
    /// stamp `st`, record it for the ledger (when its metadata checked
    /// out) and start its writeback.
    fn written(
        &self,
        ctx: &mut FileCtx,
        fd: OwnedFd,
        e: &Entry,
        st: &rustix::fs::Stat,
        sha: &Digest32,
        ok: bool,
    ) {
        if let Some(stamp) = crate::digest_cache::stamp_of_stat(st) {
            ctx.remembered.push((stamp, *sha));
        }
        if self.recording && ok {
            ctx.applied.push(super::applied::of(e, st, Some(sha)));
        }
        if self.writeback_on {
            ctx.written.push((fd, e.size));
        }
    }

    fn remove_existing(&self, dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), ApplyError> {
        if lstat(dir, name)
            .map_err(|x| io_err("reading", path, x))?
            .is_some()
        {
            remove_at(dir, name, 0).map_err(|x| io_err("removing", path, x))?;
        }
        Ok(())
    }

    /// Whether a file this process creates with mode `e.mode & 0o777`
    /// gets `e`'s owner and mode as it is: no setuid/setgid/sticky bit, no
    /// permission the umask takes away, and (when owners are kept) this
    /// process's user and group.
    fn fresh_file_fits(&self, e: &Entry) -> bool {
        let Some(umask) = umask() else {
            return false;
        };
        e.mode & !0o777 == 0
            && e.mode & umask == 0
            && (!self.preserve_owner || (e.uid, e.gid) == self.own_ids)
    }

    /// Owner, mode, xattrs and mtime through the descriptor (owner and
    /// mode left as they are when `fresh`: see [`Self::fresh_file_fits`]).
    fn set_fd_metadata(&self, fd: &OwnedFd, e: &Entry, fresh: bool) -> Result<(), ApplyError> {
        if !fresh && self.preserve_owner {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
            )
            .map_err(|x| io_err("changing the owner of", &e.path, x))?;
        }
        if !fresh {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode & 0o7777))
                .map_err(|x| io_err("changing the mode of", &e.path, x))?;
        }
        // Set without listing first: a new file holds no xattr but what it
        // inherits (a default ACL, a security label), which the read-back
        // check finds and removes (`verify_fd_metadata`).
        for (k, v) in &e.xattrs {
            rustix::fs::fsetxattr(fd, OsStr::from_bytes(&k.0), &v.0, XattrFlags::empty())
                .map_err(|x| super::xattr_error(&k.0, &e.path, x))?;
        }
        rustix::fs::futimens(fd, &standin_builder::tree::timestamps(e.mtime_ns))
            .map_err(|x| io_err("setting the time of", &e.path, x))
    }

    /// Read the metadata back through the descriptor and compare digests.
    /// Xattrs the new file inherited (a default ACL of its directory) are
    /// removed first.
    /// Returns the `fstat` read and the verdict.
    fn verify_fd_metadata(
        &self,
        fd: &OwnedFd,
        e: &Entry,
    ) -> Result<(rustix::fs::Stat, Result<(), ApplyError>), ApplyError> {
        let mut xattrs = fd_xattrs(fd).map_err(|x| io_err("listing xattrs of", &e.path, x))?;
        if xattrs.keys().any(|k| !e.xattrs.contains_key(k)) {
            for k in xattrs.keys().filter(|k| !e.xattrs.contains_key(*k)) {
                match rustix::fs::fremovexattr(fd, OsStr::from_bytes(&k.0)) {
                    Ok(()) | Err(Errno::NODATA) => {}
                    Err(x) => return Err(io_err("removing an xattr of", &e.path, x)),
                }
            }
            xattrs = fd_xattrs(fd).map_err(|x| io_err("listing xattrs of", &e.path, x))?;
        }
        let st = rustix::fs::fstat(fd).map_err(|x| io_err("reading", &e.path, x))?;
        #[allow(clippy::unnecessary_cast)]
        let mtime_ns = st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64;
        let owner = (st.st_uid, st.st_gid);
        // The fields metadata_digest covers, compared directly (a File
        // record's entry has no symlink target or device numbers).
        if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_mode & 0o7777 == e.mode
            && (!self.preserve_owner || owner == (e.uid, e.gid))
            && mtime_ns == e.mtime_ns
            && st.st_size as u64 == e.size
            && xattrs == e.xattrs
            && e.target.is_none()
            && e.rdev.is_none()
        {
            return Ok((st, Ok(())));
        }
        let mut got = e.clone();
        got.kind = kind_of(FileType::from_raw_mode(st.st_mode)).unwrap_or(Kind::Fifo);
        got.mode = st.st_mode & 0o7777;
        if self.preserve_owner {
            (got.uid, got.gid) = owner;
        }
        got.mtime_ns = mtime_ns;
        got.xattrs = xattrs;
        let verdict = super::check_read_back(&got, e, Some(st.st_size as u64));
        Ok((st, verdict))
    }
}

/// Give the unnamed file `fd` the name `name` in `dir`, replacing what
/// is there. The link is tried first and what is in the way removed
/// only when it fails with `EEXIST` (a full mirror writes into an empty
/// tree). `linkat(fd, "", AT_EMPTY_PATH)` needs `CAP_DAC_READ_SEARCH`;
/// without it (`ENOENT`/`EPERM`) the link goes through
/// `/proc/self/fd/N`, and later files go that way at once.
fn link_into_place(
    link_by_fd: &mut bool,
    fd: &OwnedFd,
    dir: &OwnedFd,
    name: &[u8],
    path: &[u8],
) -> Result<(), ApplyError> {
    let n = OsStr::from_bytes(name);
    let by_proc = || {
        let from = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::linkat(
            rustix::fs::CWD,
            from.as_str(),
            dir,
            n,
            AtFlags::SYMLINK_FOLLOW,
        )
    };
    let mut removed = false;
    loop {
        let r = if *link_by_fd {
            match rustix::fs::linkat(fd, "", dir, n, AtFlags::EMPTY_PATH) {
                Err(Errno::NOENT | Errno::PERM) => {
                    let r = by_proc();
                    // Not permitted by descriptor, but through /proc:
                    // take that way from now on.
                    if r.is_ok() {
                        *link_by_fd = false;
                    }
                    r
                }
                r => r,
            }
        } else {
            by_proc()
        };
        match r {
            Err(Errno::EXIST) if !removed => {
                remove_at(dir, name, 0).map_err(|x| io_err("removing", path, x))?;
                removed = true;
            }
            r => return r.map_err(|x| io_err("linking the new file into place at", path, x)),
        }
    }
}

/// This process's umask, read once from `/proc/self/status` (`None` if
/// it cannot be read: then every file gets its mode set explicitly).
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let v = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(v.trim(), 8).ok()
    })
}

fn write_all(fd: &OwnedFd, data: &[u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::write(fd, &data[done..]) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(x) => return Err(x),
        }
    }
    Ok(())
}

/// The xattrs of an open file.
fn fd_xattrs(fd: impl AsFd) -> Result<std::collections::BTreeMap<Xattr, Xattr>, Errno> {
    super::fsops::read_xattrs(fd.as_fd())
}
