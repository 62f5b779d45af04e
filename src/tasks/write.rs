//! The write path: every change is one append of (event, state after) to the task's ledger
//! subject, compared against the last sequence there (`bus::append`). A lost race is read
//! again and re-applied; a lost answer is sent again under the same `Nats-Msg-Id` and
//! recognised if it was stored after all.
//!
//! A worker keeps a chain per task it runs: the state it last wrote (its next change starts
//! from it instead of reading) and at most one write still on its way. Progress reports
//! (`record`, steps, heartbeats) are pipelined: the caller goes on once the write is sent; the
//! next write of the same task first waits for it, so writes stay in order and each compares
//! against the sequence of the one before. A pipelined write that loses a race is re-applied to
//! the current state, or dropped when that state refuses it (say, a step after a cancel).

use super::ledger::{encode_record, Stored};
use super::{TaskError, TaskService};
use crate::bus::append::{send_batch, Append, AppendError, Sent};
use crate::bus::subjects;
use crate::domain::{EventKind, Task, TaskEvent, TaskId, TaskStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Compare-and-set attempts before a change gives up as contended.
const CAS_ATTEMPTS: usize = 64;

/// How long a write whose answer never came is sent again (a cluster's leader election).
const UNKNOWN_OUTCOME_LIMIT: Duration = Duration::from_secs(30);

/// What a change function returns.
pub(crate) type Outcome = Result<Step, TaskError>;

/// One change: the state after it and the event recording it, optionally preceded (in the same
/// atomic batch) by an intermediate state and its own event (a takeover records `retried`
/// before its `started`).
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) after: Task,
    pub(crate) event: TaskEvent,
    pub(crate) prelude: Option<(Task, TaskEvent)>,
}

impl Step {
    /// A change written as one message.
    pub(crate) fn new(after: Task, event: TaskEvent) -> Self {
        Self {
            after,
            event,
            prelude: None,
        }
    }
}

/// A change function kept for a pipelined write (re-applied if the write loses a race).
type Redo = Box<dyn FnMut(&Task) -> Outcome + Send>;

/// A stored change.
#[derive(Debug, Clone)]
pub(crate) struct Changed {
    /// The state it was applied to.
    pub(crate) before: Task,
    /// The state written (its `revision` is the new ledger sequence).
    pub(crate) after: Task,
}

/// A worker's write chain of one task.
#[derive(Default)]
pub(crate) struct Chain {
    /// The state this process last wrote (or read), if still known.
    last: Option<Task>,
    /// A pipelined write not confirmed yet.
    inflight: Option<InFlight>,
}

struct InFlight {
    write: Write,
    sent: Option<Sent>,
    redo: Redo,
    after: Task,
}

/// Chains by task id.
#[derive(Clone, Default)]
pub(crate) struct Chains(Arc<Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<Chain>>>>>);

impl std::fmt::Debug for Chains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().expect("chains lock").len();
        f.debug_struct("Chains").field("tasks", &n).finish()
    }
}

impl Chains {
    fn of(&self, id: &TaskId) -> Arc<tokio::sync::Mutex<Chain>> {
        self.0
            .lock()
            .expect("chains lock")
            .entry(id.clone())
            .or_default()
            .clone()
    }

    fn remove(&self, id: &TaskId) {
        self.0.lock().expect("chains lock").remove(id);
    }
}

/// The messages of one change (see [`TaskService::write_for`]).
#[derive(Debug)]
struct Write {
    appends: Vec<Append>,
    /// The id of the change's event (how a re-sent write recognises its first copy).
    event_id: String,
    /// Messages after the event in the batch (its index entry).
    after_event: usize,
}

/// The index entry of a task that just became failed or cancelled (a literal-prefix subject
/// the listing of those statuses walks; see `listing.rs`): the same record as the event's
/// ledger message, so a listing shows the task from the entry alone.
fn index_entry(after: &Task, event: &TaskEvent) -> Append {
    let subject = subjects::status_index(after.status, &after.assigned_to, &after.id);
    index_append(subject, event, encode_record(event, after))
}

/// What replaces the index entry of a failed or cancelled task (`before`) that is retried: an
/// entry with no state, which a listing does not take on trust (it reads the task, now pending).
fn index_retraction(before: &Task, event: &TaskEvent) -> Append {
    let subject = subjects::status_index(before.status, &before.assigned_to, &before.id);
    let payload = serde_json::json!({ "event": event.id, "retracted": true });
    index_append(subject, event, payload.to_string().into())
}

/// An index message of `event`'s change on `subject` (unguarded: it goes after the event in
/// the change's batch, and only a batch's first message is checked).
fn index_append(subject: String, event: &TaskEvent, payload: bytes::Bytes) -> Append {
    Append {
        guard: subject.clone(),
        subject,
        expected: 0,
        msg_id: format!("{}.index", event.id),
        extra: Vec::new(),
        payload,
    }
}

/// How an append ended once its outcome is known.
enum Appended {
    Stored(u64),
    Conflict(Option<u64>),
}

