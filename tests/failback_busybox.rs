//! Reverse protection and failback, end to end (root, network namespaces as hosts, qemu):
//!
//! A (a busybox server "demo-source") is protected onto B ("standby"), B
//! fails over and becomes A's system; data is written on B (new file,
//! changed blocks, an append, a delete). A comes back: `standin target
//! seed` starts its staging area from its own tree (hard links on ext4,
//! with the copy-out guard: A's live files must not change), B protects
//! back to A (`--once`): the bytes B sends stay under 2x the bytes changed
//! after the failover. `standin failover` on A (the failback) makes A's
//! root equal to B's, except the kept paths (independent comparison);
//! A's root boots in qemu showing the source's host name and the digest of
//! the data written on B. `standin failover --rollback` on B restores B's
//! own tree exactly.

mod common;
mod disk_support;
mod failback_support;
mod failover_support;

use std::io::{Seek, SeekFrom, Write};

use common::*;
use disk_support::*;
use failback_support::*;
use failover_support::assert_same;

#[test]
fn reverse_protection_then_failback_boots_as_the_source() {
    require_root();
    let hosts = Hosts::create("fb");
    require_disk_tools();
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempdir();
    let base = dir.path();
    let m = Machines::build(
        base,
        |a| {
            std::fs::create_dir(a).unwrap();
            busybox_tree(a, ID, "poweroff");
            std::fs::write(a.join("srv/data/big.bin"), random(4 << 20, 1)).unwrap();
            std::fs::write(a.join("srv/data/old-orders.txt"), "order 1000\n").unwrap();
            std::fs::write(a.join("srv/data/notes.txt"), "notes\n").unwrap();
        },
        "# the old source's grub\n",
        |b| {
            std::fs::create_dir(b).unwrap();
            busybox_tree(b, "standby", "poweroff");
        },
        "# the standby's grub\n",
    );
    let Machines {
        a_root,
        b_root,
        a_state,
        b_state,
        b_own,
        ..
    } = &m;

    // 1. Protect A onto B, then B fails over (A is gone).
    m.protect_then_fail_over(&hosts, ID);

    // 2. B works as the source: new data, changed blocks, an append, a delete.
    let mut changed = 0u64;
    let fresh = random(1 << 20, 2);
    std::fs::write(b_root.join("srv/data/new-orders.bin"), &fresh).unwrap();
    changed += fresh.len() as u64;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(b_root.join("srv/data/big.bin"))
            .unwrap();
        for i in 0..16u64 {
            f.seek(SeekFrom::Start(i * 256 * 1024)).unwrap();
            f.write_all(&random(4096, 100 + i)).unwrap();
            changed += 4096;
        }
    }
    let note = b"order 2001 taken on the failed-over machine\n";
    std::fs::OpenOptions::new()
        .append(true)
        .open(b_root.join("srv/data/data.txt"))
        .unwrap()
        .write_all(note)
        .unwrap();
    changed += note.len() as u64;
    std::fs::remove_file(b_root.join("srv/data/old-orders.txt")).unwrap();
    let data = std::fs::read(b_root.join("srv/data/data.txt")).unwrap();

    // 3. A comes back as the target of B: seed its staging area from its own tree.
    std::fs::create_dir_all(a_state).unwrap();
    let a_before = system(a_root);
    let seed = m.seed_a();
    assert!(seed["bytes"].as_u64().unwrap() > 5 << 20, "{seed:#}");
    // Refused a second time without --force, nothing lost.
    let out = run_code(
        standin()
            .args(["target", "seed", "--source-id", ID, "--state-dir"])
            .arg(a_state)
            .arg("--from-root")
            .arg(a_root),
        1,
        None,
    );
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    // 4. B protects back to A; only what changed travels.
    let v = m.protect_back(&hosts, "a.log");
    assert_only_changes_sent(&v, changed);
    // The copy-out guard: A's live system did not change while its staging area did.
    assert_same(
        "A's own system after the reverse mirror",
        &system(a_root),
        &a_before,
    );
    let replica = a_state.join("staging").join(ID).join("root");
    assert_eq!(
        std::fs::read(replica.join("srv/data/data.txt")).unwrap(),
        data
    );

    // 4b. The documented limit of a hard-link seed, caught: A's own running
    // system writes in place into a file the staging area still shares.
    // The failback refuses (without --yes) and names it; one more
    // difference mirror from B repairs the staging area, and A's live file
    // keeps A's write.
    std::fs::OpenOptions::new()
        .append(true)
        .open(a_root.join("srv/data/notes.txt"))
        .unwrap()
        .write_all(b"written by A's own system\n")
        .unwrap();
    let out = run_code(&mut failover(&["--no-reboot"], a_state, a_root), 1, None);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("share their inode") && text.contains("srv/data/notes.txt"),
        "{text}"
    );
    m.protect_back(&hosts, "a2.log");
    assert_eq!(
        std::fs::read(replica.join("srv/data/notes.txt")).unwrap(),
        b"notes\n"
    );
    assert_eq!(
        std::fs::read(a_root.join("srv/data/notes.txt")).unwrap(),
        b"notes\nwritten by A's own system\n"
    );

    // 5. Failback: fail over on A.
    run_ok(&mut failover(&["--no-reboot"], a_state, a_root), None);
    assert_same(
        "A's root after the failback (kept paths aside)",
        &without_kept(&system(a_root)),
        &without_kept(&system(b_root)),
    );
    assert_eq!(
        std::fs::read_to_string(a_root.join("boot/grub/grub.cfg")).unwrap(),
        "# the old source's grub\n",
        "A keeps its own boot loader"
    );
    assert!(!a_root.join("srv/data/old-orders.txt").exists());
    assert_eq!(
        std::fs::read(a_root.join("srv/data/new-orders.bin")).unwrap(),
        fresh
    );

    // 6. A boots as the source with the data written on B.
    let disk = base.join("failed-back.img");
    run_ok(
        standin()
            .args(["image", "disk", "--root"])
            .arg(a_root)
            .arg("-o")
            .arg(&disk),
        Some(base),
    );
    let out = run_ok(
        standin()
            .args(["image", "boot"])
            .arg(&disk)
            .args(["--expect", "STANDIN-BOOTED", "--timeout", "900", "--log"])
            .arg(base.join("serial.log")),
        Some(base),
    );
    let line = stdout(&out);
    assert!(line.contains("host=demo-source"), "{line}");
    assert!(
        line.contains(&format!("data={}", sha256_hex(&data))),
        "{line}"
    );
    assert_no_qemu_left(&disk);
    std::fs::remove_file(&disk).ok();

    // 7. B goes back to being a standby.
    run_ok(&mut failover(&["--rollback"], b_state, b_root), None);
    assert_same("B's own system after rollback", &system(b_root), b_own);
}
