//! Test helpers for image tests, independent of standin's own code: a
//! corpus generator with every kind of file and metadata, and a tree
//! comparison based on lstat, xattrs, sha256 of content, inode grouping and
//! SEEK_DATA/SEEK_HOLE.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{AtFlags, Timespec, Timestamps, XattrFlags, CWD};

use crate::common::{require_root, require_tool, run_ok};

fn p(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("setting mtime of {}: {e}", path.display()));
}

fn write(root: &Path, rel: &[u8], data: &[u8]) -> PathBuf {
    let path = p(root, rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A vfs_cap_data (v2) value granting cap_net_bind_service, effective.
pub const CAP_NET_BIND_SERVICE_EP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Generate the corpus: every kind of file and metadata standin must keep.
/// Needs root (devices, owners, trusted.* xattrs) and setfacl.
pub fn make_corpus(root: &Path) {
    require_root();
    let setfacl = require_tool("setfacl", "acl");
    fs::create_dir_all(root).unwrap();
    // Regular files, empty file, bigger random file.
    write(root, b"etc/hostname", b"corpus-host\n");
    write(root, b"etc/empty", b"");
    write(root, b"data/random.bin", &noise(1, 3 << 20));
    write(
        root,
        b"data/text.txt",
        "hello world\n".repeat(5000).as_bytes(),
    );
    // Hardlinks: a 3-member group.
    let first = write(root, b"links/a-first", b"shared content\n");
    fs::hard_link(&first, p(root, b"links/b-second")).unwrap();
    fs::hard_link(&first, p(root, b"links/c-third")).unwrap();
    // Symlinks: relative, dangling, absolute, long target.
    std::os::unix::fs::symlink("../etc/hostname", p(root, b"links/rel")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", p(root, b"links/dangling")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", p(root, b"links/absolute")).unwrap();
    std::os::unix::fs::symlink("x/".repeat(80), p(root, b"links/long-target")).unwrap();
    // Fifo and device nodes.
    fs::create_dir_all(p(root, b"dev")).unwrap();
    rustix::fs::mknodat(
        CWD,
        p(root, b"dev/fifo"),
        rustix::fs::FileType::Fifo,
        0o640.into(),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        p(root, b"dev/null"),
        rustix::fs::FileType::CharacterDevice,
        0o666.into(),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        p(root, b"dev/loop200"),
        rustix::fs::FileType::BlockDevice,
        0o660.into(),
        rustix::fs::makedev(7, 200),
    )
    .unwrap();
    // Special mode bits.
    let suid = write(root, b"bin/suid", b"#!/bin/sh\n");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let sgid = write(root, b"bin/sgid", b"#!/bin/sh\n");
    fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2711)).unwrap();
    fs::create_dir_all(p(root, b"shared/sticky")).unwrap();
    fs::set_permissions(
        p(root, b"shared/sticky"),
        fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    fs::create_dir_all(p(root, b"shared/setgid-dir")).unwrap();
    fs::set_permissions(
        p(root, b"shared/setgid-dir"),
        fs::Permissions::from_mode(0o2775),
    )
    .unwrap();
    // Odd owners.
    let odd = write(root, b"home/odd-owner", b"owned by 12345\n");
    rustix::fs::chown(
        &odd,
        Some(rustix::fs::Uid::from_raw(12345)),
        Some(rustix::fs::Gid::from_raw(54321)),
    )
    .unwrap();
    fs::create_dir_all(p(root, b"home/bigid")).unwrap();
    rustix::fs::chown(
        p(root, b"home/bigid"),
        Some(rustix::fs::Uid::from_raw(3_000_000)),
        Some(rustix::fs::Gid::from_raw(3_000_001)),
    )
    .unwrap();
    // xattrs: user (binary, odd name), trusted, security.capability.
    let x = write(root, b"xattr/file", b"has xattrs\n");
    let all: Vec<u8> = (0..=255u8).collect();
    rustix::fs::setxattr(&x, "user.binary", &all, XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&x, "user.eq=sign%pct", b"v", XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&x, "trusted.t", b"\x00\x01trusted\n", XattrFlags::empty()).unwrap();
    let cap = write(root, b"xattr/ping", b"#!/bin/sh\n");
    fs::set_permissions(&cap, fs::Permissions::from_mode(0o755)).unwrap();
    rustix::fs::setxattr(
        &cap,
        "security.capability",
        &CAP_NET_BIND_SERVICE_EP,
        XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        p(root, b"links/rel"),
        "trusted.onlink",
        b"sym",
        XattrFlags::empty(),
    )
    .unwrap();
    // POSIX ACLs: access on a file, access + default on a directory.
    let acl_file = write(root, b"acl/file", b"acl\n");
    fs::create_dir_all(p(root, b"acl/dir")).unwrap();
    run_ok(
        Command::new(&setfacl)
            .args(["-m", "u:12345:rwx,g:54321:r"])
            .arg(&acl_file),
        None,
    );
    run_ok(
        Command::new(&setfacl)
            .args(["-m", "u:12345:rx", "-d", "-m", "u:12345:rwx"])
            .arg(p(root, b"acl/dir")),
        None,
    );
    write(root, b"acl/dir/inherits", b"inherited acl\n");
    // Odd names: newline, non-UTF-8 bytes, a 255-byte name, backslash.
    write(root, b"names/new\nline", b"nl");
    write(root, b"names/bad\xff\xfe\x80name", b"bytes");
    let long = vec![b'n'; 255];
    let mut rel = b"names/".to_vec();
    rel.extend_from_slice(&long);
    write(root, &rel, b"long name");
    write(root, b"names/back\\slash", b"bs");
    // A 40-level-deep path.
    let mut deep = Vec::new();
    for i in 0..40 {
        deep.extend_from_slice(format!("level{i:02}/").as_bytes());
    }
    deep.extend_from_slice(b"bottom.txt");
    let mut drel = b"deep/".to_vec();
    drel.extend_from_slice(&deep);
    write(root, &drel, b"deep down");
    // A 256 MiB sparse file with two data islands, and an all-hole file.
    let sp = p(root, b"sparse/disk.img");
    fs::create_dir_all(sp.parent().unwrap()).unwrap();
    let mut f = fs::File::create(&sp).unwrap();
    f.set_len(256 << 20).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&noise(2, 64 << 10)).unwrap();
    f.seek(SeekFrom::Start(200 << 20)).unwrap();
    f.write_all(&noise(3, 128 << 10)).unwrap();
    drop(f);
    let holes = fs::File::create(p(root, b"sparse/all-hole")).unwrap();
    holes.set_len(10 << 20).unwrap();
    // Timestamps before 1970 and after 2100, with nanoseconds.
    let old = write(root, b"times/1950", b"old");
    set_mtime(&old, -631_152_000, 123_456_789);
    let future = write(root, b"times/2200", b"future");
    set_mtime(&future, 7_258_118_400, 987_654_321);
    std::os::unix::fs::symlink("1950", p(root, b"times/link-to-old")).unwrap();
    set_mtime(&p(root, b"times/link-to-old"), 1_000_000_000, 5);
    // A socket (left out of images).
    let sock = std::os::unix::net::UnixListener::bind(p(root, b"run-socket")).unwrap();
    drop(sock);
    // Directory times last (children are done).
    set_mtime(&p(root, b"times"), 946_684_800, 1);
    set_mtime(root, 1_234_567_890, 999_999_999);
}

