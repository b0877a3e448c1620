//! Applying change-set records to a replica tree, safely.
//!
//! [`ApplyTarget`] is the seam: [`DirTarget`] applies records to a plain
//! directory; builder's TreeWriter can implement the same trait later.
//!
//! Safety: every path from the network is first checked lexically
//! ([`standin_builder::changeset::check_path`]: relative, no `.`/`..`/empty
//! components, no NUL), then its parent directory is opened with `openat2`
//! and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`
//! relative to the root, and the last component is only ever used through
//! `*at` calls that do not follow symlinks. The source never names a path
//! through a symlink (its scanner records real paths), so a parent that is
//! a symlink — inside the tree or leading out — is refused and logged.
//! Data is only written into regular files, never into device nodes.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, XattrFlags};
use rustix::io::Errno;

pub mod applied;
mod cow;
mod file;
mod fsops;
mod parallel;
mod patched;
mod sidekick;
mod streamed;
pub mod writeback;
use fsops::{list_xattrs, lstat, proc_path, remove_at};
pub use parallel::ONE_APPLY_THREAD_ENV;
pub use patched::CheckReads;
use standin_builder::changeset::{check_path, metadata_digest, Digest32, Record};
use standin_builder::digest_table::Stamp;
use standin_builder::entry::{display_path, Entry, Kind};
use standin_builder::tree::timestamps;

/// Why a record did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The record names a path outside the root or through a symlink; it is
    /// skipped and logged, the target is untouched.
    #[error("refused: {0}")]
    Refused(String),
    /// The record does not fit the replica (e.g. renaming a missing file);
    /// the replica has diverged and a difference mirror will repair it.
    #[error("replica diverged: {0}")]
    Inconsistent(String),
    /// After the record the replica does not hold what the source said.
    #[error("verification failed: {0}")]
    Mismatch(String),
    /// The disk is full; apply pauses and nothing is lost.
    #[error("disk full: {0}")]
    NoSpace(String),
    /// Any other I/O error; apply pauses and retries.
    #[error("{0}")]
    Io(String),
}

/// Something that change-set records can be applied to.
///
/// Every method must be idempotent with respect to the record: applying a
/// record again to the state it produced yields the same state (replay
/// after a crash relies on it, see docs/protect.md).
pub trait ApplyTarget: Send {
    /// Apply one record (not yet durable).
    fn apply(&mut self, record: &Record) -> Result<(), ApplyError>;
    /// [`ApplyTarget::apply`], given the content digest of a `File` record's data
    /// computed beforehand from the record itself (`None`: not computed).
    /// A target compares it with the record's digest instead of hashing the
    /// data again. The default ignores it.
    fn apply_hashed(
        &mut self,
        record: &Record,
        data_digest: Option<&Digest32>,
    ) -> Result<(), ApplyError> {
        let _ = data_digest;
        self.apply(record)
    }
    /// Apply a run of [`Record::File`] records (`data_digest[k]` for
    /// `records[k]`, as in [`ApplyTarget::apply_hashed`]): one result per
    /// record in the records' order, ending early only with an error that
    /// pauses the apply (no space, I/O). A target may write them at once
    /// ([`DirTarget`] on two threads) but what it records must be what
    /// applying them in order records. After a pausing error the records
    /// after it may or may not be written (whole files, written again when
    /// the set is). The default applies them one by one.
    fn apply_files(
        &mut self,
        records: &[Record],
        data_digest: &[Option<Digest32>],
    ) -> Vec<Result<(), ApplyError>> {
        parallel::sequential(self, records, data_digest)
    }
    /// The content digest (BLAKE3-256, `standin_builder::hash::content_digest`)
    /// of the regular file at `path`, `None` if it is missing.
    fn content_digest(&mut self, path: &[u8]) -> Result<Option<Digest32>, ApplyError>;
    /// [`ApplyTarget::content_digest`] of each of `paths`, in order (a
    /// target may read them at the same time). The default reads one after
    /// another.
    fn content_digests(&mut self, paths: &[&[u8]]) -> Vec<Result<Option<Digest32>, ApplyError>> {
        paths.iter().map(|p| self.content_digest(p)).collect()
    }
    /// How the checks after patches read their files so far (the
    /// default: not counted).
    fn check_reads(&self) -> CheckReads {
        CheckReads::default()
    }
    /// Make everything applied so far durable.
    fn sync(&mut self) -> Result<(), ApplyError>;
    /// Called once before `records` are applied, so a target can prepare
    /// for them in one batch (the replica copies out, in one go, the inodes
    /// that snapshots share and the records change in place). Optional:
    /// `apply` must stay correct without it. The default does nothing.
    fn prepare(&mut self, records: &[Record]) -> Result<(), ApplyError> {
        let _ = records;
        Ok(())
    }
    /// Bytes and inodes available to unprivileged writers on the replica's
    /// filesystem (`None` for inodes when the filesystem does not count them).
    fn available(&mut self) -> Result<(u64, Option<u64>), ApplyError>;
    /// Whether the records applied next belong to a mirror that is synced
    /// only at its end: a target may then start writing their data out
    /// while the mirror goes on ([`writeback`]), so that final sync finds
    /// less to do. Durability does not depend on it. The default does nothing.
    fn mirror_writeback(&mut self, on: bool) {
        let _ = on;
    }
    /// Whether the records applied next belong to a set that skipped the
    /// journal (a set of an open mirror, [`crate::store::Store::unjournaled`]):
    /// a target may then create a regular file that has no entry yet
    /// directly under its name instead of unnamed and linked when
    /// complete. A crash may then leave that one file torn under its name;
    /// the mirror is not complete and the agent sends the set again, which
    /// replaces it (docs/protect.md, "Crash consistency"). Off for every
    /// other set. The default does nothing.
    fn new_files_named(&mut self, on: bool) {
        let _ = on;
    }
    /// Start (or stop) recording, for the mirror's ledger, each entry the
    /// records applied from now on make, as read back after the apply
    /// ([`applied`]). Drops what was recorded before. The default records
    /// nothing.
    fn record_applied(&mut self, on: bool) {
        let _ = on;
    }
    /// What was recorded since [`ApplyTarget::record_applied`]; `None`
    /// when that does not describe everything applied (a rename or link
    /// record, or a target that does not record).
    fn take_applied(&mut self) -> Option<Vec<applied::Applied>> {
        None
    }
}

