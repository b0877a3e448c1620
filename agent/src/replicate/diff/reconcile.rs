//! Directories whose events were named by a stale path: their entries are
//! compared with the index by identity.
//!
//! fanotify names an event by its directory's handle, resolved to a path
//! when the event is read. A directory that moves (once or several times)
//! while its events are queued gives them names it no longer has, or an
//! intermediate name it never had on the target; renames chained within a
//! batch then leave entries the per-path diff cannot place. The rule: for
//! every directory an event was in, its *current* path is found by its
//! handle at diff time; when that differs from a name its events were given
//! (or the index does not hold that directory there), the directory is
//! brought in line by identity, top-down: every ancestor must be the
//! directory the index holds at that path (same inode), else that ancestor
//! is synced (sent whole when the target does not have it); then each entry
//! the index and the directory's listing disagree on (missing, extra, or
//! another inode) is synced. Every record is built against the index, which
//! mirrors the target as of the previous change set plus the records
//! already emitted, so each is valid where the target applies it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;

use anyhow::Result;
use standin_builder::entry::{display_path, path_cmp, Kind};
use tracing::debug;

use super::{ino_of, Locate, Worker};
use crate::capture::{Change, Handle};

const ALL: Change = Change {
    content: true,
    metadata: true,
    moved: false,
};

impl Worker {
    /// Compare, with the index, the entries of every directory of the
    /// batch whose events were named by a path it does not have now.
    /// An entry an event named under a stale name of its directory is
    /// synced under the directory's current path too (with the event's
    /// change: a write into a file whose identity did not change is seen
    /// only there).
    pub(super) fn reconcile_dirs(
        &mut self,
        dirs: &HashMap<Handle, BTreeSet<Vec<u8>>>,
        appeared: &HashSet<Handle>,
        paths: &[(Vec<u8>, Change)],
        loc: &dyn Locate,
    ) -> Result<()> {
        let mut todo: Vec<Vec<u8>> = Vec::new();
        // Stale directory name → its current path.
        let mut renamed: HashMap<&[u8], Vec<u8>> = HashMap::new();
        for (h, named) in dirs {
            let Some((now, ino)) = loc.locate(h) else {
                continue; // removed: its parent's event says so
            };
            if self.excl.excluded(&now) {
                continue;
            }
            let in_place = self
                .index
                .get(&now)
                .is_some_and(|s| s.kind == Kind::Dir && (s.ino == ino || s.unknown));
            let stale = named.iter().any(|n| n != &now);
            for n in named.iter().filter(|n| **n != now) {
                renamed.insert(n, now.clone());
            }
            if stale || (!in_place && !now.is_empty()) {
                todo.push(now);
            }
        }
        for h in appeared {
            if let Some((now, _)) = loc.locate(h) {
                if !self.excl.excluded(&now) {
                    todo.push(now);
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        todo.sort_by(|a, b| path_cmp(a, b));
        todo.dedup();
        debug!(
            dirs = ?todo.iter().map(|d| display_path(d)).collect::<Vec<_>>(),
            "directories whose events were named by another path: comparing their entries"
        );
        for d in todo {
            self.reconcile_dir(&d)?;
        }
        let mut mapped: Vec<(Vec<u8>, Change)> = Vec::new();
        if !renamed.is_empty() {
            for (p, c) in paths {
                let (dir, name) = match p.iter().rposition(|&b| b == b'/') {
                    Some(i) => (&p[..i], &p[i..]),
                    None => (&b""[..], &p[..]),
                };
                if let Some(now) = renamed.get(dir) {
                    let mut np = now.clone();
                    if now.is_empty() {
                        np.extend_from_slice(name.strip_prefix(b"/").unwrap_or(name));
                    } else if dir.is_empty() {
                        np.push(b'/');
                        np.extend_from_slice(name);
                    } else {
                        np.extend_from_slice(name);
                    }
                    if np != *p {
                        mapped.push((np, *c));
                    }
                }
            }
        }
        mapped.sort_by(|a, b| path_cmp(&a.0, &b.0));
        for (p, c) in mapped {
            if self.lstat(&p).is_some() {
                self.sync_path(&p, c, false)?;
            }
        }
        Ok(())
    }

    /// Make `d` and its ancestors the directories the index holds, then
    /// sync the entries of `d` that the index and the listing disagree on.
    fn reconcile_dir(&mut self, d: &[u8]) -> Result<()> {
        // Ancestors top-down, `d` last (the root is always in place).
        let mut chain: Vec<&[u8]> = d
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| &d[..i])
            .collect();
        if !d.is_empty() {
            chain.push(d);
        }
        for a in chain {
            let Some(md) = self.lstat(a) else {
                return Ok(()); // moved on again: the next batch holds it
            };
            if !md.is_dir() {
                return Ok(());
            }
            // A directory seeded unknown (changed around the mirror) is
            // in place: its entries are known one by one.
            let in_place = self
                .index
                .get(a)
                .is_some_and(|s| s.kind == Kind::Dir && (s.ino == ino_of(&md) || s.unknown));
            if !in_place {
                self.sync_path(a, ALL, false)?;
                if !self
                    .index
                    .get(a)
                    .is_some_and(|s| s.kind == Kind::Dir && (s.ino == ino_of(&md) || s.unknown))
                {
                    return Ok(());
                }
                if a == d {
                    return Ok(()); // sent whole, entries included
                }
            }
        }
        let mut differ: Vec<Vec<u8>> = Vec::new();
        let known: BTreeSet<Vec<u8>> = self.index.children(d).into_iter().collect();
        for c in &known {
            // An entry seeded unknown that is still of its kind is left to
            // its own events (resending it here would also split it from
            // its hard links).
            let same = self.index.get(c).zip(self.lstat(c)).is_some_and(|(s, m)| {
                if s.unknown {
                    Kind::of(m.file_type()) == Some(s.kind)
                } else {
                    s.ino == ino_of(&m)
                }
            });
            if !same {
                differ.push(c.clone());
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.abs(d)) {
            for e in rd.flatten() {
                let mut c = d.to_vec();
                if !c.is_empty() {
                    c.push(b'/');
                }
                c.extend_from_slice(e.file_name().as_bytes());
                if !known.contains(&c) {
                    differ.push(c);
                }
            }
        }
        if differ.is_empty() {
            return Ok(());
        }
        differ.sort_by(|a, b| path_cmp(a, b));
        debug!(
            dir = %display_path(d),
            entries = ?differ.iter().map(|p| display_path(p)).collect::<Vec<_>>(),
            "entries the index and the source disagree on"
        );
        for c in differ {
            self.sync_path(&c, ALL, false)?;
        }
        self.dirs.insert(d.to_vec());
        Ok(())
    }
}
