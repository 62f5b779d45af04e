//! `taskfleet delivery …`: the relay's deliveries over the API.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;

/// Flags shared by every `delivery` subcommand.
#[derive(Debug, Args)]
pub struct DeliveryArgs {
    #[command(flatten)]
    flags: super::api_flags::ApiFlags,
    #[command(subcommand)]
    cmd: DeliveryCmd,
}

#[derive(Debug, Subcommand)]
enum DeliveryCmd {
    /// Deliveries, newest first (`--status dead` lists dead letters).
    List {
        /// pending, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        /// Destination name or key.
        #[arg(long)]
        destination: Option<String>,
        /// Only the deliveries of this task.
        #[arg(long)]
        task: Option<String>,
        /// Deliveries per page (the API's default when not given).
        #[arg(long)]
        limit: Option<usize>,
        /// The page after the one that printed this cursor.
        #[arg(long)]
        before: Option<String>,
    },
    /// One delivery with every attempt.
    Get { id: String },
    /// Queue one delivery again.
    Replay { id: String },
    /// Queue every dead delivery of a destination again, optionally since a time (RFC 3339);
    /// at most 1,000 a call (`"more": true` says to run it again).
    ReplayDestination {
        destination: String,
        #[arg(long)]
        since: Option<String>,
    },
    /// The destinations: configured ones and every one a 410 Gone disabled (why, since when).
    Destinations,
    /// Deliver to a destination a 410 Gone disabled again (without replaying anything).
    Enable { destination: String },
}

/// A request of one subcommand: method, path, body and query.
type Request = (Method, String, Option<Value>, Vec<(&'static str, String)>);

/// The API request `cmd` makes.
fn request(cmd: &DeliveryCmd) -> Request {
    match cmd {
        DeliveryCmd::List {
            status,
            destination,
            task,
            limit,
            before,
        } => {
            let q = [
                ("status", status.clone()),
                ("destination", destination.clone()),
                ("task_id", task.clone()),
                ("limit", limit.map(|l| l.to_string())),
                ("before", before.clone()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            (Method::GET, "/api/deliveries".into(), None, q)
        }
        DeliveryCmd::Get { id } => (Method::GET, format!("/api/deliveries/{id}"), None, vec![]),
        DeliveryCmd::Replay { id } => (
            Method::POST,
            format!("/api/deliveries/{id}/replay"),
            None,
            vec![],
        ),
        DeliveryCmd::ReplayDestination { destination, since } => (
            Method::POST,
            format!("/api/destinations/{destination}/replay"),
            Some(serde_json::json!({ "since": since })),
            vec![],
        ),
        DeliveryCmd::Destinations => (Method::GET, "/api/destinations".into(), None, vec![]),
        DeliveryCmd::Enable { destination } => (
            Method::POST,
            format!("/api/destinations/{destination}/enable"),
            None,
            vec![],
        ),
    }
}

/// Runs one `delivery` subcommand.
pub(super) async fn run(args: DeliveryArgs) -> ExitCode {
    let client = args.flags.client(None);
    let (method, path, body, query) = request(&args.cmd);
    let mut req = client.request(method, &path).query(&query);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(source) => {
            let url = client.base().to_string();
            let e = crate::client::ClientError::Unreachable { url, source };
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = resp.status();
    let next = resp.headers().get("x-next-cursor").cloned();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = value["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        eprintln!("error: {msg} (HTTP {})", status.as_u16());
        return ExitCode::FAILURE;
    }
    let records = matches!(args.cmd, DeliveryCmd::List { .. });
    if args.flags.json || !records {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print_records(&value);
    }
    if let Some(cursor) = next.as_ref().and_then(|v| v.to_str().ok()) {
        eprintln!("more: add --before {cursor} for the next page");
    }
    ExitCode::SUCCESS
}

/// One line per delivery record of a listing, under a heading.
fn print_records(value: &Value) {
    let records = value.as_array().map_or(&[][..], Vec::as_slice);
    if records.is_empty() {
        println!("(no deliveries)");
        return;
    }
    println!(
        "{:<26}  {:<9} {:<20} {:<8}  reason",
        "id", "status", "destination", "attempts"
    );
    for r in records {
        println!(
            "{:<26}  {:<9} {:<20} {:<8}  {}",
            r["job"]["id"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["job"]["name"]
                .as_str()
                .or(r["job"]["key"].as_str())
                .unwrap_or(""),
            r["attempts"].as_array().map_or(0, Vec::len),
            r["reason"].as_str().unwrap_or("")
        );
    }
}
