//! Reading back: task listing (see `listing.rs`), and the task log / live feed from the ledger.

use super::ledger::{also_created, decode_event, decode_record, implied_created, shown_events};
use super::unreadable::Covered;
use super::{TaskError, TaskService};
use crate::bus::{direct, subjects, NatsResultExt};
use crate::domain::{Assignee, LogEntry, Priority, Task, TaskEvent, TaskId, TaskKind, TaskStatus};
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
    /// A page cursor (from [`Page::next`](super::Page)): start after (older than) it.
    pub before: Option<Cursor>,
    /// Only tasks of this priority.
    pub priority: Option<Priority>,
    /// Only tasks of this kind.
    pub kind: Option<TaskKind>,
    /// Only tasks whose name holds this text, compared case-insensitively (give it lowercased).
    pub name_contains: Option<String>,
    /// Only tasks unchanged since before this time (with `status` running: the stalled ones).
    pub unchanged_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where a listing's next page starts: older than the stream sequence `seq` of what it walks,
/// and, for a listing of every status, older than the queue sequence `queue` of the queued
/// tasks no one recorded yet, with the ledger's last sequence when the walk began (`horizon`,
/// see `every.rs`). Written `<seq>`, `<seq>.<queue>` or `<seq>.<queue>.<horizon>`; 0 is a walk
/// at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The walked stream's sequence to start below.
    pub seq: u64,
    /// The task queue's sequence to start below, in a listing of every status (`None`: none
    /// left to walk).
    pub queue: Option<u64>,
    /// The ledger's last sequence when a listing of every status began (its first page): a
    /// published task first recorded after it is shown by the queue walk (`None`: a cursor
    /// written before it was kept).
    pub horizon: Option<u64>,
}

impl Cursor {
    /// A cursor of one walk, at stream sequence `seq`.
    pub fn at(seq: u64) -> Self {
        Cursor {
            seq,
            queue: None,
            horizon: None,
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.queue, self.horizon) {
            (None, _) => write!(f, "{}", self.seq),
            (Some(q), None) => write!(f, "{}.{q}", self.seq),
            (Some(q), Some(h)) => write!(f, "{}.{q}.{h}", self.seq),
        }
    }
}

impl std::str::FromStr for Cursor {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, '.');
        let seq = parts.next().unwrap_or_default().parse()?;
        let queue = parts.next().map(str::parse).transpose()?;
        let horizon = parts.next().map(str::parse).transpose()?;
        Ok(Cursor {
            seq,
            queue,
            horizon,
        })
    }
}

impl ListFilter {
    /// The stream sequence to start below, if a cursor was given.
    pub(crate) fn before_seq(&self) -> Option<u64> {
        self.before.map(|c| c.seq)
    }

    pub(crate) fn accepts(&self, t: &Task) -> bool {
        self.assignee.as_ref().is_none_or(|a| *a == t.assigned_to)
            && self.status.is_none_or(|s| s == t.status)
            && self
                .scope
                .as_ref()
                .is_none_or(|s| s.contains(&t.assigned_to))
            && self.priority.is_none_or(|p| p == t.priority)
            && self.kind.is_none_or(|k| k == t.kind)
            && self
                .name_contains
                .as_deref()
                .is_none_or(|text| t.task_name.to_lowercase().contains(text))
            && self.unchanged_since.is_none_or(|at| t.updated_time < at)
    }

    /// Whether some of the filter can only be checked on a task's state, after reading it (the
    /// walked subjects cannot narrow a listing by name, nor the ledger's by priority or kind).
    pub(crate) fn narrows_after_read(&self) -> bool {
        self.priority.is_some()
            || self.kind.is_some()
            || self.name_contains.is_some()
            || self.unchanged_since.is_some()
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
        let task = self.get(id).await?;
        self.events_of(&task).await
    }

