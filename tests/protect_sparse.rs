//! The sparse difference mirror: after a complete mirror the agent keeps a
//! mirror index; the next `protect --once` offers that mirror as the base
//! and, when the target's replica is still what it left, lists only what
//! changed since. Every kind of change converges (independent comparison);
//! tampering with the replica is caught at the mirror's end and repaired
//! in the same invocation; the target refuses a base it cannot vouch for
//! and the agent ignores an index of another tree: the ordinary comparison
//! runs and converges. Over loopback; needs root.

mod protect_support;

use std::path::Path;

use protect_support::common::{require_root, require_tool, run_ok, tempdir};
use protect_support::*;
use standin_builder::progress::NoProgress;
use standin_builder::scan::ScanOptions;

fn make_source(src: &Path) {
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    for i in 0..600 {
        let dir = src.join(format!("data/d{:02}/sub{}", i % 20, (i / 20) % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}")),
            format!("file {i}\n").repeat(i % 40 + 1),
        )
        .unwrap();
    }
    std::fs::create_dir_all(src.join("data/tree/a/b")).unwrap();
    std::fs::write(src.join("data/tree/a/b/x"), "x\n").unwrap();
    std::fs::write(src.join("data/linked"), "two names\n").unwrap();
    std::fs::hard_link(src.join("data/linked"), src.join("data/linked2")).unwrap();
    std::os::unix::fs::symlink("../etc/os-release", src.join("data/symlink")).unwrap();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("data/big"), big).unwrap();
}

fn full_scan(src: &Path) -> (String, u64) {
    let s = standin_builder::manifest::scan_tree_mirror(
        src,
        &ScanOptions::default(),
        &NoProgress,
        |_| Ok(()),
    )
    .unwrap();
    (s.root_digest, s.entry_count)
}

fn sh(cmd: &str) {
    run_ok(std::process::Command::new("sh").arg("-c").arg(cmd), None);
}

struct Run<'a> {
    d: &'a Path,
    tf: &'a str,
    sid: &'a Path,
}

impl Run<'_> {
    fn protect(&self, src: &Path, daemon: &Daemon, extra: &[&str]) -> serde_json::Value {
        let out = run_ok(
            protect_cmd(&daemon.addr, self.sid, self.tf, src)
                .arg("--state-dir")
                .arg(self.d.join("agent"))
                .args(["--source-id", "web1", "--once", "--json"])
                .args(extra),
            None,
        );
        protect_json(&out)
    }
}

/// The mirror completed, with the full scan's root digest, and the
/// replica equals the source by the independent comparison.
fn converged(v: &serde_json::Value, src: &Path, replica: &Path) {
    let m = &v["mirror"];
    assert_eq!(m["complete"], true, "{v:#}");
    let (digest, entries) = full_scan(src);
    assert_eq!(m["root_digest"], digest.as_str(), "{v:#}");
    assert_eq!(m["entries"], entries, "{v:#}");
    assert_same_tree(src, replica);
}

