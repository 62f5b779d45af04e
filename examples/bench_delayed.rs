//! `make bench-delayed`: fire lag of delayed tasks that all come due in the same second. Creates
//! `--tasks` (1,000) `noop` tasks with one `run_at` a few seconds ahead, runs one worker
//! (`--concurrency`, 8), and prints, per task, how late after `run_at` the broker fired it (the
//! stream time of its queue message, `fired_lag_ms` of its `created` event), it was queued (the
//! `created` record, written by the worker's claim) and started. Prints figures; asserts nothing.
//!
//! Run: `cargo run --release --example bench_delayed -- [--tasks 1000] [--concurrency 8]`

#![deny(unsafe_code)]

use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskfleet::config::{Config, WorkerConfig};
use taskfleet::domain::{Assignee, NewTask, TaskStatus};
use taskfleet::natsd::{LocalNats, LocalNatsOptions};
use taskfleet::tasks::TaskService;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates `n` delayed tasks due at `run_at`, 32 at a time; returns their ids.
async fn create_all(tasks: &TaskService, n: usize, run_at: DateTime<Utc>) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (tasks, sem) = (tasks.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore");
            let new: NewTask = serde_json::from_value(serde_json::json!({
                "task_name": format!("delayed {i}"), "assigned_to": "bench", "kind": "noop",
                "run_at": run_at,
            }))
            .expect("a valid body");
            tasks.create(new, "bench").await.expect("create").task.id
        }));
    }
    for h in handles {
        ids.push(h.await.expect("create task").to_string());
    }
    ids
}

/// The `q`-quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Per task: ms from `run_at` to the broker's publish of its message, to its `created` record
/// (queued) and to its start.
type Lags = (Vec<f64>, Vec<f64>, Vec<f64>);

async fn lags(tasks: &TaskService, ids: &[String]) -> anyhow::Result<Lags> {
    let (mut fired, mut queued, mut started) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids {
        let id = taskfleet::domain::TaskId::parse(id)?;
        let t = tasks.get(&id).await?;
        let run_at = t.run_at.expect("a delayed task");
        let ms = |at: DateTime<Utc>| (at - run_at).num_microseconds().unwrap_or(0) as f64 / 1e3;
        started.push(ms(t.started_time.expect("started")));
        let created = tasks
            .events(&id)
            .await?
            .into_iter()
            .find(|e| e.kind == taskfleet::domain::EventKind::Created)
            .expect("a created event");
        queued.push(ms(created.time));
        fired.push(created.data["fired_lag_ms"].as_f64().unwrap_or(f64::NAN));
    }
    for v in [&mut fired, &mut queued, &mut started] {
        v.sort_by(f64::total_cmp);
    }
    Ok((fired, queued, started))
}

async fn run(nats_url: &str, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let mut cfg = Config::default();
    cfg.nats.url = Some(nats_url.to_string());
    let bus = taskfleet::serve::connect(&cfg, nats_url, "bench").await?;
    let tasks = TaskService::new(bus.clone(), Default::default());
    let lead = Duration::from_secs(3 + n as u64 / 400);
    let run_at = Utc::now() + chrono::Duration::from_std(lead)?;
    eprintln!("creating {n} tasks due at {run_at} …");
    let ids = create_all(&tasks, n, run_at).await;
    let worker_bus = taskfleet::serve::connect(&cfg, nats_url, "bench-worker").await?;
    let assignee = Assignee::parse("bench")?;
    let opts = taskfleet::worker::WorkerOptions {
        worker_id: "bench-worker".into(),
        assignee,
        concurrency,
        api_url: "http://127.0.0.1:9".into(),
        task_token_secret: None,
        settings: WorkerConfig::default(),
    };
    let token = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(taskfleet::worker::run(worker_bus, opts, token.clone()));
    eprintln!("waiting for all {n} to complete after run_at …");
    let started = Instant::now();
    loop {
        let last = taskfleet::domain::TaskId::parse(ids.last().expect("tasks"))?;
        let done = tasks.get(&last).await?.status == TaskStatus::Completed;
        if done && all_done(&tasks, &ids).await? {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < lead + Duration::from_secs(120),
            "timed out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    token.cancel();
    let _ = worker.await;
    let (fired, queued, begun) = lags(&tasks, &ids).await?;
    println!("\n## Delayed tasks: fire lag ({n} tasks due in the same second, 1 worker x {concurrency})\n");
    println!("| from run_at to | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    let rows = [
        ("fired by the broker", &fired),
        ("queued (`created`)", &queued),
        ("started", &begun),
    ];
    for (what, v) in rows {
        let (p50, p99) = (quantile(v, 0.5), quantile(v, 0.99));
        println!("| {what} | {p50:.1} | {p99:.1} | {:.1} |", v[v.len() - 1]);
    }
    Ok(())
}

async fn all_done(tasks: &TaskService, ids: &[String]) -> anyhow::Result<bool> {
    for id in ids {
        let id = taskfleet::domain::TaskId::parse(id)?;
        if tasks.get(&id).await?.status != TaskStatus::Completed {
            return Ok(false);
        }
    }
    Ok(true)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--tasks", 1000);
    let concurrency = arg("--concurrency", 8);
    let dir = tempfile::tempdir()?;
    let conf = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf"));
    let nats = LocalNats::start(&LocalNatsOptions::scratch(conf, dir.path())?).await?;
    let result = run(&nats.url, n, concurrency).await;
    nats.stop().await;
    result
}
