//! Status changes: start (claim), complete, fail, cancel, retry. Each is one append to the
//! task's ledger (state and event together, compared against the last record); illegal ones
//! are refused with nothing written.

use super::write::{Changed, Step};
use super::{claimed_by, transition_event, with_event, TaskError, TaskService};
use crate::bus::{encode, message_headers, subjects, NatsResultExt, RECORDED_HEADER};
use crate::domain::{now, Action, EventKind, NewTask, Task, TaskId, TaskKind, TaskStatus};
use crate::metrics::{task_labels, FinishedLabels};
use serde_json::Value;

fn illegal(t: &Task, action: Action) -> TaskError {
    let hint = match action {
        Action::Start => "only pending tasks can be started",
        Action::Complete | Action::Fail => "only running tasks can be finished",
        Action::Cancel => "only pending or running tasks can be cancelled",
        Action::Retry => "only failed or cancelled tasks can be retried",
    };
    TaskError::IllegalTransition(format!(
        "cannot {} task {}: it is {} ({hint})",
        action.as_str(),
        t.id,
        t.status
    ))
}

fn next_status(t: &Task, action: Action) -> Result<TaskStatus, TaskError> {
    t.status.after(action).ok_or_else(|| illegal(t, action))
}

/// Refuses a finishing call whose fencing token is not the current lease's.
fn check_fence(t: &Task, fence: Option<&str>) -> Result<(), TaskError> {
    let Some(fence) = fence else { return Ok(()) };
    match &t.lease {
        Some(lease) if lease.token == fence => Ok(()),
        _ => Err(TaskError::StaleLease(format!(
            "fencing token {fence} no longer holds task {}: attempt {} holds it now",
            t.id, t.attempt
        ))),
    }
}

/// A one-line rendering of a result for the event's message.
fn summary(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut line: String = s.chars().take(300).collect();
    if s.chars().count() > 300 {
        line.push('…');
    }
    line
}

impl TaskService {
    /// Claims a pending task for `holder`: it becomes `running` with a new attempt and fencing
    /// token. A manual task's queue message stays until it finishes (the queue stream holds
    /// every active task). A worker-run task's moves to its assignee's manual subject, where no
    /// worker pulls it and listings of running tasks still find it (see [`Self::hold_for_api`]).
    pub async fn start(&self, id: &TaskId, holder: &str) -> Result<Task, TaskError> {
        let seen = self.get(id).await?;
        self.start_seen(&seen, holder).await
    }

    /// [`Self::start`] of a task the caller has just read (`seen`, as the API has): its kind,
    /// which never changes, says whether it needs a stand-in, without reading it again.
    #[tracing::instrument(skip(self, seen), fields(task_id = %seen.id))]
    pub async fn start_seen(&self, seen: &Task, holder: &str) -> Result<Task, TaskError> {
        let id = &seen.id;
        let held = self.hold_for_api(seen).await?;
        let changed = self.start_holding(id, holder, held).await;
        match (&changed, held) {
            (Ok(c), Some(_)) => self.dequeue(c.before.queue_seq).await,
            (Err(_), Some(seq)) => self.dequeue(Some(seq)).await,
            (_, None) => {}
        }
        let changed = changed?;
        self.metrics
            .tasks_started
            .get_or_create(&task_labels(&changed.after))
            .inc();
        Ok(changed.after)
    }

    /// Appends `started` for `holder`; with `held`, the task's queue message is that one from
    /// now on (see [`Self::hold_for_api`]).
    async fn start_holding(
        &self,
        id: &TaskId,
        holder: &str,
        held: Option<u64>,
    ) -> Result<Changed, TaskError> {
        let start = |t: &Task| {
            next_status(t, Action::Start)?;
            let mut after = claimed_by(t, holder);
            after.queue_seq = held.or(after.queue_seq);
            let mut step = with_event(t, after, EventKind::Started, holder, None);
            step.event.data = serde_json::json!({ "holder": holder });
            Ok(step)
        };
        match self.change(id, start).await {
            // A delayed task whose schedule fired with no one recording it yet (shown pending):
            // recorded now, then started.
            Err(TaskError::IllegalTransition(why)) => match self.record_fired(id, holder).await? {
                true => self.change(id, start).await,
                false => Err(TaskError::IllegalTransition(why)),
            },
            other => other,
        }
    }

