//! Workers: `taskfleet worker --assignee NAME` pulls the assignee's worker-run tasks (`exec`,
//! `agent`, `hook`, `noop`) in strict priority order and runs them.
//!
//! - `dispatch.rs`: the three durable consumers (one per priority, shared by every replica) and
//!   the strict-priority, no-prefetch pull with a doorbell for idle waits; `pull.rs`: the pull
//!   requests themselves, over one long-lived inbox;
//! - `run.rs`: one message from claim to ack: lease renewal, fenced finish, hand-back;
//! - `kinds.rs`: what each kind does; `process.rs` + `output.rs`: child processes;
//! - `control.rs`: cancellations and stdin writes reaching the running task.

mod control;
mod dispatch;
mod flow;
mod kinds;
pub mod output;
pub mod process;
mod pull;
mod run;
mod turns;

use crate::bus::{Bus, BusError};
use crate::config::{Config, WorkerConfig};
use crate::domain::{Assignee, Task};
use crate::health::{Health, Phase};
use crate::tasks::{TaskError, TaskService};
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A worker could not start or keep pulling.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A task operation failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// Flow control (the limits bucket) failed.
    #[error(transparent)]
    Limits(#[from] crate::limits::LimitsError),
    /// `[worker.limits]` is not valid.
    #[error("[worker.limits]: {0}")]
    BadLimits(String),
    /// The queue-reading connection dropped during a pull (a message it could not parse, or
    /// the server went away); the delivered messages are checked and the pull tried again.
    #[error("the connection reading the queue was lost")]
    ReaderLost,
}

impl WorkerError {
    /// Whether trying again later may succeed: NATS trouble or contention, not a bad config.
    fn is_transient(&self) -> bool {
        use crate::limits::LimitsError;
        match self {
            Self::Bus(_) | Self::Task(TaskError::Bus(_)) | Self::ReaderLost => true,
            Self::Limits(LimitsError::Bus(_) | LimitsError::Contended(_)) => true,
            Self::Task(_) | Self::Limits(_) | Self::BadLimits(_) => false,
        }
    }
}

/// Who this worker is and what it runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Whose tasks it pulls.
    pub assignee: Assignee,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Shown as the lease holder and the events' operator.
    pub worker_id: String,
    /// Handed to running tasks as `TASKFLEET_API_URL`.
    pub api_url: String,
    /// Signs the task-scoped tokens handed to running tasks.
    pub task_token_secret: Option<SecretString>,
    /// Timings, limits, agents.
    pub settings: WorkerConfig,
}

impl WorkerOptions {
    /// How `taskfleet worker` and `taskfleet up` run a worker for `assignee`: `worker.concurrency`
    /// slots, the [`default_worker_id`], `worker.api_url` (else the API at `api_addr`) for the
    /// running tasks, `fleet.task_token_secret` and the `[worker]` settings.
    pub fn from_config(cfg: &Config, assignee: Assignee, api_addr: SocketAddr) -> Self {
        let api_url = cfg.worker.api_url.clone();
        Self {
            concurrency: cfg.worker.concurrency,
            worker_id: default_worker_id(&assignee),
            assignee,
            api_url: api_url.unwrap_or_else(|| format!("http://{api_addr}")),
            task_token_secret: cfg.fleet.task_token_secret.clone(),
            settings: cfg.worker.clone(),
        }
    }
}

/// Waits for the tasks being handed back. Their commands get `kill_grace` to stop; recording
/// the hand-back needs NATS, so it gets [`HAND_BACK_LIMIT`] more, and none while NATS is
/// unreachable (every node may be down: then it cannot succeed). False if it gave up.
async fn handed_back(tracker: &TaskTracker, bus: &Bus, kill_grace: Duration) -> bool {
    let nats_gone = async {
        tokio::time::sleep(kill_grace).await;
        while bus.is_connected() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = tracker.wait() => true,
        _ = nats_gone => false,
        _ = tokio::time::sleep(kill_grace + HAND_BACK_LIMIT) => false,
    }
}

/// Keeps this worker announced in the worker registry, with the tasks it runs, until `stop`.
fn spawn_announcer(
    bus: &Bus,
    opts: &WorkerOptions,
    ctx: &Ctx,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let me = crate::registry::Announcement::new(
        &opts.worker_id,
        "worker",
        Some(opts.assignee.as_str()),
        opts.concurrency,
        Duration::from_secs(opts.settings.registry_ttl_s),
    );
    let running = ctx.running.clone();
    tokio::spawn(crate::registry::keep_announced(
        bus.clone(),
        me,
        move || running.ids(),
        stop.clone(),
    ))
}

