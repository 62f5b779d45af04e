//! Compare-and-set appends: a publish that the stream stores only if the last message on a
//! (wildcard) subject is still the one the writer read. One such message is at once the lock,
//! the new state and the log entry; no separate lock or state record exists.
//!
//! Headers: `Nats-Expected-Last-Subject-Sequence` (0: nothing on the subject yet) and, since
//! nats-server 2.11, `Nats-Expected-Last-Subject-Sequence-Subject`, which names the subject the
//! check uses (say `events.anna.T1.*`) instead of the message's own.

use super::{message_headers, BusError};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;

/// Header naming the sequence the check expects.
pub const EXPECTED_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
/// Header naming the subject (wildcards allowed) the check is made on.
pub const EXPECTED_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";
/// Header naming the `Nats-Msg-Id` the stream's last stored message must have (the check is
/// made where the message is stored, in order, also on every replica of a clustered stream).
pub const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";

/// One append: where it goes, what it expects, and its de-duplication id.
#[derive(Debug, Clone)]
pub struct Append {
    /// The subject written to.
    pub subject: String,
    /// The subject the check is made on.
    pub guard: String,
    /// The last sequence on `guard` the writer saw (0 for none).
    pub expected: u64,
    /// `Nats-Msg-Id`: a re-sent append is stored once (empty: none; the guard alone then
    /// refuses a copy sent again, as a conflict). A batch's first append names the batch.
    pub msg_id: String,
    /// Extra headers (say, a marker for readers).
    pub extra: Vec<(&'static str, String)>,
    /// The message.
    pub payload: Bytes,
}

/// Why an append was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Somebody wrote to the guarded subject since `expected`; `current` is the last sequence
    /// there when the server said so (a check blocked by a write still in flight has none).
    #[error("the record changed concurrently (last sequence now {current:?})")]
    Conflict {
        /// The last sequence on the guarded subject, if the server named it.
        current: Option<u64>,
    },
    /// No answer (a timeout, a lost connection, no stream leader to answer): the append may or
    /// may not have been stored; sending it again is safe (its `Nats-Msg-Id` makes a stored one
    /// a duplicate).
    #[error(transparent)]
    Unknown(BusError),
    /// The stream refused it for good (too large, no permission): not stored.
    #[error(transparent)]
    Refused(BusError),
}

impl Append {
    fn headers(&self) -> HeaderMap {
        let mut h = message_headers(&self.msg_id);
        h.insert(EXPECTED_SEQ, self.expected.to_string().as_str());
        h.insert(EXPECTED_SUBJECT, self.guard.as_str());
        for (name, value) in &self.extra {
            h.insert(*name, value.as_str());
        }
        h
    }

    /// Sends the append without waiting for the stream's answer. A send that fails never
    /// reached the server (the connection is gone): it may simply be sent again.
    pub async fn send(&self, js: &async_nats::jetstream::Context) -> Result<Sent, AppendError> {
        let ack = js
            .publish_with_headers(self.subject.clone(), self.headers(), self.payload.clone())
            .await
            .map_err(|e| publish_error("append", e))?;
        Ok(Sent(ack))
    }
}

/// Sends several messages to one stream as one atomic batch (ADR-50; the stream needs
/// `allow_atomic_publish`): all are stored or none. Only the first message's guard is checked,
/// at commit, against the stream as it was before the batch; the messages get consecutive
/// sequences, and the answer (awaited through the returned [`Sent`]) is the last one's. Used
/// where one change is more than one message: a takeover's `retried` and `started`, a final
/// status and its index entry.
pub async fn send_batch(
    js: &async_nats::jetstream::Context,
    batch: &[Append],
) -> Result<Sent, AppendError> {
    if let [one] = batch {
        return one.send(js).await;
    }
    let messages = batch.iter().enumerate().map(|(i, a)| {
        let headers = if i == 0 {
            a.headers()
        } else {
            let mut h = message_headers(&a.msg_id);
            for (name, value) in &a.extra {
                h.insert(*name, value.as_str());
            }
            h
        };
        (a.subject.clone(), headers, a.payload.clone())
    });
    let batch_id = batch.first().map(|a| a.msg_id.as_str()).unwrap_or_default();
    publish_batch(js, batch_id, messages.collect()).await
}

