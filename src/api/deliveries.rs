//! The relay over HTTP: push ingest (`POST /api/push`, seed 000's endpoint), and deliveries —
//! list, inspect, replay one, or replay everything dead for a destination since a time.
//!
//! Delivery records are keyed by status, destination and event, and the pending and dead ones
//! are also copied into streams of their own (`relay/record.rs`), so a read here costs about
//! what it returns, not what is stored; nothing is kept in memory between requests:
//!
//! - a listing by status (and destination) walks back from the newest record of the stream
//!   that holds that status densely (a copy, or the bucket for delivered records and for
//!   any status), a window of sequences at a time, until the page is full (see `Walk` for
//!   how a window is read);
//! - a listing by task reads the last record on `…*.*.*.<event id>` for each of the task's
//!   events (`multi_last`, 64 events a request);
//! - a record is read by id with one direct get (`…*.*.<key>.<event id>`);
//! - a destination replay reads that destination's dead records written since the time given
//!   (from the copy of the dead records), and each one again from the bucket.

use super::auth::{Principal, Scope};
use super::error::{ApiError, IdPath, JsonBody, Params};
use super::state::AppState;
use crate::bus::permissions::{kv_stream, subject_matches};
use crate::bus::{direct, encode, message_headers, subjects, BusError, NatsResultExt};
use crate::domain::TaskId;
use crate::relay::job::{
    from_message, is_marker, is_token, read_record, record_stream, record_subject, status_stream,
    store_record, DeliveryJob, DeliveryRecord, DeliveryStatus, RecordError, StoredRecord,
};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

fn admin_only(who: &Principal) -> Result<(), ApiError> {
    match who.scope {
        Scope::All => Ok(()),
        _ => Err(ApiError::Forbidden(
            "deliveries and pushes need an admin key".into(),
        )),
    }
}

/// Seed 000's push body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PushBody {
    /// Optional: without it the push destination's own session is used.
    #[serde(default)]
    session_id: Option<String>,
    content: String,
    #[serde(default)]
    role: Option<String>,
}

/// `POST /api/push` `{sessionId, content, role}`: queued for the relay, which delivers it to its
/// `relay.push_destination` with the session id replaced, retried like every delivery. Answers
/// 202 with the delivery id.
pub(super) async fn push(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<PushBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    if body.content.is_empty()
        || body
            .session_id
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
    {
        return Err(ApiError::Unprocessable(
            "content (and sessionId, when given) must not be empty".into(),
        ));
    }
    if body.role.as_deref().is_some_and(|r| r != "assistant") {
        return Err(ApiError::Unprocessable("role must be \"assistant\"".into()));
    }
    // Queued under the relay's push key; the relay delivers it to `relay.push_destination`.
    let key = crate::relay::job::PUSH_KEY.to_string();
    let job = DeliveryJob {
        id: format!("push_{}", ulid::Ulid::new()),
        key,
        name: None,
        destination: None,
        event: None,
        task: None,
        text: body.content,
        session_id: body.session_id,
        created_time: crate::domain::now(),
    };
    queue(&state, &job, &job.id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": job.id, "status": "queued"})),
    ))
}

async fn queue(state: &AppState, job: &DeliveryJob, msg_id: &str) -> Result<(), ApiError> {
    let js = &state.tasks.bus().js;
    js.publish_with_headers(
        subjects::delivery(&job.key),
        message_headers(msg_id),
        encode(job),
    )
    .await
    .op("queue delivery")
    .map_err(|e| ApiError::Unavailable(e.into()))?
    .await
    .op("queue delivery ack")
    .map_err(|e| ApiError::Unavailable(e.into()))?;
    Ok(())
}

