//! Identities and a `standin target serve` child process, for every test
//! area (link, protect, failback): one way to start the daemon and read the
//! address it listens on.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Create an identity with the real binary; return (dir, fingerprint).
pub fn keys(base: &Path, name: &str) -> (PathBuf, String) {
    let dir = base.join(name);
    let out = super::run_ok(
        super::standin().args(["keys", "init", "--dir"]).arg(&dir),
        None,
    );
    (dir, super::stdout(&out).trim().to_string())
}

/// A `standin target serve` child process (killed on drop).
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Start `target serve` through `cmd` (the binary, or a wrapper that
    /// execs the arguments that follow, such as `ip netns exec NS standin`)
    /// with `--listen listen --state-dir state --identity identity`, a
    /// `--trust` for each of `trust`, then `extra`; its stderr is appended
    /// to `log`. Waits until it prints its address (recovery is done then).
    pub fn serve(
        mut cmd: Command,
        listen: &str,
        state: &Path,
        identity: &Path,
        trust: &[&str],
        extra: &[&OsStr],
        log: &Path,
    ) -> Daemon {
        cmd.args(["target", "serve", "--listen", listen, "--state-dir"])
            .arg(state)
            .arg("--identity")
            .arg(identity);
        for t in trust {
            cmd.args(["--trust", t]);
        }
        cmd.args(extra)
            .env("STANDIN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("opening the daemon log"),
            );
        let mut child = cmd.spawn().expect("starting standin target serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("reading the daemon's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "daemon did not report its address: {line:?}\nlog:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .to_string();
        Daemon {
            child,
            addr,
            log: log.to_path_buf(),
        }
    }

    /// kill -9 (and reap).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop it now (kill -9).
    pub fn stop(mut self) {
        self.kill9();
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("polling the daemon").is_none()
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
