//! `make bench-scale`: the read routes of the API with a large store. Loads tasks in stages (by
//! default up to 10,000, 100,000 and 1,000,000 stored), as a bot fleet would have them: ~10
//! assignees, most tasks `noop` tasks published straight to `tasks.<a>.<p>.noop` and completed by
//! real `taskfleet worker` processes, a small share failed, cancelled, pending, running and dead
//! (through `taskfleet::tasks::TaskService`, as the API and workers do it), and relay deliveries
//! made by a real `taskfleet relay` to a local webhook receiver. After each stage the workers and
//! the relay stop and every read route is timed over HTTP against the `taskfleet api` process;
//! with its RSS, the store's bytes on disk per finished task and the load rate.
//!
//! Progress goes to stderr; the table to stdout; the figures as JSON to `--out` (default
//! `docs/benchmarks-scale.json`, rewritten after every stage). Never a test: nothing fails on the
//! figures. Run: `make bench-scale [ARGS="--stages 10000,100000"]`, or
//! `cargo build --release --bin taskfleet --example bench_scale &&
//!  target/release/examples/bench_scale --help`.
//!
//! Memory: nothing here grows with the tasks stored but a fixed-size sample of their ids (a
//! reservoir) and the counts.

#![deny(unsafe_code)]

#[path = "bench/fleet.rs"]
#[allow(dead_code)]
mod fleet;

use anyhow::{bail, Context};
use fleet::{cpu_secs, rss_mb, Fleet};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskfleet::bus::{encode, message_headers, subjects};
use taskfleet::domain::{Assignee, NewTask, Priority, Task, TaskId};
use taskfleet::tasks::{ClaimOutcome, Delivery, QueuedMessage, TaskService};

/// The latency each read route must stay under at p99 (ms).
const LIMIT_MS: f64 = 25.0;
/// Tasks published per chunk of a stage; the other statuses of the chunk are made meanwhile, so
/// they are spread over the whole ledger rather than bunched at one end.
const CHUNK: u64 = 5_000;
/// Task ids kept for picking random tasks (a uniform sample of every id created).
const SAMPLE: usize = 4_096;
/// Task-service calls in flight while making the other statuses.
const OTHERS_IN_FLIGHT: usize = 16;
/// Page size asked of every listing.
const PAGE: usize = 100;
/// Timed requests a route gets at least, however slow it is (see `--route-budget-s`).
const MIN_SAMPLES: usize = 20;
/// How long progress lines are apart.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The drain of the queue gives up when nothing moved for this long.
const STALL_LIMIT: Duration = Duration::from_secs(120);

const HELP: &str = "usage: bench_scale [--stages 10000,100000,1000000] [--out FILE] \
    [--samples 300] [--warmup 30] [--assignees 10] [--procs 1] [--concurrency 64] \
    [--in-flight 256] [--backlog 20000] [--stuck 20] [--relay-wait-s 900] [--no-relay] \
    [--settle-s 2] [--no-restart] \
    [--route-budget-s 60] [--routes TEXT,…] [--store DIR [--measure-only]]

  --stages       tasks stored after each stage (cumulative), ascending
  --out          where the JSON goes (rewritten after every stage)
  --samples      timed requests per route (after --warmup untimed ones)
  --assignees    assignees bench-a00…; one worker set each
  --procs        `taskfleet worker` processes per assignee, each --concurrency
  --in-flight    JetStream publishes in flight while loading
  --backlog      queued noop tasks the loader lets build up before it waits
  --stuck        per stage: pending tasks whose `created` goes to a receiver answering 503
  --relay-wait-s how long to wait after loading for the relay to catch up
  --no-relay     no relay (no deliveries)
  --settle-s     how long to wait after the workers and the relay stop before measuring
  --no-restart   measure each stage once, on the server that just loaded it (by default it is
                 then stopped, started again on the same store and measured again: a server
                 that has just absorbed a load collects garbage for longer; docs/benchmarks.md)
  --route-budget-s  a route slower than this in all stops early (at least 20 timed requests)
  --routes       measure only the routes whose name contains one of these texts (say,
                 `status=running,/logs`), to see one route without the others' effects
  --store        keep the store in DIR (DIR/nats, and DIR/loaded.json: what was loaded and
                 the sampled ids); DIR must be empty or not exist, unless --measure-only
  --measure-only with --store: load nothing, measure the read routes of the store in DIR
                 (nats-server and the API only; the stages and loading flags are ignored)";

/// Command-line options.
struct Opts {
    /// Tasks stored after each stage (cumulative, ascending).
    stages: Vec<u64>,
    /// Where the JSON goes.
    out: PathBuf,
    /// Timed requests per route.
    samples: usize,
    /// Untimed requests per route first.
    warmup: usize,
    /// How many assignees.
    assignees: usize,
    /// Worker processes per assignee.
    procs: usize,
    /// `--concurrency` of each worker process.
    concurrency: usize,
    /// JetStream publishes in flight while loading.
    in_flight: usize,
    /// Queued noop tasks the loader lets build up before it waits for the workers.
    backlog: u64,
    /// Pending tasks with a stuck delivery, per stage.
    stuck: u64,
    /// How long to wait for the relay after loading.
    relay_wait: Duration,
    /// Whether the relay runs (deliveries).
    relay: bool,
    /// How long to wait after the workers and the relay stop before measuring.
    settle: Duration,
    /// Whether each stage is measured again on a restarted server.
    restart: bool,
    /// Time after which a slow route stops early.
    route_budget: Duration,
    /// Texts one of which a measured route's name contains (all routes when empty).
    routes: Vec<String>,
    /// Where the store is kept (`--store`), if it outlives the run.
    store: Option<PathBuf>,
    /// Measure the kept store without loading (`--measure-only`).
    measure_only: bool,
}

