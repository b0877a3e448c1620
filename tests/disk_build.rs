//! `standin image disk`: disks from recipes and trees, checked by independent
//! tools (sfdisk, sgdisk, e2fsck, fsck.vfat, debugfs), and bad input.

mod common;
mod disk_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use disk_support::*;

#[test]
fn demo_recipe_disk_is_valid_raw_and_qcow2() {
    require_disk_tools();
    let dir = tempdir();
    for format in ["raw", "qcow2"] {
        let disk = dir.path().join(format!("demo.{format}"));
        let out = run_ok(
            standin()
                .args(["image", "disk", "--recipe"])
                .arg(images_dir().join("demo-source.toml"))
                .arg("-o")
                .arg(&disk)
                .args(["--format", format]),
            Some(dir.path()),
        );
        assert!(stdout(&out).contains("wrote"), "{}", stdout(&out));
        let m = manifest(&disk);
        assert_eq!(m["format"], format);
        assert_eq!(m["root_digest"].as_str().unwrap().len(), 64);
        assert_eq!(
            std::fs::metadata(&disk).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let scratch = tempdir();
        let ext4 = check_disk(&disk, scratch.path());
        // The recipe's content is in the root filesystem.
        let data = std::fs::read(images_dir().join("demo-source/data.txt")).unwrap();
        let dumped = scratch.path().join("data.txt");
        debugfs(
            &ext4,
            &format!("dump /srv/data/data.txt {}", dumped.display()),
        );
        assert_eq!(std::fs::read(&dumped).unwrap(), data);
        let hostname = scratch.path().join("hostname");
        debugfs(&ext4, &format!("dump /etc/hostname {}", hostname.display()));
        assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "demo-source\n");
        let passwd = scratch.path().join("passwd");
        debugfs(&ext4, &format!("dump /etc/passwd {}", passwd.display()));
        assert!(std::fs::read_to_string(&passwd)
            .unwrap()
            .contains("demo:x:1000:1000:"));
        let init = debugfs(&ext4, "stat /sbin/init");
        assert!(init.contains("Mode:  0755"), "{init}");
    }
    // Nothing but the disks and their manifests is left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["demo.qcow2", "demo.qcow2.json", "demo.raw", "demo.raw.json"]
    );
}

