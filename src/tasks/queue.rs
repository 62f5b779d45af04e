//! The queue as bots see it: the pending list, read in priority and arrival order straight from
//! the work-queue stream (no consumer involved, so it never competes with workers).
//!
//! Messages published to NATS directly by other producers get their state entry here, the
//! first time anybody reads them ("materialising").

use super::{TaskError, TaskService};
use crate::bus::{subjects, NatsResultExt};
use crate::domain::{Assignee, NewTask, Priority, Task, TaskId, TaskStatus};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashSet;

/// Walks the messages of several subjects of one stream in sequence order.
struct QueueWalk<'a> {
    stream: &'a Stream,
    cursors: Vec<Cursor>,
}

struct Cursor {
    subject: String,
    next_seq: u64,
    head: Option<StreamMessage>,
    done: bool,
}

impl<'a> QueueWalk<'a> {
    fn new(stream: &'a Stream, subjects: impl IntoIterator<Item = String>) -> Self {
        let cursors = subjects
            .into_iter()
            .map(|subject| Cursor {
                subject,
                next_seq: 1,
                head: None,
                done: false,
            })
            .collect();
        Self { stream, cursors }
    }

    async fn next(&mut self) -> Result<Option<StreamMessage>, TaskError> {
        for c in self
            .cursors
            .iter_mut()
            .filter(|c| c.head.is_none() && !c.done)
        {
            match self
                .stream
                .direct_get_next_for_subject(c.subject.clone(), Some(c.next_seq))
                .await
            {
                Ok(m) => {
                    c.next_seq = m.sequence + 1;
                    c.head = Some(m);
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => c.done = true,
                Err(e) => return Err(Err::<(), _>(e).op("direct get").unwrap_err().into()),
            }
        }
        let earliest = self
            .cursors
            .iter_mut()
            .filter(|c| c.head.is_some())
            .min_by_key(|c| c.head.as_ref().map(|m| m.sequence));
        Ok(earliest.and_then(|c| c.head.take()))
    }
}

/// A message of the queue stream, however it was read (direct get or pulled by a worker).
#[derive(Debug, Clone, Copy)]
pub struct QueuedMessage<'a> {
    /// Its subject (`tasks.<assignee>.<prio>[.<kind>]`).
    pub subject: &'a str,
    /// Its headers.
    pub headers: Option<&'a async_nats::HeaderMap>,
    /// The create request.
    pub payload: &'a [u8],
    /// Stream sequence.
    pub seq: u64,
    /// When it was published, in nanoseconds since the epoch.
    pub published_ns: i128,
}

impl<'a> From<&'a StreamMessage> for QueuedMessage<'a> {
    fn from(m: &'a StreamMessage) -> Self {
        Self {
            subject: m.subject.as_str(),
            headers: Some(&m.headers),
            payload: &m.payload,
            seq: m.sequence,
            published_ns: m.time.unix_timestamp_nanos(),
        }
    }
}

/// Reads a queue message: the body is a create request; fields it omits come from the subject.
pub(crate) fn decode_queued(msg: QueuedMessage<'_>) -> Result<(TaskId, NewTask), String> {
    let (assignee, priority, kind) = subjects::parse_task(msg.subject)
        .ok_or_else(|| format!("subject {} is not a task subject", msg.subject))?;
    let mut body: serde_json::Value =
        serde_json::from_slice(msg.payload).map_err(|e| format!("body is not JSON: {e}"))?;
    let obj = body.as_object_mut().ok_or("body is not a JSON object")?;
    obj.entry("assigned_to").or_insert(assignee.as_str().into());
    obj.entry("priority").or_insert(priority.as_str().into());
    obj.entry("kind").or_insert(kind.as_str().into());
    let new: NewTask = serde_json::from_value(body).map_err(|e| e.to_string())?;
    new.validate()?;
    let header_id = msg
        .headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|v| TaskId::parse(v.as_str()).ok());
    let id = new.id.clone().or(header_id).unwrap_or_else(|| {
        // Deterministic, so every reader derives the same id for the same message.
        let ms = (msg.published_ns / 1_000_000).max(0) as u64;
        TaskId::parse(&ulid::Ulid::from_parts(ms, msg.seq as u128).to_string())
            .expect("a ULID is a valid task id")
    });
    Ok((id, new))
}

impl TaskService {
    /// Pending tasks, P0 first and oldest first within a priority. `None` lists every assignee.
    pub async fn pending(
        &self,
        assignee: Option<&Assignee>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for priority in Priority::ALL {
            let mut walk = QueueWalk::new(
                &self.bus.topology.tasks,
                subjects::queue_subjects(assignee, priority),
            );
            while out.len() < limit {
                let mut batch = Vec::new();
                while batch.len() < limit - out.len() {
                    match walk.next().await? {
                        Some(m) => batch.push(m),
                        None => break,
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let tasks: Vec<Option<Task>> = futures::stream::iter(batch)
                    .map(|m| async move { self.task_for_message((&m).into()).await })
                    .buffered(32)
                    .try_collect()
                    .await?;
                for t in tasks.into_iter().flatten() {
                    // Messages of claimed tasks stay until their worker acks them: skip those.
                    if t.status == TaskStatus::Pending && seen.insert(t.id.clone()) {
                        out.push(t);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The task a queue message stands for, creating its state entry when a producer published
    /// it to NATS directly. `None` for messages that are not valid tasks.
    pub(crate) async fn task_for_message(
        &self,
        msg: QueuedMessage<'_>,
    ) -> Result<Option<Task>, TaskError> {
        let (id, new) = match decode_queued(msg) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!(
                    seq = msg.seq,
                    subject = msg.subject,
                    why,
                    "skipping invalid task message"
                );
                return Ok(None);
            }
        };
        // Taskfleet's own creates record the state: read it. A task published straight to NATS
        // has none yet: create it first (one round trip less), reading only if it exists.
        if recorded(msg) {
            if let Some(t) = self.load(&id).await? {
                return Ok(Some(t));
            }
        }
        let mut task = queued_task(msg, id.clone(), new);
        if self.record_new(&mut task, "nats", false).await? {
            return Ok(Some(task));
        }
        // It exists: a replica that has not seen it yet may still answer "none" for a moment.
        self.load_at_least(&id, 1).await
    }
}

/// Whether taskfleet's own create published the message (its state entry is written too).
pub(crate) fn recorded(msg: QueuedMessage<'_>) -> bool {
    msg.headers
        .is_some_and(|h| h.get(crate::bus::RECORDED_HEADER).is_some())
}

/// The pending task a message published straight to NATS stands for (created when published).
pub(crate) fn queued_task(msg: QueuedMessage<'_>, id: TaskId, new: NewTask) -> Task {
    let mut task = Task::from_new(id, new);
    task.queue_seq = Some(msg.seq);
    let published = chrono::DateTime::from_timestamp_nanos(msg.published_ns as i64);
    task.created_time = published;
    task.updated_time = published;
    task
}