    /// For a worker-run task about to be started over the API: publishes its stand-in on the
    /// assignee's manual subject (`tasks.<a>.<p>`, which no worker pulls) and returns its
    /// sequence, which the `started` record then names. So the queue stream still holds the
    /// running task (listings of running tasks walk it), no worker can take it, and finishing
    /// or cancelling it removes the stand-in as it would a manual task's message. `None` for a
    /// manual task, or one that cannot be started (the start then says why; a stand-in
    /// published for a start that loses is removed again).
    async fn hold_for_api(&self, current: &Task) -> Result<Option<u64>, TaskError> {
        let startable = matches!(current.status, TaskStatus::Pending | TaskStatus::Scheduled);
        if !current.kind.is_worker_run() || !startable {
            return Ok(None);
        }
        let stand_in = NewTask {
            kind: TaskKind::Manual,
            run_at: None,
            ..spec_of(current)
        };
        let seq = self
            .queue_copy(current, &stand_in, EventKind::Started)
            .await?;
        Ok(Some(seq))
    }

    /// Finishes a running task successfully. With `fence`, only the current lease may do it.
    #[tracing::instrument(skip(self, result, fence), fields(task_id = %id))]
    pub async fn complete(
        &self,
        id: &TaskId,
        result: Option<Value>,
        fence: Option<&str>,
        operator: &str,
        detail: Value,
    ) -> Result<Task, TaskError> {
        let finish = Finish::Completed { result, detail };
        let changed = self
            .change(id, |t| finish_step(t, &finish, fence, operator))
            .await?;
        self.finished(&changed, fence.is_none()).await;
        Ok(changed.after)
    }

    /// Finishes a running task unsuccessfully. With `fence`, only the current lease may do it.
    #[tracing::instrument(skip(self, error, fence), fields(task_id = %id))]
    pub async fn fail(
        &self,
        id: &TaskId,
        error: String,
        fence: Option<&str>,
        operator: &str,
        detail: Value,
    ) -> Result<Task, TaskError> {
        let finish = Finish::Failed { error, detail };
        let changed = self
            .change(id, |t| finish_step(t, &finish, fence, operator))
            .await?;
        self.finished(&changed, fence.is_none()).await;
        Ok(changed.after)
    }

    /// A worker's finish of the task it holds (`fence`), sent without waiting for the answer so
    /// that its slot can pull the next task meanwhile; [`finish_settled`](Self::finish_settled)
    /// waits for it. Refused at once (nothing sent) when the state this worker last wrote does
    /// not allow it.
    pub async fn finish_sent(
        &self,
        id: &TaskId,
        finish: Finish,
        fence: &str,
        operator: &str,
    ) -> Result<(), TaskError> {
        let (fence, operator) = (fence.to_string(), operator.to_string());
        self.change_pipelined(id, move |t| {
            finish_step(t, &finish, Some(&fence), &operator)
        })
        .await
        .map(|_| ())
    }

    /// Waits for a finish sent by [`finish_sent`](Self::finish_sent): the task as it finished,
    /// or why it was refused (another writer changed it meanwhile).
    pub async fn finish_settled(&self, id: &TaskId) -> Result<Task, TaskError> {
        let after = match self.settled(id).await {
            Some(result) => result?,
            None => self.get(id).await?,
        };
        if after.status.is_terminal() {
            self.count_finished(&after);
        }
        Ok(after)
    }

    /// Cancels a pending or running task. A pending one leaves the queue at once; a running one
    /// is stopped by the worker holding it, which watches for this event.
    #[tracing::instrument(skip(self), fields(task_id = %id))]
    pub async fn cancel(
        &self,
        id: &TaskId,
        reason: Option<String>,
        operator: &str,
    ) -> Result<Task, TaskError> {
        let changed = self
            .change(id, |t| {
                let mut n = t.clone();
                n.status = next_status(t, Action::Cancel)?;
                n.error = reason.clone();
                n.finished_time = Some(now());
                n.lease = None;
                let message = reason.clone();
                Ok(finished(
                    t,
                    n,
                    EventKind::Cancelled,
                    operator,
                    message,
                    &Value::Null,
                ))
            })
            .await?;
        let (before, after) = (&changed.before, &changed.after);
        if before.status == TaskStatus::Scheduled {
            self.unschedule(before).await;
        }
        if before.status == TaskStatus::Pending || after.kind == TaskKind::Manual {
            self.dequeue(before.queue_seq).await;
        } else {
            self.drop_stand_in(before).await;
        }
        self.count_finished(after);
        Ok(changed.after)
    }

