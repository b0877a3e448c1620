//! `standin target`: the target daemon.

use anyhow::Result;

use super::Exit;

/// Subcommands of `standin target`.
#[derive(clap::Subcommand, Debug)]
pub enum TargetCommand {}

pub fn run(command: TargetCommand) -> Result<Exit> {
    match command {}
}
