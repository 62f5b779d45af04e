//! `make bench`, raw JetStream column: the floor under taskfleet. A plain async-nats program
//! (no taskfleet logic; `taskfleet::natsd` only starts the server) doing per task the same
//! JetStream writes taskfleet does: queue publish; then in the worker KV create, `created`, KV
//! update (running, CAS), `started`, KV update (completed, CAS), `completed`, ack. Event acks are
//! pipelined (awaited together before the queue ack; `--serial` awaits each one); KV writes wait
//! for their revision (the next CAS needs it). The worker reads nothing but its queue messages.
//! Output per the bench contract (issue 7): progress on stderr, one JSON object last on stdout.
//!
//! Run: `cargo run --release --example bench_raw -- [--tasks 5000] [--quick] [--out FILE]
//!       [--state-writes 3] [--event-writes 3] [--serial]`

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, kv, stream, Context, Message};
use async_nats::{HeaderMap, Subscriber};
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{atomic::AtomicUsize, atomic::Ordering::SeqCst, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const PRIOS: [&str; 3] = ["p0", "p1", "p2"];
const WARMUP: usize = 20;
type Res<T> = anyhow::Result<T>;

struct Args(Vec<String>);

impl Args {
    fn num(&self, name: &str, default: usize) -> usize {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    fn get(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).map(String::as_str)
    }
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}

fn boxed(e: async_nats::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

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

struct Worker {
    js: Context,
    kv: kv::Store,
    state_writes: usize,
    event_writes: usize,
    serial: bool,
    name: String,
}

/// One task's writes in order; event acks are collected in `acks` unless `serial`.
struct Run<'a> {
    w: &'a Worker,
    id: String,
    task: Value,
    rev: u64,
    events: usize,
    acks: Vec<jetstream::context::PublishAckFuture>,
}

impl Run<'_> {
    async fn state(&mut self, status: &str, done: u64) -> Res<()> {
        let obj = self.task.as_object_mut().expect("task is an object");
        obj.insert("status".into(), status.into());
        obj.insert("attempt".into(), 1.into());
        obj.insert(
            "updated_time".into(),
            chrono::Utc::now().to_rfc3339().into(),
        );
        obj.insert("progress".into(), json!({"done": done, "total": 0}));
        obj.insert(
            "lease".into(),
            json!({"holder": self.w.name, "token": "1.0"}),
        );
        let value: bytes::Bytes = serde_json::to_vec(&self.task)?.into();
        self.rev = match self.rev {
            0 => self.w.kv.create(&self.id, value).await?,
            rev => self.w.kv.update(&self.id, value, rev).await?,
        };
        Ok(())
    }

    async fn event(&mut self, kind: &str, data: Value) -> Res<()> {
        let (id, time) = (&self.id, chrono::Utc::now().to_rfc3339());
        let evt = format!("evt_{id}_{}_{kind}", self.events); // unique: Nats-Msg-Id dedups
        self.events += 1;
        let body = json!({"id": evt, "task_id": id, "assigned_to": "bench", "type": kind,
            "time": time, "attempt": 1, "operator": self.w.name, "data": data});
        let subject = format!("events.bench.{id}.{kind}");
        let ack = (self.w.js)
            .publish_with_headers(subject, msg_id(&evt), serde_json::to_vec(&body)?.into())
            .await?;
        if self.w.serial {
            ack.await?;
        } else {
            self.acks.push(ack);
        }
        Ok(())
    }
}

fn event_kind(i: usize, n: usize) -> String {
    match i {
        _ if i + 1 == n => "completed".into(),
        0 => "created".into(),
        1 => "started".into(),
        i => format!("event{i}"),
    }
}

