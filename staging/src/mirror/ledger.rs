//! The mirror ledger: what the comparison of a difference mirror learnt
//! about the replica, so the root digest check at `MirrorEnd` needs no
//! second walk of the replica.
//!
//! While comparing, the target writes one record per entry the source
//! listed, in the source's tree order, to `mirror-ledger.bin` next to the
//! replica. An entry found equal to the source's is *trusted*: its record
//! holds the replica's canonical root-digest bytes (with the full content
//! digest, BLAKE3-256)
//! and its inode and change time. Any other entry is to be *rechecked*.
//!
//! At `MirrorEnd` the root digest is the fold of the records: a trusted
//! entry whose inode and change time are unchanged (one `lstat`; any
//! write, chmod, chown, utimes, xattr or link change moves the change
//! time) adds its recorded bytes; anything else is read again (`lstat`,
//! xattrs, content digest from the digest cache or read). Directories read again,
//! and those that held extra paths at comparison time, have their entries
//! counted, so a path nobody listed is noticed. A result that differs
//! from the source's is recomputed by the full walk before the mirror is
//! refused, so the ledger can only save time, never fail a good replica.
//!
//! ```text
//! "SILG" | version u8 = 2
//! records: tag u8 (0 recheck, 1 trusted) | bytes(path)
//!   trusted: u64 ino | i64 ctime_ns | u8 dir | u64 link dev+1 (0: not a
//!   hard link candidate) | u64 file_bytes | bytes(canonical)
//!   tag 2: bytes(path) of a directory whose entries are counted
//! end: tag 255 | "SILE"
//! ```
//! `bytes(x)` is a u32 length then x; integers are little endian.
//! Version 2's canonical bytes hold BLAKE3 content digests; a version-1
//! ledger (sha256) is not used: a comparison then reads every entry and a
//! fold at `MirrorEnd` is unsure (the whole replica is walked), so an old
//! sha256 is never taken for a BLAKE3 digest.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use standin_builder::entry::{path_cmp, Entry, Kind};
use standin_builder::manifest::RootDigest;
use standin_builder::scan::Inode;

use super::beneath::{Beneath, Quick};

const MAGIC: &[u8; 4] = b"SILG";
const END: &[u8; 4] = b"SILE";
/// 2: BLAKE3 content digests in the canonical bytes (1: sha256).
const VERSION: u8 = 2;
const MAX_PATH: usize = 64 << 10;
const MAX_CANON: usize = 16 << 20;

/// The ledger of the replica whose root is `staging_root`.
pub fn path_for(staging_root: &Path) -> PathBuf {
    staging_root.with_file_name("mirror-ledger.bin")
}

/// The ledger of the last mirror whose end it proved (its fold gave the
/// source's root digest), kept for the next comparison ([`Prev`]).
pub fn prev_path_for(staging_root: &Path) -> PathBuf {
    staging_root.with_file_name("mirror-ledger.prev")
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_le_bytes());
    w.extend_from_slice(b);
}

/// Writes a ledger while a comparison runs (to a temporary name, renamed
/// into place when the comparison ends).
pub struct Writer {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    buf: Vec<u8>,
    count_dirs: Vec<Vec<u8>>,
}

