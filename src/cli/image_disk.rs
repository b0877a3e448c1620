//! `standin image disk` and `standin image boot`: bootable GPT disks of
//! trees and recipes, booted in qemu.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use standin_builder::boot::{kill_pid, BootOptions, Vm};
use standin_builder::disk::{build_disk, BootConfig, DiskFormat, DiskOptions};
use standin_builder::recipe::{build_tree, Recipe, Size};

use super::progress::{CliProgress, ProgressMode};
use super::Exit;

/// Arguments of `standin image disk`.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("source").required(true).args(["root", "from", "recipe"])),
    after_help = "Examples:\n  standin image disk --recipe images/demo-source.toml -o demo.img\n  \
standin image disk --root /srv/failed-over -o server.qcow2 --format qcow2\n  \
standin image disk --from server.tar.zst -o server.img --size 2GiB\n\n\
Writes DISK and DISK.json (partition UUIDs, offsets, root digest, kernel and command line).\n\
Boot the result with `standin image boot DISK --expect TEXT`."
)]
pub struct DiskArgs {
    /// Build from this directory tree.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Build from an archive made by `standin image build`.
    #[arg(long, value_name = "NAME.tar.zst")]
    pub from: Option<PathBuf>,
    /// Build from a recipe (see images/README.md).
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// The disk file to write.
    #[arg(short, long, value_name = "DISK")]
    pub output: PathBuf,
    /// raw or qcow2.
    #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
    pub format: String,
    /// Total disk size (bytes, or with a unit: 512MiB, 2GiB); default: from the content.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Kernel to boot the disk with (default: the recipe's, else the newest /boot/vmlinuz-*).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initrd (default: the one matching the kernel).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel arguments after root=PARTUUID=... (default: rw console=ttyS0 panic=1).
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Set an init setting of the recipe (its [init.env]), e.g. TRUST=sha256:...; repeatable.
    #[arg(long, value_name = "KEY=VALUE", requires = "recipe", value_parser = parse_env)]
    pub init_env: Vec<(String, String)>,
    /// Print the disk manifest as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to show progress on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: use KEY=VALUE, e.g. TRUST=sha256:..."))?;
    Ok((k.to_string(), v.to_string()))
}

fn parse_size(s: &str) -> Result<u64, String> {
    Size::parse(s).map(|s| s.0)
}

/// Arguments of `standin image boot`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  standin image boot demo.img --expect STANDIN-BOOTED\n  \
standin image boot appliance.img --forward 16320:6320 --expect STANDIN-APPLIANCE-READY --log serial.log\n\n\
Runs qemu-system-x86_64 under software emulation (add --kvm for KVM) with the kernel, initrd and\n\
command line from DISK.json; succeeds when TEXT appears on the serial console, fails on timeout or\n\
kernel panic with the last lines of the console. qemu is always stopped at the end."
)]
pub struct BootArgs {
    /// The disk to boot.
    pub disk: PathBuf,
    /// Succeed when this text appears on the serial console (without it: wait for the guest to power off).
    #[arg(long, value_name = "TEXT")]
    pub expect: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,
    /// Forward 127.0.0.1:HOSTPORT to the guest's GUESTPORT (repeatable).
    #[arg(long, value_name = "HOSTPORT:GUESTPORT", value_parser = parse_forward)]
    pub forward: Vec<(u16, u16)>,
    /// Use KVM instead of software emulation.
    #[arg(long)]
    pub kvm: bool,
    /// Boot through UEFI firmware (OVMF) and the disk's own systemd-boot, with no external kernel.
    #[arg(long)]
    pub uefi: bool,
    /// Write the serial console here (default: a temporary file).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512, value_name = "MB")]
    pub memory: u32,
    /// Kernel (default: DISK.json's, else the newest /boot/vmlinuz-*).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initrd (default: DISK.json's, else the one matching the kernel).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Full kernel command line (default: DISK.json's).
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Keep the disk unchanged (writes go to a temporary overlay).
    #[arg(long)]
    pub snapshot: bool,
    /// After TEXT appeared, keep the guest running until it powers off (or Ctrl-C).
    #[arg(long)]
    pub keep: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: use HOSTPORT:GUESTPORT, e.g. 16320:6320"))?;
    let h: u16 = h.parse().map_err(|_| format!("{h:?} is not a port"))?;
    let g: u16 = g.parse().map_err(|_| format!("{g:?} is not a port"))?;
    Ok((h, g))
}