/// Query of the delivery list; parsed by hand so bad values get clear 400s.
#[derive(Debug, Deserialize)]
pub(super) struct DeliveryQuery {
    status: Option<String>,
    destination: Option<String>,
    task_id: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// One listing, parsed.
#[derive(Debug)]
struct Listing {
    status: Option<DeliveryStatus>,
    /// A destination name or queue key.
    destination: Option<String>,
    task: Option<TaskId>,
    limit: usize,
    /// Only records stored before this stream sequence (a cursor from `X-Next-Cursor`).
    before: Option<u64>,
}

/// One page of records, newest first, and the cursor of the next page if there may be one.
#[derive(Debug, Default)]
struct Page {
    records: Vec<StoredRecord>,
    next: Option<u64>,
}

/// The first window walked, in stream sequences per record wanted (at least [`MIN_WINDOW`]).
const WINDOW_PER_RECORD: u64 = 2;
/// The smallest first window.
const MIN_WINDOW: u64 = 64;
/// How much a window grows when the walk has found too little so far.
const GROWTH: u64 = 4;
/// Records are sparse (read with the server filtering) when fewer than one message in this
/// many is one.
const SPARSE: u64 = 8;
/// Streams with at most this many subjects are "small": a batch read there costs the server
/// little whatever it covers.
const SMALL_STREAM: u64 = 1024;
/// Messages sampled from the bucket to tell whether a listing's records are rare there.
const SAMPLES: u64 = 64;
/// Records are rare in the bucket when fewer than one sampled message in this many is one: a
/// read per filter then costs the server less than reading every sequence.
const RARE: u64 = 32;
/// Messages read a sequence at a time before records that turn out sparse are read per filter.
const SEQUENCE_BUDGET: u64 = 8192;
/// Direct gets in flight at once when a window is read a sequence at a time.
const IN_FLIGHT: usize = 256;

/// Event ids per `multi_last` request of a task listing (halved when the server finds too many).
const EVENTS_PER_READ: usize = 64;
/// How far a record's stream time may lag behind its job's `created_time` (clocks of the relay
/// or API and of NATS apart): a destination replay since `t` reads records written from
/// `t - CLOCK_SKEW` on.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

fn unavailable(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Unavailable(e.into())
}

fn bad_token(what: &str, raw: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "{what} must be made of letters, digits, '_' and '-', got {raw:?}"
    ))
}

fn parse_query(q: &DeliveryQuery, state: &AppState) -> Result<Listing, ApiError> {
    let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let status = match given(&q.status) {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(&s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status must be pending, delivered or dead, got {s:?}"
            ))
        })?),
    };
    let destination = given(&q.destination);
    if let Some(d) = destination.as_deref().filter(|d| !is_token(d)) {
        return Err(bad_token("destination", d));
    }
    let task = given(&q.task_id)
        .map(|t| TaskId::parse(&t).map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()?;
    let before = match given(&q.before) {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "before must be a cursor from X-Next-Cursor, got {raw:?}"
            ))
        })?),
    };
    let limit = q
        .limit
        .unwrap_or(state.limits.default_page)
        .clamp(1, state.limits.max_page);
    Ok(Listing {
        status,
        destination,
        task,
        limit,
        before,
    })
}

/// `GET /api/deliveries?status=pending|delivered|dead&destination=&task_id=&limit=&before=`:
/// records, most recently written (attempted, settled, replayed) first. `destination` is a
/// destination name or a queue key. A full page carries the next page's cursor in
/// `X-Next-Cursor` (and a `Link: <…>; rel="next"`); pass it as `before`.
///
/// The cost is that of the page: by status and destination, a walk back over the records on
/// those keys only (see `walk`); by task, the last record of each of the task's events.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<DeliveryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    admin_only(&who)?;
    let listing = parse_query(&q, &state)?;
    let page = match &listing.task {
        Some(task) => by_task(&state, &listing, task).await?,
        None => walk(&state, &listing).await?,
    };
    let mut headers = axum::http::HeaderMap::new();
    if let Some(next) = page.next {
        headers.insert("x-next-cursor", next.into());
        if let Ok(v) = axum::http::HeaderValue::from_str(&next_link(&listing, next)) {
            headers.insert(header::LINK, v);
        }
    }
    let records: Vec<DeliveryRecord> = page.records.into_iter().map(|s| s.record).collect();
    Ok((headers, Json(records)))
}

/// `<…>; rel="next"` for the page after the one answered.
fn next_link(l: &Listing, next: u64) -> String {
    let mut url = format!("/api/deliveries?limit={}&before={next}", l.limit);
    let task = l.task.as_ref().map(|t| t.as_str().to_string());
    let status = l.status.map(|s| s.as_str().to_string());
    for (k, v) in [
        ("status", status),
        ("destination", l.destination.clone()),
        ("task_id", task),
    ] {
        if let Some(v) = v {
            url.push_str(&format!("&{k}={v}"));
        }
    }
    format!("<{url}>; rel=\"next\"")
}

