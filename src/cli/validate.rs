//! `standin validate`: compare a source with a target and report findings.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use standin_validate::{undo_fixes, workflow, Options, Side};

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

Exit codes: 0 no errors, 3 errors found, 1 validation could not run, 2 usage.
--source/--target take a profile file; HOST:PORT (a running standin) comes
with `standin target serve`.")]
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
    /// Apply every automatic fix to the target state directory, then validate again.
    #[arg(long, requires = "target_state_dir")]
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
    let req = workflow::Request {
        source: Side::parse(args.source.as_deref().expect("clap requires --source")),
        target: Side::parse(args.target.as_deref().expect("clap requires --target")),
        target_state_dir: state_dir,
        fix_all: args.fix_all,
        dry_run: args.dry_run,
        options: Options::default(),
    };
    let outcome = workflow::run(&req)?;
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
