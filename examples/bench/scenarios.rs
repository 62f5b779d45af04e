//! The scenarios of the benchmark contract, each on a fresh [`Fleet`] (the relay's are in
//! `relay.rs`).

use crate::fleet::{rss_mb, Fleet, ASSIGNEE};
use crate::Opts;
use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use taskfleet::bus::{encode, message_headers, subjects, Bus};
use taskfleet::client::ApiClient;
use taskfleet::domain::{Assignee, EventKind, NewTask, Priority, TaskId};

/// Tasks each worker process runs at once (the contract's `concurrency`).
pub const CONCURRENCY: usize = 8;
/// The wide setting: one worker process running this many tasks at once.
pub const WIDE_CONCURRENCY: usize = 64;
/// Creates in flight during a throughput run.
const IN_FLIGHT: usize = 64;

/// How a task is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// `POST /api/tasks` on the API process.
    Http,
    /// A JetStream publish of the create body straight to `tasks.bench.<p>.noop`, with the task
    /// id as `Nats-Msg-Id`; the worker that pulls it creates its state entry (as `pending` does).
    Nats,
}

impl Create {
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Nats => "nats",
        }
    }
}

/// Wall clock in µs since the epoch.
fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `events.bench.*.<kind>`: the wildcard form of `subjects::event` for one kind.
fn events_of(kind: EventKind) -> String {
    let assignee = Assignee::parse(ASSIGNEE).expect("valid assignee");
    let one = subjects::event(&assignee, &TaskId::parse("X").expect("id"), kind);
    one.replacen(".X.", ".*.", 1)
}

/// The task id in an event subject (`events.<assignee>.<id>.<type>`).
fn event_task(subject: &str) -> &str {
    subject.split('.').nth(2).unwrap_or_default()
}

/// The create body of a noop task.
fn noop(priority: Priority, payload: Value) -> NewTask {
    serde_json::from_value(json!({
        "task_name": "bench", "assigned_to": ASSIGNEE, "priority": priority.as_str(),
        "kind": "noop", "payload": payload,
    }))
    .expect("valid create body")
}

/// Creates one task by `how` and returns its id.
async fn create(
    how: Create,
    bus: &Bus,
    client: Option<&ApiClient>,
    mut new: NewTask,
) -> anyhow::Result<TaskId> {
    match how {
        Create::Http => {
            let client = client.context("HTTP create needs the API")?;
            Ok(client.create_task(&serde_json::to_value(&new)?).await?.id)
        }
        Create::Nats => {
            let id = TaskId::generate();
            new.id = Some(id.clone());
            let subject = subjects::task(&new.assigned_to, new.priority, new.kind, new.share());
            bus.js
                .publish_with_headers(subject, message_headers(id.as_str()), encode(&new))
                .await?
                .await?;
            Ok(id)
        }
    }
}

fn priority_of(i: usize) -> Priority {
    Priority::ALL[i % 3]
}

/// One throughput run: how tasks are created, their steps, and the workers that run them.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// How each task is created.
    pub how: Create,
    /// Steps each `noop` task reports before completing.
    pub steps: u32,
    /// Worker processes.
    pub procs: usize,
    /// Tasks each worker process runs at once (`--concurrency`).
    pub concurrency: usize,
    /// Concurrency keys of limit 1 the tasks are spread over round robin (0: no key).
    pub keys: usize,
}

/// Throughput end to end: workers idle and ready, then `tasks` creates (64 in flight, P0/P1/P2
/// round robin); time from the first create until a core subscriber has seen every `completed`.
pub async fn throughput(o: &Opts, shape: Shape) -> anyhow::Result<Value> {
    let mut fleet = Fleet::start(shape.how == Create::Http).await?;
    let result = throughput_on(&mut fleet, o.tasks, shape).await;
    fleet.stop().await;
    result
}