/// Parses the command line (see [`HELP`]).
fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        stages: vec![10_000, 100_000, 1_000_000],
        out: PathBuf::from("docs/benchmarks-scale.json"),
        samples: 300,
        warmup: 30,
        assignees: 10,
        procs: 1,
        concurrency: 64,
        in_flight: 256,
        backlog: 20_000,
        stuck: 20,
        relay_wait: Duration::from_secs(900),
        relay: true,
        settle: Duration::from_secs(2),
        restart: true,
        route_budget: Duration::from_secs(60),
        routes: Vec::new(),
        store: None,
        measure_only: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--stages" => {
                o.stages = value()?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse())
                    .collect::<Result<_, _>>()?
            }
            "--out" => o.out = PathBuf::from(value()?),
            "--samples" => o.samples = value()?.parse()?,
            "--warmup" => o.warmup = value()?.parse()?,
            "--assignees" => o.assignees = value()?.parse()?,
            "--procs" => o.procs = value()?.parse()?,
            "--concurrency" => o.concurrency = value()?.parse()?,
            "--in-flight" => o.in_flight = value()?.parse()?,
            "--backlog" => o.backlog = value()?.parse()?,
            "--stuck" => o.stuck = value()?.parse()?,
            "--relay-wait-s" => o.relay_wait = Duration::from_secs(value()?.parse()?),
            "--no-relay" => o.relay = false,
            "--settle-s" => o.settle = Duration::from_secs(value()?.parse()?),
            "--no-restart" => o.restart = false,
            "--route-budget-s" => o.route_budget = Duration::from_secs(value()?.parse()?),
            "--routes" => o.routes = value()?.split(',').map(str::to_string).collect(),
            "--store" => o.store = Some(PathBuf::from(value()?)),
            "--measure-only" => o.measure_only = true,
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{HELP}"),
        }
    }
    let ascending = o.stages.windows(2).all(|w| w[0] < w[1]);
    if o.stages.is_empty() || o.stages[0] == 0 || !ascending {
        bail!("--stages must be ascending counts above 0");
    }
    check_store(&o)?;
    if [o.samples, o.assignees, o.procs, o.concurrency, o.in_flight].contains(&0) {
        bail!("--samples, --assignees, --procs, --concurrency and --in-flight must be at least 1");
    }
    Ok(o)
}

