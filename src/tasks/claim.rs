//! What workers do to tasks: claim a queue message (taking over a task whose holder died),
//! give up after `max_attempts` (dead letter), and hand a task back on shutdown.

use super::create::created_event;
use super::queue::{decode_queued, queued_task, recorded, QueuedMessage};
use super::{claimed_by, transition_event, TaskError, TaskService};
use crate::bus::{encode, message_headers, subjects, BusError, NatsResultExt};
use crate::domain::{now, EventKind, NewTask, Task, TaskId, TaskStatus};
use crate::metrics::task_labels;
use async_nats::jetstream::kv;

/// What a worker should do with a message it pulled.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// Run it: the task is `running` under this worker's lease.
    Run(Task),
    /// Nothing to run (finished, cancelled, claimed over the API, or not a valid task): ack it.
    Skip(String),
    /// The attempts are used up: the task is now `failed` and dead-lettered; ack it.
    GaveUp(Task),
}

enum Claimed {
    Started,
    TookOver { previous: String },
    GaveUp,
}

impl TaskService {
    /// Claims the task a pulled queue message stands for. `redelivered` is true when JetStream
    /// delivered this message before (the previous holder stopped acknowledging it).
    #[tracing::instrument(skip_all, fields(worker = worker, seq = msg.seq))]
    pub async fn claim_for_worker(
        &self,
        msg: QueuedMessage<'_>,
        worker: &str,
        redelivered: bool,
    ) -> Result<ClaimOutcome, TaskError> {
        let (id, new) = match decode_queued(msg) {
            Ok(decoded) => decoded,
            Err(why) => return Ok(ClaimOutcome::Skip(format!("not a valid task: {why}"))),
        };
        if !redelivered && !recorded(msg) {
            if let Some(run) = self.claim_unrecorded(msg, &id, new, worker).await? {
                return Ok(run);
            }
        }
        let Some(current) = self.task_for_message(msg).await? else {
            return Ok(ClaimOutcome::Skip("not a valid task".into()));
        };
        let mut what = Claimed::Started;
        let changed = self
            .change_from(&id, Some(current), |t| {
                match t.status {
                    TaskStatus::Pending => what = Claimed::Started,
                    TaskStatus::Running if redelivered => {
                        let previous = t
                            .lease
                            .as_ref()
                            .map(|l| l.holder.clone())
                            .unwrap_or_default();
                        if t.attempt >= t.max_attempts {
                            what = Claimed::GaveUp;
                            let mut n = t.clone();
                            n.status = TaskStatus::Failed;
                            n.error = Some(format!(
                                "gave up after {} attempts: {previous} stopped renewing its lease",
                                t.attempt
                            ));
                            n.finished_time = Some(now());
                            n.lease = None;
                            return Ok(n);
                        }
                        what = Claimed::TookOver { previous };
                    }
                    other => {
                        return Err(TaskError::IllegalTransition(format!(
                            "task is {other}, not pending"
                        )))
                    }
                }
                Ok(claimed_by(t, worker))
            })
            .await;
        let (before, after) = match changed {
            Ok(pair) => pair,
            Err(TaskError::IllegalTransition(why)) => {
                self.settle(&id).await;
                return Ok(ClaimOutcome::Skip(why));
            }
            Err(e) => {
                self.settle(&id).await;
                return Err(e);
            }
        };
        match what {
            Claimed::GaveUp => {
                let message = after.error.clone();
                let e = transition_event(Some(&before), &after, EventKind::Failed, worker, message);
                self.emit(&e).await;
                self.dead_letter(&after).await?;
                Ok(ClaimOutcome::GaveUp(after))
            }
            Claimed::TookOver { previous } => {
                let mut retried = transition_event(
                    Some(&before),
                    &after,
                    EventKind::Retried,
                    worker,
                    Some(format!(
                        "lease of {previous} expired; attempt {} of {} on {worker}",
                        after.attempt, after.max_attempts
                    )),
                );
                retried.old_status = Some(TaskStatus::Running);
                retried.new_status = Some(TaskStatus::Pending);
                self.ensure_started_recorded(&before, worker).await;
                self.emit(&retried).await;
                self.started(&after, worker).await;
                Ok(ClaimOutcome::Run(after))
            }
            Claimed::Started => {
                self.started(&after, worker).await;
                Ok(ClaimOutcome::Run(after))
            }
        }
    }

