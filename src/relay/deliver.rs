//! Delivery: one loop per destination, each on its own durable consumer, so events reach a
//! destination in order (a later one waits while an earlier one is retrying) and a slow or dead
//! destination never holds up the others. Every attempt is recorded.
//!
//! Each loop holds a window of the destination's queue (see [`Lane`]): the next message is
//! already here when an attempt ends, and each attempt's record and ack are written behind the
//! loop, the ack only once the record is stored (a kill in between only hands the message out
//! again). The requests themselves go one at a time, in queue order. So a delivery costs the
//! request and nothing waited on besides it: the record write and the ack overlap the next
//! requests.
//!
//! A retry is held in the loop: the attempt is recorded as pending with when the next one is
//! due, and the loop waits (keeping the message and the ones behind it with in-progress acks),
//! so no later message overtakes it. A message handed out again (a lost ack, a kill, a
//! take-over by another replica) is settled from its record: without a request when it says
//! delivered or dead, at the attempt after the last recorded one, when that is due, if it is
//! pending. Whether the destination is disabled is read at most once per [`DISABLED_RECHECK`]
//! while it is enabled, before every attempt while it is disabled (a replay re-enables it),
//! and after a take-over (a 410 the other replica saw stops this one too).
//!
//! The queues are read over the bus's reader connection ([`Bus::reader`]): a job whose headers
//! no client can parse (anyone allowed to publish on `deliveries.<key>` can write one) drops
//! that connection only, never the one records, the fan-out and the other requests use. Each
//! drop makes every loop end such jobs of its queue with the problem as the reason, whatever
//! it is doing meanwhile; a job that still reads as a job becomes a dead delivery.