#[test]
fn root_tree_metadata_survives_into_ext4() {
    require_root();
    require_disk_tools();
    let dir = tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    busybox_tree(&tree, "meta-tree", "poweroff");
    // Every kind of metadata mke2fs -d has to keep.
    let f = tree.join("srv/owned");
    std::fs::write(&f, b"owned by 1234:5678, setuid").unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4751)).unwrap();
    std::fs::hard_link(&f, tree.join("srv/owned-link")).unwrap();
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.standin", "-v", "kept"])
            .arg(&f),
        None,
    );
    run_ok(
        Command::new("mknod")
            .arg(tree.join("srv/null"))
            .args(["c", "1", "3"]),
        None,
    );
    run_ok(Command::new("mkfifo").arg(tree.join("srv/fifo")), None);
    std::os::unix::fs::symlink("owned", tree.join("srv/sym")).unwrap();
    let sparse = std::fs::File::create(tree.join("srv/sparse")).unwrap();
    sparse.set_len(300 * MIB).unwrap();
    drop(sparse);

    let disk = dir.path().join("tree.img");
    run_ok(&mut disk_from_root(&tree, &disk), Some(dir.path()));
    let m = manifest(&disk);
    // The sparse 300 MiB file does not inflate the disk.
    assert!(
        m["size"].as_u64().unwrap() < 300 * MIB,
        "disk size {}",
        m["size"]
    );
    let scratch = tempdir();
    let ext4 = check_disk(&disk, scratch.path());
    let st = debugfs(&ext4, "stat /srv/owned");
    assert!(st.contains("Mode:  04751"), "{st}");
    assert!(st.contains("User:  1234   Group:  5678"), "{st}");
    assert!(st.contains("Links: 2"), "{st}");
    let ino = |p: &str| {
        debugfs(&ext4, &format!("stat {p}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(ino("/srv/owned"), ino("/srv/owned-link"), "hardlink kept");
    let x = debugfs(&ext4, "ea_get /srv/owned user.standin");
    assert!(x.contains("kept"), "xattr: {x}");
    let n = debugfs(&ext4, "stat /srv/null");
    assert!(n.contains("character special"), "{n}");
    assert!(
        n.contains("Device major/minor number: 01:03") || n.contains("major/minor number: 01:03"),
        "{n}"
    );
    assert!(debugfs(&ext4, "stat /srv/fifo").contains("FIFO"));
    assert!(debugfs(&ext4, "stat /srv/sym").contains("Fast link dest: \"owned\""));
    let sp = debugfs(&ext4, "stat /srv/sparse");
    assert!(sp.contains(&format!("Size: {}", 300 * MIB)), "{sp}");
}

fn recipe_in(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn fails_with(cmd: &mut Command, dir: &std::path::Path, needles: &[&str]) {
    let out = run_code(cmd, 1, Some(dir));
    let err = stderr(&out);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    require_disk_tools();
    let dir = tempdir();
    let d = dir.path();
    let out = d.join("out.img");

    // Unknown recipe key: named with the file.
    let r = recipe_in(d, "unknown.toml", "base = \"busybox\"\ncolour = \"blue\"\n");
    fails_with(
        &mut disk_from_recipe(&r, &out),
        d,
        &["colour", "unknown.toml"],
    );
    let r = recipe_in(
        d,
        "unknown2.toml",
        "base = \"busybox\"\n[[files]]\npath = \"/x\"\ncontent = \"\"\nmod = 1\n",
    );
    fails_with(
        &mut disk_from_recipe(&r, &out),
        d,
        &["mod", "unknown2.toml"],
    );
    // Missing base: the key, and a base that does not exist.
    let r = recipe_in(d, "nobase.toml", "hostname = \"x\"\n");
    fails_with(&mut disk_from_recipe(&r, &out), d, &["base", "nobase.toml"]);
    let r = recipe_in(d, "gone.toml", "base = \"/nonexistent/standin-base\"\n");
    fails_with(
        &mut disk_from_recipe(&r, &out),
        d,
        &["/nonexistent/standin-base", "not found"],
    );
    // A tree larger than --size.
    let tree = d.join("big");
    std::fs::create_dir(&tree).unwrap();
    let big: Vec<u8> = (0..40 * MIB).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(tree.join("big"), big).unwrap();
    fails_with(
        disk_from_root(&tree, &out).args(["--size", "80MiB"]),
        d,
        &["does not fit", "--size"],
    );
    // A missing kernel.
    fails_with(
        disk_from_root(&tree, &out).args(["--kernel", "/nonexistent/vmlinuz-9"]),
        d,
        &["kernel /nonexistent/vmlinuz-9 not found"],
    );
    let r = recipe_in(
        d,
        "kernel.toml",
        "base = \"busybox\"\n[boot]\nkernel = \"/nonexistent/vmlinuz-8\"\n",
    );
    fails_with(
        &mut disk_from_recipe(&r, &out),
        d,
        &["/nonexistent/vmlinuz-8"],
    );
    // Unwritable outputs.
    fails_with(
        &mut disk_from_root(&tree, "/nonexistent-dir/x.img"),
        d,
        &["/nonexistent-dir", "does not exist"],
    );
    fails_with(
        &mut disk_from_root(&tree, "/proc/standin-test.img"),
        d,
        &["/proc"],
    );
    fails_with(&mut disk_from_root(&tree, d), d, &["not a regular file"]);
    // A missing tree and a missing archive.
    fails_with(&mut disk_from_root(d.join("nope"), &out), d, &["nope"]);
    fails_with(
        standin()
            .args(["image", "disk", "--from"])
            .arg(d.join("nope.tar.zst"))
            .arg("-o")
            .arg(&out),
        d,
        &["nope.tar.zst", "not found"],
    );
    // No output and no partial file appeared anywhere.
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("out") || n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A usage error is exit 2.
    run_code(
        standin().args(["image", "disk", "-o"]).arg(&out),
        2,
        Some(d),
    );
}

#[test]
fn disk_from_archive_matches_its_tree() {
    require_disk_tools();
    let dir = tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"archived\n").unwrap();
    std::fs::write(tree.join("data"), vec![9u8; 100_000]).unwrap();
    let archive = dir.path().join("tree.tar.zst");
    // The archive is made with the builder library (the same code as `standin image build`).
    standin_builder::archive::build(
        &tree,
        &archive,
        &standin_builder::archive::BuildOptions::default(),
        &standin_builder::NoProgress,
    )
    .expect("building the archive");
    let from_archive = dir.path().join("a.img");
    run_ok(
        standin()
            .args(["image", "disk", "--from"])
            .arg(&archive)
            .arg("-o")
            .arg(&from_archive),
        Some(dir.path()),
    );
    let from_tree = dir.path().join("t.img");
    run_ok(&mut disk_from_root(&tree, &from_tree), Some(dir.path()));
    assert_eq!(
        manifest(&from_archive)["root_digest"],
        manifest(&from_tree)["root_digest"]
    );
    let scratch = tempdir();
    check_disk(&from_archive, scratch.path());
}

#[test]
fn owners_and_root_mode_are_set_for_trees_built_without_root() {
    require_disk_tools();
    let dir = tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("srv")).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(tree.join("srv/plain"), b"x").unwrap();
    std::fs::write(tree.join("srv/keep"), b"y").unwrap();
    // What a recipe built by an ordinary user asks for: root everywhere,
    // except what it names (the files themselves carry the builder's owner).
    let mut explicit = std::collections::BTreeMap::new();
    explicit.insert(std::path::PathBuf::from("srv/keep"), (77, 88));
    let disk = dir.path().join("owners.img");
    let opts = standin_builder::disk::DiskOptions {
        tree: tree.clone(),
        output: disk.clone(),
        owners: Some(standin_builder::disk::OwnerFixup {
            default: (0, 0),
            explicit,
        }),
        ..Default::default()
    };
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(tree.join("srv/plain"), Some(4321), Some(4321)).unwrap();
    }
    standin_builder::disk::build_disk(&opts, &standin_builder::NoProgress)
        .expect("building the disk");
    let scratch = tempdir();
    let ext4 = check_disk(&disk, scratch.path());
    assert!(debugfs(&ext4, "stat /srv/plain").contains("User:     0   Group:     0"));
    assert!(debugfs(&ext4, "stat /srv/keep").contains("User:    77   Group:    88"));
    let root = debugfs(&ext4, "stat /");
    assert!(root.contains("Mode:  0750"), "{root}");
}

