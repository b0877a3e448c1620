//! `--fix-all` on a target state directory: fixes what it claims, the
//! second validation is clean, fixes are idempotent, `--dry-run` changes
//! nothing, and `--undo-fixes` restores the state directory byte for byte.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profiles")
        .join(name)
}

/// Every file under `dir` with its bytes and mode; directories by mode.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if m.is_dir() {
                out.insert(rel, (m.permissions().mode(), None));
                stack.push(p);
            } else {
                out.insert(
                    rel,
                    (m.permissions().mode(), Some(std::fs::read(&p).unwrap())),
                );
            }
        }
    }
    out
}

fn validate(state: &Path, target: &Path) -> std::process::Command {
    let mut c = common::standin();
    c.arg("validate")
        .arg("--source")
        .arg(fixture("source.json"))
        .arg("--target")
        .arg(target)
        .arg("--target-state-dir")
        .arg(state);
    c
}

fn json_out(c: &mut std::process::Command, code: i32, dir: &Path) -> Value {
    let out = common::run_code(c.arg("--json"), code, Some(dir));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn severity(v: &Value, id: &str) -> String {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {v}"))["severity"]
        .as_str()
        .unwrap()
        .to_string()
}

fn fix_cycle(state: &Path) {
    let target = fixture("target.json");
    let before = snapshot(state);

    // Plain validation: the staging path is on /srv (error), postgresql runs
    // on the target only (warning).
    let v = json_out(&mut validate(state, &target), 3, state);
    assert_eq!(severity(&v, "staging.same-fs"), "error");
    assert_eq!(severity(&v, "services.target-running"), "warning");

    // Dry run: the plan, and nothing changes.
    let out = common::run_code(
        validate(state, &target).args(["--fix-all", "--dry-run"]),
        3,
        Some(state),
    );
    let text = common::stdout(&out);
    assert!(
        text.contains("would change: set staging_path to /var/lib/standin/staging"),
        "{text}"
    );
    assert!(
        text.contains("would change: added postgresql.service to services_to_stop"),
        "{text}"
    );
    assert!(text.contains("dry run: nothing was changed"), "{text}");
    assert_eq!(
        snapshot(state),
        before,
        "--dry-run changed the state directory"
    );

    // Fix all: before and after, after is clean.
    let out = common::run_code(validate(state, &target).arg("--fix-all"), 0, Some(state));
    let text = common::stdout(&out);
    let (b, a) = text.split_once("after fixes:").expect("before and after");
    assert!(
        b.contains("before fixes:") && b.contains("1 error(s), 1 warning(s)"),
        "{text}"
    );
    assert!(
        b.contains("changed: set staging_path to /var/lib/standin/staging"),
        "{text}"
    );
    assert!(a.contains("0 error(s), 0 warning(s)"), "{text}");
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(state.join("target-config.json")).unwrap()).unwrap();
    assert_eq!(cfg["staging_path"], "/var/lib/standin/staging");
    assert_eq!(cfg["services_to_stop"], json!(["postgresql.service"]));
    assert!(state.join("fixes-undo.json").exists());
    let fixed = snapshot(state);

    // The second validation reads the fixed state: clean.
    let v = json_out(&mut validate(state, &target), 0, state);
    assert_eq!(severity(&v, "staging.same-fs"), "ok");
    assert_eq!(severity(&v, "services.target-running"), "ok");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] == "ok"),
        "{v}"
    );

    // Idempotent: a second --fix-all changes nothing.
    let v = json_out(validate(state, &target).arg("--fix-all"), 0, state);
    assert_eq!(v["applied"], json!([]), "{v}");
    assert_eq!(
        snapshot(state),
        fixed,
        "second --fix-all changed the state directory"
    );

    // Undo: byte for byte what was there before.
    let out = common::run_ok(
        common::standin()
            .args(["validate", "--undo-fixes", "--target-state-dir"])
            .arg(state),
        Some(state),
    );
    assert!(common::stdout(&out).contains("fixes undone"));
    assert_eq!(
        snapshot(state),
        before,
        "--undo-fixes did not restore the state directory"
    );
    let out = common::run_code(
        common::standin()
            .args(["validate", "--undo-fixes", "--target-state-dir"])
            .arg(state),
        1,
        Some(state),
    );
    assert!(common::stderr(&out).contains("no fixes to undo"));
}

#[test]
fn fix_all_then_undo_on_a_fresh_state_dir() {
    let dir = common::tempdir();
    fix_cycle(dir.path());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "fresh dir is empty again"
    );
}

