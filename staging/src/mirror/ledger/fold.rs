//! The fold of a ledger's records at `MirrorEnd` ([`super::digest_from`]):
//! the records come from a [`Source`] in tree order, read ahead on a
//! thread of their own; their `lstat`s (and the reads of the entries that
//! moved) run in parallel by chunks, the root digest is folded in order,
//! and the entries of the directories to count are counted.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use standin_builder::entry::{Entry, Kind};
use standin_builder::manifest::RootDigest;

use super::{tree_cmp, Outcome, Record, Source, Writer};
use crate::mirror::beneath::Beneath;
use crate::mirror::precheck::Skip;

/// One record of a ledger being folded, with what the replica says now.
#[derive(Default)]
struct Folded {
    path: Vec<u8>,
    /// The record, when `trusted`.
    rec: Record,
    trusted: bool,
    /// The record still holds (inode and change time unchanged).
    holds: bool,
    /// Otherwise the entry read again (content digest of a regular file filled in
    /// unless unreadable) and its `lstat`.
    read: Option<Box<(Entry, std::fs::Metadata, bool)>>,
    /// Entries of a directory to count.
    children: Option<u64>,
    /// A directory whose record held and whose entries may have to be
    /// counted: known only after the last record.
    held_dir: bool,
}

/// Records folded at a time: their `lstat`s (and the reads of changed
/// entries) run in parallel, the fold itself in order.
const FOLD_CHUNK: usize = 4096;

/// Fold the records of `src`. The directories whose entries are counted
/// are the root, the directories read again, and those the ledger names
/// (`known` when the caller knows them before the records, else what
/// `src` gives after the last record: the entries of a directory whose
/// record held are then counted at the end, their listed count kept).
pub(super) fn fold(
    root: &Path,
    src: &mut (dyn Source + Send),
    known: Option<&HashSet<Vec<u8>>>,
    skip: Option<&Skip>,
    w: &mut Option<Writer>,
) -> std::io::Result<Outcome> {
    // The records are read (and merged) on a thread of their own, a few
    // chunks ahead of the fold.
    // Folded chunks go back to the reader, which reads the next records
    // into their buffers (no allocation per record).
    std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let (back, used) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ledger-read".into())
            .spawn_scoped(sc, move || read_ahead(src, &tx, &used))?;
        fold_chunks(root, &rx, &back, known, skip, w)
    })
}

/// What the reader of a fold hands on.
enum Ahead {
    /// The next records, in order.
    Chunk(Vec<Folded>),
    /// After the last record: the ledger's directories to count.
    End(std::io::Result<HashSet<Vec<u8>>>),
    Failed(std::io::Error),
}

/// Read the records of `src` in chunks to `tx` until the end, an error
/// or the fold stops taking them; into the chunks the fold gave back
/// (`used`) when there are some.
fn read_ahead(
    src: &mut (dyn Source + Send),
    tx: &std::sync::mpsc::SyncSender<Ahead>,
    used: &std::sync::mpsc::Receiver<Vec<Folded>>,
) {
    loop {
        let mut chunk = used
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FOLD_CHUNK));
        let mut n = 0;
        let mut ended = false;
        while n < FOLD_CHUNK {
            if n == chunk.len() {
                chunk.push(Folded::default());
            }
            let f = &mut chunk[n];
            match src.next_into(&mut f.path, &mut f.rec) {
                Ok(Some(trusted)) => {
                    f.trusted = trusted;
                    f.holds = false;
                    f.read = None;
                    f.children = None;
                    f.held_dir = false;
                    n += 1;
                }
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Ahead::Failed(e));
                    return;
                }
            }
        }
        chunk.truncate(n);
        if n > 0 && tx.send(Ahead::Chunk(chunk)).is_err() {
            return;
        }
        if ended {
            let _ = tx.send(Ahead::End(src.counted_dirs()));
            return;
        }
    }
}

