//! Helpers for the replication tests: a target daemon, an agent Sender and
//! the replication loop on a thread, and an independent tree comparison
//! (lstat fields, xattrs, content, hard-link groups).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use standin_agent::blockindex::BlockIndex;
use standin_agent::capture::{CaptureOptions, Watcher};
use standin_agent::link::{LinkConfig, Sender};
use standin_agent::replicate::{replicate, ReplicateOptions, ReplicateReport};

#[path = "../link_support/mod.rs"]
pub mod link_support;
pub use link_support::*;

/// One path's state as the comparison sees it.
fn describe(root: &Path, p: &Path, groups: &mut BTreeMap<(u64, u64), Vec<String>>) -> String {
    let md = std::fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
    let ft = md.file_type();
    let mut s = format!(
        "mode {:o} uid {} gid {} mtime {}.{:09}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.mtime(),
        md.mtime_nsec()
    );
    if ft.is_file() {
        let mut h = Sha256::new();
        let mut f = std::fs::File::open(p).unwrap();
        std::io::copy(&mut f, &mut h).unwrap();
        s += &format!(" size {} sha {}", md.len(), hex::encode(h.finalize()));
        if md.nlink() > 1 {
            groups.entry((md.dev(), md.ino())).or_default().push(rel);
        }
    } else if ft.is_symlink() {
        s += &format!(" -> {}", std::fs::read_link(p).unwrap().display());
    } else if !ft.is_dir() {
        s += &format!(" rdev {}", md.rdev());
    }
    let mut names = vec![0u8; 65536];
    if let Ok(n) = rustix::fs::llistxattr(p, &mut names[..]) {
        let mut list: Vec<&[u8]> = names[..n]
            .split(|&b| b == 0)
            .filter(|x| !x.is_empty())
            .collect();
        list.sort();
        for name in list {
            let mut v = vec![0u8; 65536];
            let l = rustix::fs::lgetxattr(p, std::ffi::OsStr::from_bytes(name), &mut v[..])
                .unwrap_or(0);
            s += &format!(
                " xattr {}={}",
                String::from_utf8_lossy(name),
                hex::encode(&v[..l])
            );
        }
    }
    s
}

/// Every path under `root` (not the root itself) described, plus the hard-link groups.
pub fn snapshot(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut groups = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.insert(rel, describe(root, e.path(), &mut groups));
    }
    let mut g: Vec<Vec<String>> = groups
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    g.sort();
    (out, g)
}

/// Differences between two snapshots, for failure messages.
pub fn differences(a: &Path, b: &Path) -> Vec<String> {
    let (sa, ga) = snapshot(a);
    let (sb, gb) = snapshot(b);
    let mut d = Vec::new();
    for (k, v) in &sa {
        match sb.get(k) {
            None => d.push(format!("missing on the target: {k} ({v})")),
            Some(w) if w != v => d.push(format!("{k}: source {v} / target {w}")),
            _ => {}
        }
    }
    for k in sb.keys() {
        if !sa.contains_key(k) {
            d.push(format!("extra on the target: {k}"));
        }
    }
    if ga != gb {
        d.push(format!("hard-link groups: source {ga:?} / target {gb:?}"));
    }
    d
}

/// A daemon, a Sender and the replication loop on its own thread.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub state: PathBuf,
    pub daemon: Option<Daemon>,
    pub addr: String,
    pub tid: PathBuf,
    pub af: standin_link::Fingerprint,
    pub sender: Arc<Sender>,
    pub opts: ReplicateOptions,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<ReplicateReport>>>,
    pub rt: Arc<tokio::runtime::Runtime>,
}

impl Harness {
    /// Start everything; `tune` adjusts the link configuration.
    pub fn start(tune: impl FnOnce(&mut LinkConfig), ropts: ReplicateOptions) -> Harness {
        Self::start_with(tune, ropts, |_, _| {})
    }

    /// [`Harness::start`] with change capture options adjusted by `capture`
    /// (given the source directory).
    pub fn start_with(
        tune: impl FnOnce(&mut LinkConfig),
        ropts: ReplicateOptions,
        capture: impl FnOnce(&mut CaptureOptions, &Path),
    ) -> Harness {
        let dir = common::tempdir();
        let (tid, tf) = keys(dir.path(), "target");
        let (aid, af) = keys(dir.path(), "agent");
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let state = dir.path().join("state");
        let agent_state = dir.path().join("agent-state");
        std::fs::create_dir(&agent_state).unwrap();
        let daemon = Daemon::start(
            &state,
            &tid,
            &[af],
            "127.0.0.1:0",
            &dir.path().join("daemon.log"),
        );
        let addr = daemon.addr.clone();
        let rt = Arc::new(runtime());
        let mut cfg = agent_config(&addr, &aid, tf);
        cfg.spill_dir = Some(agent_state.join("queue"));
        tune(&mut cfg);
        let sender = Arc::new(
            rt.block_on(Sender::start(cfg))
                .expect("starting the sender"),
        );
        let mut copts = CaptureOptions {
            ignore: vec![agent_state.clone()],
            ..Default::default()
        };
        capture(&mut copts, &src);
        let watcher = Watcher::start(&src, &copts).expect("starting change capture");
        let index = BlockIndex::open(&agent_state).unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let (rt, sender, src, opts) = (rt.clone(), sender.clone(), src.clone(), ropts.clone());
            std::thread::spawn(move || {
                rt.block_on(replicate(&src, opts, watcher, index, &sender, async move {
                    let _ = stop_rx.await;
                }))
            })
        };
        Harness {
            dir,
            src,
            state,
            daemon: Some(daemon),
            addr,
            tid,
            af,
            sender,
            opts: ropts,
            stop: Some(stop),
            thread: Some(thread),
            rt,
        }
    }

    pub fn replica(&self) -> PathBuf {
        replica(&self.state)
    }

    /// kill -9 the target daemon.
    pub fn kill_target(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// Restart the target daemon on the same address and state.
    pub fn restart_target(&mut self) {
        for attempt in 0..50 {
            let log = self.dir.path().join("daemon.log");
            let r = std::panic::catch_unwind(|| {
                Daemon::start(&self.state, &self.tid, &[self.af], &self.addr, &log)
            });
            match r {
                Ok(d) => {
                    self.daemon = Some(d);
                    return;
                }
                Err(_) if attempt < 49 => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// Wait (bounded) until the target equals the source; panic with the differences.
    pub fn converge(&mut self) {
        let mut last = Vec::new();
        for _ in 0..300 {
            std::thread::sleep(Duration::from_millis(200));
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().unwrap().join();
                panic!("the replication loop ended early: {r:?}");
            }
            let st = self.sender.stats();
            if st.queue_sets > 0 {
                continue;
            }
            last = differences(&self.src, &self.replica());
            if last.is_empty() {
                return;
            }
        }
        panic!(
            "the target did not converge:\n{}\nsender: {:?}\ncounters: {:?}\ndaemon log:\n{}",
            last.join("\n"),
            self.sender.stats(),
            self.opts.counters.report(),
            std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
        );
    }

    /// Stop the loop and return its report.
    pub fn stop(&mut self) -> ReplicateReport {
        let _ = self.stop.take().unwrap().send(());
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("replication thread")
            .expect("replication failed")
    }
}
