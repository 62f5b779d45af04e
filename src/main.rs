//! The `taskfleet` binary: parse, then hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// mimalloc rather than glibc's allocator: the worker at concurrency 64 and the relay spend a
/// tenth or more of their time in `malloc`/`free` (docs/benchmarks.md, "mimalloc"). Its arena is
/// committed on demand (`.cargo/config.toml`), which keeps an idle worker as small as before.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = taskfleet::cli::parse();
    if cli.prints_and_exits() {
        // `taskfleet task list | head -1` ends quietly instead of panicking on the closed pipe.
        taskfleet::sys::default_sigpipe();
    }
    // A worker spends its time waiting on NATS and its tasks' processes: one thread answers a
    // pushed task without waking another (idle dispatch p50 1.0 → 0.85 ms, docs/benchmarks.md).
    let mut runtime = if cli.one_thread() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(taskfleet::cli::run(cli)),
        Err(e) => {
            eprintln!("taskfleet: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