impl Writer {
    /// Start a ledger at `path` (an earlier one is removed: it no longer
    /// describes the mirror in progress).
    pub fn create(path: &Path) -> Result<Writer> {
        let _ = std::fs::remove_file(path);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut out = BufWriter::with_capacity(
            1 << 16,
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        out.write_all(MAGIC)?;
        out.write_all(&[VERSION])?;
        Ok(Writer {
            tmp,
            path: path.to_path_buf(),
            out,
            buf: Vec::with_capacity(4096),
            count_dirs: Vec::new(),
        })
    }

    /// An entry to read again at the end.
    pub fn recheck(&mut self, path: &[u8]) -> Result<()> {
        self.buf.clear();
        self.buf.push(0);
        put_bytes(&mut self.buf, path);
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    /// An entry of the replica equal to the source's: `e` as the replica
    /// holds it (with its full content digest when a regular file), `md` its `lstat`.
    pub fn trusted(&mut self, e: &Entry, md: &std::fs::Metadata) -> Result<()> {
        self.trusted_inode(e, &Inode::of(md))
    }

    /// [`Writer::trusted`] with the entry's inode.
    pub fn trusted_inode(&mut self, e: &Entry, inode: &Inode) -> Result<()> {
        let b = &mut self.buf;
        b.clear();
        b.push(1);
        put_bytes(b, &e.path);
        b.extend_from_slice(&inode.ino.to_le_bytes());
        b.extend_from_slice(&inode.ctime_ns.to_le_bytes());
        b.push(u8::from(e.kind == Kind::Dir));
        let link_dev = if e.kind != Kind::Dir && inode.nlink > 1 {
            inode.dev.wrapping_add(1)
        } else {
            0
        };
        b.extend_from_slice(&link_dev.to_le_bytes());
        let file_bytes = if e.kind == Kind::File && e.link.is_none() {
            e.size
        } else {
            0
        };
        b.extend_from_slice(&file_bytes.to_le_bytes());
        put_bytes(b, &RootDigest::canonical(e));
        self.out.write_all(b)?;
        Ok(())
    }

    /// A trusted entry carried over from the last mirror's ledger
    /// unchanged (its inode and change time were found again).
    pub fn trusted_record(&mut self, path: &[u8], r: &Record) -> Result<()> {
        let b = &mut self.buf;
        b.clear();
        b.push(1);
        put_bytes(b, path);
        b.extend_from_slice(&r.ino.to_le_bytes());
        b.extend_from_slice(&r.ctime.to_le_bytes());
        b.push(u8::from(r.dir));
        b.extend_from_slice(&r.link_dev.to_le_bytes());
        b.extend_from_slice(&r.file_bytes.to_le_bytes());
        put_bytes(b, &r.canonical);
        self.out.write_all(b)?;
        Ok(())
    }

    /// A directory whose entries are counted at the end (it held extra
    /// paths at comparison time).
    pub fn count_dir(&mut self, path: &[u8]) {
        self.count_dirs.push(path.to_vec());
    }

    /// Finish and put the ledger in place.
    pub fn finish(mut self) -> Result<()> {
        for d in std::mem::take(&mut self.count_dirs) {
            self.buf.clear();
            self.buf.push(2);
            put_bytes(&mut self.buf, &d);
            self.out.write_all(&self.buf)?;
        }
        self.out.write_all(&[255])?;
        self.out.write_all(END)?;
        self.out.flush()?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} into place", self.tmp.display()))
    }
}

struct Rd<R: Read>(R);

impl<R: Read> Rd<R> {
    fn u8(&mut self) -> std::io::Result<u8> {
        let mut b = [0u8; 1];
        self.0.read_exact(&mut b)?;
        Ok(b[0])
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.0.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn bytes(&mut self, max: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut b = [0u8; 4];
        self.0.read_exact(&mut b)?;
        let n = u32::from_le_bytes(b) as usize;
        if n > max {
            return Err(std::io::Error::other("length over the limit"));
        }
        out.resize(n, 0);
        self.0.read_exact(out)
    }
}

/// A trusted record of a ledger: the replica's entry at a path as it was
/// when its inode had this number and change time.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub ino: u64,
    pub ctime: i64,
    pub dir: bool,
    /// Device + 1 of a hard link candidate (link count > 1), else 0.
    pub link_dev: u64,
    pub file_bytes: u64,
    /// The entry's root-digest bytes ([`RootDigest::canonical`]).
    pub canonical: Vec<u8>,
}

impl Record {
    /// Whether the replica's entry `q` is still the recorded one: same
    /// inode and change time (any write, chmod, chown, utimes, xattr,
    /// rename or link change moves it), type and hard-link candidacy.
    pub fn still(&self, q: &Quick) -> bool {
        q.ino == self.ino
            && q.ctime == self.ctime
            && q.dir == self.dir
            && (q.dir || (q.nlink > 1) == (self.link_dev != 0))
    }

    /// Whether the replica's entry at `path` still has the recorded type,
    /// mode, owner, times, size, xattrs and link target (its content taken
    /// as the recorded one): read after a snapshot moved every change time,
    /// so a change made while the snapshot ran is not carried over unseen
    /// (all but a same-size rewrite with the mtime put back, which the
    /// checksum sweep finds).
    /// `links`: the hard-link groups seen so far in tree order.
    fn still_described(
        &self,
        replica: &mut Beneath,
        path: &[u8],
        links: &mut HashMap<(u64, u64), Vec<u8>>,
    ) -> bool {
        let Some((mut e, _)) = replica.stat(path, links) else {
            return false;
        };
        if e.kind == Kind::File && e.link.is_none() {
            let c = &self.canonical;
            if c.len() < 33 || c[c.len() - 33] != 1 {
                return false;
            }
            e.sha256 = Some(hex::encode(&c[c.len() - 32..]));
        }
        self.matches(&e)
    }

