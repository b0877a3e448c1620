//! The `standin` command line: parse, dispatch to one library call, print.

mod cli;
mod demo;

fn main() -> std::process::ExitCode {
    // rayon's pool threads would otherwise carry the name of whichever
    // thread first used the pool (`top -H`, `perf`, a debugger).
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("standin-pool-{i}"))
        .build_global();
    cli::main()
}