/// Writes before the handler (all but the last state write and the last event, interleaved),
/// the handler (sleep, steps), then the last state write and the `completed` event.
async fn run_task(w: &Worker, msg: &Message) -> Res<()> {
    let id = (msg.headers.as_ref())
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.to_string())
        .ok_or_else(|| anyhow::anyhow!("no Nats-Msg-Id"))?;
    let task: Value = serde_json::from_slice(&msg.payload)?;
    let num = |k: &str| task["payload"][k].as_u64().unwrap_or(0);
    let (steps, sleep_ms) = (num("steps"), num("sleep_ms"));
    let mut r = Run {
        w,
        id,
        task,
        rev: 0,
        events: 0,
        acks: Vec::new(),
    };
    let (n, m) = (w.state_writes, w.event_writes);
    for i in 0..(n.max(m) - 1) {
        if i + 1 < n {
            r.state(if i == 0 { "pending" } else { "running" }, 0)
                .await?;
        }
        if i + 1 < m {
            r.event(&event_kind(i, m), Value::Null).await?;
        }
    }
    let start_us = now_us(); // handler start: after the running-state write
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    for s in 1..=steps {
        r.state("running", s).await?;
        r.event("step", json!({"index": s - 1, "step": format!("step {s}")}))
            .await?;
    }
    let end_us = now_us();
    r.state("completed", steps).await?;
    let data = json!({"start_us": start_us, "end_us": end_us, "result": "ok"});
    r.event("completed", data).await?;
    for ack in r.acks.drain(..) {
        ack.await?;
    }
    Ok(())
}

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
    let w = Arc::new(Worker {
        kv: js.get_key_value("tasks").await?,
        js,
        state_writes: args.num("--state-writes", 3).max(1),
        event_writes: args.num("--event-writes", 3).max(1),
        serial: args.flag("--serial"),
        name: format!("raw-worker-{}", std::process::id()),
    });
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

struct Bench {
    js: Context,
    client: async_nats::Client,
    url: String,
    tasks: stream::Stream,
    worker_args: Vec<String>,
    completed: Subscriber,
    ready: Subscriber,
}

