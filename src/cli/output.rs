//! Shared output helpers: exit codes, error printing, logging set-up.

use std::process::ExitCode;

/// Exit codes every command uses (the user's contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything worked.
    Ok,
    /// 1: the command failed.
    Failed,
    /// 2: the command line was wrong (clap uses 2 as well).
    #[allow(dead_code)]
    Usage,
    /// 3: validation found errors.
    #[allow(dead_code)]
    ValidationErrors,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(match e {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::ValidationErrors => 3,
        })
    }
}

/// Print an error chain as `error: outer: inner: root cause`.
pub fn print_error(err: &anyhow::Error) {
    let mut msg = String::from("error: ");
    let mut first = true;
    for cause in err.chain() {
        if !first {
            msg.push_str(": ");
        }
        first = false;
        msg.push_str(&cause.to_string());
    }
    eprintln!("{msg}");
}

pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn,standin=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("STANDIN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: piped logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
