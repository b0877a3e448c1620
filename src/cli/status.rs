//! `standin status`: protection state of a target.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use standin_link::Fingerprint;

use super::Exit;

/// Arguments of `standin status`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["target", "state_dir"])))]
#[command(
    after_help = "Examples:\n  standin status --state-dir /var/lib/standin\n  standin status --target 198.18.0.2 --identity /etc/standin/identity --trust sha256:3f0c… --json"
)]
pub struct Args {
    /// Ask a running target over the network (`host[:port]`, port 6320 by default).
    #[arg(long, conflicts_with = "state_dir", requires_all = ["identity", "trust"])]
    pub target: Option<String>,
    /// This machine's identity directory (with --target).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The target's fingerprint (with --target).
    #[arg(long)]
    pub trust: Vec<Fingerprint>,
    /// Read the state directory on the target itself.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Seconds without a heartbeat before the failover condition is met (with --state-dir).
    #[arg(long, default_value_t = 35)]
    pub heartbeat_silence: u64,
    /// Replication lag (seconds) above which the status is a Warning (with --state-dir).
    #[arg(long, default_value_t = 30)]
    pub lag_warning: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<Exit> {
    let status = match (&a.target, &a.state_dir) {
        (Some(target), None) => {
            let identity =
                standin_link::identity::load(a.identity.as_deref().expect("clap requires it"))?;
            let source_id = standin_link::default_source_id();
            let cfg =
                standin_agent::link::LinkConfig::new(target, identity, a.trust.clone(), &source_id);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(standin_agent::link::query_status(&cfg))?
        }
        (None, Some(dir)) => standin_staging::status::from_state_dir(
            dir,
            &standin_staging::status::StatusOptions {
                silence: Duration::from_secs(a.heartbeat_silence),
                lag_warning: Duration::from_secs(a.lag_warning),
            },
        )?,
        _ => bail!("give either --target ADDR (with --identity and --trust) or --state-dir DIR"),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
        if let Some(dir) = &a.state_dir {
            if let Some(r) = standin_staging::failover::load_record(dir)? {
                println!(
                    "failover:    {} {:?} ({} at sequence number {} into {})",
                    r.id,
                    r.state,
                    r.image,
                    r.seq,
                    r.target_root.display()
                );
            }
        }
    }
    Ok(Exit::Ok)
}
