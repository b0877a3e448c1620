//! Failover and rollback end to end (root): Debian root, crash at every
//! step, refusals. Comparisons are independent of standin's manifests.

mod common;
mod failover_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use common::*;
use failover_support::*;

const SKIP: &[&str] = &["var/lib/standin"];

struct Layout {
    _tmp: tempfile::TempDir,
    target: PathBuf,
    state: PathBuf,
    staged: PathBuf,
}

fn layout(fill: impl Fn(&Path)) -> Layout {
    let tmp = tempdir();
    let target = tmp.path().join("root");
    std::fs::create_dir(&target).unwrap();
    make_target_system(&target);
    let state = target.join("var/lib/standin");
    let staged = make_state(&state, "src1", 42, true);
    fill(&staged);
    Layout {
        _tmp: tmp,
        target,
        state,
        staged,
    }
}

fn failover_cmd(l: &Layout) -> std::process::Command {
    let mut c = standin();
    c.arg("failover")
        .arg("--state-dir")
        .arg(&l.state)
        .arg("--target-root")
        .arg(&l.target)
        .arg("--no-reboot")
        .arg("--json");
    c
}

fn rollback_cmd(l: &Layout) -> std::process::Command {
    let mut c = standin();
    c.arg("failover")
        .arg("--rollback")
        .arg("--state-dir")
        .arg(&l.state)
        .arg("--target-root")
        .arg(&l.target);
    c
}

type Tree = std::collections::BTreeMap<String, Info>;

fn before(l: &Layout) -> (Tree, Tree) {
    (tree(&l.target, SKIP), tree(&l.staged, &[]))
}

fn check_failed_over(l: &Layout, bt: &Tree, bs: &Tree) {
    let mut after = tree(&l.target, SKIP);
    // Parents created for a kept path the staged system lacks (e.g. etc/network).
    after.retain(|p, i| {
        let created = i.kind == 'd'
            && !bs.contains_key(p)
            && KEPT.iter().any(|k| *k != p && under(k, p))
            && !KEPT.iter().any(|k| under(p, k));
        !created
    });
    assert_same(
        "target root after failover",
        &without_fstab(&after),
        &expected_after(bs, bt),
    );
    check_fstab(&l.target);
}

fn check_rolled_back(l: &Layout, bt: &Tree, bs: &Tree) {
    assert_same("target root after rollback", &tree(&l.target, SKIP), bt);
    assert_same("staging root after rollback", &tree(&l.staged, &[]), bs);
}

#[test]
fn debian_root_fails_over_and_rolls_back_exactly() {
    require_root();
    let debian = debian_root();
    let l = layout(|s| cp_a(&debian, s));
    let (bt, bs) = before(&l);
    let out = run_ok(&mut failover_cmd(&l), Some(&l.target));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["record"]["state"], "complete");
    assert_eq!(rep["record"]["seq"], 42);
    check_failed_over(&l, &bt, &bs);
    // The source's identity came with the tree; the target's kernel stayed.
    assert_eq!(
        std::fs::read(l.target.join("etc/hostname")).unwrap(),
        std::fs::read(debian.join("etc/hostname")).unwrap()
    );
    assert!(l.target.join("boot/vmlinuz-6.1.0-target").exists());
    assert!(l
        .target
        .join("usr/lib/modules/6.1.0-target/kernel/e1000.ko")
        .exists());
    // The record is in the state directory, which never moved.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.state.join("failover.json")).unwrap()).unwrap();
    assert_eq!(rec["state"], "complete");
    // A second failover is refused until rolled back.
    let out = run_code(&mut failover_cmd(&l), 1, None);
    assert!(stderr(&out).contains("--rollback"), "{}", stderr(&out));
    run_ok(&mut rollback_cmd(&l), Some(&l.target));
    check_rolled_back(&l, &bt, &bs);
}

