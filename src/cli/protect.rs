//! `standin protect`: validate, mirror and replicate to a target.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use standin_agent::bwlimit::BwLimit;
use standin_agent::link::LinkConfig;
use standin_agent::mirror::{MirrorOptions, DEFAULT_BLOCK_SIZE};
use standin_agent::protect::{protect, ProtectOptions};
use standin_builder::scan::ScanOptions;
use standin_link::message::MirrorMode;
use standin_link::Fingerprint;

use super::progress::{human_bytes, CliProgress, ProgressMode};
use standin_builder::recipe::Size;

use super::Exit;

/// How the mirror compares the trees.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Block checksums: only differing blocks travel (default).
    Checksum,
    /// Date, time and size: whole files whose date, time or size differ.
    Dts,
    /// Everything.
    Full,
}

/// Arguments of `standin protect`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  standin protect --target 198.18.0.2 --identity /etc/standin/identity --trust sha256:3f0c…
  standin protect --target standby:6320 --identity /etc/standin/identity --trust sha256:3f0c… \\
      --fix-all --exclude '/var/cache/**' --bwlimit 10M@08:00-18:00
  standin protect --target 198.18.0.2 --identity id --trust sha256:3f0c… --root /srv/tree --once --json
  standin protect --target 198.18.0.2 --heartbeat-target 10.9.0.2 --heartbeat-interval 1 \\
      --state-dir /var/lib/standin-agent --identity /etc/standin/identity --trust sha256:3f0c…

Validates this machine against the target first and exits 3 while errors
remain (--fix-all applies the target's automatic fixes and validates again).
Then mirrors (by block checksums unless --mirror says otherwise; only what
changed since the last completed mirror while the target still holds it)
and replicates continuously until SIGINT/SIGTERM; --once stops after the
mirror.
--bwlimit RATE[@HH:MM-HH:MM]: bytes per second (k, M, G suffixes), limited
only inside the daily window (UTC) when one is given.
--heartbeat-target sends the same heartbeats over a second connection to the
target's --heartbeat-listen address (port 6321 by default), so the target can
tell a dead source from a dead replication link. In the foreground a live
status line shows sequence numbers, lag, queue (and its spill to disk) and
the heartbeat paths.
Exit codes: 0 ok, 1 failed (or mirror incomplete), 2 usage, 3 validation errors.")]
pub struct Args {
    /// The target (`host[:port]`, port 6320 by default).
    #[arg(long)]
    pub target: String,
    /// This machine's identity directory (`standin keys init`).
    #[arg(long)]
    pub identity: PathBuf,
    /// The target's fingerprint; repeat for more.
    #[arg(long, required = true)]
    pub trust: Vec<Fingerprint>,
    /// The tree to protect.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The agent's state directory (queue spill).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// This source's id on the target (default: the host name).
    #[arg(long)]
    pub source_id: Option<String>,
    /// Apply the target's automatic fixes, then validate again.
    #[arg(long)]
    pub fix_all: bool,
    /// How the mirror compares the trees.
    #[arg(long, value_enum, default_value = "checksum")]
    pub mirror: Mode,
    /// Leave out paths matching this glob (relative to --root, leading `/`); repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// zstd level on the link (0 = off). Without it the level adapts: it
    /// keeps the level that sends fastest, trying the levels next to it
    /// now and then (none on loopback or a LAN, higher on slower links).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub compress: Option<i32>,
    /// Bandwidth limit `RATE[@HH:MM-HH:MM]`, e.g. 10M or 500k@08:00-18:00.
    #[arg(long)]
    pub bwlimit: Option<BwLimit>,
    /// Hash and compare every file for the mirror, ignoring the digests and
    /// the mirror index remembered in --state-dir (a file counts as
    /// unchanged while its device, inode, size, mtime and ctime are).
    #[arg(long)]
    pub verify_all: bool,
    /// Mirror, then exit (no continuous replication).
    #[arg(long)]
    pub once: bool,
    /// Print the outcome as JSON (validation, mirror report, link counters).
    #[arg(long)]
    pub json: bool,
    /// How progress is shown.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// The target's second heartbeat address (`host[:port]`, its
    /// --heartbeat-listen), reached over another network: a second
    /// connection that carries only heartbeats guards against split brain.
    #[arg(long, value_name = "ADDR")]
    pub heartbeat_target: Option<String>,
    /// Seconds between heartbeats (fractions allowed).
    #[arg(long, default_value_t = 5.0, value_name = "SECS", value_parser = parse_secs)]
    pub heartbeat_interval: f64,
    /// Seconds between checksum sweeps that repair what change capture missed (0 = never).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub sweep_interval: u64,
    /// Largest in-memory queue of unacknowledged change sets (KiB, MiB, GiB).
    #[arg(long, default_value = "256MiB", value_name = "BYTES", value_parser = parse_size)]
    pub queue_memory: u64,
    /// Largest queue spilled to disk under --state-dir/queue when memory is full.
    #[arg(long, default_value = "4GiB", value_name = "BYTES", value_parser = parse_size)]
    pub queue_disk: u64,
}

/// The agent's live status line: link state, sequence numbers, lag, queue
/// (and its spill to disk), bytes sent, the second heartbeat path.
fn status_line(s: &standin_agent::link::SenderStats) -> String {
    let mut line = format!(
        "{} seq {} acked {}, lag {:.1} s, queue {} sets {}",
        if s.connected {
            "protecting:"
        } else {
            "link down:"
        },
        s.next_seq.saturating_sub(1),
        s.last_acked,
        s.lag_seconds(),
        s.queue_sets,
        human_bytes(s.queue_bytes),
    );
    if s.spilled_bytes > 0 {
        line.push_str(&format!(" ({} on disk)", human_bytes(s.spilled_bytes)));
    }
    line.push_str(&format!(", sent {}", human_bytes(s.bytes_sent)));
    match s.second_path_connected {
        Some(true) => line.push_str(", second path up"),
        Some(false) => line.push_str(", second path DOWN"),
        None => {}
    }
    line
}

fn parse_size(s: &str) -> Result<u64, String> {
    Size::parse(s).map(|s| s.0)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.05..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: give seconds between 0.05 and 3600, e.g. 5 or 0.5"
        )),
    }
}

