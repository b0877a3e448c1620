//! `standin image`: build, verify, restore, disk, boot.

use anyhow::Result;

use super::Exit;

/// Subcommands of `standin image`.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {}

pub fn run(command: ImageCommand) -> Result<Exit> {
    match command {}
}
