//! `make bench-relay`: events per second delivered by the relay to a local webhook receiver,
//! with 1 destination and with 100 destinations. The events are recorded first and the relay is
//! started on that backlog, so the figure is the relay's rate (from its start to the last
//! delivery), not the rate at which the benchmark can record events. Beside each rate, the CPU
//! time per delivery of this process (the relay and the receiver) and of nats-server over the
//! same span: the figure that says what a rate needs (two cores give 100 µs per delivery at
//! 20,000/s), steadier than the rate when the machine is shared. Prints figures; asserts
//! nothing.
//!
//! Run: `cargo run --release --example bench_relay -- [--events 20000] [--fanout-events 1000]
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

/// CPU time a process has used so far (user + system), from `/proc/<pid>/stat`; zero where
/// that cannot be read (not Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces): utime
    // and stime are the 12th and 13th of them, in ticks of 1/100 s (USER_HZ on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// What one scenario measured.
struct Figures {
    /// Deliveries per second, from the relay's start to the last delivery.
    rate: f64,
    /// CPU per delivery in this process (the relay and the receiver), in µs.
    relay_us: f64,
    /// CPU per delivery in nats-server, in µs.
    nats_us: f64,
}

/// One scenario: `destinations` webhooks all routed every `step` event; `events` events.
/// `nats_pid`: the server's process, whose CPU time is counted beside this one's.
async fn scenario(
    nats_url: &str,
    nats_pid: u32,
    destinations: usize,
    events: usize,
) -> anyhow::Result<Figures> {
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
    let cpu_before = (cpu_time(std::process::id()), cpu_time(nats_pid));
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
    let delivered = count.load(Ordering::Relaxed);
    let rate = delivered as f64 / started.elapsed().as_secs_f64();
    let per_delivery = |before: Duration, pid: u32| {
        (cpu_time(pid).saturating_sub(before)).as_secs_f64() * 1e6 / delivered.max(1) as f64
    };
    let relay_us = per_delivery(cpu_before.0, std::process::id());
    let nats_us = per_delivery(cpu_before.1, nats_pid);
    token.cancel();
    let _ = relay_task.await;
    Ok(Figures {
        rate,
        relay_us,
        nats_us,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A few seconds each, so the relay's start is a small part of the figures.
    let events = arg("--events", 20_000);
    let fanout_events = arg("--fanout-events", 1000);
    let _logs = std::env::args()
        .any(|a| a == "--log")
        .then(|| taskfleet::telemetry::init(&Default::default(), "bench_relay"));
    let dir = tempfile::tempdir()?;
    let conf = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"));
    let nats = LocalNats::start(&LocalNatsOptions::scratch(conf, dir.path())?).await?;
    let one = scenario(&nats.url, nats.pid, 1, events).await?;
    let hundred = scenario(&nats.url, nats.pid, 100, fanout_events).await?;
    nats.stop().await;
    println!("\n## Relay benchmark\n");
    println!("| figure | value |");
    println!("|---|---|");
    for (what, f) in [
        (format!("1 webhook destination ({events} events)"), &one),
        (
            format!("100 webhook destinations ({fanout_events} events each)"),
            &hundred,
        ),
    ] {
        println!("| deliveries/s, {what} | {:.0} |", f.rate);
        println!(
            "| CPU µs per delivery, {what}: relay and receiver / nats-server | {:.1} / {:.1} |",
            f.relay_us, f.nats_us
        );
    }
    let mut json = BTreeMap::new();
    json.insert("one_destination_per_s", one.rate);
    json.insert("hundred_destinations_per_s", hundred.rate);
    json.insert("one_destination_relay_cpu_us", one.relay_us);
    json.insert("one_destination_nats_cpu_us", one.nats_us);
    json.insert("hundred_destinations_relay_cpu_us", hundred.relay_us);
    json.insert("hundred_destinations_nats_cpu_us", hundred.nats_us);
    println!("\n{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