pub fn run(a: Args) -> Result<Exit> {
    let identity = standin_link::identity::load(&a.identity)?;
    let source_id = a
        .source_id
        .clone()
        .unwrap_or_else(standin_link::default_source_id);
    let mut link = LinkConfig::new(&a.target, identity, a.trust.clone(), &source_id);
    match a.compress {
        Some(level) => link.compress = level,
        None => link.compress_adaptive = true,
    }
    link.heartbeat = std::time::Duration::from_secs_f64(a.heartbeat_interval);
    link.heartbeat_target = a.heartbeat_target.clone();
    link.queue_max_bytes = a.queue_memory;
    link.spill_max_bytes = a.queue_disk;
    let mut scan = ScanOptions {
        excludes: a.exclude.clone(),
        ..Default::default()
    };
    if let Some(sd) = &a.state_dir {
        scan.system_excludes.push(format!(
            "/{}",
            sd.strip_prefix(&a.root).unwrap_or(sd).display()
        ));
    }
    let opts = ProtectOptions {
        link,
        mirror: MirrorOptions {
            root: a.root.clone(),
            scan,
            mode: match a.mirror {
                Mode::Checksum => MirrorMode::Checksum,
                Mode::Dts => MirrorMode::Dts,
                Mode::Full => MirrorMode::Full,
            },
            block_size: DEFAULT_BLOCK_SIZE,
            bwlimit: a.bwlimit,
            digest_cache: None,
            verify_all: a.verify_all,
        },
        fix_all: a.fix_all,
        once: a.once,
        state_dir: a.state_dir.clone(),
        validate: standin_validate::Options::default(),
        sweep_interval: (a.sweep_interval > 0)
            .then(|| std::time::Duration::from_secs(a.sweep_interval)),
    };
    let mode = if a.json && a.progress == ProgressMode::Auto {
        ProgressMode::None
    } else {
        a.progress
    };
    let progress: Arc<dyn standin_builder::Progress> = Arc::new(CliProgress::new(mode));
    let json = a.json;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ticks = std::sync::atomic::AtomicU64::new(0);
    let last_state = std::sync::Mutex::new(None);
    let tick = move |s: &standin_agent::link::SenderStats| {
        let n = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Without a terminal: a line every 30 s and whenever a path goes up or down.
        let state = (s.connected, s.second_path_connected, s.spilled_bytes > 0);
        let changed = last_state
            .lock()
            .map(|mut l| l.replace(state) != Some(state))
            .unwrap_or(false);
        if !json && (tty || n % 30 == 0 || changed) {
            eprint!(
                "{}{}{}",
                if tty { "\r" } else { "" },
                status_line(s),
                if tty { "   " } else { "\n" }
            );
        }
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let out = rt.block_on(protect(&opts, progress, &tick))?;
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if out.validation.fixes.is_some() {
            println!("before fixes:");
        }
        print!("{}", out.validation.before.render(color));
        if let Some(f) = &out.validation.fixes {
            for ch in &f.changes {
                println!(
                    "{}: {}",
                    if ch.changed { "changed" } else { "unchanged" },
                    ch.summary
                );
            }
        }
        if let Some(after) = &out.validation.after {
            println!("\nafter fixes:");
            print!("{}", after.render(color));
        }
        if !out.started {
            println!("validation errors remain; nothing was mirrored (fix them, or try --fix-all)");
        }
        if let Some(m) = &out.mirror {
            println!(
                "mirror {} ({}): {} entries, {} changed, {} deleted, {} of data, {} on the wire, {:.1} s: {}",
                m.mirror_id,
                m.mode,
                m.entries,
                m.changed,
                m.deleted,
                human_bytes(m.data_bytes),
                human_bytes(m.bytes_sent + m.compare_bytes_sent),
                m.seconds,
                if m.complete {
                    "complete and checked; the target syncs it to disk, then it is protected (`standin status`)".to_string()
                } else {
                    format!("NOT complete: {}", m.reason.as_deref().unwrap_or("unknown reason"))
                }
            );
        }
    }
    Ok(if !out.started {
        Exit::ValidationErrors
    } else if out.mirror.as_ref().is_some_and(|m| m.complete) {
        Exit::Ok
    } else {
        Exit::Failed
    })
}
