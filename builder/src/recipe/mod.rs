//! Image recipes: a TOML file that describes a system tree (its base, files,
//! hostname, users, init) and how its disk boots (kernel, initrd, command
//! line, partition sizes). The format is documented in `images/README.md`.
//! Unknown keys are errors that name the key and the file.

mod base;
mod build;
mod paths;
mod size;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub use base::restore_archive;
pub use build::build_tree;
pub use paths::resolve_in_root;
pub use size::Size;

use crate::disk::{BootConfig, DiskOptions};

/// A parsed recipe. Relative paths in it are relative to the recipe's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Where the tree starts: `busybox`, `debootstrap:SUITE`, a `*.tar.zst`
    /// archive or a directory.
    pub base: String,
    /// Debian mirror for `debootstrap:` bases.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Written to /etc/hostname and /etc/hosts.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Directories to create.
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
    /// Files to add (copied from `source` or written from `content`).
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Executables to add together with the shared libraries `ldd` lists.
    #[serde(default)]
    pub programs: Vec<ProgramSpec>,
    /// Users besides root, written to /etc/passwd, /etc/group, /etc/shadow.
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// The init program and how it behaves.
    #[serde(default)]
    pub init: Option<InitSpec>,
    /// Kernel, initrd and command line.
    #[serde(default)]
    pub boot: BootSpec,
    /// Partition and disk sizes.
    #[serde(default)]
    pub disk: DiskSpec,
    /// The directory the recipe was loaded from (not a TOML key).
    #[serde(skip)]
    pub dir: PathBuf,
    /// The recipe file (not a TOML key).
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[[dirs]]`: a directory to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    /// Absolute path in the image.
    pub path: String,
    /// Permission bits (TOML allows `0o755`); default 0o755.
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// `[[files]]`: a file (or, with a directory `source`, a tree) to add.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path in the image.
    pub path: String,
    /// Host file or directory to copy (relative to the recipe).
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Inline content (instead of `source`).
    #[serde(default)]
    pub content: Option<String>,
    /// Permission bits; default 0o644 (kept from `source` for directories).
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// `[[programs]]`: an executable plus its shared libraries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// Host executable, or `self` for the running standin binary.
    pub source: String,
    /// Absolute path in the image.
    pub path: String,
}

/// `[[users]]`: one user and its primary group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    /// Primary group id; default the uid (a group of the user's name).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Default `/home/NAME` (created).
    #[serde(default)]
    pub home: Option<String>,
    /// Default `/bin/sh`.
    #[serde(default)]
    pub shell: Option<String>,
}

/// `[init]`: the program the kernel starts and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    /// Host file (relative to the recipe) installed as the init program.
    pub script: PathBuf,
    /// Where it goes in the image; default `/sbin/init`.
    #[serde(default)]
    pub path: Option<String>,
    /// What to do once the system is up: `stay` (keep running, default) or `poweroff`.
    #[serde(default)]
    pub after: Option<After>,
    /// Extra settings, written with `after` to `/etc/standin/init.conf` as
    /// shell `KEY='value'` lines that the init script sources.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// What an init does after it reported that the system is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum After {
    Stay,
    Poweroff,
}

/// `[boot]`: kernel, initrd, command line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// Kernel; default the newest /boot/vmlinuz-* of the build host.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initrd; default the /boot/initrd.img-* matching the kernel.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Arguments after `root=PARTUUID=...`; default `rw console=ttyS0 panic=1`.
    #[serde(default)]
    pub cmdline: Option<String>,
}

/// `[disk]`: sizes (bytes, or strings like `"512MiB"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Total disk size; default computed from the tree.
    #[serde(default)]
    pub size: Option<Size>,
    /// EFI system partition size; default 64 MiB or what the kernel needs.
    #[serde(default)]
    pub esp_size: Option<Size>,
    /// Minimum root partition size.
    #[serde(default)]
    pub root_size: Option<Size>,
}

impl Recipe {
    /// Read and check a recipe file.
    pub fn load(file: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading recipe {}", file.display()))?;
        let mut r: Recipe = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
            .with_context(|| format!("parsing recipe {}", file.display()))?;
        r.file = file.to_path_buf();
        r.dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        r.check()
            .with_context(|| format!("checking recipe {}", file.display()))?;
        Ok(r)
    }

