//! `standin demo`: the whole story on this machine.

use anyhow::Result;

use super::Exit;

/// Arguments of `standin demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<Exit> {
    anyhow::bail!("`standin demo` is not available in this build yet")
}
