//! `standin status`: protection state of a target.

use anyhow::Result;

use super::Exit;

/// Arguments of `standin status`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<Exit> {
    anyhow::bail!("`standin status` is not available in this build yet")
}