impl TaskService {
    /// Applies `f` to the current state and appends the result if nobody wrote in between;
    /// re-reads and re-applies on conflict. `f` refuses by returning an error, which is passed
    /// on with nothing written. A worker's change waits for its pipelined writes first.
    pub(crate) async fn change<F>(&self, id: &TaskId, f: F) -> Result<Changed, TaskError>
    where
        F: FnMut(&Task) -> Outcome + Send,
    {
        self.change_from(id, None, f).await
    }

    /// [`change`](Self::change) trying `hint` (a state just read) before reading.
    pub(crate) async fn change_from<F>(
        &self,
        id: &TaskId,
        hint: Option<Task>,
        f: F,
    ) -> Result<Changed, TaskError>
    where
        F: FnMut(&Task) -> Outcome + Send,
    {
        if self.scope.is_none() {
            return self.write_loop(id, hint, 0, f).await;
        }
        let chain = self.chains.of(id);
        let mut c = chain.lock().await;
        self.settle_chain(id, &mut c).await;
        let hint = hint.or_else(|| c.last.take());
        let result = self.write_loop(id, hint, 0, f).await;
        c.last = result.as_ref().ok().map(|ch| ch.after.clone());
        result
    }

    /// A worker's progress report: applied to the state it last wrote and sent without waiting
    /// for the answer (the chain settles it before the task's next write). Returns the state
    /// sent. Other services wait, as [`change`](Self::change) does.
    pub(crate) async fn change_pipelined<F>(&self, id: &TaskId, mut f: F) -> Result<Task, TaskError>
    where
        F: FnMut(&Task) -> Outcome + Send + 'static,
    {
        if self.scope.is_none() {
            return Ok(self.change(id, f).await?.after);
        }
        let chain = self.chains.of(id);
        let mut c = chain.lock().await;
        self.settle_chain(id, &mut c).await;
        let before = match c.last.take() {
            Some(t) => t,
            None => self.get(id).await?,
        };
        let step = f(&before)?;
        let after = step.after.clone();
        let write = self.write_for(&before, step);
        let sent = send_batch(&self.bus.js, &write.appends).await.ok();
        c.inflight = Some(InFlight {
            write,
            sent,
            redo: Box::new(f),
            after: after.clone(),
        });
        Ok(after)
    }

    /// Waits until the task's pipelined write (if any) is stored, re-applied or dropped.
    pub async fn settle(&self, id: &TaskId) {
        let _ = self.settled(id).await;
    }

    /// [`settle`](Self::settle), telling how the pipelined write ended: the state it left, or
    /// why it was refused when re-applied to a state that changed meanwhile; `None` when no
    /// write was on its way.
    pub(crate) async fn settled(&self, id: &TaskId) -> Option<Result<Task, TaskError>> {
        self.scope.as_ref()?;
        let chain = self.chains.of(id);
        let mut c = chain.lock().await;
        self.settle_chain(id, &mut c).await
    }

    /// Starts the task's chain at `state` (just claimed): its next change needs no read.
    pub(crate) async fn keep(&self, state: &Task) {
        if self.scope.is_some() {
            self.chains.of(&state.id).lock().await.last = Some(state.clone());
        }
    }

    /// Drops the task's chain (this worker is done with it), after settling it.
    pub async fn forget(&self, id: &TaskId) {
        self.settle(id).await;
        self.chains.remove(id);
    }

    async fn settle_chain(&self, id: &TaskId, c: &mut Chain) -> Option<Result<Task, TaskError>> {
        let InFlight {
            write,
            sent,
            mut redo,
            mut after,
        } = c.inflight.take()?;
        let result = match self.until_known(id, &write, sent).await {
            Ok(Appended::Stored(seq)) => {
                after.revision = seq;
                Ok(after)
            }
            Ok(Appended::Conflict(current)) => self
                .write_loop(id, None, current.unwrap_or(0), &mut redo)
                .await
                .map(|changed| changed.after),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::debug!(task_id = %id, error.message = %e, "pipelined write not recorded");
        }
        c.last = result.as_ref().ok().cloned();
        Some(result)
    }

