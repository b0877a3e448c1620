//! The one small interface through which profiles are collected, so tests can
//! give fixed facts: [`LiveFacts`] reads the running machine, [`MapFacts`]
//! serves facts from memory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Sizes of a filesystem (from `statvfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Total bytes.
    pub size: u64,
    /// Bytes in use.
    pub used: u64,
    /// Bytes available to ordinary users.
    pub free: u64,
}

/// What `stat` says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatInfo {
    /// Device id of the filesystem holding it.
    pub dev: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Bytes allocated on disk (`st_blocks * 512`).
    pub allocated: u64,
    /// Inode number.
    pub ino: u64,
}

/// Output of a command that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: Vec<u8>,
}

/// Everything profile collection reads from a machine.
///
/// Paths are absolute. Facts that live in files of a system tree
/// (os-release, hostname, fstab, network configuration) are read at
/// `root().join(...)`; /proc, /sys and /dev are read as given.
pub trait Facts {
    /// The tree whose files describe the system (`/` for the live one).
    fn root(&self) -> &Path;
    /// Read a whole file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Names in a directory, sorted.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Target of a symbolic link.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// `stat` a path (following symlinks).
    fn stat(&self, path: &Path) -> io::Result<StatInfo>;
    /// `statvfs` of the filesystem holding a path.
    fn statvfs(&self, path: &Path) -> io::Result<FsStats>;
    /// Run a command found on PATH; `Err` when it is not there.
    fn run(&self, cmd: &str, args: &[&str]) -> io::Result<CmdOutput>;
    /// Kernel release and machine architecture (`uname -r`, `uname -m`).
    fn uname(&self) -> (String, String);
    /// Bytes allocated by everything under `path` on its own filesystem
    /// (symlinks not followed, hard links counted once), leaving out `skip`.
    fn allocated_bytes(&self, path: &Path, skip: &[PathBuf]) -> io::Result<u64>;

    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool {
        self.stat(path).is_ok()
    }
    /// Read a file as trimmed text, `None` when it cannot be read.
    fn read_text(&self, path: &Path) -> Option<String> {
        self.read_file(path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
    }
    /// A path of a file fact inside the system tree.
    fn in_root(&self, rel: &str) -> PathBuf {
        self.root().join(rel.trim_start_matches('/'))
    }
}

/// Facts of the running machine; file facts come from `root`.
#[derive(Debug, Clone)]
pub struct LiveFacts {
    /// The system tree (`/` for this machine's own system).
    pub root: PathBuf,
}

impl LiveFacts {
    /// Facts of this machine with file facts from `root`.
    pub fn new(root: impl Into<PathBuf>) -> LiveFacts {
        LiveFacts { root: root.into() }
    }
}

impl Facts for LiveFacts {
    fn root(&self) -> &Path {
        &self.root
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(path)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(path)
    }
    fn stat(&self, path: &Path) -> io::Result<StatInfo> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(StatInfo {
            dev: m.dev(),
            is_dir: m.is_dir(),
            allocated: m.blocks() * 512,
            ino: m.ino(),
        })
    }
    fn statvfs(&self, path: &Path) -> io::Result<FsStats> {
        let s = rustix::fs::statvfs(path).map_err(io::Error::from)?;
        let frsize = if s.f_frsize > 0 {
            s.f_frsize
        } else {
            s.f_bsize
        };
        Ok(FsStats {
            size: s.f_blocks * frsize,
            used: s.f_blocks.saturating_sub(s.f_bfree) * frsize,
            free: s.f_bavail * frsize,
        })
    }
    fn run(&self, cmd: &str, args: &[&str]) -> io::Result<CmdOutput> {
        let out = std::process::Command::new(cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .env("LC_ALL", "C")
            .output()?;
        Ok(CmdOutput {
            success: out.status.success(),
            stdout: out.stdout,
        })
    }
    fn uname(&self) -> (String, String) {
        let u = rustix::system::uname();
        (
            u.release().to_string_lossy().into_owned(),
            u.machine().to_string_lossy().into_owned(),
        )
    }
    fn allocated_bytes(&self, path: &Path, skip: &[PathBuf]) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let top = std::fs::symlink_metadata(path)?;
        let dev = top.dev();
        let mut seen = std::collections::HashSet::new();
        let mut total = top.blocks() * 512;
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if skip.contains(&p) {
                    continue;
                }
                let Ok(m) = e.metadata() else { continue };
                if m.dev() != dev {
                    continue;
                }
                if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                    continue;
                }
                total += m.blocks() * 512;
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        Ok(total)
    }
}