    /// The events of `task` up to its last record, asking the server for exactly that many
    /// (asking for more would make it scan on to the end of the stream).
    async fn events_of(&self, task: &Task) -> Result<Vec<TaskEvent>, TaskError> {
        let filter = subjects::task_ledger(&task.assigned_to, &task.id);
        let window = (1, task.revision);
        let covered = (filter.as_str(), 1, usize::MAX);
        let (msgs, _) = self
            .read_source(subjects::EVENTS_STREAM, covered, |client| {
                let filter = &filter;
                async move {
                    direct::range(&client, subjects::EVENTS_STREAM, filter, window, 0).await
                }
            })
            .await?;
        let mut events = Vec::with_capacity(msgs.len() + 1);
        for m in &msgs {
            let event = decode_event(m)?;
            if also_created(&event) {
                if let Some(stored) = decode_record(m) {
                    events.push(implied_created(&event, &stored.task));
                }
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Checks `filter` of the ledger (from its start) after every loss of the reader
    /// connection counted by `resets`, until the returned guard is dropped.
    fn check_on_resets(
        &self,
        mut resets: tokio::sync::watch::Receiver<u64>,
        filter: String,
    ) -> AbortOnDrop {
        resets.borrow_and_update();
        let tasks = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            while resets.changed().await.is_ok() {
                let covered = Covered::Ledger(&filter, 1, usize::MAX);
                if let Err(e) = tasks.check(covered).await {
                    tracing::debug!(filter, error.message = %e, "event feed check failed");
                }
            }
        }))
    }

    /// How many ledger messages on `filter` were stored at or after `since` (the overview's
    /// counts), read over the reader connection like every read of the ledger.
    pub async fn count_events_since(
        &self,
        filter: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, TaskError> {
        let covered = Covered::LedgerSince(filter, since);
        self.read_on_reader(covered, |client| async move {
            direct::count_since(&client, subjects::EVENTS_STREAM, filter, since).await
        })
        .await
    }

    /// The task log in seed 001's `bot_task_log` shape.
    pub async fn logs(&self, id: &TaskId) -> Result<Vec<LogEntry>, TaskError> {
        let task = self.get(id).await?;
        let mut entries = Vec::new();
        let mut status: Option<TaskStatus> = None;
        for e in self.events_of(&task).await? {
            let mut entry = LogEntry::from(&e);
            // Non-transition events (steps, output…) keep the status they happened in.
            entry.old_status = entry.old_status.or(status);
            entry.new_status = entry.new_status.or(status);
            status = entry.new_status;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// A task's events from the first one on, then live as they happen. Read over the reader
    /// connection; while the feed lasts, each loss of that connection has the task's log
    /// checked, so that a message no client can read is moved aside and the feed goes on.
    pub async fn follow(
        &self,
        id: &TaskId,
    ) -> Result<impl Stream<Item = Result<TaskEvent, TaskError>> + Send + 'static, TaskError> {
        let reader = self.bus.reader().await?;
        let filter = subjects::task_events(id);
        let watch = self.check_on_resets(reader.resets(), filter.clone());
        let messages = super::ledger::events_over(reader.client)
            .await?
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .op("create event feed")?
            .messages()
            .await
            .op("open event feed")?;
        // Ends the checks when the feed is dropped.
        let messages = messages.map(move |m| {
            let _checks = &watch;
            m
        });
        Ok(messages.flat_map(|m| {
            let events = match m.op("event feed") {
                Ok(m) => shown_events(&m.payload)
                    .map(|v| v.into_iter().map(|(e, _)| e).collect::<Vec<_>>())
                    .map_err(TaskError::from),
                Err(e) => Err(e.into()),
            };
            futures::stream::iter(match events {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            })
        }))
    }
}

/// A background task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn a_cursor_reads_back_as_written_in_each_of_its_forms() {
        let forms = [
            Cursor::at(7),
            Cursor {
                seq: 7,
                queue: Some(3),
                horizon: None,
            },
            Cursor {
                seq: 7,
                queue: Some(3),
                horizon: Some(12),
            },
        ];
        for c in forms {
            assert_eq!(c.to_string().parse::<Cursor>(), Ok(c), "{c}");
        }
        assert_eq!(forms.map(|c| c.to_string()), ["7", "7.3", "7.3.12"]);
    }

    #[test]
    fn a_cursor_with_more_parts_or_no_number_is_refused() {
        for bad in ["", "a", "7.", "7.3.", "7.3.12.1", "7.x.1"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }
}