/// The subject filters of the records with `status` (any when `None`) of `destination` (a name
/// or a queue key; any when `None`) whose key ends in `tail` (`>` for any).
fn filters(status: Option<DeliveryStatus>, destination: Option<&str>, tail: &str) -> Vec<String> {
    let s = status.map_or("*", DeliveryStatus::as_str);
    match destination {
        // Every message of the stream: the cheapest filter for the server to count.
        None if status.is_none() && tail == ">" => vec![">".into()],
        None => vec![record_subject(&format!("{s}.*.*.{tail}"))],
        Some(d) => vec![
            record_subject(&format!("{s}.*.{d}.{tail}")),
            record_subject(&format!("{s}.n_{d}.*.{tail}")),
        ],
    }
}

/// A listing by status and destination: walks back from the end of the stream it reads (or the
/// cursor) in windows of stream sequences, newest first, until the page is full, each window
/// sized for what the walk still needs at the density seen so far. Pending and dead records
/// are read from their copies, where they are all there is (see `relay/record.rs`); the
/// others from the bucket, where delivered ones are most.
async fn walk(state: &AppState, l: &Listing) -> Result<Page, ApiError> {
    let destination = l.destination.as_deref();
    let mut walk = Walk::open(state, l.status, destination, l.before.is_none()).await?;
    let (first, last) = bounds(&walk.stream);
    let mut end = l.before.map_or(last, |b| b.saturating_sub(1)).min(last);
    let mut window = (l.limit as u64 * WINDOW_PER_RECORD).max(MIN_WINDOW);
    let mut page = Page::default();
    while page.records.len() < l.limit && end >= first.max(1) {
        let start = end.saturating_sub(window - 1).max(first).max(1);
        let mut found = walk.read(start, end).await.map_err(unavailable)?;
        found.sort_by_key(|m| std::cmp::Reverse(m.sequence));
        found.dedup_by_key(|m| m.sequence);
        // Decoded only as far as the page needs.
        for stored in found.iter().filter_map(from_message) {
            if page.records.len() == l.limit {
                break;
            }
            page.next = Some(stored.seq);
            page.records.push(stored);
        }
        end = start - 1;
        window = walk.next_window(window, l.limit - page.records.len());
    }
    if page.records.len() < l.limit {
        page.next = None;
    }
    Ok(page)
}

/// A stream of delivery records, with its state as the server has it now.
async fn stream(state: &AppState, name: &str) -> Result<Stream, ApiError> {
    let js = &state.tasks.bus().js;
    js.get_stream(name)
        .await
        .op("delivery records")
        .map_err(unavailable)
}

/// The first and last sequence of a stream.
fn bounds(stream: &Stream) -> (u64, u64) {
    let s = &stream.cached_info().state;
    (s.first_sequence, s.last_sequence)
}

/// What a listing reads: a stream, the subjects of its records there, and how dense those have
/// been so far; it reads a window in the way that costs the server least:
///
/// - records dense, stream with few subjects: one batch of every message (the server's count
///   of what follows a batch costs in proportion to the subjects it covers);
/// - records dense, stream with many subjects (the bucket): a direct get of each sequence, all
///   at once (no count at all);
/// - records sparse (under one message in [`SPARSE`]): a batch per subject filter, which
///   covers only the records' own subjects.
#[derive(Debug)]
struct Walk {
    client: async_nats::Client,
    stream: Stream,
    /// The filters match every message of the stream (a copy, or every record).
    everything: bool,
    /// Many subjects and few gaps: dense windows are read a sequence at a time.
    by_sequence: bool,
    /// Every message, read in batches (dense records, few subjects).
    all: Batches,
    /// One per subject filter (sparse records).
    each: Vec<Batches>,
    /// The records are sparse: read per filter.
    filtered: bool,
    /// Messages read unfiltered, matching messages, and sequences walked, so far.
    read: u64,
    found: u64,
    walked: u64,
}

