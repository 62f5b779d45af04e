//! The task service: every task state change goes through here, as a compare-and-set on the
//! task's entry in the state bucket, followed by an event in the event stream.
//!
//! - [`create`](TaskService::create): publish to the queue, then create the state entry;
//! - transitions (`start`, `complete`, `fail`, `cancel`, `retry`) in `transitions.rs`;
//! - the pending list, read straight from the queue stream, in `queue.rs`;
//! - listing, logs and live event feeds in `history.rs`;
//! - Live Task Pulse reports (`step`, `heartbeat`, `progress`) in `progress.rs`;
//! - idempotent actions (`Idempotency-Key`) in `idempotency.rs`;
//! - removing long-finished tasks in `cleanup.rs`.

mod claim;
mod cleanup;
mod create;
mod history;
mod idempotency;
mod progress;
mod queue;
mod transitions;

pub use claim::ClaimOutcome;
pub use cleanup::DEFAULT_KEEP;
pub use create::Created;
pub use history::ListFilter;
pub use idempotency::{Applied, MAX_KEY_CHARS};
pub use progress::MAX_INFO_CHARS;
pub use queue::QueuedMessage;

use crate::bus::{decode, encode, message_headers, subjects, Bus, BusError, NatsResultExt};
use crate::domain::{Assignee, EventKind, Task, TaskEvent, TaskId};
use crate::metrics::Metrics;
use async_nats::jetstream::kv;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a task operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The request is well-formed but its values are not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The task's status does not allow this action.
    #[error("{0}")]
    IllegalTransition(String),
    /// The caller's fencing token no longer holds the task.
    #[error("{0}")]
    StaleLease(String),
    /// Too many concurrent writers; the caller may retry.
    #[error("task {0} is being changed by many callers at once; try again")]
    Contended(TaskId),
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Task operations over the fleet's NATS topology. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TaskService {
    /// Shared, so cloning the service (once per API request) copies no stream handles.
    bus: Arc<Bus>,
    metrics: Arc<Metrics>,
    /// A worker's service sees only its assignee's tasks (its NATS user may read no others).
    scope: Option<Assignee>,
    /// Task id → assignee, learned from reads and creates (an id never changes assignee).
    located: Arc<Mutex<HashMap<TaskId, Assignee>>>,
    /// A worker's last written state of each task it runs: its next change tries that state
    /// first instead of reading (the compare-and-set refuses it if anyone wrote since).
    known: Arc<Mutex<HashMap<TaskId, Task>>>,
    /// Per task, the last event sent whose storage is not confirmed yet.
    unsettled: Arc<Mutex<HashMap<TaskId, SentEvent>>>,
}

/// An event on its way to the event stream.
struct SentEvent {
    subject: String,
    payload: bytes::Bytes,
    id: String,
    kind: EventKind,
    ack: Option<async_nats::jetstream::context::PublishAckFuture>,
}

impl std::fmt::Debug for SentEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentEvent").field("id", &self.id).finish()
    }
}

impl SentEvent {
    async fn send(mut self, bus: &Bus) -> Self {
        let headers = message_headers(&self.id);
        let sent = bus
            .js
            .publish_with_headers(self.subject.clone(), headers, self.payload.clone())
            .await;
        self.ack = sent.ok();
        self
    }