/// A generous estimate of the space a change set needs beyond what the
/// replica holds now: every extent rounded up to 4 KiB pages, one page per
/// record for directory entries and metadata, and 64 KiB for the state file.
pub fn space_needed(records: &[Record]) -> (u64, u64) {
    let page = 4096u64;
    let bytes: u64 = records
        .iter()
        .map(|r| r.data_len().div_ceil(page) * page + page)
        .sum::<u64>()
        + (64 << 10);
    let inodes = records
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::Create(_) | Record::Link { .. } | Record::File { .. }
            )
        })
        .count() as u64
        + 4;
    (bytes, inodes)
}

/// Setting xattr `name` of `path` failed: a filesystem that cannot hold it
/// is reported (retrying cannot help, so the apply does not pause), any
/// other error is an I/O error.
pub(crate) fn xattr_error(name: &[u8], path: &[u8], x: Errno) -> ApplyError {
    match x {
        Errno::NOTSUP | Errno::PERM => ApplyError::Mismatch(format!(
            "the staging filesystem cannot hold xattr {} of {}: {x}",
            String::from_utf8_lossy(name),
            display_path(path)
        )),
        x => io_err("setting an xattr of", path, x),
    }
}

fn io_err(what: &str, path: &[u8], e: Errno) -> ApplyError {
    let msg = format!("{what} {}: {e}", display_path(path));
    match e {
        Errno::NOSPC | Errno::DQUOT => ApplyError::NoSpace(msg),
        // Not permitted (a device node without CAP_MKNOD, an immutable
        // file): retrying will not help, so report it and go on.
        Errno::PERM => ApplyError::Mismatch(msg),
        // The record does not fit the replica as it is (renaming over a
        // non-empty directory, a file where a directory is expected, ...):
        // the replica diverged; a difference mirror repairs it.
        Errno::NOTEMPTY
        | Errno::ISDIR
        | Errno::NOTDIR
        | Errno::EXIST
        | Errno::LOOP
        | Errno::NAMETOOLONG
        | Errno::INVAL
        | Errno::MLINK
        | Errno::XDEV => ApplyError::Inconsistent(msg),
        _ => ApplyError::Io(msg),
    }
}

/// A plain directory as the replica.
pub struct DirTarget {
    root: OwnedFd,
    root_path: PathBuf,
    /// chown entries to their uid/gid (needs root); otherwise owners are left.
    pub preserve_owner: bool,
    /// Copies inodes shared with hardlink snapshots out before they change.
    pub cow: Option<crate::snapshot::cow::Guard>,
    /// The parent directory of the last file record, how new files are
    /// linked, how many were created ([`file::FileCtx`]).
    files: file::FileCtx,
    /// Write runs of file records on two threads ([`ApplyTarget::apply_files`];
    /// off when [`ONE_APPLY_THREAD_ENV`] is set).
    two_threads: bool,
    /// Runs of file records written on two threads so far.
    split_runs: u64,
    /// The thread that writes the second half of such a run (started at
    /// the first one; `None` before, or if it could not be started).
    sidekick: Option<sidekick::Sidekick>,
    /// This process's effective user and group (the owner of a new file).
    own_ids: (u32, u32),
    /// The buffer [`ApplyTarget::content_digest`] reads through.
    read_buf: Vec<u8>,
    /// Start the writeback of each file written ([`ApplyTarget::mirror_writeback`]).
    writeback_on: bool,
    writeback: writeback::Writeback,
    /// Create a file record's file under its name when nothing is there
    /// ([`ApplyTarget::new_files_named`]).
    new_files_named: bool,
    /// False when [`NAMED_CREATE_ENV`] is `0` ([`DirTarget::allow_named_create`]).
    named_allowed: bool,
    /// Recording what is applied ([`ApplyTarget::record_applied`]), the
    /// records so far, and whether they describe everything applied.
    recording: bool,
    applied: Vec<applied::Applied>,
    applied_whole: bool,
    /// Regular files whose metadata record waits for their content's
    /// digest (the content came in pieces and is checked at the set's
    /// end): the record's index, the entry, and its `lstat` after.
    awaiting: std::collections::HashMap<Vec<u8>, (usize, Entry, rustix::fs::Stat)>,
    /// Files the current set patches in place, for a check that reads only
    /// the patched blocks ([`patched`]).
    patches: patched::Patches,
    /// Files written in pieces from their start, hashed as written
    /// ([`streamed`]).
    streams: streamed::Streams,
}

