//! Helpers for the protect tests: identities, network namespaces, a target
//! daemon child process, a target system tree, running `standin protect`,
//! and an independent tree comparison (lstat fields, xattrs, content
//! sha256, hardlink groups) that does not use standin's code.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../common/mod.rs"]
pub mod common;

pub use common::daemon::{keys, Daemon};
pub use common::netns::Netns;

/// The protect tests' ways to start [`Daemon`] (with a target root).
impl Daemon {
    /// Start the daemon (inside `netns` when given) with `target_root` as
    /// its system tree; wait until it prints its address.
    pub fn start(
        netns: Option<&str>,
        state: &Path,
        identity: &Path,
        trust: &str,
        listen: &str,
        target_root: &Path,
        log: &Path,
    ) -> Daemon {
        let cmd = match netns {
            None => common::standin(),
            Some(ns) => Netns::exec(ns),
        };
        Self::start_cmd(cmd, state, identity, trust, listen, target_root, log)
    }

    /// Start the daemon through `cmd` (the binary, or a wrapper that execs
    /// the arguments that follow).
    pub fn start_cmd(
        cmd: Command,
        state: &Path,
        identity: &Path,
        trust: &str,
        listen: &str,
        target_root: &Path,
        log: &Path,
    ) -> Daemon {
        let extra = [OsStr::new("--target-root"), target_root.as_os_str()];
        Daemon::serve(cmd, listen, state, identity, &[trust], &extra, log)
    }
}

/// A target system tree validation accepts for a Debian 12 source: the
/// source's os-release, another host name, a grub boot loader.
pub fn target_root(base: &Path, source: &Path, boot_loader: bool) -> PathBuf {
    let r = base.join("target-system");
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::copy(source.join("etc/os-release"), r.join("etc/os-release"))
        .or_else(|_| std::fs::copy(source.join("usr/lib/os-release"), r.join("etc/os-release")))
        .expect("copying os-release");
    std::fs::write(r.join("etc/hostname"), "standby\n").unwrap();
    if boot_loader {
        std::fs::create_dir_all(r.join("boot/grub")).unwrap();
        std::fs::write(r.join("boot/grub/grub.cfg"), "# grub\n").unwrap();
    }
    r
}

/// The usual set-up of a protect test in `base`: a target system tree for
/// `src` ([`target_root`]), identities of the target (`tid`, fingerprint
/// `tf`) and of the source (`sid`, `sf`), and the target's state directory
/// `base/state`.
pub struct Sides {
    pub troot: PathBuf,
    pub tid: PathBuf,
    pub tf: String,
    pub sid: PathBuf,
    pub sf: String,
    pub state: PathBuf,
}

impl Sides {
    /// Set up both sides in `base` (the target with a boot loader when `boot_loader`).
    pub fn new(base: &Path, src: &Path, boot_loader: bool) -> Sides {
        let troot = target_root(base, src, boot_loader);
        let (tid, tf) = keys(base, "target");
        let (sid, sf) = keys(base, "source");
        Sides {
            troot,
            tid,
            tf,
            sid,
            sf,
            state: base.join("state"),
        }
    }

    /// The target daemon on loopback (a free port), trusting the source,
    /// logging to `log`.
    pub fn serve(&self, log: &Path) -> Daemon {
        Daemon::start(
            None,
            &self.state,
            &self.tid,
            &self.sf,
            "127.0.0.1:0",
            &self.troot,
            log,
        )
    }
}

impl Sides {
    /// [`Sides::serve`] without periodic snapshots, for tests that write
    /// into the replica behind the daemon's back: a snapshot restamps the
    /// last proven ledger, and one taken while such a test makes a
    /// same-size rewrite with the mtime put back would carry it over
    /// unseen (a limit of `ledger::across_snapshot`: it re-reads each
    /// entry's metadata after the snapshot, not its content).
    pub fn serve_without_snapshots(&self, log: &Path) -> Daemon {
        let extra = [
            std::ffi::OsStr::new("--target-root"),
            self.troot.as_os_str(),
            std::ffi::OsStr::new("--snapshot-every"),
            std::ffi::OsStr::new("0"),
        ];
        Daemon::serve(
            common::standin(),
            "127.0.0.1:0",
            &self.state,
            &self.tid,
            &[&self.sf],
            &extra,
            log,
        )
    }
}

/// [`Sides::new`] and [`Sides::serve`] with the log `base/d.log`.
pub fn loopback(base: &Path, src: &Path, boot_loader: bool) -> (Sides, Daemon) {
    let s = Sides::new(base, src, boot_loader);
    let daemon = s.serve(&base.join("d.log"));
    (s, daemon)
}

