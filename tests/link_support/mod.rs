//! Helpers for the link tests: identities, a target daemon child process,
//! an in-process agent, and a model of the tree a sequence of change sets builds.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use standin_agent::link::LinkConfig;
use standin_builder::changeset::Record;
use standin_builder::entry::{Entry, Kind};
use standin_link::Fingerprint;

#[path = "../common/mod.rs"]
pub mod common;

/// Create an identity with the real binary; return (dir, fingerprint).
pub fn keys(base: &Path, name: &str) -> (PathBuf, Fingerprint) {
    let (dir, f) = common::daemon::keys(base, name);
    (dir, f.parse().expect("keys init prints a fingerprint"))
}

pub use common::daemon::Daemon;

/// The link tests' ways to start [`Daemon`] (no target root).
impl Daemon {
    /// Start the daemon; wait until it prints its address (recovery is done then).
    pub fn start(
        state: &Path,
        identity: &Path,
        trust: &[Fingerprint],
        listen: &str,
        log: &Path,
    ) -> Daemon {
        Daemon::start_in(None, state, identity, trust, listen, log)
    }

    /// Start the daemon, inside a network namespace when `netns` is given.
    pub fn start_in(
        netns: Option<&str>,
        state: &Path,
        identity: &Path,
        trust: &[Fingerprint],
        listen: &str,
        log: &Path,
    ) -> Daemon {
        let cmd = match netns {
            None => common::standin(),
            Some(ns) => common::netns::Netns::exec(ns),
        };
        Daemon::start_cmd(cmd, state, identity, trust, listen, log)
    }

    /// Start the daemon through `cmd` (the binary, or a wrapper that execs
    /// the arguments that follow).
    pub fn start_cmd(
        cmd: std::process::Command,
        state: &Path,
        identity: &Path,
        trust: &[Fingerprint],
        listen: &str,
        log: &Path,
    ) -> Daemon {
        let trust: Vec<String> = trust.iter().map(|t| t.to_string()).collect();
        let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
        Daemon::serve(cmd, listen, state, identity, &trust, &[], log)
    }
}

/// A target daemon on loopback (state `base/state`, log
/// `base/daemon.log`) that trusts one agent, and that agent's link
/// configuration.
pub struct Loopback {
    pub daemon: Daemon,
    pub cfg: LinkConfig,
    /// The target's fingerprint (for other agents' configurations).
    pub tf: Fingerprint,
    /// The target's state directory.
    pub state: PathBuf,
}

impl Loopback {
    /// Set it up in `base`.
    pub fn start(base: &Path) -> Loopback {
        let (tid, tf) = keys(base, "target");
        let (aid, af) = keys(base, "agent");
        let state = base.join("state");
        let daemon = Daemon::start(&state, &tid, &[af], "127.0.0.1:0", &base.join("daemon.log"));
        let cfg = agent_config(&daemon.addr, &aid, tf);
        Loopback {
            daemon,
            cfg,
            tf,
            state,
        }
    }
}

/// The set-up of a hostile-input test in `base`: a target daemon on
/// loopback (state `base/state`, log `base/daemon.log`) that trusts an
/// agent, that agent's link configuration, and `base/outside/victim`, a
/// file beside the state directory that hostile input must never reach.
pub struct Hostile {
    pub daemon: Daemon,
    pub cfg: LinkConfig,
    /// The target's fingerprint (for other agents' configurations).
    pub tf: Fingerprint,
    /// The target's state directory.
    pub state: PathBuf,
    pub outside: PathBuf,
}

impl Hostile {
    /// Set it up in `base`.
    pub fn start(base: &Path) -> Hostile {
        let outside = base.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"precious").unwrap();
        let Loopback {
            daemon,
            cfg,
            tf,
            state,
        } = Loopback::start(base);
        Hostile {
            daemon,
            cfg,
            tf,
            state,
            outside,
        }
    }
}

