//! `taskfleet workers`: the worker registry over the API.

use clap::Args;
use std::process::ExitCode;

/// Flags of `taskfleet workers`.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    flags: super::api_flags::ApiFlags,
    /// Only this assignee's workers.
    #[arg(short, long)]
    assignee: Option<String>,
}

/// Lists the workers and relays alive now: one line each, or JSON with `--json`.
pub(super) async fn run(args: WorkersArgs) -> ExitCode {
    let client = args.flags.client(None);
    let query: Vec<(&str, String)> = args.assignee.map(|a| ("assignee", a)).into_iter().collect();
    let workers = match client.workers(&query).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.flags.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&workers).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if workers.is_empty() {
        println!("(no workers or relays alive)");
        return ExitCode::SUCCESS;
    }
    let now = chrono::Utc::now();
    println!(
        "{:<7} {:<14} {:<36} {:<20} {:>7} {:>5}  version",
        "kind", "assignee", "id", "host", "running", "seen"
    );
    for w in workers {
        let seen = (now - w.last_seen).num_seconds().max(0);
        println!(
            "{:<7} {:<14} {:<36} {:<20} {:>3}/{:<3} {:>4}s  {}",
            w.kind,
            w.assignee.as_deref().unwrap_or("-"),
            w.id,
            w.host,
            w.running.len(),
            w.concurrency,
            seen,
            w.version
        );
    }
    ExitCode::SUCCESS
}
