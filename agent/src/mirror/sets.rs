//! Change sets of a mirror: [`SetWriter`] cuts records into sets with flow
//! control, and the helpers that read a file's content into records
//! (whole in extents, or only the blocks that differ).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use standin_builder::changeset::{Record, SetEncoder};
use standin_builder::entry::Entry;
use standin_builder::progress::Progress;

use super::files::Pool;
use super::{abs_path, Action};
use crate::bwlimit::Bucket;
use crate::link::Sender;

/// Below the 16 MiB frame limit with room for the records' framing.
const SET_BYTES: usize = 8 << 20;
/// The first set's size; each next one doubles up to [`SET_BYTES`]. The
/// target applies a set only once it holds all of it, so an 8 MiB first
/// set kept it idle while the agent read, hashed, encrypted and sent
/// those 8 MiB (~100 ms of a 0.8 s full mirror of a Debian root); a small
/// first set starts its apply after a few milliseconds.
const FIRST_SET_BYTES: usize = 256 << 10;
const SET_RECORDS: usize = 20_000;
const EXTENT: u64 = 4 << 20;
/// Change-set bytes queued (sent, not yet acknowledged) before the mirror
/// waits: enough for the target to apply one set while it reads the next.
const QUEUE_HIGH: u64 = 16 << 20;

/// Which of the source file's blocks differ from the target's; the file's
/// content digest (BLAKE3; one read for both: builder's `hash_file_blocks`).
pub(super) fn diff_blocks(abs: &Path, bs: u64, target: &[[u8; 16]]) -> Result<Action> {
    let (sha, blocks) = standin_builder::hash::hash_file_blocks(abs, bs)?;
    let differ = blocks
        .iter()
        .enumerate()
        .filter(|(i, b)| target.get(*i).map(<[u8; 16]>::as_slice) != Some(&b[..16]))
        .map(|(i, _)| i as u64)
        .collect();
    Ok(Action::Blocks(differ, sha))
}

/// Cuts records into change sets and hands them to the sender, with flow
/// control (bounded queue) and the bandwidth limit. Records are encoded
/// into the set's buffer as they come, and the buffers of their data go
/// back to [`SetWriter::pool`] for the next files.
pub(super) struct SetWriter<'a> {
    pub sender: &'a Sender,
    /// The set being filled (its buffer is one of an acknowledged set).
    enc: SetEncoder,
    pub bucket: Bucket,
    /// Sequence number of the last set handed to the sender.
    pub last_seq: u64,
    /// File data put into change sets.
    pub data: u64,
    pub progress: Arc<dyn Progress>,
    /// Data buffers of encoded records, for the reader to fill again.
    pub pool: Arc<Pool>,
    /// The size at which the set being filled is cut (ramps up from
    /// [`FIRST_SET_BYTES`] to [`SET_BYTES`]).
    limit: usize,
}

impl<'a> SetWriter<'a> {
    /// A writer whose first set gets the number after `last_seq`.
    pub fn new(
        sender: &'a Sender,
        bucket: Bucket,
        last_seq: u64,
        progress: Arc<dyn Progress>,
    ) -> SetWriter<'a> {
        sender.keep_buffers(true);
        SetWriter {
            enc: SetEncoder::with_buffer(set_buffer(sender)),
            sender,
            bucket,
            last_seq,
            data: 0,
            progress,
            pool: Arc::new(Pool::default()),
            limit: FIRST_SET_BYTES,
        }
    }

    pub async fn push(&mut self, r: Record) -> Result<()> {
        let len = match &r {
            Record::WriteExtent { data, .. } => data.len() + 64,
            Record::File { entry: e, data, .. } => {
                data.len()
                    + 200
                    + e.path.len()
                    + e.xattrs
                        .iter()
                        .map(|(k, v)| k.0.len() + v.0.len() + 8)
                        .sum::<usize>()
            }
            Record::Create(e) | Record::SetMetadata(e) => {
                160 + 2 * e.path.len()
                    + e.target.as_ref().map_or(0, |t| t.len())
                    + e.xattrs
                        .iter()
                        .map(|(k, v)| k.0.len() + v.0.len() + 8)
                        .sum::<usize>()
            }
            _ => 96,
        };
        // Bytes of file data, and entries created (the bar's "files").
        match &r {
            Record::File { data, .. } => {
                self.data += data.len() as u64;
                self.progress.advance(data.len() as u64, 1);
            }
            Record::WriteExtent { data, .. } => {
                self.data += data.len() as u64;
                self.progress.advance(data.len() as u64, 0);
            }
            Record::Create(_) => self.progress.advance(0, 1),
            _ => {}
        }
        if !self.enc.is_empty()
            && (self.enc.len() + len > self.limit || self.enc.records() >= SET_RECORDS)
        {
            self.flush().await?;
        }
        self.enc
            .push(&r)
            .with_context(|| format!("encoding a {} record", r.name()))?;
        match r {
            Record::File { data, .. } | Record::WriteExtent { data, .. } => self.pool.give(data),
            _ => {}
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        if self.enc.is_empty() {
            return Ok(());
        }
        loop {
            let st = self.sender.stats();
            if st.queue_bytes < QUEUE_HIGH || st.queue_sets == 0 {
                break;
            }
            self.sender.wait_acked(st.last_acked + 1).await?;
        }
        self.bucket.take(self.enc.len() as u64).await;
        let next = SetEncoder::with_buffer(set_buffer(self.sender));
        let enc = std::mem::replace(&mut self.enc, next);
        self.limit = (self.limit * 2).min(SET_BYTES);
        self.last_seq = self
            .sender
            .send_encoded(enc)
            .map_err(|e| anyhow::anyhow!("queueing a mirror change set: {e}"))?;
        Ok(())
    }
}