/// An agent configuration for tests: short heartbeat and backoff.
pub fn agent_config(addr: &str, identity: &Path, trust: Fingerprint) -> LinkConfig {
    let id = standin_link::identity::load(identity).expect("loading the agent identity");
    let mut c = LinkConfig::new(addr, id, vec![trust], "src1");
    c.heartbeat = Duration::from_millis(300);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(300);
    c.connect_timeout = Duration::from_secs(3);
    c.dead_after = Duration::from_secs(2);
    c
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A tree by relative path: `dir`, or `file <len> <sha256>` (small in failure output).
pub type Tree = BTreeMap<String, String>;

/// One node of a model tree.
#[derive(Clone)]
enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
}

fn describe(n: &Node) -> String {
    match n {
        Node::Dir => "dir".to_string(),
        Node::File { mode, data } => {
            format!("file {mode:o} {} {}", data.len(), hex::encode(sha(data)))
        }
        Node::Symlink(t) => format!("symlink {t}"),
    }
}

fn summarise(model: &BTreeMap<String, Node>) -> Tree {
    model
        .iter()
        .map(|(k, v)| (k.clone(), describe(v)))
        .collect()
}

/// Read a directory tree: directories, regular files (mode, size, sha256), symlinks.
pub fn read_tree(root: &Path) -> Tree {
    use std::os::unix::fs::PermissionsExt;
    let mut t = Tree::new();
    fn walk(root: &Path, dir: &Path, t: &mut Tree) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let node = if m.is_dir() {
                Node::Dir
            } else if m.file_type().is_symlink() {
                Node::Symlink(
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else {
                Node::File {
                    mode: m.permissions().mode() & 0o7777,
                    data: std::fs::read(&p).unwrap(),
                }
            };
            t.insert(rel, describe(&node));
            if m.is_dir() {
                walk(root, &p, t);
            }
        }
    }
    if root.exists() {
        walk(root, root, &mut t);
    }
    t
}

pub fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime_ns: 1_700_000_000_000_000_000,
        size: 0,
        xattrs: Default::default(),
        target: None,
        link: None,
        rdev: None,
        sparse: None,
        sha256: None,
    }
}

/// The link's content digest (BLAKE3-256) that records carry.
fn sha(b: &[u8]) -> [u8; 32] {
    standin_builder::hash::content_digest(b)
}

/// A scripted history: the records of each change set and the tree after it.
/// `states[k]` is the tree after change set k (`states[0]` is empty). It
/// appends to and truncates a log, replaces files through a temp file and a
/// rename, changes modes, makes hard links and symlinks, and deletes.
pub fn history(n: u64) -> (Vec<Vec<Record>>, Vec<Tree>) {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    let mut sets = Vec::new();
    let mut states = vec![summarise(&tree)];
    let mut log: Vec<u8> = Vec::new();
    for k in 1..=n {
        let mut r = Vec::new();
        if k == 1 {
            r.push(Record::Create(entry("d", Kind::Dir)));
            r.push(Record::Create(entry("d/log", Kind::File)));
            tree.insert("d".into(), Node::Dir);
        }
        // Append a line to the log; sometimes cut it in half.
        let line = format!("change set {k}\n").into_bytes();
        let offset = log.len() as u64;
        log.extend_from_slice(&line);
        r.push(Record::WriteExtent {
            path: b"d/log".to_vec(),
            offset,
            data: line,
            content_digest: Some(sha(&log)),
        });
        if k % 3 == 0 {
            let size = log.len() / 2;
            log.truncate(size);
            r.push(Record::Truncate {
                path: b"d/log".to_vec(),
                size: size as u64,
                content_digest: Some(sha(&log)),
            });
        }
        tree.insert(
            "d/log".into(),
            Node::File {
                mode: 0o644,
                data: log.clone(),
            },
        );
        // Write a new version of a file through a temp file and a rename;
        // a multi-piece file carries its digest on the last piece only.
        let data: Vec<u8> = (0..(k as usize % 4) * 300_000 + 10)
            .map(|i| (i as u64 * 31 + k) as u8)
            .collect();
        r.push(Record::Create(entry("tmp", Kind::File)));
        let pieces: Vec<&[u8]> = data.chunks(256 << 10).collect();
        for (i, chunk) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            r.push(Record::WriteExtent {
                path: b"tmp".to_vec(),
                offset: (i * (256 << 10)) as u64,
                data: chunk.to_vec(),
                content_digest: last.then(|| sha(&data)),
            });
        }
        let name = format!("f{}", k % 5);
        r.push(Record::Rename {
            from: b"tmp".to_vec(),
            to: name.as_bytes().to_vec(),
        });
        let mut mode = 0o644;
        if k % 4 == 1 {
            mode = 0o600;
            let mut e = entry(&name, Kind::File);
            e.mode = mode;
            r.push(Record::SetMetadata(e));
        }
        tree.insert(
            name.clone(),
            Node::File {
                mode,
                data: data.clone(),
            },
        );
        if k % 5 == 2 {
            r.push(Record::Link {
                existing: name.as_bytes().to_vec(),
                new: b"h".to_vec(),
            });
            tree.insert("h".into(), Node::File { mode, data });
        }
        if k % 3 == 1 {
            let mut e = entry("l", Kind::Symlink);
            e.target = Some(name.as_bytes().to_vec());
            r.push(Record::Create(e));
            tree.insert("l".into(), Node::Symlink(name.clone()));
        }
        if k % 7 == 0 {
            let victim = format!("f{}", (k + 1) % 5);
            r.push(Record::Delete {
                path: victim.as_bytes().to_vec(),
            });
            tree.remove(&victim);
        }
        sets.push(r);
        states.push(summarise(&tree));
    }
    (sets, states)
}

