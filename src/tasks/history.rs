//! Reading back: task listing from the state bucket, and the task log / live feed from the event
//! stream.

use super::{TaskError, TaskService};
use crate::bus::{decode, subjects, NatsResultExt};
use crate::domain::{Assignee, LogEntry, Task, TaskEvent, TaskId, TaskStatus};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv;
use futures::{Stream, StreamExt};
use std::collections::HashSet;
use std::time::Duration;

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
}

impl ListFilter {
    fn accepts(&self, t: &Task) -> bool {
        self.assignee.as_ref().is_none_or(|a| *a == t.assigned_to)
            && self.status.is_none_or(|s| s == t.status)
            && self
                .scope
                .as_ref()
                .is_none_or(|s| s.contains(&t.assigned_to))
    }
}

const READ_BATCH: usize = 500;
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(20);

impl TaskService {
    /// Tasks matching `filter`, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Task>, TaskError> {
        let state = &self.bus.topology.state;
        let mut out = Vec::new();
        // The bucket's own status() is cached; ask the server.
        let info = self
            .bus
            .js
            .get_stream(subjects::STATE_STREAM)
            .await
            .op("kv stream info")?;
        if info.cached_info().state.messages == 0 {
            return Ok(out);
        }
        let mut watch = state.watch_with_history(">").await.op("kv watch")?;
        let read = async {
            while let Some(entry) = watch.next().await {
                let entry = entry.op("kv watch")?;
                if entry.operation == kv::Operation::Put {
                    let mut t: Task = decode("task state", &entry.value)?;
                    t.revision = entry.revision;
                    if filter.accepts(&t) {
                        out.push(t);
                    }
                }
                if entry.delta == 0 {
                    break;
                }
            }
            Ok::<_, TaskError>(())
        };
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, read).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!("task listing stopped after {SNAPSHOT_TIMEOUT:?}"),
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.created_time));
        out.truncate(filter.limit);
        Ok(out)
    }

    /// Every recorded event of a task, oldest first.
    pub async fn events(&self, id: &TaskId) -> Result<Vec<TaskEvent>, TaskError> {
        let stream = &self.bus.topology.events;
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                filter_subject: subjects::task_events(id),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                memory_storage: true,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .op("create log reader")?;
        let mut events = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(READ_BATCH)
                .messages()
                .await
                .op("read events")?;
            let mut n = 0;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(|e| crate::bus::BusError::Op {
                    op: "read event",
                    source: e,
                })?;
                events.push(decode::<TaskEvent>("task event", &msg.payload)?);
                n += 1;
            }
            if n < READ_BATCH {
                break;
            }
        }
        let name = consumer.cached_info().name.clone();
        let _ = stream.delete_consumer(&name).await;
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
        Ok(messages.map(|m| {
            let m = m.op("event feed")?;
            Ok(decode::<TaskEvent>("task event", &m.payload)?)
        }))
    }
}