    /// Whether the source's entry `e` (its content digest possibly a prefix
    /// of at least 16 bytes) is this record's entry: every field of the
    /// root digest equal, content by the content digest.
    pub fn matches(&self, e: &Entry) -> bool {
        let plain_file = e.kind == Kind::File && e.link.is_none();
        if !plain_file {
            return e.sha256.is_none() && RootDigest::canonical(e) == self.canonical;
        }
        let Some(sha) = e
            .sha256
            .as_deref()
            .filter(|s| s.len() >= 32 && s.len() <= 64)
        else {
            return false;
        };
        let Ok(prefix) = hex::decode(sha) else {
            return false;
        };
        let c = &self.canonical;
        if c.len() < 33 || c[c.len() - 33] != 1 || !c[c.len() - 32..].starts_with(&prefix) {
            return false;
        }
        let mut bare = e.clone();
        bare.sha256 = None;
        let b = RootDigest::canonical(&bare);
        // `bare` ends with the 0 of "no digest" where the record has 1 + digest.
        b.len() == c.len() - 32 && b[..b.len() - 1] == c[..c.len() - 33] && b[b.len() - 1] == 0
    }
}

/// Records in tree order for the fold at `MirrorEnd` ([`digest_from`]): a
/// ledger file ([`Prev`]), or the comparison's ledger merged with the
/// apply ledger as both are read ([`super::applied::Merge`]).
pub trait Source {
    /// The next record into `path` and `rec`, whose buffers are reused:
    /// whether it is trusted (then in `rec`, else to be read again);
    /// `None` after the last one.
    fn next_into(&mut self, path: &mut Vec<u8>, rec: &mut Record) -> std::io::Result<Option<bool>>;
    /// After the last record: the directories whose entries are counted
    /// (an error when the records do not end well).
    fn counted_dirs(&mut self) -> std::io::Result<HashSet<Vec<u8>>>;
}

impl Source for Prev {
    fn next_into(&mut self, path: &mut Vec<u8>, rec: &mut Record) -> std::io::Result<Option<bool>> {
        self.read_next_into(path, rec)
    }

    fn counted_dirs(&mut self) -> std::io::Result<HashSet<Vec<u8>>> {
        self.read_counted_dirs()
    }
}

/// What [`Prev::carry`] hands each record to.
pub type CarryFn<'a> = dyn FnMut(&[u8], Option<&Record>) -> Result<()> + 'a;

/// The last proven ledger ([`prev_path_for`]) read alongside the
/// comparison's listing, both in tree order: memory is one record.
pub struct Prev {
    r: Rd<BufReader<File>>,
    /// The next record not yet passed: its path and, when trusted, itself.
    next: Option<(Vec<u8>, Option<Record>)>,
    done: bool,
    /// The ledger file's (device, inode).
    id: (u64, u64),
    /// The tag that ended the records (2: counted directories follow).
    end_tag: Option<u8>,
}

impl Prev {
    /// Open the ledger at `path`; `None` when absent or not a ledger of
    /// this version (the comparison then reads every entry).
    pub fn open(path: &Path) -> Option<Prev> {
        Prev::from_file(File::open(path).ok()?).ok()
    }

    /// [`Prev::open`] of an open ledger file: why not when it is not a
    /// ledger of this version.
    fn from_file(f: File) -> std::io::Result<Prev> {
        use std::os::unix::fs::MetadataExt;
        let md = f.metadata()?;
        let mut r = Rd(BufReader::with_capacity(1 << 16, f));
        let mut head = [0u8; 5];
        r.0.read_exact(&mut head)?;
        check_head(&head)?;
        Ok(Prev {
            r,
            next: None,
            done: false,
            id: (md.dev(), md.ino()),
            end_tag: None,
        })
    }

    /// After the last record ([`Prev::next_entry`] gave `None`): the
    /// directories counted at the end, checking the end marker (no second
    /// pass over the records).
    pub fn counted_dirs(mut self) -> std::io::Result<HashSet<Vec<u8>>> {
        self.read_counted_dirs()
    }

    fn read_counted_dirs(&mut self) -> std::io::Result<HashSet<Vec<u8>>> {
        let mut out = HashSet::new();
        let mut tag = self
            .end_tag
            .ok_or_else(|| std::io::Error::other("the records were not all read"))?;
        loop {
            match tag {
                2 => {
                    let mut path = Vec::new();
                    self.r.bytes(MAX_PATH, &mut path)?;
                    out.insert(path);
                }
                255 => {
                    let mut end = [0u8; 4];
                    self.r.0.read_exact(&mut end)?;
                    if &end != END {
                        return Err(std::io::Error::other("bad end marker"));
                    }
                    return Ok(out);
                }
                t => return Err(std::io::Error::other(format!("unknown record {t}"))),
            }
            tag = self.r.u8()?;
        }
    }

    /// The (device, inode) of the ledger file read (a ledger put in its
    /// place since is another file).
    pub fn file_id(&self) -> (u64, u64) {
        self.id
    }

