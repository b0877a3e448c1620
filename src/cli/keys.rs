//! `standin keys`: TLS identities.

use anyhow::Result;

use super::Exit;

/// Subcommands of `standin keys`.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {}

pub fn run(command: KeysCommand) -> Result<Exit> {
    match command {}
}
