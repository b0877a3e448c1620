//! The steps of a swap, each journaled before it happens, each safe to
//! repeat (done again after a crash) and to undo (rollback).
//!
//! The step log (`rollback/<id>/steps.log`) gets one line per step,
//! `do N` before step N is carried out and `undo N` before it is undone,
//! each appended and fdatasynced first. Every rename is followed by an
//! fsync of both parent directories, so when line N+1 is durable, step N
//! is too. After a crash only the last logged step is in doubt, and each
//! step can tell whether it happened by looking at the tree (a rename
//! happened when its source is gone and its destination exists).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use standin_builder::bytes::serde_bytes;

use super::fsutil::{self, Meta};
use crate::durable;

/// Where a step's path lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// The target root.
    Target,
    /// The staged (or snapshot) root.
    Staged,
    /// `rollback/<id>/target/`: the target's own system while failed over.
    Held,
    /// `rollback/<id>/displaced/`: staged entries replaced by kept paths.
    Displaced,
    /// `rollback/<id>/replaced/`: files replaced by generated ones.
    Replaced,
}

/// One step of the swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Create a directory (undo: remove it, it must be empty).
    Mkdir {
        base: Base,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// Rename an entry (undo: rename it back).
    Rename {
        from: Base,
        #[serde(with = "serde_bytes")]
        from_path: Vec<u8>,
        to: Base,
        #[serde(with = "serde_bytes")]
        to_path: Vec<u8>,
    },
    /// Set a directory's metadata (`set`), or restore it on undo (`restore`).
    Meta {
        base: Base,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        set: Option<Meta>,
        restore: Option<Meta>,
    },
    /// Write a generated file (undo: remove it).
    Write {
        base: Base,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// The directories a plan's bases stand for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bases {
    pub target: PathBuf,
    pub staged: PathBuf,
    /// `rollback/<id>`.
    pub rollback: PathBuf,
}

impl Bases {
    /// The directory of a base.
    pub fn dir(&self, b: Base) -> PathBuf {
        match b {
            Base::Target => self.target.clone(),
            Base::Staged => self.staged.clone(),
            Base::Held => self.rollback.join("target"),
            Base::Displaced => self.rollback.join("displaced"),
            Base::Replaced => self.rollback.join("replaced"),
        }
    }

    /// A path in a base.
    pub fn path(&self, b: Base, rel: &[u8]) -> PathBuf {
        fsutil::join(&self.dir(b), rel)
    }
}

impl Step {
    /// A short description for logs and errors.
    pub fn describe(&self, b: &Bases) -> String {
        match self {
            Step::Mkdir { base, path } => format!("create {}", b.path(*base, path).display()),
            Step::Rename {
                from,
                from_path,
                to,
                to_path,
            } => format!(
                "move {} to {}",
                b.path(*from, from_path).display(),
                b.path(*to, to_path).display()
            ),
            Step::Meta { base, path, .. } => {
                format!("metadata of {}", b.path(*base, path).display())
            }
            Step::Write { base, path, .. } => format!("write {}", b.path(*base, path).display()),
        }
    }

    /// Carry the step out; a step that already happened is left alone.
    pub fn apply(&self, b: &Bases) -> Result<()> {
        match self {
            Step::Mkdir { base, path } => {
                let p = b.path(*base, path);
                match fsutil::lstat(&p)? {
                    Some(m) if m.is_dir() => Ok(()),
                    Some(_) => bail!("{} exists and is not a directory", p.display()),
                    None => {
                        std::fs::create_dir(&p)
                            .with_context(|| format!("creating {}", p.display()))?;
                        let parent = p.parent().unwrap_or(Path::new("/"));
                        durable::sync_dir(parent)
                            .with_context(|| format!("syncing {}", parent.display()))
                    }
                }
            }
            Step::Rename {
                from,
                from_path,
                to,
                to_path,
            } => {
                let f = b.path(*from, from_path);
                let t = b.path(*to, to_path);
                match (fsutil::exists(&f)?, fsutil::exists(&t)?) {
                    (true, false) => fsutil::rename_durable(&f, &t),
                    (false, true) => Ok(()),
                    (true, true) => bail!(
                        "cannot move {} to {}: both exist; move one of them aside and run the command again",
                        f.display(),
                        t.display()
                    ),
                    (false, false) => bail!(
                        "cannot move {} to {}: neither exists; the tree was changed by something else",
                        f.display(),
                        t.display()
                    ),
                }
            }
            Step::Meta {
                base, path, set, ..
            } => match set {
                Some(m) => fsutil::set_meta(&b.path(*base, path), m),
                None => Ok(()),
            },
            Step::Write {
                base,
                path,
                content,
                mode,
                uid,
                gid,
            } => {
                let p = b.path(*base, path);
                durable::write_atomic(&p, content)
                    .with_context(|| format!("writing {}", p.display()))?;
                std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid))
                    .with_context(|| format!("changing the owner of {}", p.display()))?;
                rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(*mode))
                    .with_context(|| format!("changing the mode of {}", p.display()))?;
                Ok(())
            }
        }
    }

    /// Undo the step; a step that never happened (or was undone) is left alone.
    pub fn undo(&self, b: &Bases) -> Result<()> {
        match self {
            Step::Mkdir { base, path } => {
                let p = b.path(*base, path);
                if fsutil::exists(&p)? {
                    std::fs::remove_dir(&p).with_context(|| {
                        format!(
                            "removing {} (created by the failover): it must be empty; move what was written there aside and run the rollback again",
                            p.display()
                        )
                    })?;
                    let parent = p.parent().unwrap_or(Path::new("/"));
                    durable::sync_dir(parent)
                        .with_context(|| format!("syncing {}", parent.display()))?;
                }
                Ok(())
            }
            Step::Rename {
                from,
                from_path,
                to,
                to_path,
            } => {
                let f = b.path(*from, from_path);
                let t = b.path(*to, to_path);
                match (fsutil::exists(&f)?, fsutil::exists(&t)?) {
                    (false, true) => fsutil::rename_durable(&t, &f),
                    (true, false) => Ok(()),
                    (true, true) => bail!(
                        "cannot move {} back to {}: both exist; move one of them aside and run the rollback again",
                        t.display(),
                        f.display()
                    ),
                    (false, false) => bail!(
                        "cannot move {} back to {}: neither exists; the tree was changed by something else",
                        t.display(),
                        f.display()
                    ),
                }
            }
            Step::Meta {
                base,
                path,
                restore,
                ..
            } => match restore {
                Some(m) => fsutil::set_meta(&b.path(*base, path), m),
                None => Ok(()),
            },
            Step::Write { base, path, .. } => durable::remove(&b.path(*base, path))
                .with_context(|| format!("removing {}", b.path(*base, path).display())),
        }
    }
}

