//! Stored messages that no client can read, and a way to read them anyway.
//!
//! nats-server stores any bytes a publisher sends as headers. async-nats parses the header block
//! of every message it receives and treats one it cannot parse (not UTF-8, no `NATS/1.0` line, a
//! line without a colon, a name with spaces) as a broken connection: it drops the connection and
//! reconnects, and the message comes back on the next read. [`header_problem`] tells such a
//! block from a good one the way async-nats does, and [`get`] reads a message through the
//! stream API's `MSG.GET`, whose answer is JSON with the headers base64-encoded, so the read
//! itself can never break a connection.
//!
//! A stored message also never carries a status (`NATS/1.0 404`): clients take such a block for
//! the server's own answer (no messages, end of batch), so it is refused here too.

use super::{BusError, NatsResultExt};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use std::time::Duration;

/// A stored message read through `MSG.GET`, headers and body as the publisher sent them.
#[derive(Debug, Clone)]
pub struct RawStored {
    /// Its subject.
    pub subject: String,
    /// Stream sequence.
    pub seq: u64,
    /// The header block, bytes as stored (empty when it has none).
    pub headers: Vec<u8>,
    /// The body.
    pub payload: Vec<u8>,
    /// When it was stored, in nanoseconds since the epoch.
    pub published_ns: i128,
}

impl RawStored {
    /// Why no client can read this message, or `None` when its headers are fine.
    pub fn problem(&self) -> Option<String> {
        header_problem(&self.headers)
    }
}

/// Why async-nats would drop its connection rather than hand over a message with this header
/// block (`NATS/1.0\r\nName: value\r\n…`), or why the block would pass for a server status.
/// `None` for a block any client reads, and for no headers at all.
pub fn header_problem(block: &[u8]) -> Option<String> {
    if block.is_empty() {
        return None;
    }
    let Ok(text) = std::str::from_utf8(block) else {
        return Some("its headers are not valid UTF-8".into());
    };
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default();
    let Some(rest) = version.strip_prefix("NATS/1.0") else {
        return Some("its headers do not begin with NATS/1.0".into());
    };
    if !rest.trim().is_empty() {
        return Some(format!(
            "its headers carry a status ({}), which clients take for the server's",
            rest.trim()
        ));
    }
    for line in lines.filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace)) {
        let Some((name, _)) = line.split_once(':') else {
            return Some("a header line has no colon".into());
        };
        if name.contains(|c: char| !c.is_ascii_graphic()) {
            return Some("a header name has spaces or control characters".into());
        }
    }
    None
}

/// The header block of a message, for a dead letter: lossy UTF-8, at most `cap` bytes.
pub fn shown(block: &[u8], cap: usize) -> String {
    String::from_utf8_lossy(&block[..block.len().min(cap)]).into_owned()
}

/// The first message at or after sequence `from` on a subject matching `filter`, read as JSON
/// (never parsed as a NATS message); `None` when there is none.
pub async fn get(
    client: &async_nats::Client,
    stream: &str,
    from: u64,
    filter: &str,
) -> Result<Option<RawStored>, BusError> {
    let body = serde_json::json!({ "seq": from.max(1), "next_by_subj": filter });
    get_by(client, stream, body).await
}

