//! `standin validate`: compare a source with a target and report findings.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use standin_agent::link::LinkConfig;
use standin_validate::{undo_fixes, workflow, Options, Profile, Side};

use super::Exit;

/// Arguments of `standin validate`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  standin profile --json > source.json          # on the source
  standin profile --json > target.json          # on the target
  standin validate --source source.json --target target.json
  standin validate --source source.json --target target.json --json
  standin validate --source source.json --target target.json \\
      --target-state-dir /var/lib/standin --fix-all --dry-run   # show the plan
  standin validate --source source.json --target target.json \\
      --target-state-dir /var/lib/standin --fix-all             # fix, validate again
  standin validate --target-state-dir /var/lib/standin --undo-fixes

  standin validate --source source.json --target 198.18.0.2:6320 \\
      --identity /etc/standin/identity --trust sha256:3f0c… --fix-all   # a running target

Exit codes: 0 no errors, 3 errors found, 1 validation could not run, 2 usage.
--source/--target take a profile file or HOST:PORT of a running
`standin target serve` (then --identity and --trust are needed; --fix-all
on a HOST:PORT target applies the fixes on that target).")]
pub struct Args {
    /// The source: a profile file (HOST:PORT comes with `standin target serve`).
    #[arg(long, value_name = "FILE|ADDR", required_unless_present = "undo_fixes")]
    pub source: Option<String>,
    /// The target: a profile file (HOST:PORT comes with `standin target serve`).
    #[arg(long, value_name = "FILE|ADDR", required_unless_present = "undo_fixes")]
    pub target: Option<String>,
    /// The target's state directory: its configuration (staging path,
    /// services to stop) and rollback area count in validation; fixes go there.
    #[arg(long, value_name = "DIR")]
    pub target_state_dir: Option<PathBuf>,
    /// Apply every automatic fix to the target (its state directory, or the
    /// running target at HOST:PORT), then validate again.
    #[arg(long)]
    pub fix_all: bool,
    /// With --fix-all: print the plan and change nothing.
    #[arg(long, requires = "fix_all")]
    pub dry_run: bool,
    /// Undo every fix --fix-all applied to --target-state-dir.
    #[arg(long, requires = "target_state_dir", conflicts_with_all = ["fix_all", "source", "target"])]
    pub undo_fixes: bool,
    /// Print findings as JSON: {"findings": [{"id", "severity", "message", "details", "fix"}]}.
    #[arg(long)]
    pub json: bool,
    /// This machine's identity directory, for HOST:PORT sides.
    #[arg(long, value_name = "DIR")]
    pub identity: Option<PathBuf>,
    /// Fingerprint of the standin at a HOST:PORT side; repeat for more.
    #[arg(long, value_name = "FPR")]
    pub trust: Vec<standin_link::Fingerprint>,
}

/// The profile of a side; HOST:PORT sides are fetched over the link.
fn load_side(side: &Side, link: &dyn Fn(&str) -> Result<LinkConfig>) -> Result<Profile> {
    match side {
        Side::File(_) => side.load(),
        Side::Addr(a) => {
            let cfg = link(a)?;
            runtime()?.block_on(standin_agent::protect::fetch_profile(&cfg))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn run(args: Args) -> Result<Exit> {
    let state_dir = args.target_state_dir.clone();
    if args.undo_fixes {
        let sd = state_dir.expect("clap requires --target-state-dir");
        let undone = undo_fixes(&sd)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&undone)?);
        } else {
            for r in &undone.restored {
                println!("{r}");
            }
            println!("fixes undone in {}", sd.display());
        }
        return Ok(Exit::Ok);
    }
    let source = Side::parse(args.source.as_deref().expect("clap requires --source"));
    let target = Side::parse(args.target.as_deref().expect("clap requires --target"));
    let link = |addr: &str| -> Result<LinkConfig> {
        let (Some(id), false) = (&args.identity, args.trust.is_empty()) else {
            anyhow::bail!("{addr} is a network address: pass --identity DIR and --trust FPR to reach it (or a profile file from `standin profile --json`)");
        };
        let identity = standin_link::identity::load(id)?;
        Ok(LinkConfig::new(
            addr,
            identity,
            args.trust.clone(),
            &standin_link::default_source_id(),
        ))
    };
    if args.fix_all && state_dir.is_none() && matches!(target, Side::File(_)) {
        eprintln!("error: --fix-all on a profile file needs --target-state-dir DIR: the fixes are written to the target's state directory");
        return Ok(Exit::Usage);
    }
    let outcome = if let Side::Addr(addr) = &target {
        if args.dry_run {
            anyhow::bail!("--dry-run is not available for a HOST:PORT target; run it on the target with --target-state-dir");
        }
        let src = load_side(&source, &link)?;
        let cfg = link(addr)?;
        runtime()?.block_on(standin_agent::protect::validate_against(
            &cfg,
            &src,
            args.fix_all,
            &Options::default(),
        ))?
    } else if matches!(source, Side::Addr(_)) {
        let src = load_side(&source, &link)?;
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let file = dir.path().join("source.json");
        std::fs::write(&file, src.to_json()).context("writing the source profile")?;
        workflow::run(&workflow::Request {
            source: Side::File(file),
            target,
            target_state_dir: state_dir,
            fix_all: args.fix_all,
            dry_run: args.dry_run,
            options: Options::default(),
        })?
    } else {
        workflow::run(&workflow::Request {
            source,
            target,
            target_state_dir: state_dir,
            fix_all: args.fix_all,
            dry_run: args.dry_run,
            options: Options::default(),
        })?
    };

    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.to_json())?);
    } else {
        let c = color();
        if outcome.fixes.is_some() {
            println!("before fixes:");
        }
        print!("{}", outcome.before.render(c));
        if let Some(fixes) = &outcome.fixes {
            println!();
            if fixes.changes.is_empty() {
                println!("no automatic fixes to apply");
            }
            for ch in &fixes.changes {
                let verb = match (outcome.dry_run, ch.changed) {
                    (true, true) => "would change",
                    (false, true) => "changed",
                    (_, false) => "unchanged",
                };
                println!("{verb}: {}", ch.summary);
            }
            if outcome.dry_run {
                println!("dry run: nothing was changed");
            }
        }
        if let Some(after) = &outcome.after {
            println!("\nafter fixes:");
            print!("{}", after.render(c));
        }
    }
    Ok(if outcome.final_report().has_errors() {
        Exit::ValidationErrors
    } else {
        Exit::Ok
    })
}
