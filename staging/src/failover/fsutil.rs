//! Small file-system helpers for the swap: metadata capture and restore,
//! durable renames, symlink resolution beneath a root.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::durable;

/// The metadata of a directory that the swap restores exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    /// xattr name → value, both in [`standin_builder::bytes`] encoding.
    pub xattrs: BTreeMap<String, String>,
}

/// `lstat`, with a missing path as `None`.
pub fn lstat(p: &Path) -> Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Whether `p` exists (without following a final symlink).
pub fn exists(p: &Path) -> Result<bool> {
    Ok(lstat(p)?.is_some())
}

/// Capture the metadata of `p`.
pub fn meta(p: &Path) -> Result<Meta> {
    let m = std::fs::symlink_metadata(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        atime_ns: m.atime() * 1_000_000_000 + m.atime_nsec(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        xattrs: list_xattrs(p)
            .with_context(|| format!("listing xattrs of {}", p.display()))?
            .into_iter()
            .map(|(k, v)| {
                (
                    standin_builder::bytes::encode(&k),
                    standin_builder::bytes::encode(&v),
                )
            })
            .collect(),
    })
}

fn ts(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

/// Give the directory `p` the metadata `m` (owner, mode, xattrs, times).
pub fn set_meta(p: &Path, m: &Meta) -> Result<()> {
    let ctx = || format!("setting the metadata of {}", p.display());
    std::os::unix::fs::lchown(p, Some(m.uid), Some(m.gid)).with_context(ctx)?;
    rustix::fs::chmod(p, rustix::fs::Mode::from_raw_mode(m.mode)).with_context(ctx)?;
    let have = list_xattrs(p).with_context(ctx)?;
    let want: BTreeMap<Vec<u8>, Vec<u8>> = m
        .xattrs
        .iter()
        .map(|(k, v)| {
            Ok((
                standin_builder::bytes::decode(k).map_err(anyhow::Error::msg)?,
                standin_builder::bytes::decode(v).map_err(anyhow::Error::msg)?,
            ))
        })
        .collect::<Result<_>>()?;
    for k in have.keys() {
        if !want.contains_key(k) {
            match rustix::fs::lremovexattr(p, OsStr::from_bytes(k)) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e).with_context(ctx),
            }
        }
    }
    for (k, v) in &want {
        if have.get(k) != Some(v) {
            rustix::fs::lsetxattr(p, OsStr::from_bytes(k), v, XattrFlags::empty())
                .with_context(ctx)?;
        }
    }
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: ts(m.atime_ns),
            last_modification: ts(m.mtime_ns),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(ctx)?;
    Ok(())
}

/// All xattrs of `p` (not following a final symlink).
pub fn list_xattrs(p: &Path) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let size = match rustix::fs::llistxattr_query(p) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(p, &mut names[..])?;
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let len = rustix::fs::lgetxattr_query(p, OsStr::from_bytes(name))?;
        let mut v = vec![0u8; len];
        let got = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..])?;
        v.truncate(got);
        out.insert(name.to_vec(), v);
    }
    Ok(out)
}

/// Rename `from` to `to` (which must not exist) and make it durable.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    let ctx = || format!("renaming {} to {}", from.display(), to.display());
    match rustix::fs::renameat_with(CWD, from, CWD, to, rustix::fs::RenameFlags::NOREPLACE) {
        Ok(()) => {}
        // A filesystem without RENAME_NOREPLACE: check, then rename.
        Err(Errno::INVAL) if !to.exists() => std::fs::rename(from, to).with_context(ctx)?,
        Err(e) => return Err(e).with_context(ctx),
    }
    let fp = from.parent().unwrap_or(Path::new("/"));
    let tp = to.parent().unwrap_or(Path::new("/"));
    durable::sync_dir(fp).with_context(|| format!("syncing {}", fp.display()))?;
    if fp != tp {
        durable::sync_dir(tp).with_context(|| format!("syncing {}", tp.display()))?;
    }
    Ok(())
}

/// Join a relative raw-byte path onto a base.
pub fn join(base: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(OsStr::from_bytes(rel))
    }
}

/// Parent of a relative raw-byte path (`b""` for a top-level name).
pub fn parent(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}

/// `a/b` from `a` and `b`.
pub fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut v = dir.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// Ancestors of a relative path, outermost first, without the path itself
/// (`a/b/c` → `a`, `a/b`).
pub fn ancestors(rel: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, &b) in rel.iter().enumerate() {
        if b == b'/' {
            out.push(rel[..i].to_vec());
        }
    }
    out
}

/// Resolve the parent of `rel` inside `root`, following symlinks as the
/// system rooted at `root` would (absolute targets restart at `root`, `..`
/// stops at `root`), and append the last name. Returns the real relative
/// location of `rel` in that tree, whether it exists or not.
pub fn resolve_beneath(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let mut todo: Vec<Vec<u8>> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == b"." {
            continue;
        }
        if c == b".." {
            cur.pop();
            continue;
        }
        let last = todo.is_empty();
        cur.push(c);
        if last {
            break;
        }
        let p = join(root, &cur.join(&b'/'));
        if let Some(m) = lstat(&p)? {
            if m.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    anyhow::bail!("too many symlinks resolving {rel} in {}", root.display());
                }
                let t =
                    std::fs::read_link(&p).with_context(|| format!("reading {}", p.display()))?;
                let t = t.as_os_str().as_bytes().to_vec();
                cur.pop();
                if t.starts_with(b"/") {
                    cur.clear();
                }
                for comp in t.split(|&b| b == b'/').rev().filter(|c| !c.is_empty()) {
                    todo.push(comp.to_vec());
                }
            }
        }
    }
    Ok(cur.join(&b'/'))
}

/// Give any entry (file, symlink, device) the metadata `m`; symlinks keep their mode.
pub fn set_entry_meta(p: &Path, m: &Meta, is_symlink: bool) -> Result<()> {
    if !is_symlink {
        return set_meta(p, m);
    }
    let ctx = || format!("setting the metadata of {}", p.display());
    std::os::unix::fs::lchown(p, Some(m.uid), Some(m.gid)).with_context(ctx)?;
    for (k, v) in &m.xattrs {
        let k = standin_builder::bytes::decode(k).map_err(anyhow::Error::msg)?;
        let v = standin_builder::bytes::decode(v).map_err(anyhow::Error::msg)?;
        rustix::fs::lsetxattr(p, OsStr::from_bytes(&k), &v, XattrFlags::empty())
            .with_context(ctx)?;
    }
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: ts(m.atime_ns),
            last_modification: ts(m.mtime_ns),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_usrmerge_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib/modules")).unwrap();
        std::os::unix::fs::symlink("usr/lib", d.path().join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/../lib", d.path().join("l2")).unwrap();
        assert_eq!(
            resolve_beneath(d.path(), "lib/modules").unwrap(),
            b"usr/lib/modules"
        );
        assert_eq!(
            resolve_beneath(d.path(), "l2/modules").unwrap(),
            b"usr/lib/modules"
        );
        assert_eq!(resolve_beneath(d.path(), "boot/efi").unwrap(), b"boot/efi");
        assert_eq!(resolve_beneath(d.path(), "lib").unwrap(), b"lib");
    }

    #[test]
    fn path_pieces() {
        assert_eq!(ancestors(b"a/b/c"), vec![b"a".to_vec(), b"a/b".to_vec()]);
        assert_eq!(parent(b"a/b"), b"a");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(child(b"", b"x"), b"x");
    }
}