impl Walk {
    /// A walk back from the end of the stream (or from a cursor, `from_end` false).
    async fn open(
        state: &AppState,
        status: Option<DeliveryStatus>,
        destination: Option<&str>,
        from_end: bool,
    ) -> Result<Self, ApiError> {
        let copy = status.and_then(status_stream);
        let everything = destination.is_none() && (status.is_none() || copy.is_some());
        let stream = stream(state, &copy.unwrap_or_else(record_stream)).await?;
        let s = &stream.cached_info().state;
        let span = (s.last_sequence + 1).saturating_sub(s.first_sequence);
        let by_sequence = s.subjects_count > SMALL_STREAM && s.messages * 2 >= span;
        // Nothing follows the end of the stream.
        let after = from_end.then_some(0);
        let each = filters(status, destination, ">");
        let mut walk = Self {
            client: state.tasks.bus().client.clone(),
            everything,
            by_sequence,
            all: Batches::new(">".into(), after),
            each: each.into_iter().map(|f| Batches::new(f, after)).collect(),
            stream,
            filtered: false,
            read: 0,
            found: 0,
            walked: 0,
        };
        if by_sequence && !everything {
            walk.filtered = walk.rare().await.map_err(unavailable)?;
        }
        Ok(walk)
    }

    /// Whether the walk's records are rare in the whole stream (under one in [`RARE`] of
    /// [`SAMPLES`] messages spread evenly over it): then they are read per filter, whose
    /// server-side cost grows with the records it covers, not with the stream.
    async fn rare(&self) -> Result<bool, BusError> {
        let (first, last) = bounds(&self.stream);
        let step = ((last + 1).saturating_sub(first) / SAMPLES).max(1);
        let seqs = (0..SAMPLES)
            .map(|i| first + i * step)
            .take_while(|&s| s <= last);
        let gets = futures::stream::iter(seqs)
            .map(|seq| self.stream.direct_get(seq))
            .buffer_unordered(IN_FLIGHT);
        let (mut seen, mut hits) = (0, 0);
        for got in gets.collect::<Vec<_>>().await {
            match got {
                Ok(m) => {
                    seen += 1;
                    hits += u64::from(self.wanted(&m));
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(BusError::from_op("direct get", e)),
            }
        }
        Ok(hits * RARE < seen)
    }

    /// The records of `[start, end]` on the walk's subjects (no markers), in no particular
    /// order. Windows are read from the end back, each just before the one read last.
    async fn read(&mut self, start: u64, end: u64) -> Result<Vec<StreamMessage>, BusError> {
        let span = end - start + 1;
        let name = self.stream.cached_info().config.name.clone();
        let mut got = Vec::new();
        if self.filtered {
            for batches in &mut self.each {
                let read = batches.read(&self.client, &name, start, end).await?;
                got.extend(read.into_iter().filter(|m| !is_marker(m)));
            }
        } else {
            let all = if self.by_sequence {
                read_each(&self.stream, start, end).await?
            } else {
                self.all.read(&self.client, &name, start, end).await?
            };
            self.read += all.len() as u64;
            got.extend(all.into_iter().filter(|m| self.wanted(m)));
        }
        self.found += got.len() as u64;
        self.walked += span;
        // Read a sequence at a time, the records get a budget before they count as sparse.
        let enough = !self.by_sequence || self.read >= SEQUENCE_BUDGET;
        if !self.filtered && !self.everything && enough && self.found * SPARSE < self.read {
            // From now on per filter; what each counted (nothing yet) no longer holds.
            self.filtered = true;
            self.each.iter_mut().for_each(|b| b.from_start = None);
        }
        Ok(got)
    }

    /// A record (no marker) on the walk's subjects.
    fn wanted(&self, m: &StreamMessage) -> bool {
        !is_marker(m)
            && (self.everything
                || self
                    .each
                    .iter()
                    .any(|b| subject_matches(&b.filter, &m.subject)))
    }

    /// The window after `window` for `wanted` more records: what should hold them at the
    /// density seen so far (a quarter more), or [`GROWTH`] times more while none was found.
    /// A window read a sequence at a time stays under [`direct::MAX_BATCH`] sequences.
    fn next_window(&self, window: u64, wanted: usize) -> u64 {
        let next = match self.found {
            0 => window.saturating_mul(GROWTH),
            found => (wanted as u64).saturating_mul(self.walked) / found * 5 / 4 + 16,
        };
        if self.by_sequence && !self.filtered {
            next.min(direct::MAX_BATCH as u64)
        } else {
            next
        }
    }
}

/// Batch reads of one subject filter, window after window back from the end, each asking the
/// server for exactly as many messages as the window holds (`direct::range`, as the task
/// listing reads): the count of the filter's messages from one window's start on is what
/// follows the next (older) window.
#[derive(Debug)]
struct Batches {
    filter: String,
    /// Messages on the filter from the start of the last window read on (0 before the first
    /// window at the stream's end); `None` when not known (a walk from a cursor).
    from_start: Option<u64>,
}

impl Batches {
    fn new(filter: String, after: Option<u64>) -> Self {
        Self {
            filter,
            from_start: after,
        }
    }