/// What the step log says happened last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    /// Nothing logged yet.
    None,
    /// `do N` was the last line.
    Do(usize),
    /// `undo N` was the last line.
    Undo(usize),
}

/// The append-only step log.
pub struct StepLog {
    file: std::fs::File,
}

impl StepLog {
    /// Open (creating) the log at `path`.
    pub fn open(path: &Path) -> Result<StepLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the step log {}", path.display()))?;
        if let Some(parent) = path.parent() {
            durable::sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
        }
        Ok(StepLog { file })
    }

    /// Append a line durably.
    pub fn append(&mut self, line: &str) -> Result<()> {
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.file.sync_data())
            .context("writing the step log")
    }

    /// The last complete line of the log at `path`.
    pub fn last(path: &Path) -> Result<Last> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Last::None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // A torn last line (no newline) was never acted on.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => return Ok(Last::None),
        };
        let line = complete.rsplit('\n').next().unwrap_or("");
        let parse = |n: &str| {
            n.parse::<usize>()
                .with_context(|| format!("reading {}: bad line {line:?}", path.display()))
        };
        Ok(match line.split_once(' ') {
            Some(("do", n)) => Last::Do(parse(n)?),
            Some(("undo", n)) => Last::Undo(parse(n)?),
            _ => bail!("reading {}: bad line {line:?}", path.display()),
        })
    }
}

/// Test hook: `STANDIN_TEST_CRASH_AT=<tag>` kills the process with SIGKILL
/// when it reaches that point (`do-journal:N`, `do:N`, `undo-journal:N`,
/// `undo:N`). Only tests set it.
pub fn crash_point(tag: &str) {
    if let Some(want) = std::env::var_os("STANDIN_TEST_CRASH_AT") {
        if want.to_str() == Some(tag) {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
}
