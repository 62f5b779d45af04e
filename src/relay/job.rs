//! What travels through the delivery queue, and what the relay records about each attempt
//! (where those records are stored: the delivery store, [`super::store`]).

use crate::domain::{EventKind, Task, TaskEvent};
use crate::outbound::destination::Destination;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One message for one destination (a stream message on `deliveries.<key>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// Stable across retries (`webhook-id`; receivers de-duplicate on it).
    pub id: String,
    /// The destination's queue key.
    pub key: String,
    /// The configured name, when it is a named destination (resolved again at delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The destination itself for per-task ones (named ones come from the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// The task event, if this delivers one (a push has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventJson>,
    /// The task as it was when the event was fanned out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskJson>,
    /// The message for people (Live Task Pulse format, or a push's content).
    pub text: String,
    /// For pushes: the chat session to deliver to (overrides the destination's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When the job was queued.
    pub created_time: DateTime<Utc>,
}

impl DeliveryJob {
    /// The event type as webhook receivers see it: `task.completed`, …, or `push`.
    pub fn event_type(&self) -> String {
        match &self.event {
            Some(e) => format!("task.{}", e.kind.as_str()),
            None => "push".into(),
        }
    }

    /// The JSON body a webhook receives: `type`, `id`, `timestamp` and `data` (`event`,
    /// `task`, `text`), serialized straight from the job (no JSON tree in between).
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope {
            kind: self.event_type(),
            id: &self.id,
            timestamp: self.created_time,
            data: EnvelopeData {
                event: self.event.as_ref(),
                task: self.task.as_ref(),
                text: &self.text,
            },
        }
    }
}

/// A task as the JSON it was queued with: a delivery passes it on (into the webhook body and
/// the record) without reading it, so a job costs no task decoding or encoding per delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskJson(Box<RawValue>);

impl TaskJson {
    /// The JSON of `task`.
    pub fn of(task: &Task) -> Self {
        Self(serde_json::value::to_raw_value(task).expect("a task serializes"))
    }

    /// The task's id and name, read from the JSON (`None` if it has none).
    pub fn names(&self) -> Option<TaskNames> {
        serde_json::from_str(self.0.get()).ok()
    }
}

impl PartialEq for TaskJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// A task event as the JSON it was queued with, and the two fields a delivery reads of it: the
/// rest is passed on (webhook body, record) without decoding or encoding it again.
#[derive(Debug, Clone)]
pub struct EventJson {
    raw: Box<RawValue>,
    /// The event type.
    pub kind: EventKind,
    /// The task it happened to.
    pub task_id: String,
}

/// The fields of an event's JSON that [`EventJson`] reads.
#[derive(Deserialize)]
struct EventHead {
    #[serde(rename = "type")]
    kind: EventKind,
    task_id: String,
}

impl EventJson {
    /// The JSON of `event`.
    pub fn of(event: &TaskEvent) -> Self {
        Self {
            raw: serde_json::value::to_raw_value(event).expect("an event serializes"),
            kind: event.kind,
            task_id: event.task_id.as_str().to_string(),
        }
    }

    /// The event without its data and with its message cut to 4 KiB (what a dead record keeps
    /// of a job too large to queue); unchanged if it cannot be read as an event.
    pub fn clipped(&self) -> Self {
        match serde_json::from_str::<TaskEvent>(self.raw.get()) {
            Ok(mut event) => {
                event.data = serde_json::Value::Null;
                event.message = event.message.as_deref().map(|m| clip_response(m).0);
                Self::of(&event)
            }
            Err(_) => self.clone(),
        }
    }
}

impl PartialEq for EventJson {
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
}

impl Serialize for EventJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        let head: EventHead = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
        Ok(Self {
            raw,
            kind: head.kind,
            task_id: head.task_id,
        })
    }
}

/// What the sinks that name a task read of it ([`TaskJson::names`]).
#[derive(Debug, Deserialize)]
pub struct TaskNames {
    /// The task id.
    pub id: String,
    /// The task's name.
    #[serde(default)]
    pub task_name: String,
}

/// The JSON body a webhook receives ([`DeliveryJob::envelope`]).
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// `task.<event type>`, or `push`.
    #[serde(rename = "type")]
    kind: String,
    /// The delivery id (also the `webhook-id` header).
    id: &'a str,
    /// When the job was queued.
    timestamp: DateTime<Utc>,
    /// What happened.
    data: EnvelopeData<'a>,
}

/// The `data` of an [`Envelope`]: the event, the task as it was then (`null` for a push), and
/// the message for people.
#[derive(Debug, Serialize)]
struct EnvelopeData<'a> {
    event: Option<&'a EventJson>,
    task: Option<&'a TaskJson>,
    text: &'a str,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started.
    pub time: DateTime<Utc>,
    /// HTTP status, when there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How long it took.
    pub duration_ms: u64,
    /// The response body (its first 4 KiB, decoded as UTF-8 with bad bytes replaced) or the
    /// error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Whether `response` was cut to [`MAX_RESPONSE_BYTES`] (stored only when it was).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// When the next attempt is due (none after the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<DateTime<Utc>>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Queued or waiting for a retry.
    Pending,
    /// The destination accepted it.
    Delivered,
    /// Given up: attempts exhausted, a permanent error, or a disabled destination.
    Dead,
}

impl DeliveryStatus {
    /// The status as its record-key token (and JSON value): `pending`, `delivered`, `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// Parses a status token.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Everything the relay knows about one delivery (KV bucket `deliveries`; where and how it is
/// stored: the delivery store, [`super::store`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The job.
    pub job: DeliveryJob,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
    /// Why it is dead, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last change.
    pub updated_time: DateTime<Utc>,
}

