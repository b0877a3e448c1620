//! The index's big files (`mirror-index.big` beside `mirror-index.bin`):
//! the regular files of at least [`BIG`] bytes (one link each) the index
//! holds, with their stamps, so that a difference mirror can hash those
//! that changed before its walk reaches them ([`super::super::lean`]'s
//! prehash). Only ever a hint: a list that is missing, corrupt, or written
//! with another index (its trailer names the index's mirror and root
//! digest) is not used, and a file's hash is used only under the stamp the
//! walk then finds.
//!
//! ```text
//! "SIMB" | version u8 = 1 | 3 reserved | tree-id length u16 | tree id
//! | records in strictly increasing tree order:
//!   shared u32 | suffix length u32 | suffix
//!   | dev u64 | ino u64 | size u64 | mtime_ns i64 | ctime_ns i64
//! | end: shared = 0xFFFF_FFFF | count u64
//! | mirror id, root digest (each u16 length + bytes)
//! | BLAKE3-256 of everything before
//! ```

use std::io::BufReader;
use std::path::Path;

use anyhow::Result;
use standin_builder::entry::path_cmp;
use standin_builder::record_stream::{Framing, RecordReader, RecordWriter};

use super::{Base, EntryStamp};

const FRAMING: Framing = Framing {
    magic: b"SIMB",
    version: 1,
    what: "mirror index's big files",
};

/// The list's file name, beside the index.
pub const FILE: &str = "mirror-index.big";

/// Files at least this big are listed.
pub const BIG: u64 = 1 << 20;

/// At most this many files are listed (the largest).
pub const MOST: usize = 4096;

/// A listed file: path and stamp.
pub type BigFile = (Vec<u8>, EntryStamp);

/// Collects the big files of an index being written.
#[derive(Default)]
pub struct Collect {
    files: Vec<BigFile>,
}

impl Collect {
    /// Note an entry written to the index (in tree order).
    pub fn add(&mut self, path: &[u8], stamp: &EntryStamp, file_bytes: u64) {
        if file_bytes < BIG || stamp.multi || stamp.dir || stamp.size != file_bytes {
            return;
        }
        self.files.push((path.to_vec(), *stamp));
        if self.files.len() >= 2 * MOST {
            self.keep_largest();
        }
    }

    /// Keep the [`MOST`] largest, in tree order.
    fn keep_largest(&mut self) {
        if self.files.len() > MOST {
            self.files
                .select_nth_unstable_by(MOST - 1, |a, b| b.1.size.cmp(&a.1.size));
            self.files.truncate(MOST);
        }
        self.files.sort_by(|a, b| path_cmp(&a.0, &b.0));
    }

    /// Write the list beside the index at `index` for `base`. Not synced
    /// (a hint, checked whole when read).
    pub fn commit(mut self, index: &Path, tree: &str, base: &Base) -> Result<()> {
        self.keep_largest();
        let mut w = RecordWriter::create(&index.with_file_name(FILE), &FRAMING, tree)?;
        let mut b = Vec::with_capacity(256);
        for (path, s) in &self.files {
            if !w.begin(path, &mut b) {
                continue;
            }
            super::put_stamp(&mut b, s);
            w.put(path, &b)?;
        }
        w.commit_unsynced(&names(base))
    }
}

/// The trailer: what ties the list to its index.
fn names(base: &Base) -> Vec<u8> {
    let mut b = Vec::new();
    super::put_strings(&mut b, [&base.mirror_id, &base.root_digest]);
    b
}

/// The big files listed beside the index at `index` for `base`, in tree
/// order; `Err(why)` when there is no usable list.
pub fn read(index: &Path, tree: &str, base: &Base) -> Result<Vec<BigFile>, String> {
    let path = index.with_file_name(FILE);
    let want = names(base);
    let tail = standin_builder::record_stream::verify(&path, &FRAMING, tree, 32, want.len())?
        .ok_or("none written")?;
    if tail != want {
        return Err("written with another index".into());
    }
    let f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let mut r = RecordReader::new(BufReader::with_capacity(1 << 16, f));
    r.header(&FRAMING, tree)?;
    let mut out = Vec::new();
    while let Some(p) = r.next_path()? {
        let stamp = super::read_stamp(&mut r)?;
        r.done(&p);
        if out.len() >= MOST {
            return Err("more files than a list holds".into());
        }
        out.push((p, stamp));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64, size: u64) -> EntryStamp {
        EntryStamp {
            dev: 1,
            ino,
            size,
            mtime_ns: 5,
            ctime_ns: 6,
            multi: false,
            dir: false,
        }
    }

    fn base(root: &str) -> Base {
        Base {
            mirror_id: "m".into(),
            root_digest: root.into(),
            last_seq: 3,
            target: "t".into(),
        }
    }

    #[test]
    fn the_largest_files_come_back_in_tree_order_for_their_own_index_only() {
        let d = tempfile::tempdir().unwrap();
        let index = d.path().join(super::super::FILE);
        let mut c = Collect::default();
        // Small files, directories and hard links are not listed.
        c.add(b"a/small", &stamp(1, 10), 10);
        c.add(
            b"a/linked",
            &EntryStamp {
                multi: true,
                ..stamp(2, BIG)
            },
            0,
        );
        let n = 2 * MOST + 10;
        for i in 0..n {
            let size = BIG + i as u64;
            c.add(
                format!("b/{i:06}").as_bytes(),
                &stamp(10 + i as u64, size),
                size,
            );
        }
        c.commit(&index, "tree", &base("r1")).unwrap();
        let got = read(&index, "tree", &base("r1")).unwrap();
        assert_eq!(got.len(), MOST);
        // The largest are the last ones added; the list is in tree order.
        let want: Vec<Vec<u8>> = (n - MOST..n)
            .map(|i| format!("b/{i:06}").into_bytes())
            .collect();
        assert_eq!(got.iter().map(|f| f.0.clone()).collect::<Vec<_>>(), want);
        assert_eq!(
            got[0].1,
            stamp(10 + (n - MOST) as u64, BIG + (n - MOST) as u64)
        );
        // Another index (root digest), another tree, corruption: not used.
        assert!(read(&index, "tree", &base("r2"))
            .unwrap_err()
            .contains("another index"));
        assert!(read(&index, "other", &base("r1")).is_err());
        let p = index.with_file_name(FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&index, "tree", &base("r1")).is_err());
        std::fs::remove_file(&p).unwrap();
        assert!(read(&index, "tree", &base("r1")).is_err());
    }
}
