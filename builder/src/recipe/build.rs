//! Turning a recipe into a tree on disk.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::base::{lay_base, Base};
use super::paths::resolve_in_root;
use super::{After, Recipe};
use crate::disk::{run_tool, OwnerFixup};
use crate::progress::Progress;

/// Build the recipe's tree into `tree`, an empty directory. Running as
/// root, files get their owners directly and this returns `None`; otherwise
/// it returns the owners the disk build must set ([`DiskOptions::owners`]):
/// root for everything except what the recipe gives another owner.
///
/// [`DiskOptions::owners`]: crate::disk::DiskOptions::owners
pub fn build_tree(
    recipe: &Recipe,
    tree: &Path,
    progress: &dyn Progress,
) -> Result<Option<OwnerFixup>> {
    let base = Base::parse(&recipe.base, &recipe.dir)
        .with_context(|| format!("recipe {}", recipe.file.display()))?;
    progress.phase("laying the base", None, None);
    lay_base(&base, tree, recipe.mirror.as_deref())?;
    progress.finish();
    let w = Writer {
        tree,
        can_chown: rustix::process::geteuid().is_root(),
        owners: RefCell::new(BTreeMap::new()),
    };

    if let Some(h) = &recipe.hostname {
        w.file("/etc/hostname", format!("{h}\n").as_bytes(), 0o644, 0, 0)?;
        w.file(
            "/etc/hosts",
            format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{h}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            )
            .as_bytes(),
            0o644,
            0,
            0,
        )?;
    }
    add_users(recipe, &w)?;
    for d in &recipe.dirs {
        w.dir(&d.path, d.mode.unwrap_or(0o755), d.uid, d.gid)?;
    }
    for f in &recipe.files {
        match (&f.source, &f.content) {
            (_, Some(text)) => w.file(
                &f.path,
                text.as_bytes(),
                f.mode.unwrap_or(0o644),
                f.uid,
                f.gid,
            )?,
            (Some(src), None) => {
                let src = recipe.host_path(src);
                let md = std::fs::metadata(&src)
                    .with_context(|| format!("reading {} (source of {})", src.display(), f.path))?;
                if md.is_dir() {
                    w.copy_dir(&src, &f.path)?;
                } else {
                    let data = std::fs::read(&src)
                        .with_context(|| format!("reading {}", src.display()))?;
                    let mode = f.mode.unwrap_or(md.permissions().mode() & 0o7777);
                    w.file(&f.path, &data, mode, f.uid, f.gid)?;
                }
            }
            (None, None) => bail!("[[files]] {}: needs source or content", f.path),
        }
    }
    for p in &recipe.programs {
        let src = if p.source == "self" {
            std::env::current_exe().context("finding the running standin executable")?
        } else {
            recipe.host_path(Path::new(&p.source))
        };
        add_program(&w, &src, &p.path)?;
    }
    if let Some(init) = &recipe.init {
        let src = recipe.host_path(&init.script);
        let data = std::fs::read(&src)
            .with_context(|| format!("reading the init script {}", src.display()))?;
        w.file(
            init.path.as_deref().unwrap_or("/sbin/init"),
            &data,
            0o755,
            0,
            0,
        )?;
        let after = match init.after.unwrap_or(After::Stay) {
            After::Stay => "stay",
            After::Poweroff => "poweroff",
        };
        let mut conf = format!(
            "# written by standin image disk from {}\nAFTER='{after}'\n",
            recipe.file.display()
        );
        for (k, v) in &init.env {
            conf.push_str(&format!("{k}='{}'\n", v.replace('\'', "'\\''")));
        }
        w.file("/etc/standin/init.conf", conf.as_bytes(), 0o644, 0, 0)?;
    }
    if w.can_chown {
        return Ok(None);
    }
    Ok(Some(OwnerFixup {
        default: (0, 0),
        explicit: w.owners.into_inner(),
    }))
}

/// Writes into the tree, always beneath its root.
struct Writer<'a> {
    tree: &'a Path,
    can_chown: bool,
    /// Owners other than root, by path relative to the tree (kept for
    /// builds without root).
    owners: RefCell<BTreeMap<PathBuf, (u32, u32)>>,
}