    /// The next record into `path` and `rec` (their buffers reused):
    /// whether it is trusted (then in `rec`); `None` after the last one.
    /// The next record's tag and path (into `path`); `None` at the end of
    /// the records (the tag that ended them kept in `end_tag`).
    fn next_tag_path(&mut self, path: &mut Vec<u8>) -> std::io::Result<Option<u8>> {
        if self.done {
            return Ok(None);
        }
        let tag = self.r.u8()?;
        if tag == 2 || tag == 255 {
            self.end_tag = Some(tag);
            self.done = true;
            return Ok(None);
        }
        self.r.bytes(MAX_PATH, path)?;
        Ok(Some(tag))
    }

    fn read_next_into(
        &mut self,
        path: &mut Vec<u8>,
        rec: &mut Record,
    ) -> std::io::Result<Option<bool>> {
        let Some(tag) = self.next_tag_path(path)? else {
            return Ok(None);
        };
        if !plain_path(path) {
            return Err(std::io::Error::other(format!(
                "a path that is not plain: {}",
                standin_builder::entry::display_path(path)
            )));
        }
        match tag {
            0 => Ok(Some(false)),
            1 => {
                rec.ino = self.r.u64()?;
                rec.ctime = self.r.u64()? as i64;
                rec.dir = self.r.u8()? != 0;
                rec.link_dev = self.r.u64()?;
                rec.file_bytes = self.r.u64()?;
                self.r.bytes(MAX_CANON, &mut rec.canonical)?;
                Ok(Some(true))
            }
            t => Err(std::io::Error::other(format!("unknown record {t}"))),
        }
    }

    fn read_next(&mut self) -> std::io::Result<Option<(Vec<u8>, Option<Record>)>> {
        let tag = self.r.u8()?;
        if tag == 2 || tag == 255 {
            self.end_tag = Some(tag);
            return Ok(None);
        }
        let mut path = Vec::new();
        self.r.bytes(MAX_PATH, &mut path)?;
        match tag {
            0 => Ok(Some((path, None))),
            1 => {
                let ino = self.r.u64()?;
                let ctime = self.r.u64()? as i64;
                let dir = self.r.u8()? != 0;
                let link_dev = self.r.u64()?;
                let file_bytes = self.r.u64()?;
                let mut canonical = Vec::new();
                self.r.bytes(MAX_CANON, &mut canonical)?;
                Ok(Some((
                    path,
                    Some(Record {
                        ino,
                        ctime,
                        dir,
                        link_dev,
                        file_bytes,
                        canonical,
                    }),
                )))
            }
            t => Err(std::io::Error::other(format!("unknown record {t}"))),
        }
    }

    /// For each record, whether it still holds for the replica at `root`
    /// (`None` when the ledger is damaged).
    fn holding(mut self, root: &Path) -> Option<Vec<bool>> {
        let mut replica = Beneath::new(root).ok()?;
        let mut out = Vec::new();
        while let Some((path, rec)) = self.read_next().ok()? {
            out.push(rec.is_some_and(|r| replica.quick_stat(&path).is_some_and(|q| r.still(&q))));
        }
        Some(out)
    }

    /// Rewrite the ledger (read by `self`) at `path`: records that held
    /// before the snapshot (`holding`) take the entry's inode change time
    /// and link count now; the others are to be read again. How many were
    /// carried over.
    fn restamp(mut self, root: &Path, path: &Path, holding: &[bool]) -> Result<u64> {
        let mut replica = Beneath::new(root)?;
        let mut w = Writer::create(path)?;
        let mut n = 0;
        let mut i = 0;
        let mut links = HashMap::new();
        while let Some((p, rec)) = self.read_next()? {
            let held = holding.get(i).copied().unwrap_or(false);
            i += 1;
            match (rec, held, replica.quick_stat(&p)) {
                (Some(mut r), true, Some(q))
                    if q.ino == r.ino
                        && q.dir == r.dir
                        && r.still_described(&mut replica, &p, &mut links) =>
                {
                    r.ctime = q.ctime;
                    r.link_dev = if !q.dir && q.nlink > 1 {
                        q.dev.wrapping_add(1)
                    } else {
                        0
                    };
                    w.trusted_record(&p, &r)?;
                    n += 1;
                }
                _ => w.recheck(&p)?,
            }
        }
        if i != holding.len() {
            anyhow::bail!("the last mirror ledger changed during the snapshot");
        }
        w.finish()?;
        Ok(n)
    }

