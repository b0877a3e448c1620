//! The sending end of the streaming mirror: entries arrive in tree order,
//! already compared (or known to be missing), and leave as change-set
//! records at once.
//!
//! What is held in memory is bounded by the pipeline, not by the tree:
//! - `pending`: the entries of at most two batches (the newest batch is
//!   queued on the reader thread while the one before it is written);
//! - the reader thread's read-ahead ([`super::files::READ_AHEAD`]);
//! - the directory stack: the directories from the root down to the
//!   current entry (their metadata is sent when the walk leaves them,
//!   after their content changed their mtimes);
//! - the first members of hard-link groups recreated during this mirror
//!   (only when a later member may be kept as it is);
//! - the change set being filled and the sender's unacknowledged sets.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use standin_builder::changeset::Record;
use standin_builder::digest_stream::Writer as DigestWriter;
use standin_builder::digest_table::Stamp;
use standin_builder::entry::{Entry, Kind};
use standin_builder::manifest::RootDigest;

use super::files::{whole_file, ReadAhead};
use super::sets::{send_blocks, send_whole, SetWriter};
use super::{abs_path, parent_of, Action};

/// One compared entry on its way out.
pub(super) struct Item {
    pub entry: Entry,
    pub action: Action,
    /// The comparison batch it came in (the sink writes a batch while the
    /// reader reads the next one).
    pub batch: u64,
    /// The scan's stamp of a regular file (empty-replica path: the digest
    /// read for the File record goes into the source's digest cache).
    pub stamp: Option<Stamp>,
    /// The scan's stamp of the entry for the mirror index (empty replica).
    pub istamp: Option<super::index::EntryStamp>,
}

/// Turns compared entries into records, in tree order.
pub(super) struct Sink<'a> {
    pub out: SetWriter<'a>,
    root: PathBuf,
    block_size: u32,
    ahead: ReadAhead,
    pending: VecDeque<Item>,
    /// Directories from the root down to the last entry; whether each one's
    /// metadata must be sent when the walk leaves it.
    dirs: Vec<(Entry, bool)>,
    /// Recreated files with more than one link (a kept later member of
    /// their group must be linked again).
    recreated: HashSet<Vec<u8>>,
    track_links: bool,
    /// The root digest of what was sent, when the scan did not hash
    /// (empty replica): built from the digests read for the records.
    pub digest: Option<RootDigest>,
    /// Digests read for the records, by scan stamp (empty replica).
    pub fresh: Option<DigestWriter>,
    /// The fresh mirror index (empty replica).
    pub index: Option<super::index::Writer>,
    /// Entries created, rewritten, patched or re-stamped.
    pub changed: u64,
    /// Paths deleted.
    pub deleted: u64,
    /// Regular files read and hashed for their records (empty replica).
    pub files_read: u64,
    /// Most entries held between the comparison and the change sets.
    pub max_pending: usize,
}

