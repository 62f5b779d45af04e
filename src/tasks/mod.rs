//! The task service: every task state change goes through here, as one append to the task
//! ledger (the `EVENTS` stream) that is at once the compare-and-set, the new state and the event.
//!
//! - the record format and state reads in `ledger.rs`; the write path (compare-and-set, retries
//!   after a lost answer, a worker's pipelined writes) in `write.rs`;
//! - [`create`](TaskService::create): publish to the queue, then record `created`;
//! - delayed tasks (`run_at`), held by the broker's message schedules, in `delayed.rs`;
//!   debounced creates (`debounce_key`), folded into one delayed task, in `debounce.rs`;
//! - transitions (`start`, `complete`, `fail`, `cancel`, `retry`) in `transitions.rs`;
//! - what workers do (claim, take over, give up, hand back) in `claim.rs`;
//! - the pending list, read straight from the queue stream, in `queue.rs`; queue messages no
//!   client can read, in the queue or in a task's log, moved aside, in `unreadable.rs`;
//! - listings newest first, logs and live event feeds in `history.rs` and `listing.rs`;
//! - Live Task Pulse reports (`step`, `heartbeat`, `progress`) in `progress.rs`;
//! - idempotent actions (`Idempotency-Key`) in `idempotency.rs`;
//! - removing long-finished tasks (retention) in `cleanup.rs`;
//! - converting a store from before the ledger (`taskfleet migrate`) in `migrate.rs`.

mod claim;
mod cleanup;
mod create;
mod debounce;
mod delayed;
mod every;
mod gauges;
mod history;
mod idempotency;
pub mod ledger;
mod listing;
pub mod migrate;
mod progress;
mod queue;
mod running;
mod transitions;
mod unreadable;
mod write;

pub use claim::{claim_state, ClaimOutcome, Delivery};
pub use cleanup::{Sweeper, DEFAULT_KEEP};
pub use create::Created;
pub use gauges::{QueueGauges, WALK_BUDGET};
pub use history::{Cursor, ListFilter};
pub use idempotency::{Applied, MAX_KEY_CHARS};
pub use listing::Page;
pub use migrate::{is_migration, migrate, MigrateError, Migrated};
pub use progress::MAX_INFO_CHARS;
pub use queue::{decode_queued, refused_task, QueuedMessage};
pub use transitions::{finish_state, Finish};

use crate::bus::{subjects, Bus, BusError};
use crate::domain::{Assignee, EventKind, Task, TaskEvent, TaskId};
use crate::memory::Memory;
use crate::metrics::Metrics;
use ledger::Stored;
use std::sync::Arc;
use std::time::Duration;
use unreadable::Covered;

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
    located: Memory<TaskId, Assignee>,
    /// A worker's write chain per task it runs: the state it last wrote and the write still
    /// on its way (see `write.rs`).
    chains: write::Chains,
    /// How far ahead a task may be scheduled, in days (`scheduling.max_delay_days`).
    max_delay_days: u64,
    /// Ledger filters holding a message this process may not move aside, warned about once
    /// (see `unreadable.rs`).
    unreadable_warned: Memory<String>,
    /// This process's NATS permissions, kept once the server answered (see `unreadable.rs`).
    user_permissions: Arc<tokio::sync::OnceCell<crate::bus::permissions::Permissions>>,
    /// The running tasks this process knows of, for `running` listings (see `running.rs`).
    running: running::RunningIndex,
    /// Tasks published straight to NATS known to have a record, each with the sequence of one
    /// (see `every.rs`).
    recorded: Memory<TaskId, u64>,
    /// How far back each walked source's last newest page reached, in stream sequences, and
    /// for how many tasks (see `listing.rs`).
    reach: Memory<String, (u64, usize)>,
}

/// Ids remembered before the id → assignee cache starts over.
const LOCATED_CAP: usize = 100_000;

