//! The `taskfleet` binary: parse, then hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = taskfleet::cli::Cli::parse();
    taskfleet::cli::run(cli).await
}
