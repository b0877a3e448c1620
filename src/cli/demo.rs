//! `standin demo`: the whole story on this machine (see `crate::demo`).

use std::path::PathBuf;

use anyhow::Result;

use super::Exit;
use crate::demo::{self, DemoOptions};

/// Arguments of `standin demo`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  standin demo                 # everything in a temp directory, removed at the end
  standin demo --no-boot       # without the qemu boot (about 30 s shorter)
  standin demo --keep          # keep the files and logs; prints where

Builds a demo source server and a standby's own system in a temp dir, starts
`standin target serve` on 127.0.0.1, validates, protects, changes data, kills
the source, waits for the failover condition, fails over, boots the result in
qemu (when installed) and rolls back. Nothing outside the temp dir changes.
Exit 0 when every step's check passed, 1 otherwise (the failed step is named).")]
pub struct Args {
    /// Work in this (empty or new) directory instead of a temp directory (kept).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the demo files afterwards and print where.
    #[arg(long)]
    pub keep: bool,
    /// Skip booting the failed-over system in qemu.
    #[arg(long)]
    pub no_boot: bool,
    /// Also print the summary as JSON at the end.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<Exit> {
    let report = demo::run(&DemoOptions {
        dir: args.dir,
        keep: args.keep,
        no_boot: args.no_boot,
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.ok { Exit::Ok } else { Exit::Failed })
}
