//! Reading the delivery records a page at a time: by status and destination (a walk back over
//! the stream that holds them densely), by the events of a task (the last record of each), and
//! a destination's dead records since a time (for a replay). Nothing is kept between calls, and
//! a read costs about what it returns, not what is stored:
//!
//! - a listing by status (and destination) walks back from the newest record of the stream
//!   that holds that status densely (a copy, or the bucket for delivered records and for
//!   any status), a window of sequences at a time, until the page is full (see [`Walk`] for
//!   how a window is read);
//! - a listing by task reads the last record on `…*.*.*.<event id>` for each of the task's
//!   events (`multi_last`, 64 events a request);
//! - a destination's dead records since a time are read from the copy of the dead records,
//!   from the first one written then on (a binary search by stream time).

use super::record::{from_message, is_marker, record_stream, record_subject, status_stream};
use super::{StoreError, StoredRecord};
use crate::bus::permissions::subject_matches;
use crate::bus::{direct, Bus, BusError, NatsResultExt};
use crate::relay::job::DeliveryStatus;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use futures::StreamExt;

/// What a listing asks for (the task, when there is one, is given as its events).
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Only records with this status (any when `None`).
    pub status: Option<DeliveryStatus>,
    /// Only records of this destination: a destination name or a queue key (any when `None`).
    pub destination: Option<String>,
    /// Most records answered.
    pub limit: usize,
    /// Only records stored before this stream sequence (a cursor from [`Page::next`]).
    pub before: Option<u64>,
}

