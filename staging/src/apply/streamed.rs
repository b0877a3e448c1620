//! Files written in pieces from their start, hashed as the pieces are
//! written.
//!
//! An open mirror sends a file of more than 8 MiB in pieces
//! (`WriteExtent`, in order from offset 0 into the empty file its `Create`
//! made); the last one carries the content digest, which the set's end
//! checks. That check read the whole file back: 50 MB at the very end of
//! a Debian full mirror (27 ms), 285 MiB over the big benchmark tree. The
//! pieces are now hashed as they are written, in order, and the check
//! takes that digest when the file is still as the last piece left it:
//! the same stamp (device, inode, size, mtime, change time) as right after
//! that write, and as many bytes hashed as it holds. This is the trust a
//! whole-file record already gets (hashed in memory before it is written,
//! remembered by its stamp, not read back). A piece out of order, a file
//! that was not empty at offset 0, or any change between two pieces (the
//! stamp before a piece is not the one after the previous piece) drops the
//! file: it is read back as before. Setting its metadata carries it over
//! (the content is unchanged; [`Streams::metadata_set`]).

use std::collections::HashMap;

use standin_builder::changeset::Digest32;
use standin_builder::digest_table::Stamp;
use standin_builder::hash::ContentHasher;

/// Files followed at once (more are dropped: read back as before).
const MOST: usize = 64;

struct Streamed {
    /// Bytes hashed: the offset the next piece must start at.
    next: u64,
    hasher: ContentHasher,
    /// The file's stamp after the last piece (or metadata change).
    stamp: Stamp,
}

/// The files of a target being written in pieces.
#[derive(Default)]
pub(super) struct Streams(HashMap<Vec<u8>, Streamed>);

impl Streams {
    /// `data` was written at `offset` of `path`, whose stamp was `before`
    /// and is `after` now (`None`: not a regular file, or unknown).
    pub(super) fn wrote(
        &mut self,
        path: &[u8],
        offset: u64,
        data: &[u8],
        before: Option<Stamp>,
        after: Option<Stamp>,
    ) {
        let (Some(before), Some(after)) = (before, after) else {
            self.0.remove(path);
            return;
        };
        let fresh = offset == 0 && before.size == 0;
        let follows = self
            .0
            .get(path)
            .is_some_and(|s| s.next == offset && s.stamp == before);
        if fresh && !follows {
            if self.0.len() >= MOST {
                self.0.clear();
            }
            self.0.insert(
                path.to_vec(),
                Streamed {
                    next: 0,
                    hasher: ContentHasher::new(),
                    stamp: before,
                },
            );
        } else if !follows {
            self.0.remove(path);
            return;
        }
        let s = self.0.get_mut(path).expect("inserted or followed");
        s.hasher.update(data);
        s.next += data.len() as u64;
        s.stamp = after;
        if after.size != s.next {
            self.0.remove(path);
        }
    }

    /// The metadata of `path` was set: its stamp moved from `before` to
    /// `after`, its content did not.
    pub(super) fn metadata_set(
        &mut self,
        path: &[u8],
        before: Option<Stamp>,
        after: Option<Stamp>,
    ) {
        if let Some(s) = self.0.get_mut(path) {
            match (before, after) {
                (Some(b), Some(a)) if b == s.stamp => s.stamp = a,
                _ => {
                    self.0.remove(path);
                }
            }
        }
    }

    /// The content digest of `path` if it was hashed as written and the
    /// file, stamped `now`, is still as the last piece left it.
    pub(super) fn take(&mut self, path: &[u8], now: Option<&Stamp>) -> Option<Digest32> {
        let held = now.is_some_and(|now| self.holds(path, now));
        let s = self.0.remove(path)?;
        held.then(|| s.hasher.finalize())
    }

    /// Whether [`Streams::take`] would give the digest of `path` stamped `now`.
    pub(super) fn holds(&self, path: &[u8], now: &Stamp) -> bool {
        self.0
            .get(path)
            .is_some_and(|s| s.stamp == *now && s.stamp.size == s.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(size: u64, ctime_ns: i64) -> Stamp {
        Stamp {
            dev: 1,
            ino: 2,
            size,
            mtime_ns: 3,
            ctime_ns,
        }
    }

    fn digest(b: &[u8]) -> Digest32 {
        standin_builder::hash::content_digest(b)
    }

    #[test]
    fn pieces_in_order_give_the_content_digest_under_the_last_stamp_only() {
        let mut s = Streams::default();
        s.wrote(b"f", 0, b"hello ", Some(stamp(0, 1)), Some(stamp(6, 2)));
        s.wrote(b"f", 6, b"world", Some(stamp(6, 2)), Some(stamp(11, 3)));
        // Its metadata set: carried over.
        s.metadata_set(b"f", Some(stamp(11, 3)), Some(stamp(11, 4)));
        assert_eq!(
            s.take(b"f", Some(&stamp(11, 4))),
            Some(digest(b"hello world"))
        );
        // Taken once.
        assert_eq!(s.take(b"f", Some(&stamp(11, 4))), None);

        // Changed after the last piece (another stamp): read back instead.
        s.wrote(b"g", 0, b"abc", Some(stamp(0, 1)), Some(stamp(3, 2)));
        assert_eq!(s.take(b"g", Some(&stamp(3, 9))), None);
    }

    #[test]
    fn anything_but_pieces_in_order_from_an_empty_file_drops_the_file() {
        let mut s = Streams::default();
        // Not empty at offset 0.
        s.wrote(b"a", 0, b"x", Some(stamp(5, 1)), Some(stamp(5, 2)));
        assert_eq!(s.take(b"a", Some(&stamp(5, 2))), None);
        // A gap.
        s.wrote(b"b", 0, b"xy", Some(stamp(0, 1)), Some(stamp(2, 2)));
        s.wrote(b"b", 3, b"z", Some(stamp(2, 2)), Some(stamp(4, 3)));
        assert_eq!(s.take(b"b", Some(&stamp(4, 3))), None);
        // Changed between two pieces.
        s.wrote(b"c", 0, b"xy", Some(stamp(0, 1)), Some(stamp(2, 2)));
        s.wrote(b"c", 2, b"z", Some(stamp(2, 7)), Some(stamp(3, 8)));
        assert_eq!(s.take(b"c", Some(&stamp(3, 8))), None);
        // Longer than what was hashed (written beyond the piece).
        s.wrote(b"d", 0, b"xy", Some(stamp(0, 1)), Some(stamp(9, 2)));
        assert_eq!(s.take(b"d", Some(&stamp(9, 2))), None);
        // Metadata set from another stamp than the last piece's.
        s.wrote(b"e", 0, b"xy", Some(stamp(0, 1)), Some(stamp(2, 2)));
        s.metadata_set(b"e", Some(stamp(2, 5)), Some(stamp(2, 6)));
        assert_eq!(s.take(b"e", Some(&stamp(2, 6))), None);
        // Starting again at 0 into an emptied file restarts the hash.
        s.wrote(b"f", 0, b"old", Some(stamp(0, 1)), Some(stamp(3, 2)));
        s.wrote(b"f", 0, b"new", Some(stamp(0, 3)), Some(stamp(3, 4)));
        assert_eq!(s.take(b"f", Some(&stamp(3, 4))), Some(digest(b"new")));
    }
}
