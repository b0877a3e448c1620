//! Seeding a staging area from this machine's own system, for reverse
//! protection: after a failover, the old source becomes the target of the
//! failed-over machine, and its staging area for the returning source id
//! starts as a copy of its own tree (`--from-root`, default `/`), so the
//! difference mirror only sends what changed since the failover.
//!
//! The copy is cheap:
//!
//! - **reflink** (XFS, Btrfs): regular files are cloned (`FICLONE`); the
//!   filesystem shares their data copy-on-write.
//! - **hardlink** (ext4, tmpfs): regular files of the staging area are hard
//!   links to the live system's inodes, listed in
//!   `staging/<id>/seed-inodes.json` (inode → staging paths). Before the
//!   apply path changes such an inode in place, [`guard::Seeds::before_modify`] gives
//!   the staging area its own copy (renamed over the staging paths that
//!   hold it), so applying change sets never changes a file of the live
//!   system.
//! - **copy** when the staging area is on another filesystem than the root.
//!
//! Directories, symlinks, fifos and device nodes are always created anew.
//! What the mirror leaves out (`--exclude`, and when the root is `/` the
//! content of `/proc`, `/sys`, `/dev`, `/run`, `/tmp`, `/var/lib/standin`)
//! is left out here too, as is the state directory itself.

pub mod guard;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use standin_builder::entry::{Entry, Kind};
use standin_builder::progress::Progress;
use standin_builder::scan::{ScanOptions, Scanner};
use standin_builder::tree::TreeWriter;

use crate::durable;
use crate::share::index;
use crate::state::{now_ms, TargetState};

/// Inode index of a hardlink seed, beside the staging root.
pub const INODES_FILE: &str = "seed-inodes.json";
/// What the seed did, beside the staging root.
pub const META_FILE: &str = "seed.json";
/// Modification time (ns) and size of each shared inode when it was seeded.
pub const STAMPS_FILE: &str = "seed-stamps.json";

/// How the seed shares data with the live system.
pub use crate::share::Share as SeedMethod;

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// The returning source's id (names `staging/<id>/`).
    pub source_id: String,
    /// This machine's own system tree.
    pub from_root: PathBuf,
    /// Globs left out, as `standin protect --exclude` on the source.
    pub excludes: Vec<String>,
    /// Replace a non-empty staging area.
    pub force: bool,
}

/// The result of a seed (also written to `staging/<id>/seed.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedReport {
    pub source_id: String,
    pub from_root: PathBuf,
    pub staging_root: PathBuf,
    pub method: SeedMethod,
    /// Regular files (hard-link group members count once).
    pub files: u64,
    pub dirs: u64,
    /// Symlinks, fifos, device nodes.
    pub others: u64,
    /// Hard-link group members linked to their first member.
    pub links: u64,
    /// Bytes of regular files shared (reflink, hardlink) or copied.
    pub bytes: u64,
    /// Entries that vanished from the live system while seeding.
    pub vanished: u64,
    /// A replica that was there before and was replaced (`--force`).
    pub replaced: bool,
    pub created_unix_ms: i64,
    pub took_ms: u64,
}

/// `staging/<id>/` of a state directory.
pub fn area(state_dir: &Path, source_id: &str) -> PathBuf {
    state_dir.join("staging").join(source_id)
}

fn non_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

fn check_state(state_dir: &Path, id: &str) -> Result<TargetState> {
    standin_link::message::check_source_id(id).map_err(anyhow::Error::msg)?;
    let st = TargetState::load(state_dir)?;
    if let Some(s) = &st.source_id {
        if s != id {
            bail!(
                "{} stages source {s:?}, not {id:?}; seed with --source-id {s} or use another state directory",
                state_dir.display()
            );
        }
    }
    if let Some(r) = crate::failover::load_record(state_dir)? {
        if r.state != crate::failover::RecordState::RolledBack {
            bail!(
                "the staged system of {} is swapped into {} (failover {}, {:?}); run `standin failover --rollback` first",
                state_dir.display(),
                r.target_root.display(),
                r.id,
                r.state
            );
        }
    }
    Ok(st)
}