    /// A task published straight to NATS, seen for the first time: its state entry is created
    /// already claimed (one write instead of a create and a claim), with its `created` and
    /// `started` events. `None` when the entry exists (someone listed or claimed it first).
    async fn claim_unrecorded(
        &self,
        msg: QueuedMessage<'_>,
        id: &TaskId,
        new: NewTask,
        worker: &str,
    ) -> Result<Option<ClaimOutcome>, TaskError> {
        let pending = queued_task(msg, id.clone(), new);
        let mut running = claimed_by(&pending, worker);
        running.updated_time = now();
        let key = subjects::state_key(&running.assigned_to, id);
        match self.bus.topology.state.create(key, encode(&running)).await {
            Ok(rev) => {
                running.revision = rev;
                self.remember(id, &running.assigned_to);
                self.keep(&running);
                self.emit_transition(&created_event(&pending, "nats")).await;
                self.metrics
                    .tasks_created
                    .get_or_create(&task_labels(&pending))
                    .inc();
                self.started(&running, worker).await;
                Ok(Some(ClaimOutcome::Run(running)))
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(BusError::from_op("kv create", e).into()),
        }
    }

    async fn started(&self, after: &Task, worker: &str) {
        self.emit_transition(&started_event(after, worker)).await;
        self.metrics
            .tasks_started
            .get_or_create(&task_labels(after))
            .inc();
    }

    /// Before taking over attempt N, makes sure attempt N's `started` is in the log. Its holder
    /// may have lost the answer to its claim during a leader election while the claim committed,
    /// and then seen our takeover instead of its own state: it never sent `started`. The event
    /// is re-sent with its deterministic id, so JetStream drops it if the holder did send it.
    async fn ensure_started_recorded(&self, running: &Task, worker: &str) {
        if running.attempt == 0 || self.started_recorded(running).await {
            return;
        }
        let holder = running.lease.as_ref().map_or("", |l| l.holder.as_str());
        let mut e = started_event(running, holder);
        if let Some(at) = running.started_time {
            e.time = at;
        }
        e.data["recorded_by"] = worker.into();
        self.emit(&e).await;
    }

    /// Whether the log holds a `started` event for the task's current attempt (or a later one).
    async fn started_recorded(&self, task: &Task) -> bool {
        let subject = subjects::event(&task.assigned_to, &task.id, EventKind::Started);
        match self
            .bus
            .topology
            .events
            .direct_get_last_for_subject(subject)
            .await
        {
            Ok(m) => crate::bus::decode::<crate::domain::TaskEvent>("event", &m.payload)
                .is_ok_and(|e| e.attempt >= task.attempt),
            Err(_) => false,
        }
    }

    /// Copies a task that used up its attempts to the dead-letter stream.
    async fn dead_letter(&self, task: &Task) -> Result<(), TaskError> {
        self.bus
            .js
            .publish_with_headers(
                subjects::dead(&task.assigned_to, &task.id),
                message_headers(&format!("dead-{}-{}", task.id, task.attempt)),
                encode(task),
            )
            .await
            .op("publish dead letter")?
            .await
            .op("publish dead letter ack")?;
        Ok(())
    }

    /// Puts a running task back to `pending` (the worker is shutting down and will nak the
    /// message so another replica starts it at once). Only the lease `token` may do this.
    pub async fn hand_back(
        &self,
        task: &Task,
        token: &str,
        worker: &str,
        seq: u64,
    ) -> Result<Task, TaskError> {
        let (before, after) = self
            .change(&task.id, |t| {
                if t.status != TaskStatus::Running
                    || t.lease.as_ref().map(|l| l.token.as_str()) != Some(token)
                {
                    return Err(TaskError::StaleLease(format!(
                        "task {} is no longer held by {worker}",
                        t.id
                    )));
                }
                let mut n = t.clone();
                n.status = TaskStatus::Pending;
                n.lease = None;
                n.started_time = None;
                n.queue_seq = Some(seq);
                Ok(n)
            })
            .await?;
        let e = transition_event(
            Some(&before),
            &after,
            EventKind::Retried,
            worker,
            Some(format!("handed back by {worker}, which is shutting down")),
        );
        self.emit(&e).await;
        Ok(after)
    }

    /// Whether `token` still holds the running task (checked on every lease renewal).
    pub async fn holds(&self, task: &Task, token: &str) -> Result<bool, TaskError> {
        // Any state older than the one this worker holds is a lagging replica's answer.
        let t = self
            .load_at_least(&task.id, task.revision)
            .await?
            .ok_or_else(|| TaskError::NotFound(task.id.clone()))?;
        Ok(t.status == TaskStatus::Running && t.lease.is_some_and(|l| l.token == token))
    }

    /// Records a non-transition event (output, step, heartbeat…) for a task.
    pub async fn record(
        &self,
        task: &Task,
        kind: EventKind,
        operator: &str,
        message: Option<String>,
        data: serde_json::Value,
    ) {
        let mut e = crate::domain::TaskEvent::new(&task.id, &task.assigned_to, kind, operator);
        e.attempt = task.attempt;
        e.message = message;
        e.data = data;
        self.emit_transition(&e).await;
    }

    /// Dead letters, oldest first: tasks that used up their attempts.
    pub async fn dead_letters(
        &self,
        assignee: Option<&crate::domain::Assignee>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        let stream = &self.bus.topology.dead;
        let filter = subjects::dead_filter(assignee);
        let mut out = Vec::new();
        let mut seq = 1;
        while out.len() < limit {
            match stream
                .direct_get_next_for_subject(filter.clone(), Some(seq))
                .await
            {
                Ok(m) => {
                    seq = m.sequence + 1;
                    if let Ok(t) = crate::bus::decode::<Task>("dead letter", &m.payload) {
                        out.push(t);
                    }
                }
                Err(e)
                    if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound =>
                {
                    break
                }
                Err(e) => return Err(crate::bus::BusError::from_op("direct get", e).into()),
            }
        }
        Ok(out)
    }
}

/// The `started` event of `running`'s attempt, under `worker`. It has one id per attempt,
/// whoever sends it (JetStream de-duplicates).
fn started_event(running: &Task, worker: &str) -> crate::domain::TaskEvent {
    let mut e = transition_event(None, running, EventKind::Started, worker, None);
    e.id = format!("evt_{}_started_{}", running.id, running.attempt);
    e.old_status = Some(TaskStatus::Pending);
    e.data = serde_json::json!({ "worker": worker, "attempt": running.attempt });
    e
}
