//! `standin snapshot`: snapshots of a staging area.

use std::path::PathBuf;

use anyhow::Result;
use standin_builder::progress::NoProgress;
use standin_staging::snapshot;

use super::Exit;

/// Subcommands of `standin snapshot`.
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot of the replica at its current sequence number.
    #[command(
        after_help = "Examples:\n  standin snapshot take --state-dir /var/lib/standin\n  standin snapshot take --state-dir /var/lib/standin --digest --json"
    )]
    Take(TakeArgs),
    /// List snapshots, oldest first.
    #[command(
        after_help = "Example:\n  standin snapshot list --state-dir /var/lib/standin --json"
    )]
    List(Common),
    /// Delete snapshots the retention policy does not keep (every 10 min for 1 h, hourly for 24 h, daily for 7 days).
    #[command(after_help = "Example:\n  standin snapshot prune --state-dir /var/lib/standin")]
    Prune(Common),
}

/// Arguments of `standin snapshot take`.
#[derive(clap::Args, Debug)]
pub struct TakeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Also compute the snapshot's root digest (the mirror's: BLAKE3 per file, not an image manifest's sha256 one; reads every file once).
    #[arg(long)]
    pub digest: bool,
}

/// Options every snapshot command takes.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// The target's state directory.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The source whose replica to snapshot (default: the staged source).
    #[arg(long)]
    pub source_id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: SnapshotCommand) -> Result<Exit> {
    match command {
        SnapshotCommand::Take(t) => {
            let a = &t.common;
            let m =
                snapshot::take_with(&a.state_dir, a.source_id.as_deref(), t.digest, &NoProgress)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!(
                    "snapshot {} of {} at sequence number {} ({:?}, {} files, {} bytes, {} ms)",
                    m.id, m.source_id, m.seq, m.method, m.files, m.bytes, m.took_ms
                );
            }
        }
        SnapshotCommand::List(a) => {
            let all = snapshot::list(&a.state_dir)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!(
                    "no snapshots; take one with `standin snapshot take --state-dir {}`",
                    a.state_dir.display()
                );
            } else {
                println!(
                    "{:<22} {:>8} {:<9} {:>8} MIRROR",
                    "ID", "SEQ", "METHOD", "FILES"
                );
                for m in all {
                    println!(
                        "{:<22} {:>8} {:<9} {:>8} {}",
                        m.id,
                        m.seq,
                        format!("{:?}", m.method).to_lowercase(),
                        m.files,
                        if m.mirror_complete {
                            "complete"
                        } else {
                            "incomplete"
                        }
                    );
                }
            }
        }
        SnapshotCommand::Prune(a) => {
            let gone = snapshot::retention::prune(
                &a.state_dir,
                standin_staging::state::now_ms(),
                &Default::default(),
            )?;
            if a.json {
                println!("{}", serde_json::json!({ "deleted": gone }));
            } else {
                println!(
                    "deleted {} snapshot(s){}",
                    gone.len(),
                    if gone.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", gone.join(", "))
                    }
                );
            }
        }
    }
    Ok(Exit::Ok)
}