    /// The next record's path (into `path`) and, when trusted, its inode
    /// and change time; `None` after the last one. Reads no more than
    /// that: no record is made (the early check, [`super::precheck`]).
    pub fn next_stamp(
        &mut self,
        path: &mut Vec<u8>,
    ) -> std::io::Result<Option<Option<(u64, i64)>>> {
        let Some(tag) = self.next_tag_path(path)? else {
            return Ok(None);
        };
        match tag {
            0 => Ok(Some(None)),
            1 => {
                let ino = self.r.u64()?;
                let ctime = self.r.u64()? as i64;
                // dir u8, link dev u64, file bytes u64, then the canonical bytes.
                let mut fixed = [0u8; 17];
                self.r.0.read_exact(&mut fixed)?;
                let mut len = [0u8; 4];
                self.r.0.read_exact(&mut len)?;
                let n = u32::from_le_bytes(len) as u64;
                if n > MAX_CANON as u64 {
                    return Err(std::io::Error::other("length over the limit"));
                }
                // Past the end of a damaged ledger, the next read fails.
                self.r.0.seek_relative(n as i64)?;
                Ok(Some(Some((ino, ctime))))
            }
            t => Err(std::io::Error::other(format!("unknown record {t}"))),
        }
    }

    /// The next record in the ledger's order: its path and, when trusted,
    /// itself; `None` after the last one (for [`super::applied`], which
    /// merges ledgers).
    pub fn next_entry(&mut self) -> std::io::Result<Option<(Vec<u8>, Option<Record>)>> {
        if self.done {
            return Ok(None);
        }
        let n = self.read_next()?;
        self.done = n.is_none();
        Ok(n)
    }

    /// Hand every record before `upto` (all of them for `None`) to `each`,
    /// in tree order, and pass over the one at `upto` (a sparse mirror
    /// carries the records of the entries the source did not list into the
    /// new ledger). A damaged ledger gives nothing more.
    pub fn carry(&mut self, upto: Option<&[u8]>, each: &mut CarryFn<'_>) -> Result<()> {
        loop {
            if self.next.is_none() {
                if self.done {
                    return Ok(());
                }
                match self.read_next() {
                    Ok(Some(n)) => self.next = Some(n),
                    Ok(None) => {
                        self.done = true;
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::debug!("last mirror ledger unusable: {e}");
                        self.done = true;
                        return Ok(());
                    }
                }
            }
            let Some((p, rec)) = self.next.as_ref() else {
                return Ok(());
            };
            match upto.map(|u| path_cmp(p, u)) {
                None | Some(std::cmp::Ordering::Less) => {
                    each(p, rec.as_ref())?;
                    self.next = None;
                }
                Some(std::cmp::Ordering::Equal) => {
                    self.next = None;
                    return Ok(());
                }
                Some(std::cmp::Ordering::Greater) => return Ok(()),
            }
        }
    }

    /// The trusted record of `path`; paths must be asked in tree order
    /// (records before `path` are passed over). A damaged ledger gives
    /// nothing more.
    pub fn take(&mut self, path: &[u8]) -> Option<Record> {
        loop {
            if self.next.is_none() {
                if self.done {
                    return None;
                }
                match self.read_next() {
                    Ok(Some(n)) => self.next = Some(n),
                    Ok(None) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => {
                        tracing::debug!("last mirror ledger unusable: {e}");
                        self.done = true;
                        return None;
                    }
                }
            }
            let (p, _) = self.next.as_ref()?;
            match path_cmp(p, path) {
                std::cmp::Ordering::Less => self.next = None,
                std::cmp::Ordering::Equal => return self.next.take()?.1,
                std::cmp::Ordering::Greater => return None,
            }
        }
    }
}

/// Run `snapshot` (taking a snapshot and pruning old ones; the caller
/// holds the store, so no change set is applied meanwhile, and has
/// finished any change set left half applied, so the snapshot's own replay
/// changes nothing) and carry the last proven ledger ([`prev_path_for`]) of
/// the replica at `root` across it. Hard links a snapshot adds or removes
/// move the change time of the replica's files, which would leave no
/// record trusted: each record still holding right before, whose entry
/// still has the recorded metadata right after ([`Record::still_described`]:
/// a write by someone else while the snapshot ran is not carried), is
/// given its entry's change time and link count right after (a snapshot
/// changes nothing else of the replica). A failed snapshot carries nothing.
pub fn across_snapshot<T>(root: &Path, snapshot: impl FnOnce() -> Result<T>) -> Result<T> {
    let prev = prev_path_for(root);
    let t0 = std::time::Instant::now();
    let holding = Prev::open(&prev).and_then(|p| p.holding(root));
    let out = snapshot();
    if let (Some(holding), true) = (holding, out.is_ok()) {
        let restamped = Prev::open(&prev)
            .ok_or_else(|| anyhow::anyhow!("the last mirror ledger vanished"))
            .and_then(|p| p.restamp(root, &prev, &holding));
        match restamped {
            Ok(n) => tracing::debug!(
                restamped = n,
                ms = t0.elapsed().as_millis() as u64,
                "last mirror ledger carried across the snapshot"
            ),
            Err(e) => {
                tracing::warn!("carrying the last mirror ledger across a snapshot: {e:#}");
                let _ = std::fs::remove_file(&prev);
            }
        }
    }
    out
}

/// What the ledger gave at `MirrorEnd`.
pub enum Outcome {
    /// The replica's root digest, with how many entries were taken from
    /// the ledger and how many read again.
    Digest {
        digest: String,
        reused: u64,
        reread: u64,
        /// Of the reused, those taken from the early check without an
        /// `lstat` at the end ([`super::precheck`]).
        prechecked: u64,
    },
    /// The ledger says the replica differs (or is unusable); why.
    Unsure(String),
}

/// Whether `path` has no empty component (no leading, trailing or doubled
/// `/`; `""` is the root): the paths every ledger holds. Records read for
/// the fold ([`Source::next_into`]) must be plain, so that [`tree_cmp`]
/// orders them.
pub fn plain_path(path: &[u8]) -> bool {
    let mut after_slash = true;
    for &c in path {
        if c == b'/' {
            if after_slash {
                return false;
            }
            after_slash = true;
        } else {
            after_slash = false;
        }
    }
    path.is_empty() || !after_slash
}

/// The tree order of [`path_cmp`] for plain paths ([`plain_path`]), by
/// their bytes with `/` below every other byte: one pass, no splitting.
pub fn tree_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None => a.len().cmp(&b.len()),
        Some(i) => {
            let key = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
            key(a[i]).cmp(&key(b[i]))
        }
    }
}

