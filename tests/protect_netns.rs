//! `standin protect` of a real Debian root from one network namespace to a
//! target daemon in another (veth pair, 198.18.0.0/24, no default route):
//! the staged tree equals the source by an independent comparison; then 1%
//! of the files and a few blocks of a large file change and a difference
//! mirror converges while sending far less than the full mirror. Needs root.

mod protect_support;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;

use protect_support::common::{debian_root, require_root, require_tool, run, tempdir};
use protect_support::*;

fn protect(
    ns: &Netns,
    id: &std::path::Path,
    trust: &str,
    root: &std::path::Path,
) -> serde_json::Value {
    let mut cmd = Netns::exec(&ns.src);
    cmd.args(["protect", "--target", "198.18.0.2:6320", "--identity"])
        .arg(id)
        .args(["--trust", trust, "--root"])
        .arg(root)
        .args(["--source-id", "debian", "--once", "--json"]);
    let out = run(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(0),
        "protect failed:\n{}\n{}",
        protect_support::common::stdout(&out),
        protect_support::common::stderr(&out)
    );
    protect_json(&out)
}

#[test]
fn protect_debian_root_across_namespaces_then_difference_mirror() {
    require_root();
    require_tool("ip", "iproute2");
    let d = tempdir();
    let src = d.path().join("src");
    copy_tree(&debian_root(), &src);
    // A large file for block-level changes.
    {
        let mut f = std::fs::File::create(src.join("var/big.bin")).unwrap();
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..48 {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let troot = target_root(d.path(), &src, true);
    let (tid, tf) = keys(d.path(), "target");
    let (sid, sf) = keys(d.path(), "source");
    let ns = Netns::create("sp");
    let state = d.path().join("state");
    let daemon = Daemon::start(
        Some(&ns.tgt),
        &state,
        &tid,
        &sf,
        "198.18.0.2:6320",
        &troot,
        &d.path().join("daemon.log"),
    );

    // Full mirror (the replica is empty).
    let first = protect(&ns, &sid, &tf, &src);
    let m1 = &first["mirror"];
    assert_eq!(m1["complete"], true, "{first:#}\n{}", daemon.log_text());
    let st = status_json(&state);
    assert_eq!(st["state"], "protected", "{st:#}");
    assert_eq!(st["mirror_complete"], true);
    assert_same_tree(&src, &replica(&state, "debian"));
    let full_bytes =
        m1["bytes_sent"].as_u64().unwrap() + m1["compare_bytes_sent"].as_u64().unwrap();
    let tree_bytes = m1["tree_bytes"].as_u64().unwrap();
    assert!(
        full_bytes > 20 << 20,
        "a full mirror of the Debian root sends its data: {full_bytes}"
    );

    // Change 1% of the regular files, a few blocks in the large file,
    // delete one file, add one, change a mode.
    let mut files: Vec<_> = walk_files(&src);
    files.sort();
    let mut changed = 0;
    for p in files.iter().step_by(100) {
        if p.ends_with("var/big.bin") {
            continue;
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(b"changed by the test\n").unwrap();
        changed += 1;
    }
    assert!(changed >= 10, "{changed} files changed");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("var/big.bin"))
            .unwrap();
        for off in [4096u64, 20 << 20, (47 << 20) + 100] {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&[0xa5; 4096]).unwrap();
        }
    }
    std::fs::remove_file(src.join("etc/debian_version")).unwrap();
    std::fs::write(src.join("etc/added-by-test"), "new\n").unwrap();
    std::fs::set_permissions(
        src.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let second = protect(&ns, &sid, &tf, &src);
    let m2 = &second["mirror"];
    assert_eq!(m2["complete"], true, "{second:#}\n{}", daemon.log_text());
    assert!(m2["deleted"].as_u64().unwrap() >= 1, "{m2:#}");
    assert_same_tree(&src, &replica(&state, "debian"));
    let diff_bytes =
        m2["bytes_sent"].as_u64().unwrap() + m2["compare_bytes_sent"].as_u64().unwrap();
    eprintln!("full mirror {full_bytes} bytes on the wire, difference mirror {diff_bytes} (tree {tree_bytes})");
    assert!(
        diff_bytes * 10 < full_bytes,
        "the difference mirror sent {diff_bytes} bytes, the full one {full_bytes}"
    );
    // The large file's change travelled as blocks, not as 48 MiB.
    assert!(m2["data_bytes"].as_u64().unwrap() < 8 << 20, "{m2:#}");
    assert_eq!(status_json(&state)["state"], "protected");
}

fn walk_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if md.is_file() && std::os::unix::fs::MetadataExt::nlink(&md) == 1 {
            out.push(p);
        }
    }
    out
}
