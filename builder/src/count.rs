//! Counting a tree ahead of the work on it, so progress can show a percent
//! and an ETA: a scan with the same options as the real one that keeps only
//! its totals.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::entry::Kind;
use crate::progress::NoProgress;
use crate::scan::{ScanOptions, Scanner};

/// What a tree holds: entries, and bytes of regular files (each hard-link
/// group once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub bytes: u64,
}

/// Count `root` as `opts` would scan it. `None` when the root cannot be
/// read or `stop` was set before the end (the work finished first).
pub fn count_tree(root: &Path, opts: &ScanOptions, stop: &AtomicBool) -> Option<Totals> {
    let scanner = Scanner::new(root, opts, &NoProgress).ok()?;
    let mut t = Totals::default();
    for s in scanner.flatten() {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        t.entries += 1;
        if s.entry.kind == Kind::File && s.entry.link.is_none() {
            t.bytes += s.entry.size;
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_entries_and_bytes_once_per_link_group() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), vec![1u8; 1000]).unwrap();
        std::fs::hard_link(d.path().join("a/f"), d.path().join("g")).unwrap();
        std::os::unix::fs::symlink("a/f", d.path().join("s")).unwrap();
        let stop = AtomicBool::new(false);
        let t = count_tree(d.path(), &ScanOptions::default(), &stop).unwrap();
        // root, a, a/f, g, s
        assert_eq!(
            t,
            Totals {
                entries: 5,
                bytes: 1000
            }
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(count_tree(d.path(), &ScanOptions::default(), &stop), None);
    }
}
