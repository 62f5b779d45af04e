//! `make bench`, raw JetStream column: the floor under taskfleet. A plain async-nats program
//! doing per task the JetStream writes taskfleet's task ledger does (storage v2), with none of
//! taskfleet's logic: it borrows only the ledger's stream config (`taskfleet::bus::ledger_config`)
//! and its compare-and-set publish (`taskfleet::bus::append::Append`); `taskfleet::natsd` only
//! starts the server.
//!
//! Per task: the producer publishes the task to a work-queue stream `TASKS` (`Nats-Msg-Id` = task
//! id, ack awaited); a worker pulls it, claims it with one append expecting sequence 0 on
//! `events.bench.<id>.*` (`started`, standing for created and started), writes one append per
//! step (each expecting the previous one's sequence), finishes with a `completed` append and
//! acks the queue message without waiting for the confirmation. Every append waits for its
//! sequence (the next one needs it). A record is the event's JSON plus `task`, the task's state
//! after it, shaped like taskfleet's. So a trivial task stores 3 messages, one with 3 steps 6.
//! Output per the bench contract (issue 7): progress on stderr, one JSON object last on stdout.
//!
//! The relay rows: progress events of one task forwarded to one local webhook receiver by one
//! durable pull consumer (one in flight), and fanned out to 100 destinations, each forwarded in
//! order by its own durable consumer (see `FANOUT_NOTE`).
//!
//! Run: `cargo run --release --example bench_raw -- [--tasks 5000] [--quick] [--out FILE]
//!       [--relay-fanout-events 1000]`

#![deny(unsafe_code)]

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream, Context, Message};
use async_nats::{HeaderMap, Subscriber};
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{atomic::AtomicUsize, atomic::Ordering::SeqCst, Arc, Mutex};
use std::time::{Duration, Instant};
use taskfleet::bus::append::Append;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The queue's priority tokens, highest first.
const PRIOS: [&str; 3] = ["p0", "p1", "p2"];
/// Idle-latency tasks run before the measured ones.
const WARMUP: usize = 20;
/// Creates in flight during a throughput run (as on the other two sides).
const IN_FLIGHT: usize = 64;
/// The throughput runs: (worker processes, tasks in flight per process, steps per task).
const MATRIX: [(usize, usize, u64); 6] = [
    (1, 8, 0),
    (1, 8, 3),
    (2, 8, 0),
    (4, 8, 0),
    (1, 64, 0),
    (1, 64, 3),
];
/// Webhook destinations of the fan-out relay.
const FANOUT: usize = 100;
/// How the raw side's fan-out relay works, for the report's notes.
const FANOUT_NOTE: &str = "one pull consumer of the ledger's progress events publishes one job \
    per destination to its subject deliver.bench.d<n> of a work-queue stream (the 100 publishes \
    of an event awaited, then the event acked); 100 durable pull consumers, one per destination \
    subject, each with one unacked job (max_ack_pending 1), POST it to the destination's path \
    and ack after the 200; no delivery record is stored";
/// What the raw side writes, for the report's notes.
const WRITES_NOTE: &str = "per task, the queue message (work-queue stream) and, on the ledger \
    stream (taskfleet::bus::ledger_config), a claim appended expecting sequence 0, one append \
    per step and a finish, each a compare-and-set on events.bench.<id>.* awaiting its sequence; \
    then the queue ack, not awaited";

/// Result type of the program.
type Res<T> = anyhow::Result<T>;

/// The command line, looked up by flag name.
struct Args(Vec<String>);

impl Args {
    /// `name`'s value as a number, else `default`.
    fn num(&self, name: &str, default: usize) -> usize {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The value after `name`, if any.
    fn get(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).map(String::as_str)
    }

    /// Whether `name` was given.
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}

