//! Computing the swap as a list of steps, before anything moves.
//!
//! Kept from the target (each path is resolved through the symlinks of
//! each tree, so `lib/modules` is `usr/lib/modules` on a merged-/usr
//! system): [`KEEP`], the network paths in `retain` and `add` modes, every
//! entry of the target root that is a mount point (another device), and the
//! standin state directory with its ancestors (the ancestors stay as
//! directories and take the staged system's entries and metadata).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::config::{NetworkMode, TargetConfig};
use super::fsutil::{self, ancestors, child, parent};
use super::network::{self, Format};
use super::steps::{Base, Bases, Step};

/// Paths always kept from the target: kernel, boot loader, modules.
pub const KEEP: &[&str] = &[
    "boot",
    "lib/modules",
    "etc/default/grub",
    "etc/default/grub.d",
    "etc/grub.d",
];

/// The swap, as computed before it starts; stored as `plan.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub bases: Bases,
    pub steps: Vec<Step>,
    /// Kept paths (as found in the target) and where they went.
    pub kept: Vec<String>,
    /// Generated files (fstab, network).
    pub generated: Vec<String>,
    /// Things the user should know (paths left in place, skipped entries).
    pub notes: Vec<String>,
}

struct Builder<'a> {
    b: &'a Bases,
    pinned: BTreeSet<Vec<u8>>,
    descend: BTreeSet<Vec<u8>>,
    steps: Vec<Step>,
    made: BTreeSet<(u8, Vec<u8>)>,
    notes: Vec<String>,
    /// Staged directories whose entries change (restored on undo, set after).
    staged_dirs: BTreeSet<Vec<u8>>,
    /// Target directories whose entries change (restored on undo).
    target_dirs: BTreeSet<Vec<u8>>,
    /// Kept: final location → location in the target.
    kept: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn s(p: &[u8]) -> String {
    standin_builder::bytes::encode(p)
}

fn tag(b: Base) -> u8 {
    b as u8
}

fn is_under(p: &[u8], base: &[u8]) -> bool {
    base.is_empty() || p == base || (p.starts_with(base) && p.get(base.len()) == Some(&b'/'))
}