#[test]
fn small_system_with_all_kinds_of_entries() {
    require_root();
    let l = layout(make_source_system);
    let (bt, bs) = before(&l);
    run_ok(&mut failover_cmd(&l), Some(&l.target));
    check_failed_over(&l, &bt, &bs);
    assert_eq!(
        std::fs::read_to_string(l.target.join("etc/hostname")).unwrap(),
        "production\n"
    );
    // retain (the default): the target's network configuration.
    assert!(
        std::fs::read_to_string(l.target.join("etc/network/interfaces"))
            .unwrap()
            .contains("198.18.0.2/24")
    );
    let fstab = std::fs::read_to_string(l.target.join("etc/fstab")).unwrap();
    assert!(
        fstab.contains("UUID=7777-source-data\t/data\txfs\tdefaults,nofail"),
        "{fstab}"
    );
    // The failed-over system creates a top-level entry; rollback sets it aside.
    write(&l.target.join("srv-new/file"), "written after failover");
    run_ok(&mut rollback_cmd(&l), Some(&l.target));
    check_rolled_back(&l, &bt, &bs);
    let created: Vec<_> = std::fs::read_dir(l.state.join("rollback"))
        .unwrap()
        .map(|e| e.unwrap().path().join("created/srv-new/file"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(created.len(), 1);
}

#[test]
fn network_source_mode_maps_nics() {
    require_root();
    let l = layout(make_source_system);
    std::fs::write(
        l.state.join("target-config.json"),
        r#"{"network_mode": "source", "nic_map": {"eth0": "ens3"}}"#,
    )
    .unwrap();
    run_ok(&mut failover_cmd(&l), Some(&l.target));
    let i = std::fs::read_to_string(l.target.join("etc/network/interfaces")).unwrap();
    assert!(
        i.contains("iface ens3 inet static\n    address 198.18.0.1/24"),
        "{i}"
    );
    assert!(!i.contains("198.18.0.2"), "{i}");
    run_ok(&mut rollback_cmd(&l), Some(&l.target));
    let i = std::fs::read_to_string(l.target.join("etc/network/interfaces")).unwrap();
    assert!(i.contains("198.18.0.2"), "{i}");
}

#[test]
fn network_add_mode_adds_source_addresses() {
    require_root();
    let l = layout(make_source_system);
    std::fs::write(
        l.state.join("target-config.json"),
        r#"{"network_mode": "add", "nic_map": {"eth0": "ens3"}}"#,
    )
    .unwrap();
    run_ok(&mut failover_cmd(&l), Some(&l.target));
    let i = std::fs::read_to_string(l.target.join("etc/network/interfaces")).unwrap();
    assert!(i.contains("address 198.18.0.2/24"), "{i}");
    assert!(
        i.contains("iface ens3 inet static\n    address 198.18.0.1/24"),
        "{i}"
    );
}

fn killed(out: &std::process::Output) -> bool {
    out.status.signal() == Some(9)
}

#[test]
fn crash_at_every_step_then_resume_or_rollback() {
    require_root();
    // How many steps the swap has.
    let l = layout(make_source_system);
    let (bt, bs) = before(&l);
    let out = run_ok(&mut failover_cmd(&l), None);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = rep["record"]["steps"].as_u64().unwrap() as usize;
    assert!(steps > 20, "{steps}");
    check_failed_over(&l, &bt, &bs);
    drop(l);
    let mut points = vec!["planned".to_string()];
    for i in 0..steps {
        points.push(format!("do-journal:{i}"));
        points.push(format!("do:{i}"));
    }
    for point in &points {
        for resume in [true, false] {
            let l = layout(make_source_system);
            let (bt, bs) = before(&l);
            let out = run(failover_cmd(&l).env("STANDIN_TEST_CRASH_AT", point));
            assert!(
                killed(&out),
                "crash point {point} was not reached: {}",
                stderr(&out)
            );
            if resume {
                run_ok(&mut failover_cmd(&l), Some(&l.target));
                check_failed_over(&l, &bt, &bs);
            } else {
                run_ok(&mut rollback_cmd(&l), Some(&l.target));
                check_rolled_back(&l, &bt, &bs);
            }
        }
    }
    // A crash during the rollback: running it again finishes it.
    for i in (0..steps).step_by(1) {
        for kind in ["undo-journal", "undo"] {
            let l = layout(make_source_system);
            let (bt, bs) = before(&l);
            run_ok(&mut failover_cmd(&l), None);
            let point = format!("{kind}:{i}");
            let out = run(rollback_cmd(&l).env("STANDIN_TEST_CRASH_AT", &point));
            assert!(
                killed(&out),
                "crash point {point} was not reached: {}",
                stderr(&out)
            );
            // failover is refused while the rollback is half done
            let out = run_code(&mut failover_cmd(&l), 1, None);
            assert!(stderr(&out).contains("--rollback"), "{}", stderr(&out));
            run_ok(&mut rollback_cmd(&l), Some(&l.target));
            check_rolled_back(&l, &bt, &bs);
        }
    }
}

#[test]
fn refuses_incomplete_mirror_without_yes() {
    require_root();
    let l = layout(make_source_system);
    make_state(&l.state, "src1", 7, false);
    let (bt, _) = before(&l);
    let out = run_code(failover_cmd(&l).stdin(std::process::Stdio::null()), 1, None);
    let err = stderr(&out);
    assert!(
        err.contains("mirror has not completed") && err.contains("--yes"),
        "{err}"
    );
    assert_same("target untouched", &tree(&l.target, SKIP), &bt);
    let out = run_ok(failover_cmd(&l).arg("--yes"), None);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rep["record"]["confirmed_missing"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn refuses_staging_on_another_filesystem() {
    require_root();
    let tmp = tempdir();
    let target = tmp.path().join("root");
    make_target_system(&target);
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let st = run(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&state));
    assert!(st.status.success(), "mount tmpfs: {}", stderr(&st));
    let staged = make_state(&state, "src1", 1, true);
    make_source_system(&staged);
    let bt = tree(&target, &[]);
    let out = run(standin()
        .args(["failover", "--no-reboot", "--state-dir"])
        .arg(&state)
        .arg("--target-root")
        .arg(&target));
    let _ = std::process::Command::new("umount").arg(&state).status();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another filesystem"),
        "{}",
        stderr(&out)
    );
    assert_same("target untouched", &tree(&target, &[]), &bt);
}

#[test]
fn refuses_target_root_that_is_not_a_directory() {
    require_root();
    let l = layout(make_source_system);
    let file = l.target.join("etc/hostname");
    let out = run(standin()
        .args(["failover", "--no-reboot", "--state-dir"])
        .arg(&l.state)
        .arg("--target-root")
        .arg(&file));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn graceful_waits_for_a_reachable_source_immediate_does_not() {
    require_root();
    let l = layout(make_source_system);
    // The source is alive (fresh heartbeat) and has cut change sets up to 45.
    let mut st = standin_staging::state::TargetState::load(&l.state).unwrap();
    st.last_heartbeat = Some(standin_staging::state::HeartbeatState {
        received_unix_ms: standin_staging::state::now_ms(),
        heartbeat: standin_link::message::Heartbeat {
            sent_unix_ms: 0,
            source_seq: 45,
            queue_sets: 3,
            queue_bytes: 4096,
            oldest_pending_unix_ms: None,
            ..Default::default()
        },
    });
    st.save(&l.state).unwrap();
    let (bt, _) = before(&l);
    let out = run_code(
        failover_cmd(&l).args(["--drain-timeout", "1", "--heartbeat-silence", "600"]),
        1,
        None,
    );
    assert!(stderr(&out).contains("not drained"), "{}", stderr(&out));
    assert_same("target untouched", &tree(&l.target, SKIP), &bt);
    // Immediate: the missing change sets are named, and --yes goes on.
    let out = run_code(
        failover_cmd(&l)
            .arg("--immediate")
            .stdin(std::process::Stdio::null()),
        1,
        None,
    );
    assert!(
        stderr(&out).contains("the last 3 change set(s) are missing"),
        "{}",
        stderr(&out)
    );
    run_ok(failover_cmd(&l).args(["--immediate", "--yes"]), None);
}

#[test]
fn reboots_with_the_given_command_after_the_swap() {
    require_root();
    let l = layout(make_source_system);
    let mark = l._tmp.path().join("rebooted");
    let out = run_ok(
        standin()
            .args(["failover", "--json", "--state-dir"])
            .arg(&l.state)
            .arg("--target-root")
            .arg(&l.target)
            .arg("--reboot-command")
            .arg(format!(
                "cat {}/etc/hostname > {}",
                l.target.display(),
                mark.display()
            )),
        None,
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["rebooted"], true);
    // The command ran after the swap: it saw the source's hostname.
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "production\n");
}

#[test]
fn state_dir_outside_the_target_root() {
    require_root();
    let tmp = tempdir();
    let target = tmp.path().join("root");
    make_target_system(&target);
    let state = tmp.path().join("state");
    let staged = make_state(&state, "src1", 4, true);
    make_source_system(&staged);
    let (bt, bs) = (tree(&target, &[]), tree(&staged, &[]));
    run_ok(
        standin()
            .args(["failover", "--no-reboot", "--state-dir"])
            .arg(&state)
            .arg("--target-root")
            .arg(&target),
        Some(&target),
    );
    let after = tree(&target, &[]);
    assert_same(
        "target root after failover",
        &without_fstab(&after),
        &expected_after(&bs, &bt),
    );
    run_ok(
        standin()
            .args(["failover", "--rollback", "--state-dir"])
            .arg(&state),
        Some(&target),
    );
    assert_same("target root after rollback", &tree(&target, &[]), &bt);
    assert_same("staging root after rollback", &tree(&staged, &[]), &bs);
}

#[test]
fn mount_points_in_the_target_root_stay() {
    require_root();
    let l = layout(|s| {
        make_source_system(s);
        write(&s.join("run/source-run-file"), "staged run");
    });
    let run_dir = l.target.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let m = run(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&run_dir));
    assert!(m.status.success(), "{}", stderr(&m));
    write(&run_dir.join("target-run-file"), "live");
    let (bt, _) = before(&l);
    let out = run(&mut failover_cmd(&l));
    let mounted_after = std::fs::read_to_string(run_dir.join("target-run-file"));
    let staged_kept = l.staged.join("run/source-run-file").exists();
    let rb = run(&mut rollback_cmd(&l));
    let after_rb = tree(&l.target, SKIP);
    let _ = std::process::Command::new("umount").arg(&run_dir).status();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/run is a mount point"),
        "{}",
        stderr(&out)
    );
    assert_eq!(mounted_after.unwrap(), "live");
    assert!(staged_kept, "the staged /run stays in the staging area");
    assert!(rb.status.success(), "{}", stderr(&rb));
    assert_same("target root after rollback", &after_rb, &bt);
}