/// A readable, unique worker id: `<host>-<pid>-<random>`.
pub fn default_worker_id(assignee: &Assignee) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{assignee}@{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// What every task handler shares.
#[derive(Debug)]
struct Ctx {
    tasks: TaskService,
    settings: WorkerConfig,
    worker_id: String,
    api_url: String,
    token_secret: Option<SecretString>,
    running: control::Running,
    /// The queue messages being handled now (a copy delivered meanwhile is left alone).
    in_hand: control::InHand,
    ack_wait: Duration,
    /// Flow control: the gate before a claim.
    limits: crate::limits::Limits,
    /// Rate keys a task of this worker waits for in the process.
    rate_waiters: flow::RateWaiters,
    /// For hook tasks; built on first use (its TLS roots cost an idle worker about 1 MB).
    http: std::sync::OnceLock<reqwest::Client>,
}

impl Ctx {
    fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(reqwest::Client::new)
    }

    fn task_token(&self, task: &Task) -> Option<String> {
        self.token_secret
            .as_ref()
            .map(|s| crate::token::mint(s.expose_secret().as_bytes(), &task.id, task.attempt))
    }
}

/// How long a starting worker keeps trying to open its queue and flow control while NATS
/// fails: a cluster whose streams are still electing leaders answers "no responders" for a
/// few seconds, and a worker started then used to exit.
const START_TRIES_FOR: Duration = Duration::from_secs(30);

