//! The base a recipe's tree starts from.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::disk::run_tool;

/// Where a tree starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// A minimal tree made from busybox-static and its applet links.
    Busybox,
    /// `debootstrap --variant=minbase SUITE`.
    Debootstrap(String),
    /// A `*.tar.zst` archive made by `standin image build`.
    Archive(PathBuf),
    /// A directory copied as it is (`cp -a`).
    Dir(PathBuf),
}

impl Base {
    /// Parse a recipe's `base` value; relative paths are relative to `dir`.
    pub fn parse(s: &str, dir: &Path) -> Result<Base> {
        if s == "busybox" {
            return Ok(Base::Busybox);
        }
        if let Some(suite) = s.strip_prefix("debootstrap:") {
            if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                bail!("base {s:?}: name a Debian suite, e.g. debootstrap:bookworm");
            }
            return Ok(Base::Debootstrap(suite.to_string()));
        }
        let p = Path::new(s);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        if s.ends_with(".tar.zst") {
            if !p.is_file() {
                bail!("base archive {} not found", p.display());
            }
            return Ok(Base::Archive(p));
        }
        if p.is_dir() {
            return Ok(Base::Dir(p));
        }
        bail!(
            "base {s:?} not found: it is not busybox, debootstrap:SUITE, an existing .tar.zst archive or an existing directory ({})",
            p.display()
        )
    }
}

/// Fill the empty directory `tree` with `base`.
pub fn lay_base(base: &Base, tree: &Path, mirror: Option<&str>) -> Result<()> {
    match base {
        Base::Busybox => busybox_tree(tree),
        Base::Dir(src) => {
            let mut from = src.clone().into_os_string();
            from.push("/.");
            run_tool(
                "cp",
                &[
                    OsStr::new("-a"),
                    OsStr::new("--reflink=auto"),
                    &from,
                    tree.as_os_str(),
                ],
            )
            .with_context(|| format!("copying the base directory {}", src.display()))?;
            Ok(())
        }
        Base::Archive(archive) => restore_archive(archive, tree),
        Base::Debootstrap(suite) => {
            let mirror = mirror.unwrap_or("http://deb.debian.org/debian");
            run_tool(
                "debootstrap",
                &[
                    OsStr::new("--variant=minbase"),
                    OsStr::new(suite),
                    tree.as_os_str(),
                    OsStr::new(mirror),
                ],
            )
            .with_context(|| {
                format!("running debootstrap {suite} (needs root and network access to {mirror})")
            })?;
            Ok(())
        }
    }
}

/// Restore a `standin image build` archive into the empty directory `tree`
/// (exact metadata, verified against the archive's manifest).
pub fn restore_archive(archive: &Path, tree: &Path) -> Result<()> {
    crate::restore::restore(
        archive,
        tree,
        &crate::restore::RestoreOptions::default(),
        &crate::progress::NoProgress,
    )
    .with_context(|| format!("restoring the archive {}", archive.display()))?;
    Ok(())
}

/// The busybox binary to use: busybox-static's.
fn find_busybox() -> Result<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(p);
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
    }
    bail!("busybox is not installed; install it with: apt-get install -y busybox-static")
}

/// A minimal tree: /bin/busybox, a link for every applet, the usual
/// top-level directories, root's passwd/group entries and, when running as
/// root, /dev/console and /dev/null.
pub fn busybox_tree(tree: &Path) -> Result<()> {
    let bb = find_busybox()?;
    let out = run_tool("ldd", &[bb.as_os_str()]).ok();
    if let Some(o) = out {
        let text = String::from_utf8_lossy(&o.stdout);
        if text.contains("=>") {
            bail!(
                "{} is dynamically linked; install the static one with: apt-get install -y busybox-static",
                bb.display()
            );
        }
    }
    for (d, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("var/log", 0o755),
        ("var/lib", 0o755),
        ("var/tmp", 0o1777),
        ("mnt", 0o755),
    ] {
        let p = tree.join(d);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
    }
    let dest = tree.join("bin/busybox");
    std::fs::copy(&bb, &dest).with_context(|| format!("copying {}", bb.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", dest.display()))?;
    let list =
        run_tool("busybox", &[OsStr::new("--list-full")]).context("listing busybox applets")?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let rel = line.trim().trim_start_matches('/');
        if rel.is_empty() || rel == "bin/busybox" || rel.contains("..") {
            continue;
        }
        let link = tree.join(rel);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .context("writing /etc/passwd")?;
    std::fs::write(tree.join("etc/group"), "root:x:0:\n").context("writing /etc/group")?;
    std::fs::write(tree.join("etc/shadow"), "root:*:19000:0:99999:7:::\n")
        .context("writing /etc/shadow")?;
    std::fs::set_permissions(
        tree.join("etc/shadow"),
        std::fs::Permissions::from_mode(0o640),
    )
    .context("setting the mode of /etc/shadow")?;
    if rustix::process::geteuid().is_root() {
        use rustix::fs::{mknodat, FileType, Mode, CWD};
        for (name, major, minor, mode) in [("console", 5, 1, 0o600), ("null", 1, 3, 0o666)] {
            let p = tree.join("dev").join(name);
            mknodat(
                CWD,
                &p,
                FileType::CharacterDevice,
                Mode::from_raw_mode(mode),
                rustix::fs::makedev(major, minor),
            )
            .with_context(|| format!("creating the device node {}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", p.display()))?;
        }
    }
    Ok(())
}
