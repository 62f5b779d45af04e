//! Delayed tasks: a task with a `run_at` in the future is held by the broker, not by us.
//!
//! Its first record is `scheduled` (status `scheduled`, with `run_at`), and one message on
//! `scheduled.<assignee>.<id>` in `TASKS` carries the create body with the headers of a NATS
//! message schedule (`Nats-Schedule: @at <run_at>`, ADR-51): at `run_at` the server publishes
//! the body into the task's queue subject, where workers pull it like any task. Whoever meets
//! that fired message first — a worker's claim or the API's pending list — records `created`
//! (scheduled → pending) and goes on as usual, so the `created` event marks the moment the task
//! was queued. Everything survives restarts because the schedule is a stored stream message.
//!
//! - cancel: the record becomes `cancelled`, then the schedule subject is purged; a message
//!   that fired in between meets a cancelled record and is dropped;
//! - reschedule: the new schedule message is published first (it replaces the old one: the
//!   last message on a schedule subject is the schedule), then the record; a message that
//!   fired early (a race) meets a record whose `run_at` is still ahead: the schedule is armed
//!   again from the record and the message dropped, so the ledger decides;
//! - a producer publishing to `tasks.<a>.<p>` directly with `run_at` or `delay_s` in the body:
//!   whoever meets the message records `scheduled`, arms the schedule and drops the message.

use super::create::Created;
use super::queue::{queued_task, QueuedMessage};
use super::write::Step;
use super::{transition_event, TaskError, TaskService};
use crate::bus::{direct, encode, message_headers, subjects, NatsResultExt, RECORDED_HEADER};
use crate::domain::{now, EventKind, NewTask, Task, TaskEvent, TaskId, TaskStatus};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use chrono::{DateTime, SecondsFormat, Utc};
use std::time::Duration;

/// How early a schedule may fire and still count as due (the server's clock and ours differ
/// a little; a fire earlier than this is a superseded schedule's, see the module docs).
const DUE_TOLERANCE: chrono::Duration = chrono::Duration::seconds(2);

/// Header the server puts on a message a schedule produced (the schedule's subject).
const SCHEDULER_HEADER: &str = "Nats-Scheduler";

/// The most queue messages [`TaskService::record_fired`] reads looking for a fired copy.
const FIRED_SCAN: usize = 200;

/// Whether `t`'s time has come (a task without `run_at` is always due).
pub(crate) fn is_due(t: &Task) -> bool {
    t.run_at.is_none_or(|at| at <= now() + DUE_TOLERANCE)
}

/// Whether a queue message was published by a message schedule (a delayed task firing).
pub(crate) fn fired(msg: QueuedMessage<'_>) -> bool {
    msg.headers
        .is_some_and(|h| h.get(SCHEDULER_HEADER).is_some())
}

/// When a message published straight to NATS asks to run, if that is still ahead. A message a
/// schedule fired is due whatever its body says (it is the schedule's own time).
pub(crate) fn deferred_until(msg: QueuedMessage<'_>, new: &NewTask) -> Option<DateTime<Utc>> {
    if fired(msg) {
        return None;
    }
    let published = DateTime::from_timestamp_nanos(msg.published_ns as i64);
    new.due(published).filter(|at| *at > now())
}

/// Whether `t` is scheduled and its `run_at` has passed: its schedule has fired, or is about to.
fn past_its_time(t: &Task) -> bool {
    t.status == TaskStatus::Scheduled && t.run_at.is_some_and(|at| at <= now())
}

/// `t` (scheduled) once its schedule fired into the queue message at `seq` (`None`: not
/// known): pending, queued there. What the first reader of that message records, and what
/// readers show before anyone has.
pub(crate) fn queued_by_schedule(mut t: Task, seq: Option<u64>) -> Task {
    t.status = TaskStatus::Pending;
    t.queue_seq = seq;
    t
}

/// `t` (scheduled) queued by the message at `seq`: pending, with the `created` event that
/// marks it, carrying how late the schedule fired.
pub(crate) fn fire_step(t: &Task, seq: u64, operator: &str) -> Step {
    let pending = queued_by_schedule(t.clone(), Some(seq));
    let mut e = transition_event(Some(t), &pending, EventKind::Created, operator, None);
    e.message = Some(t.task_name.clone());
    e.data = serde_json::json!({ "run_at": t.run_at, "lag_ms": lag(t).as_millis() as u64 });
    Step::new(pending, e)
}

