//! What workers do to tasks: claim a queue message (taking over a task whose holder died),
//! give up after `max_attempts` (dead letter), and hand a task back on shutdown.

use super::ledger;
use super::queue::{decode_queued, queued_task, recorded_by, QueuedMessage};
use super::write::Step;
use super::{claimed_by, transition_event, with_event, TaskError, TaskService};
use crate::bus::{encode, message_headers, subjects, BusError, NatsResultExt};
use crate::domain::{now, EventKind, NewTask, Task, TaskId, TaskStatus};
use crate::metrics::task_labels;
use std::time::Duration;

/// What a worker should do with a message it pulled.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// Run it: the task is `running` under this worker's lease.
    Run(Task),
    /// Nothing to run (finished, cancelled, claimed over the API): ack it.
    Skip(String),
    /// Not a task this worker may run (not JSON, an invalid create body, or a body that
    /// disagrees with its subject): it is in the dead letters now, as a failed task with the
    /// reason and the body; ack it.
    Invalid(String),
    /// The attempts are used up: the task is now `failed` and dead-lettered; ack it.
    GaveUp(Task),
    /// The task's record is older than this message (a retry still being recorded, or a
    /// replica behind): leave the message and look again after the delay.
    Later(Duration),
    /// The task runs from this very message under a lease too young to have lapsed: the server
    /// handed the message out again early (a consumer's new leader after a failover), not
    /// because its holder stopped. Leave the message unsettled: the holder's renewals and ack
    /// settle it, and if the holder is gone it comes back after the lease and is taken over.
    Leave(String),
}

/// How a queue message reached the worker claiming it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery {
    /// JetStream delivered it before: its holder stopped acknowledging it (or a consumer's new
    /// leader handed it out again).
    pub redelivered: bool,
    /// The lease (the consumer's ack wait): a redelivered message of a task claimed less than
    /// half of it ago is not taken over ([`ClaimOutcome::Leave`]). Zero: always taken over.
    pub lease: Duration,
}

/// How long a message may wait for its task's record to catch up before it is dropped.
const EARLY_LIMIT: Duration = Duration::from_secs(60);

enum Claimed {
    Started,
    /// A delayed task whose time came: queued (`created`) and started in one batch.
    Fired,
    /// A delayed task whose `run_at` is still ahead: a superseded schedule fired. Its schedule
    /// is armed again from this state and the message dropped.
    Early(Box<Task>),
    TookOver,
    GaveUp,
    /// Refused: skip the message (`true`) or look again later (`false`).
    Refused(bool),
    /// A redelivered message of a task whose lease is too young to have lapsed.
    Young,
    /// The task runs from this very message, yet JetStream delivered it as new: the server lost
    /// its record of the delivery (a kill -9 before it was saved). Never dropped: it comes back
    /// after [`HELD_RECHECK`] as a redelivery, and is taken over unless it finished meanwhile
    /// (or its lease is still [`Claimed::Young`]).
    HeldElsewhere,
}

/// How long a message of a running task that came as new waits before it is looked at again
/// (see [`Claimed::HeldElsewhere`]).
const HELD_RECHECK: Duration = Duration::from_secs(5);

impl TaskService {
    /// Claims the task a pulled queue message stands for, delivered as `delivery` says.
    #[tracing::instrument(name = "task.claim", skip_all, fields(worker = worker, seq = msg.seq))]
    pub async fn claim_for_worker(
        &self,
        msg: QueuedMessage<'_>,
        worker: &str,
        delivery: Delivery,
    ) -> Result<ClaimOutcome, TaskError> {
        match self.claim_message(msg, worker, delivery).await {
            // A task whose records cannot be stored never can: moved aside, not retried forever.
            Err(TaskError::Bus(BusError::TooLarge(why))) => {
                let why = format!("the task is too large to record ({why})");
                if let Some(refused) = super::queue::refused_task(msg, &why) {
                    self.dead_letter(&refused).await?;
                }
                Ok(ClaimOutcome::Invalid(why))
            }
            other => other,
        }
    }

