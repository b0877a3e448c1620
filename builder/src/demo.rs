//! A small built-in tree for `standin demo`: a few configuration files, a
//! log, a hardlink, a symlink, an xattr, a sparse disk image and a setuid
//! helper — enough to show that an image keeps everything.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Write the demo tree into `dir` (which must exist and be empty).
pub fn make_tree(dir: &Path) -> Result<()> {
    let w = |rel: &str, text: &str| -> Result<()> {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    w("etc/hostname", "demo-source\n")?;
    w("etc/os-release", "PRETTY_NAME=\"standin demo\"\nID=demo\n")?;
    w(
        "etc/app/app.conf",
        "# the application's configuration\nlisten = 0.0.0.0:8080\ndata = /var/lib/app\n",
    )?;
    let mut log = String::new();
    for i in 0..2000 {
        log.push_str(&format!(
            "2026-11-22T07:{:02}:{:02}Z request {i} served in {} ms\n",
            i / 60 % 60,
            i % 60,
            i % 17
        ));
    }
    w("var/log/app.log", &log)?;
    w("usr/bin/app-helper", "#!/bin/sh\necho helper\n")?;
    fs::set_permissions(
        dir.join("usr/bin/app-helper"),
        fs::Permissions::from_mode(0o4755),
    )
    .context("setting the helper's mode")?;
    fs::hard_link(dir.join("etc/hostname"), dir.join("etc/hostname.bak"))
        .context("making a hardlink")?;
    std::os::unix::fs::symlink("app/app.conf", dir.join("etc/app.conf"))
        .context("making a symlink")?;
    let _ = rustix::fs::setxattr(
        dir.join("etc/app/app.conf"),
        "user.standin.demo",
        b"kept in the image",
        rustix::fs::XattrFlags::empty(),
    );
    fs::create_dir_all(dir.join("var/lib/app")).context("creating var/lib/app")?;
    let mut f =
        fs::File::create(dir.join("var/lib/app/disk.img")).context("creating a sparse file")?;
    f.set_len(64 << 20)?;
    f.seek(SeekFrom::Start(32 << 20))?;
    f.write_all(b"an island of data in a 64 MiB sparse file")?;
    Ok(())
}
