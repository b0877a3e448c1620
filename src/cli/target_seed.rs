//! `standin target seed`: start a staging area from this machine's own
//! system, so that reverse protection sends only what changed.

use std::path::PathBuf;

use anyhow::Result;
use standin_builder::progress::NoProgress;
use standin_staging::seed::{self, SeedOptions};

use super::progress::human_bytes;
use super::Exit;

/// `--help` example of `standin target seed`.
pub const AFTER_HELP: &str = "Example (on the old source, after the standby failed over to become it):\n  standin target seed --state-dir /var/lib/standin --source-id web-01\n  standin target serve --state-dir /var/lib/standin --identity /etc/standin/identity \\\n      --trust sha256:9a41…\n  # then on the failed-over machine:\n  standin protect --target OLD_SOURCE --source-id web-01 --identity … --trust …\n\nRegular files are reflinked (XFS, Btrfs) or hard-linked (ext4) with a copy-out guard:\napplying change sets to the staging area never changes a file of this machine's system.";

/// Arguments of `standin target seed`.
#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// This machine's target state directory (the one `standin target serve` will use).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The returning source's id (its `protect --source-id`, by default its host name).
    #[arg(long)]
    pub source_id: String,
    /// This machine's own system tree to start from.
    #[arg(long, default_value = "/")]
    pub from_root: PathBuf,
    /// Leave out paths matching GLOB (as `protect --exclude` on the source); repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Replace a staging area that is not empty.
    #[arg(long)]
    pub force: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SeedArgs) -> Result<Exit> {
    let o = SeedOptions {
        source_id: a.source_id,
        from_root: a.from_root,
        excludes: a.exclude,
        force: a.force,
    };
    let r = seed::seed(&a.state_dir, &o, &NoProgress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "seeded {} from {} ({}: {} files, {} directories, {} other entries, {} in {} ms)",
            r.staging_root.display(),
            r.from_root.display(),
            match r.method {
                seed::SeedMethod::Reflink => "reflinks",
                seed::SeedMethod::Hardlink => "hard links, copied out before the first change",
                seed::SeedMethod::Copy => "copied: the staging area is on another filesystem",
            },
            r.files + r.links,
            r.dirs,
            r.others,
            human_bytes(r.bytes),
            r.took_ms
        );
        println!(
            "next: `standin target serve --state-dir {}` here, then `standin protect --source-id {}` on the failed-over machine",
            a.state_dir.display(),
            r.source_id
        );
    }
    Ok(Exit::Ok)
}