/// The queue and flow control of a starting worker, tried again every second while NATS fails
/// (for up to [`START_TRIES_FOR`]); `None` when `shutdown` comes first.
async fn open_all(
    tasks: &TaskService,
    opts: &WorkerOptions,
    ack_wait: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<(dispatch::Queue, crate::limits::Limits)>, WorkerError> {
    let s = &opts.settings;
    let give_up = tokio::time::Instant::now() + START_TRIES_FOR;
    loop {
        let opened = async {
            let idle_poll = Duration::from_millis(s.idle_poll_ms);
            let queue =
                dispatch::Queue::open(tasks, &opts.assignee, ack_wait, idle_poll, s.weights)
                    .await?;
            Ok::<_, WorkerError>((queue, open_limits(tasks.bus(), opts).await?))
        };
        match opened.await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                tracing::warn!(error.message = %e, "cannot open the queue and flow control yet; \
                    trying again in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
            other => return other.map(Some),
        }
    }
}

/// Opens flow control and declares this assignee's `[worker.limits]` (when it declares any,
/// or to clear what an earlier config declared).
async fn open_limits(
    bus: &Bus,
    opts: &WorkerOptions,
) -> Result<crate::limits::Limits, WorkerError> {
    let declared = &opts.settings.limits;
    declared.validate().map_err(WorkerError::BadLimits)?;
    let limits = crate::limits::Limits::new(bus);
    let before = limits.declared(opts.assignee.as_str()).await?;
    if &before != declared {
        limits.declare(opts.assignee.as_str(), declared).await?;
    }
    Ok(limits)
}

/// How long handed-back tasks may take to be recorded once their commands have stopped
/// (`worker.kill_grace_s`) while NATS is reachable: milliseconds usually, seconds on a busy
/// cluster. Without NATS it cannot succeed and is not waited for; JetStream redelivers the
/// tasks after `worker.ack_wait_s` instead. (compose's and k8s's stop grace periods cover
/// `shutdown_grace_s + kill_grace_s` plus this.)
const HAND_BACK_LIMIT: Duration = Duration::from_secs(10);

/// How long each last step at exit (the control listener, the flush of acks) may take.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Pulls and runs tasks until `shutdown`; then stops pulling, lets running tasks finish within
/// the grace period, and hands the rest back so another replica starts them at once.
pub async fn run(
    bus: Bus,
    opts: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    run_with_health(bus, opts, shutdown, &Health::new("worker")).await
}

/// [`run`], reporting to `health`: running while it pulls (with failed pulls noted), draining
/// from `shutdown` on, stopped when it returns.
pub async fn run_with_health(
    bus: Bus,
    opts: WorkerOptions,
    shutdown: CancellationToken,
    health: &Health,
) -> Result<(), WorkerError> {
    let _stopped = health.stopped_on_drop();
    health.attach(&bus.client);
    let s = &opts.settings;
    let ack_wait = Duration::from_secs(s.ack_wait_s);
    let tasks = TaskService::new(bus.clone(), Arc::new(crate::metrics::Metrics::default()))
        .scoped_to(opts.assignee.clone());
    let Some((mut queue, limits)) = open_all(&tasks, &opts, ack_wait, &shutdown).await? else {
        return Ok(());
    };
    let ctx = Arc::new(Ctx {
        tasks,
        limits,
        rate_waiters: flow::RateWaiters::default(),
        settings: opts.settings.clone(),
        worker_id: opts.worker_id.clone(),
        api_url: opts.api_url.clone(),
        token_secret: opts.task_token_secret.clone(),
        running: control::Running::default(),
        in_hand: control::InHand::default(),
        ack_wait,
        http: std::sync::OnceLock::new(),
    });
    let listening = CancellationToken::new();
    let listener = tokio::spawn(control::listen(
        bus.clone(),
        opts.assignee.clone(),
        ctx.running.clone(),
        listening.clone(),
    ));
    let announcing = CancellationToken::new();
    let announced = spawn_announcer(&bus, &opts, &ctx, &announcing);
    tracing::info!(assignee = %opts.assignee, worker = %opts.worker_id, concurrency = opts.concurrency, "worker pulling");
    health.set_phase(Phase::Running);
    let tracker = TaskTracker::new();
    pull_until(
        &ctx,
        &mut queue,
        &tracker,
        opts.concurrency,
        &shutdown,
        health,
    )
    .await;
    health.set_phase(Phase::Draining);
    drain(&bus, &ctx, queue, &tracker).await;
    listening.cancel();
    let _ = tokio::time::timeout(FLUSH_LIMIT, listener).await;
    announcing.cancel();
    let _ = tokio::time::timeout(FLUSH_LIMIT, announced).await;
    flush_at_exit(&bus).await;
    Ok(())
}

/// Fills every free slot of `concurrency` with the next task until `shutdown`.
async fn pull_until(
    ctx: &Arc<Ctx>,
    queue: &mut dispatch::Queue,
    tracker: &TaskTracker,
    concurrency: usize,
    shutdown: &CancellationToken,
    health: &Health,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
        };
        // Every slot free right now is filled by the same pull.
        let mut permits = vec![permit];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let msgs = tokio::select! {
            m = queue.next(permits.len()) => m,
            _ = shutdown.cancelled() => break,
        };
        match msgs {
            Ok(msgs) => {
                health.pull_succeeded();
                for (msg, permit) in msgs.into_iter().zip(permits) {
                    tracker.spawn(run::handle(ctx.clone(), msg, permit));
                }
                // Let the tasks just handed out send their claims before this loop sends the
                // next pull: on one thread it would otherwise go first and delay every claim
                // by a write (seen with strace: ~0.1 ms of an idle dispatch).
                tokio::task::yield_now().await;
            }
            Err(e) => {
                health.pull_failed(&e.to_string());
                tracing::warn!(error.message = %e, "pull failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Stops pulling, lets running tasks finish within the grace period, then hands the rest back.
async fn drain(bus: &Bus, ctx: &Ctx, queue: dispatch::Queue, tracker: &TaskTracker) {
    let s = &ctx.settings;
    if tokio::time::timeout(FLUSH_LIMIT, queue.close())
        .await
        .is_err()
    {
        tracing::warn!(
            "closing the pulls timed out; a task they got is redelivered after ack_wait"
        );
    }
    tracker.close();
    let running = ctx.running.len();
    if running > 0 {
        tracing::info!(
            running,
            grace_s = s.shutdown_grace_s,
            "stopping: waiting for running tasks"
        );
    }
    if tokio::time::timeout(Duration::from_secs(s.shutdown_grace_s), tracker.wait())
        .await
        .is_err()
    {
        let left = ctx.running.all();
        tracing::info!(tasks = left.len(), "grace period over: handing tasks back");
        for h in left {
            h.stop(control::StopReason::HandBack);
        }
        if !handed_back(tracker, bus, Duration::from_secs(s.kill_grace_s)).await {
            tracing::warn!(
                nats = %bus.client.connection_state(),
                "hand-back not confirmed in time; JetStream redelivers the tasks after ack_wait"
            );
        }
    }
}

/// Acks and hand-backs must reach the server before the process may exit; a flush waits for
/// a connection, so not while there is none.
async fn flush_at_exit(bus: &Bus) {
    if !bus.is_connected() {
        tracing::warn!("NATS unreachable at exit: recent acks may be lost (tasks are redelivered)");
        return;
    }
    if tokio::time::timeout(FLUSH_LIMIT, bus.client.flush())
        .await
        .is_err()
    {
        tracing::warn!("last flush to NATS timed out");
    }
}
