//! `standin demo`: for now, a round trip of a built-in demo tree through an
//! image, step by step (later issues grow it into the whole story).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use standin_builder::archive::{self, BuildOptions};
use standin_builder::manifest;
use standin_builder::restore::{self, RestoreOptions};
use standin_builder::scan::ScanOptions;
use standin_builder::{verify, NoProgress};

use super::progress::human_bytes;
use super::Exit;

/// Arguments of `standin demo`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:
  standin demo                 # uses a temp directory, removed at the end
  standin demo --keep --dir /tmp/standin-demo")]
pub struct Args {
    /// Work in this directory instead of a temp directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the demo files afterwards.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: Args) -> Result<Exit> {
    let mut tmp = None;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("standin-demo-")
                .tempdir()
                .context("creating a temp dir")?;
            let p = t.path().to_path_buf();
            tmp = Some(t);
            p
        }
    };
    let source = base.join("source");
    let image = base.join("source.tar.zst");
    let restored = base.join("restored");
    if source.exists() || restored.exists() {
        bail!(
            "{} already holds a demo; remove it or pick another --dir",
            base.display()
        );
    }
    std::fs::create_dir(&source).with_context(|| format!("creating {}", source.display()))?;

    println!("standin demo: a system tree becomes a verified image and comes back exactly.\n");
    println!("step 1: make a small 'server' tree in {}", source.display());
    standin_builder::demo::make_tree(&source)?;
    println!("        config files, a log, a hardlink, a symlink, an xattr, a setuid helper,");
    println!("        and a 64 MiB sparse disk image with one island of data.\n");

    println!(
        "step 2: standin image build --root {} -o {}",
        source.display(),
        image.display()
    );
    let built = archive::build(&source, &image, &BuildOptions::default(), &NoProgress)?;
    println!(
        "        {} entries, {} of content -> {} compressed (sparse files stay sparse)",
        built.entries,
        human_bytes(built.bytes),
        human_bytes(built.archive_bytes)
    );
    println!("        root digest {}", built.root_digest);
    println!(
        "        beside it: {} and {}\n",
        built.paths.manifest.display(),
        built.paths.sha256.display()
    );

    println!("step 3: standin image verify {}", image.display());
    let rep = verify::verify(&image, &NoProgress)?;
    if !rep.ok() {
        bail!(
            "verification failed: {:?} {:?}",
            rep.problems,
            rep.differences.listed
        );
    }
    println!(
        "        archive digest, manifest and all {} files check out\n",
        rep.files
    );

    println!(
        "step 4: standin image restore {} --to {}",
        image.display(),
        restored.display()
    );
    let r = restore::restore(&image, &restored, &RestoreOptions::default(), &NoProgress)?;
    println!("        restored {} entries into a staging dir, checked them, then moved them into place\n", r.entries);

    println!("step 5: compare: scan both trees independently and compare root digests");
    let opts = ScanOptions::default();
    let a = manifest::scan_tree(&source, &opts, &NoProgress, |_| Ok(()))?;
    let b = manifest::scan_tree(&restored, &opts, &NoProgress, |_| Ok(()))?;
    println!("        source   {}", a.root_digest);
    println!("        restored {}", b.root_digest);
    if a.root_digest != b.root_digest {
        bail!("the restored tree differs from the source");
    }
    println!("        equal: same content, owners, modes, times, xattrs, links and holes.\n");
    if args.keep {
        if let Some(t) = tmp.take() {
            let _ = t.keep();
        }
    }
    if args.keep || args.dir.is_some() {
        println!("the demo files are in {}", base.display());
    }
    println!("done. Next: `standin image build --root / -o host.tar.zst` images this machine.");
    Ok(Exit::Ok)
}
