//! Damaged and hostile input is caught and named: a flipped byte, a
//! truncated archive, a wrong .sha256, an edited manifest, and hand-crafted
//! archives with `../`, absolute paths and symlink escapes. Nothing is
//! written outside the target directory and no success is reported.

mod common;
mod image_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require_tool, run_code, run_ok, standin, stderr, stdout, tempdir};
use image_support::image_files;
use sha2::{Digest, Sha256};

/// Build a small image of a small tree; returns the archive path.
fn small_image(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "damage-test\n").unwrap();
    std::fs::write(src.join("etc/big.bin"), image_support::noise(9, 2 << 20)).unwrap();
    std::fs::write(src.join("readme"), "hello\n".repeat(1000)).unwrap();
    let archive = dir.join("img.tar.zst");
    run_ok(
        standin()
            .args(["image", "build", "--progress", "none", "--root"])
            .arg(&src)
            .arg("-o")
            .arg(&archive),
        None,
    );
    archive
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write_sha256_file(archive: &Path) {
    let data = std::fs::read(archive).unwrap();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(
        image_files(archive).1,
        format!("{}  {name}\n", sha_hex(&data)),
    )
    .unwrap();
}

/// `verify` fails (exit 1) and its stderr contains every `needle`.
fn verify_fails(archive: &Path, needles: &[&str]) {
    let out = run_code(
        standin()
            .args(["image", "verify", "--progress", "none"])
            .arg(archive),
        1,
        None,
    );
    let err = stderr(&out);
    for n in needles {
        assert!(err.contains(n), "verify output lacks {n:?}:\n{err}");
    }
    assert!(!stdout(&out).contains("intact"));
}

/// `restore` fails (exit 1), names every needle, leaves `to` empty.
fn restore_fails(archive: &Path, to: &Path, needles: &[&str]) {
    let out = run_code(
        standin()
            .args(["image", "restore", "--progress", "none"])
            .arg(archive)
            .arg("--to")
            .arg(to),
        1,
        Some(to),
    );
    let err = stderr(&out);
    for n in needles {
        assert!(err.contains(n), "restore output lacks {n:?}:\n{err}");
    }
    assert!(
        !stdout(&out).contains("restored"),
        "restore reported success:\n{}",
        stdout(&out)
    );
    if to.exists() {
        let left: Vec<_> = std::fs::read_dir(to)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "restore left {left:?} in {}", to.display());
    }
}

#[test]
fn flipped_byte_is_caught() {
    let tmp = tempdir();
    let archive = small_image(tmp.path());
    let mut data = std::fs::read(&archive).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&archive, &data).unwrap();
    verify_fails(&archive, &["img.tar.zst", "sha256"]);
    restore_fails(
        &archive,
        &tmp.path().join("out"),
        &["img.tar.zst", "damaged"],
    );
    // Even with a matching .sha256, the stream itself is caught (zstd checksum / content sha256).
    write_sha256_file(&archive);
    verify_fails(&archive, &["img.tar.zst"]);
    restore_fails(&archive, &tmp.path().join("out2"), &["img.tar.zst"]);
}

#[test]
fn truncated_archive_is_caught() {
    let tmp = tempdir();
    let archive = small_image(tmp.path());
    let data = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &data[..data.len() * 2 / 3]).unwrap();
    verify_fails(&archive, &["img.tar.zst", "sha256"]);
    restore_fails(&archive, &tmp.path().join("out"), &["img.tar.zst"]);
    // With a .sha256 that matches the cut-off file, the reader still notices.
    write_sha256_file(&archive);
    verify_fails(&archive, &["img.tar.zst", "truncated"]);
    restore_fails(
        &archive,
        &tmp.path().join("out2"),
        &["img.tar.zst", "truncated"],
    );
}

#[test]
fn wrong_sha256_file_is_caught() {
    let tmp = tempdir();
    let archive = small_image(tmp.path());
    let sha = image_files(&archive).1;
    std::fs::write(&sha, format!("{}  img.tar.zst\n", "0".repeat(64))).unwrap();
    verify_fails(&archive, &["img.tar.zst.sha256", "0000000000"]);
    restore_fails(&archive, &tmp.path().join("out"), &["img.tar.zst.sha256"]);
    std::fs::write(&sha, "not a digest\n").unwrap();
    verify_fails(&archive, &["img.tar.zst.sha256"]);
}

