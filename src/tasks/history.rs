//! Reading back: task listing (see `listing.rs`), and the task log / live feed from the ledger.

use super::ledger::{also_created, decode_event, decode_record, implied_created};
use super::{TaskError, TaskService};
use crate::bus::{direct, subjects, NatsResultExt};
use crate::domain::{Assignee, LogEntry, Task, TaskEvent, TaskId, TaskStatus};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::{Stream, StreamExt};
use std::collections::HashSet;

/// Which tasks `list` returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this assignee's tasks.
    pub assignee: Option<Assignee>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only these assignees (an API key's scope); `None` means all.
    pub scope: Option<HashSet<Assignee>>,
    /// At most this many, newest first.
    pub limit: usize,
    /// A page cursor: start after (older than) this stream sequence.
    pub before: Option<u64>,
}

impl ListFilter {
    pub(crate) fn accepts(&self, t: &Task) -> bool {
        self.assignee.as_ref().is_none_or(|a| *a == t.assigned_to)
            && self.status.is_none_or(|s| s == t.status)
            && self
                .scope
                .as_ref()
                .is_none_or(|s| s.contains(&t.assigned_to))
    }
}

impl TaskService {
    /// Tasks matching `filter`, newest first (one page; see [`list_page`](Self::list_page)).
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Task>, TaskError> {
        Ok(self.list_page(filter).await?.tasks)
    }

    /// Every recorded event of a task, oldest first. A first record that stands for both the
    /// creation and the first claim is shown as its two events.
    pub async fn events(&self, id: &TaskId) -> Result<Vec<TaskEvent>, TaskError> {
        let filter = match self.assignee_of(id) {
            Some(a) => subjects::task_ledger(&a, id),
            None => subjects::task_ledger_any_assignee(id),
        };
        let mut events = Vec::new();
        let mut seq = 1;
        loop {
            let batch = direct::batch(
                &self.bus.client,
                subjects::EVENTS_STREAM,
                &filter,
                seq,
                direct::MAX_BATCH,
            )
            .await?;
            let Some(last) = batch.last() else { break };
            seq = last.sequence + 1;
            for m in &batch {
                let event = decode_event(m)?;
                if also_created(&event) {
                    if let Some(stored) = decode_record(m) {
                        events.push(implied_created(&event, &stored.task));
                    }
                }
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The task log in seed 001's `bot_task_log` shape.
    pub async fn logs(&self, id: &TaskId) -> Result<Vec<LogEntry>, TaskError> {
        let task = self.get(id).await?;
        let mut entries = Vec::new();
        let mut status: Option<TaskStatus> = None;
        for e in self.events(&task.id).await? {
            let mut entry = LogEntry::from(&e);
            // Non-transition events (steps, output…) keep the status they happened in.
            entry.old_status = entry.old_status.or(status);
            entry.new_status = entry.new_status.or(status);
            status = entry.new_status;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// A task's events from the first one on, then live as they happen.
    pub async fn follow(
        &self,
        id: &TaskId,
    ) -> Result<impl Stream<Item = Result<TaskEvent, TaskError>> + Send + 'static, TaskError> {
        let messages = self
            .bus
            .topology
            .events
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::task_events(id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .op("create event feed")?
            .messages()
            .await
            .op("open event feed")?;
        Ok(messages.flat_map(|m| {
            let events = match m.op("event feed") {
                Ok(m) => feed_events(&m.payload).map_err(TaskError::from),
                Err(e) => Err(e.into()),
            };
            futures::stream::iter(match events {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            })
        }))
    }
}

/// The events one ledger message shows on a feed: its own, preceded by the `created` it also
/// stands for when it is a task's combined first claim.
fn feed_events(payload: &[u8]) -> Result<Vec<TaskEvent>, crate::bus::BusError> {
    let event: TaskEvent = crate::bus::decode("task event", payload)?;
    if also_created(&event) {
        #[derive(serde::Deserialize)]
        struct WithTask {
            task: Task,
        }
        if let Ok(w) = crate::bus::decode::<WithTask>("ledger record", payload) {
            return Ok(vec![implied_created(&event, &w.task), event]);
        }
    }
    Ok(vec![event])
}
