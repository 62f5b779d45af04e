//! Direct reads of stream messages (ADR-31) that async-nats 0.51 has no call for: the last
//! message of a wildcard subject (the subject goes in the request body), a batch of messages
//! after a sequence, and the last message of each of several subjects (`multi_last`).
//!
//! Each is one request whose answers arrive on a fresh inbox, ended by the server's `204 EOB`
//! status (batches) or by the single answer. Any replica of the stream may answer: reads that
//! decide a compare-and-set must not rely on them alone (the write's own check is the authority).

use super::{BusError, NatsResultExt};
use async_nats::jetstream::message::StreamMessage;
use async_nats::StatusCode;
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

/// How long one direct read may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Most messages one batch request asks for.
pub const MAX_BATCH: usize = 1000;

/// Most answers the server gives one `multi_last` request.
pub const MAX_MULTI_LAST: usize = 1024;

/// The request subject of direct gets on `stream`.
fn api(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// The last message of the subjects matching `filter` (wildcards allowed), if any.
pub async fn last(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Result<Option<StreamMessage>, BusError> {
    let mut got = request(client, stream, json!({ "last_by_subj": filter }), false).await?;
    Ok(got.pop())
}

/// Up to `max` messages on subjects matching `filter`, from sequence `start` on, oldest first.
pub async fn batch(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    start: u64,
    max: usize,
) -> Result<Vec<StreamMessage>, BusError> {
    let body = json!({
        "seq": start.max(1),
        "next_by_subj": filter,
        "batch": max.clamp(1, MAX_BATCH),
    });
    request(client, stream, body, true).await
}

/// Up to `max` messages on subjects matching `filter` stored at or after `since`, oldest first.
pub async fn batch_since(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    since: chrono::DateTime<chrono::Utc>,
    max: usize,
) -> Result<Vec<StreamMessage>, BusError> {
    let body = json!({
        "start_time": since.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "next_by_subj": filter,
        "batch": max.clamp(1, MAX_BATCH),
    });
    request(client, stream, body, true).await
}

/// A batch and what the server said is left after it.
#[derive(Debug, Default)]
pub struct Counted {
    /// The messages, oldest first.
    pub messages: Vec<StreamMessage>,
    /// Messages on the filter after the last one sent (the EOB's `Nats-Num-Pending`), when the
    /// server said.
    pub pending_after: Option<u64>,
}

/// [`batch`], also giving the number of matching messages after the batch. With `max` 1 this
/// counts the matches from `start` on (`pending_after + 1` when one came back), which lets a
/// reader ask for exactly the matches of a range instead of letting the server scan past it.
pub async fn batch_counted(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    start: u64,
    max: usize,
) -> Result<Counted, BusError> {
    let body = json!({
        "seq": start.max(1),
        "next_by_subj": filter,
        "batch": max.clamp(1, MAX_BATCH),
    });
    let mut pending_after = None;
    let messages = request_with(client, stream, body, true, &mut pending_after).await?;
    Ok(Counted {
        messages,
        pending_after,
    })
}

/// Every message on `filter` in `[start, end]`, oldest first, asking the server for exactly as
/// many as the range holds: a batch that asks for more scans on past the range's end, to the
/// end of the stream for a sparse filter. `after_end` is how many matches come after `end` (0
/// at the stream's end); the second result is how many come from `start` on, which is the next
/// older range's `after_end`.
pub async fn range(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    (start, end): (u64, u64),
    after_end: u64,
) -> Result<(Vec<StreamMessage>, u64), BusError> {
    let first = batch_counted(client, stream, filter, start, 1).await?;
    let Some(m) = first.messages.into_iter().next() else {
        return Ok((Vec::new(), 0));
    };
    let from_start = first.pending_after.map(|p| p + 1);
    if m.sequence > end {
        return Ok((Vec::new(), from_start.unwrap_or(after_end)));
    }
    // Matches in [m, end], the first of them read already; unknown: read until past `end`.
    let mut left = from_start.map_or(u64::MAX, |n| n.saturating_sub(after_end + 1));
    let mut next = m.sequence + 1;
    let mut out = vec![m];
    while left > 0 && next <= end {
        let want = left.min(MAX_BATCH as u64) as usize;
        let got = batch(client, stream, filter, next, want).await?;
        let Some(last) = got.last().map(|l| l.sequence) else {
            break;
        };
        let before = out.len();
        out.extend(got.into_iter().filter(|x| x.sequence <= end));
        left = left.saturating_sub((out.len() - before) as u64);
        next = last + 1;
    }
    let from_start = from_start.unwrap_or(after_end + out.len() as u64);
    Ok((out, from_start))
}

/// The values of a KV bucket's keys, read from its stream with direct gets (no consumer, so
/// any replica answers), up to about `max`; delete and purge markers (no body) and values that
/// are no `T` are left out.
pub async fn bucket_values<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    bucket: &str,
    max: usize,
) -> Result<Vec<T>, BusError> {
    let entries = bucket_entries(client, bucket, ">", max).await?;
    Ok(entries
        .iter()
        .filter_map(|(_, value)| serde_json::from_slice::<T>(value).ok())
        .collect())
}

/// `(key, value)` of a KV bucket's keys matching `keys` (`>` for all, `anna.>`…), read like
/// [`bucket_values`]; delete and purge markers are left out.
pub async fn bucket_entries(
    client: &async_nats::Client,
    bucket: &str,
    keys: &str,
    max: usize,
) -> Result<Vec<(String, bytes::Bytes)>, BusError> {
    let stream = super::permissions::kv_stream(bucket);
    let prefix = format!("$KV.{bucket}.");
    let filter = format!("{prefix}{keys}");
    let (mut out, mut next) = (Vec::new(), 1);
    while out.len() < max {
        let got = batch(client, &stream, &filter, next, MAX_BATCH).await?;
        let Some(last) = got.last().map(|m| m.sequence) else {
            break;
        };
        out.extend(got.into_iter().filter(|m| !m.payload.is_empty()).map(|m| {
            let key = m
                .subject
                .strip_prefix(prefix.as_str())
                .unwrap_or(&m.subject);
            (key.to_string(), m.payload)
        }));
        next = last + 1;
    }
    Ok(out)
}

/// How many messages on `filter` come after `seq` (a range reader's `after_end` for a range
/// that does not end at the stream's end).
pub async fn count_after(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    seq: u64,
) -> Result<u64, BusError> {
    let c = batch_counted(client, stream, filter, seq + 1, 1).await?;
    Ok(match (c.messages.is_empty(), c.pending_after) {
        (true, _) => 0,
        (false, Some(p)) => p + 1,
        (false, None) => 1,
    })
}

/// How many messages on `filter` were stored at or after `since` (the server finds the first
/// one by time; the dashboard's failures of the last hour).
pub async fn count_since(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<u64, BusError> {
    let body = json!({
        "start_time": since.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "next_by_subj": filter,
        "batch": 1,
    });
    let mut pending_after = None;
    let got = request_with(client, stream, body, true, &mut pending_after).await?;
    Ok(match (got.is_empty(), pending_after) {
        (true, _) => 0,
        (false, Some(p)) => p + 1,
        (false, None) => 1,
    })
}

/// The last message of every subject matching one of `filters`, in sequence order; with
/// `up_to`, the last stored at or before that sequence (subjects with none then are left out).
/// At most [`MAX_MULTI_LAST`] subjects may match in all (the server refuses more).
pub async fn multi_last(
    client: &async_nats::Client,
    stream: &str,
    filters: &[String],
    up_to: Option<u64>,
) -> Result<Vec<StreamMessage>, BusError> {
    if filters.is_empty() {
        return Ok(Vec::new());
    }
    let body = match up_to {
        None => json!({ "multi_last": filters }),
        Some(seq) => json!({ "multi_last": filters, "up_to_seq": seq }),
    };
    request(client, stream, body, true).await
}

/// The header the server puts on a message a stream copied from another (sourcing):
/// `<origin> <origin sequence> <filter> <transform> <original subject>`.
const STREAM_SOURCE: &str = "Nats-Stream-Source";

/// The sequence `m` had in the stream it was copied from (its `Nats-Stream-Source`), if it is a
/// copy.
pub fn source_sequence(m: &StreamMessage) -> Option<u64> {
    let header = m.headers.get(STREAM_SOURCE)?;
    header.as_str().split(' ').nth(1)?.parse().ok()
}

/// Sends one direct get and collects its answers: one message, or many ended by an EOB status.
/// "No message" (404) is an empty answer, not an error.
async fn request(
    client: &async_nats::Client,
    stream: &str,
    body: serde_json::Value,
    many: bool,
) -> Result<Vec<StreamMessage>, BusError> {
    request_with(client, stream, body, many, &mut None).await
}

/// [`request`], noting the EOB's pending count in `pending_after`.
async fn request_with(
    client: &async_nats::Client,
    stream: &str,
    body: serde_json::Value,
    many: bool,
    pending_after: &mut Option<u64>,
) -> Result<Vec<StreamMessage>, BusError> {
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .op("direct get subscribe")?;
    client
        .publish_with_reply(api(stream), inbox, body.to_string().into())
        .await
        .op("direct get request")?;
    let collect = async {
        let mut out = Vec::new();
        while let Some(msg) = answers.next().await {
            match msg.status {
                None => {
                    out.push(StreamMessage::try_from(msg).op("direct get answer")?);
                    if !many {
                        break;
                    }
                }
                // 204: end of a batch, with what is left after it.
                Some(s) if s.as_u16() == 204 => {
                    *pending_after = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Num-Pending"))
                        .and_then(|v| v.as_str().parse().ok());
                    break;
                }
                // 404: nothing (more) to send.
                Some(s) if s == StatusCode::NOT_FOUND => {
                    *pending_after = Some(0);
                    break;
                }
                Some(status) => {
                    let why = msg.description.unwrap_or_default();
                    return Err(BusError::Op {
                        op: "direct get",
                        source: format!("the server answered {status} {why}").into(),
                    });
                }
            }
        }
        Ok(out)
    };
    let got = tokio::time::timeout(READ_TIMEOUT, collect)
        .await
        .unwrap_or_else(|_| {
            Err(BusError::Op {
                op: "direct get",
                source: "no answer in time".into(),
            })
        });
    let _ = answers.unsubscribe().await;
    got
}