    /// [`claim_for_worker`](Self::claim_for_worker), a task too large to record an error.
    async fn claim_message(
        &self,
        msg: QueuedMessage<'_>,
        worker: &str,
        delivery: Delivery,
    ) -> Result<ClaimOutcome, TaskError> {
        let (id, new) = match decode_queued(msg) {
            Ok(decoded) => decoded,
            Err(why) => {
                // Moved aside with its reason: a dead letter, then the ack drops it.
                if let Some(refused) = super::queue::refused_task(msg, &why) {
                    self.dead_letter(&refused).await?;
                }
                return Ok(ClaimOutcome::Invalid(why));
            }
        };
        let recorded = recorded_by(msg);
        if !delivery.redelivered && recorded.is_none() {
            if let Some(run) = self.claim_unrecorded(msg, &id, new.clone(), worker).await? {
                return Ok(run);
            }
        }
        let hint = match recorded {
            Some(kind) => self.last_of_kind(&id, kind).await,
            None => None,
        };
        let hint = match hint {
            // A delayed task's schedule fired: `created` first, then the claim as usual (two
            // single appends cost less than one atomic batch of both).
            Some(t) if t.status == TaskStatus::Scheduled => match self.fire(t, msg, worker).await {
                Ok(Some(pending)) => Some(pending),
                Ok(None) => return Ok(ClaimOutcome::Skip("scheduled for later".into())),
                Err(TaskError::IllegalTransition(_)) => None,
                Err(e) => return Err(e),
            },
            other => other,
        };
        match self.claim_recorded(msg, &id, hint, worker, delivery).await {
            Err(TaskError::NotFound(_)) => {
                // Queued, never recorded (its producer or API call died in between).
                match self.claim_unrecorded(msg, &id, new, worker).await? {
                    Some(run) => Ok(run),
                    None => {
                        // Recorded after all (the first-record write met it): the replica that
                        // answered the read had not caught up. Read until one has (≤ 2 s),
                        // rather than fail the claim and try the message again a second later.
                        let hint = self.read_at_least(&id, 1).await?.map(|s| s.task);
                        self.claim_recorded(msg, &id, hint, worker, delivery).await
                    }
                }
            }
            other => other,
        }
    }

    /// The claim of a task that has a record: a compare-and-set from pending (or, for a
    /// redelivered message of a running task, a takeover or a give-up).
    async fn claim_recorded(
        &self,
        msg: QueuedMessage<'_>,
        id: &TaskId,
        hint: Option<Task>,
        worker: &str,
        delivery: Delivery,
    ) -> Result<ClaimOutcome, TaskError> {
        let mut what = Claimed::Started;
        let changed = self
            .change_from(id, hint, |t| {
                let (claimed, mut step) = claim_step(t, msg.seq, worker, delivery);
                if let (Claimed::Fired, Ok(step)) = (&claimed, step.as_mut()) {
                    super::delayed::note_fired(step, msg);
                }
                what = claimed;
                step
            })
            .await;
        let changed = match changed {
            Ok(c) => c,
            Err(TaskError::IllegalTransition(why)) => {
                return Ok(match what {
                    Claimed::HeldElsewhere => ClaimOutcome::Later(HELD_RECHECK),
                    Claimed::Young => ClaimOutcome::Leave(why),
                    Claimed::Early(t) => {
                        let spec = super::transitions::spec_of(&t);
                        self.arm(&spec, t.run_at.unwrap_or_else(now)).await?;
                        ClaimOutcome::Skip(why)
                    }
                    // A schedule's message whose task moved on (cancelled before it fired).
                    Claimed::Refused(false) if super::delayed::fired(msg) => {
                        ClaimOutcome::Skip(why)
                    }
                    Claimed::Refused(false) if message_age(msg) < EARLY_LIMIT => {
                        ClaimOutcome::Later(Duration::from_millis(250))
                    }
                    Claimed::Refused(false) => {
                        tracing::warn!(task_id = %id, why, "a queue message newer than its \
                            task's record for over a minute; dropping it");
                        ClaimOutcome::Skip(why)
                    }
                    _ => ClaimOutcome::Skip(why),
                });
            }
            Err(e) => return Err(e),
        };
        let after = changed.after;
        if let Claimed::Fired = what {
            self.observe_lag(&changed.before);
        }
        match what {
            Claimed::GaveUp => {
                self.dead_letter(&after).await?;
                Ok(ClaimOutcome::GaveUp(after))
            }
            _ => {
                self.count_started(&after);
                self.keep(&after).await;
                Ok(ClaimOutcome::Run(after))
            }
        }
    }

