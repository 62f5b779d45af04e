//! What travels through the delivery queue, and what the relay records about each attempt
//! (where those records are stored: the delivery store, [`super::store`]).

use crate::domain::{Task, TaskEvent};
use crate::outbound::destination::Destination;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    pub event: Option<TaskEvent>,
    /// The task as it was when the event was fanned out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
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
    event: Option<&'a TaskEvent>,
    task: Option<&'a Task>,
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
