//! Round trips: build → verify → restore of a generated corpus with every
//! kind of file and metadata, and of a real Debian root; the restored trees
//! are compared with the originals independently of standin's manifest.
//! GNU tar must extract the same archives.

mod common;
mod image_support;

use std::path::Path;
use std::process::Command;

use common::{require_root, require_tool, run_code, run_ok, standin, stdout, tempdir};
use image_support::{assert_same, compare, make_corpus, Compare};

fn build(root: &Path, archive: &Path, level: &str) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args([
                "image",
                "build",
                "--json",
                "--progress",
                "plain",
                "--level",
                level,
                "--root",
            ])
            .arg(root)
            .arg("-o")
            .arg(archive),
        None,
    );
    serde_json::from_str(&stdout(&out)).expect("build --json prints JSON")
}

fn verify_ok(archive: &Path) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args(["image", "verify", "--json", "--progress", "none"])
            .arg(archive),
        None,
    );
    serde_json::from_str(&stdout(&out)).expect("verify --json prints JSON")
}

fn restore_ok(archive: &Path, to: &Path) -> serde_json::Value {
    let out = run_ok(
        standin()
            .args(["image", "restore", "--json", "--progress", "none"])
            .arg(archive)
            .arg("--to")
            .arg(to),
        Some(to),
    );
    serde_json::from_str(&stdout(&out)).expect("restore --json prints JSON")
}

fn gnu_tar_extract(archive: &Path, to: &Path) {
    let tar = require_tool("tar", "tar");
    require_tool("zstd", "zstd");
    std::fs::create_dir_all(to).unwrap();
    run_ok(
        Command::new(tar)
            .args([
                "--zstd",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xpf",
            ])
            .arg(archive)
            .arg("-C")
            .arg(to),
        Some(to),
    );
}

#[test]
fn corpus_round_trips_with_every_kind_of_metadata() {
    require_root();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    make_corpus(&src);
    let archive = tmp.path().join("corpus.tar.zst");
    let built = build(&src, &archive, "3");
    assert_eq!(built["ok"], true);
    let digest = built["root_digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64);
    // The socket is left out; the 256 MiB sparse file stays small in the archive.
    let manifest = std::fs::read_to_string(tmp.path().join("corpus.manifest.json")).unwrap();
    assert!(
        !manifest.contains("run-socket"),
        "sockets are left out of manifests"
    );
    let archive_len = std::fs::metadata(&archive).unwrap().len();
    assert!(
        archive_len < 16 << 20,
        "archive is {archive_len} bytes: sparse file was not kept sparse"
    );
    // sha256sum -c accepts the .sha256 file.
    let sums = run_ok(
        Command::new(require_tool("sha256sum", "coreutils"))
            .arg("-c")
            .arg("corpus.tar.zst.sha256")
            .current_dir(tmp.path()),
        None,
    );
    assert!(stdout(&sums).contains("corpus.tar.zst: OK"));

    let v = verify_ok(&archive);
    assert_eq!(v["ok"], true);
    assert_eq!(v["root_digest"], digest.as_str());

    let dst = tmp.path().join("restored");
    let r = restore_ok(&archive, &dst);
    assert_eq!(r["root_digest"], digest.as_str());
    assert_same(&src, &dst, Compare::ALL);
    let leftovers: Vec<_> = std::fs::read_dir(&dst)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".standin-restore")
        })
        .collect();
    assert!(leftovers.is_empty(), "staging dir left behind");

    // Building the restored tree gives the same root digest (deterministic).
    let again = build(&dst, &tmp.path().join("again.tar.zst"), "1");
    assert_eq!(again["root_digest"], digest.as_str());

    // GNU tar extracts the same archive: content, modes, owners, file times,
    // xattrs (user, trusted, security.capability) and sparseness.
    let gnu = tmp.path().join("gnu");
    gnu_tar_extract(&archive, &gnu);
    let how = Compare {
        owners: true,
        times: true,
        dir_times: false,
        links: true,
        exact_extents: false,
        xattr_prefixes: None,
    };
    assert_same(&src, &gnu, how);
}