/// Adds to a fire's `created` event how late the broker published the message (`fired_lag_ms`,
/// from the message's stream time), next to `lag_ms` (how late it was recorded).
pub(crate) fn note_fired(step: &mut Step, msg: QueuedMessage<'_>) {
    let created = match step.prelude.as_mut() {
        Some((_, e)) => e,
        None => &mut step.event,
    };
    let run_at = created.data.get("run_at").cloned();
    let run_at: Option<DateTime<Utc>> = run_at.and_then(|v| serde_json::from_value(v).ok());
    if let Some(at) = run_at {
        let published = DateTime::from_timestamp_nanos(msg.published_ns as i64);
        created.data["fired_lag_ms"] = (published - at).num_milliseconds().into();
    }
}

/// How late after its `run_at` a task is being queued.
fn lag(t: &Task) -> Duration {
    t.run_at
        .and_then(|at| (now() - at).to_std().ok())
        .unwrap_or_default()
}

/// `t` moved to `run_at` (still scheduled), with the `scheduled` event saying so.
fn moved(t: &Task, run_at: DateTime<Utc>, operator: &str) -> Result<Step, TaskError> {
    if t.status != TaskStatus::Scheduled {
        return Err(TaskError::IllegalTransition(format!(
            "task {} is {}; only a scheduled task can be rescheduled",
            t.id, t.status
        )));
    }
    let mut n = t.clone();
    n.run_at = Some(run_at);
    Ok(Step::new(n.clone(), scheduled_event(t, &n, operator)))
}

/// The `scheduled` event of `after` (its `run_at` in the message and data).
fn scheduled_event(before: &Task, after: &Task, operator: &str) -> TaskEvent {
    let at = after
        .run_at
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    let mut e = transition_event(None, after, EventKind::Scheduled, operator, None);
    e.old_status = (before.revision > 0).then_some(before.status);
    e.message = Some(format!(
        "{} (runs at {})",
        after.task_name,
        at.unwrap_or_default()
    ));
    e.data = serde_json::json!({ "run_at": after.run_at });
    e
}

impl TaskService {
    /// Refuses a `run_at` further ahead than `scheduling.max_delay_days`.
    pub(super) fn check_delay(&self, run_at: DateTime<Utc>) -> Result<(), TaskError> {
        let days = self.max_delay_days;
        if run_at > now() + chrono::Duration::days(days as i64) {
            return Err(TaskError::Invalid(format!(
                "run_at is more than {days} days ahead (scheduling.max_delay_days)"
            )));
        }
        Ok(())
    }

    /// Creates a delayed task: the schedule message first, then the `scheduled` record. A
    /// crash in between leaves a schedule with no record, which fires into a message the claim
    /// records as a task published straight to NATS (never a record nobody will queue).
    pub(super) async fn enqueue_scheduled(
        &self,
        id: TaskId,
        mut new: NewTask,
        run_at: DateTime<Utc>,
        operator: &str,
    ) -> Result<Created, TaskError> {
        new.id = Some(id.clone());
        new.run_at = Some(run_at);
        new.delay_s = None;
        self.arm(&new, run_at).await?;
        let mut task = Task::from_new(id.clone(), new);
        task.status = TaskStatus::Scheduled;
        match self.record_scheduled(&mut task, operator).await? {
            true => Ok(Created {
                task,
                created: true,
                folded: false,
            }),
            false => Ok(Created {
                task: self.get(&id).await?,
                created: true,
                folded: false,
            }),
        }
    }

    /// Writes `task`'s first record, `scheduled`; false when it has one already.
    async fn record_scheduled(&self, task: &mut Task, operator: &str) -> Result<bool, TaskError> {
        let mut none = task.clone();
        none.revision = 0;
        let event = scheduled_event(&none, task, operator);
        let Some(seq) = self.append_first(task, &event).await? else {
            return Ok(false);
        };
        task.revision = seq;
        let labels = crate::metrics::task_labels(task);
        self.metrics.tasks_created.get_or_create(&labels).inc();
        Ok(true)
    }