#[test]
fn fix_all_then_undo_keeps_other_configuration_exactly() {
    let dir = common::tempdir();
    let cfg = dir.path().join("target-config.json");
    // Odd formatting and an unknown field: undo must restore these bytes.
    std::fs::write(
        &cfg,
        b"{ \"listen\":\"127.0.0.1:6320\",\n  \"staging_path\": \"/srv/standin/staging\" }",
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir(dir.path().join("journal")).unwrap();
    std::fs::write(dir.path().join("state.json"), b"{\"seq\": 7}\n").unwrap();
    fix_cycle(dir.path());
}

#[test]
fn fix_all_fixes_the_target_profile_collected_on_this_machine() {
    // The real target: this machine, with its staging path put on a
    // separate (fake) volume in its profile; everything else made equal.
    let dir = common::tempdir();
    let out = common::run_ok(common::standin().args(["profile", "--json"]), None);
    let mut t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut s = t.clone();
    s["hostname"] = json!("source-host");
    s["boot_loader"] = json!("grub");
    t["boot_loader"] = json!("grub");
    let root_free = t["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["mount_point"] == "/")
        .unwrap()["free_bytes"]
        .clone();
    for v in s["volumes"].as_array_mut().unwrap() {
        v["free_bytes"] = json!(0);
        v["used_bytes"] = json!(1 << 20);
    }
    t["volumes"].as_array_mut().unwrap().push(json!({"mount_point": "/srv", "fs_type": "xfs", "size_bytes": 1u64 << 40, "used_bytes": 0, "free_bytes": 1u64 << 40}));
    t["staging"] = json!({"path": "/srv/staging", "mount_point": "/srv", "free_bytes": 1u64 << 40, "same_fs_as_root": false});
    if t["nics"].as_array().unwrap().is_empty() {
        t["nics"] = json!([{"name": "eth0", "mac": null, "addresses": []}]);
        s["nics"] = t["nics"].clone();
    }
    let (sp, tp) = (dir.path().join("s.json"), dir.path().join("t.json"));
    std::fs::write(&sp, s.to_string()).unwrap();
    std::fs::write(&tp, t.to_string()).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut c = common::standin();
    c.arg("validate")
        .arg("--source")
        .arg(&sp)
        .arg("--target")
        .arg(&tp)
        .arg("--target-state-dir")
        .arg(&state);
    let v = json_out(c.arg("--fix-all"), 0, dir.path());
    assert_eq!(severity(&v["before"], "staging.same-fs"), "error");
    assert_eq!(severity(&v, "staging.same-fs"), "ok");
    let cap = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "capacity.staging")
        .unwrap();
    assert!(
        cap["message"]
            .as_str()
            .unwrap()
            .contains(&format!("has {root_free} bytes")),
        "staging facts come from the fixed configuration (the root volume): {cap}"
    );
}

#[test]
fn rollback_area_counts_as_reclaimable() {
    let dir = common::tempdir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("rollback/etc")).unwrap();
    std::fs::write(state.join("rollback/etc/big"), vec![7u8; 3 << 20]).unwrap();
    let reclaim: u64 = {
        use std::os::unix::fs::MetadataExt;
        ["rollback", "rollback/etc", "rollback/etc/big"]
            .iter()
            .map(|p| std::fs::metadata(state.join(p)).unwrap().blocks() * 512)
            .sum()
    };
    assert!(reclaim >= 3 << 20);
    // Source system data: 10 MiB; target staging: 8 MiB free. Fits only with
    // the 3 MiB rollback area.
    let mut s: Value =
        serde_json::from_slice(&std::fs::read(fixture("source.json")).unwrap()).unwrap();
    let mut t: Value =
        serde_json::from_slice(&std::fs::read(fixture("target.json")).unwrap()).unwrap();
    s["volumes"] = json!([{"mount_point": "/", "fs_type": "ext4", "size_bytes": 10u64 << 20, "used_bytes": 10u64 << 20, "free_bytes": 0}]);
    t["volumes"] = json!([{"mount_point": "/", "fs_type": "ext4", "size_bytes": 9u64 << 20, "used_bytes": 1u64 << 20, "free_bytes": 8u64 << 20}]);
    t["services"] = json!([]);
    t.as_object_mut().unwrap().remove("staging");
    let (sp, tp) = (dir.path().join("s.json"), dir.path().join("t.json"));
    std::fs::write(&sp, s.to_string()).unwrap();
    std::fs::write(&tp, t.to_string()).unwrap();
    let cmd = || {
        let mut c = common::standin();
        c.arg("validate")
            .arg("--source")
            .arg(&sp)
            .arg("--target")
            .arg(&tp);
        c
    };
    let v = json_out(&mut cmd(), 3, dir.path());
    assert_eq!(severity(&v, "capacity.staging"), "error");
    let v = json_out(cmd().arg("--target-state-dir").arg(&state), 0, dir.path());
    let cap = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "capacity.staging")
        .unwrap();
    assert_eq!(cap["severity"], "warning");
    let msg = cap["message"].as_str().unwrap();
    assert!(msg.contains(&format!("with {reclaim} bytes")), "{msg}");
    assert!(
        msg.contains(&format!("{} bytes (2.0 MiB) short", 2u64 << 20)),
        "{msg}"
    );
}