fn fold_chunks(
    root: &Path,
    rx: &std::sync::mpsc::Receiver<Ahead>,
    back: &std::sync::mpsc::Sender<Vec<Folded>>,
    known: Option<&HashSet<Vec<u8>>>,
    skip: Option<&Skip>,
    w: &mut Option<Writer>,
) -> std::io::Result<Outcome> {
    use rayon::prelude::*;
    use std::os::unix::fs::MetadataExt;
    let replica = Beneath::new(root).map_err(std::io::Error::other)?;
    let mut rd = RootDigest::new();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // Directories whose entries are counted: (on disk, listed); on disk
    // `None`: a directory whose record held, counted at the end when the
    // ledger names it.
    let mut counted: Vec<(Vec<u8>, Option<u64>, u64)> = Vec::new();
    let mut counted_at: HashMap<Vec<u8>, usize> = HashMap::new();
    // The last parent looked up and its place in `counted` (records come
    // in tree order: neighbours share it, no hashing for them).
    let (mut parent, mut parent_at) = (None::<Vec<u8>>, None::<usize>);
    // The last path folded (`first`: none yet).
    let (mut prev, mut first) = (Vec::new(), true);
    let (mut reused, mut reread) = (0u64, 0u64);
    let prechecked = std::sync::atomic::AtomicU64::new(0);
    let listed_dirs = loop {
        let mut chunk = match rx.recv() {
            Ok(Ahead::Chunk(c)) => c,
            Ok(Ahead::End(dirs)) => break dirs?,
            Ok(Ahead::Failed(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("the ledger's reader stopped")),
        };
        chunk.par_chunks_mut(64).for_each(|part| {
            let mut rep = replica.fork();
            let mut pre = 0;
            for f in part {
                let early = f.trusted && skip.is_some_and(|s| s.trusts(&f.path));
                pre += u64::from(early);
                f.holds = early
                    || (f.trusted && rep.change_stamp(&f.path) == Some((f.rec.ino, f.rec.ctime)));
                let mut is_dir = f.holds && f.rec.dir;
                if !f.holds {
                    if let Some((mut e, md)) = rep.stat(&f.path, &mut HashMap::new()) {
                        let mut readable = true;
                        if e.kind == Kind::File && e.link.is_none() {
                            match rep.hash(&f.path, e.size) {
                                Some(d) => e.sha256 = Some(hex::encode(d)),
                                None => readable = false,
                            }
                        }
                        is_dir = e.kind == Kind::Dir;
                        f.read = Some(Box::new((e, md, readable)));
                    }
                }
                if is_dir && (!f.holds || known.is_some_and(|d| d.contains(&f.path))) {
                    f.children = Some(rep.count_children(&f.path).unwrap_or(u64::MAX));
                } else {
                    f.held_dir = is_dir && known.is_none();
                }
            }
            prechecked.fetch_add(pre, std::sync::atomic::Ordering::Relaxed);
        });
        for f in chunk.iter_mut() {
            if !first && tree_cmp(&prev, &f.path) != std::cmp::Ordering::Less {
                return Ok(Outcome::Unsure("ledger out of tree order".into()));
            }
            if let Some(p) = parent_of(&f.path) {
                if parent.as_deref() != Some(p) {
                    parent_at = counted_at.get(p).copied();
                    let buf = parent.get_or_insert_with(Vec::new);
                    buf.clear();
                    buf.extend_from_slice(p);
                }
                if let Some(i) = parent_at {
                    counted[i].2 += 1;
                }
            }
            if f.holds {
                let r = &f.rec;
                rd.add_canonical(&r.canonical, r.file_bytes);
                if let Some(out) = w.as_mut() {
                    if out.trusted_record(&f.path, r).is_err() {
                        *w = None;
                    }
                }
                if r.link_dev != 0 {
                    links
                        .entry((r.link_dev - 1, r.ino))
                        .or_insert_with(|| f.path.clone());
                }
                reused += 1;
            } else {
                reread += 1;
                if let Some((mut e, md, readable)) = f.read.take().map(|b| *b) {
                    if e.kind != Kind::Dir && md.nlink() > 1 {
                        let key = (md.dev(), md.ino());
                        if let Some(first) = links.get(&key) {
                            e.link = Some(first.clone());
                            e.sparse = None;
                            e.sha256 = None;
                        } else {
                            links.insert(key, e.path.clone());
                        }
                    }
                    if e.kind == Kind::File && e.link.is_none() && !readable {
                        return Ok(Outcome::Unsure(format!("cannot read {}", e.display_path())));
                    }
                    rd.add(&e);
                    if let Some(out) = w.as_mut() {
                        if out.trusted(&e, &md).is_err() {
                            *w = None;
                        }
                    }
                }
            }
            if f.children.is_some() || f.held_dir {
                let i = counted.len();
                counted.push((f.path.clone(), f.children, 0));
                counted_at.insert(f.path.clone(), i);
                if parent.as_deref() == Some(f.path.as_slice()) {
                    parent_at = Some(i);
                }
            }
            prev.clear();
            prev.extend_from_slice(&f.path);
            first = false;
        }
        let _ = back.send(chunk);
    };
    // The ledger's own list of directories to count (`listed_dirs`, read
    // after its end marker).
    let dirs = known.unwrap_or(&listed_dirs);
    let late: Vec<(&Vec<u8>, u64)> = counted
        .iter()
        .filter(|(p, disk, _)| disk.is_none() && dirs.contains(p))
        .map(|(p, _, listed)| (p, *listed))
        .collect();
    let late: Vec<(&Vec<u8>, u64, u64)> = late
        .par_iter()
        .map(|(p, listed)| (*p, replica.count_children(p).unwrap_or(u64::MAX), *listed))
        .collect();
    let now = counted
        .iter()
        .filter_map(|(p, disk, listed)| disk.map(|d| (p, d, *listed)));
    for (dir, disk, listed) in now.chain(late) {
        if disk != listed {
            return Ok(Outcome::Unsure(format!(
                "{} holds {disk} entries, {listed} listed",
                standin_builder::entry::display_path(dir)
            )));
        }
    }
    let prechecked = prechecked.into_inner();
    tracing::debug!(
        reused,
        reread,
        prechecked,
        "replica root digest from the mirror ledger"
    );
    Ok(Outcome::Digest {
        digest: rd.finish().0,
        reused,
        reread,
        prechecked,
    })
}

fn parent_of(path: &[u8]) -> Option<&[u8]> {
    if path.is_empty() {
        return None;
    }
    Some(match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    })
}