    /// A task published straight to NATS, seen for the first time: its first record is written
    /// already claimed (one message that stands for `created` and `started`). `None` when the
    /// task has a record already (someone listed or claimed it first).
    async fn claim_unrecorded(
        &self,
        msg: QueuedMessage<'_>,
        id: &TaskId,
        new: NewTask,
        worker: &str,
    ) -> Result<Option<ClaimOutcome>, TaskError> {
        if let Some(at) = super::delayed::deferred_until(msg, &new) {
            // Published straight to NATS to run later: held by a schedule from now on.
            let deferred = self.defer(msg, id, new, at).await?;
            return Ok(deferred.map(|_| ClaimOutcome::Skip(format!("scheduled for {at}"))));
        }
        let pending = queued_task(msg, id.clone(), new);
        let mut running = claimed_by(&pending, worker);
        running.updated_time = now();
        let mut event = started_event(&running, worker);
        event.data["created"] = true.into();
        event.message = Some(pending.task_name.clone());
        let Some(seq) = self.append_first(&running, &event).await? else {
            return Ok(None);
        };
        running.revision = seq;
        self.metrics
            .tasks_created
            .get_or_create(&task_labels(&pending))
            .inc();
        self.count_started(&running);
        self.keep(&running).await;
        Ok(Some(ClaimOutcome::Run(running)))
    }

    /// The last record of `kind` for one of this worker's tasks, as a first guess of its state
    /// (the compare-and-set finds out if it is not the latest), read over the reader
    /// connection.
    async fn last_of_kind(&self, id: &TaskId, kind: EventKind) -> Option<Task> {
        let a = self.scope.clone().or_else(|| self.assignee_of(id))?;
        let (subject, filter) = (subjects::event(&a, id, kind), subjects::task_ledger(&a, id));
        let covered = super::unreadable::Covered::Ledger(&filter, 1, usize::MAX);
        let msg = self
            .read_on_reader(covered, |client| {
                let subject = subject.clone();
                async move {
                    let events = ledger::events_over(client).await?;
                    ledger::literal_last(&events, subject).await
                }
            })
            .await
            .ok()??;
        ledger::decode_record(&msg).map(|s| s.task)
    }

    fn count_started(&self, running: &Task) {
        self.metrics
            .tasks_started
            .get_or_create(&task_labels(running))
            .inc();
    }