    /// The messages on the filter in `[start, end]`, oldest first.
    async fn read(
        &mut self,
        client: &async_nats::Client,
        stream: &str,
        start: u64,
        end: u64,
    ) -> Result<Vec<StreamMessage>, BusError> {
        let after_end = match self.from_start.take() {
            Some(n) => n,
            None => direct::count_after(client, stream, &self.filter, end).await?,
        };
        let (got, from_start) =
            direct::range(client, stream, &self.filter, (start, end), after_end).await?;
        self.from_start = Some(from_start);
        Ok(got)
    }
}

/// Every message of `[start, end]` of `stream`, one direct get per sequence, [`IN_FLIGHT`] at a
/// time (a sequence with no message any more is skipped).
async fn read_each(stream: &Stream, start: u64, end: u64) -> Result<Vec<StreamMessage>, BusError> {
    let gets = futures::stream::iter(start..=end)
        .map(|seq| stream.direct_get(seq))
        .buffer_unordered(IN_FLIGHT);
    let got: Vec<_> = gets.collect().await;
    let mut out = Vec::with_capacity(got.len());
    for m in got {
        match m {
            Ok(m) => out.push(m),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(BusError::from_op("direct get", e)),
        }
    }
    Ok(out)
}

/// How many more messages on the filter the server counted after `m` (a batch read's header).
fn pending(m: &StreamMessage) -> Option<u64> {
    m.headers.get("Nats-Num-Pending")?.as_str().parse().ok()
}

/// A listing by task: the task's events from the ledger, then the last record of each of
/// their deliveries (`…<status>.*.*.<event id>`), in as few requests as the server allows.
async fn by_task(state: &AppState, l: &Listing, task: &TaskId) -> Result<Page, ApiError> {
    let events = state.tasks.events(task).await?;
    let subjects: Vec<String> = events
        .iter()
        .filter(|e| is_token(&e.id))
        .flat_map(|e| filters(l.status, l.destination.as_deref(), &e.id))
        .collect();
    let client = &state.tasks.bus().client;
    let mut found: Vec<StoredRecord> = last_of_each(client, &subjects)
        .await
        .map_err(unavailable)?
        .iter()
        .filter(|m| l.before.is_none_or(|b| m.sequence < b))
        .filter_map(from_message)
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.seq));
    found.dedup_by_key(|s| s.seq);
    let next = (found.len() > l.limit).then(|| found[l.limit - 1].seq);
    found.truncate(l.limit);
    Ok(Page {
        records: found,
        next,
    })
}

