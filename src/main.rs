//! The `mpolice` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mpolice::cli::Cli::parse();
    match mpolice::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the problem; the chain of causes joined, not a backtrace.
            eprintln!("mpolice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
