//! Command-line definitions and dispatch. Each command lives in its own module
//! with its own `Args` and `run`; this file only wires them together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod failover;
mod image;
mod image_disk;
mod keys;
mod output;
mod profile;
mod progress;
mod protect;
mod snapshot;
mod status;
mod target;
mod target_seed;
mod validate;

pub use output::Exit;

/// Keep a whole Linux server replicated onto a standby and fail over to it in one step.
#[derive(Parser, Debug)]
#[command(
    name = "standin",
    version,
    propagate_version = true,
    after_help = "Start with `standin demo` to see the whole story on this machine.\nEvery command has --help with examples."
)]
pub struct Cli {
    /// More log output (repeat for more); also STANDIN_LOG=debug.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build, verify, restore and boot images of system trees.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Show this machine's profile (OS, CPUs, memory, volumes, boot mode, NICs).
    Profile(profile::Args),
    /// Check that a target can stand in for a source; optionally fix what can be fixed.
    Validate(validate::Args),
    /// Create and show TLS identities used to pin the replication link.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the target side of replication.
    #[command(subcommand)]
    Target(target::TargetCommand),
    /// Validate, mirror and continuously replicate this machine to a target.
    Protect(protect::Args),
    /// Show the protection state of a target.
    Status(status::Args),
    /// Take, list and prune snapshots of a staging area.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Swap the staged system into place on the target (or roll back).
    Failover(failover::Args),
    /// Run the whole story on this machine with no set-up.
    Demo(demo::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_logging(cli.verbose);
    let result = match cli.command {
        Command::Image(c) => image::run(c),
        Command::Profile(a) => profile::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Keys(c) => keys::run(c),
        Command::Target(c) => target::run(c),
        Command::Protect(a) => protect::run(a),
        Command::Status(a) => status::run(a),
        Command::Snapshot(c) => snapshot::run(c),
        Command::Failover(a) => failover::run(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(err) => {
            output::print_error(&err);
            Exit::Failed.into()
        }
    }
}
