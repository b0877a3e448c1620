//! `standin failover`: swap the staged system into place, or roll back.

use anyhow::Result;

use super::Exit;

/// Arguments of `standin failover`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<Exit> {
    anyhow::bail!("`standin failover` is not available in this build yet")
}
