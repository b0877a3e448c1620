//! Run the replication loop alone against a target (for bench/replication-lag.sh
//! until `standin protect` wraps it): capture, diff, send, until SIGTERM/SIGINT
//! or `--seconds`.
//!
//! ```sh
//! cargo run --release -p standin-agent --example replicate -- \
//!     ROOT TARGET_ADDR IDENTITY_DIR TARGET_FINGERPRINT STATE_DIR [SECONDS]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use standin_agent::blockindex::BlockIndex;
use standin_agent::capture::{CaptureOptions, Watcher};
use standin_agent::link::{LinkConfig, Sender};
use standin_agent::replicate::{replicate, ReplicateOptions};

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() >= 5,
        "usage: replicate ROOT TARGET_ADDR IDENTITY_DIR TARGET_FINGERPRINT STATE_DIR [SECONDS]"
    );
    let root = PathBuf::from(&a[0]);
    let state = PathBuf::from(&a[4]);
    let seconds: Option<u64> = a.get(5).map(|s| s.parse()).transpose()?;
    let id = standin_link::identity::load(std::path::Path::new(&a[2]))?;
    let trust = a[3]
        .parse()
        .map_err(|e: String| anyhow::anyhow!("parsing the target fingerprint: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut cfg = LinkConfig::new(&a[1], id, vec![trust], "bench");
        cfg.spill_dir = Some(state.join("queue"));
        let watcher = Watcher::start(
            &root,
            &CaptureOptions {
                ignore: vec![state.clone()],
                ..Default::default()
            },
        )?;
        let index = BlockIndex::open(&state)?;
        let sender = Sender::start(cfg).await?;
        let opts = ReplicateOptions::default();
        let counters = opts.counters.clone();
        let stop = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            let timer = async {
                match seconds {
                    Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = timer => {}
            }
        };
        let r = replicate(&root, opts, watcher, index, &sender, stop).await?;
        let _ = counters;
        eprintln!("{}", serde_json::to_string(&r)?);
        println!("{}", serde_json::to_string(&sender.stats())?);
        Ok(())
    })
}