impl Bench {
    async fn spawn(&mut self, procs: usize, concurrency: usize) -> Res<Vec<Child>> {
        let exe = std::env::current_exe()?;
        let mut kids = Vec::new();
        for _ in 0..procs {
            let mut cmd = Command::new(&exe);
            cmd.args(["worker", "--url", &self.url, "--concurrency"])
                .arg(concurrency.to_string())
                .args(&self.worker_args);
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

    /// Messages ever stored in the queue, event and state streams (a check on the write count).
    async fn stored(&self) -> Res<u64> {
        let mut sum = 0;
        for name in ["TASKS", "EVENTS", "KV_tasks"] {
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

    /// The `completed` event of task `id` (other tasks' completions are skipped).
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

    async fn throughput(&mut self, procs: usize, steps: u64, n: usize) -> Res<Value> {
        eprintln!("throughput: {n} tasks, {procs} worker process(es) × 8, steps {steps} …");
        let kids = self.spawn(procs, 8).await?;
        while let Some(Some(_)) = self.completed.next().now_or_never() {}
        let (payload, before) = (json!({"steps": steps}), self.stored().await?);
        let started = Instant::now();
        let js = self.js.clone();
        let produce = pump(n, 64, |i| create(&js, PRIOS[i % 3], &payload));
        let completed = &mut self.completed;
        let count = async {
            for _ in 0..n {
                let next = tokio::time::timeout(Duration::from_secs(60), completed.next());
                next.await?
                    .ok_or_else(|| anyhow::anyhow!("subscription closed"))?;
            }
            Ok::<_, anyhow::Error>(started.elapsed())
        };
        let (made, done) = tokio::join!(produce, count);
        let secs = (made.and(done)?).as_secs_f64();
        self.stop(kids, true).await?;
        let (rate, writes) = (n as f64 / secs, self.stored().await? - before);
        let per_task = writes as f64 / n as f64;
        eprintln!("  {secs:.2} s, {rate:.0} tasks/s ({per_task:.2} stream writes per task)");
        Ok(
            json!({"create": "nats", "steps": steps, "procs": procs, "tasks": n,
            "secs": secs, "tasks_per_s": rate, "stream_writes_per_task": per_task}),
        )
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

    /// Events forwarded one at a time (max_ack_pending 1) from a pull consumer to a local
    /// HTTP receiver; acked after the 200.
    async fn relay(&mut self, n: usize) -> Res<f64> {
        eprintln!("relay: {n} events, one at a time, to a local HTTP receiver …");
        let got = Arc::new(AtomicUsize::new(0));
        let count = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |_: bytes::Bytes| async move {
                count.fetch_add(1, SeqCst);
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let events = self.js.get_stream("EVENTS").await?;
        let consumer: PullConsumer = (events.create_consumer(pull::Config {
            durable_name: Some("relay_bench".into()),
            filter_subject: "events.>".into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            max_ack_pending: 1,
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        }))
        .await?;
        let mut msgs = consumer.messages().await?;
        let relay = tokio::spawn(async move {
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
        });
        let rid = ulid::Ulid::new().to_string();
        let started = Instant::now();
        let js = self.js.clone();
        pump(n, 64, |i| {
            let (js, evt) = (js.clone(), format!("evt_{rid}_p{i}"));
            let body = json!({"id": evt, "task_id": rid, "assigned_to": "bench",
                "type": "progress", "time": chrono::Utc::now().to_rfc3339(),
                "attempt": 1, "operator": "bench", "data": {"done": i, "total": n}});
            let subject = format!("events.bench.{rid}.progress");
            async move {
                let body = serde_json::to_vec(&body)?.into();
                Ok(js
                    .publish_with_headers(subject, msg_id(&evt), body)
                    .await?
                    .await?)
            }
        })
        .await?;
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
}

async fn setup(js: &Context) -> Res<stream::Stream> {
    let base = stream::Config {
        storage: stream::StorageType::File,
        num_replicas: 1,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        max_message_size: 2 * 1024 * 1024,
        ..Default::default()
    };
    let tasks = js
        .create_stream(stream::Config {
            name: "TASKS".into(),
            subjects: vec!["tasks.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..base.clone()
        })
        .await?;
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..base
    })
    .await?;
    js.create_key_value(kv::Config {
        bucket: "tasks".into(),
        history: 1,
        storage: stream::StorageType::File,
        max_value_size: 2 * 1024 * 1024,
        ..Default::default()
    })
    .await?;
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

#[tokio::main]
async fn main() -> Res<()> {
    let args = Args(std::env::args().collect());
    if args.0.get(1).map(String::as_str) == Some("worker") {
        return worker(&args).await;
    }
    let quick = args.flag("--quick");
    let pick = |q: usize, full: usize| if quick { q } else { full };
    let n = args.num("--tasks", pick(500, 5000));
    let (samples, p2, relay_n) = (pick(50, 300), pick(1000, 10_000), pick(300, 3000));
    let (sw, ew) = (args.num("--state-writes", 3), args.num("--event-writes", 3));
    let serial = args.flag("--serial");
    let total = Instant::now();
    let bin = taskfleet::natsd::find_binary(None)?;
    let out = Command::new(&bin).arg("--version").output()?.stdout;
    let version = String::from_utf8_lossy(&out)
        .trim()
        .replace("nats-server: v", "");
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nats = taskfleet::natsd::LocalNats::start(&taskfleet::natsd::LocalNatsOptions {
        bin: Some(bin),
        conf: concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf").into(),
        store_dir: dir.path().join("nats"),
        log_file: dir.path().join("nats.log"),
        port,
    })
    .await?;
    let client = async_nats::connect(&nats.url).await?;
    let js = jetstream::new(client.clone());
    let tasks = setup(&js).await?;
    let mut worker_args = vec!["--state-writes".into(), sw.to_string()];
    worker_args.extend(["--event-writes".into(), ew.to_string()]);
    if serial {
        worker_args.push("--serial".into());
    }
    let mut b = Bench {
        completed: client.subscribe("events.bench.*.completed").await?,
        ready: client.subscribe("bench.ready").await?,
        js,
        client,
        url: nats.url.clone(),
        tasks,
        worker_args,
    };
    b.client.flush().await?;
    let sample = task_body(&ulid::Ulid::new().to_string(), "p0", &json!({"steps": 0}));
    eprintln!("task message: {} bytes", sample.len());
    let mut rows = Vec::new();
    for (procs, steps) in [(1, 0), (1, 3), (2, 0), (4, 0)] {
        rows.push(b.throughput(procs, steps, n).await?);
    }
    let (rss, latency) = b.latency(samples).await?;
    let p0 = b.p0_behind_p2(p2).await?;
    let relay = b.relay(relay_n).await?;
    nats.stop().await;
    let result = json!({
        "system": "raw-jetstream",
        "versions": {"nats-server": version, "async-nats": "0.51"},
        "tasks": n, "concurrency": 8,
        "writes_per_task": 1 + sw.max(1) + ew.max(1),
        "event_acks": if serial { "awaited" } else { "pipelined" },
        "throughput": rows,
        "idle_latency_ms": latency,
        "p0_behind_p2_ms": p0,
        "relay_per_s": relay,
        "rss_mb": {"worker": rss, "api": null},
    });
    let line = serde_json::to_string(&result)?;
    if let Some(path) = args.get("--out") {
        std::fs::write(path, format!("{line}\n"))?;
    }
    eprintln!("done in {:.1} s", total.elapsed().as_secs_f64());
    println!("{line}");
    Ok(())
}
