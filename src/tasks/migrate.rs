//! `taskfleet migrate`: converts a store written before task storage v2 (task state in the KV
//! bucket `tasks`, events in `EVENTS` without state, kept 7 days) into the ledger layout, in
//! place and idempotently (a run that stopped half way may simply be run again).
//!
//! 1. The `EVENTS` stream gets the ledger's configuration (written on `ledger.>`, stored as
//!    `events.>`, republished once stored, no age limit, atomic batches, the layout mark).
//!    Its messages stay: the task logs keep their history.
//! 2. Every task of the bucket gets one record carrying its state, appended after its last
//!    event (compare-and-set like every write), of the type of its status (`created` for a
//!    task never started, `started` for a running one, …) with `data.migrated_from` set, so
//!    the relay does not send it to anyone.
//! 3. The bucket is deleted. The queue (`TASKS`) needs no change.

use super::ledger::{decode_record, encode_record};
use crate::bus::append::{Append, AppendError};
use crate::bus::{direct, subjects, BusError, NatsResultExt, TopologyConfig};
use crate::domain::{EventKind, Task, TaskEvent, TaskStatus};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use std::time::Duration;

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A task's ledger changed while it was being migrated (a taskfleet process is running).
    #[error(
        "task {0} changed during the migration: stop every taskfleet process and run it again"
    )]
    Busy(String),
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Tasks given their state record.
    pub tasks: usize,
    /// Tasks that had one already (an earlier run).
    pub already: usize,
    /// Entries that were not tasks (deleted or unreadable), skipped.
    pub skipped: usize,
    /// Whether there was anything of the old layout at all.
    pub was_legacy: bool,
}

/// The `data.migrated_from` value of migration records.
pub const MIGRATED_FROM: &str = "storage v1 (KV bucket tasks)";

/// Migrates the store behind `js`; `progress` is told every 1,000 tasks.
pub async fn migrate(
    js: &jetstream::Context,
    cfg: &TopologyConfig,
    progress: impl Fn(usize),
) -> Result<Migrated, MigrateError> {
    let mut report = Migrated::default();
    let legacy = js.get_stream(subjects::LEGACY_STATE_STREAM).await.ok();
    let events = js.get_stream(subjects::EVENTS_STREAM).await.ok();
    let events_current = events.as_ref().is_some_and(|e| {
        e.cached_info().config.metadata.get(crate::bus::LAYOUT_KEY)
            == Some(&crate::bus::LAYOUT.to_string())
    });
    if legacy.is_none() && (events.is_none() || events_current) {
        return Ok(report);
    }
    report.was_legacy = true;
    js.create_or_update_stream(crate::bus::ledger_config(cfg))
        .await
        .op("update the EVENTS stream")?;
    if let Some(state) = legacy {
        for task in legacy_tasks(&state).await? {
            match task {
                None => report.skipped += 1,
                Some(t) => match carry_over(js, &t).await? {
                    true => report.tasks += 1,
                    false => report.already += 1,
                },
            }
            let done = report.tasks + report.already;
            if done > 0 && done % 1000 == 0 {
                progress(done);
            }
        }
        js.delete_stream(subjects::LEGACY_STATE_STREAM)
            .await
            .op("delete the old state bucket")?;
    }
    Ok(report)
}

/// The latest state of every key of the old bucket (`None` for deleted or unreadable ones).
async fn legacy_tasks(state: &stream::Stream) -> Result<Vec<Option<Task>>, BusError> {
    let pending = state.cached_info().state.messages;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut msgs = state
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("$KV.{}.>", subjects::LEGACY_STATE_BUCKET),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .op("read the old state bucket")?
        .messages()
        .await
        .op("read the old state bucket")?;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
        let msg = msg.op("read the old state bucket")?;
        let deleted = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() != "PUT");
        out.push(if deleted {
            None
        } else {
            serde_json::from_slice::<Task>(&msg.payload).ok()
        });
        let left = msg.info().map(|i| i.pending).unwrap_or(0);
        if left == 0 {
            break;
        }
    }
    Ok(out)
}

/// Appends `task`'s state record after its last event; false when it has one already.
async fn carry_over(js: &jetstream::Context, task: &Task) -> Result<bool, MigrateError> {
    let client = js.client();
    let filter = subjects::task_ledger(&task.assigned_to, &task.id);
    let last = direct::last(&client, subjects::EVENTS_STREAM, &filter).await?;
    if last.as_ref().and_then(decode_record).is_some() {
        return Ok(false);
    }
    let event = migration_event(task);
    let append = Append {
        subject: subjects::ledger_write(&task.assigned_to, &task.id, event.kind),
        guard: filter,
        expected: last.map_or(0, |m| m.sequence),
        msg_id: event.id.clone(),
        extra: Vec::new(),
        payload: encode_record(&event, task),
    };
    let sent = append.send(js).await.map_err(|e| append_failed(task, e))?;
    sent.stored().await.map_err(|e| append_failed(task, e))?;
    if matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
        let index = subjects::status_index(task.status, &task.assigned_to, &task.id);
        // No state in the entry: it is not in the event's batch, so the listing reads the task.
        let body = serde_json::json!({ "event": event.id }).to_string();
        js.publish(index, body.into())
            .await
            .op("index a migrated task")?
            .await
            .op("index a migrated task")?;
    }
    Ok(true)
}

fn append_failed(task: &Task, e: AppendError) -> MigrateError {
    match e {
        AppendError::Conflict { .. } => MigrateError::Busy(task.id.to_string()),
        AppendError::Unknown(b) | AppendError::Refused(b) => MigrateError::Bus(b),
    }
}

/// The record that carries a task's state over: of the type its status came from.
fn migration_event(task: &Task) -> TaskEvent {
    let kind = match task.status {
        TaskStatus::Scheduled => EventKind::Scheduled,
        TaskStatus::Pending if task.attempt == 0 => EventKind::Created,
        TaskStatus::Pending => EventKind::Retried,
        TaskStatus::Running => EventKind::Started,
        TaskStatus::Completed => EventKind::Completed,
        TaskStatus::Failed => EventKind::Failed,
        TaskStatus::Cancelled => EventKind::Cancelled,
    };
    let mut e = TaskEvent::new(&task.id, &task.assigned_to, kind, "migrate");
    e.attempt = task.attempt;
    e.new_status = Some(task.status);
    e.message = Some("state carried over to task storage v2".into());
    e.data = serde_json::json!({ "migrated_from": MIGRATED_FROM });
    e
}

/// Whether an event is a migration record (the relay delivers none of them).
pub fn is_migration(event: &TaskEvent) -> bool {
    event.data.get("migrated_from").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewTask, TaskId};

    #[test]
    fn a_migration_record_has_the_type_its_status_came_from_and_is_marked() {
        let new: NewTask =
            serde_json::from_value(serde_json::json!({"task_name": "x", "assigned_to": "anna"}))
                .unwrap();
        let mut t = Task::from_new(TaskId::parse("T1").unwrap(), new);
        assert_eq!(migration_event(&t).kind, EventKind::Created);
        t.attempt = 1;
        assert_eq!(migration_event(&t).kind, EventKind::Retried);
        t.status = TaskStatus::Running;
        assert_eq!(migration_event(&t).kind, EventKind::Started);
        t.status = TaskStatus::Failed;
        let e = migration_event(&t);
        assert_eq!(
            (e.kind, e.new_status),
            (EventKind::Failed, Some(TaskStatus::Failed))
        );
        assert!(is_migration(&e));
    }
}
