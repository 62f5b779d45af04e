//! A lane: the window of messages a relay loop holds, taken in stream order from a consumer
//! pinned to one relay replica at a time (priority group [`RELAY_GROUP`]). The fan-out reads the
//! ledger through one (`relay_events`), each delivery loop its destination's queue.
//!
//! - **The window.** Up to the consumer's `max_ack_pending` messages are handed over at once,
//!   so the next one is already here when the loop is done with one (no round trip to ask for
//!   it). The loop takes them in order; what it writes for one can go on behind it, and the
//!   acks follow in order as those writes end ([`Lane::settle`]: at most a window under way).
//! - **Kept alive.** Messages waiting in the window (and the one being attempted) get an
//!   in-progress ack every third of the ack wait, and messages that arrive meanwhile are taken
//!   into the window at once, so no message waiting its turn is handed out again.
//! - **Take-overs.** The consumer counts every message it hands out; a count that does not
//!   follow on from this lane's last one means another replica held the destination meanwhile
//!   (or the lane just started). The lane then settles what it has under way and waits until
//!   every message the consumer has out is in its own window (a killed holder's come back after
//!   the ack wait), and sorts the window by stream sequence, so the order survives the hand-over.
//!   The next attempt also reads the destination's disabled state again (a 410 the other
//!   replica saw).
//! - **Over the reader connection.** Messages come over the bus's reader connection, which an
//!   unreadable message drops; [`Lane::received`] tells the check that follows which messages
//!   were lost with it. The consumer's state is read over the main connection.

use crate::bus::subjects::RELAY_GROUP;
use crate::bus::{BusError, NatsResultExt};
use async_nats::jetstream::consumer::pull::{self, MessagesError, MessagesErrorKind};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{AckKind, Message};
use futures::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a pull request waits at the server before it is sent again. The pin is kept while
/// requests come, so this must stay well under the pin's timeout (the ack wait, ≥ 6 s).
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// How often, while a take-over waits for the previous holder's messages, the consumer is asked
/// how many messages it has out.
const CATCH_UP_POLL: Duration = Duration::from_millis(200);

/// How long a lane asks whether its consumer still exists after the connection was lost.
const CONSUMER_CHECK: Duration = Duration::from_secs(10);

/// The messages a relay loop holds, and what it remembers of them.
pub(super) struct Lane {
    /// The consumer's stream over the main connection, and the consumer's name: its state is
    /// read there (an answer on the reader connection would be lost if it dropped meanwhile).
    status: (Stream, String),
    /// How many messages may be out at once (the consumer's `max_ack_pending`).
    window: usize,
    messages: pull::Stream,
    ack_wait: Duration,
    /// Messages taken from the consumer and not worked on yet, in stream order, with their
    /// stream sequences.
    queue: VecDeque<(Option<u64>, Message)>,
    /// Records under way, oldest first, each with the message to acknowledge once it and the
    /// ones before it are written (none for a record of a bundle's job before its last).
    settling: VecDeque<(JoinHandle<()>, Option<Message>, AckKind)>,
    /// The consumer sequence of the last message taken.
    last_taken: Option<u64>,
    /// Another replica may have held the destination: catch up before the next attempt.
    taken_over: bool,
    /// The next attempt reads the destination's disabled state again.
    pub(super) recheck: bool,
    /// When the held messages were last kept alive.
    kept_alive: Instant,
    /// The consumer or its stream is unusable (the loop starts over).
    broken: Option<BusError>,
    /// What broke the lane is its consumer being gone (deleted, or gone with a server restart),
    /// which the loop mends by making it again: an expected event, not a failure.
    gone: bool,
    /// The reader connection's losses (see [`Reader::resets`](crate::bus::Reader::resets)).
    resets: watch::Receiver<u64>,
    /// The connection was lost or a pull went unanswered: the consumer may be gone (one kept
    /// in memory does not outlive a server restart), which the next [`Lane::next`] asks.
    unanswered: bool,
    /// The highest stream sequence taken from the consumer (0 before the first): after the
    /// connection drops, the messages past it were lost with it (see [`Lane::received`]).
    received: Arc<AtomicU64>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("queue", &self.queue.len())
            .field("settling", &self.settling.len())
            .field("last_taken", &self.last_taken)
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// A lane over `consumer` (its `max_ack_pending` is `window`), pulling as a member of the
    /// relay's group over the reader connection, whose losses `resets` counts; `stream` is its
    /// stream over the main connection.
    pub(super) async fn open(
        consumer: PullConsumer,
        (stream, resets): (&Stream, watch::Receiver<u64>),
        ack_wait: Duration,
        window: usize,
    ) -> Result<Self, BusError> {
        let messages = consumer
            .stream()
            .group(RELAY_GROUP)
            .max_messages_per_batch(window)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .op("read a relay consumer")?;
        let name = consumer.cached_info().name.clone();
        Ok(Self {
            status: (stream.clone(), name),
            window,
            messages,
            ack_wait,
            queue: VecDeque::new(),
            settling: VecDeque::new(),
            last_taken: None,
            taken_over: false,
            recheck: true,
            kept_alive: Instant::now(),
            broken: None,
            gone: false,
            resets,
            unanswered: false,
            received: Arc::default(),
        })
    }