pub fn run_disk(a: DiskArgs) -> Result<Exit> {
    let format: DiskFormat = a.format.parse()?;
    let progress = CliProgress::new(a.progress);
    let mut boot = BootConfig {
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.cmdline.clone(),
    };
    let tmp;
    let mut opts = if let Some(recipe) = &a.recipe {
        let mut r = Recipe::load(recipe)?;
        r.set_init_env(&a.init_env)?;
        tmp = tree_tempdir()?;
        let owners = build_tree(&r, tmp.path(), &progress)
            .with_context(|| format!("building the tree of recipe {}", recipe.display()))?;
        let mut o = r.disk_options(tmp.path(), &a.output);
        o.owners = owners;
        boot.kernel = boot.kernel.or(o.boot.kernel.clone());
        boot.initrd = boot.initrd.or(o.boot.initrd.clone());
        boot.cmdline = boot.cmdline.or(o.boot.cmdline.clone());
        o
    } else if let Some(archive) = &a.from {
        if !archive.is_file() {
            bail!("archive {} not found", archive.display());
        }
        tmp = tree_tempdir()?;
        standin_builder::recipe::restore_archive(archive, tmp.path())?;
        DiskOptions {
            tree: tmp.path().to_path_buf(),
            ..DiskOptions::default()
        }
    } else {
        let root = a
            .root
            .clone()
            .context("one of --root, --from or --recipe is needed")?;
        DiskOptions {
            tree: root,
            ..DiskOptions::default()
        }
    };
    opts.output = a.output.clone();
    opts.format = format;
    if a.size.is_some() {
        opts.size = a.size;
    }
    opts.boot = boot;
    let m = build_disk(&opts, &progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        let root = m.root().context("the manifest has no root partition")?;
        println!(
            "wrote {} ({} {} MiB, root PARTUUID {}, root digest {})",
            a.output.display(),
            m.format,
            m.size / (1024 * 1024),
            root.part_uuid,
            m.root_digest
        );
    }
    Ok(Exit::Ok)
}

/// A temporary directory for a tree being built (honours TMPDIR).
fn tree_tempdir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::Builder::new()
        .prefix("standin-tree-")
        .tempdir()
        .context("creating a temporary directory for the tree")?;
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755))
        .context("setting the mode of the temporary tree")?;
    Ok(t)
}

pub fn run_boot(a: BootArgs) -> Result<Exit> {
    let mut opts = BootOptions::new(&a.disk);
    opts.kernel = a.kernel;
    opts.initrd = a.initrd;
    opts.cmdline = a.cmdline;
    opts.kvm = a.kvm;
    opts.uefi = a.uefi;
    opts.memory_mb = a.memory;
    opts.forwards = a.forward;
    opts.log = a.log;
    opts.snapshot = a.snapshot;
    let timeout = Duration::from_secs(a.timeout);
    let mut vm = Vm::start(&opts)?;
    if let Some(pid) = vm.pid() {
        kill_on_signal(pid);
    }
    let line = match &a.expect {
        Some(text) => {
            vm.wait_for(text, timeout)?;
            // Let the console finish the line.
            std::thread::sleep(Duration::from_millis(300));
            let console = vm.log_text();
            console
                .lines()
                .find(|l| l.contains(text.as_str()))
                .map(|l| l.trim_end().to_string())
        }
        None => {
            if !vm.wait_exit(timeout)? {
                bail!(
                    "qemu did not exit within {} s; last lines of the serial log:\n{}",
                    a.timeout,
                    vm.log_tail(20)
                );
            }
            None
        }
    };
    if a.keep {
        eprintln!(
            "the guest keeps running until it powers off (Ctrl-C stops it); serial log: {}",
            vm.log_path().display()
        );
        vm.wait_exit(Duration::from_secs(u64::MAX / 4))?;
    }
    vm.stop();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "disk": a.disk,
                "expect": a.expect,
                "line": line,
                "log": vm.log_path(),
            })
        );
    } else if let Some(line) = &line {
        println!("{line}");
    } else {
        println!("the guest powered off");
    }
    Ok(Exit::Ok)
}

/// Kill qemu and exit 1 when this process gets SIGINT, SIGTERM or SIGHUP, so
/// no qemu outlives `standin image boot`.
fn kill_on_signal(pid: u32) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let got = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).ok()?;
            let mut int = signal(SignalKind::interrupt()).ok()?;
            let mut hup = signal(SignalKind::hangup()).ok()?;
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
            Some(())
        });
        if got.is_some() {
            kill_pid(pid);
            eprintln!("interrupted; qemu stopped");
            std::process::exit(1);
        }
    });
}
