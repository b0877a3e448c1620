//! Helpers for failover and snapshot tests: an independent tree listing
//! (lstat fields, xattrs, content sha256, hard-link groups), target and
//! staging layouts built directly.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One entry as the tests compare it (atime and ctime left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub sha256: Option<String>,
    /// First path (in walk order) of this entry's hard-link group.
    pub group: Option<String>,
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(n) = rustix::fs::llistxattr_query(p) else {
        return out;
    };
    if n == 0 {
        return out;
    }
    let mut names = vec![0u8; n];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let len = rustix::fs::lgetxattr_query(p, OsStr::from_bytes(name)).unwrap();
        let mut v = vec![0u8; len];
        let got = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..]).unwrap();
        v.truncate(got);
        out.insert(name.to_vec(), v);
    }
    out
}

/// Every entry under `root` (relative path → info), skipping `skip` paths and what is under them.
pub fn tree(root: &Path, skip: &[&str]) -> BTreeMap<String, Info> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<u64, (String, u32)> = HashMap::new();
    walk(root, "", skip, &mut out, &mut groups);
    // A hard-link group is the set of paths in this tree sharing an inode
    // (links from outside the tree, e.g. a snapshot's, do not count).
    for info in out.values_mut() {
        if let Some(g) = &info.group {
            let ino: u64 = g.parse().unwrap();
            let (first, n) = &groups[&ino];
            info.group = (*n > 1).then(|| first.clone());
        }
    }
    out
}

fn walk(
    root: &Path,
    rel: &str,
    skip: &[&str],
    out: &mut BTreeMap<String, Info>,
    groups: &mut HashMap<u64, (String, u32)>,
) {
    let p = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        's'
    };
    let sha256 = (kind == 'f').then(|| hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
    let group = (kind == 'f' && m.nlink() > 1).then(|| {
        let e = groups
            .entry(m.ino())
            .or_insert_with(|| (rel.to_string(), 0));
        e.1 += 1;
        m.ino().to_string()
    });
    out.insert(
        rel.to_string(),
        Info {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            size: if kind == 'd' { 0 } else { m.len() },
            rdev: m.rdev(),
            target: (kind == 'l').then(|| {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            xattrs: xattrs(&p),
            sha256,
            group,
        },
    );
    if kind == 'd' {
        let mut names: Vec<String> = std::fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            if skip.iter().any(|s| r == *s) {
                continue;
            }
            walk(root, &r, skip, out, groups);
        }
    }
}

/// Assert two trees are equal, naming the first differences.
pub fn assert_same(what: &str, got: &BTreeMap<String, Info>, want: &BTreeMap<String, Info>) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(g) if g != v => diffs.push(format!("differs {k}: got {g:?} want {v:?}")),
            _ => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            diffs.push(format!("extra {k}"));
        }
    }
    panic!(
        "{what}: {} difference(s):\n{}",
        diffs.len(),
        diffs.into_iter().take(30).collect::<Vec<_>>().join("\n")
    );
}

/// Whether `p` is `base` or under it.
pub fn under(p: &str, base: &str) -> bool {
    p == base || p.starts_with(&format!("{base}/"))
}

