//! Paths inside an image tree: checked when the recipe is read and resolved
//! beneath the tree's root (symlinks followed as a chroot would), so nothing
//! a recipe or its base holds can make the builder write outside the tree.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// An image path must be absolute, normal and free of `..`.
pub fn check_image_path(p: &str) -> Result<()> {
    if !p.starts_with('/') {
        bail!("path {p:?} must be absolute (start with /)");
    }
    if p.split('/').any(|c| c == "..") {
        bail!("path {p:?} must not contain ..");
    }
    if p.contains('\0') {
        bail!("path {p:?} contains a NUL byte");
    }
    if p.trim_matches('/').is_empty() {
        bail!("path {p:?} names the root itself");
    }
    Ok(())
}

/// Resolve `image_path` beneath `root` as if `root` were `/`: symlinks in the
/// parent directories are followed (absolute targets start again at `root`,
/// `..` stops at `root`). The last component is not followed. The parents
/// need not exist; missing ones are returned as plain joins.
pub fn resolve_in_root(root: &Path, image_path: &str) -> Result<PathBuf> {
    let mut pending: Vec<String> = image_path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .rev()
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        if pending.is_empty() {
            resolved.push(c);
            break;
        }
        let here: PathBuf = resolved
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        match std::fs::symlink_metadata(&here) {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    bail!(
                        "too many symlinks resolving {image_path} in {}",
                        root.display()
                    );
                }
                let target = std::fs::read_link(&here)
                    .with_context(|| format!("reading {}", here.display()))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(n) => pending.push(n.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(c),
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_stay_beneath_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("/", r.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("usr/bin/up")).unwrap();
        assert_eq!(resolve_in_root(r, "/bin/sh").unwrap(), r.join("usr/bin/sh"));
        assert_eq!(
            resolve_in_root(r, "/escape/etc/passwd").unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, "/usr/bin/up/etc/x").unwrap(),
            r.join("etc/x")
        );
        // The last component is never followed.
        assert_eq!(resolve_in_root(r, "/escape").unwrap(), r.join("escape"));
    }
}