    /// Waits for the store's answer; re-sends (same id: JetStream drops a duplicate) for up to
    /// ~30 s, long enough to ride out a JetStream leader election in a cluster.
    async fn confirm(mut self, bus: &Bus, task: &TaskId) {
        const ATTEMPTS: u64 = 10;
        for attempt in 0..ATTEMPTS {
            let answer = match self.ack.take() {
                Some(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                None => Err("not sent".to_string()),
            };
            match answer {
                Ok(()) => return,
                Err(e) if attempt == ATTEMPTS - 1 => {
                    tracing::error!(task_id = %task, event = self.kind.as_str(),
                        error.message = %e, "event could not be recorded");
                }
                Err(_) => {
                    let delay = Duration::from_millis((100u64 << attempt).min(5_000));
                    tokio::time::sleep(delay).await;
                    self = self.send(bus).await;
                }
            }
        }
    }
}

const CAS_ATTEMPTS: usize = 64;
/// Ids remembered before the id → assignee cache starts over.
const LOCATED_CAP: usize = 100_000;

impl TaskService {
    /// A service over `bus`, counting into `metrics`.
    pub fn new(bus: Bus, metrics: Arc<Metrics>) -> Self {
        Self {
            bus: Arc::new(bus),
            metrics,
            scope: None,
            located: Arc::default(),
            known: Arc::default(),
            unsettled: Arc::default(),
        }
    }

    /// The same service limited to `assignee`'s tasks, as a worker for it: state is read with
    /// direct gets on `$KV.tasks.<assignee>.<id>` (what its NATS user may read), and a refusal
    /// decided on a read that a lagging replica may have answered is confirmed first.
    pub fn scoped_to(mut self, assignee: Assignee) -> Self {
        self.scope = Some(assignee);
        self
    }

    /// The underlying connection.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The metrics this service counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The current state of a task.
    pub async fn get(&self, id: &TaskId) -> Result<Task, TaskError> {
        self.load(id)
            .await?
            .ok_or_else(|| TaskError::NotFound(id.clone()))
    }

    /// Keeps a worker's latest written state of a task it holds (dropped once finished).
    fn keep(&self, t: &Task) {
        if self.scope.is_none() {
            return;
        }
        let mut known = self.known.lock().expect("known lock");
        if t.status.is_terminal() || t.status == crate::domain::TaskStatus::Pending {
            known.remove(&t.id);
        } else {
            if known.len() >= LOCATED_CAP {
                known.clear();
            }
            known.insert(t.id.clone(), t.clone());
        }
    }

    fn remember(&self, id: &TaskId, assignee: &Assignee) {
        let mut located = self.located.lock().expect("located lock");
        if located.len() >= LOCATED_CAP {
            located.clear();
        }
        located.insert(id.clone(), assignee.clone());
    }

    /// The task's latest state. Unscoped, it is read from the state stream's leader (in a
    /// cluster a direct get may be answered by a lagging replica, and a compare-and-set decided
    /// on a stale state can refuse a legal transition); an id seen for the first time is found
    /// under any assignee. Scoped to an assignee, it is a direct get of that assignee's entry.
    async fn load(&self, id: &TaskId) -> Result<Option<Task>, TaskError> {
        use async_nats::jetstream::stream::{
            DirectGetErrorKind, LastRawMessageErrorKind, RawMessageErrorKind,
        };
        let stream = &self.bus.topology.state_stream;
        let found = if let Some(a) = &self.scope {
            match stream
                .direct_get_last_for_subject(subjects::state_subject(a, id))
                .await
            {
                Ok(m) => Some(m),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
                Err(e) => return Err(BusError::from_op("read task state", e).into()),
            }
        } else {
            let known = self.located.lock().expect("located lock").get(id).cloned();
            if let Some(a) = known {
                match stream
                    .get_last_raw_message_by_subject(&subjects::state_subject(&a, id))
                    .await
                {
                    Ok(m) => Some(m),
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
                    Err(e) => return Err(BusError::from_op("read task state", e).into()),
                }
            } else {
                // The bucket keeps one entry per key, so the first match is the latest state.
                match stream
                    .get_first_raw_message_by_subject(subjects::state_subject_any_assignee(id), 1)
                    .await
                {
                    Ok(m) => Some(m),
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => None,
                    Err(e) => return Err(BusError::from_op("read task state", e).into()),
                }
            }
        };
        let Some(msg) = found else { return Ok(None) };
        let deleted = msg
            .headers
            .get("KV-Operation")
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if deleted {
            return Ok(None);
        }
        let mut t: Task = decode("task state", &msg.payload)?;
        t.revision = msg.sequence;
        self.remember(&t.id, &t.assigned_to);
        Ok(Some(t))
    }

