//! `standin image`: build, verify, restore, disk, boot (disk and boot live in
//! `image_disk`).
//! Each subcommand keeps its arguments in its own struct.

use std::path::PathBuf;

use anyhow::Result;
use standin_builder::archive::{self, BuildOptions};
use standin_builder::restore::{self, RestoreOptions};
use standin_builder::scan::ScanOptions;
use standin_builder::verify;

use super::image_disk;
use super::progress::{human_bytes, CliProgress, ProgressMode};
use super::Exit;

/// Subcommands of `standin image`.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Turn a system tree into NAME.tar.zst, NAME.manifest.json and NAME.tar.zst.sha256.
    Build(BuildArgs),
    /// Check an image: archive digest, manifest, and every file's content and metadata.
    Verify(VerifyArgs),
    /// Restore an image into an empty directory with exact metadata, verified.
    Restore(RestoreArgs),
    /// Build a bootable GPT disk (ESP + ext4 root) from a tree, an archive or a recipe.
    Disk(Box<image_disk::DiskArgs>),
    /// Boot a disk in qemu and watch its serial console.
    Boot(Box<image_disk::BootArgs>),
}

/// Arguments of `standin image build`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  standin image build --root /srv/rootfs -o rootfs.tar.zst
  standin image build --root / -o /backup/host.tar.zst --exclude '/var/cache/**' --level 1
  tar --zstd --xattrs --xattrs-include='*' -xpf rootfs.tar.zst -C /mnt   # GNU tar reads it too")]
pub struct BuildArgs {
    /// The tree to image.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// The archive to write (NAME.tar.zst); the manifest and .sha256 go beside it.
    #[arg(short, long, value_name = "NAME.tar.zst")]
    pub output: PathBuf,
    /// Leave out paths matching GLOB (relative to the root, with a leading /), e.g. '/var/cache/**'.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// zstd compression level (1 fastest .. 19 smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// Stay on the root's filesystem (mount points are kept empty); --one-file-system=false crosses mounts.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub one_file_system: bool,
    /// zstd worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to show progress on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// Arguments of `standin image verify`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  standin image verify rootfs.tar.zst
  standin image verify rootfs.tar.zst --json
Exit code 0 when the image is intact, 1 when anything differs (each path is named).")]
pub struct VerifyArgs {
    /// The archive (NAME.tar.zst, with NAME.manifest.json and NAME.tar.zst.sha256 beside it).
    #[arg(value_name = "NAME.tar.zst")]
    pub archive: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to show progress on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// Arguments of `standin image restore`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  standin image restore rootfs.tar.zst --to /mnt/newroot
  standin image restore rootfs.tar.zst --to /srv/old --force
The tree is extracted into DIR/.standin-restore-XXXX, checked against the
manifest, and only then moved into DIR; on failure nothing is left behind.")]
pub struct RestoreArgs {
    /// The archive to restore.
    #[arg(value_name = "NAME.tar.zst")]
    pub archive: PathBuf,
    /// Directory to restore into (created if missing; must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Restore into a non-empty DIR, replacing entries with the same names.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to show progress on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

pub fn run(command: ImageCommand) -> Result<Exit> {
    match command {
        ImageCommand::Build(a) => build(a),
        ImageCommand::Verify(a) => verify_cmd(a),
        ImageCommand::Restore(a) => restore_cmd(a),
        ImageCommand::Disk(a) => image_disk::run_disk(*a),
        ImageCommand::Boot(a) => image_disk::run_boot(*a),
    }
}

fn json_error(json: bool, r: Result<Exit>) -> Result<Exit> {
    match r {
        Err(e) if json => {
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": format!("{e:#}")})
            );
            Err(e)
        }
        other => other,
    }
}

fn build(a: BuildArgs) -> Result<Exit> {
    let progress = CliProgress::new(a.progress);
    let opts = BuildOptions {
        scan: ScanOptions {
            excludes: a.exclude.clone(),
            one_file_system: a.one_file_system,
            ..Default::default()
        },
        level: a.level,
        threads: a.threads,
    };
    let r = archive::build(&a.root, &a.output, &opts, &progress).map(|s| {
        if a.json {
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            v["ok"] = true.into();
            println!("{v}");
        } else {
            println!(
                "built {}: {} entries, {} files, {} of content, {} compressed",
                s.paths.archive.display(),
                s.entries,
                s.files,
                human_bytes(s.bytes),
                human_bytes(s.archive_bytes)
            );
            println!("root digest: {}", s.root_digest);
            println!("manifest:    {}", s.paths.manifest.display());
            println!("sha256:      {}", s.paths.sha256.display());
        }
        Exit::Ok
    });
    json_error(a.json, r)
}

fn verify_cmd(a: VerifyArgs) -> Result<Exit> {
    let progress = CliProgress::new(a.progress);
    let r = verify::verify(&a.archive, &progress).map(|rep| {
        if a.json {
            let mut v = serde_json::to_value(&rep).unwrap_or_default();
            v["ok"] = rep.ok().into();
            println!("{v}");
        } else if rep.ok() {
            println!(
                "{} is intact: {} entries, {} files, {} checked against the manifest",
                a.archive.display(),
                rep.entries,
                rep.files,
                human_bytes(rep.bytes)
            );
            if let Some(d) = &rep.root_digest {
                println!("root digest: {d}");
            }
        } else {
            eprintln!("{} FAILED verification:", a.archive.display());
            for p in &rep.problems {
                eprintln!("  {p}");
            }
            for d in &rep.differences.listed {
                eprintln!("  {d}");
            }
            if rep.differences.count as usize > rep.differences.listed.len() {
                eprintln!(
                    "  ... and {} more differences",
                    rep.differences.count as usize - rep.differences.listed.len()
                );
            }
        }
        if rep.ok() {
            Exit::Ok
        } else {
            Exit::Failed
        }
    });
    json_error(a.json, r)
}

fn restore_cmd(a: RestoreArgs) -> Result<Exit> {
    let progress = CliProgress::new(a.progress);
    let opts = RestoreOptions { force: a.force };
    let r = restore::restore(&a.archive, &a.to, &opts, &progress).map(|rep| {
        if a.json {
            let mut v = serde_json::to_value(&rep).unwrap_or_default();
            v["ok"] = true.into();
            println!("{v}");
        } else {
            println!(
                "restored {} into {}: {} entries, {} files, {}; verified against the manifest",
                a.archive.display(),
                a.to.display(),
                rep.entries,
                rep.files,
                human_bytes(rep.bytes)
            );
            println!("root digest: {}", rep.root_digest);
        }
        Exit::Ok
    });
    json_error(a.json, r)
}