/// The replica of source `src1` in a state directory.
pub fn replica(state: &Path) -> PathBuf {
    state.join("staging/src1/root")
}

/// last_applied_seq from state.json.
pub fn applied(state: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
    v["last_applied_seq"].as_u64().unwrap()
}

/// A listing of everything in a directory (paths, sizes) to prove it did not change.
pub fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    fn walk(root: &Path, d: &Path, v: &mut Vec<(String, u64)>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                v.push((
                    p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                    if m.is_dir() { 0 } else { m.len() },
                ));
                if m.is_dir() {
                    walk(root, &p, v);
                }
            }
        }
    }
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Wait (bounded) until `f` holds; panic with `what` otherwise.
/// Kill the daemon (SIGKILL) at a random moment of the stream `sender` is
/// sending: after a random number (below `sets - 2`) of acknowledgements
/// plus a random few milliseconds, both drawn from the xorshift `rng`.
pub fn kill_at_random_moment(
    daemon: &mut Daemon,
    sender: &standin_agent::link::Sender,
    rng: &mut u64,
    sets: u64,
) {
    let after = xorshift(rng) % (sets - 2);
    wait_until("acknowledgements before the kill", || {
        sender.stats().last_acked >= after
    });
    std::thread::sleep(Duration::from_millis((*rng >> 20) % 25));
    daemon.kill9();
}

/// Start a daemon on loopback that holds change set `seq` half way through
/// its apply (the `STANDIN_TEST_HOLD_MID_APPLY` hook, file `hold`) until
/// [`kill_mid_apply`] kills it there.
pub fn start_held_mid_apply(
    state: &Path,
    identity: &Path,
    trust: &[Fingerprint],
    log: &Path,
    hold: &Path,
    seq: u64,
) -> Daemon {
    std::fs::write(hold, seq.to_string()).unwrap();
    let mut cmd = common::standin();
    cmd.env(standin_staging::test_hook::HOLD_MID_APPLY_ENV, hold);
    Daemon::start_cmd(cmd, state, identity, trust, "127.0.0.1:0", log)
}

/// Kill -9 a daemon of [`start_held_mid_apply`] once it holds inside the
/// apply, so the kill lands inside a change set every time.
pub fn kill_mid_apply(daemon: &mut Daemon, hold: &Path) {
    let held = standin_staging::test_hook::held_path(hold);
    wait_until("the daemon to hold inside a change set's apply", || {
        held.exists()
    });
    daemon.kill9();
    std::fs::remove_file(hold).unwrap();
}

/// The next number of the tests' xorshift generator (state `rng`, odd).
pub fn xorshift(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gave up waiting for {what}");
}
