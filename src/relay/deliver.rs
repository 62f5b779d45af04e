//! Delivery: one loop per destination, each on its own durable consumer with one message in
//! flight, so events reach a destination in order (a later one waits while an earlier one is
//! retrying) and a slow or dead destination never holds up the others. Retries are JetStream
//! naks with the schedule's delay, so they survive relay restarts; every attempt is recorded.
//!
//! Round trips per delivery: the next message (one long-lived pull; the server hands it over as
//! soon as the previous ack lands), the request itself, and one record write (one message; an
//! atomic batch of two when a retry changes the record's status), confirmed before the plain,
//! unconfirmed ack. A lost ack only brings the message back, and a redelivered
//! message whose record already says delivered (or dead) is settled without a request. Whether
//! the destination is disabled is read at most once per [`DISABLED_RECHECK`] while it is
//! enabled, and before every attempt while it is disabled (a replay re-enables it).

use super::destination::Destination;
use super::job::{clip_response, Attempt, DeliveryJob, DeliveryStatus};
use super::retry::{RetrySchedule, Verdict};
use super::sinks::{self, SinkContext};
use super::store::{DeliveryStore, Recorder};
use crate::bus::{decode, Bus, BusError, NatsResultExt};
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long an enabled destination is taken to stay enabled before its state is read again (only
/// another relay replica's 410 could disable it meanwhile; this loop notes its own at once).
const DISABLED_RECHECK: Duration = Duration::from_secs(1);

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
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(destination = key, error.message = %e, "delivery loop failed; restarting in 1 s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = me.shutdown.cancelled() => break,
                        }
                    }
                }
            }
        });
    }

    /// Resumes the loops of every destination that has a consumer (after a restart).
    pub(super) async fn resume_all(self: &Arc<Self>) -> Result<(), crate::bus::BusError> {
        for key in self.store.consumer_keys().await? {
            self.ensure(&key);
        }
        Ok(())
    }

    /// Waits for every loop to stop (after shutdown).
    pub(super) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    async fn run_loop(&self, key: &str) -> Result<(), BusError> {
        // Opening the stream waits on JetStream, which may be unreachable: shutdown must not
        // wait for it (a delivery in flight, below, is still finished).
        let open = async {
            let ack_wait = self.sinks.timeout + Duration::from_secs(5);
            let consumer = self.store.consumer(key, ack_wait).await?;
            consumer.messages().await.op("read deliveries")
        };
        let mut messages = tokio::select! {
            m = open => m?,
            _ = self.shutdown.cancelled() => return Ok(()),
        };
        let mut lane = Lane::default();
        loop {
            let msg = tokio::select! {
                m = messages.next() => m,
                _ = self.shutdown.cancelled() => return Ok(()),
            };
            match msg {
                Some(Ok(msg)) => {
                    let span = attempt_span(key, &msg);
                    self.attempt(key, &mut lane, &msg).instrument(span).await
                }
                // The consumer is gone or unusable: start over (it is created again).
                Some(Err(e))
                    if matches!(
                        e.kind(),
                        MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::PushBasedConsumer
                            | MessagesErrorKind::RequestLimitExceeded
                    ) =>
                {
                    return Err(e).op("fetch delivery")
                }
                // Missed heartbeats, a failed pull: the stream asks again by itself.
                Some(Err(e)) => {
                    tracing::warn!(destination = key, error.message = %e, "delivery stream hiccup")
                }
                None => {
                    return Err(BusError::Op {
                        op: "fetch delivery",
                        source: "the delivery stream ended".into(),
                    })
                }
            }
        }
    }

    /// One attempt of the message at the head of a destination's queue.
    async fn attempt(&self, key: &str, lane: &mut Lane, msg: &Message) {
        let job: DeliveryJob = match decode("delivery job", &msg.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(destination = key, error.message = %e, "undecodable delivery; dropping");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        tracing::Span::current().record("delivery", job.id.as_str());
        let attempt_no = msg.info().map(|i| i.delivered.max(1) as usize).unwrap_or(1);
        let first = attempt_no == 1;
        let records = &self.bus;
        if !first {
            // Back after a lost ack or a kill: settled already?
            match lane.records.status(records, &job).await {
                Some(DeliveryStatus::Delivered) => {
                    let _ = msg.ack().await;
                    return;
                }
                Some(DeliveryStatus::Dead) => {
                    let _ = msg.ack_with(AckKind::Term).await;
                    return;
                }
                Some(DeliveryStatus::Pending) | None => {}
            }
        }
        let Some(destination) = self.resolve(key, &job) else {
            let why = Some("unknown destination".into());
            lane.records
                .write(records, &job, None, DeliveryStatus::Dead, why, first)
                .await;
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        // Another replica may have had the destination since this loop's last message (its
        // consumer sequence is not the next one): then its state is read again, so a 410 that
        // replica saw stops this one too.
        let handed_over = lane.took(msg);
        if let Some(reason) = self.disabled(key, lane, handed_over).await {
            lane.records
                .write(
                    records,
                    &job,
                    None,
                    DeliveryStatus::Dead,
                    Some(reason),
                    first,
                )
                .await;
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let started = Instant::now();
        let time = crate::domain::now();
        let outcome = sinks::send(&self.sinks, &destination, &job).await;
        let mut attempt = recorded(&outcome, time, started);
        tracing::info!(destination = key, kind = destination.kind(), delivery = job.id,
            attempt = attempt_no, status = ?outcome.status, verdict = ?outcome.verdict, "delivery attempt");
        note_outcome(outcome.status, outcome.verdict);
        let (status, reason, ack) = self
            .settle(key, lane, outcome.verdict, attempt_no, &mut attempt)
            .await;
        // The record is confirmed before the ack: a kill in between only redelivers.
        lane.records
            .write(records, &job, Some(attempt), status, reason, first)
            .await;
        let _ = msg.ack_with(ack).await;
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
    /// is dead, and the ack (a retry's delay is noted on `attempt`; a 410 disables the lane).
    async fn settle(
        &self,
        key: &str,
        lane: &mut Lane,
        verdict: Verdict,
        attempt_no: usize,
        attempt: &mut Attempt,
    ) -> (DeliveryStatus, Option<String>, AckKind) {
        match verdict {
            Verdict::Delivered => (DeliveryStatus::Delivered, None, AckKind::Ack),
            Verdict::Retry { after } => match self.schedule.delay_for(attempt_no, after) {
                Some(delay) => {
                    attempt.next_attempt_time =
                        Some(attempt.time + chrono::Duration::from_std(delay).unwrap_or_default());
                    (DeliveryStatus::Pending, None, AckKind::Nak(Some(delay)))
                }
                None => {
                    let why = format!("gave up after {attempt_no} attempts");
                    (DeliveryStatus::Dead, Some(why), AckKind::Term)
                }
            },
            Verdict::Permanent => {
                let why = "permanent failure (the destination refused it)".to_string();
                (DeliveryStatus::Dead, Some(why), AckKind::Term)
            }
            Verdict::Disable => {
                let why = "the destination answered 410 Gone: disabled".to_string();
                self.disable(key, lane, &why, attempt.time).await;
                (DeliveryStatus::Dead, Some(why), AckKind::Term)
            }
        }
    }

    /// Why the lane's destination is disabled, if it is (read from KV `relay_destinations`
    /// while disabled, after the destination was `handed_over` by another replica, and at most
    /// once per [`DISABLED_RECHECK`] while enabled).
    async fn disabled(&self, key: &str, lane: &mut Lane, handed_over: bool) -> Option<String> {
        if let Some((at, None)) = &lane.disabled {
            if !handed_over && at.elapsed() < DISABLED_RECHECK {
                return None;
            }
        }
        let reason = self.read_disabled(key).await;
        lane.disabled = Some((Instant::now(), reason.clone()));
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
        lane: &mut Lane,
        why: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) {
        if let Err(e) = super::disabled::disable(&self.bus, key, why, time).await {
            tracing::warn!(destination = key, error.message = %e, "could not note the destination disabled");
        }
        lane.disabled = Some((Instant::now(), Some(why.to_string())));
    }
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

/// The span of one delivery attempt (for traces only): a child of the trace its job carries, so
/// a task's deliveries belong to the task's trace; the webhook request carries it on.
fn attempt_span(key: &str, msg: &Message) -> tracing::Span {
    let attempt = msg.info().map(|i| i.delivered).unwrap_or(1);
    let span = tracing::info_span!(target: "taskfleet::trace", "relay.deliver",
        otel.kind = "client", destination = key, attempt,
        delivery = tracing::field::Empty, http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty);
    crate::telemetry::continue_trace(&span, msg.headers.as_ref());
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

/// What one delivery loop remembers between messages.
#[derive(Debug, Default)]
struct Lane {
    /// The records this loop writes, with the last one kept.
    records: Recorder,
    /// When the destination's state was last read, and why it was disabled, if it was.
    disabled: Option<(Instant, Option<String>)>,
    /// The consumer sequence of the last message this loop took.
    last_taken: Option<u64>,
}

impl Lane {
    /// Notes `msg` as taken and says whether anyone else may have taken a message of this
    /// destination since this loop's last one. The consumer counts every message it hands out
    /// (redeliveries too), and it hands out one at a time: a count that follows on from this
    /// loop's last means no other replica held the destination in between.
    fn took(&mut self, msg: &Message) -> bool {
        let taken = msg.info().ok().map(|i| i.consumer_sequence);
        let follows =
            matches!((self.last_taken, taken), (Some(last), Some(now)) if now == last + 1);
        self.last_taken = taken;
        !follows
    }
}
