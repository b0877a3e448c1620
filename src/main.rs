//! The `standin` command line: parse, dispatch to one library call, print.

mod cli;
mod demo;

fn main() -> std::process::ExitCode {
    cli::main()
}