use super::job::{clip_response, Attempt, DeliveryJob, DeliveryStatus, Parcel, BUNDLE_HEADER};
use super::lane::{Lane, Received};
use super::retry::{RetrySchedule, Verdict};
use super::sinks::{self, SinkContext};
use super::store::{DeliveryStore, Recorder};
use crate::bus::{raw, Bus, BusError};
use crate::outbound::destination::Destination;
use crate::telemetry::TraceContext;
use async_nats::jetstream::{AckKind, Message};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long an enabled destination is taken to stay enabled before its state is read again (only
/// another relay replica's 410 could disable it meanwhile; this loop notes its own at once).
const DISABLED_RECHECK: Duration = Duration::from_secs(1);

/// How much of an unreadable job's header block a log line shows.
const SHOWN_HEADERS: usize = 128;

/// How many messages of one destination a loop holds at once (its consumer's
/// `max_ack_pending`).
const WINDOW: usize = 32;

/// What every delivery loop shares.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) bus: Bus,
    /// The delivery queue and records.
    pub(super) store: DeliveryStore,
    pub(super) sinks: SinkContext,
    pub(super) schedule: RetrySchedule,
    /// Named destinations, secrets resolved.
    pub(super) named: BTreeMap<String, Destination>,
    /// Where pushes go (`relay.push_destination`).
    pub(super) push_destination: Option<String>,
    running: Mutex<HashSet<String>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Delivery {
    pub(super) fn new(
        bus: Bus,
        sinks: SinkContext,
        schedule: RetrySchedule,
        named: BTreeMap<String, Destination>,
        push_destination: Option<String>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store: DeliveryStore::new(bus.clone()),
            bus,
            sinks,
            schedule,
            named,
            push_destination,
            running: Mutex::new(HashSet::new()),
            tracker: TaskTracker::new(),
            shutdown,
        })
    }

    /// Starts the delivery loop of `key` unless it runs already.
    pub(super) fn ensure(self: &Arc<Self>, key: &str) {
        {
            let mut running = self.running.lock().expect("lock");
            // Called for every queued job: no allocation once the loop runs.
            if running.contains(key) || !running.insert(key.to_string()) {
                return;
            }
        }
        let me = self.clone();
        let key = key.to_string();
        self.tracker.spawn(async move {
            while !me.shutdown.is_cancelled() {
                match me.run_loop(&key).await {
                    Ok(Ended::Shutdown) => break,
                    // Expected after a nats-server restart (the consumer lives in memory).
                    Ok(Ended::ConsumerGone) => {
                        tracing::info!(destination = key, "the destination's consumer is gone (nats-server restarted?); making it again in 1 s");
                    }
                    Err(e) => {
                        tracing::warn!(destination = key, error.message = %e, "delivery loop failed; restarting in 1 s");
                    }
                }
                // Not at once: a loop restarted the moment a server came back could stall for
                // ~14 s (seen under load in the restart test), one a second later does not.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = me.shutdown.cancelled() => break,
                }
            }
        });
    }

    /// Resumes the loops of every destination that has a consumer or a job queued (after a
    /// restart of the relay or of the server).
    pub(super) async fn resume_all(self: &Arc<Self>) -> Result<(), crate::bus::BusError> {
        for key in self.store.queued_keys().await? {
            self.ensure(&key);
        }
        Ok(())
    }

    /// Waits for every loop to stop (after shutdown).
    pub(super) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Delivers destination `key`'s queue until shutdown (or until its consumer is gone),
    /// reading it over the bus's reader connection (see [`Bus::reader`]): a job no client can
    /// parse drops that connection only, and each drop ends such jobs
    /// ([`Delivery::reader_lost`]) whatever the loop is doing.
    async fn run_loop(&self, key: &str) -> Result<Ended, BusError> {
        // Opening the stream waits on JetStream, which may be unreachable: shutdown must not
        // wait for it (a delivery in flight, below, is still finished).
        let ack_wait = self.sinks.timeout + Duration::from_secs(5);
        let open = async {
            let reader = self.bus.reader().await?;
            let mut resets = reader.resets();
            resets.borrow_and_update();
            let consumer = self.store.consumer(key, ack_wait, WINDOW, &reader).await?;
            // Take the destination over now rather than after the last holder's pin times
            // out (it was this process before a restart, or is another replica: the lane
            // waits for what that one still holds, so the order is kept either way).
            self.store.unpin(key).await?;
            let deliveries = &self.bus.topology.deliveries;
            Ok::<_, BusError>((
                Lane::open(consumer, (deliveries, resets.clone()), ack_wait, WINDOW).await?,
                resets,
            ))
        };
        let (mut lane, resets) = tokio::select! {
            l = open => l?,
            _ = self.shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let mut reader = (resets, lane.received());
        let mut state = State::default();
        let ended = loop {
            let next = self.watching(key, &mut reader, lane.next(&self.shutdown));
            match next.await {
                Ok(Some(msg)) => {
                    let delivered = self.deliver(key, &mut lane, &mut state, msg);
                    self.watching(key, &mut reader, delivered).await
                }
                Ok(None) => break Ok(Ended::Shutdown),
                Err(_) if lane.consumer_gone() => break Ok(Ended::ConsumerGone),
                Err(e) => break Err(e),
            }
        };
        lane.drain().await;
        // Hand the destination to whoever pulls next (another replica, or this relay after a
        // restart) at once.
        let unpin = tokio::time::timeout(Duration::from_secs(1), self.store.unpin(key));
        if let Ok(Err(e)) = unpin.await {
            tracing::debug!(destination = key, error.message = %e, "could not hand the destination back");
        }
        ended
    }

    /// Runs `work` to its end, checking destination `key`'s queue each time the reader
    /// connection drops meanwhile (`work` waits while the check runs; nothing is cancelled).
    /// `reader`: the connection's losses, and what the lane got over it.
    async fn watching<F: std::future::Future>(
        &self,
        key: &str,
        (resets, received): &mut (watch::Receiver<u64>, Received),
        work: F,
    ) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                lost = resets.changed() => match lost {
                    Ok(()) => self.reader_lost(key, received.get()).await,
                    // The connection is gone for good (the relay is stopping).
                    Err(_) => return work.await,
                },
            }
        }
    }

    /// After the reader connection dropped: a job whose headers no client can parse is among
    /// the ones destination `key`'s consumer handed out. Each such job is ended with the
    /// problem as the reason, so the loop goes on with the next one (the jobs lost with the
    /// connection are handed out again at once), and becomes a dead delivery when its body is
    /// a job; else it is logged with its sequence and problem (the headers cut short, never
    /// the body).
    async fn reader_lost(&self, key: &str, received: Option<u64>) {
        let ended = async {
            let reader = self.bus.reader().await?;
            let ended = self.store.end_unreadable(key, &reader.client, received);
            ended.await
        };
        let ended = match ended.await {
            Ok(ended) => ended,
            Err(e) => {
                tracing::warn!(destination = key, error.message = %e,
                    "delivery reader connection lost; cannot check the delivered jobs");
                return;
            }
        };
        if !ended.is_empty() && received.is_none() {
            // The server names this replica's pin in a header of the messages it delivers;
            // when the first of them was the unreadable one, the loop never learnt it, and its
            // pulls would get nothing until the pin timed out. It takes the destination anew.
            if let Err(e) = self.store.unpin(key).await {
                tracing::debug!(destination = key, error.message = %e, "could not renew the pin");
            }
        }
        for (m, problem) in ended {
            // Its headers cannot say whether it holds a bundle: the body does.
            let body =
                Parcel::decode(false, &m.payload).or_else(|_| Parcel::decode(true, &m.payload));
            match body.map(Parcel::into_bundle) {
                Ok(bundle) => {
                    for job in bundle.jobs {
                        self.store.dead_unreadable(key, &job, &problem).await;
                    }
                }
                Err(e) => tracing::warn!(destination = key, seq = m.seq, problem,
                    headers = raw::shown(&m.headers, SHOWN_HEADERS), error.message = %e,
                    "ended a queued job no client can read, whose body is no delivery job"),
            }
        }
    }

    /// Delivers the message at the head of a destination's queue: each job it holds (one, or
    /// a bundle's), in order, attempted (again, while the schedule says so, holding the
    /// messages behind it) and recorded behind the loop; the message is acknowledged once
    /// every record is written.
    async fn deliver(&self, key: &str, lane: &mut Lane, state: &mut State, msg: Message) {
        let bundle = msg.headers.as_ref().and_then(|h| h.get(BUNDLE_HEADER));
        let bundle = match Parcel::decode(bundle.is_some(), &msg.payload) {
            Ok(parcel) => parcel.into_bundle(),
            Err(source) => {
                let e = BusError::Decode {
                    what: "delivery job",
                    source,
                };
                return end_junk(key, lane, msg, &e).await;
            }
        };
        // A job of a message handed out again, or of a bundle that may repeat jobs queued
        // before, is settled from its record first.
        let first = msg.info().map(|i| i.delivered <= 1).unwrap_or(true) && !bundle.recheck;
        let (mut ack, mut record) = (AckKind::Ack, None);
        for (i, job) in bundle.jobs.into_iter().enumerate() {
            // The record of the job before goes behind the loop now (not after this job's
            // retries); the last one is the message's own, acknowledged once it is written.
            if let Some(before) = record.take() {
                lane.record(before).await;
            }
            // Each job in a span of the trace its event belongs to.
            let span = attempt_span(key, &msg, bundle.traces.get(i));
            let delivered = self.deliver_job(key, lane, state, &msg, job, first);
            match delivered.instrument(span).await {
                Some((settled, write)) => (ack, record) = (settled, write),
                None => return,
            }
        }
        let record = record.unwrap_or_else(|| Box::pin(async {}));
        lane.settle(msg, ack, record).await;
    }

    /// Delivers `job` of `msg` (`first`: neither is known to have been attempted before): the
    /// ack it leaves the message with and the write of its record, to go behind the loop (none
    /// when its record says it was settled before); `None` at shutdown.
    async fn deliver_job(
        &self,
        key: &str,
        lane: &mut Lane,
        state: &mut State,
        msg: &Message,
        job: DeliveryJob,
        first: bool,
    ) -> Option<(AckKind, Option<BoxFuture<'static, ()>>)> {
        tracing::Span::current().record("delivery", job.id.as_str());
        let mut attempt_no = 1;
        if !first {
            // Back after a lost ack, a kill or a take-over: settled already, or retrying?
            match self.resume(lane, state, msg, &job).await {
                Resume::Settled(ack) => return Some((ack, None)),
                Resume::Stop => return None,
                Resume::Attempt(n) => attempt_no = n,
            }
        }
        let end = loop {
            match self.attempt(key, lane, state, msg, &job, attempt_no).await {
                Step::Settled(end) => break end,
                Step::RetryAfter(delay, attempt) => {
                    let status = DeliveryStatus::Pending;
                    let fresh = first && attempt_no == 1;
                    let written =
                        state
                            .records
                            .write(&self.bus, &job, Some(attempt), status, None, fresh);
                    written.await;
                    if !self.hold(lane, msg, delay).await {
                        return None;
                    }
                    attempt_no += 1;
                }
            }
        };
        let (bus, mut records) = (self.bus.clone(), std::mem::take(&mut state.records));
        let (attempt, status, reason, ack) = end;
        let fresh = first && attempt_no == 1;
        // The record is confirmed before the message's ack: a kill in between only hands it
        // out again.
        let write = async move {
            let written = records.write(&bus, &job, attempt, status, reason, fresh);
            written.await;
        };
        Some((ack, Some(Box::pin(write))))
    }

    /// What a message handed out again needs: nothing (its record says it is settled), or its
    /// next attempt, after waiting until it is due. Every record under way is written first,
    /// since the message's first copy may be among them.
    async fn resume(
        &self,
        lane: &mut Lane,
        state: &mut State,
        msg: &Message,
        job: &DeliveryJob,
    ) -> Resume {
        lane.drain().await;
        let queued = msg.info().ok().map(|i| {
            chrono::DateTime::from_timestamp_nanos(i.published.unix_timestamp_nanos() as i64)
        });
        let Some(record) = state.records.current(&self.bus, job).await else {
            return Resume::Attempt(1);
        };
        // The attempts made since this queue message was stored (a replay queues a new one).
        let made: Vec<&Attempt> = record
            .attempts
            .iter()
            .filter(|a| queued.is_none_or(|q| a.time >= q))
            .collect();
        match record.status {
            DeliveryStatus::Delivered => return Resume::Settled(AckKind::Ack),
            DeliveryStatus::Dead => return Resume::Settled(AckKind::Term),
            DeliveryStatus::Pending => {}
        }
        let due = made.last().and_then(|a| a.next_attempt_time);
        let next = made.len() + 1;
        if let Some(wait) = due.and_then(|d| (d - crate::domain::now()).to_std().ok()) {
            if !self.hold(lane, msg, wait).await {
                return Resume::Stop;
            }
        }
        Resume::Attempt(next)
    }

    /// Waits `delay` before the next attempt of `msg`, keeping it and the messages behind it
    /// (an in-progress ack) so none is handed out meanwhile. `false` at shutdown: the message
    /// is left unacknowledged, and whoever gets it next reads when it is due from its record.
    async fn hold(&self, lane: &mut Lane, msg: &Message, delay: Duration) -> bool {
        lane.drain().await;
        let wait = async {
            tokio::select! {
                _ = tokio::time::sleep(delay) => true,
                _ = self.shutdown.cancelled() => false,
            }
        };
        lane.watch(msg, wait).await
    }

    /// One attempt of `job` (number `attempt_no`): dead at once when its destination is unknown
    /// or disabled, else sent, and settled or to be retried after a delay.
    async fn attempt(
        &self,
        key: &str,
        lane: &mut Lane,
        state: &mut State,
        msg: &Message,
        job: &DeliveryJob,
        attempt_no: usize,
    ) -> Step {
        let Some(destination) = self.resolve(key, job) else {
            let why = Some("unknown destination".into());
            return Step::Settled((None, DeliveryStatus::Dead, why, AckKind::Term));
        };
        if let Some(reason) = self.disabled(key, lane, state).await {
            return Step::Settled((None, DeliveryStatus::Dead, Some(reason), AckKind::Term));
        }
        let started = Instant::now();
        let time = crate::domain::now();
        let outcome = lane
            .watch(msg, sinks::send(&self.sinks, &destination, job))
            .await;
        let mut attempt = recorded(&outcome, time, started);
        log_attempt(key, destination.kind(), job, attempt_no, &outcome);
        note_outcome(outcome.status, outcome.verdict);
        match self
            .settle(key, state, outcome.verdict, attempt_no, &mut attempt)
            .await
        {
            Ok((status, reason, ack)) => Step::Settled((Some(attempt), status, reason, ack)),
            Err(delay) => Step::RetryAfter(delay, attempt),
        }
    }

    /// Where `job` goes: its own destination, its named one, or (a push) the push destination.
    fn resolve(&self, key: &str, job: &DeliveryJob) -> Option<Destination> {
        match (&job.destination, &job.name) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(name)) => self.named.get(name).cloned(),
            (None, None) if key == super::job::PUSH_KEY => self
                .push_destination
                .as_ref()
                .and_then(|n| self.named.get(n).cloned()),
            (None, None) => None,
        }
    }

    /// What attempt number `attempt_no` with `verdict` leaves the delivery as: its status, why it
    /// is dead, and the ack; or the delay before the next attempt (noted on `attempt`). A 410
    /// disables the destination.
    async fn settle(
        &self,
        key: &str,
        state: &mut State,
        verdict: Verdict,
        attempt_no: usize,
        attempt: &mut Attempt,
    ) -> Result<(DeliveryStatus, Option<String>, AckKind), Duration> {
        match verdict {
            Verdict::Delivered => Ok((DeliveryStatus::Delivered, None, AckKind::Ack)),
            Verdict::Retry { after } => match self.schedule.delay_for(attempt_no, after) {
                Some(delay) => {
                    attempt.next_attempt_time =
                        Some(attempt.time + chrono::Duration::from_std(delay).unwrap_or_default());
                    Err(delay)
                }
                None => {
                    let why = format!("gave up after {attempt_no} attempts");
                    Ok((DeliveryStatus::Dead, Some(why), AckKind::Term))
                }
            },
            Verdict::Permanent => {
                let why = "permanent failure (the destination refused it)".to_string();
                Ok((DeliveryStatus::Dead, Some(why), AckKind::Term))
            }
            Verdict::Disable => {
                let why = "the destination answered 410 Gone: disabled".to_string();
                self.disable(key, state, &why, attempt.time).await;
                Ok((DeliveryStatus::Dead, Some(why), AckKind::Term))
            }
        }
    }

    /// Why the lane's destination is disabled, if it is (read from KV `relay_destinations`
    /// while disabled, after another replica may have held the destination, and at most once
    /// per [`DISABLED_RECHECK`] while enabled).
    async fn disabled(&self, key: &str, lane: &mut Lane, state: &mut State) -> Option<String> {
        let recheck = std::mem::take(&mut lane.recheck);
        if let Some((at, None)) = &state.disabled {
            if !recheck && at.elapsed() < DISABLED_RECHECK {
                return None;
            }
        }
        let reason = self.read_disabled(key).await;
        state.disabled = Some((Instant::now(), reason.clone()));
        reason
    }

    async fn read_disabled(&self, key: &str) -> Option<String> {
        let state = super::disabled::read(&self.bus, key).await?;
        Some(state.reason.unwrap_or_else(|| "disabled".into()))
    }

    /// Marks the lane's destination disabled (KV `relay_destinations`; a replay or an enable
    /// clears it).
    async fn disable(
        &self,
        key: &str,
        state: &mut State,
        why: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) {
        if let Err(e) = super::disabled::disable(&self.bus, key, why, time).await {
            tracing::warn!(destination = key, error.message = %e, "could not note the destination disabled");
        }
        state.disabled = Some((Instant::now(), Some(why.to_string())));
    }
}