impl Writer<'_> {
    fn target(&self, image_path: &str) -> Result<PathBuf> {
        resolve_in_root(self.tree, image_path)
    }

    fn parents(&self, p: &Path) -> Result<()> {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        Ok(())
    }

    fn own(&self, p: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
        if self.can_chown {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                .with_context(|| format!("setting the owner of {}", p.display()))?;
        } else if (uid, gid) != (0, 0) {
            let rel = p.strip_prefix(self.tree).unwrap_or(p).to_path_buf();
            self.owners.borrow_mut().insert(rel, (uid, gid));
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", p.display()))
    }

    fn file(&self, image_path: &str, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
        let p = self.target(image_path)?;
        self.parents(&p)?;
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {
                bail!("cannot write the file {image_path}: the tree has a directory there")
            }
            Ok(_) => {
                std::fs::remove_file(&p).with_context(|| format!("replacing {}", p.display()))?
            }
            Err(_) => {}
        }
        std::fs::write(&p, data).with_context(|| format!("writing {image_path} into the tree"))?;
        self.own(&p, mode, uid, gid)
    }

    fn dir(&self, image_path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let p = self.target(image_path)?;
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => bail!("cannot create the directory {image_path}: the tree has a file there"),
            Err(_) => std::fs::create_dir_all(&p)
                .with_context(|| format!("creating {image_path} in the tree"))?,
        }
        self.own(&p, mode, uid, gid)
    }

    fn copy_dir(&self, src: &Path, image_path: &str) -> Result<()> {
        let p = self.target(image_path)?;
        std::fs::create_dir_all(&p)
            .with_context(|| format!("creating {image_path} in the tree"))?;
        let mut from = src.as_os_str().to_owned();
        from.push("/.");
        run_tool("cp", &[OsStr::new("-a"), &from, p.as_os_str()])
            .with_context(|| format!("copying {} to {image_path}", src.display()))?;
        Ok(())
    }
}

/// Copy an executable and the shared libraries `ldd` lists for it.
fn add_program(w: &Writer<'_>, src: &Path, image_path: &str) -> Result<()> {
    let data =
        std::fs::read(src).with_context(|| format!("reading the program {}", src.display()))?;
    w.file(image_path, &data, 0o755, 0, 0)?;
    let out = std::process::Command::new("ldd")
        .arg(src)
        .output()
        .context("running ldd (install libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for lib in ldd_paths(&text) {
        let data = std::fs::read(&lib)
            .with_context(|| format!("reading {} (needed by {})", lib.display(), src.display()))?;
        w.file(&lib.to_string_lossy(), &data, 0o755, 0, 0)?;
    }
    Ok(())
}

/// The absolute library paths in `ldd` output.
fn ldd_paths(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let candidate = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = candidate.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    out
}

fn add_users(recipe: &Recipe, w: &Writer<'_>) -> Result<()> {
    if recipe.users.is_empty() {
        return Ok(());
    }
    let read = |p: &str| -> Result<String> {
        let path = w.target(p)?;
        Ok(std::fs::read_to_string(&path).unwrap_or_default())
    };
    let (mut passwd, mut group, mut shadow) = (
        read("/etc/passwd")?,
        read("/etc/group")?,
        read("/etc/shadow")?,
    );
    for u in &recipe.users {
        let gid = u.gid.unwrap_or(u.uid);
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        let exists = |text: &str| {
            text.lines()
                .any(|l| l.split(':').next() == Some(u.name.as_str()))
        };
        if exists(&passwd) {
            bail!("[[users]] {}: the base already has this user", u.name);
        }
        passwd.push_str(&format!(
            "{}:x:{}:{gid}:{}:{home}:{shell}\n",
            u.name, u.uid, u.name
        ));
        if !group
            .lines()
            .any(|l| l.split(':').nth(2) == Some(gid.to_string().as_str()))
        {
            group.push_str(&format!("{}:x:{gid}:\n", u.name));
        }
        shadow.push_str(&format!("{}:!:19000:0:99999:7:::\n", u.name));
        w.dir(&home, 0o750, u.uid, gid)?;
    }
    w.file("/etc/passwd", passwd.as_bytes(), 0o644, 0, 0)?;
    w.file("/etc/group", group.as_bytes(), 0o644, 0, 0)?;
    w.file("/etc/shadow", shadow.as_bytes(), 0o640, 0, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            ldd_paths(t),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
