//! The demo's steps, in order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::run::{
    append, args, check, hostname, indent, output_text, p, serve_target, sha256_file, Runner,
};
use super::{trees, wait_for, DemoOptions, Steps};

/// Seconds of heartbeat silence after which the demo's target says the
/// failover condition is met (35 by default; short here so the demo is quick).
const SILENCE: &str = "5";

/// The work dir: `--dir` (must not hold a demo) or a fresh temp dir.
pub fn work_dir(opts: &DemoOptions) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "{} is not empty; remove it or pick another --dir",
                    d.display()
                );
            }
            Ok((d.clone(), None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("standin-demo-")
                .tempdir()
                .context("creating a temp dir")?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// Paths of the demo, all under the work dir.
struct Paths {
    base: PathBuf,
    source: PathBuf,
    target: PathBuf,
    state: PathBuf,
    agent: PathBuf,
    keys_source: PathBuf,
    keys_target: PathBuf,
    data: &'static str,
}

impl Paths {
    fn new(base: &Path) -> Paths {
        let target = base.join("target-root");
        Paths {
            base: base.to_path_buf(),
            source: base.join("source-root"),
            state: target.join("var/lib/standin"),
            target,
            agent: base.join("agent-state"),
            keys_source: base.join("keys/source"),
            keys_target: base.join("keys/target"),
            data: "srv/data/data.txt",
        }
    }
    fn replica(&self) -> PathBuf {
        self.state.join("staging/demo-source/root")
    }
}

fn status_json(r: &Runner, paths: &Paths) -> Result<serde_json::Value> {
    let a = args([
        p(Path::new("status")),
        "--json".into(),
        "--heartbeat-silence".into(),
        SILENCE.into(),
        "--state-dir".into(),
        p(&paths.state),
    ]);
    let o = r.quiet(&a)?;
    check(&a, &o)?;
    serde_json::from_slice(&o.stdout).context("reading the JSON of `standin status`")
}

fn show_status(r: &Runner, paths: &Paths) -> Result<()> {
    let o = r.run_ok(&args([
        p(Path::new("status")),
        "--heartbeat-silence".into(),
        SILENCE.into(),
        "--state-dir".into(),
        p(&paths.state),
    ]))?;
    indent(&String::from_utf8_lossy(&o.stdout));
    Ok(())
}

fn keys_init(r: &Runner, dir: &Path) -> Result<String> {
    let o = r.run_ok(&args([
        "keys".into(),
        "init".into(),
        "--dir".into(),
        p(dir),
    ]))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let fpr = text
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .with_context(|| format!("`standin keys init` printed no fingerprint:\n{text}"))?;
    Ok(fpr.to_string())
}

/// Everything, step by step; the first failed check ends it with an error.
pub fn story(opts: &DemoOptions, base: &Path, steps: &mut Steps) -> Result<()> {
    let paths = Paths::new(base);
    let logs = base.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let r = Runner {
        exe: std::env::current_exe().context("finding this program")?,
        logs,
    };
    println!("standin demo: a source server is protected onto a standby, dies, and the");
    println!("standby takes over as the source; then it goes back to being a standby.");
    println!("Everything happens in {} (nothing on this", base.display());
    println!("machine changes); each `$ standin ...` line is a command you could type.");

    // 1. The source.
    steps.begin(
        1,
        "build the source server",
        "A tiny busybox server (hostname demo-source) with a data file, built from\n\
         the recipe images/demo-source.toml (built into this binary).",
    );
    let recipes = base.join("recipes");
    let recipe = trees::build(&recipes, "demo-source", "demo-source", &paths.source)?;
    trees::boot_loader(&paths.source, "source's")?;
    let digest0 = sha256_file(&paths.source.join(paths.data))?;
    println!(
        "  (the recipe {} built into {})",
        recipe.display(),
        paths.source.display()
    );
    steps.end(
        "passed",
        &format!(
            "source root {} with /{} (sha256 {}…)",
            paths.source.display(),
            paths.data,
            &digest0[..12]
        ),
    );

    // 2. Identities and the target's own system.
    steps.begin(
        2,
        "identities and the standby's own system",
        "Each side gets a TLS identity; the link is pinned by fingerprint (no CA).\n\
         The standby runs its own small system (hostname demo-target) in a target\n\
         root; its standin state dir lives inside it, at var/lib/standin, so the\n\
         failover is a few renames on one filesystem.",
    );
    let fpr_source = keys_init(&r, &paths.keys_source)?;
    let fpr_target = keys_init(&r, &paths.keys_target)?;
    trees::build(&recipes, "demo-target", "demo-target", &paths.target)?;
    std::fs::write(paths.target.join(paths.data), "the standby's own data\n")
        .context("writing the target's data file")?;
    trees::boot_loader(&paths.target, "standby's")?;
    std::fs::create_dir_all(&paths.state)
        .with_context(|| format!("creating {}", paths.state.display()))?;
    // Files older than the capture's start margin (see docs/protect.md).
    std::thread::sleep(Duration::from_millis(1500));
    steps.end(
        "passed",
        &format!(
            "source {}…, target {}…; target root {} (hostname {})",
            &fpr_source[..19],
            &fpr_target[..19],
            paths.target.display(),
            hostname(&paths.target)?
        ),
    );

    // 3. The target daemon.
    steps.begin(
        3,
        "start the target daemon",
        &format!(
            "On the standby, `standin target serve` receives the replica into its\n\
             staging area and watches the source's heartbeats: after {SILENCE} s of silence\n\
             (35 s by default) the failover condition is met."
        ),
    );
    let (mut daemon, addr) = serve_target(
        &r,
        "target-serve",
        &paths.state,
        &paths.keys_target,
        &fpr_source,
        &paths.target,
        &["--failover-after", SILENCE, "--snapshot-every", "0"],
    )?;
    steps.end("passed", &format!("listening on {addr} (loopback only)"));

    // 4. Validate.
    steps.begin(
        4,
        "validate: can the standby stand in?",
        "The source's profile (OS, boot mode, volumes, network) is compared with\n\
         the running target's. Errors would stop protection; warnings are advice.",
    );
    let profile_file = base.join("source-profile.json");
    let a = args([
        "profile".into(),
        "--json".into(),
        "--root".into(),
        p(&paths.source),
    ]);
    println!(
        "  $ {} > {}",
        super::run::command_line(&a),
        profile_file.display()
    );
    let o = r.quiet(&a)?;
    check(&a, &o)?;
    std::fs::write(&profile_file, &o.stdout)
        .with_context(|| format!("writing {}", profile_file.display()))?;
    let va = args([
        "validate".into(),
        "--source".into(),
        p(&profile_file),
        "--target".into(),
        OsString::from(&addr),
        "--identity".into(),
        p(&paths.keys_source),
        "--trust".into(),
        OsString::from(&fpr_target),
    ]);
    let o = r.run(&va)?;
    indent(&String::from_utf8_lossy(&o.stdout));
    match o.status.code() {
        Some(0) => {}
        Some(3) => bail!("validation found errors (exit 3); see the findings above"),
        _ if o.stdout.is_empty() => bail!("`standin validate` failed:\n{}", output_text(&o)),
        _ => check(&va, &o)?,
    }
    if String::from_utf8_lossy(&o.stdout).contains("warning") {
        println!("  (warnings are advice and do not stop protection; here source and target");
        println!("  share this machine's disk, so the capacity numbers are this machine's)");
    }
    steps.end(
        "passed",
        "no errors: the target can stand in for the source",
    );

    // 5. Protect.
    steps.begin(
        5,
        "protect: mirror, then replicate continuously",
        "On the source, `standin protect` validates again, mirrors the whole tree to\n\
         the target, then sends every change as it happens, with heartbeats.",
    );
    let mut agent = r.spawn(
        "protect",
        &args([
            "protect".into(),
            "--target".into(),
            OsString::from(&addr),
            "--identity".into(),
            p(&paths.keys_source),
            "--trust".into(),
            OsString::from(&fpr_target),
            "--root".into(),
            p(&paths.source),
            "--state-dir".into(),
            p(&paths.agent),
            "--source-id".into(),
            "demo-source".into(),
        ]),
    )?;
    println!("  waiting for `standin status` to say Protected …");
    let protected = wait_for(Duration::from_secs(120), || {
        if !agent.running() {
            bail!("standin protect ended early:\n{}", agent.log_text());
        }
        Ok((status_json(&r, &paths)?["state"] == "protected").then_some(()))
    })?;
    if protected.is_none() {
        bail!(
            "not Protected after 120 s; protect said:\n{}\ntarget said:\n{}",
            agent.log_text(),
            daemon.log_text()
        );
    }
    show_status(&r, &paths)?;
    steps.end(
        "passed",
        "Protected: the staging area holds the whole source",
    );

    // 6. Change data.
    steps.begin(
        6,
        "change data on the source",
        "The source keeps working: append to its data file and create a new file.\n\
         Change capture sees both and sends them within a moment.",
    );
    let src_data = paths.source.join(paths.data);
    let note = format!(
        "order 1042 written at {:?}\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    );
    println!("  $ echo 'order 1042 …' >> {}", src_data.display());
    append(&src_data, note.as_bytes())?;
    let new_file = "srv/data/orders-today.txt";
    println!(
        "  $ echo 'order 1042' > {}",
        paths.source.join(new_file).display()
    );
    std::fs::write(paths.source.join(new_file), "order 1042\n")
        .with_context(|| format!("writing {new_file}"))?;
    let want = sha256_file(&src_data)?;
    let replica = paths.replica();
    let t = Instant::now();
    let arrived = wait_for(Duration::from_secs(60), || {
        if !agent.running() {
            bail!("standin protect ended early:\n{}", agent.log_text());
        }
        let got = sha256_file(&replica.join(paths.data)).ok();
        Ok(
            (got.as_deref() == Some(want.as_str()) && replica.join(new_file).is_file())
                .then_some(()),
        )
    })?;
    if arrived.is_none() {
        bail!(
            "the change did not reach the replica within 60 s; protect said:\n{}",
            agent.log_text()
        );
    }
    let st = status_json(&r, &paths)?;
    println!(
        "  the replica {} has it after {:.1} s: sha256 {} (same as the source)",
        replica.join(paths.data).display(),
        t.elapsed().as_secs_f64(),
        &want[..16]
    );
    show_status(&r, &paths)?;
    steps.end(
        "passed",
        &format!(
            "replicated in {:.1} s, last sequence {}",
            t.elapsed().as_secs_f64(),
            st["last_applied_seq"]
        ),
    );

    // 7. The source dies.
    steps.begin(
        7,
        "the source dies",
        &format!(
            "kill -9 the protect agent: no goodbye, no more heartbeats. After {SILENCE} s of\n\
             silence the target declares the failover condition (it could also run a\n\
             hook, or fail over by itself with --auto-failover-after)."
        ),
    );
    println!("  $ kill -9 {}   # the protect agent", agent.pid());
    let died = Instant::now();
    agent.kill();
    let met = wait_for(Duration::from_secs(60), || {
        let s = status_json(&r, &paths)?;
        Ok(s["reason"]
            .as_str()
            .is_some_and(|x| x.contains("failover condition met"))
            .then_some(()))
    })?;
    if met.is_none() {
        bail!(
            "the failover condition was not met within 60 s; target said:\n{}",
            daemon.log_text()
        );
    }
    show_status(&r, &paths)?;
    steps.end(
        "passed",
        &format!(
            "failover condition met {:.1} s after the kill ({SILENCE} s without a heartbeat)",
            died.elapsed().as_secs_f64()
        ),
    );

    // 8. Fail over.
    steps.begin(
        8,
        "fail over",
        "The staged copy of the source moves into the target root by renames; the\n\
         standby's own system is set aside in rollback/. Its kernel, /boot, fstab\n\
         and standin state stay. --no-reboot because this is a directory, not a\n\
         running machine; a real failover reboots into the source's system.",
    );
    let fo = r.run_ok(&args([
        "failover".into(),
        "--state-dir".into(),
        p(&paths.state),
        "--target-root".into(),
        p(&paths.target),
        "--heartbeat-silence".into(),
        SILENCE.into(),
        "--no-reboot".into(),
        "--yes".into(),
    ]))?;
    indent(&String::from_utf8_lossy(&fo.stdout));
    let host = hostname(&paths.target)?;
    let got = sha256_file(&paths.target.join(paths.data))?;
    println!("  hostname in the target root: {host}");
    println!("  sha256 of /{} there:  {got}", paths.data);
    println!("  sha256 of the source's:      {want}");
    if host != "demo-source" {
        bail!("after failover the target root's hostname is {host:?}, not demo-source");
    }
    if got != want {
        bail!("after failover the data file differs from the source's");
    }
    if !paths.target.join(new_file).is_file() {
        bail!("after failover /{new_file} is missing");
    }
    steps.end(
        "passed",
        "the target root is now demo-source, with the source's latest data",
    );

    // 9. Boot.
    steps.begin(
        9,
        "boot the failed-over system",
        "The target root goes onto a disk image and boots in qemu; its init prints\n\
         the hostname and the data file's digest on the serial console.",
    );
    boot_step(opts, &r, &paths, &want, steps)?;

    // 10. Reverse protection, failback, rollback.
    super::failback::step(
        &r,
        &super::failback::Sides {
            old_source: &paths.source,
            standby: &paths.target,
            standby_state: &paths.state,
            keys_source: &paths.keys_source,
            keys_target: &paths.keys_target,
            fpr_source: &fpr_source,
            fpr_target: &fpr_target,
            source_id: "demo-source",
        },
        &mut daemon,
        steps,
    )
}

/// Disk and boot of the failed-over root, when qemu and a kernel are here.
fn boot_step(
    opts: &DemoOptions,
    r: &Runner,
    paths: &Paths,
    want: &str,
    steps: &mut Steps,
) -> Result<()> {
    if opts.no_boot {
        steps.end("skipped", "skipped (--no-boot)");
        return Ok(());
    }
    if which("qemu-system-x86_64").is_none() || !has_kernel() {
        println!("  install qemu to see the failed-over system boot:");
        println!("    apt-get install qemu-system-x86 linux-image-amd64");
        steps.end(
            "skipped",
            "skipped: qemu-system-x86_64 or /boot/vmlinuz-* missing",
        );
        return Ok(());
    }
    let disk = paths.base.join("demo.img");
    let o = r.run_ok(&args([
        "image".into(),
        "disk".into(),
        "--root".into(),
        p(&paths.target),
        "-o".into(),
        p(&disk),
        "--progress".into(),
        "none".into(),
    ]))?;
    let _ = o;
    println!("  (a GPT disk with the target's kernel and the failed-over root)");
    let o = r.run_ok(&args([
        "image".into(),
        "boot".into(),
        p(&disk),
        "--expect".into(),
        "STANDIN-BOOTED".into(),
        "--timeout".into(),
        "600".into(),
    ]))?;
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("STANDIN-BOOTED"))
        .unwrap_or("")
        .trim()
        .to_string();
    println!("  console: {line}");
    println!("  the source's data file has sha256 {want}:");
    println!("  the standby came up as the source, with the source's latest data.");
    let expect = format!("data={want}");
    if !line.contains("host=demo-source") || !line.contains(&expect) {
        bail!("the console line does not show host=demo-source {expect}:\n{out}");
    }
    std::fs::remove_file(&disk).ok();
    steps.end(
        "passed",
        "booted as demo-source with the source's data digest",
    );
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

fn has_kernel() -> bool {
    std::fs::read_dir("/boot")
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false)
}