pub fn write(p: &Path, data: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A small target system: kernel, modules (merged /usr), fstab with
/// UUIDs, network configuration, hostname, grub config, a log.
pub fn make_target_system(t: &Path) {
    write(&t.join("boot/vmlinuz-6.1.0-target"), "target kernel");
    write(&t.join("boot/efi/EFI/debian/grubx64.efi"), "target efi");
    write(&t.join("boot/grub/grub.cfg"), "target grub.cfg");
    write(
        &t.join("usr/lib/modules/6.1.0-target/kernel/e1000.ko"),
        "target module",
    );
    write(&t.join("usr/bin/target-tool"), "#!/bin/sh\n");
    std::os::unix::fs::symlink("usr/lib", t.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
    write(
        &t.join("etc/fstab"),
        "UUID=1111-target-root / ext4 errors=remount-ro 0 1\nUUID=2222-target-boot /boot ext4 defaults 0 2\nUUID=AAAA-EFI /boot/efi vfat umask=0077 0 1\nUUID=3333-target-swap none swap sw 0 0\nUUID=4444-target-scratch /scratch ext4 defaults 0 2\n",
    );
    write(&t.join("etc/hostname"), "standby\n");
    write(
        &t.join("etc/network/interfaces"),
        "auto lo ens3\niface lo inet loopback\niface ens3 inet static\n    address 198.18.0.2/24\n",
    );
    write(
        &t.join("etc/default/grub"),
        "GRUB_CMDLINE_LINUX=\"console=ttyS0\"\n",
    );
    write(&t.join("var/log/target.log"), "target log\n");
    std::fs::create_dir_all(t.join("home")).unwrap();
}

/// A small source system with every kind of entry: hard links, a symlink,
/// a fifo, xattrs, odd modes, its own kernel and network config.
pub fn make_source_system(s: &Path) {
    write(&s.join("boot/vmlinuz-6.1.0-source"), "source kernel");
    write(
        &s.join("usr/lib/modules/6.1.0-source/kernel/virtio.ko"),
        "source module",
    );
    write(&s.join("usr/bin/app"), "#!/bin/sh\necho app\n");
    std::os::unix::fs::symlink("usr/lib", s.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/bin", s.join("bin")).unwrap();
    write(&s.join("etc/fstab"), "UUID=9999-source-root / ext4 defaults 0 1\nUUID=8888-source-swap none swap sw 0 0\nUUID=7777-source-data /data xfs defaults 0 2\n");
    write(&s.join("etc/hostname"), "production\n");
    write(
        &s.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    );
    write(&s.join("etc/ssh/ssh_host_ed25519_key"), "source host key\n");
    write(
        &s.join("etc/network/interfaces"),
        "auto lo eth0\niface lo inet loopback\niface eth0 inet static\n    address 198.18.0.1/24\n",
    );
    write(
        &s.join("etc/default/grub"),
        "GRUB_CMDLINE_LINUX=\"quiet\"\n",
    );
    write(&s.join("var/lib/app/data.db"), "source data\n");
    write(&s.join("var/log/app.log"), "source log\n");
    write(&s.join("data/big"), &"x".repeat(100_000));
    std::fs::hard_link(s.join("data/big"), s.join("data/big-link")).unwrap();
    std::fs::hard_link(s.join("data/big"), s.join("var/lib/app/big-link2")).unwrap();
    std::os::unix::fs::symlink("/data/big", s.join("var/lib/app/current")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.join("var/lib/app/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    std::fs::set_permissions(
        s.join("usr/bin/app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        s.join("var/lib/app/data.db"),
        "user.standin.test",
        b"v1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::fs::lchown(s.join("var/lib/app/data.db"), Some(1234), Some(5678)).unwrap();
}

/// Write a state directory for `source_id` whose replica is `staged`
/// (moved into place), as the link helper's state module records it.
pub fn make_state(state: &Path, source_id: &str, seq: u64, complete: bool) -> PathBuf {
    for sub in ["journal", "snapshots", "rollback"] {
        std::fs::create_dir_all(state.join(sub)).unwrap();
    }
    let root = state.join("staging").join(source_id).join("root");
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    let st = standin_staging::state::TargetState {
        format: 1,
        source_id: Some(source_id.to_string()),
        last_applied_seq: seq,
        mirror_complete: complete,
        ..Default::default()
    };
    st.save(state).unwrap();
    root
}

/// Copy a tree with `cp -a` (exact metadata, hard links).
pub fn cp_a(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Kept paths as the failover documents them (resolved for merged /usr).
pub const KEPT: &[&str] = &[
    "boot",
    "usr/lib/modules",
    "etc/default/grub",
    "etc/default/grub.d",
    "etc/grub.d",
    "etc/network/interfaces",
    "etc/network/interfaces.d",
    "etc/systemd/network",
    "etc/NetworkManager/system-connections",
];

/// The tree a failover must produce: the staged tree, with kept paths from
/// the target, fstab from the merge rule (checked separately), the state dir left out.
pub fn expected_after(
    staged: &BTreeMap<String, Info>,
    target: &BTreeMap<String, Info>,
) -> BTreeMap<String, Info> {
    let kept = |p: &str| KEPT.iter().any(|k| under(p, k));
    let mut want: BTreeMap<String, Info> = staged
        .iter()
        .filter(|(p, _)| !kept(p) && p.as_str() != "etc/fstab")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (p, v) in target {
        if kept(p) {
            want.insert(p.clone(), v.clone());
        }
    }
    want
}

/// Drop fstab and hard-link group names (which depend on which paths exist) for a comparison.
pub fn without_fstab(t: &BTreeMap<String, Info>) -> BTreeMap<String, Info> {
    t.iter()
        .filter(|(p, _)| p.as_str() != "etc/fstab")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Check the merged fstab: the target's /, /boot, /boot/efi, swap; the source's others.
pub fn check_fstab(root: &Path) {
    let f = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    assert!(f.contains("UUID=1111-target-root / "), "{f}");
    assert!(f.contains("UUID=2222-target-boot /boot "), "{f}");
    assert!(f.contains("UUID=AAAA-EFI /boot/efi "), "{f}");
    assert!(f.contains("UUID=3333-target-swap none swap"), "{f}");
    assert!(!f.contains("target-scratch"), "{f}");
    assert!(
        !f.contains("source-root") && !f.contains("source-swap"),
        "{f}"
    );
}