/// The last message of every subject matching one of `filters`, a request per
/// [`EVENTS_PER_READ`] filters, split when the server finds too many subjects for one.
async fn last_of_each(
    client: &async_nats::Client,
    filters: &[String],
) -> Result<Vec<StreamMessage>, BusError> {
    let stream = record_stream();
    let mut out = Vec::new();
    let mut todo: Vec<&[String]> = filters.chunks(EVENTS_PER_READ).collect();
    while let Some(chunk) = todo.pop() {
        match direct::multi_last(client, &stream, chunk).await {
            Ok(got) => out.extend(got),
            Err(e) if chunk.len() > 1 && too_many(&e) => {
                let (a, b) = chunk.split_at(chunk.len() / 2);
                todo.extend([a, b]);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The server's "413 Too Many Results" (more than [`direct::MAX_MULTI_LAST`] subjects matched).
fn too_many(e: &BusError) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.to_string().contains("413"))
}

fn record_error(e: RecordError) -> ApiError {
    match e {
        RecordError::Conflict(id) => ApiError::Conflict {
            code: "contended",
            message: format!("delivery {id} changed meanwhile; try again"),
        },
        RecordError::BadId(id) => ApiError::NotFound(format!("delivery {id} not found")),
        RecordError::Bus(e) => unavailable(e),
    }
}

async fn record(state: &AppState, id: &str) -> Result<StoredRecord, ApiError> {
    read_record(&state.tasks.bus().client, id)
        .await
        .map_err(record_error)?
        .ok_or_else(|| ApiError::NotFound(format!("delivery {id} not found")))
}

/// `GET /api/deliveries/{id}`: the job and every attempt.
pub(super) async fn get_one(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<DeliveryRecord>, ApiError> {
    admin_only(&who)?;
    Ok(Json(record(&state, &id).await?.record))
}

/// Marks `stored` pending again and queues its job anew (re-enabling its destination).
/// `false` when the record changed since it was read (nothing is queued then).
async fn replay_record(state: &AppState, stored: &StoredRecord) -> Result<bool, ApiError> {
    let mut rec = stored.record.clone();
    // Same delivery id (receivers de-duplicate on webhook-id), a new queue message.
    let msg_id = format!("{}:replay:{}", rec.job.id, ulid::Ulid::new());
    let _ = state
        .tasks
        .bus()
        .topology
        .destinations
        .delete(&rec.job.key)
        .await;
    rec.status = DeliveryStatus::Pending;
    rec.reason = Some("replayed".into());
    rec.updated_time = crate::domain::now();
    match store_record(&state.tasks.bus().js, &rec, Some(stored)).await {
        Ok(_) => {}
        Err(RecordError::Conflict(_)) => return Ok(false),
        Err(e) => return Err(record_error(e)),
    }
    queue(state, &rec.job, &msg_id).await?;
    Ok(true)
}

/// `POST /api/deliveries/{id}/replay`: queue it again (re-enables a disabled destination).
pub(super) async fn replay(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    let stored = record(&state, &id).await?;
    if stored.record.status == DeliveryStatus::Pending {
        return Err(ApiError::Conflict {
            code: "still_pending",
            message: format!("delivery {id} is still pending"),
        });
    }
    if !replay_record(&state, &stored).await? {
        return Err(record_error(RecordError::Conflict(id)));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"replayed": [id]}))))
}

/// Body of a destination-wide replay.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ReplaySince {
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Query of a destination-wide replay (`?since=`, the body's alternative).
#[derive(Debug, Deserialize)]
pub(super) struct ReplaySinceQuery {
    since: Option<String>,
}

/// Most deliveries one destination replay queues again; the answer says when more remain.
const MAX_REPLAY: usize = 1000;

/// The `since` of a destination replay, from the query or the body (not both): an RFC 3339
/// time, or none (every dead delivery).
fn replay_since(
    query: ReplaySinceQuery,
    body: Option<ReplaySince>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let from_body = body.unwrap_or_default().since;
    let Some(raw) = query.since.filter(|s| !s.is_empty()) else {
        return Ok(from_body);
    };
    if from_body.is_some() {
        return Err(ApiError::BadRequest(
            "since: give it in the query or in the body, not both".into(),
        ));
    }
    // As the body's `since` is read (serde), so both accept the same times.
    raw.parse::<chrono::DateTime<chrono::FixedOffset>>()
        .map(|t| Some(t.to_utc()))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "since must be an RFC 3339 time (2026-01-02T03:04:05Z), got {raw:?}"
            ))
        })
}