async fn throughput_on(fleet: &mut Fleet, tasks: usize, shape: Shape) -> anyhow::Result<Value> {
    let Shape {
        how,
        steps,
        procs,
        concurrency,
        keys,
    } = shape;
    limit_keys(&fleet.bus, keys).await?;
    fleet.spawn_workers(procs, concurrency).await?;
    let mut done = fleet
        .bus
        .client
        .subscribe(events_of(EventKind::Completed))
        .await?;
    fleet.bus.client.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let limit = Duration::from_secs(60) + Duration::from_millis(tasks as u64 * 40);
    let counter = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut last = Instant::now();
        while seen.len() < tasks {
            match tokio::time::timeout(limit, done.next()).await {
                Ok(Some(m)) => {
                    if seen.insert(event_task(&m.subject).to_string()) {
                        last = Instant::now();
                    }
                }
                _ => break,
            }
        }
        (seen.len(), last)
    });
    let (bus, client) = (&fleet.bus, fleet.api.as_ref().map(|a| &a.client));
    let payload = json!({ "steps": steps });
    let t0 = Instant::now();
    futures::stream::iter(0..tasks)
        .map(|i| {
            let mut new = noop(priority_of(i), payload.clone());
            new.concurrency_key = (keys > 0).then(|| format!("key-{}", i % keys));
            create(how, bus, client, new)
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let queued = t0.elapsed().as_secs_f64();
    let (completed, last) = counter.await?;
    if completed < tasks {
        bail!("only {completed} of {tasks} tasks completed within {limit:?}");
    }
    let secs = last.duration_since(t0).as_secs_f64();
    // Every message the run stored (the server is fresh per scenario): the writes per task.
    let mut stored = 0;
    for name in [subjects::TASKS_STREAM, subjects::EVENTS_STREAM] {
        let mut stream = bus.js.get_stream(name).await?;
        stored += stream.info().await?.state.last_sequence;
    }
    let limits = format!("KV_{}", subjects::LIMITS_BUCKET);
    let limit_writes = bus
        .js
        .get_stream(&limits)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    Ok(json!({
        "create": how.name(), "steps": steps, "procs": procs, "concurrency": concurrency,
        "tasks": tasks, "concurrency_keys": keys,
        "limit_writes_per_task": limit_writes.saturating_sub(keys as u64) as f64 / tasks as f64,
        "secs": secs, "tasks_per_s": tasks as f64 / secs, "create_secs": queued,
        "stream_writes_per_task": stored as f64 / tasks as f64,
    }))
}

/// Gives `keys` concurrency keys (`key-0`, `key-1`, …) a limit of 1 through overrides.
async fn limit_keys(bus: &Bus, keys: usize) -> anyhow::Result<()> {
    let limits = taskfleet::limits::Limits::new(bus);
    let one = taskfleet::domain::KeyLimits {
        concurrency: Some(1),
        ..Default::default()
    };
    for k in 0..keys {
        limits
            .set_override(ASSIGNEE, &format!("key-{k}"), one.clone())
            .await?;
    }
    Ok(())
}

/// Percentile of sorted values at index round((n − 1)·p), as the BullMQ and raw programs do.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let max = v.last().copied();
    let over_100ms = v.iter().filter(|&&x| x > 100.0).count();
    json!({
        "p50": percentile(&v, 0.5), "p99": percentile(&v, 0.99), "samples": v.len(),
        "max": max, "over_100ms": over_100ms,
    })
}

