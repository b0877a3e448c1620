//! `standin demo`: the whole story runs on this machine in a temp dir
//! (root: the demo builds trees with owners and runs the failover swap).
//! One run without the qemu boot checks every step's marker, the
//! failed-over hostname and the rollback; one with the boot checks the
//! console line of the failed-over system.

mod common;

use std::path::Path;

use common::*;

/// Run the demo in `dir` with `extra` arguments and `--json`; returns its
/// stdout and the JSON report (the last JSON object printed).
fn demo(dir: &Path, extra: &[&str]) -> (String, serde_json::Value) {
    let out = run_ok(
        standin()
            .arg("demo")
            .args(extra)
            .arg("--json")
            .arg("--dir")
            .arg(dir),
        Some(dir),
    );
    let text = stdout(&out);
    let start = text
        .rfind("\n{\n")
        .unwrap_or_else(|| panic!("no JSON report at the end:\n{text}"));
    let report: serde_json::Value = serde_json::from_str(&text[start + 1..])
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{text}"));
    (text, report)
}

fn step_results(report: &serde_json::Value) -> Vec<(u64, String)> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["number"].as_u64().unwrap(),
                s["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn demo_without_boot_fails_over_and_rolls_back() {
    require_root();
    require_tool("busybox", "busybox-static");
    let d = tempdir();
    let dir = d.path().join("demo");
    let (text, report) = demo(&dir, &["--no-boot"]);
    for n in 1..=10 {
        assert!(
            text.contains(&format!("== step {n}: ")),
            "step {n} missing:\n{text}"
        );
    }
    for cmd in [
        "$ standin keys init --dir",
        "$ standin target serve --listen 127.0.0.1:0",
        "$ standin validate --source",
        "$ standin protect --target 127.0.0.1:",
        "$ standin status --heartbeat-silence 5 --state-dir",
        "$ standin failover --state-dir",
        "$ standin failover --rollback",
        "$ standin target seed --state-dir",
        "--source-id demo-source --exclude '/var/lib/standin/**' --once",
    ] {
        assert!(text.contains(cmd), "no `{cmd}` line:\n{text}");
    }
    assert!(text.contains("state: Protected"), "{text}");
    assert!(text.contains("failover condition met"), "{text}");
    assert!(
        text.contains("hostname in the target root: demo-source"),
        "{text}"
    );
    assert!(
        text.contains("hostname in the target root: demo-target"),
        "{text}"
    );
    assert!(text.contains("demo: every step passed."), "{text}");
    assert_eq!(report["ok"], true, "{report}");
    let mut want: Vec<(u64, String)> = (1..=10).map(|n| (n, "passed".to_string())).collect();
    want[8].1 = "skipped".into();
    assert_eq!(step_results(&report), want, "{text}");

    // The files agree with what the demo said: the standby is itself again,
    // and its staging area holds the source's changed data.
    let target = dir.join("target-root");
    assert_eq!(
        std::fs::read_to_string(target.join("etc/hostname")).unwrap(),
        "demo-target\n"
    );
    let staged = target.join("var/lib/standin/staging/demo-source/root");
    assert_eq!(
        std::fs::read(staged.join("srv/data/data.txt")).unwrap(),
        std::fs::read(dir.join("source-root/srv/data/data.txt")).unwrap()
    );
    assert!(staged.join("srv/data/orders-today.txt").is_file());
    // The failback: the old source has the data written on the standby.
    let written = "srv/data/orders-while-failed-over.txt";
    assert_eq!(
        std::fs::read(dir.join("source-root").join(written)).unwrap(),
        std::fs::read(staged.join(written)).unwrap()
    );
    assert!(
        text.contains("hostname in the old source's root: demo-source"),
        "{text}"
    );
    // No background command is left running from this demo.
    let ps = run_ok(std::process::Command::new("ps").args(["-eo", "args"]), None);
    let dir_s = dir.display().to_string();
    assert!(
        !stdout(&ps)
            .lines()
            .any(|l| l.contains("standin") && l.contains(&dir_s) && !l.contains(" demo ")),
        "a demo process is still running:\n{}",
        stdout(&ps)
    );
}

#[test]
fn demo_boots_the_failed_over_system_as_the_source() {
    require_root();
    require_tool("busybox", "busybox-static");
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("mke2fs", "e2fsprogs");
    require_tool("mkfs.vfat", "dosfstools");
    require_tool("sgdisk", "gdisk");
    let d = tempdir();
    let dir = d.path().join("demo");
    let (text, report) = demo(&dir, &[]);
    assert!(text.contains("$ standin image disk --root"), "{text}");
    assert!(
        text.contains("$ standin image boot") && text.contains("--expect STANDIN-BOOTED"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("console: STANDIN-BOOTED"))
        .unwrap_or_else(|| panic!("no console line:\n{text}"));
    assert!(line.contains("host=demo-source"), "{line}");
    // The digest on the console is the source's data file as changed by the demo.
    let data = std::fs::read(dir.join("source-root/srv/data/data.txt")).unwrap();
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(&data));
    assert!(line.contains(&format!("data={digest}")), "{line}\n{text}");
    assert_eq!(report["ok"], true, "{report}");
    assert!(step_results(&report).iter().all(|(_, r)| r == "passed"));
}
