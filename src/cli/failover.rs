//! `standin failover`: swap the staged system into place, or roll back.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use standin_builder::progress::Progress;
use standin_staging::failover::{self, FailoverOptions, Image};

use super::Exit;

/// Arguments of `standin failover`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  standin failover --state-dir /var/lib/standin\n  standin failover --state-dir /var/lib/standin --snapshot 20261122T081000Z --immediate --yes\n  standin failover --state-dir /tmp/st --target-root /tmp/root --no-reboot --json\n  standin failover --rollback --state-dir /var/lib/standin\n\nAn interrupted failover is completed by running the same command again,\nor undone with --rollback."
)]
pub struct Args {
    /// The target's state directory.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The source whose replica to use (default: the staged source).
    #[arg(long)]
    pub source_id: Option<String>,
    /// Fail over to the live replica (the default).
    #[arg(long, conflicts_with = "snapshot")]
    pub live: bool,
    /// Fail over to a snapshot (`standin snapshot list`).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Wait until the source's queue is applied when it is still reachable (the default).
    #[arg(long, conflicts_with = "immediate")]
    pub graceful: bool,
    /// Do not wait for the source.
    #[arg(long)]
    pub immediate: bool,
    /// Longest wait for a graceful drain, in seconds.
    #[arg(long, default_value_t = 300)]
    pub drain_timeout: u64,
    /// Seconds without a heartbeat after which the source counts as gone.
    #[arg(long, default_value_t = 35)]
    pub heartbeat_silence: u64,
    /// The target's root directory (default `/`; for --rollback, the failover's).
    #[arg(long)]
    pub target_root: Option<PathBuf>,
    /// Do not reboot after the swap.
    #[arg(long)]
    pub no_reboot: bool,
    /// Command that reboots (run by `sh -c`).
    #[arg(long, default_value = "systemctl reboot")]
    pub reboot_command: String,
    /// Fail over even when the replica may be incomplete, without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Undo a failover: the target's own system comes back.
    #[arg(long, conflicts_with_all = ["snapshot", "live", "immediate", "graceful"])]
    pub rollback: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Percent lines on stderr.
struct Percent {
    json: bool,
    st: Mutex<(String, u64, u64, u64)>,
}

impl Progress for Percent {
    fn phase(&self, name: &str, _: Option<u64>, items: Option<u64>) {
        *self.st.lock().unwrap_or_else(|e| e.into_inner()) =
            (name.to_string(), items.unwrap_or(0), 0, u64::MAX);
    }
    fn advance(&self, _: u64, items: u64) {
        let mut s = self.st.lock().unwrap_or_else(|e| e.into_inner());
        s.2 += items;
        let pct = (s.2 * 100).checked_div(s.1).unwrap_or(100);
        if s.3 == u64::MAX || pct / 10 != s.3 / 10 {
            s.3 = pct;
            if self.json {
                eprintln!("{}", serde_json::json!({"phase": s.0, "percent": pct}));
            } else {
                eprintln!("{}: {pct}%", s.0);
            }
        }
    }
    fn note(&self, message: &str) {
        if self.json {
            eprintln!("{}", serde_json::json!({ "note": message }));
        } else {
            eprintln!("note: {message}");
        }
    }
}

fn ask(ds: &failover::DataState) -> bool {
    eprintln!(
        "The replica of {} ({} at sequence number {}) may be incomplete:",
        ds.source_id, ds.image, ds.seq
    );
    for m in &ds.missing {
        eprintln!("  - {m}");
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("refusing: no terminal to confirm on; pass --yes to fail over anyway");
        return false;
    }
    eprint!("Fail over anyway? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES")
}

pub fn run(a: Args) -> Result<Exit> {
    let progress = Percent {
        json: a.json,
        st: Mutex::new(Default::default()),
    };
    if a.rollback {
        let r = failover::rollback(&a.state_dir, a.target_root.as_deref(), &progress)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "rolled back failover {}: the target's own system is back in {}, the staged system is back in {}",
                r.record.id,
                r.record.target_root.display(),
                r.record.staged_root.display()
            );
        }
        return Ok(Exit::Ok);
    }
    let root = a.target_root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut opts = FailoverOptions::new(a.state_dir.clone(), root);
    opts.source_id = a.source_id.clone();
    opts.image = match &a.snapshot {
        Some(id) => Image::Snapshot(id.clone()),
        None => Image::Live,
    };
    opts.graceful = !a.immediate;
    opts.drain_timeout = Duration::from_secs(a.drain_timeout);
    opts.heartbeat_silence = Duration::from_secs(a.heartbeat_silence);
    opts.reboot = (!a.no_reboot).then(|| a.reboot_command.clone());
    let yes = a.yes;
    let r = failover::failover(&opts, &mut |ds| yes || ask(ds), &progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let rec = &r.record;
        println!(
            "{} failover {}: {} of {} at sequence number {} is now in {} ({} steps, {} ms)",
            if r.resumed {
                "completed interrupted"
            } else {
                "completed"
            },
            rec.id,
            rec.image,
            rec.source_id,
            rec.seq,
            rec.target_root.display(),
            rec.steps,
            rec.swap_ms.unwrap_or(0)
        );
        println!("kept from the target: {}", rec.kept.join(", "));
        if !rec.generated.is_empty() {
            println!("written for the target: {}", rec.generated.join(", "));
        }
        println!(
            "the target's own system is in {}; undo with `standin failover --rollback --state-dir {}`",
            rec.rollback_dir.join("target").display(),
            a.state_dir.display()
        );
        if !r.rebooted {
            println!("not rebooted (--no-reboot); reboot to start the source's system");
        }
    }
    Ok(Exit::Ok)
}