/// Ends a queued job of destination `key` whose body is no delivery job (`e` says why): it is
/// never attempted, nor handed out again; the log names its sequence.
async fn end_junk(key: &str, lane: &mut Lane, msg: Message, e: &BusError) {
    let seq = msg.info().map_or(0, |i| i.stream_sequence);
    tracing::warn!(destination = key, seq, error.message = %e,
        "a queued job whose body is no delivery job; ending it");
    lane.settle(msg, AckKind::Term, async {}).await;
}

/// The attempt to record for `outcome`, started at `time` (`started` on the clock): its status,
/// duration and the first 4 KiB of the response, flagged when more was cut off.
fn recorded(
    outcome: &sinks::SendOutcome,
    time: chrono::DateTime<chrono::Utc>,
    started: Instant,
) -> Attempt {
    let (response, truncated) = match outcome.response.as_deref().map(clip_response) {
        Some((body, cut)) => (Some(body), cut),
        None => (None, false),
    };
    Attempt {
        time,
        status: outcome.status,
        duration_ms: started.elapsed().as_millis() as u64,
        response,
        truncated,
        next_attempt_time: None,
    }
}

/// The span of one job's delivery (for traces only): a child of the trace its job carries (in
/// its bundle, `trace`, or the message's headers), so
/// a task's deliveries belong to the task's trace; the webhook request carries it on.
fn attempt_span(key: &str, msg: &Message, trace: Option<&TraceContext>) -> tracing::Span {
    let attempt = msg.info().map(|i| i.delivered).unwrap_or(1);
    let span = tracing::info_span!(target: "taskfleet::trace", "relay.deliver",
        otel.kind = "client", destination = key, attempt,
        delivery = tracing::field::Empty, http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty);
    match trace {
        Some(cx) if !cx.is_empty() => crate::telemetry::continue_trace_from(&span, cx),
        _ => crate::telemetry::continue_trace(&span, msg.headers.as_ref()),
    }
    span
}

