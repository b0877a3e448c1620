//! `standin validate` and `standin profile` from the outside: exit codes,
//! JSON shape, table, bad profile files, addresses, help.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profiles")
        .join(name)
}

fn validate(source: &Path, target: &Path) -> std::process::Command {
    let mut c = common::standin();
    c.arg("validate")
        .arg("--source")
        .arg(source)
        .arg("--target")
        .arg(target);
    c
}

#[test]
fn json_has_exactly_the_documented_finding_shape_and_exit_3_on_errors() {
    let out = common::run_code(
        validate(&fixture("source.json"), &fixture("target.json")).arg("--json"),
        3,
        None,
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let findings = v["findings"].as_array().expect("findings array");
    assert!(findings.len() >= 14, "{v}");
    for f in findings {
        let mut keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["details", "fix", "id", "message", "severity"], "{f}");
        let mut fk: Vec<&str> = f["fix"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fk.sort();
        assert_eq!(fk, ["auto", "description"], "{f}");
        assert!(["ok", "warning", "error"].contains(&f["severity"].as_str().unwrap()));
        assert!(f["fix"]["auto"].is_boolean());
    }
    let same_fs = findings
        .iter()
        .find(|f| f["id"] == "staging.same-fs")
        .unwrap();
    assert_eq!(same_fs["severity"], "error");
    assert_eq!(same_fs["fix"]["auto"], true);
}

#[test]
fn exit_0_without_errors_and_plain_words_off_a_terminal() {
    let out = common::run_code(
        &mut validate(&fixture("source.json"), &fixture("source.json")),
        0,
        None,
    );
    let text = common::stdout(&out);
    assert!(
        !text.contains('\x1b') && !text.contains('✔'),
        "no colour or marks off a terminal:\n{text}"
    );
    assert!(text.contains("ok       os.match"), "{text}");
    // Same host name on both: a warning, and warnings alone exit 0.
    assert!(text.contains("warning  hostname"), "{text}");
    assert!(text.contains("warning  capacity.staging"), "{text}");
    assert!(text.contains("0 error(s), 2 warning(s)"), "{text}");
}

#[test]
fn bad_profile_files_name_the_file_and_the_field() {
    for (file, want) in [
        ("not-json.json", "not JSON"),
        ("missing-field.json", "field `os.version_id` is missing"),
        (
            "wrong-type.json",
            "field `volumes[1].size_bytes`: invalid type: string \"20 GiB\", expected u64",
        ),
        (
            "unknown-schema.json",
            "field `schema`: unknown schema version \"standin.profile/2\"",
        ),
    ] {
        let p = fixture(file);
        let out = common::run_code(&mut validate(&fixture("source.json"), &p), 1, None);
        let err = common::stderr(&out);
        assert!(
            err.contains(&format!("loading profile {}", p.display())),
            "{file}: {err}"
        );
        assert!(err.contains(want), "{file}: want {want:?} in {err}");
        // The source side is named just as well.
        let out = common::run_code(&mut validate(&p, &fixture("target.json")), 1, None);
        assert!(common::stderr(&out).contains(file));
    }
    let out = common::run_code(
        &mut validate(Path::new("/nonexistent/x.json"), &fixture("target.json")),
        1,
        None,
    );
    assert!(common::stderr(&out).contains("reading profile /nonexistent/x.json"));
}

#[test]
fn addresses_need_an_identity_and_a_fingerprint() {
    let mut c = common::standin();
    c.args(["validate", "--target", "198.18.0.2:6320", "--source"])
        .arg(fixture("source.json"));
    let out = common::run_code(&mut c, 1, None);
    assert!(
        common::stderr(&out)
            .contains("198.18.0.2:6320 is a network address: pass --identity DIR and --trust FPR"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let mut c = common::standin();
    c.args(["validate", "--source", "a.json"]);
    common::run_code(&mut c, 2, None);
    let mut c = validate(&fixture("source.json"), &fixture("target.json"));
    c.arg("--fix-all");
    let out = common::run_code(&mut c, 2, None);
    assert!(common::stderr(&out).contains("--target-state-dir"));
}

#[test]
fn help_has_examples() {
    for cmd in ["validate", "profile"] {
        let out = common::run_ok(common::standin().args([cmd, "--help"]), None);
        let text = common::stdout(&out);
        assert!(
            text.contains("Examples:") && text.contains(&format!("standin {cmd}")),
            "{text}"
        );
    }
}

#[test]
fn profile_of_this_machine_and_of_a_tree() {
    let out = common::run_ok(common::standin().args(["profile", "--json"]), None);
    let me: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["schema"], "standin.profile/1");
    assert_eq!(me["arch"], std::env::consts::ARCH);
    assert!(me["cpus"].as_u64().unwrap() >= 1);
    assert!(me["memory_bytes"].as_u64().unwrap() > 0);
    let root = me["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["mount_point"] == "/")
        .expect("a / volume");
    assert!(root["size_bytes"].as_u64().unwrap() > 0);
    assert!(root["free_bytes"].as_u64().unwrap() <= root["size_bytes"].as_u64().unwrap());
    assert_eq!(me["standin_version"], env!("CARGO_PKG_VERSION"));
    assert!(me["staging"]["same_fs_as_root"].is_boolean());
    // The profile it prints loads back.
    standin_validate::Profile::from_json(&out.stdout, "stdout").expect("round trip");

    let tree = common::debian_root();
    let out = common::run_ok(
        common::standin()
            .args(["profile", "--json", "--root"])
            .arg(&tree),
        None,
    );
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (t["os"]["id"].as_str(), t["os"]["version_id"].as_str()),
        (Some("debian"), Some("12"))
    );
    assert_eq!(
        t["hostname"],
        std::fs::read_to_string(tree.join("etc/hostname"))
            .unwrap()
            .trim()
    );
    let used = t["volumes"][0]["used_bytes"].as_u64().unwrap();
    assert!(
        used > 50 << 20 && used < 2 << 30,
        "a minbase tree's own size, not the disk's: {used}"
    );
    let out = common::run_ok(
        common::standin().args(["profile", "--root"]).arg(&tree),
        None,
    );
    assert!(common::stdout(&out).contains("debian 12"));
}

#[test]
fn marks_and_colour_on_a_terminal_unless_no_color() {
    let script = common::require_tool("script", "bsdutils");
    let line = format!(
        "{} validate --source {} --target {}",
        common::bin().display(),
        fixture("source.json").display(),
        fixture("target.json").display()
    );
    // `script` runs the command on a pseudo-terminal.
    let tty = |no_color: Option<&str>| {
        let mut c = std::process::Command::new(&script);
        c.args(["-qec", &line, "/dev/null"])
            .env_remove("NO_COLOR")
            .env_remove("STANDIN_LOG");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = common::run_code(&mut c, 3, None);
        common::stdout(&out)
    };
    let text = tty(None);
    assert!(text.contains("\x1b[32m✔ ok"), "{text}");
    assert!(text.contains("\x1b[31m✖ error"), "{text}");
    assert!(text.contains("\x1b[33m! warning"), "{text}");
    let text = tty(Some("1"));
    assert!(!text.contains('\x1b') && !text.contains('✔'), "{text}");
    assert!(text.contains("error    staging.same-fs"), "{text}");
}

#[test]
fn missing_state_dir_is_an_error() {
    let mut c = validate(&fixture("source.json"), &fixture("target.json"));
    c.args(["--target-state-dir", "/nonexistent/standin-state"]);
    let out = common::run_code(&mut c, 1, None);
    assert!(
        common::stderr(&out)
            .contains("target state directory /nonexistent/standin-state does not exist"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn profile_reads_the_state_dir_and_staging_path() {
    use std::os::unix::fs::MetadataExt;
    let dir = common::tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(
        tree.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    std::fs::write(tree.join("etc/hostname"), "standby\n").unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("rollback")).unwrap();
    std::fs::write(state.join("rollback/old"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(
        state.join("target-config.json"),
        r#"{"staging_path": "/srv/stage", "services_to_stop": ["x.service"]}"#,
    )
    .unwrap();
    let reclaim: u64 = ["rollback", "rollback/old"]
        .iter()
        .map(|p| std::fs::metadata(state.join(p)).unwrap().blocks() * 512)
        .sum();

    let out = common::run_ok(
        common::standin()
            .args(["profile", "--json", "--root"])
            .arg(&tree)
            .arg("--state-dir")
            .arg(&state),
        Some(dir.path()),
    );
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["hostname"], "standby");
    assert_eq!(p["staging"]["path"], "/srv/stage");
    assert_eq!(p["staging"]["same_fs_as_root"], true);
    assert_eq!(p["staging"]["mount_point"], "/");
    assert_eq!(p["reclaimable_bytes"], reclaim);
    assert_eq!(p["services_to_stop"], serde_json::json!(["x.service"]));

    // --staging-path wins over the state directory's.
    let out = common::run_ok(
        common::standin()
            .args([
                "profile",
                "--json",
                "--staging-path",
                "/elsewhere",
                "--root",
            ])
            .arg(&tree)
            .arg("--state-dir")
            .arg(&state),
        Some(dir.path()),
    );
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["staging"]["path"], "/elsewhere");
}
