//! The `taskfleet` binary: parse, then hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = taskfleet::cli::parse();
    taskfleet::cli::run(cli).await
}
