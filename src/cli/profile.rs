//! `standin profile`: this machine's profile.

use anyhow::Result;

use super::Exit;

/// Arguments of `standin profile`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<Exit> {
    anyhow::bail!("`standin profile` is not available in this build yet")
}