/// Set (to anything but empty) to start an open mirror's writeback while
/// it runs ([`writeback`]). Off by default: the mirror's end no longer
/// waits for its sync (the replica is synced in the background, see
/// [`crate::Store::mirror_flushed`]), and the early writeback only costs CPU
/// while the mirror runs (page-cache drops, and on a loop device a copy per page).
pub const WRITEBACK_ENV: &str = "STANDIN_WRITEBACK";

/// Set to `0` to stop an open mirror's sets that skipped the journal from
/// creating new files under their names ([`ApplyTarget::new_files_named`]);
/// then every file of a file record is written unnamed and linked when
/// complete, so a kill -9 never leaves a torn file, not even in the middle
/// of a mirror. On by default: an unnamed file costs ext4 an orphan-list
/// insert and removal under a filesystem-wide lock and a second lookup of
/// its name, 28% of the daemon's system time in the big tree's full mirror
/// on a 6.18 kernel (4.5% of its CPU on the machine it was first
/// measured on); a torn file it can leave is never counted (see
/// docs/protect.md, "New files of an open mirror created under their
/// names").
pub const NAMED_CREATE_ENV: &str = "STANDIN_NAMED_CREATE";

/// Size of [`DirTarget`]'s read buffer.
const READ_BUF: usize = 1 << 20;

/// Files of at least this size in one set's check are read in parallel
/// ([`ApplyTarget::content_digests`]), up to this many held open at once.
const PARALLEL_DIGEST_BYTES: u64 = 8 << 20;
const PARALLEL_DIGEST_FILES: usize = 8;

/// A regular file opened for its digest, with its stamp before reading.
type Opened = (std::fs::File, Option<Stamp>);