#[test]
fn sparse_mirror_lists_only_changes_catches_tampering_and_refuses_bad_bases() {
    require_root();
    require_tool("setfattr", "attr");
    let d = tempdir();
    let src = d.path().join("src");
    make_source(&src);
    let sides = Sides::new(d.path(), &src, true);
    let mut daemon = sides.serve_without_snapshots(&d.path().join("d.log"));
    let replica = replica(&sides.state, "web1");
    let run = Run {
        d: d.path(),
        tf: &sides.tf,
        sid: &sides.sid,
    };
    let index = d.path().join("agent/mirror-index.bin");

    // The first mirror (empty replica) writes the index.
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    assert_eq!(v["mirror"]["empty_replica"], true, "{v:#}");
    assert_eq!(v["mirror"]["base_used"], false, "{v:#}");
    assert!(index.exists(), "the mirror index is kept");
    let entries = v["mirror"]["entries"].as_u64().unwrap();

    // Every kind of change on the source.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let s = src.display();
    sh(&format!(
        "echo appended >> {s}/data/d00/sub0/f0 && \
         printf 'FILE 21\\n' > {s}/data/d01/sub1/f21.n && touch -r {s}/data/d01/sub1/f21 {s}/data/d01/sub1/f21.n && \
         cat {s}/data/d01/sub1/f21.n > {s}/data/d01/sub1/f21 && touch -r {s}/data/d01/sub1/f21.n {s}/data/d01/sub1/f21 && rm {s}/data/d01/sub1/f21.n && \
         chmod 600 {s}/data/d02/sub0/f2 && chown 1234:4321 {s}/data/d03/sub0/f3 && \
         setfattr -n user.note -v hello {s}/data/d04/sub0/f4 && \
         mv {s}/data/d05/sub0/f5 {s}/data/d06/sub2/moved && rm {s}/data/d07/sub0/f7 && \
         rm -r {s}/data/tree && mkdir -p {s}/data/newdir/inner && \
         ln -s ../../etc/os-release {s}/data/newdir/sym && ln {s}/data/d08/sub0/f8 {s}/data/newdir/hard && \
         rm {s}/data/linked2 && dd if=/dev/zero of={s}/data/big bs=4096 count=1 seek=100 conv=notrunc 2>/dev/null"
    ));
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    let m = &v["mirror"];
    assert_eq!(m["base_used"], true, "{v:#}");
    assert!(m["sparse_retry"].is_null(), "{v:#}");
    let listed = m["entries_listed"].as_u64().unwrap();
    assert!(
        (12..=60).contains(&listed),
        "only the changed entries and the directories above them are listed: {v:#}"
    );
    assert!(
        m["entries_reused"].as_u64().unwrap() + listed >= entries - 10,
        "{v:#}"
    );
    assert!(m["entries_gone"].as_u64().unwrap() >= 3, "{v:#}");
    assert!(m["deleted"].as_u64().unwrap() >= 3, "{v:#}");

    // Nothing changed: nothing but hard-link members to list.
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    assert_eq!(v["mirror"]["base_used"], true, "{v:#}");
    assert!(
        v["mirror"]["entries_listed"].as_u64().unwrap() <= 8,
        "{v:#}"
    );
    assert_eq!(v["mirror"]["changed"], 0, "{v:#}");

    // Tampering behind the daemon's back with a file whose source is
    // unchanged (same size, mtime put back): the sparse mirror's end
    // catches it, and the same invocation repairs it by a comparison.
    let t = replica.join("data/d09/sub0/f9");
    let before = std::fs::read(&t).unwrap();
    let mut evil = before.clone();
    evil[0] ^= 0x20;
    std::fs::write(&t, &evil).unwrap();
    sh(&format!("touch -r {s}/data/d09/sub0/f9 {}", t.display()));
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    assert_eq!(
        v["mirror"]["base_used"], false,
        "the second run compares: {v:#}"
    );
    assert!(v["mirror"]["sparse_retry"].is_string(), "{v:#}");
    assert_eq!(std::fs::read(&t).unwrap(), before, "repaired");

    // --mirror full and --verify-all never use the base.
    for extra in [&["--mirror", "full"][..], &["--verify-all"][..]] {
        let v = run.protect(&src, &daemon, extra);
        converged(&v, &src, &replica);
        assert_eq!(v["mirror"]["base_used"], false, "{extra:?}: {v:#}");
    }
    let v = run.protect(&src, &daemon, &[]);
    assert_eq!(v["mirror"]["base_used"], true, "{v:#}");

    // Refused: a change set applied after the base (faked: the target's
    // last applied number moved while it was down). The kill comes after
    // the replica of the last mirror is synced (before it, the mirror
    // would be refused as incomplete, another case).
    status_json(&sides.state);
    daemon.kill9();
    let state_file = sides.state.join("state.json");
    let mut st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let last = st["last_applied_seq"].as_u64().unwrap();
    st["last_applied_seq"] = (last + 1).into();
    std::fs::write(&state_file, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    let daemon = sides.serve_without_snapshots(&d.path().join("d2.log"));
    sh(&format!("echo later >> {s}/data/d10/sub0/f10"));
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    assert_eq!(v["mirror"]["base_used"], false, "{v:#}");
    assert!(
        daemon.log_text().contains("change sets were applied since"),
        "{}",
        daemon.log_text()
    );
    let v = run.protect(&src, &daemon, &[]);
    assert_eq!(
        v["mirror"]["base_used"], true,
        "the comparison made a new base: {v:#}"
    );
    drop(daemon);

    // Refused: a fresh target state directory (an empty replica).
    std::fs::remove_dir_all(&sides.state).unwrap();
    let daemon = sides.serve_without_snapshots(&d.path().join("d3.log"));
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    assert_eq!(v["mirror"]["base_used"], false, "{v:#}");
    assert_eq!(v["mirror"]["empty_replica"], true, "{v:#}");

    // Ignored: the agent's index of another tree (same state directory,
    // another root); the comparison converges to that tree.
    let src2 = d.path().join("src2");
    copy_tree(&src, &src2);
    sh(&format!(
        "echo other > {}/data/d11/sub0/f11",
        src2.display()
    ));
    let out = run_ok(
        protect_cmd(&daemon.addr, &sides.sid, &sides.tf, &src2)
            .arg("--state-dir")
            .arg(d.path().join("agent"))
            .args(["--source-id", "web1", "--once", "--json"])
            .env("STANDIN_LOG", "standin_agent=info"),
        None,
    );
    let v = protect_json(&out);
    converged(&v, &src2, &replica);
    assert_eq!(v["mirror"]["base_used"], false, "{v:#}");
    let err = protect_support::common::stderr(&out);
    assert!(err.contains("another tree"), "{err}");
}

/// The prechecked count of the last mirror's root digest check (state.json).
fn prechecked(state: &Path) -> u64 {
    let st = target_state(state);
    st["mirror"]["root_check"]["prechecked"]
        .as_u64()
        .unwrap_or_else(|| panic!("{st:#}"))
}

/// The sparse mirror checks the carried records early (while the agent
/// walks); a change to the replica made after the base was accepted and
/// before that check runs (held by the test) is still caught and repaired
/// in the same invocation.
#[test]
fn the_early_check_of_carried_records_catches_tampering_during_the_mirror() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    make_source(&src);
    let sides = Sides::new(d.path(), &src, true);
    let hold = d.path().join("hold-precheck");
    let log = d.path().join("d.log");
    let mut cmd = protect_support::common::standin();
    cmd.env("STANDIN_TEST_PRECHECK_HOLD", &hold);
    let extra = [
        std::ffi::OsStr::new("--target-root"),
        sides.troot.as_os_str(),
        std::ffi::OsStr::new("--snapshot-every"),
        std::ffi::OsStr::new("0"),
    ];
    let daemon = Daemon::serve(
        cmd,
        "127.0.0.1:0",
        &sides.state,
        &sides.tid,
        &[&sides.sf],
        &extra,
        &log,
    );
    let replica = replica(&sides.state, "web1");
    let run = Run {
        d: d.path(),
        tf: &sides.tf,
        sid: &sides.sid,
    };
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);

    // Nothing changed: the end takes nearly every record from the early check.
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    assert_eq!(v["mirror"]["base_used"], true, "{v:#}");
    let entries = v["mirror"]["entries"].as_u64().unwrap();
    let pre = prechecked(&sides.state);
    assert!(pre + 20 >= entries && pre > 0, "{pre} of {entries}");

    // A patched large file whose unpatched part was corrupted on the
    // target: the comparison's block digests of the replica's file find
    // the corrupted block too (and the set's end reads the whole file).
    let (s, r) = (src.display(), replica.display());
    let stamp = d.path().join("big-mtime");
    let t = stamp.display();
    sh(&format!(
        "dd if=/dev/urandom of={s}/data/big bs=4096 count=1 seek=10 conv=notrunc 2>/dev/null && \
         touch -r {r}/data/big {t} && \
         dd if=/dev/urandom of={r}/data/big bs=4096 count=1 seek=500 conv=notrunc 2>/dev/null && \
         touch -r {t} {r}/data/big"
    ));
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);
    assert_eq!(
        std::fs::read(src.join("data/big")).unwrap(),
        std::fs::read(replica.join("data/big")).unwrap()
    );

    // Held: the agent's walk and the transfer go on; the replica changes
    // behind standin's back once the base is accepted, then the check runs.
    std::fs::write(&hold, "").unwrap();
    let accepted = |log: &str| log.matches("the source's base accepted").count();
    let before = accepted(&daemon.log_text());
    let child = protect_cmd(&daemon.addr, &sides.sid, &sides.tf, &src)
        .arg("--state-dir")
        .arg(d.path().join("agent"))
        .args(["--source-id", "web1", "--once", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while accepted(&daemon.log_text()) == before {
        assert!(waited < 600, "the base was never accepted");
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    let f9 = replica.join("data/d09/sub0/f9");
    let before9 = std::fs::read(&f9).unwrap();
    let mut evil = before9.clone();
    evil[0] ^= 0x20;
    std::fs::write(&f9, &evil).unwrap();
    sh(&format!(
        "chmod 600 {r}/data/d12/sub1/f32 && rm {r}/data/d13/sub2/f53 && \
         touch -r {s}/data/d13/sub2 {r}/data/d13/sub2"
    ));
    std::fs::remove_file(&hold).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = protect_json(&out);
    converged(&v, &src, &replica);
    assert!(v["mirror"]["sparse_retry"].is_string(), "{v:#}");
    assert_eq!(std::fs::read(&f9).unwrap(), before9, "repaired");
    assert!(replica.join("data/d13/sub2/f53").exists(), "restored");
}

/// The last applied change set's number in the target's `state.json`.
fn applied_seq(state: &Path) -> u64 {
    let st = target_state(state);
    st["last_applied_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{st:#}"))
}

/// A difference mirror's compared changes leave as change sets while the
/// agent still scans: with the scan held after its first batch
/// (`STANDIN_TEST_SCAN_HOLD`), the target applies a set of this mirror
/// before the scan goes on; released, the mirror completes and converges.
#[test]
fn a_difference_mirror_sends_its_first_set_before_its_scan_ends() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    make_source(&src);
    let sides = Sides::new(d.path(), &src, true);
    let log = d.path().join("d.log");
    let daemon = sides.serve_without_snapshots(&log);
    let replica = replica(&sides.state, "web1");
    let run = Run {
        d: d.path(),
        tf: &sides.tf,
        sid: &sides.sid,
    };
    let v = run.protect(&src, &daemon, &[]);
    converged(&v, &src, &replica);

    // Appends (patched in place) and a new file, all in the first batch.
    sh(&format!(
        "echo more >> {s}/data/d00/sub0/f0 && echo more >> {s}/data/d05/sub0/f5 && \
         echo new > {s}/data/d01/sub0/new",
        s = src.display()
    ));
    let before = applied_seq(&sides.state);
    let hold = d.path().join("hold-scan");
    std::fs::write(&hold, "").unwrap();
    let child = protect_cmd(&daemon.addr, &sides.sid, &sides.tf, &src)
        .arg("--state-dir")
        .arg(d.path().join("agent"))
        .args(["--source-id", "web1", "--once", "--json"])
        .env("STANDIN_TEST_SCAN_HOLD", &hold)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The scan stays held (the agent holds it up to a minute) while the
    // target applies what the first batch's comparison found.
    wait_for(
        "a change set applied while the scan is held",
        250,
        &[&log],
        || applied_seq(&sides.state) > before,
    );
    assert!(hold.exists());
    std::fs::remove_file(&hold).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = protect_json(&out);
    converged(&v, &src, &replica);
    assert_eq!(v["mirror"]["base_used"], true, "{v:#}");
    assert!(v["mirror"]["last_seq"].as_u64().unwrap() > before, "{v:#}");
}

/// The target's `state.json`.
fn target_state(state: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap()
}