    /// A path from the recipe, relative to the recipe's directory.
    pub fn host_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn check(&self) -> Result<()> {
        if self.base.trim().is_empty() {
            bail!(
                "base is empty; use busybox, debootstrap:SUITE, a .tar.zst archive or a directory"
            );
        }
        for d in &self.dirs {
            paths::check_image_path(&d.path).context("in [[dirs]]")?;
        }
        for f in &self.files {
            paths::check_image_path(&f.path).context("in [[files]]")?;
            match (&f.source, &f.content) {
                (Some(_), Some(_)) => bail!(
                    "[[files]] {}: give either source or content, not both",
                    f.path
                ),
                (None, None) => bail!("[[files]] {}: needs source or content", f.path),
                _ => {}
            }
        }
        for p in &self.programs {
            paths::check_image_path(&p.path).context("in [[programs]]")?;
        }
        for u in &self.users {
            if u.name.is_empty() || u.name.contains([':', '\n', '/']) || u.name == "root" {
                bail!(
                    "[[users]] name {:?} is not usable (root exists already; no ':' or '/')",
                    u.name
                );
            }
        }
        if let Some(h) = &self.hostname {
            if h.is_empty()
                || h.len() > 64
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                bail!("hostname {h:?} is not a valid host name (letters, digits, '-', '.')");
            }
        }
        if let Some(i) = &self.init {
            if let Some(p) = &i.path {
                paths::check_image_path(p).context("in [init]")?;
            }
            for k in i.env.keys() {
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    bail!("[init.env] key {k:?} is not a shell variable name");
                }
            }
        }
        Ok(())
    }

    /// Override settings of `[init.env]` (from the command line); checked
    /// like the recipe's own.
    pub fn set_init_env(&mut self, pairs: &[(String, String)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let file = self.file.clone();
        let init = self.init.as_mut().with_context(|| {
            format!(
                "recipe {} has no [init], so --init-env has nothing to set",
                file.display()
            )
        })?;
        for (k, v) in pairs {
            init.env.insert(k.clone(), v.clone());
        }
        self.check().context("checking --init-env")
    }

    /// Disk options for building this recipe's tree at `tree` into `output`.
    pub fn disk_options(&self, tree: &Path, output: &Path) -> DiskOptions {
        DiskOptions {
            tree: tree.to_path_buf(),
            output: output.to_path_buf(),
            size: self.disk.size.map(|s| s.0),
            esp_size: self.disk.esp_size.map(|s| s.0),
            root_size: self.disk.root_size.map(|s| s.0),
            boot: BootConfig {
                kernel: self.boot.kernel.as_ref().map(|k| self.host_path(k)),
                initrd: self.boot.initrd.as_ref().map(|k| self.host_path(k)),
                cmdline: self.boot.cmdline.clone(),
            },
            ..DiskOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Recipe> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.toml");
        std::fs::write(&p, text).unwrap();
        Recipe::load(&p)
    }

    fn chain(e: &anyhow::Error) -> String {
        e.chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": ")
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = load_text("base = \"busybox\"\nhostnme = \"x\"\n").unwrap_err();
        let s = chain(&e);
        assert!(s.contains("hostnme"), "{s}");
        assert!(s.contains("r.toml"), "{s}");
        let e = load_text("base = \"busybox\"\n[boot]\nkernal = \"x\"\n").unwrap_err();
        assert!(chain(&e).contains("kernal"), "{}", chain(&e));
    }

    #[test]
    fn missing_base_is_an_error() {
        let s = chain(&load_text("hostname = \"x\"\n").unwrap_err());
        assert!(s.contains("base"), "{s}");
    }

    #[test]
    fn parses_a_full_recipe() {
        let r = load_text(
            r#"
base = "busybox"
hostname = "h1"
[[dirs]]
path = "/srv"
mode = 0o700
[[files]]
path = "/srv/x"
content = "hi"
mode = 0o600
[[users]]
name = "app"
uid = 1000
[init]
script = "init.sh"
after = "poweroff"
env = { A = "b" }
[boot]
cmdline = "rw console=ttyS0"
[disk]
size = "256MiB"
esp_size = 67108864
"#,
        )
        .unwrap();
        assert_eq!(r.dirs[0].mode, Some(0o700));
        assert_eq!(r.disk.size.unwrap().0, 256 << 20);
        assert_eq!(r.disk.esp_size.unwrap().0, 64 << 20);
        assert_eq!(r.init.as_ref().unwrap().after, Some(After::Poweroff));
    }

    #[test]
    fn the_documented_format_parses() {
        let readme = include_str!("../../../images/README.md");
        let start = readme.find("```toml\n").expect("a toml block") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let r = load_text(&readme[start..end]).unwrap();
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.programs[0].source, "self");
        assert_eq!(r.disk.root_size.unwrap().0, 512 << 20);
        for shipped in ["demo-source.toml", "target-appliance.toml"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../images")
                .join(shipped);
            Recipe::load(&p).unwrap();
        }
    }

    #[test]
    fn relative_image_paths_are_refused() {
        let s = chain(
            &load_text("base = \"busybox\"\n[[files]]\npath = \"etc/x\"\ncontent = \"\"\n")
                .unwrap_err(),
        );
        assert!(s.contains("absolute"), "{s}");
        let s = chain(
            &load_text("base = \"busybox\"\n[[files]]\npath = \"/etc/../x\"\ncontent = \"\"\n")
                .unwrap_err(),
        );
        assert!(s.contains(".."), "{s}");
    }
}