/// Publishes `messages` (subject, headers, payload) to one stream as one atomic batch, named
/// after `id` (ADR-50: all are stored or none, at consecutive sequences); the answer is the
/// last one's. A batch holding a `Nats-Msg-Id` stored before is refused whole
/// ([`AppendError::Conflict`]).
pub async fn publish_batch(
    js: &async_nats::jetstream::Context,
    id: &str,
    messages: Vec<(String, HeaderMap, Bytes)>,
) -> Result<Sent, AppendError> {
    let count = messages.len();
    let mut messages = messages.into_iter();
    let Some(last) = messages.next_back() else {
        return Err(AppendError::Refused(BusError::Op {
            op: "append batch",
            source: "an empty batch".into(),
        }));
    };
    let batch_id = format!("b{}", id.chars().take(60).collect::<String>());
    let client = js.client();
    for (i, (subject, mut h, payload)) in messages.enumerate() {
        h.insert(BATCH_ID, batch_id.as_str());
        h.insert(BATCH_SEQUENCE, (i + 1).to_string().as_str());
        client
            .publish_with_headers(subject, h, payload)
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    AppendError::Refused(BusError::TooLarge(e.to_string()))
                }
                _ => AppendError::Unknown(BusError::from_op("append batch", e)),
            })?;
    }
    let (subject, mut h, payload) = last;
    h.insert(BATCH_ID, batch_id.as_str());
    h.insert(BATCH_SEQUENCE, count.to_string().as_str());
    h.insert(BATCH_COMMIT, "1");
    let ack = js
        .publish_with_headers(subject, h, payload)
        .await
        .map_err(|e| publish_error("append batch", e))?;
    Ok(Sent(ack))
}

/// A publish that failed before reaching the stream: too large for good, else unknown (the
/// connection is gone; sending again is safe).
fn publish_error(op: &'static str, e: async_nats::jetstream::context::PublishError) -> AppendError {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => {
            AppendError::Refused(BusError::TooLarge(e.to_string()))
        }
        _ => AppendError::Unknown(BusError::from_op(op, e)),
    }
}

/// [`send_batch`] and wait for its answer: the last message's sequence.
pub async fn append_batch(
    js: &async_nats::jetstream::Context,
    batch: &[Append],
) -> Result<u64, AppendError> {
    send_batch(js, batch).await?.stored().await
}

/// ADR-50 batch headers.
const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// An append on its way; awaiting it gives the stored sequence.
#[derive(Debug)]
pub struct Sent(PublishAckFuture);

impl Sent {
    /// The sequence the message was stored at (also for a duplicate of one stored before).
    pub async fn stored(self) -> Result<u64, AppendError> {
        match self.0.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(AppendError::Conflict {
                    current: current_sequence(&e),
                })
            }
            Err(e)
                if matches!(
                    jetstream_code(&e),
                    Some(WRONG_LAST_SEQUENCE_CONSTANT | BATCH_DUPLICATE)
                ) =>
            {
                Err(AppendError::Conflict { current: None })
            }
            // StreamNotFound is "no responders": in a cluster, the stream is electing a leader
            // (one that does not exist was found when the topology was checked at start). Not
            // stored, and sent again like an unanswered one: refusing it made a worker drop a
            // finished task's result, so the task ran again (chaos scenario 6: 15-20 a run).
            Err(e)
                if matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut
                        | PublishErrorKind::BrokenPipe
                        | PublishErrorKind::StreamNotFound
                ) =>
            {
                Err(AppendError::Unknown(BusError::from_op("append ack", e)))
            }
            Err(e) => Err(AppendError::Refused(BusError::from_op("append ack", e))),
        }
    }
}

/// A batch holding a message id stored before: a re-sent batch whose first copy was stored (the
/// writer then finds its own event as the task's last record), or a reused id.
const BATCH_DUPLICATE: ErrorCode = ErrorCode(10201);

/// "Wrong last sequence" without a sequence: in a cluster, another write to the same guarded
/// subject is still being replicated.
const WRONG_LAST_SEQUENCE_CONSTANT: ErrorCode = ErrorCode(10164);

/// "Message size exceeds maximum allowed": the stream's `max_msg_size` refused the message.
const MESSAGE_TOO_LARGE: ErrorCode = ErrorCode(10054);

/// Whether a publish failed for good: the message is larger than the connection's
/// `max_payload` or than the stream's `max_msg_size`, so sending it again cannot help (a timeout,
/// a lost connection or a full stream can).
pub fn refused_for_good(e: &async_nats::jetstream::context::PublishError) -> bool {
    e.kind() == PublishErrorKind::MaxPayloadExceeded || jetstream_code(e) == Some(MESSAGE_TOO_LARGE)
}

fn jetstream_code(e: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    std::error::Error::source(e)?
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(|je| je.error_code())
}

/// The sequence in the server's "wrong last sequence: N" answer.
fn current_sequence(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let text = std::error::Error::source(e)?.to_string();
    let rest = text.split("wrong last sequence:").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(async_nats::jetstream::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrong last sequence")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_current_sequence_is_read_from_the_servers_answer() {
        let je: async_nats::jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": 10071, "description": "wrong last sequence: 1011"
        }))
        .unwrap();
        let e = Outer(je);
        assert_eq!(current_sequence(&e), Some(1011));
        assert_eq!(jetstream_code(&e), Some(ErrorCode(10071)));
    }
}
