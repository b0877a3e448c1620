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
//!   (checksum mode) `blocks` holds the sha256 of each of the replica's
//!   blocks, so only differing blocks travel; with `block_size == 0`
//!   (date/time/size mode) `blocks` is empty and the whole file travels;
//! - `extra` (only in the answer to the empty batch that ends the entries):
//!   a path the replica holds and the source did not list; the source
//!   deletes it with an ordinary, journaled `Delete` record. Only the
//!   topmost such path is listed (Delete is recursive).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};
use standin_builder::digest_table::Stamp;
use standin_builder::entry::{Entry, Kind};
use standin_builder::progress::NoProgress;
use standin_builder::scan::{stat_entry_stamped, ScanOptions};
use standin_link::message::{DiffItem, MirrorDiff, MirrorEntries};

/// One source's difference mirror on one connection.
pub struct DiffSession {
    root: PathBuf,
    root_fd: Option<OwnedFd>,
    /// The last parent directory opened by [`DiffSession::stat`] (entries
    /// come in tree order, so neighbours share it).
    last_dir: Option<(Vec<u8>, OwnedFd)>,
    seen: HashSet<Vec<u8>>,
    links: HashMap<(u64, u64), Vec<u8>>,
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
    /// Start comparing against the replica at `root` (which may not exist yet).
    pub fn new(root: &Path) -> Result<DiffSession> {
        let root_fd = match rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(e).with_context(|| format!("opening {}", root.display())),
        };
        Ok(DiffSession {
            root: root.to_path_buf(),
            root_fd,
            last_dir: None,
            seen: HashSet::new(),
            links: HashMap::new(),
        })
    }

    /// The replica's parent directory of `path` and the last component.
    fn parent<'p>(&self, path: &'p [u8]) -> Option<(OwnedFd, &'p [u8])> {
        let root = self.root_fd.as_ref()?;
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None if path.is_empty() => (&b"."[..], &b"."[..]),
            None => (&b"."[..], path),
        };
        let fd = rustix::fs::openat2(
            root,
            OsStr::from_bytes(dir),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()?;
        Some((fd, name))
    }

    fn proc_path(fd: &OwnedFd, name: &[u8]) -> PathBuf {
        let mut p = format!("/proc/self/fd/{}/", fd.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        PathBuf::from(OsStr::from_bytes(&p))
    }

    /// The replica's entry at `path` (no sha256) and a regular file's
    /// stamp, `None` when absent or unreachable.
    fn stat(&mut self, path: &[u8]) -> Option<(Entry, Option<Stamp>)> {
        let dir = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => b"",
        };
        let reuse = matches!(&self.last_dir, Some((d, _)) if d == dir) && !path.is_empty();
        if !reuse {
            self.last_dir = None;
            let (fd, _) = self.parent(path)?;
            self.last_dir = Some((dir.to_vec(), fd));
        }
        let (_, fd) = self.last_dir.as_ref()?;
        let name = if path.is_empty() {
            &b"."[..]
        } else {
            &path[dir.len() + usize::from(!dir.is_empty())..]
        };
        stat_entry_stamped(&Self::proc_path(fd, name), path.to_vec(), &mut self.links)
            .ok()
            .flatten()
    }

    /// Answer one batch. A batch with no entries ends the mirror's entries:
    /// the answer lists the extra paths.
    pub fn diff(&mut self, m: &MirrorEntries) -> Result<MirrorDiff> {
        if m.entries.is_empty() {
            return self.extras(m.batch);
        }
        let mut pending = Vec::with_capacity(m.entries.len());
        for e in &m.entries {
            standin_builder::changeset::check_path(&e.path, true)
                .map_err(|r| anyhow::anyhow!("mirror entry refused: {r}"))?;
            self.seen.insert(e.path.clone());
            let got = self.stat(&e.path);
            let mut p = classify(e, got.as_ref().map(|g| &g.0), m.block_size);
            // A digest the target computed under the file's current stamp
            // decides without reading the file.
            if let (Pending::Hash { meta_same, .. }, Some((_, Some(st)))) = (&p, &got) {
                if let Some(d) = crate::digest_cache::lookup_stamp(st) {
                    p = if same_digest(&hex::encode(d), e.sha256.as_deref()) {
                        Pending::Done(if *meta_same { "same" } else { "metadata" })
                    } else {
                        Pending::Blocks
                    };
                }
            }
            pending.push(p);
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
                    Pending::Hash { size, meta_same } => match self.hash(&e.path, size) {
                        Some(h) if same_digest(&h, e.sha256.as_deref()) => {
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
        Ok(MirrorDiff {
            batch: m.batch,
            items: items.into_iter().filter(|i| i.state != "same").collect(),
        })
    }

    fn open_file(&self, path: &[u8]) -> Option<std::fs::File> {
        let (dir, name) = self.parent(path)?;
        let fd = rustix::fs::openat(
            &dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        Some(std::fs::File::from(fd))
    }

    fn hash(&self, path: &[u8], size: u64) -> Option<String> {
        let mut f = self.open_file(path)?;
        let stamp = crate::digest_cache::stamp_of_fd(&f);
        if let Some(d) = stamp.as_ref().and_then(crate::digest_cache::lookup_stamp) {
            return Some(hex::encode(d));
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; (1 << 20).min(size.max(4096) as usize)];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        let d: [u8; 32] = h.finalize().into();
        if let Some(stamp) = stamp {
            crate::digest_cache::remember(stamp, d);
        }
        Some(hex::encode(d))
    }

    /// Digest of each `bs`-byte block of the replica's file (empty in
    /// dts mode, or when unreadable: the whole file travels).
    fn blocks(&self, path: &[u8], bs: u64) -> Vec<[u8; 16]> {
        if bs == 0 {
            return Vec::new();
        }
        let Some(mut f) = self.open_file(path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; bs as usize];
        loop {
            let mut got = 0;
            while got < buf.len() {
                match f.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return Vec::new(),
                }
            }
            if got == 0 {
                break;
            }
            out.push(
                Sha256::digest(&buf[..got])[..16]
                    .try_into()
                    .expect("16 bytes"),
            );
            if got < buf.len() {
                break;
            }
        }
        out
    }

    /// The topmost replica paths the source did not list.
    fn extras(&mut self, batch: u64) -> Result<MirrorDiff> {
        let mut items = Vec::new();
        if self.root_fd.is_some() {
            let mut walk = walkdir::WalkDir::new(&self.root)
                .follow_links(false)
                .same_file_system(false)
                .min_depth(1)
                .sort_by(|a, b| a.file_name().cmp(b.file_name()))
                .into_iter();
            while let Some(item) = walk.next() {
                let item =
                    item.with_context(|| format!("listing the replica {}", self.root.display()))?;
                let rel = item
                    .path()
                    .strip_prefix(&self.root)
                    .expect("beneath the root")
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                if !self.seen.contains(&rel) {
                    if item.file_type().is_dir() {
                        walk.skip_current_dir();
                    }
                    items.push(DiffItem {
                        path: rel,
                        state: "extra".into(),
                        blocks: Vec::new(),
                    });
                }
            }
        }
        Ok(MirrorDiff { batch, items })
    }
}

/// Whether the replica's sha256 (hex) is the source's: the source sends at
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
    let opts = ScanOptions {
        excludes: Vec::new(),
        one_file_system: true,
        system_excludes: Vec::new(),
        always_system_excludes: false,
    };
    let known = |st: &Stamp| crate::digest_cache::lookup_stamp(st);
    let s =
        standin_builder::manifest::scan_tree_known(root, &opts, &NoProgress, &known, |_| Ok(()))
            .with_context(|| {
                format!(
                    "computing the root digest of the replica {}",
                    root.display()
                )
            })?;
    Ok(s.root_digest)
}

/// End a mirror: when the source sent its root digest and the mirror's
/// last change set is applied, the replica's digest must match before the
/// mirror counts as complete ("verify before visible").
pub fn end(
    store: &mut crate::Store,
    source_id: &str,
    m: &standin_link::message::MirrorEnd,
) -> Result<standin_link::message::MirrorDone> {
    if let Some(want) = &m.root_digest {
        if store.state().last_applied_seq >= m.last_seq {
            let root = store.staging_root(source_id);
            let got = replica_digest(&root)?;
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
    }
    let done = store.mirror_end(m)?;
    // Keep what the comparison and the check hashed for the next mirror,
    // also across a daemon restart.
    let root = store.staging_root(source_id);
    if let Err(e) = crate::digest_cache::save(store.dir(), &crate::digest_cache::tree_id(&root)) {
        tracing::warn!("{e:#}; the next mirror hashes the replica again");
    }
    Ok(done)
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

    fn entries(root: &Path) -> Vec<Entry> {
        let mut out = Vec::new();
        for s in Scanner::new(root, &ScanOptions::default(), &NoProgress).unwrap() {
            let mut e = s.unwrap().entry;
            if e.kind == Kind::File && e.link.is_none() {
                let (h, _) = standin_builder::hash::hash_file(
                    &root.join(OsStr::from_bytes(&e.path)),
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
            })
            .unwrap();
        assert!(d2.items.iter().all(|i| i.blocks.is_empty()));
        // The empty batch lists the topmost paths the source did not list.
        let mut listed = es.clone();
        listed.push(entries(&src).into_iter().find(|e| e.path == b"d").unwrap());
        let mut s3 = DiffSession::new(&rep).unwrap();
        s3.diff(&MirrorEntries {
            batch: 1,
            entries: listed,
            block_size: 4096,
        })
        .unwrap();
        let extras = s3
            .diff(&MirrorEntries {
                batch: 2,
                entries: vec![],
                block_size: 4096,
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
                block_size: 4096
            })
            .is_err());
    }
}
