//! The demo's last step: reverse protection, failback, and the standby
//! rolling back to its own system.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::run::{
    append, args, hostname, indent, p, serve_target, sha256_file, Background, Runner,
};
use super::Steps;

/// Where the two machines of the demo live.
pub(crate) struct Sides<'a> {
    /// The old source's root (it comes back and becomes the target).
    pub old_source: &'a Path,
    /// The standby's root, now running the source's system.
    pub standby: &'a Path,
    pub standby_state: &'a Path,
    pub keys_source: &'a Path,
    pub keys_target: &'a Path,
    pub fpr_source: &'a str,
    pub fpr_target: &'a str,
    pub source_id: &'a str,
}

const NEW_FILE: &str = "srv/data/orders-while-failed-over.txt";
const TODAY: &str = "srv/data/orders-today.txt";

/// Step 10: the standby (now the source) protects back to the repaired old
/// source, the old source fails over (the failback), the standby rolls back.
pub(crate) fn step(
    r: &Runner,
    s: &Sides,
    standby_daemon: &mut Background,
    steps: &mut Steps,
) -> Result<()> {
    steps.begin(
        10,
        "fail back and roll back",
        "The old source is repaired and comes back. Now the roles turn around: the\n\
         failed-over standby is the source, the old source becomes its target. The\n\
         old source's staging area starts as a copy of its own system (hard links or\n\
         reflinks: nothing travels for it), so the standby sends only what changed\n\
         since the failover. A failover on the old source is the failback; then the\n\
         standby rolls back to its own system and is a standby again.",
    );
    standby_daemon.kill();
    println!("  (the standby's target daemon stopped: it is the source now)");

    // Work done on the standby while it stood in.
    let note = "order 2001, taken while the standby stood in\n";
    println!(
        "  $ echo 'order 2001 …' > {}",
        s.standby.join(NEW_FILE).display()
    );
    std::fs::write(s.standby.join(NEW_FILE), note)
        .with_context(|| format!("writing {NEW_FILE} on the standby"))?;
    println!(
        "  $ echo 'order 2002' >> {}",
        s.standby.join(TODAY).display()
    );
    append(&s.standby.join(TODAY), b"order 2002\n")?;
    let changed = (note.len() + "order 2002\n".len()) as u64;
    let want_new = sha256_file(&s.standby.join(NEW_FILE))?;
    let want_today = sha256_file(&s.standby.join(TODAY))?;

    // The old source: seed, then serve.
    let state = s.old_source.join("var/lib/standin");
    println!("  On the old source: start the staging area from its own system.");
    let o = r.run_ok(&args([
        "target".into(),
        "seed".into(),
        "--state-dir".into(),
        p(&state),
        "--source-id".into(),
        s.source_id.into(),
        "--from-root".into(),
        p(s.old_source),
    ]))?;
    indent(&String::from_utf8_lossy(&o.stdout));
    let (mut daemon, addr) = serve_target(
        r,
        "target-serve-old-source",
        &state,
        s.keys_source,
        s.fpr_target,
        s.old_source,
        &["--snapshot-every", "0"],
    )?;
    println!("  (the old source listens on {addr})");

    // The standby protects back (a real one would keep replicating; --once here).
    println!("  On the standby: protect back to the old source (a difference mirror).");
    println!("  (--exclude keeps the standby's own state out; with --root / that is automatic)");
    let a = args([
        "protect".into(),
        "--target".into(),
        OsString::from(&addr),
        "--identity".into(),
        p(s.keys_target),
        "--trust".into(),
        OsString::from(s.fpr_source),
        "--root".into(),
        p(s.standby),
        "--source-id".into(),
        s.source_id.into(),
        "--exclude".into(),
        "/var/lib/standin/**".into(),
        "--once".into(),
        "--json".into(),
        "--progress".into(),
        "none".into(),
    ]);
    let o = r.run_ok(&a)?;
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).context("reading the JSON of `standin protect`")?;
    let m = &v["mirror"];
    let sent =
        m["bytes_sent"].as_u64().unwrap_or(0) + m["compare_bytes_sent"].as_u64().unwrap_or(0);
    println!(
        "     difference mirror: {} entries compared, {} changed, {} deleted, {} bytes of file data,",
        m["entries"], m["changed"], m["deleted"], m["data_bytes"]
    );
    println!(
        "     {sent} bytes sent in all, for a tree of {} bytes: {changed} bytes were written on the",
        m["tree_bytes"]
    );
    println!(
        "     standby after the failover; small files travel whole, the rest is the file list)"
    );
    if m["complete"] != true {
        bail!(
            "the reverse mirror did not complete:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    daemon.kill();

    // The failback.
    println!("  On the old source: fail over (this is the failback).");
    let fo = r.run_ok(&args([
        "failover".into(),
        "--state-dir".into(),
        p(&state),
        "--target-root".into(),
        p(s.old_source),
        "--no-reboot".into(),
    ]))?;
    indent(&String::from_utf8_lossy(&fo.stdout));
    let host = hostname(s.old_source)?;
    println!("  hostname in the old source's root: {host}");
    if host != s.source_id {
        bail!("after the failback the old source's hostname is {host:?}");
    }
    for (f, want) in [(NEW_FILE, &want_new), (TODAY, &want_today)] {
        let got = sha256_file(&s.old_source.join(f))
            .with_context(|| format!("after the failback /{f} is missing"))?;
        println!("  sha256 of /{f} there: {} (as on the standby)", &got[..16]);
        if &got != want {
            bail!("after the failback /{f} differs from the standby's");
        }
    }

    // The standby goes back to being a standby.
    println!("  On the standby: roll back to its own system.");
    let rb = r.run_ok(&args([
        "failover".into(),
        "--rollback".into(),
        "--state-dir".into(),
        p(s.standby_state),
        "--target-root".into(),
        p(s.standby),
    ]))?;
    indent(&String::from_utf8_lossy(&rb.stdout));
    let host = hostname(s.standby)?;
    println!("  hostname in the target root: {host}");
    if host != "demo-target" {
        bail!("after rollback the target root's hostname is {host:?}, not demo-target");
    }
    println!("  To protect the source again: `standin target serve` on the standby and");
    println!("  `standin protect` on the source; the standby's staging area still holds the");
    println!("  replica, so that is a difference mirror too.");
    steps.end(
        "passed",
        &format!(
            "failed back: the old source runs the source's system with the standby's new data ({sent} bytes sent); the standby is demo-target again"
        ),
    );
    Ok(())
}
