//! One entry of a system tree: the unit of manifests, archives, mirrors and
//! change sets. Every crate that talks about files uses this type.
//!
//! Paths are raw bytes relative to the tree's root, without a leading `/`;
//! the root directory itself is the empty path. Entries of a tree are ordered
//! by [`path_cmp`]: component by component, each compared as bytes (a
//! depth-first walk with children sorted by name), so a parent always comes
//! before its children.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bytes::{serde_bytes, serde_opt_bytes};

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
}

impl Kind {
    /// The kind of a file whose `st_mode` is `mode` (its `S_IFMT` bits);
    /// `None` for sockets (left out of trees). The one mapping from file
    /// types to kinds: [`Kind::of`] goes through it too.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        use rustix::fs::FileType as T;
        Some(match T::from_raw_mode(mode) {
            T::RegularFile => Kind::File,
            T::Directory => Kind::Dir,
            T::Symlink => Kind::Symlink,
            T::Fifo => Kind::Fifo,
            T::CharacterDevice => Kind::Char,
            T::BlockDevice => Kind::Block,
            _ => return None,
        })
    }

    /// The kind of a file of type `ft` (std's view of the same `S_IFMT`
    /// bits); `None` for sockets.
    pub fn of(ft: std::fs::FileType) -> Option<Kind> {
        use rustix::fs::FileType as T;
        use std::os::unix::fs::FileTypeExt;
        let t = if ft.is_file() {
            T::RegularFile
        } else if ft.is_dir() {
            T::Directory
        } else if ft.is_symlink() {
            T::Symlink
        } else if ft.is_fifo() {
            T::Fifo
        } else if ft.is_char_device() {
            T::CharacterDevice
        } else if ft.is_block_device() {
            T::BlockDevice
        } else {
            return None;
        };
        Kind::from_mode(t.as_raw_mode())
    }
}

/// Metadata (and the content digest) of one path in a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the root, raw bytes; `""` is the root itself.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in nanoseconds since the epoch (negative before 1970).
    pub mtime_ns: i64,
    /// Size in bytes: file length for files, target length for symlinks, 0 otherwise.
    pub size: u64,
    /// Extended attributes, name → value, including `security.capability`
    /// and `system.posix_acl_access`/`_default`, as raw bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<Xattr, Xattr>,
    /// Symlink target, raw bytes.
    #[serde(
        default,
        with = "serde_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub target: Option<Vec<u8>>,
    /// For the second and later members of a hardlink group: the path of the
    /// group's first member (in tree order). The first member has `None`.
    #[serde(
        default,
        with = "serde_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub link: Option<Vec<u8>>,
    /// Device numbers `(major, minor)` of block and character devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<(u32, u32)>,
    /// Data extents `(offset, length)` of a sparse regular file; `None` when
    /// the file has no holes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<Vec<(u64, u64)>>,
    /// Digest of a regular file's content, lowercase hex: its sha256 in
    /// a manifest or archive (the JSON field's name), the link's content
    /// digest (BLAKE3-256, `hash::content_digest`) in everything a mirror
    /// or replication computes, sends or keeps (mirror scans, mirror
    /// batches, change-set entries, the agent's index, the target's
    /// ledger), so the root digest of a mirror is over BLAKE3 digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Raw bytes of an xattr name or value, encoded with [`crate::bytes`] in JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr(pub Vec<u8>);

impl Serialize for Xattr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::bytes::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Xattr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes::deserialize(d).map(Xattr)
    }
}

impl Entry {
    /// The path for messages: lossy UTF-8, `/` for the root.
    pub fn display_path(&self) -> String {
        display_path(&self.path)
    }
}

/// A raw relative path for messages: lossy UTF-8 with escapes, `/` for the root.
pub fn display_path(path: &[u8]) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        format!("/{}", crate::bytes::encode(path))
    }
}

/// Tree order: compare paths component by component, each as bytes.
///
/// Decided at the first byte where the paths differ (found 8 bytes at a
/// time) when that is inside a component on both sides; paths with empty
/// components there (a leading, doubled or trailing `/`) are compared
/// component by component ([`path_cmp_slow`]), with the same answers.
pub fn path_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let k = common_prefix(a, b);
    // A component may end at `k` only if one started before it.
    let inside = k > 0 && a[k - 1] != b'/';
    match (a.get(k), b.get(k)) {
        (None, None) => Ordering::Equal,
        // One is the other plus more: more components (or a longer last
        // one) unless the rest is only slashes.
        (None, Some(_)) if b[k..].iter().any(|&c| c != b'/') => Ordering::Less,
        (Some(_), None) if a[k..].iter().any(|&c| c != b'/') => Ordering::Greater,
        // A component ends on one side only: it is a prefix of the other's.
        (Some(b'/'), Some(_)) if inside => Ordering::Less,
        (Some(_), Some(b'/')) if inside => Ordering::Greater,
        (Some(&x), Some(&y)) if x != b'/' && y != b'/' => x.cmp(&y),
        _ => path_cmp_slow(a, b),
    }
}

