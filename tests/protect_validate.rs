//! `standin protect` refuses to start while validation finds errors (exit
//! 3, nothing mirrored); `--fix-all` applies the target's automatic fixes
//! over the link and then protects; a wrong `--trust` fingerprint is refused
//! before any data moves. Over loopback; needs root (owners in the replica).

mod protect_support;

use std::path::Path;

use protect_support::common::{require_root, run, run_code, stderr, tempdir};
use protect_support::*;

fn small_source(base: &Path) -> std::path::PathBuf {
    let src = base.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("usr/lib")).unwrap();
    std::fs::write(
        src.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian 12\"\n",
    )
    .unwrap();
    std::fs::write(src.join("etc/hostname"), "web1\n").unwrap();
    std::fs::write(src.join("usr/lib/data"), vec![7u8; 300_000]).unwrap();
    src
}

/// [`protect_cmd`] once, as source `web1`.
fn protect_once(addr: &str, id: &Path, trust: &str, root: &Path) -> std::process::Command {
    let mut c = protect_cmd(addr, id, trust, root);
    c.args(["--source-id", "web1", "--once"]);
    c
}

#[test]
fn validation_errors_refuse_protect_and_fix_all_fixes_them() {
    require_root();
    let d = tempdir();
    let src = small_source(d.path());
    // No boot loader on the target: an error no fix removes.
    let sides = Sides::new(d.path(), &src, false);
    let Sides {
        troot,
        tid,
        tf,
        sid,
        sf,
        state,
    } = &sides;
    std::fs::create_dir_all(state).unwrap();
    {
        let daemon = sides.serve(&d.path().join("d1.log"));
        let out = run_code(&mut protect_once(&daemon.addr, sid, tf, &src), 3, None);
        let text = protect_support::common::stdout(&out);
        assert!(text.contains("boot.loader"), "{text}");
        assert!(text.contains("nothing was mirrored"), "{text}");
        // --fix-all cannot fix it either.
        let out = run_code(
            protect_once(&daemon.addr, sid, tf, &src).args(["--fix-all", "--json"]),
            3,
            None,
        );
        let v = protect_json(&out);
        assert_eq!(v["started"], false);
        assert!(v["mirror"].is_null());
        assert!(!replica(state, "web1").exists(), "nothing was mirrored");
    }

    // The staging path configured on another filesystem (an ext4 image
    // mounted in the daemon's own mount namespace): an error with an
    // automatic fix.
    protect_support::common::require_tool("unshare", "util-linux");
    protect_support::common::require_tool("mkfs.ext4", "e2fsprogs");
    std::fs::create_dir_all(troot.join("boot/grub")).unwrap();
    let img = d.path().join("other-fs.img");
    let mnt = troot.join("srv/stage");
    std::fs::create_dir_all(&mnt).unwrap();
    protect_support::common::run_ok(
        std::process::Command::new("truncate")
            .args(["-s", "64M"])
            .arg(&img),
        None,
    );
    protect_support::common::run_ok(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img),
        None,
    );
    std::fs::write(
        state.join("target-config.json"),
        "{\"staging_path\": \"/srv/stage\"}\n",
    )
    .unwrap();
    let mut wrap = std::process::Command::new("unshare");
    wrap.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -o loop \"$0\" \"$1\" && shift && exec \"$@\"",
    ])
    .arg(&img)
    .arg(&mnt)
    .arg(protect_support::common::bin());
    let daemon = Daemon::start_cmd(
        wrap,
        state,
        tid,
        sf,
        "127.0.0.1:0",
        troot,
        &d.path().join("d2.log"),
    );
    let out = run_code(
        protect_once(&daemon.addr, sid, tf, &src).arg("--json"),
        3,
        None,
    );
    let v = protect_json(&out);
    let errors: Vec<_> = v["validation"]["before"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors, ["staging.same-fs"], "{v:#}");
    assert!(!replica(state, "web1").exists());

    let out = run(protect_once(&daemon.addr, sid, tf, &src).args(["--fix-all", "--json"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        protect_support::common::stdout(&out),
        stderr(&out)
    );
    let v = protect_json(&out);
    assert_eq!(v["started"], true);
    assert!(
        v["validation"]["fixes"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["changed"] == true),
        "{v:#}"
    );
    assert!(
        v["validation"]["after"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] != "error"),
        "{v:#}"
    );
    let cfg = std::fs::read_to_string(state.join("target-config.json")).unwrap();
    assert!(
        !cfg.contains("/srv/stage"),
        "the fix moved the staging path: {cfg}"
    );
    assert_eq!(v["mirror"]["complete"], true, "{v:#}");
    assert_same_tree(&src, &replica(state, "web1"));
    assert_eq!(status_json(state)["state"], "protected");
}

#[test]
fn wrong_trust_is_refused_before_data_moves() {
    require_root();
    let d = tempdir();
    let src = small_source(d.path());
    let (
        Sides {
            tid, sid, state, ..
        },
        daemon,
    ) = loopback(d.path(), &src, true);
    let (_other, of) = keys(d.path(), "impostor");
    let out = run_code(&mut protect_once(&daemon.addr, &sid, &of, &src), 1, None);
    let err = stderr(&out);
    assert!(
        err.contains("certificate") || err.contains("fingerprint"),
        "{err}"
    );
    assert!(!replica(&state, "web1").exists(), "nothing was mirrored");
    let state_json = std::fs::read_to_string(state.join("state.json")).unwrap_or_default();
    assert!(
        !state_json.contains("web1"),
        "the source was never bound: {state_json}"
    );
    // And the target refuses a source it does not trust.
    let (stranger, _) = keys(d.path(), "stranger");
    let tf = std::fs::read_to_string(tid.join("cert.pem"))
        .ok()
        .map(|_| ());
    assert!(tf.is_some());
    let target_fpr = protect_support::common::stdout(&protect_support::common::run_ok(
        protect_support::common::standin()
            .args(["keys", "show", "--dir"])
            .arg(&tid),
        None,
    ))
    .trim()
    .to_string();
    let out = run_code(
        &mut protect_once(&daemon.addr, &stranger, &target_fpr, &src),
        1,
        None,
    );
    assert!(!replica(&state, "web1").exists(), "{}", stderr(&out));
}
