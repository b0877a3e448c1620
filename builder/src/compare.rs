//! Compare a stream of entries (a re-scanned tree, an archive) with the
//! entries a manifest expects, in tree order, and name every difference.

use std::cmp::Ordering;

use anyhow::Result;
use serde::Serialize;

use crate::entry::{path_cmp, Entry};

/// How many differences are kept with full text (all are counted).
pub const MAX_LISTED: usize = 200;

/// Differences found between expected and actual entries.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Differences {
    /// One line per difference: `/path: what differs`.
    pub listed: Vec<String>,
    /// Total number of differences (may exceed `listed`).
    pub count: u64,
}

impl Differences {
    /// Record a difference.
    pub fn add(&mut self, line: String) {
        self.count += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(line);
        }
    }
    /// True when nothing differed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Describe how `got` differs from `want` (same path), field by field.
pub fn entry_diff(want: &Entry, got: &Entry) -> Vec<String> {
    let mut d = Vec::new();
    if want.kind != got.kind {
        d.push(format!(
            "type differs (expected {:?}, found {:?})",
            want.kind, got.kind
        ));
    }
    if want.mode != got.mode {
        d.push(format!(
            "mode differs (expected {:04o}, found {:04o})",
            want.mode, got.mode
        ));
    }
    if (want.uid, want.gid) != (got.uid, got.gid) {
        d.push(format!(
            "owner differs (expected {}:{}, found {}:{})",
            want.uid, want.gid, got.uid, got.gid
        ));
    }
    if want.mtime_ns != got.mtime_ns {
        d.push(format!(
            "mtime differs (expected {} ns, found {} ns)",
            want.mtime_ns, got.mtime_ns
        ));
    }
    if want.size != got.size {
        d.push(format!(
            "size differs (expected {}, found {})",
            want.size, got.size
        ));
    }
    if want.xattrs != got.xattrs {
        let names = |e: &Entry| {
            e.xattrs
                .keys()
                .map(|k| crate::bytes::encode(&k.0))
                .collect::<Vec<_>>()
                .join(",")
        };
        d.push(format!(
            "xattrs differ (expected [{}], found [{}])",
            names(want),
            names(got)
        ));
    }
    if want.target != got.target {
        d.push("symlink target differs".into());
    }
    if want.link != got.link {
        d.push("hardlink group differs".into());
    }
    if want.rdev != got.rdev {
        d.push(format!(
            "device numbers differ (expected {:?}, found {:?})",
            want.rdev, got.rdev
        ));
    }
    if want.sparse != got.sparse {
        d.push("sparse extents differ".into());
    }
    if want.sha256 != got.sha256 {
        d.push(format!(
            "content differs (sha256 expected {}, found {})",
            want.sha256.as_deref().unwrap_or("-"),
            got.sha256.as_deref().unwrap_or("-")
        ));
    }
    d
}

/// Merge-join of expected entries (pulled from an iterator, e.g. a
/// [`crate::manifest::ManifestReader`]) with actual entries pushed in tree order.
pub struct Comparer<I: Iterator<Item = Result<Entry>>> {
    expected: I,
    peeked: Option<Entry>,
    /// Differences found so far.
    pub diffs: Differences,
}

impl<I: Iterator<Item = Result<Entry>>> Comparer<I> {
    /// Compare against `expected`.
    pub fn new(expected: I) -> Self {
        Self {
            expected,
            peeked: None,
            diffs: Differences::default(),
        }
    }

    fn peek(&mut self) -> Result<Option<&Entry>> {
        if self.peeked.is_none() {
            self.peeked = self.expected.next().transpose()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// The expected entry for `path`, reporting expected entries before it
    /// as missing; `None` if `path` is not expected (reported as extra).
    pub fn expect(&mut self, path: &[u8]) -> Result<Option<Entry>> {
        loop {
            let ord = match self.peek()? {
                None => Ordering::Greater,
                Some(w) => path_cmp(&w.path, path),
            };
            match ord {
                Ordering::Less => {
                    let w = self.peeked.take().expect("peeked");
                    self.diffs.add(format!("{}: missing", w.display_path()));
                }
                Ordering::Equal => return Ok(self.peeked.take()),
                Ordering::Greater => {
                    self.diffs.add(format!(
                        "{}: not in the manifest",
                        crate::entry::display_path(path)
                    ));
                    return Ok(None);
                }
            }
        }
    }

    /// Compare one actual entry.
    pub fn push(&mut self, got: &Entry) -> Result<()> {
        if let Some(want) = self.expect(&got.path)? {
            for d in entry_diff(&want, got) {
                self.diffs.add(format!("{}: {d}", got.display_path()));
            }
        }
        Ok(())
    }

    /// Report remaining expected entries as missing; return the differences.
    /// Errors from the expected stream (an edited manifest) come out here.
    pub fn finish(self) -> Result<Differences> {
        let (diffs, res) = self.finish_all();
        res.map(|_| diffs)
    }

    /// Like [`finish`](Self::finish), but keeps the differences found even
    /// when the expected stream fails at its end.
    pub fn finish_all(mut self) -> (Differences, Result<()>) {
        loop {
            match self.peek() {
                Ok(Some(w)) => {
                    let w = w.clone();
                    self.peeked = None;
                    self.diffs.add(format!("{}: missing", w.display_path()));
                }
                Ok(None) => return (self.diffs, Ok(())),
                Err(e) => return (self.diffs, Err(e)),
            }
        }
    }
}