/// `--store` and `--measure-only` make sense together: a store to load must start empty, a
/// store to measure must have been loaded by an earlier run.
fn check_store(o: &Opts) -> anyhow::Result<()> {
    let Some(dir) = &o.store else {
        match o.measure_only {
            true => bail!("--measure-only needs --store DIR (a store an earlier run kept)"),
            false => return Ok(()),
        }
    };
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    match (o.measure_only, empty) {
        (false, false) => bail!(
            "{} is not empty: give an empty directory to load into, or add --measure-only \
             to measure the store it holds",
            dir.display()
        ),
        (true, _) if !dir.join(LOADED).is_file() => bail!(
            "{} holds no {LOADED}: load a store into it first (`--store {}` without \
             --measure-only)",
            dir.display(),
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// The file in a `--store` directory that says what was loaded into it.
const LOADED: &str = "loaded.json";

/// What a kept store holds, for a later `--measure-only` run.
#[derive(serde::Serialize, serde::Deserialize)]
struct Loaded {
    /// The tasks of each kind.
    counts: Mix,
    /// The sampled ids (a uniform sample of every task created).
    sample: Reservoir,
    /// How many assignees the tasks went to (`--assignees` of the loading run).
    #[serde(default)]
    assignees: Option<usize>,
}

/// A uniform sample of the task ids created so far (Algorithm R): the only ids kept in memory.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Reservoir {
    /// At most [`SAMPLE`] ids.
    ids: Vec<String>,
    /// Ids offered so far.
    seen: u64,
}

impl Reservoir {
    /// Offers one more id; it replaces a kept one with probability `SAMPLE / seen`.
    fn offer(&mut self, id: &TaskId) {
        self.seen += 1;
        if self.ids.len() < SAMPLE {
            self.ids.push(id.as_str().to_string());
        } else {
            let j = rand::random_range(0..self.seen) as usize;
            if j < SAMPLE {
                self.ids[j] = id.as_str().to_string();
            }
        }
    }

    /// A random id of the sample.
    fn pick(&self) -> &str {
        &self.ids[rand::random_range(0..self.ids.len())]
    }
}

/// What is made besides the tasks the workers complete.
#[derive(Debug, Clone, Copy)]
enum Other {
    /// Created, started and failed over the task service (no dead letter).
    Failed,
    /// Created and cancelled while pending.
    Cancelled,
    /// Created and left pending (a manual task nobody claimed yet).
    Pending,
    /// Created and started by a bot that still holds it.
    Running,
    /// Used up its one attempt: claimed by a worker, redelivered, given up (a dead letter).
    Dead,
    /// Pending, with a `notify` webhook that answers 503: its delivery stays pending.
    Stuck,
}

/// How many tasks of each kind a stage (or a chunk of it, or the whole store) has.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Mix {
    /// Completed by the workers (published straight to NATS).
    noop: u64,
    /// Failed over the task service.
    failed: u64,
    /// Cancelled while pending.
    cancelled: u64,
    /// Pending manual tasks.
    pending: u64,
    /// Running manual tasks.
    running: u64,
    /// Failed after their only attempt, dead-lettered.
    dead: u64,
    /// Pending tasks with a stuck delivery.
    stuck: u64,
}

impl Mix {
    /// The mix of `n` new tasks: 1 % failed, 0.1 % cancelled, 0.1 % pending, 0.005 % running,
    /// 0.01 % dead (at least one of each), `stuck` pending with a stuck delivery, the rest noop.
    fn for_stage(n: u64, stuck: u64) -> Self {
        let share = |per: u64| (n / per).max(1);
        let mut m = Self {
            noop: 0,
            failed: share(100),
            cancelled: share(1_000),
            pending: share(1_000),
            running: share(20_000),
            dead: share(10_000),
            stuck,
        };
        m.noop = n.saturating_sub(m.total());
        m
    }

    /// Chunk `i` of `chunks`: an even share of each kind (all stuck tasks in the first chunk,
    /// so the relay reaches them early).
    fn chunk(&self, i: u64, chunks: u64) -> Self {
        let part = |total: u64| total * (i + 1) / chunks - total * i / chunks;
        Self {
            noop: part(self.noop),
            failed: part(self.failed),
            cancelled: part(self.cancelled),
            pending: part(self.pending),
            running: part(self.running),
            dead: part(self.dead),
            stuck: if i == 0 { self.stuck } else { 0 },
        }
    }

    /// The other kinds, one entry per task, interleaved.
    fn others(&self) -> Vec<Other> {
        let kinds = [
            (Other::Stuck, self.stuck),
            (Other::Failed, self.failed),
            (Other::Cancelled, self.cancelled),
            (Other::Pending, self.pending),
            (Other::Running, self.running),
            (Other::Dead, self.dead),
        ];
        let most = kinds.iter().map(|k| k.1).max().unwrap_or(0);
        (0..most)
            .flat_map(|i| kinds.iter().filter(move |k| i < k.1).map(|k| k.0))
            .collect()
    }

    /// Adds `o` to this one.
    fn add(&mut self, o: &Self) {
        self.noop += o.noop;
        self.failed += o.failed;
        self.cancelled += o.cancelled;
        self.pending += o.pending;
        self.running += o.running;
        self.dead += o.dead;
        self.stuck += o.stuck;
    }

    /// Every task.
    fn total(&self) -> u64 {
        self.noop
            + self.failed
            + self.cancelled
            + self.pending
            + self.running
            + self.dead
            + self.stuck
    }

    /// Finished tasks (completed, failed, cancelled, dead).
    fn finished(&self) -> u64 {
        self.noop + self.failed + self.cancelled + self.dead
    }

    /// Manual tasks that keep their queue message (pending and running).
    fn queued(&self) -> u64 {
        self.pending + self.running + self.stuck
    }
}

/// The local webhook receiver's counts: `/hook` answers 200, and 400 to every 10th delivery (a
/// permanent failure: dead at once); `/stuck/{n}` answers 503 (retried in an hour: pending).
#[derive(Default)]
struct Hooks {
    /// `/hook` answered 200.
    delivered: AtomicU64,
    /// `/hook` answered 400.
    refused: AtomicU64,
    /// `/stuck/{n}` answered 503.
    stuck: AtomicU64,
}

impl Hooks {
    /// The counts as JSON.
    fn json(&self) -> Value {
        json!({
            "answered_200": self.delivered.load(Ordering::Relaxed),
            "answered_400": self.refused.load(Ordering::Relaxed),
            "answered_503": self.stuck.load(Ordering::Relaxed),
        })
    }
}

/// Serves [`Hooks`] on a random local port; returns its base URL.
async fn serve_hooks(hooks: Arc<Hooks>) -> anyhow::Result<String> {
    use axum::http::StatusCode;
    let (h, s) = (hooks.clone(), hooks);
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move || {
                let h = h.clone();
                async move {
                    let n = h.delivered.load(Ordering::Relaxed) + h.refused.load(Ordering::Relaxed);
                    if n % 10 == 9 {
                        h.refused.fetch_add(1, Ordering::Relaxed);
                        StatusCode::BAD_REQUEST
                    } else {
                        h.delivered.fetch_add(1, Ordering::Relaxed);
                        StatusCode::OK
                    }
                }
            }),
        )
        .route(
            "/stuck/{n}",
            axum::routing::post(move || {
                let s = s.clone();
                async move {
                    s.stuck.fetch_add(1, Ordering::Relaxed);
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// Writes the relay's config: `completed` of `routed` to `<base>/hook`; a failed delivery is
/// retried once, an hour later (so a 503 leaves it pending for the whole run).
fn relay_config(dir: &Path, base: &str, routed: &Assignee) -> anyhow::Result<PathBuf> {
    let path = dir.join("relay.toml");
    let toml = format!(
        r#"[relay]
allow = ["127.0.0.1/32"]
retry_schedule_s = [0, 3600]

[relay.destinations.hook]
type = "webhook"
url = "{base}/hook"
events = ["completed"]

[[relay.routes]]
assignees = ["{routed}"]
events = ["completed"]
destinations = ["hook"]
"#
    );
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// The create body of a manual task (the other statuses).
fn manual(assignee: &Assignee, priority: Priority, name: &str) -> NewTask {
    serde_json::from_value(json!({
        "task_name": name, "assigned_to": assignee.as_str(), "priority": priority.as_str(),
        "created_by": "bench-scale", "description": "made by examples/bench_scale.rs",
    }))
    .expect("valid create body")
}

/// The create body of a noop task and its queue subject.
fn noop(assignee: &Assignee, priority: Priority) -> (String, NewTask) {
    let new: NewTask = serde_json::from_value(json!({
        "task_name": "nightly digest", "assigned_to": assignee.as_str(),
        "priority": priority.as_str(), "kind": "noop", "created_by": "cron",
        "payload": {"source": "bench-scale"},
    }))
    .expect("valid create body");
    (
        subjects::task(&new.assigned_to, new.priority, new.kind, new.share()),
        new,
    )
}

/// The benchmark: the fleet, what was loaded so far, and how to load more.
struct Bench {
    /// nats-server, the API process, workers and relay while loading.
    fleet: Fleet,
    /// The command line.
    opts: Opts,
    /// The task service on the benchmark's own connection (the other statuses).
    tasks: TaskService,
    /// `bench-a00`, `bench-a01`, …
    assignees: Vec<Assignee>,
    /// Create bodies of noop tasks, per assignee × priority, with their subjects.
    bodies: Vec<(String, NewTask)>,
    /// Ids to pick random tasks from.
    sample: Mutex<Reservoir>,
    /// Everything loaded so far.
    counts: Mix,
    /// The webhook receiver's counts.
    hooks: Arc<Hooks>,
    /// The webhook receiver's base URL.
    hook_base: String,
    /// The relay's config file.
    relay_config: PathBuf,
}

impl Bench {
    /// Starts a fresh fleet (nats-server and the API process) and the webhook receiver.
    async fn start(mut opts: Opts) -> anyhow::Result<Self> {
        let loaded = match (&opts.store, opts.measure_only) {
            (Some(dir), true) => serde_json::from_slice(&std::fs::read(dir.join(LOADED))?)?,
            _ => Loaded {
                counts: Mix::default(),
                sample: Reservoir::default(),
                assignees: None,
            },
        };
        opts.assignees = loaded.assignees.unwrap_or(opts.assignees);
        let store = opts.store.as_ref().map(|d| d.join("nats"));
        let fleet = Fleet::start_on(true, store).await?;
        let assignees: Vec<Assignee> = (0..opts.assignees)
            .map(|i| Assignee::parse(&format!("bench-a{i:02}")))
            .collect::<Result<_, _>>()?;
        let bodies = assignees
            .iter()
            .flat_map(|a| Priority::ALL.iter().map(|p| noop(a, *p)))
            .collect();
        let hooks = Arc::new(Hooks::default());
        let hook_base = serve_hooks(hooks.clone()).await?;
        let relay_config = relay_config(fleet.dir(), &hook_base, &assignees[0])?;
        let tasks = TaskService::new(fleet.bus.clone(), Default::default());
        Ok(Self {
            fleet,
            opts,
            tasks,
            assignees,
            bodies,
            sample: Mutex::new(loaded.sample),
            counts: loaded.counts,
            hooks,
            hook_base,
            relay_config,
        })
    }

    /// The API process.
    fn api(&self) -> &fleet::Api {
        self.fleet.api.as_ref().expect("the API runs")
    }

    /// Adds `id` to the sample.
    fn offer(&self, id: &TaskId) {
        self.sample.lock().expect("sample lock").offer(id);
    }

    /// Messages in the queue stream `TASKS`.
    async fn queued(&self) -> anyhow::Result<u64> {
        let stream = self.fleet.bus.js.get_stream(subjects::TASKS_STREAM).await?;
        Ok(stream.cached_info().state.messages)
    }

    /// Publishes `n` noop create bodies straight to the queue (`Nats-Msg-Id` = task id), the
    /// assignees and priorities round robin, `--in-flight` publishes awaiting their acks.
    async fn publish_noops(&self, n: u64) -> anyhow::Result<()> {
        let (js, k) = (&self.fleet.bus.js, self.assignees.len() as u64);
        let first = self.counts.noop;
        futures::stream::iter(first..first + n)
            .map(|i| async move {
                let (subject, body) = &self.bodies[((i % k) * 3 + (i / k) % 3) as usize];
                let id = TaskId::generate();
                let mut new = body.clone();
                new.id = Some(id.clone());
                js.publish_with_headers(
                    subject.clone(),
                    message_headers(id.as_str()),
                    encode(&new),
                )
                .await?
                .await?;
                anyhow::Ok(id)
            })
            .buffer_unordered(self.opts.in_flight)
            .try_for_each(|id| {
                self.offer(&id);
                async { Ok(()) }
            })
            .await
    }

    /// Makes the other statuses of `mix` through the task service.
    async fn make_others(&self, mix: &Mix, stage: u64) -> anyhow::Result<()> {
        futures::stream::iter(mix.others().into_iter().enumerate())
            .map(|(i, kind)| self.make_other(kind, i, stage))
            .buffer_unordered(OTHERS_IN_FLIGHT)
            .try_for_each(|id| {
                self.offer(&id);
                async { Ok(()) }
            })
            .await
    }

    /// One task of `kind`, for a random assignee and priority.
    async fn make_other(&self, kind: Other, i: usize, stage: u64) -> anyhow::Result<TaskId> {
        let a = &self.assignees[rand::random_range(0..self.assignees.len())];
        let priority = Priority::ALL[rand::random_range(0..3)];
        let mut new = manual(a, priority, &format!("{kind:?} task").to_lowercase());
        match kind {
            Other::Stuck => {
                let url = format!("{}/stuck/{stage}-{i}", self.hook_base);
                new.notify = vec![json!({"type": "webhook", "url": url, "events": ["created"]})];
            }
            Other::Dead => new.max_attempts = Some(1),
            _ => {}
        }
        let svc = &self.tasks;
        let task = svc.create(new, "bench-scale").await?.task;
        let id = task.id.clone();
        match kind {
            Other::Running => drop(svc.start(&id, "bench-bot").await?),
            Other::Failed => {
                svc.start(&id, "bench-bot").await?;
                let why = "bench: failed on purpose".to_string();
                svc.fail(&id, why, None, "bench-bot", json!({})).await?;
            }
            Other::Cancelled => {
                let why = Some("bench: not needed".to_string());
                svc.cancel(&id, why, "bench-scale").await?;
            }
            Other::Dead => self.dead_letter(&task).await?,
            Other::Pending | Other::Stuck => {}
        }
        Ok(id)
    }

    /// What a worker does to a task with one attempt whose holder died: claims it, gets it
    /// redelivered, gives up (the task fails and is copied to `TASKS_DEAD`), acks the message.
    async fn dead_letter(&self, task: &Task) -> anyhow::Result<()> {
        let seq = task
            .queue_seq
            .context("a created task without its queue message")?;
        let queue = &self.fleet.bus.topology.tasks;
        let msg = queue.get_raw_message(seq).await?;
        let svc = &self.tasks;
        match svc
            .claim_for_worker(
                QueuedMessage::from(&msg),
                "bench-worker-1",
                Delivery::default(),
            )
            .await?
        {
            ClaimOutcome::Run(_) => {}
            other => bail!("claiming {}: {other:?}", task.id),
        }
        // Redelivered after its holder's lease lapsed (a zero lease: lapsed at once).
        let lapsed = Delivery {
            redelivered: true,
            lease: Duration::ZERO,
        };
        match svc
            .claim_for_worker(QueuedMessage::from(&msg), "bench-worker-2", lapsed)
            .await?
        {
            ClaimOutcome::GaveUp(_) => {}
            other => bail!("giving up {}: {other:?}", task.id),
        }
        queue.delete_message(seq).await?;
        Ok(())
    }
}

/// Progress of one stage's loading, printed every [`PROGRESS_EVERY`].
struct Progress {
    /// Tasks stored at the end of the stage.
    target: u64,
    /// Tasks the stage adds.
    stage_tasks: u64,
    /// When the stage's loading started.
    started: Instant,
    /// When the last line was printed.
    last: Instant,
}

impl Progress {
    /// Prints a line if the last one is old enough (or `force`).
    fn print(&mut self, made: u64, backlog: u64, force: bool) {
        if !force && self.last.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last = Instant::now();
        let done = made.saturating_sub(backlog);
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "  stage {}: {made} of {} tasks queued or made, {done} done ({:.0} tasks/s), \
             {backlog} waiting for a worker, {secs:.0} s",
            short(self.target),
            self.stage_tasks,
            done as f64 / secs.max(0.001),
        );
    }
}

impl Bench {
    /// Starts the workers (`--procs` per assignee) and, with deliveries, the relay.
    async fn start_processes(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.assignees.iter().map(|a| a.to_string()).collect();
        for a in &names {
            let (procs, c) = (self.opts.procs, self.opts.concurrency);
            self.fleet.spawn_workers_for(a, procs, c).await?;
        }
        if self.opts.relay {
            self.fleet.spawn_relay(&self.relay_config)?;
        }
        Ok(())
    }

    /// Loads `mix` (the new tasks of the stage reaching `target`) chunk by chunk, keeping the
    /// queue's backlog under `--backlog`, and waits until the workers have run every noop task.
    async fn load(&mut self, mix: &Mix, target: u64) -> anyhow::Result<()> {
        let chunks = mix.total().div_ceil(CHUNK).max(1);
        let now = Instant::now();
        let mut progress = Progress {
            target,
            stage_tasks: mix.total(),
            started: now,
            last: now,
        };
        let mut made = Mix::default();
        for i in 0..chunks {
            let part = mix.chunk(i, chunks);
            tokio::try_join!(
                self.publish_noops(part.noop),
                self.make_others(&part, target)
            )?;
            self.counts.add(&part);
            made.add(&part);
            let backlog = self.drain(self.opts.backlog, None).await?;
            progress.print(made.total(), backlog, false);
        }
        let backlog = self.drain(0, Some(&mut progress)).await?;
        progress.print(made.total(), backlog, true);
        Ok(())
    }

    /// Waits until at most `limit` noop tasks wait in the queue (besides the manual tasks,
    /// which keep their message while pending or running); returns that backlog.
    async fn drain(&self, limit: u64, mut progress: Option<&mut Progress>) -> anyhow::Result<u64> {
        let (mut last, mut moved) = (u64::MAX, Instant::now());
        loop {
            let backlog = self.queued().await?.saturating_sub(self.counts.queued());
            if backlog <= limit {
                return Ok(backlog);
            }
            if backlog != last {
                (last, moved) = (backlog, Instant::now());
            } else if moved.elapsed() > STALL_LIMIT {
                bail!(
                    "{backlog} queued tasks did not move for {STALL_LIMIT:?}: are the workers up?"
                );
            }
            if let Some(p) = progress.as_deref_mut() {
                p.print(p.stage_tasks, backlog, false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to `--relay-wait-s`) until the relay has read every event and delivered every
    /// job but the stuck ones; returns how it went.
    async fn wait_relay(&self) -> anyhow::Result<Value> {
        let started = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let events = &self.fleet.bus.topology.events;
            let info = events
                .consumer_info(subjects::RELAY_EVENTS_CONSUMER)
                .await?;
            let behind = info.num_pending + info.num_ack_pending as u64;
            let jobs = self
                .fleet
                .bus
                .js
                .get_stream(subjects::DELIVERIES_STREAM)
                .await?;
            let queued = jobs.cached_info().state.messages;
            let waiting = queued.saturating_sub(self.counts.stuck);
            let caught_up = behind == 0 && waiting == 0;
            let secs = started.elapsed().as_secs_f64();
            if caught_up || started.elapsed() > self.opts.relay_wait {
                if !caught_up {
                    eprintln!("  relay: gave up waiting after {secs:.0} s, {behind} events unread");
                }
                return Ok(json!({
                    "caught_up": caught_up, "wait_secs": secs, "events_unread": behind,
                    "jobs_queued": queued, "receiver": self.hooks.json(),
                }));
            }
            if last_print.elapsed() >= PROGRESS_EVERY {
                last_print = Instant::now();
                eprintln!(
                    "  relay: {behind} events unread, {waiting} deliveries queued, \
                     receiver {} ({secs:.0} s)",
                    self.hooks.json()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Sum of the sizes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// 10k, 100k, 1M, 250k, 12345.
fn short(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

impl Bench {
    /// Bytes on disk (the whole store) and in the ledger and queue streams, per finished task.
    async fn disk(&self) -> anyhow::Result<Value> {
        let on_disk = dir_bytes(&self.fleet.store_dir());
        let mut streams = serde_json::Map::new();
        let mut ledger_and_queue = 0;
        for name in [
            subjects::EVENTS_STREAM,
            subjects::TASKS_STREAM,
            subjects::DEAD_STREAM,
            subjects::DELIVERIES_STREAM,
            "KV_deliveries",
        ] {
            let Ok(stream) = self.fleet.bus.js.get_stream(name).await else {
                continue;
            };
            let state = &stream.cached_info().state;
            if [subjects::EVENTS_STREAM, subjects::TASKS_STREAM].contains(&name) {
                ledger_and_queue += state.bytes;
            }
            streams.insert(
                name.into(),
                json!({"bytes": state.bytes, "messages": state.messages}),
            );
        }
        let finished = self.counts.finished().max(1) as f64;
        Ok(json!({
            "store_bytes": on_disk, "streams": streams,
            "store_bytes_per_finished_task": on_disk as f64 / finished,
            "events_tasks_bytes_per_finished_task": ledger_and_queue as f64 / finished,
        }))
    }

    /// Loads up to `target`, stops the workers and the relay, and measures; returns the
    /// stage's figures.
    async fn stage(&mut self, target: u64) -> anyhow::Result<Value> {
        let mix = Mix::for_stage(target - self.counts.total(), self.stuck());
        eprintln!(
            "==> stage {}: loading {} tasks: {}",
            short(target),
            mix.total(),
            serde_json::to_string(&mix)?
        );
        self.start_processes().await?;
        let t0 = Instant::now();
        self.load(&mix, target).await?;
        let load_secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "  loaded {} tasks in {load_secs:.1} s ({:.0} tasks/s); stopping the workers",
            mix.total(),
            mix.total() as f64 / load_secs
        );
        self.fleet.stop_workers().await;
        let relay = match self.opts.relay {
            true => self.wait_relay().await?,
            false => Value::Null,
        };
        self.fleet.stop_relay().await;
        self.keep_loaded()?;
        eprintln!(
            "  waiting {:?} before measuring (--settle-s) …",
            self.opts.settle
        );
        tokio::time::sleep(self.opts.settle).await;
        let load = json!({"tasks": mix.total(), "secs": load_secs,
                          "tasks_per_s": mix.total() as f64 / load_secs});
        let mut figures = self.measured().await?;
        if self.opts.restart {
            self.fleet.restart_nats().await?;
            tokio::time::sleep(self.opts.settle).await;
            figures["restarted"] = self.measured().await?;
        }
        figures["stage_mix"] = json!(mix);
        figures["load"] = load;
        figures["relay"] = relay;
        Ok(figures)
    }

    /// Writes what the store holds to `--store`'s [`LOADED`], when the store is kept.
    fn keep_loaded(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.opts.store else {
            return Ok(());
        };
        let loaded = Loaded {
            counts: self.counts,
            sample: self.sample.lock().expect("sample lock").clone(),
            assignees: Some(self.assignees.len()),
        };
        std::fs::write(dir.join(LOADED), serde_json::to_vec(&loaded)?)?;
        Ok(())
    }

    /// The store's figures and the read routes' latencies, with only nats-server and the API
    /// running.
    async fn measured(&self) -> anyhow::Result<Value> {
        let disk = self.disk().await?;
        let (pid, nats) = (self.api().pid, self.fleet.nats_pid());
        let rss_before = (rss_mb(pid), rss_mb(nats));
        let cpu_before = (cpu_secs(pid), cpu_secs(nats));
        eprintln!(
            "  measuring the read routes ({} requests each) …",
            self.opts.samples
        );
        let t1 = Instant::now();
        let routes = self.measure().await?;
        let rss_after = (rss_mb(pid), rss_mb(nats));
        let used = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
        let cpu = (
            used(cpu_before.0, cpu_secs(pid)),
            used(cpu_before.1, cpu_secs(nats)),
        );
        Ok(json!({
            "stored": self.counts.total(), "counts": self.counts, "disk": disk,
            "api_rss_mb": {"before": rss_before.0, "after": rss_after.0},
            "nats_rss_mb": {"before": rss_before.1, "after": rss_after.1},
            "cpu_secs_measuring": {"api": cpu.0, "nats_server": cpu.1},
            "measure_secs": t1.elapsed().as_secs_f64(), "routes": routes,
        }))
    }

    /// Pending tasks with a stuck delivery per stage (none without the relay).
    fn stuck(&self) -> u64 {
        if self.opts.relay {
            self.opts.stuck
        } else {
            0
        }
    }
}

/// One route to time: its name (as printed) and the path of every request, warm-up first.
struct Route {
    /// As printed.
    name: String,
    /// Warm-up requests first.
    paths: Vec<String>,
}

/// Percentile of sorted values at index round((n − 1)·p), as `make bench` does.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// How many items a JSON answer holds (an array's length), if it is an array.
fn items(body: &[u8]) -> Option<usize> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Array(a) => Some(a.len()),
        _ => None,
    }
}

/// Times the requests of `route` one after another on one keep-alive client (the first
/// `warmup` untimed; after `budget`, no more once [`MIN_SAMPLES`] are timed); p50/p99/max in
/// ms, non-200 answers, and the mean items per answer.
async fn time_route(
    client: &taskfleet::client::ApiClient,
    route: &Route,
    warmup: usize,
    budget: Duration,
) -> anyhow::Result<Value> {
    let (mut ms, mut errors, mut sizes) = (Vec::new(), 0usize, Vec::new());
    let (mut first_error, started) = (None, Instant::now());
    for (i, path) in route.paths.iter().enumerate() {
        if ms.len() >= MIN_SAMPLES && started.elapsed() > budget {
            break;
        }
        let t = Instant::now();
        let resp = client.request(reqwest::Method::GET, path).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let took = t.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() {
            errors += 1;
            first_error.get_or_insert_with(|| {
                format!("{status} {path}: {}", String::from_utf8_lossy(&body))
            });
        } else if i >= warmup {
            ms.push(took);
            sizes.extend(items(&body));
        }
    }
    if let Some(e) = &first_error {
        eprintln!("  {}: {errors} failed requests, e.g. {e}", route.name);
    }
    ms.sort_by(f64::total_cmp);
    let mean_items =
        (!sizes.is_empty()).then(|| sizes.iter().sum::<usize>() as f64 / sizes.len() as f64);
    Ok(match ms.is_empty() {
        true => json!({"samples": 0, "errors": errors, "first_error": first_error}),
        false => json!({
            "p50": percentile(&ms, 0.5), "p99": percentile(&ms, 0.99), "max": ms.last(),
            "samples": ms.len(), "errors": errors, "first_error": first_error,
            "mean_items": mean_items, "cut_short": ms.len() + warmup < route.paths.len(),
        }),
    })
}

/// The statuses of the task listing (`None`: no status, newest created first).
const STATUSES: [Option<&str>; 6] = [
    Some("completed"),
    Some("failed"),
    Some("cancelled"),
    Some("pending"),
    Some("running"),
    None,
];

impl Bench {
    /// `n` paths made from random sampled task ids.
    fn by_id(&self, n: usize, path: impl Fn(&str) -> String) -> Vec<String> {
        let sample = self.sample.lock().expect("sample lock");
        (0..n).map(|_| path(sample.pick())).collect()
    }

    /// `n` paths made from random assignees.
    fn by_assignee(&self, n: usize, path: impl Fn(&Assignee) -> String) -> Vec<String> {
        let k = self.assignees.len();
        (0..n)
            .map(|_| path(&self.assignees[rand::random_range(0..k)]))
            .collect()
    }

    /// The second pages of `query` (`/api/tasks?…&assigned_to=<a>`), one per assignee whose
    /// first page is full, repeated to `n` paths; empty when no first page is full.
    async fn second_pages(&self, n: usize, query: &str) -> anyhow::Result<Vec<String>> {
        let client = &self.api().client;
        let mut pages = Vec::new();
        for a in &self.assignees {
            let first = format!("{query}&assigned_to={a}");
            let resp = client.request(reqwest::Method::GET, &first).send().await?;
            if let Some(cursor) = resp.headers().get("x-next-cursor") {
                pages.push(format!("{first}&before={}", cursor.to_str()?));
            }
        }
        if pages.is_empty() {
            return Ok(pages);
        }
        Ok((0..n).map(|i| pages[i % pages.len()].clone()).collect())
    }

    /// Every route measured at each stage, with its request paths.
    async fn routes(&self) -> anyhow::Result<Vec<Route>> {
        let n = self.opts.warmup + self.opts.samples;
        let route = |name: String, paths: Vec<String>| Route { name, paths };
        let mut all = vec![route(
            "GET /api/tasks/{id}".into(),
            self.by_id(n, |id| format!("/api/tasks/{id}")),
        )];
        for s in STATUSES {
            let status = s.map_or(String::new(), |s| format!("&status={s}"));
            let shown = s.unwrap_or("(none)");
            let q = |a: &Assignee| format!("/api/tasks?assigned_to={a}{status}&limit={PAGE}");
            all.push(route(
                format!("GET /api/tasks?assigned_to=<a>&status={shown}"),
                self.by_assignee(n, q),
            ));
        }
        for s in STATUSES {
            let status = s.map_or(String::new(), |s| format!("&status={s}"));
            let shown = s.unwrap_or("(none)");
            let paths = vec![format!("/api/tasks?limit={PAGE}{status}"); n];
            all.push(route(format!("GET /api/tasks?status={shown}"), paths));
        }
        for s in ["completed", "failed"] {
            let paths = self
                .second_pages(n, &format!("/api/tasks?status={s}&limit={PAGE}"))
                .await?;
            all.push(route(
                format!("GET /api/tasks?assigned_to=<a>&status={s}, 2nd page"),
                paths,
            ));
        }
        let pending = |a: &Assignee| format!("/api/tasks/pending?assigned_to={a}&limit={PAGE}");
        all.push(route(
            "GET /api/tasks/pending?assigned_to=<a>".into(),
            self.by_assignee(n, pending),
        ));
        all.push(route(
            "GET /api/tasks/{id}/logs".into(),
            self.by_id(n, |id| format!("/api/tasks/{id}/logs")),
        ));
        all.push(route(
            "GET /api/dead-letters".into(),
            vec![format!("/api/dead-letters?limit={PAGE}"); n],
        ));
        for s in ["delivered", "dead", "pending"] {
            let paths = vec![format!("/api/deliveries?status={s}&limit={PAGE}"); n];
            all.push(route(format!("GET /api/deliveries?status={s}"), paths));
        }
        Ok(all)
    }

    /// Times every route; a route without requests (no full first page) is noted, not timed.
    async fn measure(&self) -> anyhow::Result<Value> {
        let mut out = Vec::new();
        let wanted = |r: &Route| {
            let routes = &self.opts.routes;
            routes.is_empty() || routes.iter().any(|t| r.name.contains(t.as_str()))
        };
        for route in self.routes().await?.into_iter().filter(wanted) {
            let mut figures = match route.paths.is_empty() {
                true => json!({"samples": 0, "note": "no full first page"}),
                false => {
                    let (warmup, budget) = (self.opts.warmup, self.opts.route_budget);
                    time_route(&self.api().client, &route, warmup, budget).await?
                }
            };
            eprintln!(
                "    {:<62} p50 {:>7} p99 {:>7} ms",
                route.name,
                fmt_ms(&figures["p50"]),
                fmt_ms(&figures["p99"])
            );
            figures["route"] = json!(route.name);
            out.push(figures);
        }
        Ok(Value::Array(out))
    }
}

/// A figure in ms with two decimals, or `—`.
fn fmt_ms(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |x| format!("{x:.2}"))
}

/// One cell of the route table: `p99 (p50)`, with `*` when the route was cut short.
fn cell(r: &Value) -> String {
    let cut = if r["cut_short"] == true { "*" } else { "" };
    match (r["p99"].as_f64(), r["p50"].as_f64()) {
        (Some(p99), Some(p50)) => format!("{cut}{p99:.1} ({p50:.1})"),
        _ => "—".into(),
    }
}

/// A row of the table: the label, then one cell per stage.
fn row(label: &str, cells: impl IntoIterator<Item = String>, last: &str) {
    let cells: Vec<String> = cells.into_iter().map(|c| format!("{c:>16}")).collect();
    println!("{label:<62} {} {last}", cells.join(" "));
}

/// The figure of route `name` in a stage's JSON.
fn route_of<'a>(stage: &'a Value, name: &str) -> &'a Value {
    stage["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == name))
        .unwrap_or(&Value::Null)
}

/// The table's columns: each stage as measured right after its load, then, when it was
/// measured again on a restarted server, that too (`<stored> restarted`).
fn columns(stages: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for s in stages {
        let stored = short(s["stored"].as_u64().unwrap_or(0));
        out.push((stored.clone(), s));
        if s["restarted"].is_object() {
            out.push((format!("{stored} restarted"), &s["restarted"]));
        }
    }
    out
}

/// Whether route `name` of a measurement met the limit: `yes`, `NO` or `—`.
fn verdict(measured: &Value, name: &str) -> &'static str {
    match route_of(measured, name)["p99"].as_f64() {
        Some(p99) if p99 <= LIMIT_MS => "yes",
        Some(_) => "NO",
        None => "—",
    }
}

/// Prints the table: routes × stages (p99 ms, p50 in brackets); the last column says whether
/// the largest stage met the limit (and, after a slash, on the restarted server). Then
/// [`print_store_rows`].
fn print_table(stages: &[Value]) {
    let Some(largest) = stages.last() else { return };
    let cols = columns(stages);
    let restarted = &largest["restarted"];
    let at = short(largest["stored"].as_u64().unwrap_or(0));
    let verdict_head = match restarted.is_object() {
        true => format!("p99 ≤ {LIMIT_MS} ms at {at}: loaded / restarted"),
        false => format!("p99 ≤ {LIMIT_MS} ms at {at}"),
    };
    println!();
    row(
        "route: p99 ms (p50 ms)",
        cols.iter().map(|(head, _)| head.clone()),
        &verdict_head,
    );
    for r in largest["routes"].as_array().into_iter().flatten() {
        let name = r["route"].as_str().unwrap_or("?");
        let mut said = verdict(largest, name).to_string();
        if restarted.is_object() {
            said = format!("{said} / {}", verdict(restarted, name));
        }
        let cells = cols.iter().map(|(_, s)| cell(route_of(s, name)));
        row(name, cells, &said);
    }
    let mut all = stages
        .iter()
        .flat_map(|s| s["routes"].as_array().into_iter().flatten());
    if all.any(|r| r["cut_short"] == true) {
        println!("(* fewer timed requests: the route used up --route-budget-s; see the JSON)");
    }
    print_store_rows(stages);
}

/// The numeric rows under the routes: label, JSON pointer into a stage, decimals.
const STORE_ROWS: [(&str, &str, usize); 9] = [
    ("API VmRSS before measuring (MB)", "/api_rss_mb/before", 1),
    ("API VmRSS after measuring (MB)", "/api_rss_mb/after", 1),
    (
        "nats-server VmRSS before measuring (MB)",
        "/nats_rss_mb/before",
        0,
    ),
    (
        "nats-server VmRSS after measuring (MB)",
        "/nats_rss_mb/after",
        0,
    ),
    ("API CPU while measuring (s)", "/cpu_secs_measuring/api", 1),
    (
        "nats-server CPU while measuring (s)",
        "/cpu_secs_measuring/nats_server",
        1,
    ),
    (
        "store on disk, bytes per finished task",
        "/disk/store_bytes_per_finished_task",
        0,
    ),
    (
        "EVENTS+TASKS state.bytes per finished task",
        "/disk/events_tasks_bytes_per_finished_task",
        0,
    ),
    ("load rate of the stage (tasks/s)", "/load/tasks_per_s", 0),
];

/// The rows under the routes (RSS, bytes per finished task, load rate), then the counts.
fn print_store_rows(stages: &[Value]) {
    let cols = columns(stages);
    for (label, pointer, digits) in STORE_ROWS {
        let cells = cols.iter().map(|(_, s)| {
            s.pointer(pointer)
                .and_then(Value::as_f64)
                .map_or("—".into(), |x| format!("{x:.digits$}"))
        });
        row(label, cells, "");
    }
    println!();
    for s in stages {
        let (c, r) = (&s["counts"], &s["relay"]["receiver"]);
        let pending = c["pending"].as_u64().unwrap_or(0) + c["stuck"].as_u64().unwrap_or(0);
        let answers = match r.is_null() {
            true => "no relay in this run".to_string(),
            false => format!(
                "webhook answers: {} × 200 (delivered), {} × 400 (dead), {} × 503 (pending)",
                r["answered_200"], r["answered_400"], r["answered_503"]
            ),
        };
        println!(
            "stored at {}: completed {}, failed {} + {} dead-lettered, cancelled {}, \
             pending {pending}, running {}; {answers}",
            short(s["stored"].as_u64().unwrap_or(0)),
            c["noop"],
            c["failed"],
            c["dead"],
            c["cancelled"],
            c["running"],
        );
    }
}

impl Bench {
    /// Runs every stage, writing the JSON after each; returns the stages that finished and
    /// the error that ended the run early, if one did.
    async fn run(&mut self) -> (Vec<Value>, anyhow::Result<()>) {
        let mut stages = Vec::new();
        if self.opts.measure_only {
            eprintln!(
                "==> measuring the store kept in {} ({} tasks; nothing loaded)",
                self.opts
                    .store
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display(),
                self.counts.total()
            );
            let result = match self.measured().await {
                Ok(f) => {
                    stages.push(f);
                    self.write(&stages)
                }
                Err(e) => Err(e),
            };
            return (stages, result);
        }
        for target in self.opts.stages.clone() {
            let t = Instant::now();
            let mut figures = match self.stage(target).await {
                Ok(f) => f,
                Err(e) => return (stages, Err(e.context(format!("stage {}", short(target))))),
            };
            figures["stage_secs"] = json!(t.elapsed().as_secs_f64());
            stages.push(figures);
            if let Err(e) = self.write(&stages) {
                return (stages, Err(e));
            }
        }
        (stages, Ok(()))
    }

    /// Writes the JSON of the stages so far to `--out`.
    fn write(&self, stages: &[Value]) -> anyhow::Result<()> {
        let nats = taskfleet::natsd::find_binary(None)
            .ok()
            .and_then(|b| taskfleet::natsd::version(&b))
            .map(|(a, b, c)| format!("{a}.{b}.{c}"));
        let out = json!({
            "benchmark": "bench-scale", "limit_p99_ms": LIMIT_MS, "page": PAGE,
            "date": chrono::Utc::now().to_rfc3339(), "nats_server": nats,
            "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "assignees": self.assignees.len(), "worker_procs_per_assignee": self.opts.procs,
            "worker_concurrency": self.opts.concurrency, "samples": self.opts.samples,
            "warmup": self.opts.warmup, "stages": stages,
        });
        if let Some(dir) = self.opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.opts.out, serde_json::to_string_pretty(&out)? + "\n")?;
        eprintln!("  wrote {}", self.opts.out.display());
        Ok(())
    }
}

/// Parses the flags, runs the stages, prints the table (also after a failed stage).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    fleet::taskfleet_bin()?;
    let started = Instant::now();
    if !opts.measure_only {
        eprintln!(
            "==> bench-scale: stages {:?}, {} assignees × {} worker process(es) × {}, relay {}",
            opts.stages, opts.assignees, opts.procs, opts.concurrency, opts.relay
        );
    }
    let mut bench = Bench::start(opts).await?;
    let (stages, result) = bench.run().await;
    bench.fleet.stop().await;
    print_table(&stages);
    println!("\nwall time {:.0} s", started.elapsed().as_secs_f64());
    result
}