#[test]
fn edited_manifest_is_caught() {
    let tmp = tempdir();
    let archive = small_image(tmp.path());
    let manifest = image_files(&archive).0;
    let text = std::fs::read_to_string(&manifest).unwrap();
    // Change the recorded mode of etc/hostname (0644 = 420 → 0755 = 493).
    let line = text
        .lines()
        .find(|l| l.contains("\"path\":\"etc/hostname\""))
        .unwrap();
    let edited_line = line.replace("\"mode\":420", "\"mode\":493");
    assert_ne!(line, edited_line);
    std::fs::write(&manifest, text.replace(line, &edited_line)).unwrap();
    verify_fails(&archive, &["manifest", "edited", "/etc/hostname"]);
    restore_fails(&archive, &tmp.path().join("out"), &["/etc/hostname"]);

    // A manifest whose entries were changed and whose root digest was
    // recomputed to match still disagrees with the archive.
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace(&edited_line, line)).unwrap();
    run_ok(
        standin()
            .args(["image", "verify", "--progress", "none"])
            .arg(&archive),
        None,
    );
    // Removing an entry is caught as well.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let readme = text
        .lines()
        .find(|l| l.contains("\"path\":\"readme\""))
        .unwrap()
        .to_string();
    std::fs::write(
        &manifest,
        text.replace(&format!("{readme}\n"), "")
            .replace(",\n]", "\n]"),
    )
    .unwrap();
    verify_fails(&archive, &["manifest"]);
}

// ---- hand-crafted hostile archives (independent tar writer) ----

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}", v, w = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
}

fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    let mode = match typeflag {
        b'5' => 0o755,
        b'2' => 0o777,
        _ => 0o644,
    };
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

enum Item<'a> {
    Dir(&'a [u8]),
    File(&'a [u8], &'a [u8]),
    Symlink(&'a [u8], &'a [u8]),
}

