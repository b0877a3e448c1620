//! `standin target`: the target daemon.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use standin_link::Fingerprint;

use super::Exit;

/// Subcommands of `standin target`.
#[derive(clap::Subcommand, Debug)]
pub enum TargetCommand {
    /// Run the target daemon in the foreground: receive, journal and apply change sets.
    #[command(
        after_help = "Examples:\n  standin target serve --listen 0.0.0.0:6320 --state-dir /var/lib/standin \\\n      --identity /etc/standin/identity --trust sha256:3f0c…\n  standin target serve --listen 198.18.0.2 --heartbeat-listen 10.9.0.2 --heartbeat-silence 35 \\\n      --on-failover-condition 'logger standin: source gone' --state-dir /var/lib/standin \\\n      --identity /etc/standin/identity --trust sha256:3f0c…\n\nPrints `listening on ADDR` once it accepts connections. The failover condition\nis met after --heartbeat-silence seconds without a heartbeat on every path: the\nreplication link and, with --heartbeat-listen (port 6321 by default), the second\npath the agent keeps with `standin protect --heartbeat-target`."
    )]
    Serve(ServeArgs),
    /// Start the staging area of a returning source from this machine's own system (reverse protection).
    #[command(after_help = super::target_seed::AFTER_HELP)]
    Seed(super::target_seed::SeedArgs),
}

/// Arguments of `standin target serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:6320")]
    pub listen: String,
    /// State directory: staging/, journal/, snapshots/, rollback/, state.json.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// This target's identity directory (`standin keys init`).
    #[arg(long)]
    pub identity: PathBuf,
    /// Fingerprint of a source (or status client) allowed to connect; repeat for more.
    #[arg(long, required = true)]
    pub trust: Vec<Fingerprint>,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = standin_link::frame::DEFAULT_MAX_FRAME)]
    pub max_frame: u32,
    /// zstd level for frames this side sends (0 = off).
    #[arg(long, default_value_t = 3)]
    pub compress: i32,
    /// Seconds without a heartbeat before the failover condition is met.
    #[arg(long, alias = "failover-after", default_value_t = 35)]
    pub heartbeat_silence: u64,
    /// Also listen here for the agent's second heartbeat path (`standin protect
    /// --heartbeat-target`), ideally on another network than --listen: the
    /// failover condition needs silence on every path.
    #[arg(long, value_name = "ADDR")]
    pub heartbeat_listen: Option<String>,
    /// Replication lag (seconds) above which status reports a Warning.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub lag_warning: u64,
    /// This target's own system tree, whose profile validation compares.
    #[arg(long, default_value = "/")]
    pub target_root: PathBuf,
    /// Command run (by `sh -c`, with STANDIN_STATE_DIR set) once when the failover condition is met.
    #[arg(long)]
    pub on_failover_condition: Option<String>,
    /// Fail over by itself once the condition held this many seconds (opt-in; needs --auto-target-root).
    #[arg(long, requires = "auto_target_root")]
    pub auto_failover_after: Option<u64>,
    /// Target root for the automatic failover.
    #[arg(long)]
    pub auto_target_root: Option<PathBuf>,
    /// Reboot command after an automatic failover (default: no reboot).
    #[arg(long)]
    pub auto_reboot_command: Option<String>,
    /// Take a snapshot this often (seconds) while protected, and prune by the retention policy; 0 = off.
    #[arg(long, default_value_t = 600)]
    pub snapshot_every: u64,
}

pub fn run(command: TargetCommand) -> Result<Exit> {
    match command {
        TargetCommand::Serve(a) => serve(a),
        TargetCommand::Seed(a) => super::target_seed::run(a),
    }
}

fn serve(a: ServeArgs) -> Result<Exit> {
    let identity = standin_link::identity::load(&a.identity)?;
    let mut cfg = standin_staging::ServeConfig::new(a.listen, a.state_dir, identity, a.trust);
    cfg.max_frame = a.max_frame;
    cfg.compress = a.compress;
    cfg.heartbeat_silence = Duration::from_secs(a.heartbeat_silence);
    cfg.target_root = a.target_root;
    cfg.heartbeat_listen = a
        .heartbeat_listen
        .as_deref()
        .map(|h| standin_link::with_port(h, standin_link::DEFAULT_HEARTBEAT_PORT));
    cfg.lag_warning = Duration::from_secs(a.lag_warning);
    cfg.monitor.on_condition = a.on_failover_condition;
    cfg.monitor.snapshot_every =
        (a.snapshot_every > 0).then(|| Duration::from_secs(a.snapshot_every));
    if let (Some(after), Some(root)) = (a.auto_failover_after, a.auto_target_root) {
        cfg.monitor.auto_failover = Some(standin_staging::monitor::AutoFailover {
            after: Duration::from_secs(after),
            target_root: root,
            reboot: a.auto_reboot_command,
        });
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(standin_staging::serve(cfg, |addr| {
        println!("listening on {addr}");
        let _ = std::io::stdout().flush();
    }))?;
    Ok(Exit::Ok)
}