/// Poll `f` every 200 ms, at most `tries` times; panic with `what` and the logs.
pub fn wait_for<P: AsRef<Path>>(what: &str, tries: u32, logs: &[P], mut f: impl FnMut() -> bool) {
    for _ in 0..tries {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut text = String::new();
    for l in logs {
        let l = l.as_ref();
        text.push_str(&format!(
            "--- {}\n{}\n",
            l.display(),
            std::fs::read_to_string(l).unwrap_or_default()
        ));
    }
    panic!("timed out waiting for {what}\n{text}");
}

/// The status tests' source system under `base`: `etc/os-release`
/// (Debian 12), `etc/hostname` (web1) and an empty `data/`.
pub fn status_source(base: &Path) -> PathBuf {
    let src = base.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    std::fs::write(src.join("etc/hostname"), "web1\n").unwrap();
    src
}

/// `cmd` (the binary, or a wrapper that runs it) given the arguments of
/// `standin protect` against `target` with `identity`, trusting `trust`,
/// for `root`.
pub fn protect_args(
    mut cmd: Command,
    target: &str,
    identity: &Path,
    trust: &str,
    root: &Path,
) -> Command {
    cmd.args(["protect", "--target", target, "--identity"])
        .arg(identity)
        .args(["--trust", trust, "--root"])
        .arg(root);
    cmd
}

/// [`protect_args`] for the binary.
pub fn protect_cmd(target: &str, identity: &Path, trust: &str, root: &Path) -> Command {
    protect_args(common::standin(), target, identity, trust, root)
}

/// [`protect_args`] as source `web1`, with the second heartbeat path to
/// `hb_addr` every 0.3 s.
pub fn protect_with_second_path(
    cmd: Command,
    target: &str,
    identity: &Path,
    trust: &str,
    root: &Path,
    hb_addr: &str,
) -> Command {
    let mut cmd = protect_args(cmd, target, identity, trust, root);
    cmd.args([
        "--source-id",
        "web1",
        "--heartbeat-target",
        hb_addr,
        "--heartbeat-interval",
        "0.3",
    ]);
    cmd
}

/// `cp -a` (keeps owners, modes, times, xattrs, hard links).
pub fn copy_tree(from: &Path, to: &Path) {
    common::run_ok(Command::new("cp").arg("-a").arg(from).arg(to), None);
}

/// The staged replica of `source_id` in a target state directory.
pub fn replica(state: &Path, source_id: &str) -> PathBuf {
    state.join("staging").join(source_id).join("root")
}

/// `standin status --state-dir` as JSON.
/// Once the daemon has synced the replica of a mirror that just completed
/// (it records the mirror complete on disk only then: until that, status
/// says Synchronizing, "being written to disk"; waits up to 60 s).
pub fn status_json(state: &Path) -> serde_json::Value {
    let read = || {
        let out = common::run_ok(
            common::standin()
                .args(["status", "--json", "--state-dir"])
                .arg(state),
            None,
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("status --json is JSON")
    };
    let flushing = |v: &serde_json::Value| {
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("being written to disk"))
    };
    for _ in 0..600 {
        let v = read();
        if !flushing(&v) {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "the target did not finish syncing its replica in 60 s: {:#}",
        read()
    );
}

/// The JSON `standin protect --json` printed.
pub fn protect_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "protect --json printed no JSON ({e}):\n{}\n{}",
            common::stdout(out),
            common::stderr(out)
        )
    })
}

/// One path as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub sha256: Option<String>,
}

/// Every path of a tree (relative, raw bytes) with its node, and the
/// hardlink groups (sets of paths sharing an inode, for inodes with more
/// than one name).
pub struct Snapshot {
    pub nodes: BTreeMap<Vec<u8>, Node>,
    pub groups: BTreeSet<BTreeSet<Vec<u8>>>,
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return out,
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..])
            .unwrap_or_else(|e| panic!("reading xattr of {}: {e}", p.display()));
        v.truncate(len);
        out.insert(name.to_vec(), v);
    }
    out
}

/// Read a whole tree with plain std calls.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<u64, BTreeSet<Vec<u8>>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md =
            std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = md.file_type();
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if md.nlink() > 1 {
            inodes.entry(md.ino()).or_default().insert(rel.clone());
        }
        let node = Node {
            kind: md.mode() & 0o170000,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: (md.mtime(), md.mtime_nsec()),
            size: if ft.is_dir() { 0 } else { md.size() },
            rdev: md.rdev(),
            target: ft.is_symlink().then(|| {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            xattrs: xattrs(&p),
            sha256: ft.is_file().then(|| common::sha256_file(&p)),
        };
        nodes.insert(rel, node);
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).collect();
    Snapshot { nodes, groups }
}

/// Panic with the first differences when the two trees differ.
pub fn assert_same_tree(source: &Path, replica: &Path) {
    let a = snapshot(source);
    let b = snapshot(replica);
    let mut diffs = Vec::new();
    for (p, n) in &a.nodes {
        match b.nodes.get(p) {
            None => diffs.push(format!(
                "missing on the replica: {}",
                String::from_utf8_lossy(p)
            )),
            Some(m) if m != n => diffs.push(format!(
                "differs: {}\n  source  {n:?}\n  replica {m:?}",
                String::from_utf8_lossy(p)
            )),
            _ => {}
        }
    }
    for p in b.nodes.keys() {
        if !a.nodes.contains_key(p) {
            diffs.push(format!(
                "extra on the replica: {}",
                String::from_utf8_lossy(p)
            ));
        }
    }
    if a.groups != b.groups {
        diffs.push(format!(
            "hardlink groups differ: {} on the source, {} on the replica",
            a.groups.len(),
            b.groups.len()
        ));
    }
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}:\n{}",
        diffs.len(),
        source.display(),
        replica.display(),
        diffs
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(a.nodes.len() > 1, "the comparison saw the tree");
}