/// What the comparison looks at for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    /// First path (in sorted order) of this inode's hardlink group.
    pub link_group: Option<Vec<u8>>,
    /// Data extents when the file is sparse (allocated < size).
    pub sparse: Option<Vec<(u64, u64)>>,
}

fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut v[..]) {
            out.insert(name.to_vec(), v[..len].to_vec());
        }
    }
    out
}

fn extents_of(path: &Path, size: u64) -> Vec<(u64, u64)> {
    let f = fs::File::open(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(d) = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) else {
            break;
        };
        let h = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(d))
            .unwrap()
            .min(size);
        out.push((d, h - d));
        pos = h;
    }
    out
}

/// Walk a tree (sorted, not following symlinks) into path → facts; sockets are skipped.
pub fn facts(root: &Path) -> BTreeMap<Vec<u8>, Facts> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    let mut all = Vec::new();
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            p(root, &rel)
        };
        let md = fs::symlink_metadata(&path).unwrap();
        if md.is_dir() {
            let mut kids: Vec<Vec<u8>> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                .collect();
            kids.sort();
            for k in kids.into_iter().rev() {
                let mut c = rel.clone();
                if !c.is_empty() {
                    c.push(b'/');
                }
                c.extend_from_slice(&k);
                stack.push(c);
            }
        }
        all.push((rel, path, md));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, path, md) in all {
        use std::os::unix::fs::FileTypeExt;
        let ft = md.file_type();
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            continue;
        };
        let link_group = if !md.is_dir() && md.nlink() > 1 {
            Some(
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone(),
            )
        } else {
            None
        };
        let sparse =
            (md.is_file() && md.blocks() * 512 < md.len()).then(|| extents_of(&path, md.len()));
        out.insert(
            rel.clone(),
            Facts {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: md.len(),
                mtime: (md.mtime(), md.mtime_nsec()),
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    md.rdev()
                } else {
                    0
                },
                xattrs: xattrs_of(&path),
                content: md.is_file().then(|| crate::common::sha256_file(&path)),
                target: md.file_type().is_symlink().then(|| {
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                link_group,
                sparse,
            },
        );
    }
    out
}