/// Queue key of pushes (`POST /api/push`): delivered to the relay's `push_destination`.
pub const PUSH_KEY: &str = "push";

/// Largest response body kept per attempt.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Cuts a response body to [`MAX_RESPONSE_BYTES`] at a character boundary; `true` with it
/// when something was cut off.
pub fn clip_response(body: &str) -> (String, bool) {
    if body.len() <= MAX_RESPONSE_BYTES {
        return (body.to_string(), false);
    }
    let mut end = MAX_RESPONSE_BYTES;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    (body[..end].to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Assignee, NewTask, TaskId};

    /// A `step` event with `data` and `message`, and its task, as a job's JSON carries them.
    fn event_and_task(message: &str) -> (TaskEvent, Task) {
        let id = TaskId::parse("t_7").unwrap();
        let anna = Assignee::parse("anna").unwrap();
        let mut event = TaskEvent::new(&id, &anna, EventKind::Step, "bot");
        event.message = Some(message.to_string());
        event.data = serde_json::json!({"progress": 0.5});
        let new: NewTask = serde_json::from_value(
            serde_json::json!({"task_name": "Report", "assigned_to": "anna"}),
        )
        .unwrap();
        (event, Task::from_new(id, new))
    }

    #[test]
    fn a_job_read_back_passes_its_event_and_task_on_unchanged() {
        let (event, task) = event_and_task("half way");
        let job = DeliveryJob {
            id: format!("{}.n_hook", event.id),
            key: "n_hook".into(),
            name: Some("hook".into()),
            destination: None,
            event: Some(EventJson::of(&event)),
            task: Some(TaskJson::of(&task)),
            text: "…".into(),
            session_id: None,
            created_time: chrono::Utc::now(),
        };
        let bytes = serde_json::to_vec(&job).unwrap();
        let back: DeliveryJob = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, job);
        let read = back.event.as_ref().unwrap();
        assert_eq!((read.kind, read.task_id.as_str()), (EventKind::Step, "t_7"));
        let names = back.task.as_ref().unwrap().names().unwrap();
        assert_eq!(
            (names.id.as_str(), names.task_name.as_str()),
            ("t_7", "Report")
        );
        let as_json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(as_json["event"], serde_json::to_value(&event).unwrap());
        assert_eq!(as_json["task"], serde_json::to_value(&task).unwrap());
    }

    #[test]
    fn a_job_whose_event_has_no_type_cannot_be_read() {
        let job = serde_json::json!({
            "id": "evt_1.n_hook", "key": "n_hook", "text": "",
            "created_time": "2026-12-04T00:00:00Z", "event": {"task_id": "t_7"},
        });
        let read = serde_json::from_value::<DeliveryJob>(job);
        assert!(read.unwrap_err().to_string().contains("type"));
    }

    #[test]
    fn a_clipped_event_keeps_no_data_and_at_most_4_kib_of_message() {
        let (event, _) = event_and_task(&"x".repeat(10_000));
        let clipped = EventJson::of(&event).clipped();
        let back: TaskEvent = serde_json::from_str(clipped.raw.get()).unwrap();
        assert_eq!(back.data, serde_json::Value::Null);
        assert_eq!(back.message.unwrap().len(), MAX_RESPONSE_BYTES);
        assert_eq!((back.id, back.kind), (event.id, event.kind));
    }

    #[test]
    fn a_long_body_is_cut_at_4_kib_on_a_character_boundary_and_flagged() {
        let (short, cut) = clip_response("ok");
        assert_eq!((short.as_str(), cut), ("ok", false));
        let long = "€".repeat(2000);
        let (clipped, cut) = clip_response(&long);
        assert!(cut);
        assert_eq!(clipped.len(), 4095, "1365 three-byte characters");
        assert!(long.starts_with(&clipped));
    }

    #[test]
    fn an_attempt_stores_the_truncated_flag_only_when_set() {
        let a = Attempt {
            time: chrono::Utc::now(),
            status: Some(500),
            duration_ms: 3,
            response: Some("x".into()),
            truncated: false,
            next_attempt_time: None,
        };
        let plain = serde_json::to_value(&a).unwrap();
        assert!(plain.get("truncated").is_none(), "{plain}");
        let cut = serde_json::to_value(Attempt {
            truncated: true,
            ..a
        })
        .unwrap();
        assert_eq!(cut["truncated"], true);
        let back: Attempt = serde_json::from_value(plain).unwrap();
        assert!(!back.truncated);
    }
}