#[test]
fn recipe_builds_without_root_with_root_owners() {
    require_root(); // to drop to an ordinary user
    require_disk_tools();
    let setpriv = require_tool("setpriv", "util-linux");
    let dir = tempdir();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Everything the unprivileged build reads, where it can read it.
    std::fs::create_dir(d.join("bin")).unwrap();
    std::fs::copy(bin(), d.join("bin/standin")).unwrap();
    std::fs::create_dir(d.join("demo-source")).unwrap();
    for f in [
        "demo-source.toml",
        "demo-source/init.sh",
        "demo-source/data.txt",
    ] {
        std::fs::copy(images_dir().join(f), d.join(f)).unwrap();
    }
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let disk = out_dir.join("nobody.img");
    run_ok(
        Command::new(setpriv)
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "env",
                "HOME=/tmp",
                "TMPDIR=/tmp",
            ])
            .arg(d.join("bin/standin"))
            .args(["image", "disk", "--recipe"])
            .arg(d.join("demo-source.toml"))
            .arg("-o")
            .arg(&disk),
        Some(d),
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&disk).unwrap().uid(),
        65534,
        "built by the ordinary user"
    );
    let scratch = tempdir();
    let ext4 = check_disk(&disk, scratch.path());
    for p in [
        "/",
        "/sbin/init",
        "/bin/busybox",
        "/srv/data/data.txt",
        "/etc/shadow",
    ] {
        let st = debugfs(&ext4, &format!("stat {p}"));
        assert!(
            st.contains("User:     0   Group:     0"),
            "{p} owned by root:\n{st}"
        );
    }
    let home = debugfs(&ext4, "stat /home/demo");
    assert!(home.contains("User:  1000   Group:  1000"), "{home}");
}

