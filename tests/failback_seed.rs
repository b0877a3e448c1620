//! `standin target seed` (root): the seeded staging area equals the live
//! tree exactly (independent comparison: lstat fields, xattrs, content,
//! hard-link groups), with hard links on ext4 and reflinks on a
//! loop-mounted XFS, and the refusals.

mod common;
mod failover_support;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use failover_support::{assert_same, make_source_system, tree};

fn seed(state: &Path, from: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args([
                "target",
                "seed",
                "--json",
                "--source-id",
                "web-01",
                "--state-dir",
            ])
            .arg(state)
            .arg("--from-root")
            .arg(from)
            .args(extra),
        None,
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `standin target seed` as source `id` that must fail (exit 1): its stderr.
fn refused(id: &str, state: &Path, from: &Path, extra: &[&str]) -> String {
    let out = run_code(
        standin()
            .args(["target", "seed", "--source-id", id])
            .args(extra)
            .arg("--state-dir")
            .arg(state)
            .arg("--from-root")
            .arg(from),
        1,
        None,
    );
    stderr(&out)
}

fn staged(state: &Path) -> PathBuf {
    state.join("staging/web-01/root")
}

/// Seed `base/live` into `base/state`; check the method and the exact tree;
/// then write into the staging area and check the live file did not change.
fn scenario(base: &Path, method: &str) {
    let live = base.join("live");
    std::fs::create_dir(&live).unwrap();
    make_source_system(&live);
    std::fs::create_dir_all(live.join("var/cache/big")).unwrap();
    std::fs::write(live.join("var/cache/big/blob"), "left out").unwrap();
    let state = base.join("state");
    let want = tree(&live, &["var/cache/big"]);
    let r = seed(&state, &live, &["--exclude", "/var/cache/big"]);
    assert_eq!(r["method"], method, "{r:#}");
    assert_same("seeded staging area", &tree(&staged(&state), &[]), &want);
    assert_eq!(
        state.join("staging/web-01/seed-inodes.json").exists(),
        method == "hardlink"
    );
    let same_inode = std::fs::metadata(staged(&state).join("var/lib/app/data.db"))
        .unwrap()
        .ino()
        == std::fs::metadata(live.join("var/lib/app/data.db"))
            .unwrap()
            .ino();
    assert_eq!(same_inode, method == "hardlink");
    let status = run_ok(
        standin()
            .args(["status", "--json", "--state-dir"])
            .arg(&state),
        None,
    );
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["source_id"], "web-01", "{st:#}");
    assert_eq!(st["mirror_complete"], false, "{st:#}");
    assert!(
        st["reason"].as_str().unwrap_or("").contains("seeded"),
        "{st:#}"
    );
}

#[test]
fn hardlink_seed_on_ext4_equals_the_live_tree() {
    require_root();
    let tmp = tempdir();
    scenario(tmp.path(), "hardlink");
}

#[test]
fn reflink_seed_on_xfs_equals_the_live_tree() {
    require_root();
    let tmp = tempdir();
    let m = mount_xfs_reflink(tmp.path());
    let mnt = m.0.clone();
    scenario(&mnt, "reflink");
    // A clone is its own file: writing it leaves the live file alone.
    std::fs::write(staged(&mnt.join("state")).join("data/big"), "changed").unwrap();
    assert_eq!(
        std::fs::read(mnt.join("live/data/big")).unwrap(),
        "x".repeat(100_000).into_bytes()
    );
}

#[test]
fn refusals_name_the_reason() {
    require_root();
    let tmp = tempdir();
    let live = tmp.path().join("live");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join("f"), "x").unwrap();
    let state = tmp.path().join("state");
    let bad = refused("../x", &state, &live, &[]);
    assert!(bad.contains("source id"), "{bad}");
    seed(&state, &live, &[]);
    let again = refused("web-01", &state, &live, &[]);
    assert!(
        again.contains("not empty") && again.contains("--force"),
        "{again}"
    );
    let r = seed(&state, &live, &["--force"]);
    assert_eq!(r["replaced"], true, "{r:#}");
    let other = refused("db-02", &state, &live, &[]);
    assert!(other.contains("stages source \"web-01\""), "{other}");
    let missing = refused("web-01", &state, &tmp.path().join("nope"), &["--force"]);
    assert!(missing.contains("nope"), "{missing}");
    assert!(staged(&state).join("f").exists(), "nothing lost");

    // Not while `standin target serve` uses the state directory.
    let (keys, fpr) = daemon::keys(tmp.path(), "keys");
    let extra = [OsStr::new("--target-root"), live.as_os_str()];
    let d = daemon::Daemon::serve(
        standin(),
        "127.0.0.1:0",
        &state,
        &keys,
        &[&fpr],
        &extra,
        &tmp.path().join("daemon.log"),
    );
    let busy = refused("web-01", &state, &live, &["--force"]);
    d.stop();
    assert!(
        busy.contains("target serve") && busy.contains("stop it first"),
        "{busy}"
    );
    assert!(staged(&state).join("f").exists(), "nothing lost");
}
