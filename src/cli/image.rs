//! `standin image`: build, verify, restore, disk, boot.

use anyhow::Result;

use super::image_disk;
use super::Exit;

/// Subcommands of `standin image`.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Build a bootable GPT disk (ESP + ext4 root) from a tree, an archive or a recipe.
    Disk(Box<image_disk::DiskArgs>),
    /// Boot a disk in qemu and watch its serial console.
    Boot(Box<image_disk::BootArgs>),
}

pub fn run(command: ImageCommand) -> Result<Exit> {
    match command {
        ImageCommand::Disk(a) => image_disk::run_disk(*a),
        ImageCommand::Boot(a) => image_disk::run_boot(*a),
    }
}
