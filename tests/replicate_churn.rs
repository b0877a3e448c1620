//! Rapid random churn (creates, writes, renames of files and directories,
//! deletes, hard links, symlinks, chmod, truncate) with no pause between
//! operations, so batches mix everything; the replica must converge.
//! Needs root.

mod replicate_support;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use replicate_support::common::require_root;
use replicate_support::*;
use standin_agent::capture::Backend;
use standin_agent::replicate::ReplicateOptions;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn pick(r: &mut Lcg, root: &Path, dirs_only: bool) -> Option<PathBuf> {
    let all: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !dirs_only || e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    if all.is_empty() {
        return None;
    }
    Some(all[r.next(all.len() as u64) as usize].clone())
}

fn some_dir(r: &mut Lcg, root: &Path) -> PathBuf {
    if r.next(3) == 0 {
        root.to_path_buf()
    } else {
        pick(r, root, true).unwrap_or_else(|| root.to_path_buf())
    }
}

fn churn(root: &Path, seed: u64, ops: u32, links: bool) {
    let mut r = Lcg(seed);
    let log = std::env::var("CHURN_LOG").is_ok();
    for i in 0..ops {
        let name = format!("n{i}");
        let op = r.next(10);
        if log {
            eprintln!("op {i}: {op}");
        }
        match op {
            0 | 1 => {
                let d = some_dir(&mut r, root);
                let len = r.next(70_000) as usize;
                let _ = std::fs::write(d.join(&name), vec![(i % 251) as u8; len]);
            }
            2 => {
                let d = some_dir(&mut r, root);
                let _ = std::fs::create_dir(d.join(&name));
            }
            3 => {
                if let (Some(from), d) = (pick(&mut r, root, false), some_dir(&mut r, root)) {
                    if !d.starts_with(&from) {
                        if log {
                            eprintln!("  rename {} -> {}", from.display(), d.join(&name).display());
                        }
                        let _ = std::fs::rename(&from, d.join(&name));
                    }
                }
            }
            4 => {
                if let Some(p) = pick(&mut r, root, false) {
                    if p.is_dir() && !p.is_symlink() {
                        let _ = std::fs::remove_dir_all(&p);
                    } else {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
            5 => {
                if let Some(p) =
                    pick(&mut r, root, false).filter(|p| p.is_file() && !p.is_symlink())
                {
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                        let off = r.next(50_000);
                        if log {
                            eprintln!("  patch {} at {off}", p.display());
                        }
                        let _ = f.write_all_at(b"patched", off);
                    }
                }
            }
            6 if links => {
                if let Some(p) =
                    pick(&mut r, root, false).filter(|p| p.is_file() && !p.is_symlink())
                {
                    let d = some_dir(&mut r, root);
                    if log {
                        eprintln!("  link {} -> {}", p.display(), d.join(&name).display());
                    }
                    let _ = std::fs::hard_link(&p, d.join(&name));
                }
            }
            7 => {
                let d = some_dir(&mut r, root);
                let _ = std::os::unix::fs::symlink(format!("target-{i}"), d.join(&name));
            }
            8 => {
                if let Some(p) = pick(&mut r, root, false).filter(|p| !p.is_symlink()) {
                    let mode = if p.is_dir() {
                        0o755 - (r.next(2) as u32) * 0o50
                    } else {
                        0o600 + r.next(0o100) as u32
                    };
                    let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
                }
            }
            _ => {
                if let Some(p) =
                    pick(&mut r, root, false).filter(|p| p.is_file() && !p.is_symlink())
                {
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                        let _ = f.set_len(r.next(80_000));
                    }
                }
            }
        }
    }
}

/// The seeds to run: `STANDIN_CHURN_SEED` alone when set; else the fixed
/// seed and `STANDIN_CHURN_RANDOM` (default 5) seeds derived from the time,
/// so every run also tries new sequences.
fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("STANDIN_CHURN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return vec![s];
    }
    let n: u64 = std::env::var("STANDIN_CHURN_RANDOM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut r = Lcg(t);
    let mut v = vec![0x5eed];
    v.extend((0..n).map(|_| r.next(1 << 31)));
    v
}

/// The reader's delay before each read (`STANDIN_CHURN_READ_DELAY_MS`,
/// default none): lets events pile up as on a loaded machine.
fn env_delay() -> Duration {
    std::env::var("STANDIN_CHURN_READ_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

fn run(links: bool, backend: Backend, delay: Duration, seeds: &[u64]) {
    require_root();
    if std::env::var("CHURN_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("standin_agent=trace")
            .with_writer(std::io::stderr)
            .try_init();
    }
    for &seed in seeds {
        // Shown with a failure: the seed that re-runs it.
        eprintln!(
            "churn seed {seed} (links: {links}, {backend:?}, reader delay {delay:?}); \
             re-run: STANDIN_CHURN_SEED={seed} cargo test --test replicate_churn"
        );
        let mut h = Harness::start_with(
            |_| {},
            ReplicateOptions::default(),
            |c, _| {
                c.backend = backend;
                c.read_delay = delay;
            },
        );
        for round in 0..4u64 {
            churn(&h.src, seed + round, 150, links);
            h.converge();
        }
        let r = h.stop();
        assert_eq!(r.queue_full, 0, "seed {seed}: {r:?}");
        // Converged by the change sets, not by a periodic sweep. A rescan
        // follows lost events: the fanotify mark covers the whole
        // filesystem, so other activity on it (a busy shared machine) can
        // overflow the kernel queue; such a seed proves less, and says so.
        assert_eq!(r.sweeps, 0, "seed {seed}: {r:?}");
        if r.rescans > 0 {
            eprintln!(
                "seed {seed}: change capture lost events and {} rescan(s) ran; \
                 this run did not check convergence by change sets alone",
                r.rescans
            );
        }
    }
}

#[test]
fn rapid_random_churn_without_hard_links_converges() {
    run(false, Backend::Auto, env_delay(), &seeds());
}

/// Hard links created, written through and removed within the same
/// batches: a write through a name that is gone when the batch is diffed
/// reaches the inode's other names (it once left them stale).
#[test]
fn rapid_random_churn_with_hard_links_converges() {
    run(true, Backend::Auto, env_delay(), &seeds());
}

/// The churn without hard links with the inotify fallback (directories
/// known by the descriptor each watch holds). With hard links inotify is
/// not exact: its events carry no file identity, so a write through a link
/// made and removed before the reader sees it cannot be placed (see
/// docs/replication.md, known problems).
#[test]
fn rapid_random_churn_converges_with_the_inotify_fallback() {
    run(false, Backend::Inotify, env_delay(), &seeds());
}

/// Seeds that failed with the inotify fallback on a loaded machine, run
/// with a reader that waits before each read so that events pile up as
/// they did there. Without hard links: files created in a directory that
/// was renamed and replaced by a new one at its old name before the
/// reader saw its creation were lost (the reader watched by path and
/// replayed the rename on the wrong watch), or a watch went with an
/// unpaired move, or a stale content.
#[test]
fn inotify_churn_with_a_lagging_reader_converges_on_the_seeds_that_failed() {
    run(
        false,
        Backend::Inotify,
        Duration::from_millis(20),
        &[313317315, 811315143, 137160003, 212524399],
    );
}

/// The sequences the churn found, shrunk (the diff's unit tests replay them
/// with hand-made batches), here with real change capture and no pause, so
/// each lands in one batch: a directory renamed twice with an entry removed
/// and one created under its intermediate name; a directory renamed, a
/// child renamed out, the parent renamed again, a new directory at the old
/// name, an entry moved into the renamed parent which then moves under
/// another directory.
fn chained_renames(backend: Backend) {
    require_root();
    let mut h = Harness::start_with(
        |_| {},
        ReplicateOptions::default(),
        |c, _| c.backend = backend,
    );
    let src = h.src.clone();
    let p = |rel: &str| src.join(rel);
    for d in ["a", "a/b", "a/b/c", "a/b/c/d", "e", "e/f", "e/f/g", "q"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    std::fs::write(p("a/b/keep"), b"k").unwrap();
    std::fs::write(p("e/f/g/h"), b"h").unwrap();
    std::fs::write(p("e/i"), b"i").unwrap();
    h.converge();
    for round in 0..10 {
        // Removal and creation under an intermediate name.
        std::fs::rename(p("a"), p("x")).unwrap();
        std::fs::remove_dir_all(p("x/b/c")).unwrap();
        std::fs::write(p("x/b/new"), format!("{round}")).unwrap();
        std::fs::rename(p("x"), p("z")).unwrap();
        // Child out, parent again, a new directory at the old name.
        std::fs::rename(p("e"), p("y")).unwrap();
        std::fs::create_dir(p("y/f/n")).unwrap();
        std::fs::write(p("y/f/n/m"), b"m").unwrap();
        std::fs::rename(p("y/f"), p("w")).unwrap();
        std::fs::rename(p("y"), p("v")).unwrap();
        std::fs::create_dir(p("e")).unwrap();
        std::fs::write(p("e/k"), b"k").unwrap();
        std::fs::rename(p("w/g"), p("v/g2")).unwrap();
        std::fs::rename(p("v"), p("q/v")).unwrap();
        std::fs::write(p("q/v/g2/h"), format!("changed {round}")).unwrap();
        h.converge();
        // Back to the starting shape for the next round.
        std::fs::remove_dir_all(p("e")).unwrap();
        std::fs::remove_dir_all(p("w")).unwrap();
        std::fs::rename(p("q/v"), p("e")).unwrap();
        std::fs::rename(p("e/g2"), p("e/f")).unwrap();
        std::fs::create_dir(p("e/f/g")).unwrap();
        std::fs::rename(p("z"), p("a")).unwrap();
        std::fs::create_dir_all(p("a/b/c/d")).unwrap();
        h.converge();
    }
    let r = h.stop();
    assert_eq!(r.sweeps, 0, "{r:?}");
    if r.rescans > 0 {
        eprintln!(
            "change capture lost events (activity elsewhere on the filesystem); {} rescan(s) ran",
            r.rescans
        );
    }
}

#[test]
fn chained_directory_renames_in_one_batch_converge() {
    chained_renames(Backend::Fanotify);
}

#[test]
fn chained_directory_renames_converge_with_the_inotify_fallback() {
    chained_renames(Backend::Inotify);
}