/// An async-nats boxed error as an anyhow one.
fn boxed(e: async_nats::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Wall clock in µs since the epoch.
fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Wall clock as RFC 3339 (the ledger's time format).
fn now_text() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// Headers carrying `Nats-Msg-Id`.
fn msg_id(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    h
}

/// Shaped like taskfleet's encoded `NewTask` (~300 bytes).
fn task_body(id: &str, prio: &str, payload: &Value) -> bytes::Bytes {
    let body = json!({"id": id, "task_name": "bench noop", "assigned_to": "bench",
        "priority": prio.to_uppercase(), "created_by": "bench",
        "description": "raw JetStream benchmark task, shaped like a NewTask", "kind": "noop",
        "payload": payload, "steps": [], "notify": [], "timeout_s": null, "max_attempts": 3,
        "idempotency_key": null});
    serde_json::to_vec(&body).expect("json").into()
}

/// Publishes one task and waits for its stream ack; returns its id.
async fn create(js: &Context, prio: &str, payload: &Value) -> Res<String> {
    let id = ulid::Ulid::new().to_string();
    let subject = format!("tasks.bench.{prio}.noop");
    let body = task_body(&id, prio, payload);
    js.publish_with_headers(subject, msg_id(&id), body)
        .await?
        .await?;
    Ok(id)
}

/// Runs `f(0..n)` with `inflight` calls at once, stopping at the first error.
async fn pump<F, Fut, T>(n: usize, inflight: usize, f: F) -> Res<()>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Res<T>>,
{
    let calls = futures::stream::iter(0..n)
        .map(f)
        .buffer_unordered(inflight);
    calls.try_for_each(|_| async { Ok(()) }).await
}

// ---------------------------------------------------------------- worker process

/// A worker process's connection and name.
struct Worker {
    js: Context,
    name: String,
}

/// One task's chain of ledger appends: its state and the sequence of its last record.
struct Run<'a> {
    w: &'a Worker,
    id: String,
    task: Value,
    seq: u64,
}

impl<'a> Run<'a> {
    /// The state of a task just claimed from its queue message (shaped like taskfleet's `Task`).
    fn claimed(w: &'a Worker, id: String, msg: &Message) -> Res<Self> {
        let mut task: Value = serde_json::from_slice(&msg.payload)?;
        let now = now_text();
        let queue_seq = msg.info().map(|i| i.stream_sequence).ok();
        let state = json!({"status": "pending", "attempt": 1, "result": null, "error": null,
            "progress": {"done": 0, "total": 0, "current": null, "percent": null, "info": null},
            "lease": {"token": format!("1.{}", queue_seq.unwrap_or(0)), "holder": w.name, "attempt": 1,
                "claimed_time": now},
            "queue_seq": queue_seq, "created_time": now, "updated_time": now,
            "started_time": now, "finished_time": null, "revision": 0});
        let obj = task.as_object_mut().expect("task is an object");
        obj.extend(state.as_object().expect("object").clone());
        Ok(Self {
            w,
            id,
            task,
            seq: 0,
        })
    }

    /// Appends one record (`kind`, moving the task to `status`) expecting the sequence of the
    /// previous one (0 for the first), and keeps its sequence.
    async fn append(&mut self, kind: &str, status: &str, data: Value) -> Res<()> {
        let (id, time) = (&self.id, now_text());
        let old = self.task["status"].take();
        self.task["status"] = status.into();
        self.task["updated_time"] = time.clone().into();
        let evt = format!("evt_{id}_{}_{kind}", self.seq); // unique: Nats-Msg-Id dedups
        let mut record = json!({"id": evt, "task_id": id, "assigned_to": "bench", "type": kind,
            "time": time, "attempt": 1, "old_status": old, "new_status": status,
            "message": null, "operator": self.w.name, "data": data});
        record["task"] = self.task.clone();
        let append = Append {
            subject: format!("ledger.bench.{id}.{kind}"),
            guard: format!("events.bench.{id}.*"),
            expected: self.seq,
            msg_id: evt,
            extra: Vec::new(),
            payload: serde_json::to_vec(&record)?.into(),
        };
        self.seq = append.send(&self.w.js).await?.stored().await?;
        self.task["revision"] = self.seq.into();
        Ok(())
    }
}

/// Claim, handler (sleep, steps), finish: the task's appends in order.
async fn run_task(w: &Worker, msg: &Message) -> Res<()> {
    let id = (msg.headers.as_ref())
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.to_string())
        .ok_or_else(|| anyhow::anyhow!("no Nats-Msg-Id"))?;
    let mut r = Run::claimed(w, id, msg)?;
    let num = |k: &str| r.task["payload"][k].as_u64().unwrap_or(0);
    let (steps, sleep_ms) = (num("steps"), num("sleep_ms"));
    r.append("started", "running", json!({"created": true}))
        .await?;
    let start_us = now_us(); // handler start: after the claim is stored
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    for s in 1..=steps {
        r.task["progress"]["done"] = s.into();
        let data = json!({"index": s - 1, "step": format!("step {s}"), "next": null,
            "done": s, "total": 0});
        r.append("step", "running", data).await?;
    }
    let end_us = now_us();
    r.task["result"] = "ok".into();
    r.task["finished_time"] = now_text().into();
    let data = json!({"start_us": start_us, "end_us": end_us, "result": "ok"});
    r.append("completed", "completed", data).await
}