impl Builder<'_> {
    fn mkdirs(&mut self, base: Base, rel: &[u8], with_self: bool) {
        let mut all = ancestors(rel);
        if with_self {
            all.push(rel.to_vec());
        }
        for a in all {
            if self.made.insert((tag(base), a.clone())) {
                self.steps.push(Step::Mkdir { base, path: a });
            }
        }
    }

    fn rename(&mut self, from: Base, fp: &[u8], to: Base, tp: &[u8]) {
        self.steps.push(Step::Rename {
            from,
            from_path: fp.to_vec(),
            to,
            to_path: tp.to_vec(),
        });
    }

    fn entries(&self, base: Base, dir: &[u8]) -> Result<Vec<(Vec<u8>, std::fs::Metadata)>> {
        let p = self.b.path(base, dir);
        let mut v = Vec::new();
        for e in std::fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
            let e = e.with_context(|| format!("reading {}", p.display()))?;
            let m = std::fs::symlink_metadata(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            v.push((child(dir, e.file_name().as_bytes()), m));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    fn move_out(&mut self, dir: &[u8], dev: u64) -> Result<()> {
        for (p, m) in self.entries(Base::Target, dir)? {
            if self.pinned.contains(&p) {
                continue;
            }
            if m.dev() != dev {
                self.notes.push(format!(
                    "/{} is a mount point on the target; it stays as it is",
                    s(&p)
                ));
                self.pinned.insert(p);
                continue;
            }
            if self.descend.contains(&p) && m.is_dir() {
                self.mkdirs(Base::Held, &p, true);
                self.move_out(&p, dev)?;
            } else {
                self.rename(Base::Target, &p, Base::Held, &p);
            }
        }
        Ok(())
    }

    fn move_in(&mut self, dir: &[u8]) -> Result<()> {
        for (p, m) in self.entries(Base::Staged, dir)? {
            if self.pinned.contains(&p) {
                self.notes.push(format!(
                    "the staged system's /{} stays in the staging area: the target keeps its own there",
                    s(&p)
                ));
                continue;
            }
            if self.descend.contains(&p) {
                if m.is_dir() {
                    self.move_in(&p)?;
                } else {
                    self.notes.push(format!(
                        "the staged system's /{} is not a directory but holds the standin state on the target; it stays in the staging area",
                        s(&p)
                    ));
                }
                continue;
            }
            self.rename(Base::Staged, &p, Base::Target, &p);
        }
        Ok(())
    }

    /// Whether `rel` names a directory in the tree after the move-in.
    fn new_has_dir(&self, rel: &[u8]) -> Result<bool> {
        if rel.is_empty() || self.descend.contains(rel) {
            return Ok(true);
        }
        Ok(fsutil::lstat(&self.b.path(Base::Staged, rel))?.is_some_and(|m| m.is_dir()))
    }

    /// Make the parents of `rel` exist in the new tree.
    fn parents_in_new(&mut self, rel: &[u8]) -> Result<()> {
        for a in ancestors(rel) {
            if !self.new_has_dir(&a)? && self.made.insert((tag(Base::Target), a.clone())) {
                self.steps.push(Step::Mkdir {
                    base: Base::Target,
                    path: a,
                });
            }
        }
        Ok(())
    }

    fn blocked(&self, rel: &[u8]) -> bool {
        self.pinned
            .iter()
            .any(|p| is_under(rel, p) || is_under(p, rel))
    }

    fn keep(&mut self, k: &str) -> Result<()> {
        let kt = fsutil::resolve_beneath(&self.b.target, k)?;
        let ks = fsutil::resolve_beneath(&self.b.staged, k)?;
        if kt.is_empty() || ks.is_empty() || self.blocked(&kt) || self.blocked(&ks) {
            return Ok(());
        }
        if self.kept.keys().any(|d| is_under(&ks, d)) {
            return Ok(());
        }
        if fsutil::exists(&self.b.path(Base::Staged, &ks))? {
            self.mkdirs(Base::Displaced, &ks, false);
            self.rename(Base::Target, &ks, Base::Displaced, &ks);
            self.staged_dirs.insert(parent(&ks).to_vec());
        }
        if fsutil::exists(&self.b.path(Base::Target, &kt))? {
            self.parents_in_new(&ks)?;
            self.rename(Base::Held, &kt, Base::Target, &ks);
            self.target_dirs.insert(parent(&kt).to_vec());
            self.staged_dirs.insert(parent(&ks).to_vec());
        }
        self.kept.insert(ks, kt);
        Ok(())
    }

    /// Where `rel` (a path in the new tree) lives before the swap.
    fn origin(&self, rel: &[u8]) -> std::path::PathBuf {
        for (ks, kt) in &self.kept {
            if is_under(rel, ks) {
                let mut p = kt.clone();
                p.extend_from_slice(&rel[ks.len()..]);
                return self.b.path(Base::Target, &p);
            }
        }
        self.b.path(Base::Staged, rel)
    }

    fn generate(&mut self, rel: &[u8], content: Vec<u8>) -> Result<()> {
        let origin = self.origin(rel);
        let (mode, uid, gid) = match fsutil::lstat(&origin)? {
            Some(m) => {
                self.mkdirs(Base::Replaced, rel, false);
                self.rename(Base::Target, rel, Base::Replaced, rel);
                (m.mode() & 0o7777, m.uid(), m.gid())
            }
            None => {
                self.parents_in_new(rel)?;
                (0o644, 0, 0)
            }
        };
        self.steps.push(Step::Write {
            base: Base::Target,
            path: rel.to_vec(),
            content,
            mode,
            uid,
            gid,
        });
        if !self.kept.keys().any(|k| is_under(rel, k)) {
            self.staged_dirs.insert(parent(rel).to_vec());
        }
        Ok(())
    }
}

fn read_opt(p: &std::path::Path) -> Result<Option<String>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Network files (relative paths) under a root, with their formats.
fn network_files(root: &std::path::Path) -> Result<Vec<(String, Format)>> {
    let mut out = Vec::new();
    for base in network::NETWORK_PATHS {
        let rel = fsutil::resolve_beneath(root, base)?;
        let p = fsutil::join(root, &rel);
        match fsutil::lstat(&p)? {
            Some(m) if m.is_file() => out.push(s(&rel)),
            Some(m) if m.is_dir() => {
                let mut names: Vec<_> = std::fs::read_dir(&p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| s(&child(&rel, e.file_name().as_bytes())))
                    .collect();
                names.sort();
                out.extend(names);
            }
            _ => {}
        }
    }
    Ok(out
        .into_iter()
        .filter_map(|r| network::format_of(&r).map(|f| (r, f)))
        .collect())
}

/// Compute the plan. `pinned`: paths in the target root that never move
/// (the state directory).
pub fn build(bases: &Bases, pinned: &[Vec<u8>], cfg: &TargetConfig) -> Result<Plan> {
    let mut descend: BTreeSet<Vec<u8>> = BTreeSet::new();
    for p in pinned {
        descend.extend(ancestors(p));
    }
    let mut b = Builder {
        b: bases,
        pinned: pinned.iter().cloned().collect(),
        descend: descend.clone(),
        steps: Vec::new(),
        made: BTreeSet::new(),
        notes: Vec::new(),
        staged_dirs: BTreeSet::new(),
        target_dirs: BTreeSet::new(),
        kept: BTreeMap::new(),
    };
    let dev = std::fs::metadata(&bases.target)
        .with_context(|| format!("reading {}", bases.target.display()))?
        .dev();
    for base in [Base::Held, Base::Displaced, Base::Replaced] {
        b.mkdirs(base, b"", true);
    }
    b.move_out(b"", dev)?;
    b.move_in(b"")?;
    let mut keep: Vec<&str> = KEEP.to_vec();
    if cfg.network_mode != NetworkMode::Source {
        keep.extend(network::NETWORK_PATHS);
    }
    for k in keep {
        b.keep(k)?;
    }
    // fstab
    let fst = fsutil::resolve_beneath(&bases.target, "etc/fstab")?;
    let fss = fsutil::resolve_beneath(&bases.staged, "etc/fstab")?;
    let tf = read_opt(&fsutil::join(&bases.target, &fst))?;
    let sf = read_opt(&fsutil::join(&bases.staged, &fss))?;
    let mut generated = Vec::new();
    if (tf.is_some() || sf.is_some()) && !b.blocked(&fss) {
        let merged = super::fstab::merge(tf.as_deref().unwrap_or(""), sf.as_deref().unwrap_or(""));
        b.generate(&fss, merged.into_bytes())?;
        generated.push(format!("/{}", s(&fss)));
    }
    // network
    let src_files = network_files(&bases.staged)?;
    let read_src = |rel: &str| read_opt(&bases.staged.join(rel));
    match cfg.network_mode {
        NetworkMode::Retain => {}
        NetworkMode::Source => {
            for (rel, f) in &src_files {
                let Some(text) = read_src(rel)? else { continue };
                let new = network::rewrite(*f, &text, cfg);
                if new != text {
                    b.generate(rel.as_bytes(), new.into_bytes())?;
                    generated.push(format!("/{rel}"));
                }
            }
        }
        NetworkMode::Add => {
            let srcs = |want: Format| -> Result<Vec<String>> {
                let mut v = Vec::new();
                for (rel, f) in &src_files {
                    if *f == want {
                        if let Some(t) = read_src(rel)? {
                            v.push(t);
                        }
                    }
                }
                Ok(v)
            };
            let (ifs, nds, nms) = (
                srcs(Format::Ifupdown)?,
                srcs(Format::Networkd)?,
                srcs(Format::NetworkManager)?,
            );
            for (trel, f) in network_files(&bases.target)? {
                let Some(text) = read_opt(&bases.target.join(&trel))? else {
                    continue;
                };
                let new = match f {
                    Format::Ifupdown if trel == "etc/network/interfaces" => {
                        network::add_ifupdown(&text, &ifs.join("\n"), cfg)
                    }
                    Format::Networkd if trel.ends_with(".network") => {
                        network::add_networkd(&text, &nds, cfg)
                    }
                    Format::NetworkManager => network::add_nm(&text, &nms, cfg),
                    _ => None,
                };
                if let Some(new) = new {
                    // The kept file's place in the new tree.
                    let place = b
                        .kept
                        .iter()
                        .find(|(_, kt)| is_under(trel.as_bytes(), kt))
                        .map(|(ks, kt)| {
                            let mut p = ks.clone();
                            p.extend_from_slice(&trel.as_bytes()[kt.len()..]);
                            p
                        });
                    if let Some(place) = place {
                        b.generate(&place, new.into_bytes())?;
                        generated.push(format!("/{}", s(&place)));
                    }
                }
            }
        }
    }
    // Directory metadata: restore on undo (first steps, undone last), set at the end.
    let mut pre = Vec::new();
    let mut post = Vec::new();
    let mut tdirs = b.target_dirs.clone();
    tdirs.insert(Vec::new());
    tdirs.extend(descend.iter().cloned());
    for d in &tdirs {
        let p = bases.path(Base::Target, d);
        if fsutil::lstat(&p)?.is_some_and(|m| m.is_dir()) {
            pre.push(Step::Meta {
                base: Base::Target,
                path: d.clone(),
                set: None,
                restore: Some(fsutil::meta(&p)?),
            });
        }
    }
    let mut sdirs = b.staged_dirs.clone();
    sdirs.insert(Vec::new());
    sdirs.extend(descend.iter().cloned());
    for d in &sdirs {
        let p = bases.path(Base::Staged, d);
        if fsutil::lstat(&p)?.is_some_and(|m| m.is_dir()) {
            let m = fsutil::meta(&p)?;
            pre.push(Step::Meta {
                base: Base::Staged,
                path: d.clone(),
                set: None,
                restore: Some(m.clone()),
            });
            post.push(Step::Meta {
                base: Base::Target,
                path: d.clone(),
                set: Some(m),
                restore: None,
            });
        }
    }
    let mut steps = pre;
    steps.append(&mut b.steps);
    steps.append(&mut post);
    Ok(Plan {
        bases: bases.clone(),
        steps,
        kept: b
            .kept
            .iter()
            .map(|(ks, kt)| {
                if ks == kt {
                    format!("/{}", s(ks))
                } else {
                    format!("/{} (from the target's /{})", s(ks), s(kt))
                }
            })
            .collect(),
        generated,
        notes: b.notes,
    })
}
