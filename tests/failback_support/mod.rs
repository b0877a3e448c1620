//! Helpers for the failback tests: a target daemon on loopback, protect
//! `--once` from a root, incompressible data, tree listings without the
//! state directory and the kept paths.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::common::*;
use crate::failover_support::{tree, under, Info, KEPT};

/// The source id both directions use.
pub const ID: &str = "demo-source";
/// The state directory inside each root.
pub const STATE: &str = "var/lib/standin";

pub fn keys(base: &Path, name: &str) -> (PathBuf, String) {
    let dir = base.join(name);
    let out = run_ok(standin().args(["keys", "init", "--dir"]).arg(&dir), None);
    (dir, stdout(&out).trim().to_string())
}

/// `standin target serve` on loopback (killed on drop).
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(state: &Path, identity: &Path, trust: &str, root: &Path, log: &Path) -> Daemon {
        let mut child = standin()
            .args(["target", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .arg("--identity")
            .arg(identity)
            .args(["--trust", trust, "--snapshot-every", "0", "--target-root"])
            .arg(root)
            .env("STANDIN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("starting standin target serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address: {line:?}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .to_string();
        Daemon {
            child,
            addr,
            log: log.to_path_buf(),
        }
    }
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `standin protect --once --json` from `root` to the daemon; the JSON.
pub fn protect_once(d: &Daemon, id: &Path, trust: &str, root: &Path) -> serde_json::Value {
    let out = run(standin()
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