/// `POST /api/destinations/{key}/replay?since=` (or `{"since": RFC 3339}`): the dead deliveries
/// of that destination (key `n_<name>` or the name) created since then (all without it), queued
/// again oldest first, at most [`MAX_REPLAY`] a call. Answers the ids queued, their count, and
/// `more` when others remain (call again: the ones queued are no longer dead).
///
/// Reads the copy of the dead records from the first one written since then (less
/// [`CLOCK_SKEW`]) on, the destination's only; each is read again from the bucket before it
/// is replayed (one replayed meanwhile is left alone).
pub(super) async fn replay_destination(
    State(state): State<AppState>,
    who: Principal,
    IdPath(dest): IdPath,
    Params(query): Params<ReplaySinceQuery>,
    JsonBody(body): JsonBody<Option<ReplaySince>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    if !is_token(&dest) {
        return Err(bad_token("the destination", &dest));
    }
    let since = replay_since(query, body)?;
    if !destination_known(&state, &dest).await? {
        return Err(ApiError::NotFound(format!(
            "no destination {dest:?}: not in the relay's config here, and no delivery to it is recorded"
        )));
    }
    let mut dead: Vec<StoredRecord> = dead_since(&state, &dest, since)
        .await?
        .iter()
        .filter_map(from_message)
        .filter(|s| since.is_none_or(|t| s.record.job.created_time >= t))
        .collect();
    dead.sort_by_key(|s| (s.record.job.created_time, s.seq));
    let more = dead.len() > MAX_REPLAY;
    dead.truncate(MAX_REPLAY);
    let mut ids = Vec::new();
    for listed in &dead {
        let id = &listed.record.job.id;
        let current = read_record(&state.tasks.bus().client, id)
            .await
            .map_err(record_error)?;
        let Some(current) = current.filter(|c| c.record.status == DeliveryStatus::Dead) else {
            continue;
        };
        if replay_record(&state, &current).await? {
            ids.push(id.clone());
        }
    }
    let count = ids.len();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replayed": ids, "count": count, "more": more})),
    ))
}

/// Whether `dest` (a name or a queue key) is a destination this API can tell exists: configured
/// here, or with at least one delivery record (any status) in the bucket.
pub(super) async fn destination_known(state: &AppState, dest: &str) -> Result<bool, ApiError> {
    let name = dest.strip_prefix("n_").unwrap_or(dest);
    if state.destinations.contains(name) {
        return Ok(true);
    }
    let bucket = kv_stream(subjects::DELIVERY_BUCKET);
    for filter in filters(None, Some(dest), ">") {
        let last = direct::last(&state.tasks.bus().client, &bucket, &filter)
            .await
            .map_err(unavailable)?;
        if last.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The messages of `dest`'s dead records written since `since` (less [`CLOCK_SKEW`]; all
/// without it), from the copy of the dead records, oldest first per filter; reading stops
/// once more than twice [`MAX_REPLAY`] are found.
async fn dead_since(
    state: &AppState,
    dest: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<StreamMessage>, ApiError> {
    let dead = status_stream(DeliveryStatus::Dead).expect("dead records have a copy");
    let stream = stream(state, &dead).await?;
    let start = match since {
        Some(t) => first_written_at(&stream, t - CLOCK_SKEW).await?,
        None => bounds(&stream).0,
    };
    let client = &state.tasks.bus().client;
    let mut out = Vec::new();
    for filter in filters(Some(DeliveryStatus::Dead), Some(dest), ">") {
        let mut from = start.max(1);
        loop {
            let got = direct::batch(client, &dead, &filter, from, direct::MAX_BATCH)
                .await
                .map_err(unavailable)?;
            let Some(last) = got.last() else { break };
            let (last_seq, more) = (last.sequence, pending(last) != Some(0));
            out.extend(got.into_iter().filter(|m| !is_marker(m)));
            // Enough to fill one replay and tell that more remain (the rest waits its turn).
            if !more || out.len() > 2 * MAX_REPLAY {
                break;
            }
            from = last_seq + 1;
        }
    }
    Ok(out)
}

/// The sequence of the first message of `stream` stored at or after `t` (one past the last
/// when none is): a binary search of single-message reads, ~20 for a million messages.
async fn first_written_at(
    stream: &Stream,
    t: chrono::DateTime<chrono::Utc>,
) -> Result<u64, ApiError> {
    let (first, last) = bounds(stream);
    let wanted = t.timestamp_nanos_opt().unwrap_or(i64::MIN) as i128;
    let (mut lo, mut hi) = (first.max(1), last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match stream.direct_get_next_for_subject(">", Some(mid)).await {
            Ok(m) if m.time.unix_timestamp_nanos() < wanted => lo = m.sequence + 1,
            Ok(_) => hi = mid,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => hi = mid,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(lo)
}