#[test]
fn debian_root_disk_is_valid_and_sized_from_content() {
    require_disk_tools();
    let debian = debian_root();
    let dir = tempdir();
    let disk = dir.path().join("debian.qcow2");
    run_ok(
        disk_from_root(&debian, &disk).args(["--format", "qcow2", "--json"]),
        Some(dir.path()),
    );
    let m = manifest(&disk);
    let root_size = m["partitions"][1]["size"].as_u64().unwrap();
    let tree_bytes = m["tree_bytes"].as_u64().unwrap();
    assert!(
        root_size > tree_bytes,
        "root {root_size} holds the tree {tree_bytes}"
    );
    assert!(
        root_size < tree_bytes * 3 + 256 * MIB,
        "root {root_size} is not oversized for {tree_bytes}"
    );
    let scratch = tempdir();
    let ext4 = check_disk(&disk, scratch.path());
    let os = scratch.path().join("os-release");
    debugfs(&ext4, &format!("dump /usr/lib/os-release {}", os.display()));
    assert_eq!(
        std::fs::read(&os).unwrap(),
        std::fs::read(debian.join("usr/lib/os-release")).unwrap()
    );
    // The disk's root digest is the tree's, as the archive manifest computes it.
    let digest = standin_builder::disk::tree_root_digest(&debian).unwrap();
    assert_eq!(m["root_digest"], digest.as_str());
}

#[test]
fn recipes_start_from_a_directory_or_an_archive() {
    require_disk_tools();
    let dir = tempdir();
    let d = dir.path();
    let tree = d.join("base");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(tree.join("etc/from-base"), b"base content\n").unwrap();
    std::os::unix::fs::symlink("/", tree.join("escape")).unwrap();
    standin_builder::archive::build(
        &tree,
        &d.join("base.tar.zst"),
        &standin_builder::archive::BuildOptions::default(),
        &standin_builder::NoProgress,
    )
    .expect("building the archive");
    for (name, base) in [("dir", "base"), ("archive", "base.tar.zst")] {
        // The recipe writes through the base's symlink to / : it must land
        // inside the tree, never on the host.
        let r = recipe_in(
            d,
            &format!("{name}.toml"),
            &format!(
                "base = \"{base}\"\nhostname = \"from-{name}\"\n[[files]]\npath = \"/escape/etc/standin-test-{name}\"\ncontent = \"inside\\n\"\n"
            ),
        );
        let disk = d.join(format!("{name}.img"));
        run_ok(&mut disk_from_recipe(&r, &disk), Some(d));
        assert!(
            !std::path::Path::new(&format!("/etc/standin-test-{name}")).exists(),
            "the recipe wrote outside its tree"
        );
        let scratch = tempdir();
        let ext4 = check_disk(&disk, scratch.path());
        for (path, want) in [
            ("/etc/from-base", "base content\n".to_string()),
            ("/etc/hostname", format!("from-{name}\n")),
            (
                &format!("/etc/standin-test-{name}") as &str,
                "inside\n".to_string(),
            ),
        ] {
            let out = scratch.path().join("dump");
            std::fs::remove_file(&out).ok();
            debugfs(&ext4, &format!("dump {path} {}", out.display()));
            assert_eq!(
                std::fs::read_to_string(&out).unwrap_or_default(),
                want,
                "{path} in {name}"
            );
        }
    }
}
