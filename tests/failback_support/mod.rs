//! Helpers for the failback tests: machines A and B as two network
//! namespaces joined by a veth pair (A 198.18.0.1, B 198.18.0.2, no default
//! route), a target daemon on either, protect `--once` from a root,
//! incompressible data, tree listings without the state directory and the
//! kept paths.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
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
