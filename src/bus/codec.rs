//! JSON on the wire, and the headers every message carries.

use super::BusError;
use async_nats::HeaderMap;
use serde::{de::DeserializeOwned, Serialize};

/// W3C trace context header carried by every message so later hops continue the trace.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// Encodes a value as JSON bytes.
pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    // Our types serialize infallibly (no maps with non-string keys).
    serde_json::to_vec(value)
        .expect("domain types serialize to JSON")
        .into()
}

/// Decodes JSON bytes, naming what was expected in the error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, BusError> {
    serde_json::from_slice(bytes).map_err(|source| BusError::Decode { what, source })
}

/// Marks a queue message published by taskfleet itself, whose task has a ledger record too; its
/// value is the type of the event that records the queued state (`created` for a create,
/// `retried` for a retry), so a worker reads the last message of that type as its first guess.
/// Without it (a producer published straight to NATS) the worker claims the task with the
/// task's first record.
pub const RECORDED_HEADER: &str = "Taskfleet-Recorded";

/// Headers for a published message: `Nats-Msg-Id` for de-duplication (none for an empty
/// `msg_id`) plus the current trace context.
pub fn message_headers(msg_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if !msg_id.is_empty() {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    }
    crate::telemetry::inject_context(&mut headers);
    headers
}