    /// The next message to attempt, in stream order; `None` at shutdown. An error means the
    /// consumer is gone or unusable.
    pub(super) async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Message>, BusError> {
        loop {
            self.take_ready();
            if std::mem::take(&mut self.unanswered) {
                tokio::select! {
                    () = self.check_consumer() => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
            if let Some(e) = self.broken.take() {
                return Err(e);
            }
            if self.taken_over && !self.catch_up(shutdown).await {
                return Ok(None);
            }
            if let Some((_, msg)) = self.queue.pop_front() {
                return Ok(Some(msg));
            }
            // Nothing left to work on: settle what is under way (its acks let the consumer hand
            // out more) before waiting.
            self.drain().await;
            tokio::select! {
                m = self.messages.next() => self.take(m),
                Ok(()) = self.resets.changed() => self.unanswered = true,
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// Whether the lane ended because its consumer is gone (see [`Lane::next`]'s error).
    pub(super) fn consumer_gone(&self) -> bool {
        self.gone
    }

    /// The highest stream sequence taken from the consumer so far, kept up to date (`None`
    /// before the first): what the reader connection got, for
    /// [`raw::term_unreadable`](crate::bus::raw::term_unreadable) after it dropped.
    pub(super) fn received(&self) -> Received {
        Received(self.received.clone())
    }

    /// The next message if one is here already and no take-over has to be caught up with
    /// first; never waits.
    pub(super) fn ready(&mut self) -> Option<Message> {
        self.take_ready();
        if self.taken_over || self.broken.is_some() {
            return None;
        }
        self.queue.pop_front().map(|(_, msg)| msg)
    }

    /// Runs `work` while keeping the held messages (and `current`) alive and taking new ones
    /// into the window.
    pub(super) async fn watch<F: Future>(&mut self, current: &Message, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            let every = self.ack_wait / 3;
            let due = tokio::time::Instant::from_std(self.kept_alive + every);
            tokio::select! {
                out = &mut work => return out,
                m = self.messages.next() => self.take(m),
                _ = tokio::time::sleep_until(due) => self.keep_alive(Some(current)).await,
            }
        }
    }

    /// Writes what `msg` leaves behind (`record`, say its delivery record) behind the loop and
    /// then acknowledges it with `ack`. The acks go in the order the messages were taken (the
    /// consumer's ack floor moves on with each, and the stream removes its messages in order);
    /// waits for the oldest when a window of them is under way.
    pub(super) async fn settle(
        &mut self,
        msg: Message,
        ack: AckKind,
        record: impl Future<Output = ()> + Send + 'static,
    ) {
        self.push_settling(record, Some(msg), ack).await;
    }

    /// Writes `record` (of one job of a bundle) behind the loop: the bundle's message is
    /// acknowledged (with [`Lane::settle`]) only once it is written.
    pub(super) async fn record(&mut self, record: impl Future<Output = ()> + Send + 'static) {
        self.push_settling(record, None, AckKind::Ack).await;
    }

    /// Puts `record` under way, then acknowledges the oldest messages whose records are
    /// written, waiting for the oldest when a window of records is under way.
    async fn push_settling(
        &mut self,
        record: impl Future<Output = ()> + Send + 'static,
        msg: Option<Message>,
        ack: AckKind,
    ) {
        self.settling.push_back((tokio::spawn(record), msg, ack));
        while let Some((written, _, _)) = self.settling.front() {
            if !written.is_finished() && self.settling.len() <= self.window {
                break;
            }
            self.ack_oldest().await;
        }
    }

    /// Waits until every record under way is written and its message acknowledged.
    pub(super) async fn drain(&mut self) {
        while !self.settling.is_empty() {
            self.ack_oldest().await;
        }
    }

    /// Waits for the oldest record under way, then acknowledges its message.
    async fn ack_oldest(&mut self) {
        if let Some((written, msg, ack)) = self.settling.pop_front() {
            let _ = written.await;
            if let Some(msg) = msg {
                let _ = msg.ack_with(ack).await;
            }
        }
    }

    /// Takes what the consumer has already handed over into the window, without waiting.
    fn take_ready(&mut self) {
        while let Some(m) = self.messages.next().now_or_never() {
            self.take(m);
        }
    }

    /// Takes one item of the pull stream: a message into the window (noting a take-over), an
    /// error that means starting over into `broken`.
    fn take(&mut self, item: Option<Result<Message, MessagesError>>) {
        match item {
            Some(Ok(msg)) => {
                let seq = msg
                    .info()
                    .ok()
                    .map(|i| (i.consumer_sequence, i.stream_sequence));
                let follows = matches!((self.last_taken, seq), (Some(last), Some((now, _))) if now == last + 1);
                self.taken_over |= !follows;
                self.last_taken = seq.map(|(c, _)| c);
                // A message handed out again while its first copy waits here is kept once.
                let stream_seq = seq.map(|(_, s)| s);
                self.received
                    .fetch_max(stream_seq.unwrap_or_default(), Ordering::Relaxed);
                if !self.queue.iter().any(|(s, _)| *s == stream_seq) {
                    self.queue.push_back((stream_seq, msg));
                }
            }
            Some(Err(e))
                if matches!(
                    e.kind(),
                    MessagesErrorKind::ConsumerDeleted
                        | MessagesErrorKind::PushBasedConsumer
                        | MessagesErrorKind::RequestLimitExceeded
                ) =>
            {
                self.gone = matches!(e.kind(), MessagesErrorKind::ConsumerDeleted);
                self.broken = Some(BusError::from_op("read a relay consumer", e));
            }
            Some(Err(e)) if matches!(e.kind(), MessagesErrorKind::NoResponders) => {
                self.unanswered = true;
            }
            // Missed heartbeats, a failed pull: the stream asks again by itself.
            Some(Err(e)) => tracing::warn!(error.message = %e, "relay pull stream hiccup"),
            None => {
                self.broken = Some(BusError::Op {
                    op: "read a relay consumer",
                    source: "the pull stream ended".into(),
                })
            }
        }
    }

    /// After the connection was lost or a pull went unanswered: marks the lane broken if its
    /// consumer is gone (the server restarted; the loop makes the consumer again, and it hands
    /// out every job still queued). Asks until the server answers, for up to
    /// [`CONSUMER_CHECK`] (async-nats's pull stream would take ~15 s to give up by itself).
    async fn check_consumer(&mut self) {
        let (stream, name) = &self.status;
        let since = Instant::now();
        loop {
            match stream.consumer_info(name).await {
                Ok(_) => return,
                Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {
                    self.gone = true;
                    self.broken = Some(BusError::from_op("read a relay consumer", e));
                    return;
                }
                Err(_) if since.elapsed() < CONSUMER_CHECK => {
                    tokio::time::sleep(CATCH_UP_POLL).await;
                }
                Err(_) => return,
            }
        }
    }

    /// After a take-over: settles what is under way, then waits until the consumer has no
    /// message out that is not in the window, and sorts the window by stream sequence. `false`
    /// at shutdown.
    async fn catch_up(&mut self, shutdown: &CancellationToken) -> bool {
        self.drain().await;
        loop {
            self.take_ready();
            let (stream, name) = &self.status;
            let out = match stream.consumer_info(name).await {
                Ok(info) => info.num_ack_pending,
                Err(e) => {
                    tracing::warn!(error.message = %e, "cannot read a relay consumer's state; retrying");
                    usize::MAX
                }
            };
            if out <= self.queue.len() {
                break;
            }
            let due = tokio::time::Instant::from_std(self.kept_alive + self.ack_wait / 3);
            tokio::select! {
                m = self.messages.next() => self.take(m),
                _ = tokio::time::sleep(CATCH_UP_POLL) => {}
                _ = tokio::time::sleep_until(due) => self.keep_alive(None).await,
                _ = shutdown.cancelled() => return false,
            }
        }
        self.queue.make_contiguous().sort_by_key(|(seq, _)| *seq);
        self.taken_over = false;
        self.recheck = true;
        true
    }

    /// Tells the consumer the held messages (and `current`) are still being worked on.
    async fn keep_alive(&mut self, current: Option<&Message>) {
        for msg in current.into_iter().chain(self.queue.iter().map(|(_, m)| m)) {
            let _ = msg.ack_with(AckKind::Progress).await;
        }
        self.kept_alive = Instant::now();
    }
}

/// A lane's highest stream sequence taken so far, readable while the lane is busy.
#[derive(Debug, Clone)]
pub(super) struct Received(Arc<AtomicU64>);

impl Received {
    /// The highest stream sequence taken, `None` before the first.
    pub(super) fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|s| *s > 0)
    }
}