#[test]
fn restore_refuses_a_non_empty_directory_without_force() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "h\n").unwrap();
    let archive = tmp.path().join("small.tar.zst");
    build(&src, &archive, "3");
    let dst = tmp.path().join("busy");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(dst.join("keep-me"), "precious").unwrap();
    let out = run_code(
        standin()
            .args(["image", "restore"])
            .arg(&archive)
            .arg("--to")
            .arg(&dst),
        1,
        Some(&dst),
    );
    let err = common::stderr(&out);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dst.join("keep-me")).unwrap(),
        "precious"
    );
    // With --force the image is restored beside the existing entry.
    run_ok(
        standin()
            .args(["image", "restore", "--force"])
            .arg(&archive)
            .arg("--to")
            .arg(&dst),
        Some(&dst),
    );
    assert_eq!(
        std::fs::read_to_string(dst.join("etc/hostname")).unwrap(),
        "h\n"
    );
    assert_eq!(
        std::fs::read_to_string(dst.join("keep-me")).unwrap(),
        "precious"
    );
}

#[test]
fn debian_root_round_trips() {
    require_root();
    let debian = common::debian_root();
    let tmp = tempdir();
    let archive = tmp.path().join("debian.tar.zst");
    let built = build(&debian, &archive, "1");
    let digest = built["root_digest"].as_str().unwrap().to_string();
    assert!(built["files"].as_u64().unwrap() > 1000);
    verify_ok(&archive);
    let dst = tmp.path().join("restored");
    restore_ok(&archive, &dst);
    assert_same(&debian, &dst, Compare::ALL);
    // GNU tar reads it as well.
    let gnu = tmp.path().join("gnu");
    gnu_tar_extract(&archive, &gnu);
    let how = Compare {
        owners: true,
        times: true,
        dir_times: false,
        links: true,
        exact_extents: false,
        xattr_prefixes: None,
    };
    let d = compare(&debian, &gnu, how);
    assert!(
        d.is_empty(),
        "GNU tar extraction differs:\n{}",
        d.join("\n")
    );
    // Deterministic: a second build has the same digest.
    let again = build(&debian, &tmp.path().join("again.tar.zst"), "1");
    assert_eq!(again["root_digest"], digest.as_str());
}

#[test]
fn build_excludes_globs() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("var/cache/apt")).unwrap();
    std::fs::write(src.join("var/cache/apt/pkgcache.bin"), "cache").unwrap();
    std::fs::write(src.join("keep.txt"), "keep").unwrap();
    std::fs::write(src.join("drop.tmp"), "drop").unwrap();
    let archive = tmp.path().join("ex.tar.zst");
    run_ok(
        standin()
            .args([
                "image",
                "build",
                "--exclude",
                "/var/cache/**",
                "--exclude",
                "*.tmp",
                "--root",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&archive),
        None,
    );
    let dst = tmp.path().join("out");
    restore_ok(&archive, &dst);
    assert!(dst.join("keep.txt").exists());
    assert!(
        dst.join("var/cache").is_dir(),
        "the excluded directory's parent stays"
    );
    assert!(!dst.join("var/cache/apt").exists());
    assert!(!dst.join("drop.tmp").exists());
}

#[test]
fn help_has_examples() {
    for sub in ["build", "verify", "restore"] {
        let out = run_ok(standin().args(["image", sub, "--help"]), None);
        assert!(
            stdout(&out).contains("Example"),
            "image {sub} --help has no example"
        );
    }
}

/// Unmounts on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path) -> Mount {
    std::fs::create_dir_all(at).unwrap();
    run_ok(
        Command::new(require_tool("mount", "mount"))
            .args(["-t", "tmpfs", "-o", "size=8m", "standin-test"])
            .arg(at),
        None,
    );
    Mount(at.to_path_buf())
}