/// The root digest of the replica at `root` from the ledger at `ledger`
/// (see the module docs). `Ok(None)` when there is no ledger.
pub fn digest(root: &Path, ledger: &Path) -> Result<Option<Outcome>> {
    digest_with(root, ledger, None)
}

/// [`digest`], taking the records `skip` trusts as holding without their
/// `lstat` ([`super::precheck`]).
pub fn digest_with(
    root: &Path,
    ledger: &Path,
    skip: Option<&super::precheck::Skip>,
) -> Result<Option<Outcome>> {
    digest_into(
        root,
        ledger,
        Hints {
            skip,
            count_dirs: None,
        },
        None,
    )
}

/// What the caller of the fold at `MirrorEnd` already knows.
#[derive(Default, Clone, Copy)]
pub struct Hints<'a> {
    /// The sparse mirror's early check ([`super::precheck`]).
    pub skip: Option<&'a super::precheck::Skip>,
    /// The ledger's counted directories, when the caller knows them
    /// before the records (else the fold learns them after the last one
    /// and counts the entries of those whose record held then).
    pub count_dirs: Option<&'a HashSet<Vec<u8>>>,
}

impl<'a> Hints<'a> {
    /// Only the early check.
    pub fn skip(skip: &'a super::precheck::Skip) -> Hints<'a> {
        Hints {
            skip: Some(skip),
            count_dirs: None,
        }
    }
}

/// [`digest_with`]; with `out`, the fold also writes there a ledger of
/// the replica as it found it (the records that held as they were, the
/// entries read again as trusted records of what was read), so the entries
/// read again at this end are not read again at the next one. `out` is
/// removed when the fold does not finish.
pub fn digest_into(
    root: &Path,
    ledger: &Path,
    hints: Hints<'_>,
    out: Option<&Path>,
) -> Result<Option<Outcome>> {
    let f = match File::open(ledger) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", ledger.display())),
    };
    // The directories to count follow the records: the fold learns them
    // at the end (no pass over the ledger first).
    let got = Prev::from_file(f).and_then(|mut src| digest_from(root, &mut src, hints, out));
    Ok(Some(got.unwrap_or_else(|e| {
        Outcome::Unsure(format!("ledger unusable: {e}"))
    })))
}

