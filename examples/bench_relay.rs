//! `make bench-relay`: events per second delivered by the relay to a local webhook receiver,
//! with 1 destination and with 100 destinations. The events are recorded first and the relay is
//! started on that backlog, so the figure is the relay's rate (from its start to the last
//! delivery), not the rate at which the benchmark can record events. Prints figures; asserts
//! nothing.
//!
//! Run: `cargo run --release --example bench_relay -- [--events 3000] [--fanout-events 100]
//! [--log]` (`--log`: the relay logs as `taskfleet relay` does, to stderr, at its default level).

#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskfleet::config::Config;
use taskfleet::domain::{EventKind, NewTask};
use taskfleet::natsd::{LocalNats, LocalNatsOptions};

#[path = "bench/relay_config.rs"]
mod relay_config;

/// The `taskfleet` binary's allocator (src/main.rs), so the relay this process runs in-process
/// is measured as `taskfleet relay` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn receiver(count: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/hook/{n}",
        axum::routing::post(move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// One scenario: `destinations` webhooks all routed every `step` event; `events` events.
async fn scenario(nats_url: &str, destinations: usize, events: usize) -> anyhow::Result<f64> {
    let count = Arc::new(AtomicUsize::new(0));
    let base = receiver(count.clone()).await;
    let mut cfg = Config::default();
    cfg.nats.url = Some(nats_url.to_string());
    let assignee = format!("bench{destinations}");
    let relay = relay_config::fanout_config(&base, destinations, &assignee)?;
    let bus = taskfleet::serve::connect(&cfg, nats_url, "bench").await?;
    let tasks = taskfleet::tasks::TaskService::new(bus.clone(), Default::default());
    let new: NewTask = serde_json::from_value(serde_json::json!({
        "task_name": "bench", "assigned_to": assignee, "kind": "noop"
    }))?;
    let task = tasks.create(new, "bench").await?.task;
    let expected = events * destinations;
    eprintln!(
        "relay: {events} step events × {destinations} destination(s) = {expected} deliveries …"
    );
    let writing = Instant::now();
    for i in 0..events {
        tasks
            .record(
                &task,
                EventKind::Step,
                "bench",
                Some(format!("step {i}")),
                serde_json::json!({}),
            )
            .await;
    }
    eprintln!(
        "  {events} events recorded in {:.2} s; starting the relay on that backlog …",
        writing.elapsed().as_secs_f64()
    );
    // The relay starts on a backlog, so the figure is the relay's own rate, not the rate at
    // which this loop can record events.
    let started = Instant::now();
    let token = tokio_util::sync::CancellationToken::new();
    let relay_task = tokio::spawn(taskfleet::relay::run(bus.clone(), relay, token.clone()));
    while count.load(Ordering::Relaxed) < expected {
        if started.elapsed() > Duration::from_secs(240) {
            eprintln!(
                "gave up waiting: {} of {expected}",
                count.load(Ordering::Relaxed)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    token.cancel();
    let _ = relay_task.await;
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = arg("--events", 3000);
    let fanout_events = arg("--fanout-events", 100);
    let _logs = std::env::args()
        .any(|a| a == "--log")
        .then(|| taskfleet::telemetry::init(&Default::default(), "bench_relay"));
    let dir = tempfile::tempdir()?;
    let conf = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"));
    let nats = LocalNats::start(&LocalNatsOptions::scratch(conf, dir.path())?).await?;
    let one = scenario(&nats.url, 1, events).await?;
    let hundred = scenario(&nats.url, 100, fanout_events).await?;
    nats.stop().await;
    println!("\n## Relay benchmark\n");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| deliveries/s, 1 webhook destination ({events} events) | {one:.0} |");
    println!(
        "| deliveries/s, 100 webhook destinations ({fanout_events} events each) | {hundred:.0} |"
    );
    let mut json = BTreeMap::new();
    json.insert("one_destination_per_s", one);
    json.insert("hundred_destinations_per_s", hundred);
    println!("\n{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
