//! A probe, not part of `make bench`: what this machine's nats-server does for taskfleet's writes
//! per task with none of taskfleet's logic, when nothing waits per task, and with the waits issue
//! 11 ("Task storage v2") allows. Figures and what they say: docs/benchmarks.md, "The issue's
//! 27k tasks/s, reproduced, and the floor under each missed target".
//!
//! The issue says that "plain async-nats pulling from a work queue and writing 2 more pipelined
//! messages per task consumes ~27k tasks/s" on the machine it was filed on. `N` tasks (~300-byte
//! bodies, one work-queue stream like `TASKS`, one durable consumer) are queued first, or with
//! `--live` while they are consumed (64 publishes awaited at a time, as `make bench` creates
//! them; the rate then counts from the first publish). One process on one thread consumes them:
//!
//! - `--mode pipelined`: a continuous pull (async-nats `messages()`, up to 500 prefetched); per
//!   task two ~1.4 kB ledger messages published without waiting (`--window` answers
//!   outstanding) and the queue message acked without waiting. No compare-and-set.
//! - `--mode cas`: the same pull; per task (`--concurrency` at once) the claim appended to
//!   taskfleet's ledger stream with its compare-and-set (expected 0 on `events.bench.<id>.*`)
//!   and awaited, `--steps` step appends each expecting the previous one's sequence and
//!   awaited, the finish likewise, then the ack (not awaited). `--free-after-claim` gives the
//!   slot back once the finish is sent, as taskfleet's worker does. `--pipelined-steps` sends
//!   the steps and the finish at once after the claim, each guarded on the claim's own subject
//!   at its sequence (a layout taskfleet does not have: see the docs).
//! - `--mode idle`: one task every 20 ms to a consumer with a request waiting at the server;
//!   the time from just before the publish to the claim stored, p50 and p99 of 300.
//!
//! Run: `cargo run --release --example probe_pipelined -- [--mode pipelined|cas|idle]
//!       [--tasks 50000] [--live] [--concurrency 64] [--steps 0] [--free-after-claim]
//!       [--pipelined-steps] [--window 1024]`

#![deny(unsafe_code)]

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream, Context};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskfleet::bus::append::Append;
use tokio::sync::Semaphore;

type Res<T> = anyhow::Result<T>;

/// `--name value` from the command line, or `default`.
fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    (args.iter().position(|a| a == name))
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// Whether `--name` is on the command line.
fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// How `cas` writes each task, read from the command line once (not per task).
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// `--steps`: step appends between the claim and the finish.
    steps: usize,
    /// `--pipelined-steps`: after the claim, the steps and the finish are sent at once, each
    /// guarded on the claim's own subject (which they do not write) at the claim's sequence: a
    /// takeover's new claim refuses them, a cancel would not (a layout question, not measured).
    pipelined: bool,
    /// `--free-after-claim`: the slot is given back once the finish is sent.
    free_after_claim: bool,
}

impl Shape {
    fn from_args() -> Self {
        Self {
            steps: arg("--steps", 0),
            pipelined: flag("--pipelined-steps"),
            free_after_claim: flag("--free-after-claim"),
        }
    }
}

/// A record of about the size of taskfleet's (the event and the task's state), for task `id`.
fn record(id: &str, kind: &str) -> bytes::Bytes {
    let pad = "x".repeat(1_200);
    format!(
        r#"{{"id":"evt_{id}_{kind}","task_id":"{id}","type":"{kind}","task":{{"pad":"{pad}"}}}}"#
    )
    .into()
}