/// Runs one pulled task, then acks its queue message (not waiting for the confirmation).
async fn handle(w: Arc<Worker>, msg: Message, _slot: OwnedSemaphorePermit) {
    if let Err(e) = run_task(&w, &msg).await {
        eprintln!("{}: task failed: {e}", w.name);
    }
    if let Err(e) = msg.ack().await {
        eprintln!("{}: ack failed: {e}", w.name);
    }
}

/// Strict priority without prefetch: with k free slots, pull up to k from P0 (no wait), the rest
/// from P1, then P2; when all are empty, wait for a core-NATS doorbell on `tasks.bench.>`.
async fn worker(args: &Args) -> Res<()> {
    let client = async_nats::connect(args.get("--url").unwrap_or("127.0.0.1:4222")).await?;
    let js = jetstream::new(client.clone());
    let tasks = js.get_stream("TASKS").await?;
    let mut consumers: Vec<PullConsumer> = Vec::new();
    for p in PRIOS {
        let name = format!("worker_bench_{p}");
        consumers.push(tasks.get_consumer(&name).await.map_err(boxed)?);
    }
    let name = format!("raw-worker-{}", std::process::id());
    let w = Arc::new(Worker { js, name });
    let slots = Arc::new(Semaphore::new(args.num("--concurrency", 8)));
    let mut doorbell = client.subscribe("tasks.bench.>").await?;
    client.publish("bench.ready", "".into()).await?;
    client.flush().await?;
    loop {
        let mut free = vec![slots.clone().acquire_owned().await?];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            free.push(p);
        }
        while let Some(Some(_)) = doorbell.next().now_or_never() {}
        let mut got = 0;
        for c in &consumers {
            if free.is_empty() {
                break;
            }
            let mut batch = c.fetch().max_messages(free.len()).messages().await?;
            while let Some(msg) = batch.next().await {
                let slot = free.pop().expect("no more than asked for");
                tokio::spawn(handle(w.clone(), msg.map_err(boxed)?, slot));
                got += 1;
            }
        }
        if got == 0 {
            tokio::select! {
                _ = doorbell.next() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

// ---------------------------------------------------------------- driver

/// The driver's connection, the server's URL, and its subscriptions.
struct Bench {
    js: Context,
    client: async_nats::Client,
    url: String,
    tasks: stream::Stream,
    /// `events.bench.*.completed`, republished by the ledger once stored.
    completed: Subscriber,
    /// Each worker process says here that it is pulling.
    ready: Subscriber,
}

impl Bench {
    /// Starts `procs` worker processes (this program, `worker`) and waits until each is pulling.
    async fn spawn(&mut self, procs: usize, concurrency: usize) -> Res<Vec<Child>> {
        let exe = std::env::current_exe()?;
        let mut kids = Vec::new();
        for _ in 0..procs {
            let mut cmd = Command::new(&exe);
            cmd.args(["worker", "--url", &self.url, "--concurrency"])
                .arg(concurrency.to_string());
            kids.push(cmd.stdout(Stdio::null()).spawn()?);
        }
        for _ in 0..procs {
            tokio::time::timeout(Duration::from_secs(30), self.ready.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("ready subscription closed"))?;
        }
        Ok(kids)
    }

    /// Waits until every queue message is acked (so no redelivery leaks into the next
    /// scenario), then stops the workers.
    async fn stop(&self, kids: Vec<Child>, wait_acks: bool) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while wait_acks && Instant::now() < deadline {
            let mut busy = 0;
            for p in PRIOS {
                let info = self
                    .tasks
                    .consumer_info(format!("worker_bench_{p}"))
                    .await?;
                busy += info.num_ack_pending as u64 + info.num_pending;
            }
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for mut k in kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        Ok(())
    }

    /// Messages ever stored in the queue and ledger streams (the sum of their last sequences;
    /// a run's difference ÷ its tasks is the writes per task, as the taskfleet side counts).
    async fn stored(&self) -> Res<u64> {
        let mut sum = 0;
        for name in ["TASKS", "EVENTS"] {
            sum += self
                .js
                .get_stream(name)
                .await?
                .cached_info()
                .state
                .last_sequence;
        }
        Ok(sum)
    }

    /// The `completed` record's data of task `id` (other tasks' completions are skipped).
    async fn completion(&mut self, id: &str) -> Res<Value> {
        let want = format!("events.bench.{id}.completed");
        loop {
            let fut = tokio::time::timeout(Duration::from_secs(30), self.completed.next());
            let m = fut
                .await?
                .ok_or_else(|| anyhow::anyhow!("subscription closed"))?;
            if m.subject.as_str() == want {
                return Ok(serde_json::from_slice::<Value>(&m.payload)?["data"].take());
            }
        }
    }

    /// Waits for `n` completions; the time since `started` when the last one arrived.
    async fn count_completions(&mut self, n: usize, started: Instant) -> Res<Duration> {
        for _ in 0..n {
            let next = tokio::time::timeout(Duration::from_secs(60), self.completed.next());
            next.await?
                .ok_or_else(|| anyhow::anyhow!("subscription closed"))?;
        }
        Ok(started.elapsed())
    }

    /// `n` tasks (64 creates in flight, P0/P1/P2 round robin) through `procs` idle worker
    /// processes of `concurrency` slots; time from the first create to the last completion.
    async fn throughput(
        &mut self,
        procs: usize,
        concurrency: usize,
        steps: u64,
        n: usize,
    ) -> Res<Value> {
        eprintln!(
            "throughput: {n} tasks, {procs} worker process(es) × {concurrency}, steps {steps} …"
        );
        let kids = self.spawn(procs, concurrency).await?;
        while let Some(Some(_)) = self.completed.next().now_or_never() {}
        let (payload, before) = (json!({"steps": steps}), self.stored().await?);
        let started = Instant::now();
        let js = self.js.clone();
        let produce = pump(n, IN_FLIGHT, |i| create(&js, PRIOS[i % 3], &payload));
        let (made, done) = tokio::join!(produce, self.count_completions(n, started));
        let secs = (made.and(done)?).as_secs_f64();
        self.stop(kids, true).await?;
        let (rate, writes) = (n as f64 / secs, self.stored().await? - before);
        let per_task = writes as f64 / n as f64;
        eprintln!("  {secs:.2} s, {rate:.0} tasks/s ({per_task:.2} stream writes per task)");
        Ok(json!({"create": "nats", "steps": steps, "procs": procs,
            "concurrency": concurrency, "tasks": n, "secs": secs, "tasks_per_s": rate,
            "stream_writes_per_task": per_task}))
    }

    /// Idle RSS of a fresh worker (2 s idle), then create → handler start, one task at a time.
    async fn latency(&mut self, samples: usize) -> Res<(f64, Value)> {
        eprintln!("idle RSS and idle latency: {WARMUP} warm-up + {samples} tasks (P1) …");
        let kids = self.spawn(1, 8).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", kids[0].id()))?;
        let kb: f64 = (status.lines().find_map(|l| l.strip_prefix("VmRSS:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
        let mut lat = Vec::new();
        for i in 0..WARMUP + samples {
            let t0 = now_us();
            let id = create(&self.js, "p1", &json!({})).await?;
            let data = self.completion(&id).await?;
            let start = data["start_us"].as_i64().unwrap_or_default();
            if i >= WARMUP {
                lat.push((start - t0) as f64 / 1000.0);
            }
        }
        self.stop(kids, true).await?;
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        let (p50, p99) = (pct(0.5), pct(0.99));
        eprintln!(
            "  RSS {:.1} MB; p50 {p50:.2} ms, p99 {p99:.2} ms",
            kb / 1024.0
        );
        Ok((
            kb / 1024.0,
            json!({"p50": p50, "p99": p99, "samples": samples}),
        ))
    }

    /// One worker, concurrency 1, busy 1 s; meanwhile `p2` P2 tasks then one P0 are queued.
    async fn p0_behind_p2(&mut self, p2: usize) -> Res<Value> {
        eprintln!("P0 behind {p2} P2: blocker 1 s, queueing …");
        let kids = self.spawn(1, 1).await?;
        let blocker = create(&self.js, "p1", &json!({"sleep_ms": 1000})).await?;
        while self
            .tasks
            .consumer_info("worker_bench_p1")
            .await?
            .num_ack_pending
            == 0
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let queueing = Instant::now();
        let (js, empty) = (self.js.clone(), json!({}));
        pump(p2, 256, |_| create(&js, "p2", &empty)).await?;
        let p0 = create(&self.js, "p0", &json!({})).await?;
        let queued_us = now_us();
        eprintln!("  queued in {:.2} s", queueing.elapsed().as_secs_f64());
        let end = self.completion(&blocker).await?["end_us"].as_i64();
        let start = self.completion(&p0).await?["start_us"].as_i64();
        self.stop(kids, false).await?;
        self.tasks.purge().await?;
        let (end, start) = (end.unwrap_or_default(), start.unwrap_or_default());
        let valid = queued_us < end;
        if !valid {
            eprintln!("  WARNING: the P0 was queued after the blocker finished; figure invalid");
        }
        let ms = (start - end) as f64 / 1000.0;
        eprintln!("  P0 start − blocker end: {ms:.2} ms (queue purged)");
        Ok(json!({"p2_queued": p2, "ms": ms, "valid": valid}))
    }

    /// Events forwarded one at a time (max_ack_pending 1) from a pull consumer of the ledger to
    /// a local HTTP receiver, acked after the 200. The events are plain ledger writes of one
    /// task (64 in flight, no compare-and-set): the figure is the forwarding, not the writing.
    async fn relay(&mut self, n: usize) -> Res<f64> {
        eprintln!("relay: {n} events, one at a time, to a local HTTP receiver …");
        let got = Arc::new(AtomicUsize::new(0));
        let (url, server) = hook_receiver(got.clone()).await?;
        let relay = tokio::spawn(forward(relay_consumer(&self.js).await?, url));
        let rid = ulid::Ulid::new().to_string();
        let started = Instant::now();
        let js = self.js.clone();
        pump(n, IN_FLIGHT, |i| progress_event(&js, &rid, i, n)).await?;
        while got.load(SeqCst) < n && started.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if got.load(SeqCst) < n {
            eprintln!(
                "  WARNING: only {} of {n} events delivered",
                got.load(SeqCst)
            );
        }
        let rate = got.load(SeqCst) as f64 / started.elapsed().as_secs_f64();
        relay.abort();
        server.abort();
        eprintln!("  {rate:.0} deliveries/s");
        Ok(rate)
    }

    /// `events` progress events of one task (written in order, acks awaited after), fanned out
    /// to [`FANOUT`] destinations as [`FANOUT_NOTE`] says; deliveries/s from the first event
    /// written until the receiver has counted every delivery.
    async fn relay_fanout(&mut self, events: usize) -> Res<Value> {
        let expected = events * FANOUT;
        eprintln!("relay fan-out: {events} events × {FANOUT} destinations = {expected} …");
        let (base, seen, server) = fanout_receiver(FANOUT).await?;
        let mut relays = Vec::new();
        for (n, c) in (destination_consumers(&self.js, FANOUT).await?)
            .into_iter()
            .enumerate()
        {
            relays.push(tokio::spawn(forward(c, format!("{base}/hook/{n}"))));
        }
        let consumer = fanout_consumer(&self.js).await?;
        let fan = tokio::spawn(fan_out(self.js.clone(), consumer, FANOUT));
        let rid = ulid::Ulid::new().to_string();
        let started = Instant::now();
        let mut stored = Vec::new();
        for i in 0..events {
            stored.push(progress_event_unacked(&self.js, &rid, i, events).await?);
        }
        for ack in stored {
            ack.await?;
        }
        let limit = Duration::from_secs(60) + Duration::from_millis(expected as u64 * 20);
        let got = || seen.lock().expect("lock").got;
        while got() < expected && started.elapsed() < limit && !fan.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        if fan.is_finished() {
            fan.await??; // it stopped early: say why
        } else {
            fan.abort();
        }
        relays.iter().for_each(|r| r.abort());
        server.abort();
        let s = seen.lock().expect("lock");
        if s.got < expected || s.out_of_order > 0 || s.unreadable > 0 {
            anyhow::bail!(
                "relay fan-out: {} of {expected} delivered, {} out of order, {} unreadable",
                s.got,
                s.out_of_order,
                s.unreadable
            );
        }
        let rate = expected as f64 / secs;
        eprintln!("  {rate:.0} deliveries/s ({secs:.2} s), in order per destination");
        let figures = json!({"events": events, "destinations": FANOUT, "deliveries": expected,
            "secs": secs, "deliveries_per_s": rate});
        Ok(figures)
    }
}

/// What the fan-out receiver has seen: per destination the highest step, and the counts.
#[derive(Default)]
struct Seen {
    /// Per destination, the highest step index (`data.done`) received so far.
    highest: Vec<Option<u64>>,
    /// Deliveries received.
    got: usize,
    /// Deliveries that arrived after a later step of their destination.
    out_of_order: usize,
    /// Requests with no step index, or to no destination.
    unreadable: usize,
}

impl Seen {
    /// Counts one POST to destination `dest` whose event is step `seq`.
    fn note(&mut self, dest: usize, seq: Option<u64>) {
        let (Some(seq), Some(highest)) = (seq, self.highest.get_mut(dest)) else {
            self.unreadable += 1;
            return;
        };
        self.got += 1;
        if highest.is_some_and(|h| seq <= h) {
            self.out_of_order += 1;
        }
        *highest = Some(highest.map_or(seq, |h| h.max(seq)));
    }
}

/// A local receiver of `destinations` webhooks (`/hook/<n>`) checking the order per
/// destination: its base URL, what it saw, and its task.
async fn fanout_receiver(
    destinations: usize,
) -> Res<(
    String,
    Arc<Mutex<Seen>>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let seen = Arc::new(Mutex::new(Seen {
        highest: vec![None; destinations],
        ..Seen::default()
    }));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook/{n}",
        axum::routing::post(
            move |axum::extract::Path(n): axum::extract::Path<usize>, body: bytes::Bytes| {
                let seq = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["data"]["done"].as_u64());
                s.lock().expect("lock").note(n, seq);
                async { "ok" }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, seen, server))
}

/// The fan-out's jobs (a work-queue stream over `deliver.bench.>`) and one durable pull
/// consumer per destination subject, one unacked job at a time.
async fn destination_consumers(js: &Context, destinations: usize) -> Res<Vec<PullConsumer>> {
    let jobs = js
        .create_stream(stream::Config {
            name: "DELIVER".into(),
            subjects: vec!["deliver.bench.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await?;
    let mut consumers = Vec::new();
    for n in 0..destinations {
        consumers.push(
            jobs.create_consumer(pull::Config {
                durable_name: Some(format!("dest_d{n}")),
                filter_subject: format!("deliver.bench.d{n}"),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                max_ack_pending: 1,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await?,
        );
    }
    Ok(consumers)
}

/// The fan-out's durable pull consumer of every new progress event of the ledger.
async fn fanout_consumer(js: &Context) -> Res<PullConsumer> {
    Ok((js.get_stream("EVENTS").await?)
        .create_consumer(pull::Config {
            durable_name: Some("fanout_bench".into()),
            filter_subject: "events.bench.*.progress".into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            max_ack_pending: 256,
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?)
}

/// Reads `consumer`'s events in stream order; per event, publishes one job to each of the
/// `destinations` subjects, waits until all are stored, then acks the event.
async fn fan_out(js: Context, consumer: PullConsumer, destinations: usize) -> Res<()> {
    let mut msgs = consumer.messages().await?;
    while let Some(m) = msgs.next().await {
        let m = m?;
        let mut stored = Vec::with_capacity(destinations);
        for n in 0..destinations {
            let subject = format!("deliver.bench.d{n}");
            stored.push(js.publish(subject, m.payload.clone()).await?);
        }
        for ack in stored {
            ack.await?;
        }
        m.ack().await.map_err(boxed)?;
    }
    Ok(())
}

/// A local webhook receiver counting its POSTs into `count`: its URL and its task.
async fn hook_receiver(
    count: Arc<AtomicUsize>,
) -> Res<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |_: bytes::Bytes| async move {
            count.fetch_add(1, SeqCst);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    Ok((
        url,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    ))
}

/// A durable pull consumer of every new stored event, one unacked at a time.
async fn relay_consumer(js: &Context) -> Res<PullConsumer> {
    let events = js.get_stream("EVENTS").await?;
    Ok(events
        .create_consumer(pull::Config {
            durable_name: Some("relay_bench".into()),
            filter_subject: "events.>".into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            max_ack_pending: 1,
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?)
}

/// POSTs each message to `url` (retrying until a 200), then acks it.
async fn forward(consumer: PullConsumer, url: String) {
    let Ok(mut msgs) = consumer.messages().await else {
        eprintln!("  relay: cannot pull events");
        return;
    };
    let http = reqwest::Client::new();
    while let Some(Ok(m)) = msgs.next().await {
        loop {
            let post = http.post(&url).header("content-type", "application/json");
            match post.body(m.payload.clone()).send().await {
                Ok(r) if r.status() == 200 => break,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let _ = m.ack().await;
    }
}

/// Writes progress event `i` of `n` of task `rid` to the ledger (stored as an event).
async fn progress_event(js: &Context, rid: &str, i: usize, n: usize) -> Res<()> {
    progress_event_unacked(js, rid, i, n).await?.await?;
    Ok(())
}

/// Sends progress event `i` of `n` of task `rid` to the ledger; its stream ack, to await.
async fn progress_event_unacked(
    js: &Context,
    rid: &str,
    i: usize,
    n: usize,
) -> Res<jetstream::context::PublishAckFuture> {
    let evt = format!("evt_{rid}_p{i}");
    let body = json!({"id": evt, "task_id": rid, "assigned_to": "bench", "type": "progress",
        "time": now_text(), "attempt": 1, "operator": "bench", "data": {"done": i, "total": n}});
    let subject = format!("ledger.bench.{rid}.progress");
    let body = serde_json::to_vec(&body)?.into();
    Ok(js.publish_with_headers(subject, msg_id(&evt), body).await?)
}

/// The queue (a work-queue stream like taskfleet's `TASKS`, with its three worker consumers)
/// and the ledger (taskfleet's own `EVENTS` config).
async fn setup(js: &Context) -> Res<stream::Stream> {
    let tasks = js
        .create_stream(stream::Config {
            name: "TASKS".into(),
            subjects: vec!["tasks.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: 1,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            max_message_size: 2 * 1024 * 1024,
            ..Default::default()
        })
        .await?;
    let ledger = taskfleet::bus::ledger_config(&taskfleet::bus::TopologyConfig::default());
    js.create_stream(ledger).await?;
    for p in PRIOS {
        let _: PullConsumer = (tasks.create_consumer(pull::Config {
            durable_name: Some(format!("worker_bench_{p}")),
            filter_subject: format!("tasks.bench.{p}.*"),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 10_000,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        }))
        .await?;
    }
    Ok(tasks)
}

/// A fresh nats-server (the repo's `nats.conf`, a temporary store, a free port) and its version.
async fn start_nats(dir: &std::path::Path) -> Res<(taskfleet::natsd::LocalNats, String)> {
    let bin = taskfleet::natsd::find_binary(None)?;
    let out = Command::new(&bin).arg("--version").output()?.stdout;
    let version = String::from_utf8_lossy(&out)
        .trim()
        .replace("nats-server: v", "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nats = taskfleet::natsd::LocalNats::start(&taskfleet::natsd::LocalNatsOptions {
        bin: Some(bin),
        conf: concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf").into(),
        store_dir: dir.join("nats"),
        log_file: dir.join("nats.log"),
        port,
    })
    .await?;
    Ok((nats, version))
}

/// The driver: every scenario in turn on one server; the result object.
async fn drive(b: &mut Bench, args: &Args) -> Res<Value> {
    let quick = args.flag("--quick");
    let pick = |q: usize, full: usize| if quick { q } else { full };
    let n = args.num("--tasks", pick(500, 5000));
    // The relay sizes are taskfleet's and BullMQ's (a few seconds each).
    let (samples, p2, relay_n) = (pick(50, 300), pick(1000, 10_000), pick(300, 20_000));
    let fanout_n = args.num("--relay-fanout-events", pick(20, 1000));
    let sample = task_body(&ulid::Ulid::new().to_string(), "p0", &json!({"steps": 0}));
    eprintln!("task message: {} bytes", sample.len());
    let mut rows = Vec::new();
    for (procs, concurrency, steps) in MATRIX {
        rows.push(b.throughput(procs, concurrency, steps, n).await?);
    }
    let (rss, latency) = b.latency(samples).await?;
    let p0 = b.p0_behind_p2(p2).await?;
    let relay = b.relay(relay_n).await?;
    let fanout = b.relay_fanout(fanout_n).await?;
    Ok(json!({
        "system": "raw-jetstream", "tasks": n, "concurrency": 8,
        "writes_note": WRITES_NOTE,
        "throughput": rows,
        "idle_latency_ms": latency,
        "p0_behind_p2_ms": p0,
        "relay_per_s": relay,
        "relay_fanout_per_s": fanout["deliveries_per_s"],
        "relay_fanout_note": FANOUT_NOTE,
        "extra": {"relay_fanout": fanout},
        "rss_mb": {"worker": rss, "api": null},
    }))
}

#[tokio::main]
async fn main() -> Res<()> {
    let args = Args(std::env::args().collect());
    if args.0.get(1).map(String::as_str) == Some("worker") {
        return worker(&args).await;
    }
    let total = Instant::now();
    let dir = tempfile::tempdir()?;
    let (nats, version) = start_nats(dir.path()).await?;
    let client = async_nats::connect(&nats.url).await?;
    let js = jetstream::new(client.clone());
    let tasks = setup(&js).await?;
    let mut b = Bench {
        completed: client.subscribe("events.bench.*.completed").await?,
        ready: client.subscribe("bench.ready").await?,
        js,
        client,
        url: nats.url.clone(),
        tasks,
    };
    b.client.flush().await?;
    let result = drive(&mut b, &args).await;
    nats.stop().await;
    let mut result = result?;
    result["versions"] = json!({"nats-server": version, "async-nats": "0.51"});
    let line = serde_json::to_string(&result)?;
    if let Some(path) = args.get("--out") {
        std::fs::write(path, format!("{line}\n"))?;
    }
    eprintln!("done in {:.1} s", total.elapsed().as_secs_f64());
    println!("{line}");
    Ok(())
}
