//! `standin profile`: this machine's profile.

use std::path::PathBuf;

use anyhow::{Context, Result};
use standin_validate::{collect, CollectOptions, LiveFacts};

use super::Exit;

/// Arguments of `standin profile`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  standin profile                         # this machine, as a table
  standin profile --json > source.json    # save it for `standin validate`
  standin profile --root /mnt/sysimage --json
                                          # os-release, hostname, fstab and network
                                          # configuration from a system tree
  standin profile --state-dir /var/lib/standin --json > target.json
                                          # a target: staging path and reclaimable
                                          # space from its state directory

The JSON schema (standin.profile/1) is documented in docs/profile-schema.md.")]
pub struct Args {
    /// System tree whose files (os-release, hostname, fstab, network
    /// configuration) describe the system; /proc and /sys are this machine's.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print the profile as JSON (schema standin.profile/1).
    #[arg(long)]
    pub json: bool,
    /// Staging path to measure, as seen inside the tree
    /// [default: the state directory's, else /var/lib/standin/staging].
    #[arg(long, value_name = "DIR")]
    pub staging_path: Option<PathBuf>,
    /// A target state directory: its configured staging path and the bytes
    /// reclaimable from its rollback/ area go into the profile.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<Exit> {
    if !args.root.is_dir() {
        anyhow::bail!(
            "--root {}: not a directory; pass the top of a system tree",
            args.root.display()
        );
    }
    let root = std::fs::canonicalize(&args.root)
        .with_context(|| format!("resolving --root {}", args.root.display()))?;
    let opts = CollectOptions {
        standin_version: env!("CARGO_PKG_VERSION").to_string(),
        staging_path: args.staging_path,
        state_dir: args.state_dir,
    };
    let profile = collect(&LiveFacts::new(root), &opts);
    if args.json {
        print!("{}", profile.to_json());
    } else {
        print!("{}", standin_validate::text::profile_text(&profile));
    }
    Ok(Exit::Ok)
}
