//! Booting a disk in qemu and watching its serial console.
//!
//! [`Vm::start`] runs `qemu-system-x86_64` (software emulation unless KVM is
//! asked for) with the kernel and initrd the disk manifest names, the disk on
//! virtio, the serial console written to a log file and optional TCP
//! forwards from 127.0.0.1. [`Vm::wait_for`] polls the log until a text
//! appears, qemu exits, the kernel panics or time runs out. Dropping a [`Vm`]
//! kills qemu, so no qemu outlives its caller, even on error.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::disk::{newest_boot_file, DiskManifest, ROOT_X86_64_TYPE};

/// Default kernel arguments when no manifest gives a command line.
const FALLBACK_ARGS: &str = "rw console=ttyS0 panic=1";

/// How to boot a disk.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The disk (raw or qcow2; the format comes from its manifest or its name).
    pub disk: PathBuf,
    /// Kernel; default the manifest's, else the newest /boot/vmlinuz-*.
    pub kernel: Option<PathBuf>,
    /// Initrd; default the manifest's, else the matching /boot/initrd.img-*.
    pub initrd: Option<PathBuf>,
    /// Full kernel command line; default the manifest's.
    pub cmdline: Option<String>,
    /// Use KVM instead of software emulation.
    pub kvm: bool,
    /// Boot through UEFI (OVMF firmware and the disk's own systemd-boot).
    pub uefi: bool,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// TCP forwards `(host port on 127.0.0.1, guest port)`.
    pub forwards: Vec<(u16, u16)>,
    /// Serial console log; default a file in a temporary directory.
    pub log: Option<PathBuf>,
    /// Do not write to the disk (qemu `-snapshot`).
    pub snapshot: bool,
}

impl BootOptions {
    /// Defaults for booting `disk`: 512 MiB, software emulation, no forwards.
    pub fn new(disk: impl Into<PathBuf>) -> BootOptions {
        BootOptions {
            disk: disk.into(),
            kernel: None,
            initrd: None,
            cmdline: None,
            kvm: false,
            uefi: false,
            memory_mb: 512,
            forwards: Vec::new(),
            log: None,
            snapshot: false,
        }
    }
}

/// Why waiting for a text ended without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFailure {
    Timeout,
    Panic,
    Exited(String),
}

/// A running qemu; killed when dropped.
pub struct Vm {
    child: Option<Child>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    _kernel_dir: Option<tempfile::TempDir>,
    /// The qemu command line, for messages.
    pub command: String,
}

/// The initrd beside a `/boot/vmlinuz-VERSION` kernel, if there is one.
fn matching_initrd(kernel: &Path) -> Option<PathBuf> {
    let name = kernel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_prefix("vmlinuz-")
        .map(|v| kernel.with_file_name(format!("initrd.img-{v}")))
        .filter(|p| p.is_file())
}

/// Copy the kernel and initrd the disk carries on its ESP into `dir`
/// (raw disks only).
fn esp_boot_files(disk: &Path, m: &DiskManifest, dir: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if m.format != "raw" {
        bail!("the ESP of a {} disk cannot be read directly", m.format);
    }
    let esp = m.esp().context("the disk manifest has no ESP")?;
    let mut image = disk.as_os_str().to_owned();
    image.push(format!("@@{}", esp.offset));
    let kernel = dir.join("vmlinuz");
    crate::disk::run_tool(
        "mcopy",
        &[
            std::ffi::OsStr::new("-i"),
            &image,
            std::ffi::OsStr::new("::/vmlinuz"),
            kernel.as_os_str(),
        ],
    )
    .context("copying the kernel from the disk's ESP")?;
    let initrd = dir.join("initrd.img");
    let got_initrd = m.boot.initrd.is_some()
        && crate::disk::run_tool(
            "mcopy",
            &[
                std::ffi::OsStr::new("-i"),
                &image,
                std::ffi::OsStr::new("::/initrd.img"),
                initrd.as_os_str(),
            ],
        )
        .is_ok();
    Ok((kernel, got_initrd.then_some(initrd)))
}

/// Whether `path` has the sha256 `want`.
fn has_sha256(path: &Path, want: &str) -> bool {
    use sha2::{Digest, Sha256};
    std::fs::read(path)
        .map(|b| hex::encode(Sha256::digest(&b)) == want)
        .unwrap_or(false)
}

