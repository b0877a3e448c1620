//! Helpers for the failback tests: machines A and B as two network
//! namespaces joined by a veth pair (A 198.18.0.1, B 198.18.0.2, no default
//! route), a target daemon on either, protect `--once` from a root,
//! incompressible data, tree listings without the state directory and the
//! kept paths.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::netns::Netns;
use crate::common::*;
use crate::failover_support::{tree, under, Info, KEPT};

/// The source id both directions use.
pub const ID: &str = "demo-source";
/// The state directory inside each root.
pub const STATE: &str = "var/lib/standin";

pub use crate::common::daemon::{keys, Daemon};

/// One of the two machines of a failback test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// The protected server (source first, the failback's target later).
    A,
    /// The standby (target first, the source after its failover).
    B,
}

/// Machines A and B as two network namespaces (deleted on drop).
pub struct Hosts(Netns);

impl Hosts {
    /// Create the namespaces; `prefix` (2–3 characters) names them.
    pub fn create(prefix: &str) -> Hosts {
        require_tool("ip", "iproute2");
        Hosts(Netns::create(prefix))
    }

    /// `standin` run on `host`.
    pub fn standin(&self, host: Host) -> Command {
        let mut c = Netns::exec(match host {
            Host::A => &self.0.src,
            Host::B => &self.0.tgt,
        });
        c.env_remove("STANDIN_LOG");
        c
    }

    /// The address a daemon on `host` listens on (any free port).
    pub fn listen(&self, host: Host) -> &'static str {
        match host {
            Host::A => "198.18.0.1:0",
            Host::B => "198.18.0.2:0",
        }
    }
}

/// `standin target serve` on one host.
impl Daemon {
    pub fn start(
        on: (&Hosts, Host),
        state: &Path,
        identity: &Path,
        trust: &str,
        root: &Path,
        log: &Path,
    ) -> Daemon {
        let (hosts, host) = on;
        let extra = [
            OsStr::new("--snapshot-every"),
            OsStr::new("0"),
            OsStr::new("--target-root"),
            root.as_os_str(),
        ];
        let cmd = hosts.standin(host);
        Daemon::serve(
            cmd,
            hosts.listen(host),
            state,
            identity,
            &[trust],
            &extra,
            log,
        )
    }
}

/// Machines A and B of a failback test, built by [`Machines::build`]:
/// their roots, state directories and identities, and B's own tree.
pub struct Machines {
    pub base: PathBuf,
    pub a_root: PathBuf,
    pub b_root: PathBuf,
    pub a_state: PathBuf,
    pub b_state: PathBuf,
    pub a_keys: PathBuf,
    pub a_fpr: String,
    pub b_keys: PathBuf,
    pub b_fpr: String,
    /// B's own system before anything happened (its rollback restores it).
    pub b_own: BTreeMap<String, Info>,
}

impl Machines {
    /// A and B in `base`: `build_a` makes `base/a-root` and `build_b`
    /// makes `base/b-root` (neither exists before), then each gets its own
    /// boot loader (`boot/grub/grub.cfg` holding `grub_a`, `grub_b`), B
    /// its state directory, both an identity; waits past the capture's
    /// start margin, then records B's own system.
    pub fn build(
        base: &Path,
        build_a: impl FnOnce(&Path),
        grub_a: &str,
        build_b: impl FnOnce(&Path),
        grub_b: &str,
    ) -> Machines {
        let (a_root, b_root) = (base.join("a-root"), base.join("b-root"));
        for (root, build, grub) in [
            (&a_root, Box::new(build_a) as Box<dyn FnOnce(&Path)>, grub_a),
            (&b_root, Box::new(build_b), grub_b),
        ] {
            build(root);
            std::fs::create_dir_all(root.join("boot/grub")).unwrap();
            std::fs::write(root.join("boot/grub/grub.cfg"), grub).unwrap();
        }
        let (a_state, b_state) = (a_root.join(STATE), b_root.join(STATE));
        std::fs::create_dir_all(&b_state).unwrap();
        let (a_keys, a_fpr) = keys(base, "keys-a");
        let (b_keys, b_fpr) = keys(base, "keys-b");
        // Files older than the capture's start margin.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let b_own = system(&b_root);
        Machines {
            base: base.to_path_buf(),
            a_root,
            b_root,
            a_state,
            b_state,
            a_keys,
            a_fpr,
            b_keys,
            b_fpr,
            b_own,
        }
    }

