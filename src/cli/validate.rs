//! `standin validate`: compare a source with a target and report findings.

use anyhow::Result;

use super::Exit;

/// Arguments of `standin validate`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<Exit> {
    anyhow::bail!("`standin validate` is not available in this build yet")
}
