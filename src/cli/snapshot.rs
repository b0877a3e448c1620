//! `standin snapshot`: snapshots of a staging area.

use anyhow::Result;

use super::Exit;

/// Subcommands of `standin snapshot`.
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {}

pub fn run(command: SnapshotCommand) -> Result<Exit> {
    match command {}
}