/// The last message on a subject matching `filter` (wildcards allowed), read as JSON from the
/// stream's leader like [`get`]; `None` when there is none.
pub async fn last(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Result<Option<RawStored>, BusError> {
    get_by(
        client,
        stream,
        serde_json::json!({ "last_by_subj": filter }),
    )
    .await
}

/// The first message on a subject matching `filter` stored at or after `since`, read as JSON
/// like [`get`]; `None` when there is none.
pub async fn first_since(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Option<RawStored>, BusError> {
    let at = since.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let body = serde_json::json!({ "start_time": at, "next_by_subj": filter });
    get_by(client, stream, body).await
}

/// One `MSG.GET` request with `body`, its answer decoded.
async fn get_by(
    client: &async_nats::Client,
    stream: &str,
    body: serde_json::Value,
) -> Result<Option<RawStored>, BusError> {
    let answer = client
        .request(
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            body.to_string().into(),
        )
        .await
        .op("read message as JSON")?;
    let got: Answer = super::decode("MSG.GET answer", &answer.payload)?;
    match (got.message, got.error) {
        (Some(m), _) => m.decode().map(Some),
        // 10037: no message found.
        (None, Some(e)) if e.err_code == 10037 || e.code == 404 => Ok(None),
        (None, e) => Err(BusError::Op {
            op: "read message as JSON",
            source: e.map_or("empty answer".into(), |e| e.description).into(),
        }),
    }
}

/// Ends the delivery of message `stream_seq` of `consumer` with `+TERM <reason>`, sent to the
/// acknowledgement subject the server gave the message (`$JS.ACK.<stream>.<consumer>.<delivery
/// count>.<stream seq>.<consumer seq>.<time>.<pending>`; the server finds the delivery by its
/// stream sequence): for a message that was delivered but never received, because the client
/// dropped the connection instead of parsing it. The server confirms.
pub async fn term(
    client: &async_nats::Client,
    (stream, consumer): (&str, &str),
    (stream_seq, consumer_seq): (u64, u64),
    reason: &str,
) -> Result<(), BusError> {
    let body = format!("+TERM {reason}");
    let op = "terminate an unreadable message";
    acknowledge(
        client,
        (stream, consumer),
        (stream_seq, consumer_seq),
        body,
        op,
    )
    .await
}

/// Whether reading a consumer failed because the server has no such consumer.
fn consumer_missing(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::{stream::ConsumerErrorKind, ErrorCode};
    matches!(e.kind(), ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// Sends `body` (`+TERM …`, `-NAK`) to the acknowledgement subject the server gave message
/// `stream_seq` of `consumer` (see [`term`]; `consumer_seq` need only be one the consumer has
/// handed out and not seen acknowledged) and waits for the server's confirmation.
async fn acknowledge(
    client: &async_nats::Client,
    (stream, consumer): (&str, &str),
    (stream_seq, consumer_seq): (u64, u64),
    body: String,
    op: &'static str,
) -> Result<(), BusError> {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let subject = format!("$JS.ACK.{stream}.{consumer}.1.{stream_seq}.{consumer_seq}.{now}.0");
    client.request(subject, body.into()).await.op(op)?;
    Ok(())
}

/// How long [`term_unreadable`] waits for the dropped connection to answer again.
const READ_BACK: Duration = Duration::from_secs(1);

/// Ends the delivery of every message `consumer` of `stream` delivered and that is not
/// acknowledged yet whose headers no client can parse (the one that made the reader's
/// connection drop is among them), with the problem as the reason. The messages stay in the
/// stream. Which were ended (as read, with their problems).
///
/// The readable messages the server sent over the connection that the client never got were
/// lost with it (the client stops reading at a block it cannot parse, and what the server
/// sends until the client has subscribed again goes nowhere): they are handed out again at
/// once (`-NAK`) rather than after the ack wait. Those are the ones past `received`, the
/// highest stream sequence the reader got from the consumer (when it got none, the ones past
/// the first unreadable message). So the consumer's state is read over `reader`, the
/// connection that dropped, once it is back: async-nats subscribes again before it sends
/// anything else, so every message delivered after that state arrives. The rest goes over
/// `client`, whose answers a further drop of the reader cannot lose (the state too, when the
/// reader does not answer within `READ_BACK`: it dropped again, and the next check sees
/// what this one cannot). (A message may arrive between the reconnection and the check: it
/// then comes twice, as after any redelivery.) A consumer the server no longer has (one kept
/// in memory, gone with a server restart) has nothing handed out: nothing is ended.
pub async fn term_unreadable(
    (reader, client): (&async_nats::Client, &async_nats::Client),
    (stream, consumer): (&str, &str),
    filter: &str,
    received: Option<u64>,
) -> Result<Vec<(RawStored, String)>, BusError> {
    // Reading the consumer reads its info; over the main connection if the reader does not
    // answer (it dropped again, and the next check sees what this one cannot).
    let read = |client: &async_nats::Client| {
        let js = async_nats::jetstream::new(client.clone());
        async move { js.get_consumer_from_stream(consumer, stream).await }
    };
    let handle: Result<async_nats::jetstream::consumer::PullConsumer, _> =
        match tokio::time::timeout(READ_BACK, read(reader)).await {
            Ok(handle) => handle,
            Err(_) => read(client).await,
        };
    let handle = match handle {
        // Gone with a server restart (a consumer kept in memory): it holds nothing handed out,
        // and its owner makes it again.
        Err(e) if consumer_missing(&e) => return Ok(Vec::new()),
        other => other.op("consumer info")?,
    };
    let (info, name) = (handle.cached_info(), stream);
    let (mut seq, last) = (
        info.ack_floor.stream_sequence + 1,
        info.delivered.stream_sequence,
    );
    let dseq = info.delivered.consumer_sequence;
    let mut ended = Vec::new();
    while seq <= last {
        let Some(m) = get(client, name, seq, filter).await? else {
            break;
        };
        if m.seq > last {
            break;
        }
        seq = m.seq + 1;
        let at = (m.seq, dseq);
        match m.problem() {
            Some(problem) => match term(client, (name, consumer), at, &problem).await {
                Ok(()) => ended.push((m, problem)),
                // It comes back after the ack wait, and the next check ends it.
                Err(e) if !ended.is_empty() => {
                    tracing::warn!(seq = m.seq, error.message = %e, "could not end an unreadable message");
                    break;
                }
                Err(e) => return Err(e),
            },
            None if received.map_or(!ended.is_empty(), |r| m.seq > r) => {
                let op = "hand out again a message lost with the connection";
                let nak = acknowledge(client, (name, consumer), at, "-NAK".into(), op).await;
                if let Err(e) = nak {
                    // It comes back after the ack wait.
                    tracing::debug!(seq = m.seq, error.message = %e, "could not hand a message out again");
                }
            }
            None => {}
        }
    }
    Ok(ended)
}

#[derive(Deserialize)]
struct Answer {
    message: Option<Stored>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Stored {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
    time: chrono::DateTime<chrono::Utc>,
}

impl Stored {
    fn decode(self) -> Result<RawStored, BusError> {
        let b64 = |s: Option<String>| {
            STANDARD
                .decode(s.unwrap_or_default())
                .op("decode base64 of a stored message")
        };
        Ok(RawStored {
            subject: self.subject,
            seq: self.seq,
            headers: b64(self.hdrs)?,
            payload: b64(self.data)?,
            published_ns: self.time.timestamp_nanos_opt().unwrap_or_default().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::header_problem;

    #[test]
    fn ordinary_header_blocks_have_no_problem() {
        assert_eq!(header_problem(b""), None);
        assert_eq!(header_problem(b"NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n"), None);
        assert_eq!(
            header_problem(b"NATS/1.0\r\nA: b\r\n  folded\r\n\r\n"),
            None
        );
    }

    #[test]
    fn blocks_async_nats_cannot_parse_are_named() {
        let bad: [&[u8]; 5] = [
            b"NATS/1.0\r\nNats-Msg-Id: \xff\xfe\r\n\r\n",
            b"HTTP/1.1\r\n\r\n",
            b"NATS/1.0\r\nno colon here\r\n\r\n",
            b"NATS/1.0\r\nbad name: x\r\n\r\n",
            b"NATS/1.0 404 No Messages\r\n\r\n",
        ];
        for block in bad {
            assert!(header_problem(block).is_some(), "{block:?}");
        }
        assert!(header_problem(bad[0]).unwrap().contains("UTF-8"));
    }
}