thread_local! {
    /// The read buffer of a pool thread checking a file's content.
    static DIGEST_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The content digest (BLAKE3-256) of what `f` holds from where it is
/// (`size` bytes by its stamp), read through `buf`, and the block values
/// of a large file ([`patched::hash_whole`]).
fn hash_through(
    f: &std::fs::File,
    path: &[u8],
    size: u64,
    buf: &mut Vec<u8>,
) -> Result<patched::Hashed, ApplyError> {
    patched::hash_whole(f, size, buf)
        .map_err(|x| ApplyError::Io(format!("reading {}: {x}", display_path(path))))
}

impl DirTarget {
    /// Open `root` (which must exist) as the replica.
    pub fn open(root: &Path) -> anyhow::Result<DirTarget> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| anyhow::anyhow!("opening staging root {}: {e}", root.display()))?;
        Ok(DirTarget {
            root: fd,
            root_path: root.to_path_buf(),
            preserve_owner: rustix::process::geteuid().is_root(),
            cow: None,
            files: file::FileCtx {
                link_by_fd: true,
                ..Default::default()
            },
            two_threads: !parallel::one_thread(),
            split_runs: 0,
            sidekick: None,
            own_ids: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            read_buf: Vec::new(),
            writeback_on: false,
            writeback: writeback::Writeback::default(),
            new_files_named: false,
            named_allowed: std::env::var_os(NAMED_CREATE_ENV).is_none_or(|v| v != "0"),
            recording: false,
            applied: Vec::new(),
            applied_whole: true,
            awaiting: std::collections::HashMap::new(),
            patches: Default::default(),
            streams: Default::default(),
        })
    }

    /// Allow (or not) the named create of [`ApplyTarget::new_files_named`]
    /// regardless of [`NAMED_CREATE_ENV`].
    pub fn allow_named_create(&mut self, on: bool) {
        self.named_allowed = on;
    }

    /// Write runs of file records on two threads (or not), regardless of
    /// [`ONE_APPLY_THREAD_ENV`].
    pub fn write_files_on_two_threads(&mut self, on: bool) {
        self.two_threads = on;
    }

    /// How many runs of file records this target wrote on two threads.
    pub fn file_runs_on_two_threads(&self) -> u64 {
        self.split_runs
    }

    /// How many files of file records this target created under their
    /// names and how many unnamed (`O_TMPFILE`, linked when complete).
    pub fn files_created(&self) -> (u64, u64) {
        self.files.created
    }

    /// The regular file at `path` opened for its digest, with its stamp
    /// taken before reading (a change during the read moves the stamp);
    /// `None` when missing.
    fn open_for_digest(&self, path: &[u8]) -> Result<Option<Opened>, ApplyError> {
        let Some(fd) = self.open_regular(path, OFlags::RDONLY)? else {
            return Ok(None);
        };
        let stamp = crate::digest_cache::stamp_of_fd(&fd);
        Ok(Some((std::fs::File::from(fd), stamp)))
    }

    /// The digest of `path`, opened as `f` (stamped `stamp`), read through
    /// this target's one read buffer (a fresh zeroed MiB per file cost more
    /// than hashing a small one), and what follows it ([`Self::digest_read`]).
    fn digest_opened(
        &mut self,
        path: &[u8],
        f: std::fs::File,
        stamp: Option<Stamp>,
    ) -> Result<Digest32, ApplyError> {
        if let Some(d) = self.streams.take(path, stamp.as_ref()) {
            self.patches.counts.streamed += 1;
            self.digest_read(path, f, stamp, d, None);
            return Ok(d);
        }
        if self.read_buf.len() < READ_BUF {
            self.read_buf.resize(READ_BUF, 0);
        }
        let (d, blocks) = self.hash_patched(path, &f, stamp.as_ref())?;
        self.digest_read(path, f, stamp, d, blocks);
        Ok(d)
    }

    /// What follows the digest `d` of `path` read through `f` (stamped
    /// `stamp` before): remembered by stamp, given to a metadata record
    /// waiting for it, and the file's writeback started.
    fn digest_read(
        &mut self,
        path: &[u8],
        f: std::fs::File,
        stamp: Option<Stamp>,
        d: Digest32,
        blocks: Option<(u64, Vec<standin_builder::hash::Cv>)>,
    ) {
        match (stamp, blocks) {
            (Some(stamp), Some((bs, cvs))) => {
                crate::digest_cache::remember_blocks(stamp, d, bs, cvs)
            }
            (Some(stamp), None) => crate::digest_cache::remember(stamp, d),
            (None, _) => {}
        }
        // A metadata record waiting for this content: the file read is the
        // one its `lstat` saw (same stamp), so the record is trusted with
        // the digest read (whether or not it is the source's: the check
        // against the source's is the caller's).
        if let Some((i, e, st)) = self.awaiting.remove(path) {
            let same = stamp.is_some() && crate::digest_cache::stamp_of_stat(&st) == stamp;
            if let (true, Some(a)) = (same, self.applied.get_mut(i)) {
                if a.path == e.path {
                    *a = applied::of(&e, &st, Some(&d));
                }
            }
        }
        if self.writeback_on {
            // A file written in pieces during a mirror, now complete.
            let len = stamp.map_or(0, |s| s.size);
            self.writeback.submit(f.into(), 0, len);
        }
    }

    /// The digest of `path` opened as `f` (stamped `stamp`) and its block
    /// values: from the cached values and the blocks this set patched when
    /// it can ([`patched`]), else read whole through this target's buffer.
    fn hash_patched(
        &mut self,
        path: &[u8],
        f: &std::fs::File,
        stamp: Option<&Stamp>,
    ) -> Result<patched::Hashed, ApplyError> {
        if self.read_buf.len() < READ_BUF {
            self.read_buf.resize(READ_BUF, 0);
        }
        if let Some(st) = stamp {
            match self.patches.digest(f, st, &mut self.read_buf) {
                Some(Ok((d, bs, cvs))) => return Ok((d, Some((bs, cvs)))),
                // Any trouble reading the blocks: the whole file, as
                // without cached values (a read error is reported there).
                Some(Err(e)) => tracing::debug!(
                    path = %display_path(path),
                    "checking a patched file from its block values: {e}; reading it whole"
                ),
                None => {}
            }
        }
        self.patches.counts.whole += 1;
        hash_through(f, path, stamp.map_or(0, |s| s.size), &mut self.read_buf)
    }

    /// The root directory.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Before changing `name` in place: let a snapshot that shares its inode copy it out.
    fn guard(&mut self, dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), ApplyError> {
        if self.cow.is_none() {
            return Ok(());
        }
        let Some(st) = lstat(dir, name).map_err(|x| io_err("reading", path, x))? else {
            return Ok(());
        };
        self.guard_stat(dir, name, path, &st)
    }

    /// [`Self::guard`] with `name`'s `lstat` already read.
    fn guard_stat(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        path: &[u8],
        st: &rustix::fs::Stat,
    ) -> Result<(), ApplyError> {
        if self.cow.is_none() {
            return Ok(());
        }
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink < 2 {
            return Ok(());
        }
        let at = proc_path(dir, name);
        let g = self.cow.as_mut().expect("checked");
        g.before_modify(st.st_ino, &at).map_err(|e| {
            ApplyError::Io(format!(
                "copying {} out to a snapshot: {e:#}",
                display_path(path)
            ))
        })
    }

    fn guard_path(&mut self, path: &[u8]) -> Result<(), ApplyError> {
        if self.cow.is_none() {
            return Ok(());
        }
        let (dir, name) = self.parent(path, false)?;
        self.guard(&dir, name, path)
    }

    /// Open the parent of `path` beneath the root; return it and the last component.
    fn parent<'p>(
        &self,
        path: &'p [u8],
        allow_root: bool,
    ) -> Result<(OwnedFd, &'p [u8]), ApplyError> {
        check_path(path, allow_root).map_err(ApplyError::Refused)?;
        if path.is_empty() {
            return Ok((self.open_beneath(b".", path)?, b"."));
        }
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b"."[..], path),
        };
        Ok((self.open_beneath(dir, path)?, name))
    }

    fn open_beneath(&self, dir: &[u8], full: &[u8]) -> Result<OwnedFd, ApplyError> {
        let flags = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(dir),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            flags,
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::XDEV => ApplyError::Refused(format!(
                "parent of {} is a symlink or leads out of the staging root",
                display_path(full)
            )),
            Errno::NOENT | Errno::NOTDIR => ApplyError::Inconsistent(format!(
                "parent directory of {} is missing",
                display_path(full)
            )),
            Errno::NOSYS => ApplyError::Io(
                "openat2 is not available; the target needs Linux 5.6 or later".into(),
            ),
            e => io_err("opening the parent of", full, e),
        })
    }

    fn open_regular(&self, path: &[u8], flags: OFlags) -> Result<Option<OwnedFd>, ApplyError> {
        let (dir, name) = self.parent(path, false)?;
        match lstat(&dir, name) {
            Ok(None) => return Ok(None),
            Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                return Err(ApplyError::Inconsistent(format!(
                    "{} is not a regular file",
                    display_path(path)
                )))
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(io_err("reading", path, e)),
        }
        let fd = rustix::fs::openat(
            &dir,
            OsStr::from_bytes(name),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| io_err("opening", path, e))?;
        Ok(Some(fd))
    }

    fn create(&mut self, e: &Entry) -> Result<(), ApplyError> {
        let (dir, name) = self.parent(&e.path, true)?;
        let n = OsStr::from_bytes(name);
        let existing = lstat(&dir, name).map_err(|x| io_err("reading", &e.path, x))?;
        let existing_type = existing.map(|st| FileType::from_raw_mode(st.st_mode));
        if e.path.is_empty() {
            return self.set_metadata(e);
        }
        if let (Kind::File, Some(link)) = (e.kind, &e.link) {
            self.link(link, &e.path)?;
            return self.set_metadata(e);
        }
        match (e.kind, existing_type) {
            (Kind::Dir, Some(FileType::Directory)) => {
                // It may hold entries no record made: count them at the end.
                let r = self.set_metadata_in(&dir, name, e);
                if let Some(a) = self.applied.last_mut().filter(|a| a.path == e.path) {
                    a.count = true;
                }
                return r;
            }
            // Everything else, including an existing regular file, is
            // replaced by a new inode (truncating in place would also empty
            // the file's other hard links).
            (kind, existing) => {
                if existing.is_some() {
                    remove_at(&dir, name, 0).map_err(|x| io_err("removing", &e.path, x))?;
                }
                let r = match kind {
                    Kind::Dir => rustix::fs::mkdirat(&dir, n, Mode::from_raw_mode(0o700)),
                    Kind::File => rustix::fs::openat(
                        &dir,
                        n,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map(drop),
                    Kind::Symlink => {
                        let t = e.target.as_deref().ok_or_else(|| {
                            ApplyError::Inconsistent(format!(
                                "symlink {} has no target",
                                display_path(&e.path)
                            ))
                        })?;
                        rustix::fs::symlinkat(OsStr::from_bytes(t), &dir, n)
                    }
                    Kind::Fifo => {
                        rustix::fs::mknodat(&dir, n, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    }
                    Kind::Char | Kind::Block => {
                        let (maj, min) = e.rdev.unwrap_or((0, 0));
                        let ft = if kind == Kind::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        rustix::fs::mknodat(
                            &dir,
                            n,
                            ft,
                            Mode::from_raw_mode(0o600),
                            rustix::fs::makedev(maj, min),
                        )
                    }
                };
                r.map_err(|x| io_err("creating", &e.path, x))?;
            }
        }
        self.set_metadata_in(&dir, name, e)
    }

    fn set_metadata(&mut self, e: &Entry) -> Result<(), ApplyError> {
        let (dir, name) = self.parent(&e.path, true)?;
        self.set_metadata_in(&dir, name, e)
    }

    /// [`Self::set_metadata`] of `name` in the already opened parent `dir`.
    fn set_metadata_in(&mut self, dir: &OwnedFd, name: &[u8], e: &Entry) -> Result<(), ApplyError> {
        let n = OsStr::from_bytes(name);
        let st = lstat(dir, name)
            .map_err(|x| io_err("reading", &e.path, x))?
            .ok_or_else(|| {
                ApplyError::Inconsistent(format!("{} is missing", display_path(&e.path)))
            })?;
        let have = Kind::from_mode(st.st_mode);
        self.guard_stat(dir, name, &e.path, &st)?;
        if have != Some(e.kind) {
            return Err(ApplyError::Inconsistent(format!(
                "{} is a {:?} on the target, the source says {:?}",
                display_path(&e.path),
                have,
                e.kind
            )));
        }
        if self.preserve_owner {
            rustix::fs::chownat(
                dir,
                n,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|x| io_err("changing the owner of", &e.path, x))?;
        }
        if e.kind != Kind::Symlink {
            rustix::fs::chmodat(
                dir,
                n,
                Mode::from_raw_mode(e.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|x| io_err("changing the mode of", &e.path, x))?;
        }
        // Set without listing first; the read-back below lists them once
        // and removes any the entry does not have.
        let xpath = proc_path(dir, name);
        for (k, v) in &e.xattrs {
            rustix::fs::lsetxattr(&xpath, OsStr::from_bytes(&k.0), &v.0, XattrFlags::empty())
                .map_err(|x| xattr_error(&k.0, &e.path, x))?;
        }
        rustix::fs::utimensat(dir, n, &timestamps(e.mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|x| io_err("setting the time of", &e.path, x))?;
        let (now, checked) = self.verify_metadata(e, dir, name, &xpath)?;
        if self.recording && checked.is_ok() {
            let a = applied::of(e, &now, None);
            if a.record.is_none() && e.kind == Kind::File && e.link.is_none() && e.sparse.is_none()
            {
                self.awaiting
                    .insert(e.path.clone(), (self.applied.len(), e.clone(), now));
            }
            self.applied.push(a);
        }
        // Only metadata changed: a digest known for the content still holds
        // (so the root digest check does not read the file again).
        if let Some(before) = crate::digest_cache::stamp_of_stat(&st) {
            if let Some(after) = crate::digest_cache::stamp_of_stat(&now) {
                crate::digest_cache::carry_over(&before, &after);
            }
        }
        self.streams.metadata_set(
            &e.path,
            crate::digest_cache::stamp_of_stat(&st),
            crate::digest_cache::stamp_of_stat(&now),
        );
        checked
    }

    /// Read the path back and compare its metadata digest with the entry's;
    /// xattrs the entry does not have (left from before, or inherited from
    /// a default ACL) are removed first. Returns the `lstat` read and the
    /// verdict.
    fn verify_metadata(
        &self,
        e: &Entry,
        dir: &OwnedFd,
        name: &[u8],
        xpath: &Path,
    ) -> Result<(rustix::fs::Stat, Result<(), ApplyError>), ApplyError> {
        let mut xattrs = list_xattrs(xpath).map_err(|x| io_err("listing xattrs of", &e.path, x))?;
        if xattrs.keys().any(|k| !e.xattrs.contains_key(k)) {
            for k in xattrs.keys().filter(|k| !e.xattrs.contains_key(*k)) {
                match rustix::fs::lremovexattr(xpath, OsStr::from_bytes(&k.0)) {
                    Ok(()) | Err(Errno::NODATA) => {}
                    Err(x) => return Err(io_err("removing an xattr of", &e.path, x)),
                }
            }
            xattrs = list_xattrs(xpath).map_err(|x| io_err("listing xattrs of", &e.path, x))?;
        }
        let st = lstat(dir, name)
            .map_err(|x| io_err("reading", &e.path, x))?
            .ok_or_else(|| ApplyError::Mismatch(format!("{} vanished", display_path(&e.path))))?;
        let mut got = e.clone();
        got.kind = Kind::from_mode(st.st_mode).unwrap_or(Kind::File);
        if e.kind != Kind::Symlink {
            got.mode = st.st_mode & 0o7777;
        }
        if self.preserve_owner {
            got.uid = st.st_uid;
            got.gid = st.st_gid;
        }
        got.mtime_ns = st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64;
        got.xattrs = xattrs;
        if e.kind == Kind::Symlink {
            got.target = Some(
                rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new())
                    .map_err(|x| io_err("reading the link", &e.path, x))?
                    .into_bytes(),
            );
        }
        if matches!(e.kind, Kind::Char | Kind::Block) {
            got.rdev = Some((rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)));
        }
        Ok((st, check_read_back(&got, e, None)))
    }

    fn link(&mut self, existing: &[u8], new: &[u8]) -> Result<(), ApplyError> {
        let (ed, en) = self.parent(existing, false)?;
        let (nd, nn) = self.parent(new, false)?;
        let est = lstat(&ed, en)
            .map_err(|x| io_err("reading", existing, x))?
            .ok_or_else(|| {
                ApplyError::Inconsistent(format!(
                    "link source {} is missing",
                    display_path(existing)
                ))
            })?;
        if FileType::from_raw_mode(est.st_mode) == FileType::Directory {
            return Err(ApplyError::Refused(format!(
                "hard link to directory {}",
                display_path(existing)
            )));
        }
        if let Some(nst) = lstat(&nd, nn).map_err(|x| io_err("reading", new, x))? {
            if nst.st_ino == est.st_ino && nst.st_dev == est.st_dev {
                return Ok(());
            }
            remove_at(&nd, nn, 0).map_err(|x| io_err("removing", new, x))?;
        }
        rustix::fs::linkat(
            &ed,
            OsStr::from_bytes(en),
            &nd,
            OsStr::from_bytes(nn),
            AtFlags::empty(),
        )
        .map_err(|x| io_err("linking", new, x))
    }

    fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<(), ApplyError> {
        let (fd, fname) = self.parent(from, false)?;
        let (td, tname) = self.parent(to, false)?;
        if lstat(&fd, fname)
            .map_err(|x| io_err("reading", from, x))?
            .is_none()
        {
            // Already renamed (a replay after a crash) or diverged.
            return match lstat(&td, tname).map_err(|x| io_err("reading", to, x))? {
                Some(_) => Ok(()),
                None => Err(ApplyError::Inconsistent(format!(
                    "neither {} nor {} exists",
                    display_path(from),
                    display_path(to)
                ))),
            };
        }
        rustix::fs::renameat(&fd, OsStr::from_bytes(fname), &td, OsStr::from_bytes(tname))
            .map_err(|x| io_err("renaming", from, x))
    }
}

impl ApplyTarget for DirTarget {
    fn apply(&mut self, record: &Record) -> Result<(), ApplyError> {
        self.apply_hashed(record, None)
    }

    fn apply_hashed(
        &mut self,
        record: &Record,
        data_digest: Option<&Digest32>,
    ) -> Result<(), ApplyError> {
        match record {
            // Records that cannot move or replace a directory keep the
            // cached parent of file records; all others drop it.
            Record::File { .. } | Record::SetMetadata(_) | Record::WriteExtent { .. } => {}
            Record::Create(e) if e.kind == Kind::Dir => {}
            _ => self.files.parent_cache = None,
        }
        match record {
            Record::File {
                entry,
                data,
                content_digest,
            } => self.write_file(entry, data, content_digest, data_digest),
            Record::Create(e) => self.create(e),
            Record::SetMetadata(e) => self.set_metadata(e),
            Record::WriteExtent {
                path, offset, data, ..
            } => {
                self.guard_path(path)?;
                let fd = self.open_regular(path, OFlags::WRONLY)?.ok_or_else(|| {
                    ApplyError::Inconsistent(format!("{} is missing", display_path(path)))
                })?;
                let before = rustix::fs::fstat(&fd).ok();
                if let Some(st) = &before {
                    self.patches
                        .note(&fd, st, *offset, offset + data.len() as u64);
                }
                let mut done = 0;
                while done < data.len() {
                    let n = rustix::io::pwrite(&fd, &data[done..], offset + done as u64)
                        .map_err(|x| io_err("writing", path, x))?;
                    if n == 0 {
                        return Err(ApplyError::Io(format!(
                            "writing {}: no progress",
                            display_path(path)
                        )));
                    }
                    done += n;
                }
                let after = rustix::fs::fstat(&fd).ok();
                let stamp = |st: Option<rustix::fs::Stat>| {
                    st.as_ref().and_then(crate::digest_cache::stamp_of_stat)
                };
                self.streams
                    .wrote(path, *offset, data, stamp(before), stamp(after));
                // Its writeback starts once its last piece is checked
                // (`content_digest`): started now, it would drop the pages
                // that check reads.
                Ok(())
            }
            Record::Truncate { path, size, .. } => {
                self.guard_path(path)?;
                let fd = self.open_regular(path, OFlags::WRONLY)?.ok_or_else(|| {
                    ApplyError::Inconsistent(format!("{} is missing", display_path(path)))
                })?;
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    let old = st.st_size as u64;
                    self.patches.note(&fd, &st, old.min(*size), old.max(*size));
                }
                rustix::fs::ftruncate(&fd, *size).map_err(|x| io_err("truncating", path, x))
            }
            // Moves or adds a name no record describes.
            Record::Rename { from, to } => {
                self.applied_whole = false;
                self.rename(from, to)
            }
            Record::Link { existing, new } => {
                self.applied_whole = false;
                self.link(existing, new)
            }
            Record::Delete { path } => {
                let (dir, name) = self.parent(path, false)?;
                remove_at(&dir, name, 0).map_err(|x| io_err("removing", path, x))
            }
        }
    }

    fn content_digest(&mut self, path: &[u8]) -> Result<Option<Digest32>, ApplyError> {
        let Some((f, stamp)) = self.open_for_digest(path)? else {
            return Ok(None);
        };
        self.digest_opened(path, f, stamp).map(Some)
    }

    fn content_digests(&mut self, paths: &[&[u8]]) -> Vec<Result<Option<Digest32>, ApplyError>> {
        use rayon::prelude::*;
        let mut out: Vec<Option<Result<Option<Digest32>, ApplyError>>> =
            (0..paths.len()).map(|_| None).collect();
        // Small files one at a time as they come; large ones held open
        // (a few at a time: descriptors are bounded) and read together.
        let mut large = Vec::new();
        type Held = Vec<(usize, std::fs::File, Option<Stamp>)>;
        type Answers = Vec<Option<Result<Option<Digest32>, ApplyError>>>;
        let flush = |t: &mut Self, large: &mut Held, out: &mut Answers| {
            let digests: Vec<Result<patched::Hashed, ApplyError>> = large
                .par_iter()
                .map(|(i, f, stamp)| {
                    DIGEST_BUF.with(|b| {
                        let mut b = b.borrow_mut();
                        if b.len() < READ_BUF {
                            b.resize(READ_BUF, 0);
                        }
                        hash_through(f, paths[*i], stamp.map_or(0, |s| s.size), &mut b)
                    })
                })
                .collect();
            t.patches.counts.whole += large.len() as u64;
            for ((i, f, stamp), d) in large.drain(..).zip(digests) {
                out[i] = Some(d.map(|(d, blocks)| {
                    t.digest_read(paths[i], f, stamp, d, blocks);
                    Some(d)
                }));
            }
        };
        for (i, p) in paths.iter().enumerate() {
            match self.open_for_digest(p) {
                // (A file patched in place with cached block values is
                // checked from them and its patched blocks, below.)
                Ok(Some((f, stamp)))
                    if stamp.is_some_and(|s| {
                        s.size >= PARALLEL_DIGEST_BYTES
                            && !self.patches.follows(&s)
                            && !self.streams.holds(p, &s)
                    }) =>
                {
                    large.push((i, f, stamp));
                    if large.len() >= PARALLEL_DIGEST_FILES {
                        flush(self, &mut large, &mut out);
                    }
                }
                Ok(Some((f, stamp))) => out[i] = Some(self.digest_opened(p, f, stamp).map(Some)),
                other => out[i] = Some(other.map(|_| None)),
            }
        }
        flush(self, &mut large, &mut out);
        // The set is checked: what it patched is known again by stamp.
        self.patches.clear();
        out.into_iter()
            .map(|r| r.expect("every path answered"))
            .collect()
    }

    fn check_reads(&self) -> CheckReads {
        self.patches.counts
    }

    fn sync(&mut self) -> Result<(), ApplyError> {
        self.writeback.flush();
        let c = &self.writeback.counters;
        if c.started.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tracing::debug!(
                started = c.started.load(std::sync::atomic::Ordering::Relaxed),
                bytes = c.bytes.load(std::sync::atomic::Ordering::Relaxed),
                skipped = c.skipped.load(std::sync::atomic::Ordering::Relaxed),
                "writeback started ahead of this sync (since the daemon started)"
            );
        }
        rustix::fs::syncfs(&self.root).map_err(|x| io_err("syncing", b"", x))
    }

    fn prepare(&mut self, records: &[Record]) -> Result<(), ApplyError> {
        self.prepare_cow(records)
    }

    fn apply_files(
        &mut self,
        records: &[Record],
        data_digest: &[Option<Digest32>],
    ) -> Vec<Result<(), ApplyError>> {
        self.write_files_parallel(records, data_digest)
    }

    fn record_applied(&mut self, on: bool) {
        self.recording = on;
        self.applied.clear();
        self.awaiting.clear();
        self.applied_whole = true;
    }

    fn take_applied(&mut self) -> Option<Vec<applied::Applied>> {
        let whole = std::mem::replace(&mut self.applied_whole, true);
        self.awaiting.clear();
        let recs = std::mem::take(&mut self.applied);
        (self.recording && whole).then_some(recs)
    }

    fn new_files_named(&mut self, on: bool) {
        self.new_files_named = on && self.named_allowed;
    }

    fn mirror_writeback(&mut self, on: bool) {
        self.writeback.flush();
        self.writeback_on = on && std::env::var_os(WRITEBACK_ENV).is_some_and(|v| !v.is_empty());
    }

    fn available(&mut self) -> Result<(u64, Option<u64>), ApplyError> {
        let st = rustix::fs::fstatvfs(&self.root)
            .map_err(|x| io_err("measuring free space of", b"", x))?;
        let inodes = (st.f_files > 0).then_some(st.f_favail);
        Ok((st.f_bavail.saturating_mul(st.f_frsize), inodes))
    }
}

/// Refuse an apply whose metadata, read back into `got` (and, for a file
/// written through its descriptor, its `size`), differs from the record's.
fn check_read_back(got: &Entry, e: &Entry, size: Option<u64>) -> Result<(), ApplyError> {
    if metadata_digest(got) == metadata_digest(e) && size.is_none_or(|s| s == e.size) {
        return Ok(());
    }
    let size_note = size.map_or(String::new(), |s| format!(", size {s}/{}", e.size));
    Err(ApplyError::Mismatch(format!(
        "metadata of {} differs after apply (mode {:o}/{:o}, uid {}/{}, gid {}/{}, mtime {}/{}, {} / {} xattrs{size_note})",
        display_path(&e.path),
        got.mode,
        e.mode,
        got.uid,
        e.uid,
        got.gid,
        e.gid,
        got.mtime_ns,
        e.mtime_ns,
        got.xattrs.len(),
        e.xattrs.len()
    )))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod file_tests;

#[cfg(test)]
mod named_tests;

#[cfg(test)]
mod parallel_tests;
#[cfg(test)]
mod patched_tests;
#[cfg(test)]
mod streamed_tests;