    /// The compare-and-set loop. `at_least` is a ledger sequence the server reported (a read
    /// older than it is a lagging replica's).
    async fn write_loop<F>(
        &self,
        id: &TaskId,
        mut hint: Option<Task>,
        mut at_least: u64,
        mut f: F,
    ) -> Result<Changed, TaskError>
    where
        F: FnMut(&Task) -> Outcome + Send,
    {
        for attempt in 0..CAS_ATTEMPTS {
            let before = match hint.take() {
                Some(t) => t,
                None => self.current(id, at_least).await?,
            };
            let mut step = f(&before)?;
            if step.event.kind != EventKind::Stalled {
                step.after.updated_time = crate::domain::now();
            }
            let mut after = step.after.clone();
            let kind = step.event.kind;
            let write = self.write_for(&before, step);
            let outcome = self.until_known(id, &write, None).await?;
            tracing::trace!(task_id = %id, event = kind.as_str(), expected = before.revision,
                status = %after.status, stored = ?matches!(outcome, Appended::Stored(_)), "append");
            match outcome {
                Appended::Stored(seq) => {
                    after.revision = seq;
                    self.remember(id, &after.assigned_to);
                    return Ok(Changed { before, after });
                }
                Appended::Conflict(current) => {
                    at_least = current.unwrap_or(before.revision + 1);
                    let jitter = rand::random::<u64>() % (1 + attempt as u64 * 2);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
            }
        }
        Err(TaskError::Contended(id.clone()))
    }

    async fn current(&self, id: &TaskId, at_least: u64) -> Result<Task, TaskError> {
        self.read_at_least(id, at_least)
            .await?
            .map(|s| s.task)
            .ok_or_else(|| TaskError::NotFound(id.clone()))
    }

    /// The append of `event` with `after`, guarded by `before`'s revision.
    fn append_for(&self, before: &Task, after: &Task, event: &TaskEvent) -> Append {
        let (a, id) = (&after.assigned_to, &after.id);
        Append {
            subject: subjects::ledger_write(a, id, event.kind),
            guard: subjects::task_ledger(a, id),
            expected: before.revision,
            msg_id: event.id.clone(),
            extra: Vec::new(),
            payload: encode_record(event, after),
        }
    }

    /// The messages of one change: the prelude's event (a takeover's `retried`, guarded), the
    /// event with the state after it (guarded when it comes first), and, for a task that became
    /// failed or cancelled, its index entry (for one retried from there, the entry's
    /// retraction); more than one go as one atomic batch.
    fn write_for(&self, before: &Task, step: Step) -> Write {
        let Step {
            after,
            event,
            prelude,
        } = step;
        let mut appends = Vec::new();
        if let Some((mid, first)) = prelude {
            appends.push(self.append_for(before, &mid, &first));
        }
        let event_id = event.id.clone();
        appends.push(self.append_for(before, &after, &event));
        let indexed = matches!(after.status, TaskStatus::Failed | TaskStatus::Cancelled)
            && event.kind.is_transition();
        let retracted = event.kind == EventKind::Retried
            && matches!(before.status, TaskStatus::Failed | TaskStatus::Cancelled);
        if indexed {
            appends.push(index_entry(&after, &event));
        } else if retracted {
            appends.push(index_retraction(before, &event));
        }
        Write {
            appends,
            event_id,
            after_event: usize::from(indexed || retracted),
        }
    }

    /// Sends `write` (unless `sent` already did) until its outcome is known: stored, lost to
    /// another writer, or refused. Without an answer it is sent again for up to
    /// [`UNKNOWN_OUTCOME_LIMIT`]; a conflict after such a re-send may be our own first copy,
    /// recognised by its event id.
    async fn until_known(
        &self,
        id: &TaskId,
        write: &Write,
        mut sent: Option<Sent>,
    ) -> Result<Appended, TaskError> {
        let started = Instant::now();
        let mut resent = false;
        let mut pause = Duration::from_millis(100);
        loop {
            let outcome = match sent.take() {
                Some(s) => s.stored().await,
                None => match send_batch(&self.bus.js, &write.appends).await {
                    Ok(s) => s.stored().await,
                    Err(e) => Err(e),
                },
            };
            match outcome {
                // The event's sequence: the entries after it in the batch come right after.
                Ok(seq) => return Ok(Appended::Stored(seq - write.after_event as u64)),
                Err(AppendError::Conflict { current }) if resent => {
                    return self.ours_or_conflict(id, &write.event_id, current).await
                }
                Err(AppendError::Conflict { current }) => return Ok(Appended::Conflict(current)),
                Err(AppendError::Refused(e)) => return Err(e.into()),
                Err(AppendError::Unknown(e)) if started.elapsed() >= UNKNOWN_OUTCOME_LIMIT => {
                    return Err(e.into())
                }
                Err(AppendError::Unknown(e)) => {
                    tracing::debug!(task_id = %id, error.message = %e, "no answer; sending again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    resent = true;
                }
            }
        }
    }

    /// Appends the first record of `task` (nothing may exist for it yet): `Some(sequence)`, or
    /// `None` when the task has a record already.
    pub(crate) async fn append_first(
        &self,
        task: &Task,
        event: &TaskEvent,
    ) -> Result<Option<u64>, TaskError> {
        let mut none = task.clone();
        none.revision = 0;
        let write = self.write_for(&none, Step::new(task.clone(), event.clone()));
        match self.until_known(&task.id, &write, None).await? {
            Appended::Stored(seq) => {
                self.remember(&task.id, &task.assigned_to);
                Ok(Some(seq))
            }
            Appended::Conflict(_) => Ok(None),
        }
    }

    /// After a re-send met a conflict: was the first copy stored after all?
    async fn ours_or_conflict(
        &self,
        id: &TaskId,
        event_id: &str,
        current: Option<u64>,
    ) -> Result<Appended, TaskError> {
        let latest: Option<Stored> = self.read_at_least(id, current.unwrap_or(0)).await?;
        Ok(match latest {
            Some(s) if s.event_id == event_id => Appended::Stored(s.task.revision),
            _ => Appended::Conflict(current),
        })
    }
}
