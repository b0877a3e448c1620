//! The demo's two systems, built from images/demo-source.toml (embedded, so
//! an installed binary needs no repository): the source `demo-source` and
//! the target's own small system `demo-target`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use standin_builder::recipe::{build_tree, Recipe};
use standin_builder::NoProgress;

const RECIPE: &str = include_str!("../../images/demo-source.toml");
const DATA: &str = include_str!("../../images/demo-source/data.txt");
const INIT: &str = include_str!("../../images/demo-source/init.sh");

/// Write the recipe (and its files) into `dir`, with hostname `host`;
/// returns the recipe file.
fn write_recipe(dir: &Path, name: &str, host: &str) -> Result<PathBuf> {
    let files = dir.join("demo-source");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    std::fs::write(files.join("data.txt"), DATA).context("writing the demo data file")?;
    std::fs::write(files.join("init.sh"), INIT).context("writing the demo init")?;
    let text = RECIPE.replace(
        "hostname = \"demo-source\"",
        &format!("hostname = \"{host}\""),
    );
    // An os-release, so both systems describe themselves like a real one.
    let text = format!(
        "{text}\n[[files]]\npath = \"/etc/os-release\"\ncontent = \"PRETTY_NAME=\\\"standin demo (busybox)\\\"\\nID=standin-demo\\nVERSION_ID=\\\"1\\\"\\n\"\n"
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

/// Build the recipe with hostname `host` into the empty dir `tree`;
/// returns the recipe file written under `recipes`.
pub fn build(recipes: &Path, name: &str, host: &str, tree: &Path) -> Result<PathBuf> {
    let file = write_recipe(recipes, name, host)?;
    let recipe = Recipe::load(&file)?;
    std::fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    build_tree(&recipe, tree, &NoProgress)
        .with_context(|| format!("building {} from {}", tree.display(), file.display()))?;
    Ok(file)
}

/// Give the tree at `root` its own boot loader configuration
/// (`boot/grub/grub.cfg`, naming `whose` it is): a real source has one and
/// keeps it when it fails back; the standby's is kept by the failover and
/// checked by validation.
pub fn boot_loader(root: &Path, whose: &str) -> Result<()> {
    let dir = root.join("boot/grub");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = dir.join("grub.cfg");
    std::fs::write(
        &cfg,
        format!("# the {whose} own boot loader configuration\n"),
    )
    .with_context(|| format!("writing {}", cfg.display()))
}