    /// Re-reads until the state is at least at `revision` (a replica that answered an older one
    /// lags behind a write this process saw committed), for about 2 s at most.
    pub(crate) async fn load_at_least(
        &self,
        id: &TaskId,
        revision: u64,
    ) -> Result<Option<Task>, TaskError> {
        let mut state = self.load(id).await?;
        for _ in 0..100 {
            if state.as_ref().is_some_and(|t| t.revision >= revision) || self.scope.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            state = self.load(id).await?;
        }
        Ok(state)
    }

    /// Whether `t` is the latest state, proven by writing it again unchanged at its revision:
    /// only the latest revision accepts it. Used before a scoped service refuses something on a
    /// direct-get read (rare: refusals), never on the happy path.
    async fn is_latest(&self, t: &Task) -> Result<bool, TaskError> {
        let key = subjects::state_key(&t.assigned_to, &t.id);
        match self
            .bus
            .topology
            .state
            .update(&key, encode(t), t.revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(BusError::from_op("kv update", e).into()),
        }
    }

    /// Applies `f` to the current state and writes the result if nobody wrote in between;
    /// re-reads and re-applies on conflict. `f` refuses by returning an error, which is passed on
    /// with nothing written. Returns the states before and after.
    pub(crate) async fn change<F>(&self, id: &TaskId, f: F) -> Result<(Task, Task), TaskError>
    where
        F: FnMut(&Task) -> Result<Task, TaskError>,
    {
        let hint = self.known.lock().expect("known lock").remove(id);
        self.change_from(id, hint, f).await
    }