/// Write NAME.tar.zst (+ .sha256 + a manifest listing the same entries).
fn craft(dir: &Path, name: &str, items: &[Item]) -> PathBuf {
    let mut tar = Vec::new();
    let mut entries = Vec::new();
    for it in items {
        match it {
            Item::Dir(p) => {
                tar.extend_from_slice(&header(p, b'5', 0, b""));
                entries.push(format!(
                    "{{\"path\":{},\"type\":\"dir\",\"mode\":493,\"uid\":0,\"gid\":0,\"mtime_ns\":0,\"size\":0}}",
                    serde_json::to_string(&String::from_utf8_lossy(p.strip_suffix(b"/").unwrap_or(p)).replace("./", "").replace('.', "")).unwrap()
                ));
            }
            Item::File(p, data) => {
                tar.extend_from_slice(&header(p, b'0', data.len() as u64, b""));
                tar.extend_from_slice(data);
                tar.resize(tar.len().div_ceil(512) * 512, 0);
                entries.push(format!(
                    "{{\"path\":{},\"type\":\"file\",\"mode\":420,\"uid\":0,\"gid\":0,\"mtime_ns\":0,\"size\":{},\"sha256\":\"{}\"}}",
                    serde_json::to_string(&String::from_utf8_lossy(p)).unwrap(),
                    data.len(),
                    sha_hex(data)
                ));
            }
            Item::Symlink(p, t) => {
                tar.extend_from_slice(&header(p, b'2', 0, t));
                entries.push(format!(
                    "{{\"path\":{},\"type\":\"symlink\",\"mode\":511,\"uid\":0,\"gid\":0,\"mtime_ns\":0,\"size\":{},\"target\":{}}}",
                    serde_json::to_string(&String::from_utf8_lossy(p)).unwrap(),
                    t.len(),
                    serde_json::to_string(&String::from_utf8_lossy(t)).unwrap()
                ));
            }
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let tar_path = dir.join(format!("{name}.tar"));
    std::fs::write(&tar_path, &tar).unwrap();
    let archive = dir.join(format!("{name}.tar.zst"));
    run_ok(
        Command::new(require_tool("zstd", "zstd"))
            .args(["-q", "-f"])
            .arg(&tar_path)
            .arg("-o")
            .arg(&archive),
        None,
    );
    write_sha256_file(&archive);
    let manifest = format!(
        "{{\"format\":\"standin-manifest\",\"version\":1,\"tool\":\"test\",\n\"entries\":[\n{}\n],\n\"entry_count\":{},\"total_bytes\":0,\"root_digest\":\"{}\"}}\n",
        entries.join(",\n"),
        entries.len(),
        "0".repeat(64)
    );
    std::fs::write(image_files(&archive).0, manifest).unwrap();
    archive
}

#[test]
fn dotdot_entries_are_refused_and_named() {
    let tmp = tempdir();
    let base = tmp.path();
    let to = base.join("area/to");
    std::fs::create_dir_all(&to).unwrap();
    let a = craft(
        base,
        "dotdot",
        &[Item::Dir(b"./"), Item::File(b"../evil", b"evil\n")],
    );
    restore_fails(&a, &to, &["../evil", "refusing"]);
    let b = craft(
        base,
        "dotdot2",
        &[
            Item::Dir(b"./"),
            Item::File(b"etc/../../../evil2", b"evil\n"),
        ],
    );
    restore_fails(&b, &to, &["evil2", "refusing"]);
    for p in ["area/evil", "evil", "area/to/evil", "evil2", "area/evil2"] {
        assert!(!base.join(p).exists(), "{p} was written outside the target");
    }
}

#[test]
fn absolute_entries_are_refused_and_named() {
    let tmp = tempdir();
    let base = tmp.path();
    let to = base.join("to");
    std::fs::create_dir_all(&to).unwrap();
    let outside = base.join("outside-abs");
    let name = outside.to_string_lossy().into_owned();
    let a = craft(
        base,
        "abs",
        &[Item::Dir(b"./"), Item::File(name.as_bytes(), b"evil\n")],
    );
    restore_fails(&a, &to, &[&name, "absolute"]);
    assert!(!outside.exists(), "absolute entry was written");
}

#[test]
fn symlink_escapes_are_refused_and_named() {
    let tmp = tempdir();
    let base = tmp.path();
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let to = base.join("to");
    std::fs::create_dir_all(&to).unwrap();
    let abs_target = outside.to_string_lossy().into_owned();
    let a = craft(
        base,
        "escape-abs",
        &[
            Item::Dir(b"./"),
            Item::Symlink(b"esc", abs_target.as_bytes()),
            Item::File(b"esc/pwned", b"evil\n"),
        ],
    );
    restore_fails(&a, &to, &["esc/pwned", "outside the root"]);
    let b = craft(
        base,
        "escape-rel",
        &[
            Item::Dir(b"./"),
            Item::Symlink(b"up", b"../../../outside"),
            Item::File(b"up/pwned2", b"evil\n"),
        ],
    );
    restore_fails(&b, &to, &["up/pwned2", "outside the root"]);
    let left: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(
        left.is_empty(),
        "files were written through a symlink: {left:?}"
    );
}

#[test]
fn crafted_archive_with_wrong_root_digest_is_not_restored() {
    // A well-formed, harmless crafted archive whose manifest summary is
    // wrong: restore must fail and leave nothing.
    let tmp = tempdir();
    let a = craft(
        tmp.path(),
        "harmless",
        &[Item::Dir(b"./"), Item::File(b"ok.txt", b"fine\n")],
    );
    let to = tmp.path().join("to");
    restore_fails(&a, &to, &["manifest", "edited"]);
}

#[test]
fn a_manifest_of_another_tree_names_the_differing_files() {
    // Both manifests are internally consistent; only the per-file check
    // against the archive can tell them apart.
    let tmp = tempdir();
    let a = small_image(tmp.path());
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let src2 = other.join("src");
    std::fs::create_dir_all(src2.join("etc")).unwrap();
    std::fs::write(src2.join("etc/hostname"), "damage-tesT\n").unwrap();
    std::fs::write(src2.join("etc/big.bin"), image_support::noise(9, 2 << 20)).unwrap();
    std::fs::write(src2.join("readme"), "hello\n".repeat(1000)).unwrap();
    // Same times as the first tree so that only content differs.
    for rel in ["etc/hostname", "etc/big.bin", "readme", "etc", ""] {
        let t = std::fs::metadata(tmp.path().join("src").join(rel))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .read(true)
            .open(src2.join(rel))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let b = other.join("img.tar.zst");
    run_ok(
        standin()
            .args(["image", "build", "--progress", "none", "--root"])
            .arg(&src2)
            .arg("-o")
            .arg(&b),
        None,
    );
    std::fs::copy(image_files(&b).0, image_files(&a).0).unwrap();
    let out = run_code(
        standin()
            .args(["image", "verify", "--json", "--progress", "none"])
            .arg(&a),
        1,
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    let listed = v["differences"]["listed"].to_string();
    assert!(
        listed.contains("/etc/hostname: content differs"),
        "{listed}"
    );
    assert_eq!(v["differences"]["count"], 1, "{listed}");
    restore_fails(
        &a,
        &tmp.path().join("out"),
        &["/etc/hostname", "does not match the manifest"],
    );
}