/// One page of records, newest first, and the cursor of the next page if there may be one.
#[derive(Debug, Default)]
pub struct Page {
    /// The records, most recently written first.
    pub records: Vec<StoredRecord>,
    /// The cursor of the next page (its `before`), when the page is full.
    pub next: Option<u64>,
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
/// are read from their copies, where they are all there is (see `record.rs`); the others from
/// the bucket, where delivered ones are most.
pub(super) async fn walk(bus: &Bus, q: &ListQuery) -> Result<Page, StoreError> {
    let destination = q.destination.as_deref();
    let mut walk = Walk::open(bus, q.status, destination, q.before.is_none()).await?;
    let (first, last) = bounds(&walk.stream);
    let mut end = q.before.map_or(last, |b| b.saturating_sub(1)).min(last);
    let mut window = (q.limit as u64 * WINDOW_PER_RECORD).max(MIN_WINDOW);
    let (mut page, mut left_over) = (Page::default(), false);
    while page.records.len() < q.limit && end >= first.max(1) {
        let start = end.saturating_sub(window - 1).max(first).max(1);
        let mut found = walk.read(start, end).await?;
        found.sort_by_key(|m| std::cmp::Reverse(m.sequence));
        found.dedup_by_key(|m| m.sequence);
        // Decoded only as far as the page needs.
        for stored in found.iter().filter_map(from_message) {
            if page.records.len() == q.limit {
                left_over = true;
                break;
            }
            page.next = Some(stored.seq);
            page.records.push(stored);
        }
        end = start - 1;
        window = walk.next_window(window, q.limit - page.records.len());
    }
    // A full page is the last when the walk met the stream's first message and the page took
    // every record it found.
    if page.records.len() < q.limit || (end < first.max(1) && !left_over) {
        page.next = None;
    }
    Ok(page)
}

/// A stream of delivery records, with its state as the server has it now.
async fn stream(bus: &Bus, name: &str) -> Result<Stream, StoreError> {
    Ok(bus.js.get_stream(name).await.op("delivery records")?)
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
        bus: &Bus,
        status: Option<DeliveryStatus>,
        destination: Option<&str>,
        from_end: bool,
    ) -> Result<Self, StoreError> {
        let copy = status.and_then(status_stream);
        let everything = destination.is_none() && (status.is_none() || copy.is_some());
        let stream = stream(bus, &copy.unwrap_or_else(record_stream)).await?;
        let s = &stream.cached_info().state;
        let span = (s.last_sequence + 1).saturating_sub(s.first_sequence);
        let by_sequence = s.subjects_count > SMALL_STREAM && s.messages * 2 >= span;
        // Nothing follows the end of the stream.
        let after = from_end.then_some(0);
        let each = filters(status, destination, ">");
        let mut walk = Self {
            client: bus.client.clone(),
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
            walk.filtered = walk.rare().await?;
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

/// A listing by task: the last record of each delivery of the task's events `events` (ids;
/// `…<status>.*.*.<event id>`), in as few requests as the server allows.
pub(super) async fn by_events(
    bus: &Bus,
    q: &ListQuery,
    events: &[String],
) -> Result<Page, StoreError> {
    let subjects: Vec<String> = events
        .iter()
        .filter(|e| super::is_token(e))
        .flat_map(|e| filters(q.status, q.destination.as_deref(), e))
        .collect();
    let mut found: Vec<StoredRecord> = last_of_each(&bus.client, &subjects)
        .await?
        .iter()
        .filter(|m| q.before.is_none_or(|b| m.sequence < b))
        .filter_map(from_message)
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.seq));
    found.dedup_by_key(|s| s.seq);
    let next = (found.len() > q.limit).then(|| found[q.limit - 1].seq);
    found.truncate(q.limit);
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
        match direct::multi_last(client, &stream, chunk, None).await {
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

/// The messages of `dest`'s dead records written since `since` (less [`CLOCK_SKEW`]; all
/// without it), from the copy of the dead records, oldest first per filter; reading stops
/// once more than `enough` are found.
pub(super) async fn dead_since(
    bus: &Bus,
    dest: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
    enough: usize,
) -> Result<Vec<StreamMessage>, StoreError> {
    let dead = status_stream(DeliveryStatus::Dead).expect("dead records have a copy");
    let stream = stream(bus, &dead).await?;
    let start = match since {
        Some(t) => first_written_at(&stream, t - CLOCK_SKEW).await?,
        None => bounds(&stream).0,
    };
    let mut out = Vec::new();
    for filter in filters(Some(DeliveryStatus::Dead), Some(dest), ">") {
        let mut from = start.max(1);
        loop {
            let got = direct::batch(&bus.client, &dead, &filter, from, direct::MAX_BATCH).await?;
            let Some(last) = got.last() else { break };
            let (last_seq, more) = (last.sequence, pending(last) != Some(0));
            out.extend(got.into_iter().filter(|m| !is_marker(m)));
            if !more || out.len() > enough {
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
) -> Result<u64, StoreError> {
    let (first, last) = bounds(stream);
    let wanted = t.timestamp_nanos_opt().unwrap_or(i64::MIN) as i128;
    let (mut lo, mut hi) = (first.max(1), last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match stream.direct_get_next_for_subject(">", Some(mid)).await {
            Ok(m) if m.time.unix_timestamp_nanos() < wanted => lo = m.sequence + 1,
            Ok(_) => hi = mid,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => hi = mid,
            Err(e) => return Err(BusError::from_op("direct get", e).into()),
        }
    }
    Ok(lo)
}

/// Whether `dest` (a name or a queue key) has at least one record (any status) in the bucket.
pub(super) async fn has_records(bus: &Bus, dest: &str) -> Result<bool, StoreError> {
    for filter in filters(None, Some(dest), ">") {
        if direct::last(&bus.client, &record_stream(), &filter)
            .await?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_looked_up_both_as_a_queue_key_and_as_a_name() {
        let got = filters(Some(DeliveryStatus::Dead), Some("hook"), ">");
        assert_eq!(
            got,
            [
                "$KV.deliveries.dead.*.hook.>",
                "$KV.deliveries.dead.n_hook.*.>"
            ]
        );
    }

    #[test]
    fn a_listing_of_everything_reads_every_message_and_a_status_only_its_own() {
        assert_eq!(filters(None, None, ">"), [">"]);
        assert_eq!(
            filters(Some(DeliveryStatus::Pending), None, ">"),
            ["$KV.deliveries.pending.*.*.>"]
        );
        assert_eq!(filters(None, None, "evt_1"), ["$KV.deliveries.*.*.*.evt_1"]);
    }
}