impl Drop for SetWriter<'_> {
    fn drop(&mut self) {
        // Replication's sets are small: no 8 MiB buffers kept for them.
        self.sender.keep_buffers(false);
    }
}

/// A buffer for a mirror's set: an acknowledged set's, or a new one with
/// room for a whole set (no doubling and copying while it fills).
fn set_buffer(sender: &Sender) -> Vec<u8> {
    let mut b = sender.buffer();
    b.reserve(SET_BYTES + (256 << 10));
    b
}

/// `len` bytes of `f` at `off` (fewer at its end), into a buffer from
/// `pool`: read into its spare room, not zeroed first.
fn read_at(f: &File, off: u64, len: u64, pool: &Pool) -> std::io::Result<Vec<u8>> {
    let mut buf = pool.take(len as usize);
    let mut r = f;
    r.seek(SeekFrom::Start(off))?;
    r.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whole content of a (possibly sparse) file: its data extents in pieces;
/// the last piece carries the content digest (BLAKE3) of what was sent, or, when the file
/// ends in a hole, a Truncate to its size does.
pub(super) async fn send_whole(
    out: &mut SetWriter<'_>,
    root: &Path,
    e: &Entry,
) -> Result<[u8; 32]> {
    let abs = abs_path(root, &e.path);
    let f = File::open(&abs).with_context(|| format!("opening {}", abs.display()))?;
    let extents = e.sparse.clone().unwrap_or_else(|| vec![(0, e.size)]);
    let mut h = standin_builder::hash::ContentHasher::new();
    let mut pos = 0u64;
    let mut pending: Option<(u64, Vec<u8>)> = None;
    for (off, len) in extents {
        standin_builder::hash::hash_zeros(&mut h, off.saturating_sub(pos));
        let mut o = off;
        while o < off + len {
            let n = EXTENT.min(off + len - o);
            let data = read_at(&f, o, n, &out.pool)
                .with_context(|| format!("reading {}", abs.display()))?;
            if data.is_empty() {
                break;
            }
            h.update(&data);
            if let Some((at, d)) = pending.take() {
                out.push(Record::WriteExtent {
                    path: e.path.clone(),
                    offset: at,
                    data: d,
                    content_digest: None,
                })
                .await?;
            }
            let at = o;
            o += data.len() as u64;
            pending = Some((at, data));
        }
        pos = o;
    }
    standin_builder::hash::hash_zeros(&mut h, e.size.saturating_sub(pos));
    let sha: [u8; 32] = h.finalize();
    match pending {
        Some((at, d)) if pos == e.size => {
            out.push(Record::WriteExtent {
                path: e.path.clone(),
                offset: at,
                data: d,
                content_digest: Some(sha),
            })
            .await?
        }
        last => {
            if let Some((at, d)) = last {
                out.push(Record::WriteExtent {
                    path: e.path.clone(),
                    offset: at,
                    data: d,
                    content_digest: None,
                })
                .await?;
            }
            out.push(Record::Truncate {
                path: e.path.clone(),
                size: e.size,
                content_digest: Some(sha),
            })
            .await?
        }
    }
    Ok(sha)
}

/// Only the differing blocks, then a Truncate to the source's size with the
/// content digest of the whole content.
pub(super) async fn send_blocks(
    out: &mut SetWriter<'_>,
    root: &Path,
    e: &Entry,
    blocks: &[u64],
    bs: u64,
    sha: [u8; 32],
) -> Result<()> {
    let abs = abs_path(root, &e.path);
    let f = File::open(&abs).with_context(|| format!("opening {}", abs.display()))?;
    let mut i = 0;
    while i < blocks.len() {
        // Coalesce runs of adjacent blocks into one extent.
        let mut j = i + 1;
        while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 && (j - i) as u64 * bs < EXTENT {
            j += 1;
        }
        let off = blocks[i] * bs;
        let data = read_at(&f, off, (j - i) as u64 * bs, &out.pool)
            .with_context(|| format!("reading {}", abs.display()))?;
        if !data.is_empty() {
            out.push(Record::WriteExtent {
                path: e.path.clone(),
                offset: off,
                data,
                content_digest: None,
            })
            .await?;
        }
        i = j;
    }
    out.push(Record::Truncate {
        path: e.path.clone(),
        size: e.size,
        content_digest: Some(sha),
    })
    .await
}