#[test]
fn one_file_system_keeps_mount_points_and_the_rest_of_the_tree() {
    require_root();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a/before"), "1").unwrap();
    std::fs::write(src.join("zzz-after-mount"), "2").unwrap();
    let _m1 = mount_tmpfs(&src.join("mnt"));
    std::fs::write(src.join("mnt/on-other-fs"), "3").unwrap();
    let _m2 = mount_tmpfs(&src.join("excluded"));
    std::fs::write(src.join("excluded/x"), "4").unwrap();
    let archive = tmp.path().join("m.tar.zst");
    run_ok(
        standin()
            .args([
                "image",
                "build",
                "--progress",
                "none",
                "--exclude",
                "/excluded",
                "--root",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&archive),
        None,
    );
    let manifest = std::fs::read_to_string(tmp.path().join("m.manifest.json")).unwrap();
    assert!(
        manifest.contains("\"path\":\"mnt\""),
        "the mount point is kept"
    );
    assert!(
        !manifest.contains("on-other-fs"),
        "another filesystem was crossed"
    );
    assert!(
        !manifest.contains("\"path\":\"excluded"),
        "an excluded mount point was kept"
    );
    assert!(
        manifest.contains("zzz-after-mount"),
        "entries after a mount point were lost:\n{manifest}"
    );
    // --one-file-system=false crosses the mount.
    let archive2 = tmp.path().join("m2.tar.zst");
    run_ok(
        standin()
            .args([
                "image",
                "build",
                "--progress",
                "none",
                "--one-file-system=false",
                "--root",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&archive2),
        None,
    );
    let manifest2 = std::fs::read_to_string(tmp.path().join("m2.manifest.json")).unwrap();
    assert!(manifest2.contains("mnt/on-other-fs") && manifest2.contains("zzz-after-mount"));
}

/// The round trip the first `standin demo` showed (the demo now tells the
/// whole failover story, see tests/demo.rs): builder's demo tree (config
/// files, a hardlink, a symlink, an xattr, a setuid helper, a sparse disk
/// image) goes through build, verify and restore and comes back with the
/// same root digest.
#[test]
fn demo_tree_round_trip_succeeds() {
    let tmp = tempdir();
    let src = tmp.path().join("source");
    std::fs::create_dir(&src).unwrap();
    standin_builder::demo::make_tree(&src).unwrap();
    let archive = tmp.path().join("source.tar.zst");
    let restored = tmp.path().join("restored");
    run_ok(
        standin()
            .args(["image", "build", "--progress", "none", "--root"])
            .arg(&src)
            .arg("-o")
            .arg(&archive),
        Some(tmp.path()),
    );
    run_ok(
        standin().args(["image", "verify"]).arg(&archive),
        Some(tmp.path()),
    );
    run_ok(
        standin()
            .args(["image", "restore"])
            .arg(&archive)
            .arg("--to")
            .arg(&restored),
        Some(tmp.path()),
    );
    let opts = standin_builder::scan::ScanOptions::default();
    let none = standin_builder::NoProgress;
    let a = standin_builder::manifest::scan_tree(&src, &opts, &none, |_| Ok(())).unwrap();
    let b = standin_builder::manifest::scan_tree(&restored, &opts, &none, |_| Ok(())).unwrap();
    assert_eq!(a.root_digest, b.root_digest);
    assert!(restored.join("etc/hostname").exists());
}

#[test]
fn progress_json_is_json_lines() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let out = run_ok(
        standin()
            .args(["image", "build", "--progress", "json", "--root"])
            .arg(&src)
            .arg("-o")
            .arg(tmp.path().join("p.tar.zst")),
        None,
    );
    let err = common::stderr(&out);
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(events.first().unwrap()["event"], "phase");
    let fin = events
        .iter()
        .find(|e| e["event"] == "finish")
        .expect("a finish event");
    assert_eq!(fin["items"], 2);
    assert_eq!(fin["bytes"], 1);
}
