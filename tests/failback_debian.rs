//! Reverse protection and failback of a real Debian root (root, network namespaces as hosts):
//! A is a copy of the cached debootstrap minbase root, B a small standby
//! system. A is protected onto B, B fails over, a package-like change is
//! made on B (a new library, blocks rewritten in the largest file, dpkg's
//! status and /etc/passwd appended, documentation deleted). A seeds its
//! staging area from its own root (hard links on ext4), B protects back:
//! the bytes sent stay under 2x the bytes changed, A's own files stay
//! unchanged until the failback, then A's root equals B's outside the kept
//! paths; B's rollback restores its own tree exactly. (The qemu boot of a
//! failed-back root is in tests/failback_busybox.rs.)

mod common;
mod failback_support;
mod failover_support;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use failback_support::*;
use failover_support::{assert_same, cp_a};

/// The largest regular file with one link (its blocks are rewritten on B).
fn largest_file(root: &Path) -> PathBuf {
    let mut best = (0u64, PathBuf::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && m.nlink() == 1 && m.len() > best.0 {
                best = (m.len(), e.path());
            }
        }
    }
    best.1
}

fn append(p: &Path, data: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap()
        .write_all(data)
        .unwrap();
}

#[test]
fn debian_root_fails_back_with_only_the_changes_sent() {
    require_root();
    let hosts = Hosts::create("fd");
    let debian = debian_root();
    let dir = tempdir();
    let base = dir.path();
    let m = Machines::build(
        base,
        |a| {
            cp_a(&debian, a);
            std::fs::write(a.join("etc/hostname"), "web-01\n").unwrap();
        },
        "# A's grub\n",
        // B: a small standby system of the same OS release.
        |b| {
            std::fs::create_dir_all(b.join("etc")).unwrap();
            std::fs::copy(debian.join("usr/lib/os-release"), b.join("etc/os-release")).unwrap();
            std::fs::write(b.join("etc/hostname"), "standby\n").unwrap();
        },
        "# B's grub\n",
    );
    let Machines {
        a_root,
        b_root,
        a_state,
        b_state,
        b_own,
        ..
    } = &m;

    // Protect A onto B; B fails over.
    m.protect_then_fail_over(&hosts, "web-01");

    // A package-like change on B.
    let mut changed = 0u64;
    let lib = random(3 << 20, 7);
    std::fs::write(b_root.join("usr/lib/libstandin-test.so.1"), &lib).unwrap();
    changed += lib.len() as u64;
    let big = largest_file(b_root);
    let big_rel = big.strip_prefix(b_root).unwrap().to_path_buf();
    let len = std::fs::metadata(&big).unwrap().len();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        for i in 0..8u64 {
            f.seek(SeekFrom::Start((len / 8) * i / 4096 * 4096))
                .unwrap();
            f.write_all(&random(4096, 50 + i)).unwrap();
            changed += 4096;
        }
    }
    let status = b"\nPackage: standin-test\nStatus: install ok installed\nVersion: 1\n";
    append(&b_root.join("var/lib/dpkg/status"), status);
    let passwd = b"app:x:1500:1500::/srv/app:/usr/sbin/nologin\n";
    append(&b_root.join("etc/passwd"), passwd);
    changed += (status.len() + passwd.len()) as u64;
    std::fs::remove_dir_all(b_root.join("usr/share/doc/apt")).unwrap();

    // A seeds from its own root and serves; B protects back.
    std::fs::create_dir_all(a_state).unwrap();
    let a_before = system(a_root);
    m.seed_a();
    let v = m.protect_back(&hosts, "a.log");
    assert_only_changes_sent(&v, changed);
    assert_same(
        "A's own system after the reverse mirror",
        &system(a_root),
        &a_before,
    );

    // Failback on A.
    run_ok(&mut failover(&["--no-reboot"], a_state, a_root), None);
    assert_same(
        "A's root after the failback (kept paths aside)",
        &without_kept(&system(a_root)),
        &without_kept(&system(b_root)),
    );
    assert_eq!(
        std::fs::read(a_root.join(&big_rel)).unwrap(),
        std::fs::read(b_root.join(&big_rel)).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(a_root.join("boot/grub/grub.cfg")).unwrap(),
        "# A's grub\n"
    );

    // B is a standby again.
    run_ok(&mut failover(&["--rollback"], b_state, b_root), None);
    assert_same("B's own system after rollback", &system(b_root), b_own);
}