impl TaskService {
    /// A service over `bus`, counting into `metrics`.
    pub fn new(bus: Bus, metrics: Arc<Metrics>) -> Self {
        Self {
            bus: Arc::new(bus),
            metrics,
            scope: None,
            located: Memory::new(LOCATED_CAP),
            chains: write::Chains::default(),
            max_delay_days: crate::domain::limits::MAX_DELAY_DAYS,
            unreadable_warned: Memory::new(unreadable::WARNED_CAP),
            user_permissions: Arc::default(),
            running: running::RunningIndex::default(),
            recorded: Memory::new(every::RECORDED_CAP),
            reach: Memory::new(listing::REACH_CAP),
        }
    }

    /// The same service refusing `run_at` more than `days` ahead.
    pub fn with_max_delay_days(mut self, days: u64) -> Self {
        self.max_delay_days = days;
        self
    }

    /// The same service keeping at most `cap` tasks in its running index (0: none; running
    /// listings then walk the queue).
    pub fn with_running_index_cap(mut self, cap: usize) -> Self {
        self.running = running::RunningIndex::new(cap);
        self
    }

    /// The same service limited to `assignee`'s tasks, as a worker for it: state is read with
    /// direct gets of `events.<assignee>.<id>.<type>` (what its NATS user may read), and its
    /// progress reports are pipelined (see `write.rs`).
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

    fn remember(&self, id: &TaskId, assignee: &Assignee) {
        self.located.insert(id.clone(), assignee.clone());
    }

    fn assignee_of(&self, id: &TaskId) -> Option<Assignee> {
        self.scope.clone().or_else(|| self.located.get(id))
    }

    /// The task's latest state.
    async fn load(&self, id: &TaskId) -> Result<Option<Task>, TaskError> {
        Ok(self.read(id).await?.map(|s| s.task))
    }

    /// The task's latest ledger record. Unscoped, it is read from the stream leader (a direct
    /// get may be answered by a lagging replica) as JSON; an id seen for the first time is
    /// found under any assignee. Scoped, it is a worker's direct gets of its assignee's literal
    /// subjects, over the reader connection. Either way a message no client can read in the
    /// task's log is moved aside first (see `unreadable.rs`).
    async fn read(&self, id: &TaskId) -> Result<Option<Stored>, TaskError> {
        let stored = match &self.scope {
            Some(a) => {
                let filter = subjects::task_ledger(a, id);
                let covered = Covered::Ledger(&filter, 1, usize::MAX);
                self.read_on_reader(covered, |client| async move {
                    let events = ledger::events_over(client).await?;
                    ledger::scoped_last(&events, a, id).await
                })
                .await?
            }
            None => self.leader_read(self.assignee_of(id).as_ref(), id).await?,
        };
        if let Some(s) = &stored {
            self.remember(&s.task.id, &s.task.assigned_to);
        }
        Ok(stored)
    }

    /// Re-reads until the record is at least at `revision` (a replica that answered an older
    /// one lags behind a write the server already reported), for about 2 s at most.
    pub(crate) async fn read_at_least(
        &self,
        id: &TaskId,
        revision: u64,
    ) -> Result<Option<Stored>, TaskError> {
        let mut stored = self.read(id).await?;
        for _ in 0..100 {
            let fresh = stored.as_ref().is_some_and(|s| s.task.revision >= revision);
            if fresh || self.scope.is_none() || revision == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            stored = self.read(id).await?;
        }
        Ok(stored)
    }
}

/// `t` claimed by `holder`: running, a new attempt under a fresh lease (fencing token), with no
/// result or error of an earlier attempt. `queue_seq` stays: it names the queue message this
/// attempt came from.
pub fn claimed_by(t: &Task, holder: &str) -> Task {
    let mut n = t.clone();
    n.status = crate::domain::TaskStatus::Running;
    n.attempt += 1;
    n.lease = Some(crate::domain::Lease::new(holder, n.attempt));
    n.started_time = Some(crate::domain::now());
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

/// `after` with the event of the change from `before` (the usual result of a change function).
pub(crate) fn with_event(
    before: &Task,
    after: Task,
    kind: EventKind,
    operator: &str,
    message: Option<String>,
) -> write::Step {
    let e = transition_event(Some(before), &after, kind, operator, message);
    write::Step::new(after, e)
}
