//! A failed-over target root boots as the source (root, qemu): the target
//! runs its own small busybox system "standby", the staged system is the
//! demo source ("demo-source"); after `standin failover --no-reboot` the
//! root is built into a disk with `standin image disk --root` and booted
//! with `standin image boot --expect`: the serial console shows the
//! source's hostname and the digest of the source's data.

mod common;
mod disk_support;

use common::*;
use disk_support::*;

#[test]
fn failed_over_root_boots_as_the_source() {
    require_root();
    require_disk_tools();
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempdir();
    let target = dir.path().join("root");
    std::fs::create_dir(&target).unwrap();
    busybox_tree(&target, "standby", "poweroff");
    let state = target.join("var/lib/standin");
    let staged = state.join("staging/demo-source/root");
    std::fs::create_dir_all(&staged).unwrap();
    for sub in ["journal", "snapshots", "rollback"] {
        std::fs::create_dir_all(state.join(sub)).unwrap();
    }
    let data = busybox_tree(&staged, "demo-source", "poweroff");
    standin_staging::state::TargetState {
        format: 1,
        source_id: Some("demo-source".into()),
        last_applied_seq: 9,
        mirror_complete: true,
        ..Default::default()
    }
    .save(&state)
    .unwrap();

    run_ok(
        standin()
            .args(["failover", "--no-reboot", "--state-dir"])
            .arg(&state)
            .arg("--target-root")
            .arg(&target),
        Some(&target),
    );
    assert_eq!(
        std::fs::read_to_string(target.join("etc/hostname")).unwrap(),
        "demo-source\n"
    );
    let disk = dir.path().join("failed-over.img");
    run_ok(
        standin()
            .args(["image", "disk", "--root"])
            .arg(&target)
            .arg("-o")
            .arg(&disk),
        Some(dir.path()),
    );
    let log = dir.path().join("serial.log");
    let out = run_ok(
        standin()
            .args(["image", "boot"])
            .arg(&disk)
            .args(["--expect", "STANDIN-BOOTED", "--timeout", "900", "--log"])
            .arg(&log),
        Some(dir.path()),
    );
    let line = stdout(&out);
    assert!(line.contains("host=demo-source"), "{line}");
    assert!(
        line.contains(&format!("data={}", sha256_hex(&data))),
        "{line}"
    );
    assert_no_qemu_left(&disk);
}