/// Seed `STATE/staging/<id>/root` from `from_root` (see the module docs).
/// Refuses a non-empty staging area unless `force`.
pub fn seed(state_dir: &Path, o: &SeedOptions, progress: &dyn Progress) -> Result<SeedReport> {
    let started = Instant::now();
    for sub in ["journal", "staging", "snapshots", "rollback"] {
        durable::create_dirs(&state_dir.join(sub))?;
    }
    use std::os::unix::fs::PermissionsExt;
    for d in [state_dir.to_path_buf(), state_dir.join("staging")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", d.display()))?;
    }
    let _running = crate::lock::daemon(state_dir)?;
    let _lock = crate::lock::lock(state_dir)?;
    let mut st = check_state(state_dir, &o.source_id)?;
    let from = std::fs::canonicalize(&o.from_root)
        .with_context(|| format!("reading root {}", o.from_root.display()))?;
    let area = area(state_dir, &o.source_id);
    durable::create_dirs(&area)?;
    let root = area.join("root");
    let replaced = non_empty(&root)?;
    if replaced && !o.force {
        bail!(
            "staging area {} is not empty (last applied change set {}); a difference mirror starts from it as it is. To replace it with a copy of {}, run again with --force",
            root.display(),
            st.last_applied_seq,
            from.display()
        );
    }
    // Leftovers of an interrupted seed or replace.
    for name in [".root.seeding", ".root.old"] {
        let p = area.join(name);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let tmp = area.join(".root.seeding");
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

    let mut scan = ScanOptions {
        excludes: o.excludes.clone(),
        ..Default::default()
    };
    let state_abs = std::fs::canonicalize(state_dir)
        .with_context(|| format!("reading {}", state_dir.display()))?;
    if let Ok(rel) = state_abs.strip_prefix(&from) {
        let rel = format!("/{}", rel.display());
        scan.system_excludes.push(rel.clone());
        if from != Path::new("/") {
            scan.excludes.push(rel);
        }
    }
    let same_fs = std::fs::metadata(&from)
        .with_context(|| format!("reading {}", from.display()))?
        .dev()
        == std::fs::metadata(&tmp)
            .with_context(|| format!("reading {}", tmp.display()))?
            .dev();
    let mut w = Walk {
        tw: TreeWriter::open(&tmp).map_err(|e| anyhow::anyhow!("{e}"))?,
        tmp: tmp.clone(),
        method: if same_fs {
            None
        } else {
            Some(SeedMethod::Copy)
        },
        index: BTreeMap::new(),
        stamps: BTreeMap::new(),
        dirs: Vec::new(),
        report: SeedReport {
            source_id: o.source_id.clone(),
            from_root: from.clone(),
            staging_root: root.clone(),
            method: SeedMethod::Copy,
            files: 0,
            dirs: 0,
            others: 0,
            links: 0,
            bytes: 0,
            vanished: 0,
            replaced,
            created_unix_ms: now_ms(),
            took_ms: 0,
        },
    };
    progress.phase("seeding the staging area", None, None);
    for item in Scanner::new(&from, &scan, progress)? {
        let s = item?;
        w.entry(&s.entry, &s.abs, progress)?;
    }
    w.finish()?;
    progress.finish();
    let mut report = w.report;
    report.method = w.method.unwrap_or(SeedMethod::Hardlink);

    // The index must exist before the tree becomes the staging root.
    let index = area.join(INODES_FILE);
    let stamps = area.join(STAMPS_FILE);
    if report.method == SeedMethod::Hardlink {
        let json = serde_json::to_vec(&w.stamps).expect("stamps serialize");
        durable::write_atomic(&stamps, &json)
            .with_context(|| format!("writing {}", stamps.display()))?;
        let json = serde_json::to_vec(&w.index).expect("index serializes");
        durable::write_atomic(&index, &json)
            .with_context(|| format!("writing {}", index.display()))?;
    } else {
        for p in [&index, &stamps] {
            if p.exists() {
                durable::remove(p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    if root.exists() {
        let old = area.join(".root.old");
        std::fs::rename(&root, &old).with_context(|| format!("moving {} aside", root.display()))?;
        durable::sync_dir(&area)?;
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    std::fs::rename(&tmp, &root)
        .with_context(|| format!("renaming {} to {}", tmp.display(), root.display()))?;
    durable::sync_dir(&area)?;

    st.format = st.format.max(1);
    st.source_id = Some(o.source_id.clone());
    st.mirror_complete = false;
    st.mirror = None;
    st.warning = Some(format!(
        "staging area seeded from {}; it becomes the replica when the source's difference mirror completes",
        from.display()
    ));
    st.save(state_dir)
        .with_context(|| format!("writing {}", state_dir.join("state.json").display()))?;
    report.took_ms = started.elapsed().as_millis() as u64;
    let meta = serde_json::to_vec_pretty(&report).expect("report serializes");
    durable::write_atomic(&area.join(META_FILE), &meta)
        .with_context(|| format!("writing {}", area.join(META_FILE).display()))?;
    Ok(report)
}

/// The last seed of `source_id`, if any.
pub fn load(state_dir: &Path, source_id: &str) -> Result<Option<SeedReport>> {
    let p = area(state_dir, source_id).join(META_FILE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Files of a hardlink-seeded staging area that still share their inode
/// with this machine's own system and that this system changed in place
/// after the seed (modification time or size moved): the staging area
/// holds this machine's version of them, not the source's. Returns the
/// count and up to three paths; empty when there was no hardlink seed.
pub fn shared_changes(state_dir: &Path, source_id: &str) -> Result<(u64, Vec<String>)> {
    let area = area(state_dir, source_id);
    let (idx, stamps) = (area.join(INODES_FILE), area.join(STAMPS_FILE));
    let (Ok(ib), Ok(sb)) = (std::fs::read(&idx), std::fs::read(&stamps)) else {
        return Ok((0, Vec::new()));
    };
    let index: index::Index =
        serde_json::from_slice(&ib).with_context(|| format!("reading {}", idx.display()))?;
    let stamps: BTreeMap<u64, (i64, u64)> =
        serde_json::from_slice(&sb).with_context(|| format!("reading {}", stamps.display()))?;
    let root = area.join("root");
    let (mut n, mut some) = (0u64, Vec::new());
    for (ino, paths) in index {
        let Some(&(mtime, size)) = stamps.get(&ino) else {
            continue;
        };
        for p in paths {
            let rel = standin_builder::bytes::decode(&p).map_err(anyhow::Error::msg)?;
            let Some(st) = guard::stat_beneath(&root, &rel) else {
                continue;
            };
            let now = st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64;
            if st.st_ino == ino && (now != mtime || st.st_size as u64 != size) {
                n += 1;
                if some.len() < 3 {
                    some.push(standin_builder::entry::display_path(&rel));
                }
                break;
            }
        }
    }
    Ok((n, some))
}

struct Walk {
    tw: TreeWriter,
    tmp: PathBuf,
    method: Option<SeedMethod>,
    /// Live inode → staging paths (hardlink method).
    index: index::Index,
    /// Live inode → (mtime ns, size) when linked.
    stamps: BTreeMap<u64, (i64, u64)>,
    /// Directory entries, for their metadata at the end (children change times).
    dirs: Vec<Entry>,
    report: SeedReport,
}

fn vanished(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

impl Walk {
    fn tree_err(e: standin_builder::tree::TreeError) -> anyhow::Error {
        anyhow::anyhow!("seeding: {e}")
    }

    fn dst(&self, rel: &[u8]) -> PathBuf {
        crate::failover::fsutil::join(&self.tmp, rel)
    }

    fn entry(&mut self, e: &Entry, abs: &Path, progress: &dyn Progress) -> Result<()> {
        if e.path.is_empty() {
            self.dirs.push(e.clone());
            return Ok(());
        }
        self.tw.check(&e.path).map_err(Self::tree_err)?;
        match e.kind {
            Kind::Dir => {
                self.tw.create(e, None).map_err(Self::tree_err)?;
                self.dirs.push(e.clone());
                self.report.dirs += 1;
            }
            Kind::File if e.link.is_some() => {
                let first = e.link.as_deref().expect("checked");
                self.tw.hardlink(first, &e.path).map_err(Self::tree_err)?;
                self.report.links += 1;
                if self.method == Some(SeedMethod::Hardlink) {
                    if let Ok(m) = std::fs::symlink_metadata(self.dst(&e.path)) {
                        index::add(&mut self.index, m.ino(), &e.path);
                    }
                }
            }
            Kind::File => self.file(e, abs, progress)?,
            _ => {
                self.tw.create(e, None).map_err(Self::tree_err)?;
                self.tw.set_metadata(e).map_err(Self::tree_err)?;
                self.report.others += 1;
            }
        }
        Ok(())
    }

    fn file(&mut self, e: &Entry, abs: &Path, progress: &dyn Progress) -> Result<()> {
        let dst = self.dst(&e.path);
        match crate::share::place(&mut self.method, abs, &dst) {
            Ok(()) => {}
            Err(x) if vanished(&x) => {
                self.report.vanished += 1;
                return Ok(());
            }
            Err(x) => {
                return Err(x)
                    .with_context(|| format!("seeding {} from {}", dst.display(), abs.display()))
            }
        }
        self.report.files += 1;
        self.report.bytes += e.size;
        progress.advance(e.size, 1);
        if self.method == Some(SeedMethod::Hardlink) {
            let m = std::fs::symlink_metadata(&dst)
                .with_context(|| format!("reading {}", dst.display()))?;
            let ino = m.ino();
            self.stamps
                .insert(ino, (m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.len()));
            index::add(&mut self.index, ino, &e.path);
        } else {
            // A clone or copy is a new inode: give it the live file's metadata.
            self.tw.set_metadata(e).map_err(Self::tree_err)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for d in self.dirs.iter().rev() {
            self.tw.set_metadata(d).map_err(Self::tree_err)?;
        }
        rustix::fs::syncfs(
            std::fs::File::open(&self.tmp)
                .with_context(|| format!("opening {}", self.tmp.display()))?,
        )
        .with_context(|| format!("syncing {}", self.tmp.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