    /// Copies a task that used up its attempts (or a refused message) to the dead-letter stream.
    pub(super) async fn dead_letter(&self, task: &Task) -> Result<(), TaskError> {
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
        let changed = self
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
                let why = format!("handed back by {worker}, which is shutting down");
                Ok(with_event(t, n, EventKind::Retried, worker, Some(why)))
            })
            .await?;
        Ok(changed.after)
    }

    /// Whether `token` still holds the running task (checked on every lease renewal).
    pub async fn holds(&self, task: &Task, token: &str) -> Result<bool, TaskError> {
        // Any state older than the one this worker holds is a lagging replica's answer.
        let t = self
            .read_at_least(&task.id, task.revision)
            .await?
            .ok_or_else(|| TaskError::NotFound(task.id.clone()))?
            .task;
        Ok(t.status == TaskStatus::Running && t.lease.is_some_and(|l| l.token == token))
    }

    /// Records a report (output, a note…) on a task without changing it. A worker's goes out
    /// pipelined (see `write.rs`).
    pub async fn record(
        &self,
        task: &Task,
        kind: EventKind,
        operator: &str,
        message: Option<String>,
        data: serde_json::Value,
    ) {
        let operator = operator.to_string();
        let result = self
            .change_pipelined(&task.id, move |t| {
                let mut e = crate::domain::TaskEvent::new(&t.id, &t.assigned_to, kind, &operator);
                e.attempt = t.attempt;
                e.message = message.clone();
                e.data = data.clone();
                Ok(Step::new(t.clone(), e))
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(task_id = %task.id, event = kind.as_str(), error.message = %e,
                "event could not be recorded");
        }
    }

    /// Records that a running task went quiet: appended only if `task` (as the relay read it)
    /// is still the latest record, so a task that reported meanwhile is not called stalled.
    pub async fn record_stalled(&self, task: &Task, mut event: crate::domain::TaskEvent) {
        let seen = task.revision;
        event.attempt = task.attempt;
        let result = self
            .change_from(&task.id, Some(task.clone()), |t| {
                if t.revision != seen || t.status != TaskStatus::Running {
                    return Err(TaskError::IllegalTransition("it reported meanwhile".into()));
                }
                Ok(Step::new(t.clone(), event.clone()))
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(task_id = %task.id, why = %e, "stalled not recorded");
        }
    }

    /// Dead letters, oldest first: tasks that used up their attempts.
    pub async fn dead_letters(
        &self,
        assignee: Option<&crate::domain::Assignee>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        Ok(self.dead_letters_page(assignee, 0, limit).await?.0)
    }

    /// A page of dead letters, oldest first, stored after sequence `after` of the dead-letter
    /// stream (0: from the start), and the cursor of the next page when a dead letter follows
    /// this page (one more is read to know; a full last page has none).
    pub async fn dead_letters_page(
        &self,
        assignee: Option<&crate::domain::Assignee>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Task>, Option<u64>), TaskError> {
        let filter = subjects::dead_filter(assignee);
        let mut out = Vec::new();
        let (mut seq, mut last_kept, mut more) = (after.saturating_add(1), after, false);
        while !more {
            let batch = crate::bus::direct::batch(
                &self.bus.client,
                subjects::DEAD_STREAM,
                &filter,
                seq,
                limit + 1 - out.len(),
            )
            .await?;
            let Some(last) = batch.last() else { break };
            seq = last.sequence + 1;
            for m in &batch {
                let Ok(t) = crate::bus::decode::<Task>("dead letter", &m.payload) else {
                    continue;
                };
                if out.len() == limit {
                    more = true;
                    break;
                }
                out.push(t);
                last_kept = m.sequence;
            }
        }
        Ok((out, more.then_some(last_kept)))
    }
}

/// The pure part of a worker's claim of `t` for the queue message at `seq`: the state after it
/// and the event recording it (a start, a takeover's `started`, or a give-up's `failed`), or
/// why it is refused. Nothing is written: [`TaskService::claim_for_worker`] writes it.
pub fn claim_state(
    t: &Task,
    seq: u64,
    worker: &str,
    delivery: Delivery,
) -> Result<(Task, crate::domain::TaskEvent), TaskError> {
    claim_step(t, seq, worker, delivery)
        .1
        .map(|step| (step.after, step.event))
}

/// The claim of `t` for the message at `seq`: what it amounts to, and the change (or refusal).
fn claim_step(
    t: &Task,
    seq: u64,
    worker: &str,
    delivery: Delivery,
) -> (Claimed, super::write::Outcome) {
    let redelivered = delivery.redelivered;
    match t.status {
        TaskStatus::Pending => {
            let after = claimed_by(t, worker);
            let mut e = started_event(&after, worker);
            e.old_status = Some(TaskStatus::Pending);
            (Claimed::Started, Ok(Step::new(after, e)))
        }
        TaskStatus::Scheduled if super::delayed::is_due(t) => {
            let fired = super::delayed::fire_step(t, seq, worker);
            let after = claimed_by(&fired.after, worker);
            let step = Step {
                event: started_event(&after, worker),
                after,
                prelude: Some((fired.after, fired.event)),
            };
            (Claimed::Fired, Ok(step))
        }
        TaskStatus::Scheduled => (
            Claimed::Early(Box::new(t.clone())),
            Err(TaskError::IllegalTransition(
                "task is scheduled for later (an older schedule fired)".into(),
            )),
        ),
        TaskStatus::Running if redelivered && t.queue_seq == Some(seq) => {
            if lease_younger_than(t, delivery.lease / 2) {
                let why = "task runs from this message under a lease too young to have lapsed";
                return (
                    Claimed::Young,
                    Err(TaskError::IllegalTransition(why.into())),
                );
            }
            take_over(t, worker)
        }
        TaskStatus::Running if t.queue_seq == Some(seq) => (
            Claimed::HeldElsewhere,
            Err(TaskError::IllegalTransition(
                "task is running from this message; looking again later".into(),
            )),
        ),
        other => {
            // A record that already moved past this message (or an older message) means the
            // message is done with; a record older than the message is not the latest yet.
            let done = t.queue_seq.is_some_and(|q| q >= seq);
            let why = format!("task is {other}, not pending");
            (
                Claimed::Refused(done),
                Err(TaskError::IllegalTransition(why)),
            )
        }
    }
}

/// Whether `t`'s lease was claimed less than `age` ago, by the claimer's clock against the
/// holder's stamp (clocks that disagree shift `age` by their difference).
fn lease_younger_than(t: &Task, age: Duration) -> bool {
    let Some(lease) = &t.lease else { return false };
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    now().signed_duration_since(lease.claimed_time) < age
}

/// A redelivered running task: its holder stopped renewing. Attempts left: `retried` and a new
/// `started` in one batch; none left: `failed`.
fn take_over(t: &Task, worker: &str) -> (Claimed, super::write::Outcome) {
    let previous = t
        .lease
        .as_ref()
        .map(|l| l.holder.clone())
        .unwrap_or_default();
    if t.attempt >= t.max_attempts {
        let mut n = t.clone();
        n.status = TaskStatus::Failed;
        n.error = Some(format!(
            "gave up after {} attempts: {previous} stopped renewing its lease",
            t.attempt
        ));
        n.finished_time = Some(now());
        n.lease = None;
        let message = n.error.clone();
        return (
            Claimed::GaveUp,
            Ok(with_event(t, n, EventKind::Failed, worker, message)),
        );
    }
    let mut pending = t.clone();
    pending.status = TaskStatus::Pending;
    pending.lease = None;
    let after = claimed_by(&pending, worker);
    let why = format!(
        "lease of {previous} expired; attempt {} of {} on {worker}",
        after.attempt, after.max_attempts
    );
    let retried = transition_event(Some(t), &pending, EventKind::Retried, worker, Some(why));
    let mut started = started_event(&after, worker);
    started.old_status = Some(TaskStatus::Pending);
    let step = Step {
        after,
        event: started,
        prelude: Some((pending, retried)),
    };
    (Claimed::TookOver, Ok(step))
}

/// How long ago a queue message was published.
fn message_age(msg: QueuedMessage<'_>) -> Duration {
    let now = now().timestamp_nanos_opt().unwrap_or(i64::MAX) as i128;
    Duration::from_nanos((now - msg.published_ns).clamp(0, i128::from(u64::MAX)) as u64)
}

/// The `started` event of `running`'s attempt, under `worker`.
pub(super) fn started_event(running: &Task, worker: &str) -> crate::domain::TaskEvent {
    let mut e = transition_event(None, running, EventKind::Started, worker, None);
    e.old_status = Some(TaskStatus::Pending);
    e.data = serde_json::json!({ "worker": worker, "attempt": running.attempt });
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first delivery.
    const NEW: Delivery = Delivery {
        redelivered: false,
        lease: Duration::ZERO,
    };
    /// A redelivery whose lease (zero) has lapsed, however young the claim.
    const AGAIN: Delivery = Delivery {
        redelivered: true,
        lease: Duration::ZERO,
    };

    fn task(status: TaskStatus, queue_seq: Option<u64>) -> Task {
        let new: NewTask = serde_json::from_value(
            serde_json::json!({"task_name": "x", "assigned_to": "anna", "kind": "noop"}),
        )
        .unwrap();
        let mut t = Task::from_new(TaskId::parse("T1").unwrap(), new);
        t.status = status;
        t.queue_seq = queue_seq;
        t
    }

    #[test]
    fn a_pending_task_is_claimed_with_a_new_attempt_and_lease() {
        let (what, step) = claim_step(&task(TaskStatus::Pending, Some(5)), 5, "w1", NEW);
        assert!(matches!(what, Claimed::Started));
        let step = step.unwrap();
        assert_eq!(step.after.status, TaskStatus::Running);
        assert_eq!(step.after.attempt, 1);
        assert_eq!(step.after.queue_seq, Some(5));
    }

    #[test]
    fn a_message_the_record_moved_past_is_skipped_and_a_newer_one_waits() {
        let done = task(TaskStatus::Completed, Some(5));
        assert!(matches!(
            claim_step(&done, 5, "w", NEW).0,
            Claimed::Refused(true)
        ));
        assert!(matches!(
            claim_step(&done, 4, "w", NEW).0,
            Claimed::Refused(true)
        ));
        // A retry queued message 9 but its record still says completed at message 5.
        assert!(matches!(
            claim_step(&done, 9, "w", NEW).0,
            Claimed::Refused(false)
        ));
    }

    #[test]
    fn a_redelivered_running_task_is_taken_over_with_retried_then_started() {
        let mut t = task(TaskStatus::Running, Some(5));
        t.attempt = 1;
        t.lease = Some(crate::domain::Lease::new("dead-worker", 1));
        let (what, step) = claim_step(&t, 5, "w2", AGAIN);
        assert!(matches!(what, Claimed::TookOver));
        let step = step.unwrap();
        let (mid, retried) = step.prelude.unwrap();
        assert_eq!(
            (mid.status, retried.kind),
            (TaskStatus::Pending, EventKind::Retried)
        );
        assert_eq!(
            (step.after.attempt, step.event.kind),
            (2, EventKind::Started)
        );
        t.attempt = 3;
        assert!(matches!(claim_step(&t, 5, "w2", AGAIN).0, Claimed::GaveUp));
    }

    #[test]
    fn a_running_tasks_own_message_delivered_as_new_is_kept_for_a_later_look_never_skipped() {
        // A server killed before it saved the delivery sends the message again as new.
        let t = task(TaskStatus::Running, Some(5));
        assert!(matches!(
            claim_step(&t, 5, "w2", NEW).0,
            Claimed::HeldElsewhere
        ));
        // A message the running task's record moved past is done with.
        assert!(matches!(
            claim_step(&t, 4, "w2", NEW).0,
            Claimed::Refused(true)
        ));
    }

    #[test]
    fn a_redelivered_running_task_claimed_within_half_its_lease_is_left_to_its_holder() {
        let mut t = task(TaskStatus::Running, Some(5));
        t.attempt = 1;
        t.lease = Some(crate::domain::Lease::new("live-worker", 1));
        let early = Delivery {
            redelivered: true,
            lease: Duration::from_secs(30),
        };
        let (what, step) = claim_step(&t, 5, "w2", early);
        assert!(matches!(what, Claimed::Young), "{step:?}");
        assert!(matches!(step, Err(TaskError::IllegalTransition(_))));
        // The same lease claimed 16 s ago (past half of 30 s) has lapsed: taken over.
        let lease = t.lease.as_mut().unwrap();
        lease.claimed_time = now() - chrono::Duration::seconds(16);
        assert!(matches!(
            claim_step(&t, 5, "w2", early).0,
            Claimed::TookOver
        ));
    }
}