/// Waits for the message of `id` on `sub` (skipping others) and returns its arrival (µs).
async fn arrival_of(sub: &mut async_nats::Subscriber, id: &TaskId) -> anyhow::Result<i64> {
    let wait = async {
        while let Some(m) = sub.next().await {
            let at = wall_us();
            if event_task(&m.subject) == id.as_str() {
                return Ok(at);
            }
        }
        bail!("subscription ended")
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .with_context(|| format!("no event for task {id} within 30 s"))?
}

/// Idle dispatch latency, one task at a time (default priority P1), the worker idle between.
/// Per sample: t0 = wall clock just before the create call; the figure ends at the handler's
/// start, which the noop stamps once its claim is stored (`{"stamp": true}`), as raw JetStream's
/// worker does. Returns (figure, claim-stamp figure: the task's `started_time`, taken before the
/// claim is sent, event figure: the `started` record's arrival at a core subscriber here, one
/// hop after it is stored; the figure of `make bench` until 2026-12-06).
pub async fn latency(
    fleet: &Fleet,
    how: Create,
    warmup: usize,
    samples: usize,
) -> anyhow::Result<[Value; 3]> {
    let client = fleet.api.as_ref().map(|a| &a.client);
    let mut started = fleet
        .bus
        .client
        .subscribe(events_of(EventKind::Started))
        .await?;
    let mut completed = fleet
        .bus
        .client
        .subscribe(events_of(EventKind::Completed))
        .await?;
    fleet.bus.client.flush().await?;
    let mut measured = Vec::new();
    for i in 0..warmup + samples {
        let t0 = wall_us();
        let body = noop(Priority::P1, json!({"stamp": true}));
        let id = create(how, &fleet.bus, client, body).await?;
        let arrived = arrival_of(&mut started, &id).await?;
        arrival_of(&mut completed, &id).await?;
        if i >= warmup {
            measured.push((id, t0, arrived));
        }
        // Let the worker finish its ack and empty pulls: it is idle and waiting again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ms = |us: i64| us as f64 / 1000.0;
    let (mut figure, mut stamps, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for (id, t0, arrived) in measured {
        let task = fleet.task(&id).await?;
        let claim = task
            .started_time
            .context("no started_time")?
            .timestamp_micros();
        let handler = (task.result.as_ref())
            .and_then(|r| r["handler_started_us"].as_i64())
            .context("the noop's result has no handler_started_us")?;
        figure.push(ms(handler - t0));
        stamps.push(ms(claim - t0));
        // As measured until 2026-12-06: the later of the record's arrival and the claim stamp.
        events.push(ms(arrived.max(claim) - t0));
    }
    Ok([summary(figure), summary(stamps), summary(events)])
}

/// Idle latency (nats and http creates) and idle RSS on one fleet: API + one worker process.
pub async fn latency_and_rss(o: &Opts) -> anyhow::Result<Value> {
    let mut fleet = Fleet::start(true).await?;
    let result = async {
        fleet.spawn_workers(1, CONCURRENCY).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (worker, api) = (fleet.worker_pids()[0], fleet.api.as_ref().expect("api").pid);
        let fresh = json!({"worker": rss_mb(worker), "api": rss_mb(api)});
        eprintln!("  idle latency, NATS create: {} samples …", o.samples);
        let [nats, nats_stamp, nats_event] =
            latency(&fleet, Create::Nats, o.warmup, o.samples).await?;
        eprintln!("  idle latency, HTTP create: {} samples …", o.samples);
        let [http, http_stamp, http_event] =
            latency(&fleet, Create::Http, o.warmup, o.samples).await?;
        eprintln!("  idle RSS: 2 s idle after the latency runs …");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = json!({"worker": rss_mb(worker), "api": rss_mb(api)});
        anyhow::Ok(json!({
            "idle_latency_ms": nats, "idle_latency_ms_http": http,
            "idle_latency_ms_claim_stamp": {"nats": nats_stamp, "http": http_stamp},
            "idle_latency_ms_started_event": {"nats": nats_event, "http": http_event},
            "rss_mb": used, "rss_mb_fresh": fresh,
        }))
    }
    .await;
    fleet.stop().await;
    result
}

/// P0 behind P2: one worker process with concurrency 1 runs a 1 s blocker; meanwhile `p2` P2
/// tasks and then one P0 are published. Figure = P0 `started_time` − blocker `finished_time`.
pub async fn p0_behind_p2(o: &Opts) -> anyhow::Result<Value> {
    let mut fleet = Fleet::start(false).await?;
    let result = p0_on(&mut fleet, o.p2).await;
    // Clear the queue rather than draining it through the timing; then the fleet goes away.
    if let Err(e) = fleet.bus.topology.tasks.purge().await {
        eprintln!("  purging the queue failed: {e}");
    }
    fleet.stop().await;
    result
}

async fn p0_on(fleet: &mut Fleet, p2: usize) -> anyhow::Result<Value> {
    fleet.spawn_workers(1, 1).await?;
    let bus = &fleet.bus;
    let mut started = bus.client.subscribe(events_of(EventKind::Started)).await?;
    bus.client.flush().await?;
    let blocker = create(
        Create::Nats,
        bus,
        None,
        noop(Priority::P1, json!({"sleep_ms": 1000})),
    )
    .await?;
    arrival_of(&mut started, &blocker).await?;
    let fill = Instant::now();
    futures::stream::iter(0..p2)
        .map(|_| create(Create::Nats, bus, None, noop(Priority::P2, json!({}))))
        .buffer_unordered(256)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let p0 = create(Create::Nats, bus, None, noop(Priority::P0, json!({}))).await?;
    let p0_queued = chrono::Utc::now();
    let fill_secs = fill.elapsed().as_secs_f64();
    let mut others = 0;
    let wait = async {
        while let Some(m) = started.next().await {
            if event_task(&m.subject) == p0.as_str() {
                return Ok(());
            }
            others += 1;
        }
        bail!("subscription ended")
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("the P0 task did not start within 60 s")??;
    let freed = fleet
        .task(&blocker)
        .await?
        .finished_time
        .context("blocker has no finished_time")?;
    let p0_start = fleet
        .task(&p0)
        .await?
        .started_time
        .context("P0 has no started_time")?;
    let ms = (p0_start - freed).num_microseconds().unwrap_or(0) as f64 / 1000.0;
    if p0_queued > freed {
        eprintln!("  warning: queueing took {fill_secs:.2} s, longer than the 1 s blocker");
    }
    Ok(json!({
        "p2_queued": p2, "ms": ms, "queue_fill_secs": fill_secs,
        "p0_queued_before_slot_freed": p0_queued <= freed,
        "tasks_started_between": others,
    }))
}
