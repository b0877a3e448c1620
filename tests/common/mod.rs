//! Shared helpers for end-to-end tests: run the real `standin` binary in a
//! temp directory and, on failure, print the command, its output and the
//! directory listing (ripgrep style); find or build test corpora.
#![allow(dead_code)]

pub mod daemon;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Path of the built `standin` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_standin"))
}

/// A `standin` command with logging quiet and colours off.
pub fn standin() -> Command {
    let mut c = Command::new(bin());
    c.env("NO_COLOR", "1").env_remove("STANDIN_LOG");
    c
}

/// Run a command; return its output. Never panics.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

fn describe(cmd: &Command, out: &Output, dir: Option<&Path>) -> String {
    let mut s = format!(
        "command: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(dir) = dir {
        s.push_str(&format!("--- listing of {} ---\n", dir.display()));
        for e in walkdir_list(dir).into_iter().take(200) {
            s.push_str(&e);
            s.push('\n');
        }
    }
    s
}

fn walkdir_list(dir: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-maxdepth", "3", "-printf", "%M %u:%g %s %p\n"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        Err(_) => vec![],
    }
}

/// Run and require exit code 0; on failure print everything and panic.
pub fn run_ok(cmd: &mut Command, dir: Option<&Path>) -> Output {
    let out = run(cmd);
    if !out.status.success() {
        panic!("command failed\n{}", describe(cmd, &out, dir));
    }
    out
}

/// Run and require a given exit code; on mismatch print everything and panic.
pub fn run_code(cmd: &mut Command, code: i32, dir: Option<&Path>) -> Output {
    let out = run(cmd);
    if out.status.code() != Some(code) {
        panic!("expected exit code {code}\n{}", describe(cmd, &out, dir));
    }
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Require a system tool; a missing one fails the test with the install command.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is missing; install it with: apt-get install -y {package}");
}

/// Require root (end-to-end tests run as root in CI).
pub fn require_root() {
    if !rustix::process::geteuid().is_root() {
        panic!("this test needs root (CI runs it as root); run: sudo cargo test");
    }
}

/// Where cached corpora live: $STANDIN_TEST_CACHE, else /var/cache/standin-test.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("STANDIN_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/standin-test"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating test cache {}: {e}", dir.display()));
    dir
}

static DEBIAN_LOCK: Mutex<()> = Mutex::new(());

/// A real Debian root from `debootstrap --variant=minbase bookworm`, made
/// once and cached (built into a temp name, renamed when complete, so a
/// cut-off build is never used). Needs root and debootstrap.
pub fn debian_root() -> PathBuf {
    let _guard = DEBIAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join("debian-bookworm");
    if dir.join("etc/os-release").exists() {
        return dir;
    }
    require_root();
    let debootstrap = require_tool("debootstrap", "debootstrap");
    // Serialise across test binaries with a lock file.
    let lock_path = cache_dir().join("debian-bookworm.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("opening debootstrap lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .expect("locking debootstrap lock");
    if dir.join("etc/os-release").exists() {
        return dir;
    }
    let tmp = cache_dir().join("debian-bookworm.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cmd = Command::new(debootstrap);
    cmd.args(["--variant=minbase", "bookworm"])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian");
    run_ok(&mut cmd, None);
    std::fs::rename(&tmp, &dir).expect("renaming finished debootstrap root");
    dir
}

/// A fresh temp dir under the target dir's tmp (same filesystem as the repo).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("standin-test-")
        .tempdir()
        .expect("creating temp dir")
}

/// The least a source tree needs to pass validation against a Debian 12
/// target: `etc/os-release` and `etc/hostname` (`web1`) under `src`.
pub fn minimal_system(src: &Path) {
    std::fs::create_dir_all(src.join("etc")).expect("creating etc");
    std::fs::write(src.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n")
        .expect("writing etc/os-release");
    std::fs::write(src.join("etc/hostname"), "web1\n").expect("writing etc/hostname");
}

/// A mount point, unmounted on drop (also when the test fails).
pub struct Mount(pub PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A 512 MiB XFS with reflinks, loop-mounted at `dir/mnt` (its image in `dir`).
pub fn mount_xfs_reflink(dir: &Path) -> Mount {
    let mkfs = require_tool("mkfs.xfs", "xfsprogs");
    let img = dir.join("xfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    run_ok(
        Command::new(mkfs).args(["-q", "-m", "reflink=1"]).arg(&img),
        None,
    );
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt),
        None,
    );
    Mount(mnt)
}

/// The sha256 (hex) of a file's content, read in 1 MiB pieces.
pub fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}