    /// [`change`](Self::change) trying `hint` (a state just read or written) before reading.
    pub(crate) async fn change_from<F>(
        &self,
        id: &TaskId,
        mut hint: Option<Task>,
        mut f: F,
    ) -> Result<(Task, Task), TaskError>
    where
        F: FnMut(&Task) -> Result<Task, TaskError>,
    {
        let state = &self.bus.topology.state;
        for attempt in 0..CAS_ATTEMPTS {
            let before = match hint.take() {
                Some(t) => t,
                None => self
                    .load(id)
                    .await?
                    .ok_or_else(|| TaskError::NotFound(id.clone()))?,
            };
            let mut after = match f(&before) {
                Ok(after) => after,
                // A scoped read may come from a lagging replica: refuse only on the latest state.
                Err(e) if self.scope.is_some() && !self.is_latest(&before).await? => {
                    tracing::debug!(task_id = %id, refusal = %e, "stale read; reading again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            after.updated_time = crate::domain::now();
            let key = subjects::state_key(&before.assigned_to, id);
            match state.update(&key, encode(&after), before.revision).await {
                Ok(rev) => {
                    after.revision = rev;
                    self.keep(&after);
                    return Ok((before, after));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    let jitter = rand::random::<u64>() % (1 + attempt as u64 * 2);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(e) => {
                    // No answer is not "not written": during a leader election the write may
                    // have committed with its ack lost. Look until the state can be read: if it
                    // is exactly ours, it was written; otherwise it was not, and the loop
                    // re-applies `f` to the current state.
                    match self.committed(id, &before, &after).await {
                        Some(true) => {
                            let now = self.load(id).await?.unwrap_or(after);
                            return Ok((before, now));
                        }
                        Some(false) => continue,
                        None => return Err(BusError::from_op("kv update", e).into()),
                    }
                }
            }
        }
        Err(TaskError::Contended(id.clone()))
    }

    /// After a write that got no answer: `Some(true)` if the stored state is `after` (it was
    /// written), `Some(false)` if it is not, `None` if the state stayed unreadable for ~10 s.
    async fn committed(&self, id: &TaskId, before: &Task, after: &Task) -> Option<bool> {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(state) = self.load_at_least(id, before.revision + 1).await {
                return Some(state.is_some_and(|now| {
                    let mut ours = after.clone();
                    ours.revision = now.revision;
                    now.revision > before.revision && now == ours
                }));
            }
        }
        None
    }

    /// Appends an event to the task's event stream and waits until it is stored. The state
    /// change it reports has already happened, so a failure here is retried (for about 30 s)
    /// and then logged rather than returned.
    pub(crate) async fn emit(&self, event: &TaskEvent) {
        self.emit_pipelined(event).await;
        self.settle(&event.task_id).await;
    }

    /// Sends an event without waiting for JetStream's answer, so the caller's next write
    /// overlaps with it; [`settle`](Self::settle) waits for it (and retries it if needed). Events
    /// of one task stay in order: the previous one is settled before the next is sent.
    pub(crate) async fn emit_pipelined(&self, event: &TaskEvent) {
        self.settle(&event.task_id).await;
        let sent = SentEvent {
            subject: subjects::event(&event.assigned_to, &event.task_id, event.kind),
            payload: encode(event),
            id: event.id.clone(),
            kind: event.kind,
            ack: None,
        };
        let sent = sent.send(&self.bus).await;
        self.unsettled
            .lock()
            .expect("unsettled lock")
            .insert(event.task_id.clone(), sent);
    }

    /// Emits a state change's event: a worker's service sends it and lets the next write overlap
    /// with its answer (the worker [settles](Self::settle) before acknowledging the task's
    /// message); every other caller waits until it is stored before returning.
    pub(crate) async fn emit_transition(&self, event: &TaskEvent) {
        if self.scope.is_some() {
            self.emit_pipelined(event).await;
        } else {
            self.emit(event).await;
        }
    }

    /// Waits until the task's last sent event is stored (retrying it for up to ~30 s).
    pub async fn settle(&self, id: &TaskId) {
        let sent = self.unsettled.lock().expect("unsettled lock").remove(id);
        if let Some(sent) = sent {
            sent.confirm(&self.bus, id).await;
        }
    }

    /// Removes a task's message from the queue (it was claimed or cancelled without a worker).
    pub(crate) async fn dequeue(&self, seq: Option<u64>) {
        let Some(seq) = seq else { return };
        if let Err(e) = self.bus.topology.tasks.delete_message(seq).await {
            // Already gone (acked by a worker, or deleted by an earlier call): nothing to do.
            tracing::debug!(seq, error.message = %e, "queue message already removed");
        }
    }
}

/// `t` claimed by `holder`: running, a new attempt under a fresh lease (fencing token), out of
/// the queue, with no result or error of an earlier attempt.
pub(crate) fn claimed_by(t: &Task, holder: &str) -> Task {
    let mut n = t.clone();
    n.status = crate::domain::TaskStatus::Running;
    n.attempt += 1;
    n.lease = Some(crate::domain::Lease::new(holder, n.attempt));
    n.started_time = Some(crate::domain::now());
    n.queue_seq = None;
    n.result = None;
    n.error = None;
    n
}

/// An event describing a status change from `before` to `after`.
pub(crate) fn transition_event(
    before: Option<&Task>,
    after: &Task,
    kind: EventKind,
    operator: &str,
    message: Option<String>,
) -> TaskEvent {
    let mut e = TaskEvent::new(&after.id, &after.assigned_to, kind, operator);
    e.attempt = after.attempt;
    e.old_status = before.map(|b| b.status);
    e.new_status = Some(after.status);
    e.message = message;
    e
}

impl BusError {
    /// Wraps an async-nats error with the operation's name.
    pub fn from_op<E: std::error::Error + Send + Sync + 'static>(op: &'static str, e: E) -> Self {
        Err::<(), E>(e).op(op).unwrap_err()
    }
}