/// Which facts to compare.
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub owners: bool,
    pub times: bool,
    pub dir_times: bool,
    pub links: bool,
    pub exact_extents: bool,
    /// Compare only these xattr namespaces (None: all).
    pub xattr_prefixes: Option<&'static [&'static str]>,
}

impl Compare {
    pub const ALL: Compare = Compare {
        owners: true,
        times: true,
        dir_times: true,
        links: true,
        exact_extents: true,
        xattr_prefixes: None,
    };
}

/// Compare two trees; returns one line per difference.
pub fn compare(a_root: &Path, b_root: &Path, how: Compare) -> Vec<String> {
    let a = facts(a_root);
    let b = facts(b_root);
    let mut diffs = Vec::new();
    let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    for (k, fa) in &a {
        let Some(fb) = b.get(k) else {
            diffs.push(format!("{}: missing", show(k)));
            continue;
        };
        let mut d = Vec::new();
        if fa.kind != fb.kind {
            d.push(format!("kind {} vs {}", fa.kind, fb.kind));
        }
        if fa.mode != fb.mode && fa.kind != "symlink" {
            d.push(format!("mode {:o} vs {:o}", fa.mode, fb.mode));
        }
        if how.owners && (fa.uid, fa.gid) != (fb.uid, fb.gid) {
            d.push(format!(
                "owner {}:{} vs {}:{}",
                fa.uid, fa.gid, fb.uid, fb.gid
            ));
        }
        if fa.size != fb.size && fa.kind != "dir" {
            d.push(format!("size {} vs {}", fa.size, fb.size));
        }
        let time_matters = how.times && (fa.kind != "dir" || how.dir_times);
        if time_matters && fa.mtime != fb.mtime {
            d.push(format!("mtime {:?} vs {:?}", fa.mtime, fb.mtime));
        }
        if fa.rdev != fb.rdev {
            d.push(format!("rdev {} vs {}", fa.rdev, fb.rdev));
        }
        let filt = |x: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
            x.iter()
                .filter(|(n, _)| match how.xattr_prefixes {
                    None => true,
                    Some(ps) => ps.iter().any(|p| n.starts_with(p.as_bytes())),
                })
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        if filt(&fa.xattrs) != filt(&fb.xattrs) {
            d.push(format!(
                "xattrs {:?} vs {:?}",
                fa.xattrs.keys().map(|k| show(k)).collect::<Vec<_>>(),
                fb.xattrs.keys().map(|k| show(k)).collect::<Vec<_>>()
            ));
        }
        if fa.content != fb.content {
            d.push("content".into());
        }
        if fa.target != fb.target {
            d.push("symlink target".into());
        }
        if how.links && fa.link_group != fb.link_group {
            d.push(format!(
                "hardlink group {:?} vs {:?}",
                fa.link_group.as_deref().map(show),
                fb.link_group.as_deref().map(show)
            ));
        }
        if fa.sparse.is_some() != fb.sparse.is_some() {
            d.push(format!("sparseness {:?} vs {:?}", fa.sparse, fb.sparse));
        } else if how.exact_extents && fa.sparse != fb.sparse {
            d.push(format!("extents {:?} vs {:?}", fa.sparse, fb.sparse));
        }
        if !d.is_empty() {
            diffs.push(format!("{}: {}", show(k), d.join("; ")));
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("{}: extra", show(k)));
        }
    }
    diffs
}

/// Panic with the list when trees differ.
pub fn assert_same(a: &Path, b: &Path, how: Compare) {
    let d = compare(a, b, how);
    assert!(
        d.is_empty(),
        "{} differs from {} in {} places:\n{}",
        b.display(),
        a.display(),
        d.len(),
        d.iter().take(60).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Archive, manifest and sha256 paths for an archive.
pub fn image_files(archive: &Path) -> (PathBuf, PathBuf) {
    let s = archive.to_string_lossy();
    let stem = s.strip_suffix(".tar.zst").unwrap();
    (
        PathBuf::from(format!("{stem}.manifest.json")),
        PathBuf::from(format!("{s}.sha256")),
    )
}
