//! `make bench-workers`: idle dispatch latency (create → started) and trivial-task throughput
//! with 1 and 2 worker processes, against a fresh local nats-server. Prints figures; asserts
//! nothing.
//!
//! Run: `cargo run --release --example bench -- [--tasks 5000] [--samples 300]`
//! (needs the release `taskfleet` binary next to it: `cargo build --release` first).

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskfleet::client::ApiClient;
use taskfleet::config::Config;
use taskfleet::natsd::{LocalNats, LocalNatsOptions};

const KEY: &str = "bench-admin-key-0123456789";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn taskfleet_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("taskfleet")
}

fn spawn_workers(n: usize, nats_url: &str) -> Vec<Child> {
    (0..n)
        .map(|_| {
            Command::new(taskfleet_bin())
                .args(["worker", "--assignee", "bench", "--concurrency", "8"])
                .env("NATS_URL", nats_url)
                .env("RUST_LOG", "warn")
                .env("TASKFLEET_WORKER__IDLE_POLL_MS", "1000")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn taskfleet worker (run `cargo build --release` first)")
        })
        .collect()
}

async fn create(client: &ApiClient, kind: &str) -> String {
    let body = serde_json::json!({"task_name": "bench", "assigned_to": "bench", "kind": kind});
    client
        .create_task(&body)
        .await
        .expect("create")
        .id
        .to_string()
}

async fn wait_done(client: &ApiClient, id: &str) -> taskfleet::domain::Task {
    loop {
        let t = client.get_task(id).await.expect("get");
        if t.status.is_terminal() {
            return t;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tasks = arg("--tasks", 5000);
    let samples = arg("--samples", 300);
    let dir = tempfile::tempdir()?;
    let nats_port = free_port();
    eprintln!(
        "starting nats-server on 127.0.0.1:{nats_port} (store in {}) …",
        dir.path().display()
    );
    let nats = LocalNats::start(&LocalNatsOptions {
        bin: None,
        conf: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf")),
        store_dir: dir.path().join("nats"),
        log_file: dir.path().join("nats.log"),
        port: nats_port,
    })
    .await?;
    let mut cfg = Config::default();
    cfg.nats.url = Some(nats.url.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let token = tokio_util::sync::CancellationToken::new();
    let key = secrecy::SecretString::from(KEY);
    let (c, u, t) = (cfg.clone(), nats.url.clone(), token.clone());
    let server =
        tokio::spawn(
            async move { taskfleet::serve::run_api(&c, &u, listener, Some(&key), t).await },
        );
    let client = ApiClient::new(&api, Some(KEY.into()));
    while client
        .pending(&[("assigned_to", "bench".into())])
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. Idle dispatch latency: one task at a time, a worker waiting.
    eprintln!("idle dispatch latency: {samples} tasks, one at a time, 1 worker process …");
    let mut workers = spawn_workers(1, &nats.url);
    let warm = create(&client, "noop").await;
    wait_done(&client, &warm).await;
    let mut lat = Vec::new();
    for _ in 0..samples {
        let id = create(&client, "noop").await;
        let t = wait_done(&client, &id).await;
        let started = t.started_time.expect("started");
        lat.push((started - t.created_time).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }

    // 2. Throughput: a backlog of noop tasks drained by 1, then 2 worker processes.
    let mut rows = Vec::new();
    for procs in [1usize, 2] {
        eprintln!("throughput: queueing {tasks} noop tasks …");
        let created = Instant::now();
        let ids: Vec<String> = futures::StreamExt::collect(futures::StreamExt::buffered(
            futures::stream::iter((0..tasks).map(|_| create(&client, "noop"))),
            64,
        ))
        .await;
        let create_rate = tasks as f64 / created.elapsed().as_secs_f64();
        eprintln!("throughput: draining with {procs} worker process(es), concurrency 8 each …");
        let started = Instant::now();
        let mut ws = spawn_workers(procs, &nats.url);
        wait_done(&client, ids.last().unwrap()).await;
        for id in ids.iter().rev().take(50) {
            wait_done(&client, id).await;
        }
        loop {
            let pending = client
                .pending(&[("assigned_to", "bench".into()), ("limit", "1".into())])
                .await?;
            let running = client
                .list_tasks(&[
                    ("assigned_to", "bench".into()),
                    ("status", "running".into()),
                    ("limit", "1".into()),
                ])
                .await?;
            if pending.is_empty() && running.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        rows.push((procs, tasks as f64 / secs, create_rate));
        for w in &mut ws {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
    token.cancel();
    let _ = server.await;
    nats.stop().await;

    println!(
        "\n## Worker benchmark ({} samples, {tasks} tasks per throughput run)\n",
        samples
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| idle dispatch latency, create → started, p50 | {p50:.2} ms |");
    println!("| idle dispatch latency, create → started, p99 | {p99:.2} ms |");
    for (procs, rate, create_rate) in &rows {
        println!("| trivial-task throughput, {procs} worker process(es) × concurrency 8 | {rate:.0} tasks/s |");
        println!("| (HTTP create rate while queueing that backlog) | {create_rate:.0} tasks/s |");
    }
    let json = serde_json::json!({
        "idle_dispatch_ms": {"p50": p50, "p99": p99, "samples": samples},
        "throughput": rows.iter().map(|(p, r, c)| serde_json::json!({"worker_processes": p, "tasks_per_s": r, "create_per_s": c})).collect::<Vec<_>>(),
        "tasks": tasks,
    });
    println!("\n{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
