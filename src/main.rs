//! The `standin` command line: parse, dispatch to one library call, print.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