    /// Publishes (or replaces) the schedule message that queues `spec` at `run_at`.
    pub(super) async fn arm(&self, spec: &NewTask, run_at: DateTime<Utc>) -> Result<(), TaskError> {
        let id = spec.id.as_ref().expect("an armed task has its id");
        let at = run_at.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut headers = message_headers(&format!("{id}-at-{}", run_at.timestamp_millis()));
        headers.insert("Nats-Schedule", format!("@at {at}").as_str());
        let target = subjects::task(&spec.assigned_to, spec.priority, spec.kind, spec.share());
        headers.insert("Nats-Schedule-Target", target.as_str());
        headers.insert(RECORDED_HEADER, EventKind::Scheduled.as_str());
        let subject = subjects::scheduled(&spec.assigned_to, id);
        self.bus
            .js
            .publish_with_headers(subject, headers, encode(spec))
            .await
            .op("publish schedule")?
            .await
            .op("publish schedule ack")?;
        Ok(())
    }

    /// `task` as a reader should see it. A scheduled task whose schedule already fired into
    /// the queue, but whose queue message no one has met yet (a worker meets it within
    /// milliseconds; a bot's manual task waits for its pending list), is shown `pending`, as
    /// the first reader will record it; its schedule message is gone then. Writes nothing;
    /// reads the schedule's subject only for a scheduled task whose `run_at` has passed.
    pub async fn as_shown(&self, task: Task) -> Task {
        if !past_its_time(&task) {
            return task;
        }
        let subject = subjects::scheduled(&task.assigned_to, &task.id);
        let schedule = &self.bus.topology.tasks;
        match schedule.get_last_raw_message_by_subject(&subject).await {
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                queued_by_schedule(task, None)
            }
            _ => task,
        }
    }

    /// Records `created` for a scheduled task whose schedule fired into the queue before
    /// anyone met the fired copy (see [`TaskService::as_shown`]), so an action that needs it
    /// pending (a bot's start over the API) can go on. Looks for the copy among the messages
    /// its target subject got from a little before `run_at` on (at most [`FIRED_SCAN`]).
    /// `false` when there is nothing to record: not such a task, or no copy found.
    pub(super) async fn record_fired(
        &self,
        id: &TaskId,
        operator: &str,
    ) -> Result<bool, TaskError> {
        let Some(task) = self.load(id).await? else {
            return Ok(false);
        };
        let Some(at) = task.run_at.filter(|_| past_its_time(&task)) else {
            return Ok(false);
        };
        let spec = super::transitions::spec_of(&task);
        let target = subjects::task(&spec.assigned_to, spec.priority, spec.kind, spec.share());
        let since = at - chrono::Duration::seconds(5);
        let stream = subjects::TASKS_STREAM;
        let client = self.bus.js.client();
        let copies = direct::batch_since(&client, stream, &target, since, FIRED_SCAN).await?;
        let scheduler = subjects::scheduled(&task.assigned_to, &task.id);
        let by = |m: &&StreamMessage| {
            let h = m.headers.get(SCHEDULER_HEADER);
            h.is_some_and(|v| v.as_str() == scheduler)
        };
        let Some(copy) = copies.iter().find(by) else {
            return Ok(false);
        };
        match self.fire(task, copy.into(), operator).await {
            Ok(fired) => Ok(fired.is_some()),
            // Someone else recorded (or cancelled) it meanwhile: the caller reads again.
            Err(TaskError::IllegalTransition(_)) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Removes a delayed task's schedule message (after the record stopped being scheduled).
    pub(super) async fn unschedule(&self, task: &Task) {
        let subject = subjects::scheduled(&task.assigned_to, &task.id);
        if let Err(e) = self.bus.topology.tasks.purge().filter(subject).await {
            // If it fires after all, the claim meets a record that is not scheduled and drops it.
            tracing::warn!(task_id = %task.id, error.message = %e, "schedule not removed");
        }
    }

    /// Moves a scheduled task to `run_at` (a time not ahead of now queues it at once).
    #[tracing::instrument(skip(self), fields(task_id = %id))]
    pub async fn reschedule(
        &self,
        id: &TaskId,
        run_at: DateTime<Utc>,
        operator: &str,
    ) -> Result<Task, TaskError> {
        self.check_delay(run_at)?;
        let current = self.get(id).await?;
        moved(&current, run_at, operator)?;
        self.arm(&super::transitions::spec_of(&current), run_at)
            .await?;
        let changed = self.change(id, |t| moved(t, run_at, operator)).await?;
        Ok(changed.after)
    }

    /// Fires a scheduled task whose message reached the queue: `created` (pending) when due;
    /// else (a superseded schedule fired) the schedule is armed again from the record and
    /// `None` says the message is to be dropped.
    pub(super) async fn fire(
        &self,
        t: Task,
        msg: QueuedMessage<'_>,
        operator: &str,
    ) -> Result<Option<Task>, TaskError> {
        if !is_due(&t) {
            let at = t.run_at.unwrap_or_else(now);
            self.arm(&super::transitions::spec_of(&t), at).await?;
            return Ok(None);
        }
        let (seq, id) = (msg.seq, t.id.clone());
        let changed = self
            .change_from(&id, Some(t), |cur| match cur.status {
                TaskStatus::Scheduled => {
                    let mut step = fire_step(cur, seq, operator);
                    note_fired(&mut step, msg);
                    Ok(step)
                }
                other => Err(TaskError::IllegalTransition(format!("task is {other}"))),
            })
            .await?;
        self.observe_lag(&changed.before);
        Ok(Some(changed.after))
    }

    /// Counts how late a delayed task was queued after its `run_at`.
    pub(super) fn observe_lag(&self, scheduled: &Task) {
        self.metrics
            .delayed_lag
            .observe(lag(scheduled).as_secs_f64());
    }

    /// A message published straight to NATS that asks to run later: records it `scheduled`
    /// and arms its schedule; the caller drops the message. `None` when the task has a record
    /// already (someone else deferred it first).
    pub(super) async fn defer(
        &self,
        msg: QueuedMessage<'_>,
        id: &TaskId,
        mut new: NewTask,
        run_at: DateTime<Utc>,
    ) -> Result<Option<Task>, TaskError> {
        new.id = Some(id.clone());
        new.run_at = Some(run_at);
        new.delay_s = None;
        self.arm(&new, run_at).await?;
        let mut task = queued_task(msg, id.clone(), new);
        task.status = TaskStatus::Scheduled;
        task.queue_seq = None;
        Ok(self
            .record_scheduled(&mut task, "nats")
            .await?
            .then_some(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(run_at: DateTime<Utc>) -> Task {
        let new: NewTask = serde_json::from_value(
            serde_json::json!({"task_name": "x", "assigned_to": "anna", "run_at": run_at}),
        )
        .unwrap();
        let mut t = Task::from_new(TaskId::parse("T1").unwrap(), new);
        t.status = TaskStatus::Scheduled;
        t
    }

    #[test]
    fn a_task_is_due_from_its_run_at_and_not_before() {
        assert!(is_due(&scheduled(now() - chrono::Duration::seconds(1))));
        assert!(!is_due(&scheduled(now() + chrono::Duration::seconds(60))));
    }

    #[test]
    fn firing_queues_the_task_with_a_created_event_naming_the_message() {
        let t = scheduled(now());
        let step = fire_step(&t, 42, "w1");
        assert_eq!(step.after.status, TaskStatus::Pending);
        assert_eq!(step.after.queue_seq, Some(42));
        assert_eq!(step.event.kind, EventKind::Created);
        assert_eq!(step.event.old_status, Some(TaskStatus::Scheduled));
    }

    #[test]
    fn only_a_scheduled_task_can_be_moved() {
        let mut t = scheduled(now());
        let later = now() + chrono::Duration::hours(1);
        let step = moved(&t, later, "op").unwrap();
        assert_eq!(step.after.run_at, Some(later));
        assert_eq!(step.event.kind, EventKind::Scheduled);
        t.status = TaskStatus::Pending;
        assert!(matches!(
            moved(&t, later, "op"),
            Err(TaskError::IllegalTransition(_))
        ));
    }
}