/// Fixed facts held in memory, for tests and for replaying a machine.
#[derive(Debug, Clone, Default)]
pub struct MapFacts {
    /// System tree root (default `/`).
    pub root: PathBuf,
    /// File contents by absolute path (directories are implied by them).
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// Symbolic links by absolute path.
    pub links: BTreeMap<PathBuf, PathBuf>,
    /// `stat` answers by path; a path without one gets device 1.
    pub stats: BTreeMap<PathBuf, StatInfo>,
    /// `statvfs` answers by path; other paths use their nearest ancestor's.
    pub statvfs: BTreeMap<PathBuf, FsStats>,
    /// Command outputs by `cmd arg arg`; absent commands are "not found".
    pub commands: BTreeMap<String, CmdOutput>,
    /// Kernel release and architecture.
    pub uname: (String, String),
}

impl MapFacts {
    /// Empty facts rooted at `/`.
    pub fn new() -> MapFacts {
        MapFacts {
            root: PathBuf::from("/"),
            uname: ("6.1.0-test".into(), "x86_64".into()),
            ..Default::default()
        }
    }
    /// Add a file.
    pub fn file(&mut self, path: &str, content: &str) -> &mut Self {
        self.files
            .insert(PathBuf::from(path), content.as_bytes().to_vec());
        self
    }
    /// Add a symbolic link.
    pub fn link(&mut self, path: &str, target: &str) -> &mut Self {
        self.links
            .insert(PathBuf::from(path), PathBuf::from(target));
        self
    }
    /// Add a command's output.
    pub fn command(&mut self, line: &str, success: bool, stdout: &str) -> &mut Self {
        self.commands.insert(
            line.to_string(),
            CmdOutput {
                success,
                stdout: stdout.as_bytes().to_vec(),
            },
        );
        self
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.files
            .keys()
            .chain(self.links.keys())
            .any(|p| p != path && p.starts_with(path))
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found", path.display()),
    )
}

impl Facts for MapFacts {
    fn root(&self) -> &Path {
        &self.root
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(|| not_found(path))
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .files
            .keys()
            .chain(self.links.keys())
            .filter_map(|p| p.strip_prefix(path).ok())
            .filter_map(|r| r.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(not_found(path));
        }
        Ok(names)
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.links.get(path).cloned().ok_or_else(|| not_found(path))
    }
    fn stat(&self, path: &Path) -> io::Result<StatInfo> {
        if let Some(s) = self.stats.get(path) {
            return Ok(*s);
        }
        if self.files.contains_key(path) || self.links.contains_key(path) || self.is_dir(path) {
            return Ok(StatInfo {
                dev: 1,
                is_dir: self.is_dir(path),
                allocated: self.files.get(path).map_or(0, |f| f.len() as u64),
                ino: 0,
            });
        }
        Err(not_found(path))
    }
    fn statvfs(&self, path: &Path) -> io::Result<FsStats> {
        path.ancestors()
            .find_map(|a| self.statvfs.get(a).copied())
            .ok_or_else(|| not_found(path))
    }
    fn run(&self, cmd: &str, args: &[&str]) -> io::Result<CmdOutput> {
        let mut line = cmd.to_string();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        self.commands.get(&line).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{cmd}: command not found"))
        })
    }
    fn uname(&self) -> (String, String) {
        self.uname.clone()
    }
    fn allocated_bytes(&self, path: &Path, skip: &[PathBuf]) -> io::Result<u64> {
        Ok(self
            .files
            .iter()
            .filter(|(p, _)| p.starts_with(path) && !skip.iter().any(|s| p.starts_with(s)))
            .map(|(_, c)| c.len() as u64)
            .sum())
    }
}