/// The kernel, initrd and command line a boot uses: `--kernel`; else the
/// manifest's kernel when it is still the one the disk was built with; else
/// the copy on the disk's ESP; else the newest `/boot/vmlinuz-*`. Returns a
/// temporary directory to keep while the files are used.
fn boot_files(
    opts: &BootOptions,
) -> Result<(PathBuf, Option<PathBuf>, String, Option<tempfile::TempDir>)> {
    let manifest = DiskManifest::load_for(&opts.disk).ok();
    let mut tmp = None;
    let (kernel, initrd) = match (&opts.kernel, &manifest) {
        (Some(k), _) => (
            k.clone(),
            opts.initrd.clone().or_else(|| matching_initrd(k)),
        ),
        (None, Some(m))
            if m.boot.kernel.is_file() && has_sha256(&m.boot.kernel, &m.boot.kernel_sha256) =>
        {
            let initrd = opts
                .initrd
                .clone()
                .or_else(|| m.boot.initrd.clone().filter(|i| i.is_file()));
            (m.boot.kernel.clone(), initrd)
        }
        (None, Some(m)) if m.format == "raw" && m.esp().is_some() => {
            let dir = tempfile::Builder::new()
                .prefix("standin-boot-kernel-")
                .tempdir()
                .context("creating a temporary directory for the kernel")?;
            let (k, i) = esp_boot_files(&opts.disk, m, dir.path())?;
            tmp = Some(dir);
            (k, opts.initrd.clone().or(i))
        }
        _ => {
            let k = newest_boot_file(Path::new("/boot"), "vmlinuz-").context(
                "no kernel to boot: the disk manifest names none that exists and /boot has no vmlinuz-*; \
                 install linux-image-amd64 or pass --kernel",
            )?;
            let i = opts.initrd.clone().or_else(|| matching_initrd(&k));
            (k, i)
        }
    };
    if !kernel.is_file() {
        bail!(
            "kernel {} not found; install linux-image-amd64 or pass --kernel",
            kernel.display()
        );
    }
    let cmdline = match (&opts.cmdline, &manifest) {
        (Some(c), _) => c.clone(),
        (None, Some(m)) => m.boot.cmdline.clone(),
        (None, None) => {
            let uuid = root_partuuid_from_gpt(&opts.disk).with_context(|| {
                format!(
                    "finding the root partition of {} (it has no {} manifest); pass --cmdline",
                    opts.disk.display(),
                    crate::disk::manifest_path(&opts.disk).display()
                )
            })?;
            format!("root=PARTUUID={uuid} {FALLBACK_ARGS}")
        }
    };
    Ok((kernel, initrd, cmdline, tmp))
}

/// The PARTUUID of the first x86-64 root partition of a raw GPT disk.
fn root_partuuid_from_gpt(disk: &Path) -> Result<String> {
    let gpt = gpt::GptConfig::new()
        .open(disk)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    gpt.partitions()
        .values()
        .find(|p| p.part_type_guid.guid.to_string() == ROOT_X86_64_TYPE)
        .map(|p| p.part_guid.to_string())
        .context("no x86-64 root partition (type 4f68bce3-...) on the disk")
}

fn disk_format(disk: &Path) -> String {
    if let Ok(m) = DiskManifest::load_for(disk) {
        return m.format;
    }
    let mut magic = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open(disk) {
        if f.read_exact(&mut magic).is_ok() && &magic == b"QFI\xfb" {
            return "qcow2".into();
        }
    }
    "raw".into()
}

impl Vm {
    /// Start qemu for `opts`.
    pub fn start(opts: &BootOptions) -> Result<Vm> {
        if !opts.disk.is_file() {
            bail!(
                "disk {} not found; build one with `standin image disk`",
                opts.disk.display()
            );
        }
        let qemu = crate::disk::find_qemu()?;
        let (tmp, log) = match &opts.log {
            Some(l) => (None, l.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("standin-boot-")
                    .tempdir()
                    .context("creating a temporary directory for the serial log")?;
                let l = t.path().join("serial.log");
                (Some(t), l)
            }
        };
        std::fs::write(&log, b"")
            .with_context(|| format!("creating the serial log {}", log.display()))?;
        let format = disk_format(&opts.disk);
        let mut kernel_dir = None;
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        cmd.args(["-machine", "pc", "-smp", "1"]);
        cmd.args(["-m", &opts.memory_mb.to_string()]);
        if opts.kvm {
            cmd.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            cmd.args(["-accel", "tcg", "-cpu", "max"]);
        }
        let mut serial = std::ffi::OsString::from("file:");
        serial.push(&log);
        cmd.arg("-serial").arg(serial);
        cmd.args(["-monitor", "none"]);
        let mut drive = std::ffi::OsString::from("file=");
        drive.push(escape_comma(&opts.disk));
        drive.push(format!(",format={format},if=virtio"));
        cmd.arg("-drive").arg(drive);
        if opts.snapshot {
            cmd.arg("-snapshot");
        }
        if opts.uefi {
            let ovmf = Path::new("/usr/share/ovmf/OVMF.fd");
            if !ovmf.is_file() {
                bail!("UEFI boot needs OVMF; install it with: apt-get install -y ovmf");
            }
            cmd.arg("-bios").arg(ovmf);
        } else {
            let (kernel, initrd, cmdline, kernel_tmp) = boot_files(opts)?;
            kernel_dir = kernel_tmp;
            cmd.arg("-kernel").arg(&kernel);
            if let Some(i) = &initrd {
                cmd.arg("-initrd").arg(i);
            }
            cmd.arg("-append").arg(&cmdline);
        }
        let mut netdev = String::from("user,id=n0,restrict=on");
        for (host, guest) in &opts.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        cmd.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let command = format!("{cmd:?}");
        tracing::debug!("starting {command}");
        let child = cmd.spawn().context("starting qemu-system-x86_64")?;
        Ok(Vm {
            child: Some(child),
            log,
            _tmp: tmp,
            _kernel_dir: kernel_dir,
            command,
        })
    }

