//! Disks boot in qemu (software emulation) and their init reports the
//! hostname and the data digest read from the tree at boot.

mod common;
mod disk_support;

use std::path::Path;

use common::*;
use disk_support::*;

/// Boot `disk` with `standin image boot --expect STANDIN-BOOTED` and return
/// the line it printed.
fn boot_expect(disk: &Path, dir: &Path) -> String {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let log = dir.join(format!(
        "{}.serial.log",
        disk.file_name().unwrap().to_string_lossy()
    ));
    let out = run_ok(
        boot_cmd(disk, "STANDIN-BOOTED", 900).arg("--log").arg(&log),
        Some(dir),
    );
    let line = stdout(&out).trim().to_string();
    assert!(line.contains("STANDIN-BOOTED"), "stdout: {line}");
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains(&line), "the serial log holds the line");
    line
}

fn demo_recipe_boots(format: &str) {
    require_disk_tools();
    let dir = tempdir();
    let disk = dir.path().join(format!("demo-source.{format}"));
    run_ok(
        standin()
            .args(["image", "disk", "--recipe"])
            .arg(images_dir().join("demo-source.toml"))
            .arg("-o")
            .arg(&disk)
            .args(["--format", format]),
        Some(dir.path()),
    );
    let scratch = tempdir();
    check_disk(&disk, scratch.path());
    if format == "raw" {
        // A disk moved to a machine without its build kernel boots with the
        // kernel and initrd it carries on its ESP.
        let json = std::path::PathBuf::from(format!("{}.json", disk.display()));
        let mut m = manifest(&disk);
        m["boot"]["kernel"] = "/nonexistent/vmlinuz-0".into();
        m["boot"]["initrd"] = "/nonexistent/initrd.img-0".into();
        std::fs::write(&json, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    }
    let data = std::fs::read(images_dir().join("demo-source/data.txt")).unwrap();
    let line = boot_expect(&disk, dir.path());
    assert!(line.contains("host=demo-source"), "{line}");
    assert!(
        line.contains(&format!("data={}", sha256_hex(&data))),
        "{line}"
    );
    assert_no_qemu_left(&disk);
}

#[test]
fn demo_recipe_raw_boots_and_reports() {
    demo_recipe_boots("raw");
}

#[test]
fn demo_recipe_qcow2_boots_and_reports() {
    demo_recipe_boots("qcow2");
}

#[test]
fn root_tree_boots_and_reports_its_own_values() {
    require_root();
    require_disk_tools();
    let dir = tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let data = busybox_tree(&tree, "rooted-tree", "poweroff");
    let disk = dir.path().join("tree.img");
    run_ok(&mut disk_from_root(&tree, &disk), Some(dir.path()));
    let scratch = tempdir();
    check_disk(&disk, scratch.path());
    let line = boot_expect(&disk, dir.path());
    assert!(line.contains("host=rooted-tree"), "{line}");
    assert!(
        line.contains(&format!("data={}", sha256_hex(&data))),
        "{line}"
    );
    assert_no_qemu_left(&disk);

    // The same disk without an init: the boot fails with the console's last lines.
    std::fs::remove_file(tree.join("sbin/init")).unwrap();
    let broken = dir.path().join("broken.img");
    run_ok(&mut disk_from_root(&tree, &broken), Some(dir.path()));
    let out = run_code(
        &mut boot_cmd(&broken, "STANDIN-BOOTED", 900),
        1,
        Some(dir.path()),
    );
    let err = stderr(&out);
    assert!(err.contains("waiting for \"STANDIN-BOOTED\""), "{err}");
    assert!(
        err.contains("init"),
        "the last console lines name the missing init: {err}"
    );
    assert_no_qemu_left(&broken);
}

#[test]
fn timeout_and_signals_leave_no_qemu() {
    require_disk_tools();
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempdir();
    let disk = dir.path().join("quick.img");
    run_ok(
        standin()
            .args(["image", "disk", "--recipe"])
            .arg(images_dir().join("demo-source.toml"))
            .arg("-o")
            .arg(&disk),
        Some(dir.path()),
    );
    // A timeout fails with the console's last lines and stops qemu.
    let out = run_code(
        &mut boot_cmd(&disk, "NEVER-PRINTED", 3),
        1,
        Some(dir.path()),
    );
    assert!(stderr(&out).contains("3 s passed"), "{}", stderr(&out));
    assert_no_qemu_left(&disk);

    // SIGTERM to `standin image boot` stops qemu too.
    let mut child = boot_cmd(&disk, "NEVER-PRINTED", 600)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = false;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if processes_mentioning(&disk.display().to_string())
            .iter()
            .any(|(_, c)| c.contains("qemu-system"))
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "qemu did not start");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_no_qemu_left(&disk);
}

#[test]
fn demo_recipe_boots_by_itself_under_uefi() {
    require_disk_tools();
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    assert!(
        Path::new("/usr/share/ovmf/OVMF.fd").is_file(),
        "OVMF is missing; install it with: apt-get install -y ovmf"
    );
    assert!(
        Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").is_file(),
        "systemd-boot is missing; install it with: apt-get install -y systemd-boot-efi"
    );
    let dir = tempdir();
    let disk = dir.path().join("uefi.img");
    run_ok(
        standin()
            .args(["image", "disk", "--recipe"])
            .arg(images_dir().join("demo-source.toml"))
            .arg("-o")
            .arg(&disk),
        Some(dir.path()),
    );
    assert_eq!(manifest(&disk)["boot"]["uefi"], true);
    // No external kernel: OVMF starts systemd-boot from the ESP, which
    // starts the kernel and initrd stored there.
    let out = run_ok(
        boot_cmd(&disk, "STANDIN-BOOTED", 900).arg("--uefi"),
        Some(dir.path()),
    );
    let data = std::fs::read(images_dir().join("demo-source/data.txt")).unwrap();
    let line = stdout(&out);
    assert!(line.contains("host=demo-source"), "{line}");
    assert!(
        line.contains(&format!("data={}", sha256_hex(&data))),
        "{line}"
    );
    assert_no_qemu_left(&disk);
}