/// Notes how the attempt went on its span: the status, and an error unless delivered.
fn note_outcome(status: Option<u16>, verdict: Verdict) {
    let span = tracing::Span::current();
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if verdict != Verdict::Delivered {
        span.record("otel.status_code", "ERROR");
    }
}

/// How a delivery loop ended without an error.
enum Ended {
    /// The relay is stopping.
    Shutdown,
    /// Its consumer is gone (a nats-server restart takes the in-memory consumers with it): the
    /// loop is started again, which makes the consumer again; no cause for a warning.
    ConsumerGone,
}

/// What one delivery loop remembers between messages.
#[derive(Debug, Default)]
struct State {
    /// The record of the delivery being attempted, as last written or read.
    records: Recorder,
    /// When the destination's state was last read, and why it was disabled, if it was.
    disabled: Option<(Instant, Option<String>)>,
}

/// How an attempt ended: the attempt to record (none when it was not sent), the status, why it
/// is dead, and the ack.
type End = (Option<Attempt>, DeliveryStatus, Option<String>, AckKind);

/// What comes after one attempt.
enum Step {
    /// Settled: record and ack.
    Settled(End),
    /// Retry after the delay; the attempt is recorded meanwhile.
    RetryAfter(Duration, Attempt),
}

/// What a message handed out again needs.
enum Resume {
    /// Its record says it is settled: only the ack.
    Settled(AckKind),
    /// Its attempt with this number is due.
    Attempt(usize),
    /// Shutdown came while it waited.
    Stop,
}

/// Logs one attempt of `job` (number `attempt_no`) to destination `key` of `kind`: a delivered
/// one at `debug` (at thousands a second the lines cost the relay ~15 % of its rate, and the
/// record and `/metrics` have it), any other at `info`.
fn log_attempt(
    key: &str,
    kind: &str,
    job: &DeliveryJob,
    attempt_no: usize,
    outcome: &sinks::SendOutcome,
) {
    let (status, verdict) = (outcome.status, &outcome.verdict);
    if matches!(verdict, Verdict::Delivered) {
        tracing::debug!(destination = key, kind, delivery = job.id, attempt = attempt_no,
            status = ?status, "delivered");
    } else {
        tracing::info!(destination = key, kind, delivery = job.id, attempt = attempt_no,
            status = ?status, verdict = ?verdict, "delivery attempt");
    }
}
