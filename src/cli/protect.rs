//! `standin protect`: validate, mirror and replicate to a target.

use anyhow::Result;

use super::Exit;

/// Arguments of `standin protect`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<Exit> {
    anyhow::bail!("`standin protect` is not available in this build yet")
}