    /// Queues a failed or cancelled task again; the next start is a new attempt.
    #[tracing::instrument(skip(self), fields(task_id = %id))]
    pub async fn retry(&self, id: &TaskId, operator: &str) -> Result<Task, TaskError> {
        let current = self.get(id).await?;
        next_status(&current, Action::Retry)?;
        // Queue first, then record: a worker that pulls the message before the record sees a
        // record older than the message and looks again shortly; a crash in between leaves a
        // message the worker drops after a minute, never a pending task nobody can run.
        let seq = self.requeue(&current).await?;
        let changed = self
            .change(id, |t| {
                let mut n = t.clone();
                n.status = next_status(t, Action::Retry)?;
                n.queue_seq = Some(seq);
                n.lease = None;
                n.finished_time = None;
                n.started_time = None;
                n.result = None;
                n.error = None;
                n.progress.done = 0;
                n.progress.current = n.steps.first().cloned();
                n.progress.percent = None;
                Ok(with_event(t, n, EventKind::Retried, operator, None))
            })
            .await;
        match changed {
            Ok(c) => Ok(c.after),
            Err(e) => {
                self.dequeue(Some(seq)).await;
                Err(e)
            }
        }
    }

    /// Publishes a fresh queue message for `task` (a retry); returns its sequence.
    async fn requeue(&self, current: &Task) -> Result<u64, TaskError> {
        let mut spec = spec_of(current);
        // A retry runs now, whenever the task was first due.
        spec.run_at = None;
        self.queue_copy(current, &spec, EventKind::Retried).await
    }

    /// Publishes `spec`, a create body for `current`, on its queue subject, marked as recorded
    /// by an event of type `recorded` (`Taskfleet-Recorded`) and with a message id of its own
    /// (`<task id>-<type>-<ulid>`); returns its sequence.
    async fn queue_copy(
        &self,
        current: &Task,
        spec: &NewTask,
        recorded: EventKind,
    ) -> Result<u64, TaskError> {
        let subject = subjects::task(&spec.assigned_to, spec.priority, spec.kind, spec.share());
        let msg_id = format!("{}-{}-{}", current.id, recorded.as_str(), ulid::Ulid::new());
        let mut headers = message_headers(&msg_id);
        headers.insert(RECORDED_HEADER, recorded.as_str());
        Ok(self
            .bus
            .js
            .publish_with_headers(subject, headers, encode(spec))
            .await
            .op("publish task")?
            .await
            .op("publish task ack")?
            .sequence)
    }

    /// After a finish: counts it, and removes the queue message of a task no worker holds (a
    /// manual task, one finished over the API without a fencing token, or the stand-in of one
    /// started over the API).
    async fn finished(&self, changed: &Changed, by_api: bool) {
        let after = &changed.after;
        if after.kind == TaskKind::Manual || by_api {
            self.dequeue(after.queue_seq).await;
        } else {
            self.drop_stand_in(after).await;
        }
        self.count_finished(after);
    }

    /// Whether worker-run task `t` runs from the stand-in its start over the API left on the
    /// manual subject (see [`Self::hold_for_api`]): a bot holds it, not a worker.
    pub async fn runs_from_stand_in(&self, t: &Task) -> bool {
        let Some(seq) = t.queue_seq.filter(|_| t.kind.is_worker_run()) else {
            return false;
        };
        let Ok(m) = self.bus.topology.tasks.get_raw_message(seq).await else {
            return false;
        };
        subjects::parse_task(&m.subject).is_some_and(|(_, _, k)| k == TaskKind::Manual)
    }

    /// Removes the queue message of worker-run task `t` if it is its stand-in. A message a
    /// worker holds is left to that worker's ack.
    async fn drop_stand_in(&self, t: &Task) {
        if self.runs_from_stand_in(t).await {
            self.dequeue(t.queue_seq).await;
        }
    }