/// Queues `n` tasks on `tasks.bench.p1.noop`, publishes pipelined (`window` answers outstanding).
async fn queue(js: &Context, n: usize, window: usize) -> Res<f64> {
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        let body = format!(
            r#"{{"id":"t{i:08}","title":"probe","assigned_to":"bench","priority":"P1","kind":"noop","payload":{{"steps":0}},"pad":"{}"}}"#,
            "y".repeat(150)
        );
        acks.push(
            js.publish("tasks.bench.p1.noop", body.into())
                .await?
                .into_future(),
        );
        if acks.len() >= window {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The queue, its consumer and the ledger (taskfleet's own config).
async fn setup(js: &Context) -> Res<PullConsumer> {
    let tasks = js
        .create_stream(stream::Config {
            name: "TASKS".into(),
            subjects: vec!["tasks.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let ledger = taskfleet::bus::ledger_config(&taskfleet::bus::TopologyConfig::default());
    js.create_stream(ledger).await?;
    Ok(tasks
        .create_consumer(pull::Config {
            durable_name: Some("worker_bench_p1".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?)
}

/// Task id of a queued message (its body's `"id"`).
fn task_id(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[7..16]).into_owned()
}

/// `pipelined`: nothing waits per task.
async fn pipelined(js: &Context, consumer: PullConsumer, n: usize) -> Res<f64> {
    let window: usize = arg("--window", 1_024);
    let mut messages = consumer.messages().await?;
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for _ in 0..n {
        let msg = messages.next().await.expect("open")?;
        let id = task_id(&msg.payload);
        for kind in ["started", "completed"] {
            let subject = format!("ledger.bench.{id}.{kind}");
            acks.push(js.publish(subject, record(&id, kind)).await?.into_future());
        }
        msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        while acks.len() >= window {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// One task the `cas` way (see [`Shape`]): claim awaited, steps and finish awaited (or sent
/// together), ack not.
async fn claim_and_finish(
    js: Context,
    msg: jetstream::Message,
    shape: Shape,
    mut slot: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Res<()> {
    let id = task_id(&msg.payload);
    let kinds = std::iter::once("started")
        .chain(std::iter::repeat_n("step", shape.steps))
        .chain(std::iter::once("completed"));
    let pipelined = shape.pipelined;
    let mut expected = 0;
    let mut sent = Vec::new();
    for (i, kind) in kinds.enumerate() {
        if kind == "completed" && shape.free_after_claim {
            slot.take();
        }
        let guard = match (pipelined, i) {
            (true, 1..) => format!("events.bench.{id}.started"),
            _ => format!("events.bench.{id}.*"),
        };
        let append = Append {
            subject: format!("ledger.bench.{id}.{kind}"),
            guard,
            expected,
            msg_id: format!("evt_{id}_{kind}_{i}"),
            extra: Vec::new(),
            payload: record(&id, kind),
        };
        let answer = append.send(&js).await?;
        if pipelined && i > 0 {
            sent.push(answer);
        } else {
            expected = answer.stored().await?;
        }
    }
    for answer in sent {
        answer.stored().await?;
    }
    msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// `cas`: taskfleet's waits per task, `--concurrency` tasks at once.
async fn cas(js: &Context, consumer: PullConsumer, n: usize) -> Res<f64> {
    let slots = Arc::new(Semaphore::new(arg("--concurrency", 64)));
    let shape = Shape::from_args();
    let mut messages = consumer.messages().await?;
    let started = Instant::now();
    let mut running = FuturesUnordered::new();
    for _ in 0..n {
        let slot = slots.clone().acquire_owned().await?;
        let msg = messages.next().await.expect("open")?;
        let js = js.clone();
        running.push(tokio::spawn(claim_and_finish(js, msg, shape, Some(slot))));
    }
    while let Some(done) = running.next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// `idle`: one task at a time to a consumer with a request waiting at the server; the time from
/// just before the publish to the claim stored (the handler's start), p50 and p99 of 300.
async fn idle(js: &Context, consumer: PullConsumer) -> Res<()> {
    let mut messages = consumer.messages().await?;
    let js2 = js.clone();
    let worker = tokio::spawn(async move {
        let mut took = Vec::new();
        while took.len() < 320 {
            let msg = messages.next().await.expect("open").expect("message");
            let sent: u128 = String::from_utf8_lossy(&msg.payload[18..])
                .parse()
                .expect("stamp");
            let id = task_id(&msg.payload);
            let claim = Append {
                subject: format!("ledger.bench.{id}.started"),
                guard: format!("events.bench.{id}.*"),
                expected: 0,
                msg_id: format!("evt_{id}_started"),
                extra: Vec::new(),
                payload: record(&id, "started"),
            };
            claim
                .send(&js2)
                .await
                .expect("send")
                .stored()
                .await
                .expect("stored");
            took.push(now_us() - sent);
            let _ = msg.ack().await;
        }
        took
    });
    for i in 0..320 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let body = format!(r#"{{"id":"i{i:08}",{}"#, now_us());
        js.publish("tasks.bench.p1.noop", body.into())
            .await?
            .await?;
    }
    let mut took: Vec<u128> = worker.await?.split_off(20);
    took.sort_unstable();
    let at = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    println!("idle: p50 {:.2} ms, p99 {:.2} ms", at(0.5), at(0.99));
    Ok(())
}

/// Microseconds since the epoch.
fn now_us() -> u128 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .expect("after 1970")
        .as_micros()
}

/// Queues `n` tasks (first, or meanwhile with `--live`), consumes them the `mode` way and prints
/// the rate.
async fn consume(js: &Context, consumer: PullConsumer, mode: &str, n: usize) -> Res<()> {
    // `--live`: the tasks are queued while they are consumed, 64 publishes awaited at a time
    // (as `make bench` creates them), and the rate counts from the first publish.
    let live = flag("--live");
    let queued = if live {
        None
    } else {
        Some(queue(js, n, 1_024).await?)
    };
    eprintln!("consuming {n} tasks ({mode})");
    let started = Instant::now();
    let consumed = async {
        match mode {
            "cas" => cas(js, consumer, n).await,
            _ => pipelined(js, consumer, n).await,
        }
    };
    let rate = match queued {
        Some(_) => consumed.await?,
        None => {
            let (produced, consumed) = tokio::join!(queue(js, n, 64), consumed);
            produced?;
            consumed?;
            n as f64 / started.elapsed().as_secs_f64()
        }
    };
    let how = queued.map_or("queued meanwhile".into(), |q| {
        format!("queued first at {q:.0}/s")
    });
    println!("{mode}: {rate:.0} tasks/s ({n} tasks, {how})");
    Ok(())
}

/// One process on one thread, as taskfleet's worker.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let n: usize = arg("--tasks", 50_000);
    let mode: String = arg("--mode", "pipelined".to_string());
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nats = taskfleet::natsd::LocalNats::start(&taskfleet::natsd::LocalNatsOptions {
        bin: Some(taskfleet::natsd::find_binary(None)?),
        conf: concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf").into(),
        store_dir: dir.path().join("nats"),
        log_file: dir.path().join("nats.log"),
        port,
    })
    .await?;
    let js = jetstream::new(async_nats::connect(&nats.url).await?);
    let consumer = setup(&js).await?;
    if mode == "idle" {
        idle(&js, consumer).await?;
    } else {
        consume(&js, consumer, &mode, n).await?;
    }
    nats.stop().await;
    Ok(())
}