    /// qemu's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The serial console log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole serial log so far (lossy UTF-8).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the serial log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n)
    }

    /// Wait until `text` appears in the serial log. Fails on timeout, kernel
    /// panic, initramfs giving up, or qemu exiting, with the log's last lines.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<()> {
        match self.watch(text, timeout)? {
            None => Ok(()),
            Some(failure) => {
                let what = match &failure {
                    BootFailure::Timeout => format!("{} s passed", timeout.as_secs()),
                    BootFailure::Panic => {
                        "the guest kernel panicked or could not mount its root".into()
                    }
                    BootFailure::Exited(s) => format!("qemu exited ({s})"),
                };
                bail!(
                    "waiting for {text:?} on the serial console of {}: {what}; last lines of {}:\n{}",
                    self.command_disk(),
                    self.log.display(),
                    self.log_tail(20)
                )
            }
        }
    }

    fn command_disk(&self) -> String {
        self.command
            .split("file=")
            .nth(1)
            .and_then(|s| s.split(",format").next())
            .unwrap_or("the disk")
            .to_string()
    }

    /// Poll the log; `None` when `text` appeared.
    fn watch(&mut self, text: &str, timeout: Duration) -> Result<Option<BootFailure>> {
        let start = Instant::now();
        let mut f = std::fs::File::open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut seen: Vec<u8> = Vec::new();
        let needle = text.as_bytes();
        loop {
            f.seek(SeekFrom::Start(seen.len() as u64))
                .context("reading the serial log")?;
            let mut more = Vec::new();
            f.read_to_end(&mut more).context("reading the serial log")?;
            let from = seen.len().saturating_sub(needle.len() + 64);
            seen.extend_from_slice(&more);
            let window = &seen[from..];
            if !needle.is_empty() && contains(window, needle) {
                return Ok(None);
            }
            if PANIC_MARKERS.iter().any(|m| contains(window, m.as_bytes())) {
                return Ok(Some(BootFailure::Panic));
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("checking on qemu")? {
                    // Read what qemu wrote last before deciding.
                    let mut rest = Vec::new();
                    f.read_to_end(&mut rest).ok();
                    seen.extend_from_slice(&rest);
                    if !needle.is_empty() && contains(&seen, needle) {
                        return Ok(None);
                    }
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        e.read_to_string(&mut err).ok();
                    }
                    return Ok(Some(BootFailure::Exited(format!(
                        "{status}; {}",
                        err.trim()
                    ))));
                }
            }
            if start.elapsed() >= timeout {
                return Ok(Some(BootFailure::Timeout));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait for qemu to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            match self.child.as_mut() {
                None => return Ok(true),
                Some(c) => {
                    if c.try_wait().context("checking on qemu")?.is_some() {
                        self.child = None;
                        return Ok(true);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(false)
    }

    /// Kill qemu and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kill a qemu by process id (for signal handlers that cannot reach the
/// [`Vm`]; its `Drop` still reaps it).
pub fn kill_pid(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Serial log lines that mean the boot failed for good.
const PANIC_MARKERS: &[&str] = &[
    "Kernel panic - not syncing",
    "Gave up waiting for root",
    "ALERT!  ",
    "No init found",
    "Target filesystem doesn't have requested",
    "(initramfs) ",
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn escape_comma(p: &Path) -> std::ffi::OsString {
    std::ffi::OsString::from(p.as_os_str().to_string_lossy().replace(',', ",,"))
}

/// What a finished boot saw.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// The serial log (kept when `--log` was given).
    pub log: PathBuf,
    /// The line that held the expected text.
    pub line: Option<String>,
    /// The whole serial log.
    pub console: String,
}

/// Boot `opts.disk`, wait for `expect` (or, without it, for qemu to exit by
/// itself), then kill qemu.
pub fn boot(opts: &BootOptions, expect: Option<&str>, timeout: Duration) -> Result<BootReport> {
    let mut vm = Vm::start(opts)?;
    match expect {
        Some(text) => vm.wait_for(text, timeout)?,
        None => {
            if !vm.wait_exit(timeout)? {
                bail!(
                    "qemu did not exit within {} s; last lines of the serial log:\n{}",
                    timeout.as_secs(),
                    vm.log_tail(20)
                );
            }
        }
    }
    vm.stop();
    let console = vm.log_text();
    let line = expect.and_then(|t| {
        console
            .lines()
            .find(|l| l.contains(t))
            .map(|l| l.trim_end().to_string())
    });
    Ok(BootReport {
        log: vm.log.clone(),
        line,
        console,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_text_across_reads() {
        assert!(contains(b"xx STANDIN-BOOTED host", b"STANDIN-BOOTED"));
        assert!(!contains(b"STANDIN-BOOT", b"STANDIN-BOOTED"));
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }
}