    /// Protect A onto B (a daemon on B, `--once`), then fail B over (A is
    /// gone); B's root then holds A's system, named `hostname`.
    pub fn protect_then_fail_over(&self, hosts: &Hosts, hostname: &str) {
        let d = Daemon::start(
            (hosts, Host::B),
            &self.b_state,
            &self.b_keys,
            &self.a_fpr,
            &self.b_root,
            &self.base.join("b.log"),
        );
        protect_once(
            (hosts, Host::A),
            &d,
            &self.a_keys,
            &self.b_fpr,
            &self.a_root,
        );
        d.stop();
        run_ok(
            &mut failover(
                &["--no-reboot", "--yes", "--immediate"],
                &self.b_state,
                &self.b_root,
            ),
            None,
        );
        assert_eq!(
            std::fs::read_to_string(self.b_root.join("etc/hostname")).unwrap(),
            format!("{hostname}\n")
        );
    }

    /// `standin target seed --json` of A's staging area from A's own root;
    /// the report (a hard-link seed: both roots are on one ext4 or tmpfs).
    pub fn seed_a(&self) -> serde_json::Value {
        std::fs::create_dir_all(&self.a_state).unwrap();
        let out = run_ok(
            standin()
                .args(["target", "seed", "--json", "--source-id", ID, "--state-dir"])
                .arg(&self.a_state)
                .arg("--from-root")
                .arg(&self.a_root),
            None,
        );
        let seed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("seed: {seed}");
        assert_eq!(seed["method"], "hardlink", "{seed:#}");
        seed
    }

    /// B protects back to A (a daemon on A logging to `base/log`); protect's JSON.
    pub fn protect_back(&self, hosts: &Hosts, log: &str) -> serde_json::Value {
        let d = Daemon::start(
            (hosts, Host::A),
            &self.a_state,
            &self.a_keys,
            &self.b_fpr,
            &self.a_root,
            &self.base.join(log),
        );
        let v = protect_once(
            (hosts, Host::B),
            &d,
            &self.b_keys,
            &self.a_fpr,
            &self.b_root,
        );
        d.stop();
        v
    }
}

/// The bytes the reverse mirror `v` (protect's JSON) sent, file data and
/// comparison; asserts that only what changed travelled: at least half of
/// the `changed` bytes and under twice that.
pub fn assert_only_changes_sent(v: &serde_json::Value, changed: u64) -> u64 {
    let m = &v["mirror"];
    let sent = m["bytes_sent"].as_u64().unwrap() + m["compare_bytes_sent"].as_u64().unwrap();
    eprintln!(
        "reverse mirror: {sent} bytes sent for {changed} bytes changed ({:.2}x); tree {} bytes, {} entries, {} changed, {} deleted, {:.1} s",
        sent as f64 / changed as f64,
        m["tree_bytes"],
        m["entries"],
        m["changed"],
        m["deleted"],
        m["seconds"].as_f64().unwrap_or(0.0)
    );
    assert!(
        sent < 2 * changed,
        "sent {sent} bytes for {changed} changed; {v:#}"
    );
    assert!(
        sent >= changed / 2,
        "sent {sent} bytes: the change cannot have travelled; {v:#}"
    );
    sent
}

/// `standin protect --once --json` on host `from`, of `root`, to the daemon
/// (on the other host, across the veth pair); the JSON.
pub fn protect_once(
    from: (&Hosts, Host),
    d: &Daemon,
    id: &Path,
    trust: &str,
    root: &Path,
) -> serde_json::Value {
    let (hosts, host) = from;
    let out = run(hosts
        .standin(host)
        .args(["protect", "--once", "--json", "--progress", "none"])
        .args(["--target", &d.addr, "--identity"])
        .arg(id)
        .args(["--trust", trust, "--source-id", ID, "--root"])
        .arg(root)
        .args(["--exclude", &format!("/{STATE}/**")]));
    assert!(
        out.status.success(),
        "protect failed:\n{}\n{}\ntarget log:\n{}",
        stdout(&out),
        stderr(&out),
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mirror"]["complete"], true, "{v:#}");
    v
}

/// `standin failover ARGS... --state-dir STATE --target-root ROOT`.
pub fn failover(args: &[&str], state: &Path, root: &Path) -> Command {
    let mut c = standin();
    c.arg("failover")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--target-root")
        .arg(root);
    c
}

pub fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The tree of a root without the standin state directory.
pub fn system(root: &Path) -> BTreeMap<String, Info> {
    tree(root, &[STATE])
}

pub fn kept(p: &str) -> bool {
    KEPT.iter().any(|k| under(p, k)) || p == "etc/fstab"
}

pub fn without_kept(t: &BTreeMap<String, Info>) -> BTreeMap<String, Info> {
    t.iter()
        .filter(|(p, _)| !kept(p))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