    fn count_finished(&self, after: &Task) {
        self.metrics
            .tasks_finished
            .get_or_create(&FinishedLabels {
                assignee: after.assigned_to.to_string(),
                priority: after.priority.to_string(),
                status: after.status.to_string(),
            })
            .inc();
    }

    /// Removes a task's message from the queue (it finished, or was claimed without a worker).
    pub(crate) async fn dequeue(&self, seq: Option<u64>) {
        let Some(seq) = seq else { return };
        if let Err(e) = self.bus.topology.tasks.delete_message(seq).await {
            // Already gone (acked by a worker, or deleted by an earlier call): nothing to do.
            tracing::debug!(seq, error.message = %e, "queue message already removed");
        }
    }
}

/// The create body that queues `current` again (a retry, or a delayed task's schedule).
pub(super) fn spec_of(current: &Task) -> NewTask {
    NewTask {
        id: Some(current.id.clone()),
        task_name: current.task_name.clone(),
        assigned_to: current.assigned_to.clone(),
        priority: current.priority,
        created_by: current.created_by.clone(),
        description: current.description.clone(),
        kind: current.kind,
        payload: Some(current.payload.clone()),
        steps: current.steps.clone(),
        notify: current.notify.clone(),
        timeout_s: current.timeout_s,
        max_attempts: Some(current.max_attempts),
        idempotency_key: current.idempotency_key.clone(),
        run_at: current.run_at,
        delay_s: None,
        // Folding happens at create; a queued or held body is never folded again.
        debounce_key: None,
        debounce_s: None,
        concurrency_key: current.concurrency_key.clone(),
        rate_key: current.rate_key.clone(),
        lane: current.lane.clone(),
        tenant: current.tenant.clone(),
        fair_turn: current.fair_turn,
    }
}

/// How a run ended, to be recorded.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Completed with a result.
    Completed {
        /// What `complete` reports (any JSON).
        result: Option<Value>,
        /// Extra event data (exit code, byte counts…).
        detail: Value,
    },
    /// Failed with an error.
    Failed {
        /// Why.
        error: String,
        /// Extra event data.
        detail: Value,
    },
}

/// The pure part of complete/fail: the state `finish` leaves the task `t` in and the event
/// recording it, or why it is refused (not running: illegal; `fence` given and not the current
/// lease's token: stale). Nothing is written: [`TaskService::complete`] and
/// [`TaskService::fail`] write it.
pub fn finish_state(
    t: &Task,
    finish: &Finish,
    fence: Option<&str>,
    operator: &str,
) -> Result<(Task, crate::domain::TaskEvent), TaskError> {
    finish_step(t, finish, fence, operator).map(|step| (step.after, step.event))
}

/// The change `finish` makes to the running task `t` (fenced by `fence` when given).
fn finish_step(
    t: &Task,
    finish: &Finish,
    fence: Option<&str>,
    operator: &str,
) -> super::write::Outcome {
    let (action, kind) = match finish {
        Finish::Completed { .. } => (Action::Complete, EventKind::Completed),
        Finish::Failed { .. } => (Action::Fail, EventKind::Failed),
    };
    let status = next_status(t, action)?;
    check_fence(t, fence)?;
    let mut n = t.clone();
    n.status = status;
    n.finished_time = Some(now());
    n.lease = None;
    let (message, detail) = match finish {
        Finish::Completed { result, detail } => {
            n.result = result.clone();
            if n.progress.total > 0 {
                n.progress.done = n.progress.total;
                n.progress.current = None;
            }
            (n.result.as_ref().map(summary), detail)
        }
        Finish::Failed { error, detail } => {
            n.error = Some(error.clone());
            (Some(error.clone()), detail)
        }
    };
    Ok(finished(t, n, kind, operator, message, detail))
}

/// The step of a finishing change: the event carries `detail` and the attempt's duration.
fn finished(
    before: &Task,
    after: Task,
    kind: EventKind,
    operator: &str,
    message: Option<String>,
    detail: &Value,
) -> Step {
    let mut event = transition_event(Some(before), &after, kind, operator, message);
    let mut data = match detail {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if let (Some(start), Some(end)) = (before.started_time, after.finished_time) {
        data.insert(
            "duration_ms".into(),
            (end - start).num_milliseconds().into(),
        );
    }
    if !data.is_empty() {
        event.data = Value::Object(data);
    }
    Step::new(after, event)
}