/// The fold of the records `src` gives, in tree order (see the module
/// docs), with what the caller knows (`hints`); with `out`, the ledger of
/// the replica as the fold found it, as [`digest_into`] writes it. An error
/// when `src` fails (or the replica's root cannot be opened): then nothing
/// is known and `out` is removed.
pub fn digest_from(
    root: &Path,
    src: &mut (dyn Source + Send),
    hints: Hints<'_>,
    out: Option<&Path>,
) -> std::io::Result<Outcome> {
    let mut w = out.and_then(|p| match Writer::create(p) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!("{e:#}; the fold writes no ledger");
            None
        }
    });
    let got = fold::fold(root, src, hints.count_dirs, hints.skip, &mut w);
    match (w, &got) {
        (Some(w), Ok(Outcome::Digest { .. })) => {
            if let Err(e) = w.finish() {
                tracing::debug!("{e:#}; the fold's ledger is not kept");
                if let Some(p) = out {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        (w, _) => {
            drop(w);
            if let Some(p) = out {
                let _ = std::fs::remove_file(p);
                let mut tmp = p.as_os_str().to_owned();
                tmp.push(".tmp");
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
    got
}

/// A ledger's magic and version must be this build's.
fn check_head(head: &[u8; 5]) -> std::io::Result<()> {
    if &head[..4] != MAGIC {
        return Err(std::io::Error::other("not a ledger (bad magic)"));
    }
    if head[4] != VERSION {
        return Err(std::io::Error::other(format!(
            "a version {} ledger (this standin reads version {VERSION})",
            head[4]
        )));
    }
    Ok(())
}

mod fold;

#[cfg(test)]
pub(in crate::mirror) mod tests {
    use super::*;
    use crate::mirror::tests::sh;
    use crate::mirror::{replica_digest, DiffSession};
    use standin_builder::progress::NoProgress;
    use standin_builder::scan::ScanOptions;
    use standin_link::message::MirrorEntries;

    fn scan(root: &Path) -> (Vec<Entry>, String) {
        let mut out = Vec::new();
        let s = standin_builder::manifest::scan_tree_mirror(
            root,
            &ScanOptions::default(),
            &NoProgress,
            |e| {
                out.push(e.clone());
                Ok(())
            },
        )
        .unwrap();
        (out, s.root_digest)
    }

    /// The comparison of the replica with every source entry, `per_batch`
    /// entries a batch (its ledger is written).
    pub(in crate::mirror) fn compare(rep: &Path, entries: &[Entry], per_batch: usize) {
        let mut s = DiffSession::new(rep).unwrap();
        for (i, chunk) in entries.chunks(per_batch).enumerate() {
            s.diff(&MirrorEntries {
                batch: i as u64 + 1,
                entries: chunk.to_vec(),
                block_size: 4096,
                gone: Vec::new(),
            })
            .unwrap();
        }
        s.diff(&MirrorEntries {
            batch: 99,
            entries: vec![],
            block_size: 4096,
            gone: Vec::new(),
        })
        .unwrap();
    }

    fn ledger_digest(rep: &Path) -> (String, u64, u64) {
        match digest(rep, &path_for(rep)).unwrap().expect("a ledger") {
            Outcome::Digest {
                digest,
                reused,
                reread,
                ..
            } => (digest, reused, reread),
            Outcome::Unsure(why) => panic!("{why}"),
        }
    }

    #[test]
    fn tree_cmp_orders_plain_paths_as_path_cmp_does() {
        // Every path of up to 4 bytes over a few bytes around '/'.
        let alphabet = [b'-', b'.', b'/', b'0', b'a', b'b', 0xff];
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=4 {
            let mut idx = vec![0usize; len];
            loop {
                paths.push(idx.iter().map(|&i| alphabet[i]).collect());
                let mut k = 0;
                while k < len && idx[k] == alphabet.len() - 1 {
                    idx[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
                idx[k] += 1;
            }
        }
        let plain: Vec<&Vec<u8>> = paths.iter().filter(|p| plain_path(p)).collect();
        assert!(plain.len() > 1000 && plain.len() < paths.len());
        for p in &paths {
            let empty_component = p.first() == Some(&b'/')
                || p.last() == Some(&b'/')
                || p.windows(2).any(|w| w == b"//");
            assert_eq!(plain_path(p), !empty_component, "{p:?}");
        }
        for a in &plain {
            for b in &plain {
                assert_eq!(tree_cmp(a, b), path_cmp(a, b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_ledger_path_that_is_not_plain_is_not_folded() {
        let t = tempfile::tempdir().unwrap();
        let rep = t.path().join("rep");
        std::fs::create_dir_all(rep.join("d")).unwrap();
        std::fs::write(rep.join("d/f"), "f").unwrap();
        for bad in [&b"d//f"[..], b"/d", b"d/"] {
            let mut w = Writer::create(&path_for(&rep)).unwrap();
            w.recheck(b"").unwrap();
            w.recheck(b"d").unwrap();
            w.recheck(bad).unwrap();
            w.finish().unwrap();
            match digest(&rep, &path_for(&rep)).unwrap().unwrap() {
                Outcome::Unsure(why) => assert!(why.contains("not plain"), "{why}"),
                Outcome::Digest { .. } => panic!("{bad:?} was folded"),
            }
        }
    }

    #[test]
    fn ledger_digest_equals_the_full_walk_and_catches_tampering() {
        let t = tempfile::tempdir().unwrap();
        let (src, rep) = (t.path().join("src"), t.path().join("rep"));
        std::fs::create_dir_all(src.join("d/sub")).unwrap();
        std::fs::create_dir_all(src.join("e")).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("d/f{i}")), format!("file {i}")).unwrap();
        }
        std::fs::write(src.join("d/sub/big"), vec![7u8; 300_000]).unwrap();
        std::fs::hard_link(src.join("d/f1"), src.join("e/link")).unwrap();
        std::os::unix::fs::symlink("../d/f2", src.join("e/sym")).unwrap();
        sh(&format!("cp -a {0} {1}", src.display(), rep.display()));
        // The source moves on; the replica has an extra path.
        std::fs::write(src.join("d/f3"), "changed content").unwrap();
        std::fs::write(src.join("d/new"), "new").unwrap();
        std::fs::write(rep.join("e/extra"), "extra").unwrap();
        let (entries, want) = scan(&src);
        compare(&rep, &entries, 3);
        // What the mirror does.
        sh(&format!(
            "rm {r}/e/extra && cp -a {s}/d/f3 {s}/d/new {r}/d/ && touch -r {s}/d {r}/d && touch -r {s}/e {r}/e",
            s = src.display(),
            r = rep.display()
        ));
        let full = replica_digest(&rep).unwrap();
        assert_eq!(full, want, "the mirror made the replica equal");
        let (got, reused, reread) = ledger_digest(&rep);
        assert_eq!(got, full, "the ledger gives the full walk's digest");
        assert!(
            reused > reread && reread >= 4,
            "most entries come from the ledger ({reused} reused, {reread} read again)"
        );
        assert_eq!(crate::mirror::checked_digest(&rep, &want).unwrap(), want);

        // Same-size content change with the mtime put back: caught.
        sh(&format!(
            "printf 'FILE 9' > {r}/d/f9 && touch -r {s}/d/f9 {r}/d/f9",
            s = src.display(),
            r = rep.display()
        ));
        assert_ne!(ledger_digest(&rep).0, want, "a tampered file is caught");
        assert_ne!(crate::mirror::checked_digest(&rep, &want).unwrap(), want);
        sh(&format!(
            "cp -a {s}/d/f9 {r}/d/f9",
            s = src.display(),
            r = rep.display()
        ));
        assert_eq!(
            ledger_digest(&rep).0,
            want,
            "the repaired file is read again"
        );

        // A path nobody listed, its directory's mtime put back: caught.
        sh(&format!(
            "echo x > {r}/d/sub/sneaky && touch -r {s}/d/sub {r}/d/sub",
            s = src.display(),
            r = rep.display()
        ));
        match digest(&rep, &path_for(&rep)).unwrap().unwrap() {
            Outcome::Unsure(why) => assert!(why.contains("entries"), "{why}"),
            Outcome::Digest { digest, .. } => assert_ne!(digest, want),
        }
        assert_ne!(crate::mirror::checked_digest(&rep, &want).unwrap(), want);
        std::fs::remove_file(rep.join("d/sub/sneaky")).unwrap();

        // A ledger of version 1 (sha256 digests) is not used, even whole
        // and otherwise valid: neither its fold nor as the previous ledger.
        let lp = path_for(&rep);
        let good = std::fs::read(&lp).unwrap();
        assert_eq!(good[4], VERSION);
        let mut old = good.clone();
        old[4] = 1;
        std::fs::write(&lp, &old).unwrap();
        match digest(&rep, &lp).unwrap() {
            Some(Outcome::Unsure(why)) => assert!(why.contains("version 1"), "{why}"),
            _ => panic!("a version-1 ledger was folded"),
        }
        let none = HashSet::new();
        let hints = Hints {
            skip: None,
            count_dirs: Some(&none),
        };
        assert!(matches!(
            digest_into(&rep, &lp, hints, None).unwrap(),
            Some(Outcome::Unsure(_))
        ));
        assert!(Prev::open(&lp).is_none());
        std::fs::write(&lp, &good).unwrap();
        assert!(Prev::open(&lp).is_some());

        // A damaged ledger is not used; the full walk decides.
        let len = std::fs::metadata(&lp).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&lp)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(matches!(
            digest(&rep, &lp).unwrap(),
            Some(Outcome::Unsure(_))
        ));
        sh(&format!(
            "touch -r {s}/d/sub {r}/d/sub",
            s = src.display(),
            r = rep.display()
        ));
        assert_eq!(crate::mirror::checked_digest(&rep, &want).unwrap(), want);
    }
}
