//! The task ledger's record: one message per state change on `events.<assignee>.<id>.<type>`,
//! holding the event (its JSON fields, unchanged for subscribers) plus `task`, the task's state
//! after it. The last message of a task is its current state; its stream sequence is the
//! revision every write compares against.

use crate::bus::{decode, encode, raw, subjects, BusError, NatsResultExt};
use crate::domain::{Assignee, EventKind, Task, TaskEvent, TaskId};
use async_nats::jetstream::message::StreamMessage;
use serde::{Deserialize, Serialize};

/// What a ledger message holds on the wire.
#[derive(Serialize)]
struct RecordOut<'a> {
    #[serde(flatten)]
    event: &'a TaskEvent,
    task: &'a Task,
}

/// The parts of a ledger message a state read needs.
#[derive(Deserialize)]
struct RecordIn {
    id: String,
    #[serde(rename = "type")]
    kind: EventKind,
    task: Task,
}

/// A task's state as one ledger message stored it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The state (its `revision` is the message's stream sequence).
    pub task: Task,
    /// The id of the event written with it.
    pub event_id: String,
    /// That event's type.
    pub kind: EventKind,
}

/// The message payload for `event` with `task` as the state after it.
pub(crate) fn encode_record(event: &TaskEvent, task: &Task) -> bytes::Bytes {
    encode(&RecordOut { event, task })
}

/// Reads a ledger message; `None` for a message that carries no state (not written by this
/// layout).
pub(crate) fn decode_record(msg: &StreamMessage) -> Option<Stored> {
    decode_stored(&msg.payload, msg.sequence)
}

/// [`decode_record`] of a message's body and stream sequence.
fn decode_stored(payload: &[u8], seq: u64) -> Option<Stored> {
    let record: RecordIn = decode("ledger record", payload).ok()?;
    let mut task = record.task;
    task.revision = seq;
    Some(Stored {
        task,
        event_id: record.id,
        kind: record.kind,
    })
}

/// Reads a ledger message as the event it records (without the state).
pub(crate) fn decode_event(msg: &StreamMessage) -> Result<TaskEvent, BusError> {
    decode("task event", &msg.payload)
}

/// The newest of several ledger messages of one task (say, the last of each event type).
pub(crate) fn newest(msgs: impl IntoIterator<Item = StreamMessage>) -> Option<Stored> {
    msgs.into_iter()
        .max_by_key(|m| m.sequence)
        .and_then(|m| decode_record(&m))
}

/// The latest state of a task from the stream leader (a consistent read) on `filter` (its
/// ledger subjects, `events.<a>.<id>.*`, or `events.*.<id>.*` when the assignee is not known),
/// read as JSON so that it cannot break the connection. `Err(seq)` when the last message is
/// one no client can read (see `bus::raw`).
pub(crate) async fn leader_last(
    client: &async_nats::Client,
    filter: &str,
) -> Result<Result<Option<Stored>, u64>, BusError> {
    let Some(m) = raw::last(client, subjects::EVENTS_STREAM, filter).await? else {
        return Ok(Ok(None));
    };
    if m.problem().is_some() {
        return Ok(Err(m.seq));
    }
    Ok(Ok(decode_stored(&m.payload, m.seq)))
}

/// The latest state of one of `assignee`'s tasks, read the way a worker's NATS user may: a
/// direct get of the last message of each event type's literal subject (a worker may not name
/// a wildcard in a request body), the newest one winning. Any replica may answer.
pub(crate) async fn scoped_last<I>(
    events: &async_nats::jetstream::stream::Stream<I>,
    assignee: &Assignee,
    id: &TaskId,
) -> Result<Option<Stored>, BusError> {
    let reads =
        EventKind::ALL.map(|kind| literal_last(events, subjects::event(assignee, id, kind)));
    let mut found = Vec::new();
    for got in futures::future::join_all(reads).await {
        found.extend(got?);
    }
    Ok(newest(found))
}

/// The ledger stream over `client` (no request is made), for direct gets of literal subjects
/// over a connection other than the bus's main one.
pub(crate) async fn events_over(
    client: async_nats::Client,
) -> Result<async_nats::jetstream::stream::Stream<()>, BusError> {
    async_nats::jetstream::new(client)
        .get_stream_no_info(subjects::EVENTS_STREAM)
        .await
        .op("events stream")
}

/// The last message on one literal event subject, if any (a direct get any replica answers).
pub(crate) async fn literal_last<I>(
    events: &async_nats::jetstream::stream::Stream<I>,
    subject: String,
) -> Result<Option<StreamMessage>, BusError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    match events.direct_get_last_for_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).op("read task state"),
    }
}

/// Whether a `started` event also stands for the task's creation: a task published straight
/// to NATS that a worker claimed before anything recorded it gets one message for both.
pub fn also_created(event: &TaskEvent) -> bool {
    event.kind == EventKind::Started
        && event
            .data
            .get("created")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
}

/// The `created` event that a combined first claim stands for (see [`also_created`]): what the
/// task log, live feeds and the relay show before its `started`.
pub fn implied_created(started: &TaskEvent, task: &Task) -> TaskEvent {
    let mut e = TaskEvent::new(
        &started.task_id,
        &started.assigned_to,
        EventKind::Created,
        "nats",
    );
    e.id = format!("evt_{}_created", started.task_id);
    e.time = task.created_time;
    e.new_status = Some(crate::domain::TaskStatus::Pending);
    e.message = Some(task.task_name.clone());
    e
}

/// The events one ledger message shows readers (feeds, the relay), each with the task's state
/// after it when the message carries one: its own event, preceded by the `created` it also
/// stands for when it is a task's combined first claim.
pub fn shown_events(payload: &[u8]) -> Result<Vec<(TaskEvent, Option<Task>)>, BusError> {
    #[derive(Deserialize)]
    struct WithTask {
        task: Option<Task>,
    }
    let event: TaskEvent = decode("task event", payload)?;
    let task = decode::<WithTask>("ledger record", payload)
        .ok()
        .and_then(|w| w.task);
    Ok(match &task {
        Some(t) if also_created(&event) => {
            vec![(implied_created(&event, t), task.clone()), (event, task)]
        }
        _ => vec![(event, task)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewTask;

    fn task() -> Task {
        let new: NewTask = serde_json::from_value(
            serde_json::json!({"task_name": "report", "assigned_to": "anna"}),
        )
        .unwrap();
        Task::from_new(TaskId::parse("T1").unwrap(), new)
    }

    #[test]
    fn a_record_is_the_event_json_plus_the_task_state() {
        let t = task();
        let e = TaskEvent::new(&t.id, &t.assigned_to, EventKind::Created, "hope");
        let bytes = encode_record(&e, &t);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        // Subscribers of the event JSON see the same fields as before, plus `task`.
        assert_eq!(json["type"], "created");
        assert_eq!(json["task_id"], "T1");
        assert_eq!(json["operator"], "hope");
        assert_eq!(json["task"]["task_name"], "report");
        let back: TaskEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn only_a_started_event_marked_created_stands_for_the_creation() {
        let t = task();
        let mut e = TaskEvent::new(&t.id, &t.assigned_to, EventKind::Started, "w");
        assert!(!also_created(&e));
        e.data = serde_json::json!({"created": true});
        assert!(also_created(&e));
        let c = implied_created(&e, &t);
        assert_eq!((c.kind, c.time), (EventKind::Created, t.created_time));
        assert_eq!(c.id, "evt_T1_created");
    }
}
