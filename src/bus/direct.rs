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

/// The last message of every subject matching one of `filters`, in sequence order. At most
/// [`MAX_MULTI_LAST`] subjects may match in all (the server refuses more).
pub async fn multi_last(
    client: &async_nats::Client,
    stream: &str,
    filters: &[String],
) -> Result<Vec<StreamMessage>, BusError> {
    if filters.is_empty() {
        return Ok(Vec::new());
    }
    request(client, stream, json!({ "multi_last": filters }), true).await
}

/// Sends one direct get and collects its answers: one message, or many ended by an EOB status.
/// "No message" (404) is an empty answer, not an error.
async fn request(
    client: &async_nats::Client,
    stream: &str,
    body: serde_json::Value,
    many: bool,
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
                // 204: end of a batch; 404: nothing (more) to send.
                Some(s) if s.as_u16() == 204 || s == StatusCode::NOT_FOUND => break,
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
