//! Running this same binary as the demo's commands: print the command line
//! a user would type, run it, keep its output for the failure report, and
//! stop background commands whatever happens.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `standin` subcommands (this binary) and prints them as `$ standin ...`.
pub struct Runner {
    /// This binary.
    pub exe: PathBuf,
    /// Where background commands write their output.
    pub logs: PathBuf,
}

/// One argument list, built with `arg`/`path`.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items
        .into_iter()
        .map(|s| s.as_ref().to_os_string())
        .collect()
}

/// A shell-ready rendering of one argument.
fn quote(a: &OsStr) -> String {
    let s = a.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `standin a b c` as a user would type it.
pub fn command_line(a: &[OsString]) -> String {
    let mut s = String::from("standin");
    for x in a {
        s.push(' ');
        s.push_str(&quote(x));
    }
    s
}

/// stdout and stderr of a finished command, for a failure report.
pub fn output_text(o: &Output) -> String {
    let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
    let e = String::from_utf8_lossy(&o.stderr);
    if !e.trim().is_empty() {
        t.push_str("--- stderr ---\n");
        t.push_str(&e);
    }
    t
}

impl Runner {
    fn command(&self, a: &[OsString]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(a).env_remove("STANDIN_LOG").stdin(Stdio::null());
        c
    }

    /// Print `$ standin ...` and run it; its output is returned, not shown.
    pub fn run(&self, a: &[OsString]) -> Result<Output> {
        println!("  $ {}", command_line(a));
        self.quiet(a)
    }

    /// Run without printing the command line (polling loops).
    pub fn quiet(&self, a: &[OsString]) -> Result<Output> {
        self.command(a)
            .output()
            .with_context(|| format!("running {}", command_line(a)))
    }

    /// Print and run; fail with the command's output unless it exits 0.
    pub fn run_ok(&self, a: &[OsString]) -> Result<Output> {
        let o = self.run(a)?;
        check(a, &o)?;
        Ok(o)
    }

    /// Print `$ standin ... &` and start it in the background; its stdout
    /// and stderr go to `logs/NAME.log`.
    pub fn spawn(&self, name: &str, a: &[OsString]) -> Result<Background> {
        println!("  $ {} &", command_line(a));
        let log = self.logs.join(format!("{name}.log"));
        let f =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = self
            .command(a)
            .env("STANDIN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(f.try_clone().context("duplicating a log file")?)
            .spawn()
            .with_context(|| format!("starting {}", command_line(a)))?;
        Ok(Background {
            child: Some(child),
            name: name.to_string(),
            log,
            log_file: Some(f),
        })
    }
}

/// Fail with the command line and its output unless it exited 0.
pub fn check(a: &[OsString], o: &Output) -> Result<()> {
    if !o.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            command_line(a),
            o.status,
            output_text(o)
        );
    }
    Ok(())
}

/// A background command, killed (and reaped) when dropped.
pub struct Background {
    child: Option<Child>,
    name: String,
    /// Its output.
    pub log: PathBuf,
    log_file: Option<std::fs::File>,
}

impl Background {
    /// Read stdout lines until `pred` picks one; the rest of stdout goes to
    /// the log from then on.
    pub fn first_line_where(&mut self, pred: impl Fn(&str) -> bool) -> Result<String> {
        let child = self.child.as_mut().context("the command was stopped")?;
        let out = child.stdout.take().context("stdout is not piped")?;
        let mut r = BufReader::new(out);
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!(
                    "{} ended before it printed what was expected:\n{}{}",
                    self.name,
                    seen,
                    self.log_text()
                );
            }
            seen.push_str(&line);
            if pred(line.trim_end()) {
                let mut f = self.log_file.take().context("log already in use")?;
                std::thread::spawn(move || {
                    let mut rest = r;
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = rest.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let _ = std::io::Write::write_all(&mut f, &buf[..n]);
                    }
                });
                return Ok(line.trim_end().to_string());
            }
        }
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id (for the `kill -9` line).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// A path as a command-line argument.
pub fn p(x: &Path) -> OsString {
    x.as_os_str().to_os_string()
}

/// The hostname in the tree at `root` (`etc/hostname`).
pub fn hostname(root: &Path) -> Result<String> {
    let f = root.join("etc/hostname");
    Ok(std::fs::read_to_string(&f)
        .with_context(|| format!("reading {}", f.display()))?
        .trim()
        .to_string())
}

/// Print a command's output indented under its command line.
pub fn indent(text: &str) {
    for line in text.lines() {
        println!("     {line}");
    }
}

/// Append `data` to the file `f` (which must exist).
pub fn append(f: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(f)
        .and_then(|mut h| h.write_all(data))
        .with_context(|| format!("appending to {}", f.display()))
}

/// Start `standin target serve` on a loopback port chosen by the system
/// (as `name`, for its log), with `extra` arguments after the common ones;
/// returns it and the address it listens on.
pub fn serve_target(
    r: &Runner,
    name: &str,
    state: &Path,
    identity: &Path,
    trust: &str,
    target_root: &Path,
    extra: &[&str],
) -> Result<(Background, String)> {
    let mut a = args([
        "target".into(),
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--state-dir".into(),
        p(state),
        "--identity".into(),
        p(identity),
        "--trust".into(),
        OsString::from(trust),
        "--target-root".into(),
        p(target_root),
    ]);
    a.extend(extra.iter().map(OsString::from));
    let mut daemon = r.spawn(name, &a)?;
    let line = daemon.first_line_where(|l| l.starts_with("listening on "))?;
    let addr = line.trim_start_matches("listening on ").to_string();
    Ok((daemon, addr))
}
