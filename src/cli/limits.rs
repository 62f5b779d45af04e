//! `taskfleet limits`: flow control over the API — list the keys in use with their limits,
//! holders and waiting tasks; set or remove a key's override.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::process::ExitCode;

/// Flags of `taskfleet limits`.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    #[command(flatten)]
    flags: super::api_flags::ApiFlags,
    #[command(subcommand)]
    cmd: Option<LimitsCmd>,
    /// Only this assignee (listing).
    #[arg(long, short = 'a')]
    assignee: Option<String>,
}

/// What to do (nothing: list).
#[derive(Debug, Subcommand)]
enum LimitsCmd {
    /// Set a key's override: `limits set anna repo:acme/web --concurrency 1`.
    Set {
        /// Whose tasks.
        #[arg(value_name = "ASSIGNEE")]
        of: String,
        /// The key (a concurrency key, rate key or both).
        #[arg(value_name = "KEY")]
        limit_key: String,
        /// Tasks with the key running at once.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Starts per period, e.g. 20/min, 10/s, 100/h.
        #[arg(long)]
        rate: Option<String>,
        /// Starts allowed at once after a quiet spell (default 1).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Remove a key's override (the config's patterns apply again).
    Rm {
        /// Whose tasks.
        #[arg(value_name = "ASSIGNEE")]
        of: String,
        /// The key.
        #[arg(value_name = "KEY")]
        limit_key: String,
    },
}

/// Runs `taskfleet limits …`.
pub(super) async fn run(args: LimitsArgs) -> ExitCode {
    let client = args.flags.client(None);
    let answer = match &args.cmd {
        None => {
            let query: Vec<(&str, String)> = args
                .assignee
                .clone()
                .map(|a| ("assignee", a))
                .into_iter()
                .collect();
            client.limits(&query).await
        }
        Some(LimitsCmd::Set {
            of,
            limit_key,
            concurrency,
            rate,
            burst,
        }) => {
            let mut body = json!({});
            for (field, v) in [
                ("concurrency", concurrency.map(Value::from)),
                ("rate", rate.clone().map(Value::from)),
                ("burst", burst.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[field] = v;
                }
            }
            client.set_limit(of, limit_key, Some(&body)).await
        }
        Some(LimitsCmd::Rm { of, limit_key }) => client.set_limit(of, limit_key, None).await,
    };
    let view = match answer {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.flags.json || args.cmd.is_some() {
        if !view.is_null() {
            println!(
                "{}",
                serde_json::to_string_pretty(&view).unwrap_or_default()
            );
        }
        return ExitCode::SUCCESS;
    }
    print_table(&view);
    ExitCode::SUCCESS
}

/// One line per key in use: assignee, kind, key, limit, running, waiting.
fn print_table(view: &Value) {
    let keys = view["keys"].as_array().map_or(&[][..], Vec::as_slice);
    if keys.is_empty() {
        println!("(no keys in use)");
        return;
    }
    println!(
        "{:<14} {:<12} {:<32} {:>10} {:>8} {:>8}  note",
        "assignee", "kind", "key", "limit", "running", "waiting"
    );
    for k in keys {
        let limit = match (&k["limit"], &k["rate"]) {
            (Value::Number(n), _) => n.to_string(),
            (_, Value::String(r)) => r.clone(),
            _ => "-".into(),
        };
        let note = match k["next_slot_in_s"].as_f64() {
            Some(s) if s > 0.0 => format!("next slot in {s:.1} s"),
            _ => String::new(),
        };
        println!(
            "{:<14} {:<12} {:<32} {:>10} {:>8} {:>8}  {note}",
            k["assignee"].as_str().unwrap_or("-"),
            k["kind"].as_str().unwrap_or("-"),
            k["key"].as_str().unwrap_or(""),
            limit,
            k["running"].as_array().map_or(0, Vec::len),
            k["waiting"].as_u64().unwrap_or(0),
        );
    }
}