impl<'a> Sink<'a> {
    /// A sink writing into `out`. `hash` builds the root digest from the
    /// records (the scan did not hash); `track_links` keeps the hard-link
    /// bookkeeping needed when later members of a group may be kept.
    pub fn new(
        out: SetWriter<'a>,
        root: PathBuf,
        block_size: u32,
        hash: bool,
        track_links: bool,
    ) -> Sink<'a> {
        let ahead = ReadAhead::start(root.clone(), out.pool.clone());
        Sink {
            out,
            root,
            block_size,
            ahead,
            pending: VecDeque::new(),
            dirs: Vec::new(),
            recreated: HashSet::new(),
            track_links,
            digest: hash.then(RootDigest::new),
            fresh: None,
            index: None,
            changed: 0,
            deleted: 0,
            files_read: 0,
            max_pending: 0,
        }
    }

    /// Queue one compared entry (in tree order); whole files start being
    /// read at once.
    pub fn push(&mut self, item: Item) {
        if matches!(item.action, Action::Create) && whole_file(&item.entry) {
            self.ahead.push(item.entry.clone());
        }
        self.pending.push_back(item);
        self.max_pending = self.max_pending.max(self.pending.len());
    }

    /// Whether compared entries wait to be written.
    pub fn holds(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Write every queued entry of batches before `batch`.
    pub async fn drain_before(&mut self, batch: u64) -> Result<()> {
        while self.pending.front().is_some_and(|i| i.batch < batch) {
            let item = self.pending.pop_front().expect("checked");
            self.emit(item).await?;
        }
        Ok(())
    }

    /// Write everything queued, the metadata of the directories still
    /// open, then delete `extras` (paths the replica holds and the source
    /// does not) and re-stamp their parents.
    pub async fn finish(&mut self, extras: Vec<Vec<u8>>) -> Result<()> {
        self.drain_before(u64::MAX).await?;
        self.leave_dirs(None).await?;
        let mut parents = BTreeSet::new();
        for path in extras {
            let parent = parent_of(&path).to_vec();
            // A parent the source has as another type was recreated, which
            // removed what was beneath it on the replica.
            let is_dir = std::fs::symlink_metadata(abs_path(&self.root, &parent))
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if !is_dir {
                continue;
            }
            self.out.push(Record::Delete { path }).await?;
            self.deleted += 1;
            parents.insert(parent);
        }
        for parent in parents {
            let abs = abs_path(&self.root, &parent);
            let e = standin_builder::scan::stat_entry(&abs, parent, &mut HashMap::new())
                .with_context(|| format!("reading {}", abs.display()))?;
            if let Some(e) = e.filter(|e| e.kind == Kind::Dir) {
                self.out.push(Record::SetMetadata(e)).await?;
            }
        }
        Ok(())
    }

    /// Send the metadata of the open directories that do not contain
    /// `path` (all of them for `None`), deepest first.
    async fn leave_dirs(&mut self, path: Option<&[u8]>) -> Result<()> {
        while let Some((d, _)) = self.dirs.last() {
            if path.is_some_and(|p| contains(&d.path, p)) {
                break;
            }
            let (d, dirty) = self.dirs.pop().expect("checked");
            if dirty {
                self.out.push(Record::SetMetadata(d)).await?;
            }
        }
        Ok(())
    }

    /// The parent's metadata must be sent again (an entry in it was made).
    fn touch_parent(&mut self, path: &[u8]) {
        if path.is_empty() {
            return;
        }
        let parent = parent_of(path);
        if let Some((d, dirty)) = self.dirs.last_mut() {
            if d.path == parent {
                *dirty = true;
            }
        }
    }

    fn note_recreated(&mut self, e: &Entry) {
        if self.track_links {
            let nlink = std::fs::symlink_metadata(abs_path(&self.root, &e.path))
                .map(|m| m.nlink())
                .unwrap_or(1);
            if nlink > 1 {
                self.recreated.insert(e.path.clone());
            }
        }
    }

    async fn emit(&mut self, item: Item) -> Result<()> {
        let Item {
            entry: mut e,
            action,
            stamp,
            istamp,
            ..
        } = item;
        self.leave_dirs(Some(&e.path)).await?;
        let relink = matches!(&action, Action::Keep)
            && e.link.as_ref().is_some_and(|f| self.recreated.contains(f));
        // The content digest (BLAKE3) when this sink reads the file.
        let mut read_sha: Option<[u8; 32]> = None;
        match action {
            Action::Keep if !relink => {}
            Action::Create if whole_file(&e) => {
                self.touch_parent(&e.path);
                self.note_recreated(&e);
                let read = self
                    .ahead
                    .next()
                    .await
                    .context("the mirror's reader thread stopped")?;
                match read.with_context(|| format!("reading {}", e.display_path()))? {
                    Some(r) => {
                        if let Record::File {
                            entry,
                            content_digest,
                            ..
                        } = &r
                        {
                            e.size = entry.size;
                            read_sha = Some(*content_digest);
                        }
                        self.out.push(r).await?;
                    }
                    // Grew past the one-record size since the scan.
                    None => {
                        self.out.push(Record::Create(e.clone())).await?;
                        read_sha = Some(send_whole(&mut self.out, &self.root, &e).await?);
                        self.out.push(Record::SetMetadata(e.clone())).await?;
                    }
                }
            }
            Action::Create | Action::Keep => {
                self.touch_parent(&e.path);
                self.out.push(Record::Create(e.clone())).await?;
                if e.kind == Kind::File && e.link.is_none() {
                    self.note_recreated(&e);
                    read_sha = Some(send_whole(&mut self.out, &self.root, &e).await?);
                    self.out.push(Record::SetMetadata(e.clone())).await?;
                }
            }
            Action::Metadata => self.out.push(Record::SetMetadata(e.clone())).await?,
            Action::Blocks(ref blocks, sha) => {
                let bs = standin_link::message::mirror_block_size(e.size, self.block_size);
                send_blocks(&mut self.out, &self.root, &e, blocks, bs, sha).await?;
                self.out.push(Record::SetMetadata(e.clone())).await?;
            }
        }
        let kept = matches!(action, Action::Keep) && !relink;
        if !kept {
            self.changed += 1;
        }
        if let Some(digest) = self.digest.as_mut() {
            if e.kind == Kind::File && e.link.is_none() {
                let sha = read_sha.context("a file of an empty-replica mirror was not read")?;
                self.files_read += 1;
                e.sha256 = Some(hex::encode(sha));
                let failed = match (stamp, self.fresh.as_mut()) {
                    (Some(st), Some(fresh)) if st.size == e.size => {
                        fresh.add(&e.path, &st, &sha).err()
                    }
                    _ => None,
                };
                if let Some(err) = failed {
                    tracing::warn!("{err:#}; the next mirror hashes every file");
                    self.fresh = None;
                }
            }
            digest.add(&e);
            if let (Some(w), Some(st)) = (self.index.as_mut(), istamp) {
                let file_bytes = if e.kind == Kind::File && e.link.is_none() {
                    e.size
                } else {
                    0
                };
                if let Err(err) = w.add(&e.path, &st, file_bytes, &RootDigest::canonical(&e)) {
                    tracing::warn!("{err:#}; the next mirror compares the whole tree");
                    self.index = None;
                }
            }
        }
        if e.kind == Kind::Dir {
            e.sha256 = None;
            self.dirs.push((e, !kept));
        }
        Ok(())
    }
}

/// Whether directory `dir` contains `path` (strictly beneath it).
fn contains(dir: &[u8], path: &[u8]) -> bool {
    if dir.is_empty() {
        return !path.is_empty();
    }
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn containment_is_by_component() {
        assert!(contains(b"", b"a"));
        assert!(!contains(b"", b""));
        assert!(contains(b"a", b"a/b"));
        assert!(contains(b"a", b"a/b/c"));
        assert!(!contains(b"a", b"ab"));
        assert!(!contains(b"a", b"a"));
        assert!(!contains(b"a/b", b"a"));
    }
}