/// How many leading bytes `a` and `b` share.
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// [`path_cmp`] by splitting both paths into their non-empty components.
fn path_cmp_slow(a: &[u8], b: &[u8]) -> Ordering {
    let mut ai = a.split(|&c| c == b'/').filter(|c| !c.is_empty());
    let mut bi = b.split(|&c| c == b'/').filter(|c| !c.is_empty());
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => continue,
                other => return other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of paths over `a`, `b`, `/` up to 6 bytes (empty,
    /// leading, doubled and trailing slashes included): the fast compare
    /// answers as the component-by-component one; and `common_prefix`
    /// across its 8-byte steps.
    #[test]
    fn path_cmp_agrees_with_the_component_compare_on_all_short_paths() {
        let mut all: Vec<Vec<u8>> = vec![Vec::new()];
        let mut level = vec![Vec::new()];
        for _ in 0..6 {
            level = level
                .iter()
                .flat_map(|p: &Vec<u8>| {
                    b"ab/".iter().map(move |&c| {
                        let mut q = p.clone();
                        q.push(c);
                        q
                    })
                })
                .collect();
            all.extend(level.iter().cloned());
        }
        for a in &all {
            for b in &all {
                assert_eq!(
                    path_cmp(a, b),
                    path_cmp_slow(a, b),
                    "{:?} vs {:?}",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b)
                );
            }
        }
        let long = b"usr/share/doc/packages/very-long-name/file.txt".to_vec();
        for i in 0..=long.len() {
            let mut other = long.clone();
            if i < long.len() {
                other[i] ^= 1;
            }
            assert_eq!(common_prefix(&long, &other), i);
            assert_eq!(common_prefix(&long[..i], &long), i);
            assert_eq!(path_cmp(&long, &other), path_cmp_slow(&long, &other));
        }
    }

    #[test]
    fn kind_of_std_type_and_of_raw_mode_agree() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", p.join("l")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p.join("p"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(p.join("s")).unwrap();
        let cases = [
            (p.join("f"), Some(Kind::File)),
            (p.to_path_buf(), Some(Kind::Dir)),
            (p.join("l"), Some(Kind::Symlink)),
            (p.join("p"), Some(Kind::Fifo)),
            ("/dev/null".into(), Some(Kind::Char)),
            (p.join("s"), None),
        ];
        for (path, want) in cases {
            let md = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(Kind::of(md.file_type()), want, "{}", path.display());
            assert_eq!(Kind::from_mode(md.mode()), want, "{}", path.display());
        }
        let block = std::fs::read_dir("/dev")
            .unwrap()
            .flatten()
            .find(|e| e.file_type().map(|t| t.is_block_device()).unwrap_or(false));
        if let Some(b) = block {
            let md = std::fs::symlink_metadata(b.path()).unwrap();
            assert_eq!(Kind::of(md.file_type()), Some(Kind::Block));
            assert_eq!(Kind::from_mode(md.mode()), Some(Kind::Block));
        }
        assert_eq!(Kind::from_mode(0o060644), Some(Kind::Block));
    }

    #[test]
    fn parents_sort_before_children() {
        let mut v: Vec<&[u8]> = vec![b"a.txt", b"a/b", b"a", b"", b"a/b/c", b"b"];
        v.sort_by(|x, y| path_cmp(x, y));
        assert_eq!(v, vec![&b""[..], b"a", b"a/b", b"a/b/c", b"a.txt", b"b"]);
    }

    #[test]
    fn entry_json_round_trips_odd_bytes() {
        let mut xattrs = BTreeMap::new();
        xattrs.insert(Xattr(b"user.k".to_vec()), Xattr(vec![0, 1, 0xff]));
        let e = Entry {
            path: b"dir/odd\nname\xff".to_vec(),
            kind: Kind::File,
            mode: 0o4755,
            uid: 0,
            gid: 0,
            mtime_ns: -1_000_000_123,
            size: 3,
            xattrs,
            target: None,
            link: None,
            rdev: None,
            sparse: Some(vec![(0, 4096)]),
            sha256: Some("00".repeat(32)),
        };
        let json = serde_json::to_string(&e).unwrap();
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
