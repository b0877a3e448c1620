//! Running the external tools a disk build needs, with errors that name the
//! tool, its output and the package that provides it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// The Debian package that provides a tool, for "install it with" hints.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "mke2fs" | "e2fsck" | "debugfs" => "e2fsprogs",
        "mkfs.vfat" => "dosfstools",
        "mcopy" | "mmd" => "mtools",
        "qemu-img" => "qemu-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "busybox" => "busybox-static",
        "debootstrap" => "debootstrap",
        "ldd" => "libc-bin",
        "cp" | "tar" => "coreutils",
        "zstd" => "zstd",
        _ => "the package that provides it",
    }
}

/// Find a tool in the usual system directories (sbin included, which a
/// normal user's PATH may lack).
pub fn find_tool(tool: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    for d in dirs {
        let p = d.join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{tool} is not installed; install it with: apt-get install -y {}",
        package_of(tool)
    )
}

/// Run `tool args...`; fail with its stderr when it exits non-zero.
pub fn run_tool(tool: &str, args: &[&std::ffi::OsStr]) -> Result<Output> {
    let path = find_tool(tool)?;
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C");
    run_command(tool, &mut cmd)
}

/// Run a prepared command; fail with its output when it exits non-zero.
pub fn run_command(what: &str, cmd: &mut Command) -> Result<Output> {
    tracing::debug!("running {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut text = stderr.trim().to_string();
        if text.is_empty() {
            text = stdout.trim().to_string();
        }
        bail!("{what} failed ({}): {text}", out.status);
    }
    Ok(out)
}

/// The newest `/boot/<prefix>*` file of the build host (Debian's
/// `linux-image-amd64` installs `/boot/vmlinuz-*` and `/boot/initrd.img-*`),
/// by version order of the suffix.
pub fn newest_boot_file(boot_dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(boot_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix(prefix)?.to_string();
            if ver.ends_with(".old") || ver.ends_with(".bak") {
                return None;
            }
            Some((ver, e.path()))
        })
        .collect();
    found.sort_by(|a, b| version_cmp(&a.0, &b.0));
    found.pop().map(|(_, p)| p)
}

/// Compare version strings: runs of digits numerically, the rest as text.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match out.last_mut() {
                Some((ld, text)) if *ld == d => text.push(c),
                _ => out.push((d, c.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = if x.0 && y.0 {
            let xn = x.1.trim_start_matches('0');
            let yn = y.1.trim_start_matches('0');
            xn.len().cmp(&yn.len()).then_with(|| xn.cmp(yn))
        } else {
            x.1.cmp(&y.1)
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// qemu-system-x86_64, or an error naming its package.
pub fn find_qemu() -> Result<PathBuf> {
    find_tool("qemu-system-x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_by_version_order() {
        let d = tempfile::tempdir().unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"] {
            std::fs::write(d.path().join(format!("vmlinuz-{v}")), b"k").unwrap();
        }
        std::fs::write(d.path().join("vmlinuz-6.1.0-11-amd64.old"), b"k").unwrap();
        let p = newest_boot_file(d.path(), "vmlinuz-").unwrap();
        assert!(p.ends_with("vmlinuz-6.1.0-10-amd64"), "{}", p.display());
        assert!(newest_boot_file(d.path(), "initrd.img-").is_none());
    }

    #[test]
    fn missing_tool_names_the_package() {
        let e = find_tool("no-such-tool-standin").unwrap_err().to_string();
        assert!(e.contains("no-such-tool-standin is not installed"), "{e}");
    }
}
