//! Pull requests over one long-lived inbox: `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`
//! with `{"batch": n, "no_wait": true}` (or a short `expires`), answered on
//! `<inbox>.<request number>`. async-nats's `fetch` subscribes and unsubscribes an inbox for
//! every request; a worker pulls after every task, so that doubled the server's work per pull.
//!
//! A request ends when it has its `n` messages or the server sends a status (404 no messages,
//! 408 timeout or requests pending, 409 …, 503 no leader to answer) on its own reply subject.
//! Delivered messages carry their stream subject, not the reply subject, so they cannot be told
//! apart by request: one that arrives late for a request given up on (its node died, say) is
//! simply taken by the next pull, never dropped.
//!
//! A request can also go unanswered: nats-server drops the requests a consumer's old leader
//! had queued or kept waiting when it steps down (or its node dies), and the new leader sends
//! `409 Leadership Change` only for the waiting ones its followers had heard of.
//! A no-wait pull is answered within a millisecond and one with `expires` by then, so a request
//! with no answer [`ANSWER_GRACE`] past its expiry is given up on and asked again, under a new
//! reply subject, for the messages still missing; only when nothing answers for
//! [`PULL_TIMEOUT`] does the pull fail (see `docs/cluster.md`).
//!
//! An idle worker can also *arm* a consumer: leave a one-message request waiting at the server,
//! so a task published later is pushed to it at once instead of after a doorbell ring and a
//! pull of its own. What an armed request delivers (told apart by the consumer named in its ack
//! subject: a consumer that is armed is pulled from no other way) is stashed until the next
//! pull takes it.
//!
//! Pulls go over the bus's second, queue-reading connection ([`Bus::reader`]): a message whose
//! headers async-nats cannot parse makes it drop that connection, which then disturbs no lease
//! renewal or event. A pull under way when it drops ends with [`WorkerError::ReaderLost`], and
//! the caller has the delivered messages checked (see `tasks/unreadable.rs`). The messages
//! handed out are acknowledged over the main connection.

use super::WorkerError;
use crate::bus::{Bus, NatsResultExt};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// How long a pull may go without an answer to any of its requests before it fails (the
/// cluster has no leader for the consumer, or the connection is stuck).
const PULL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long past its expiry (a no-wait request's is when it is sent) a request that got no
/// answer counts as lost: a pull then asks again, and an armed consumer counts as unarmed.
/// Answers normally take well under a millisecond; a late one still finds its messages taken.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// The pull requests of one worker process.
pub(super) struct Puller {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    inbox: String,
    answers: async_nats::Subscriber,
    request: u64,
    /// Armed consumers: the reply subject of the request waiting there, and when it ends.
    armed: HashMap<String, (String, Instant)>,
    /// Messages that came outside the pull being collected: for an armed request, or late.
    stash: VecDeque<Message>,
    /// Wakes when the reader connection is lost.
    resets: tokio::sync::watch::Receiver<u64>,
}

impl Puller {
    /// Subscribes the inbox the answers of every pull on `stream` come to, on the reader
    /// connection.
    pub(super) async fn open(bus: &Bus, stream: &str) -> Result<Self, WorkerError> {
        let reader = bus.reader().await?;
        let (client, mut resets) = (reader.client.clone(), reader.resets());
        resets.borrow_and_update();
        let inbox = client.new_inbox();
        let answers = client
            .subscribe(format!("{inbox}.*"))
            .await
            .op("subscribe pull inbox")?;
        Ok(Self {
            client,
            js: bus.js.clone(),
            stream: stream.to_string(),
            inbox,
            answers,
            request: 0,
            armed: HashMap::new(),
            stash: VecDeque::new(),
            resets,
        })
    }

    /// Leaves a request for one message of `consumer` waiting at the server for `wait`.
    pub(super) async fn arm(&mut self, consumer: &str, wait: Duration) -> Result<(), WorkerError> {
        let reply = self.send(consumer, 1, Some(wait)).await?;
        let until = Instant::now() + wait + ANSWER_GRACE;
        self.armed.insert(consumer.to_string(), (reply, until));
        Ok(())
    }

    /// Whether a request is waiting at `consumer` (see [`arm`](Self::arm)).
    pub(super) fn is_armed(&mut self, consumer: &str) -> bool {
        self.forget_lapsed();
        self.armed.contains_key(consumer)
    }

    /// How many armed requests may still deliver a message: slots to keep free for them.
    pub(super) fn armed(&mut self) -> usize {
        self.forget_lapsed();
        self.armed.len()
    }

    /// Up to `max` stashed messages, those of the consumers earlier in `order` first.
    pub(super) fn take(&mut self, max: usize, order: &[&str]) -> Vec<Message> {
        let rank = |m: &Message| {
            let consumer = m.info().map(|i| i.consumer.to_string()).unwrap_or_default();
            order
                .iter()
                .position(|c| *c == consumer)
                .unwrap_or(order.len())
        };
        let mut all: Vec<Message> = self.stash.drain(..).collect();
        all.sort_by_key(|m| rank(m));
        let rest = all.split_off(max.min(all.len()));
        self.stash.extend(rest);
        all
    }

    /// Reads answers until a message is stashed or an armed request ends, or counts as lost
    /// ([`ANSWER_GRACE`] past its expiry with no answer: a leader move can drop it silently,
    /// and a worker whose free slots are all held by armed requests waits here alone). With no
    /// request armed it never returns while no message comes (a branch of the idle wait). At
    /// once when a message is stashed already (an armed request can deliver while another
    /// pull is being collected).
    pub(super) async fn wait_stashed(&mut self) -> Result<(), WorkerError> {
        if !self.stash.is_empty() {
            return Ok(());
        }
        loop {
            let lapse = self.armed.values().map(|(_, until)| *until).min();
            let msg = match lapse {
                None => self.answer().await?,
                Some(at) => match tokio::time::timeout_at(at, self.answer()).await {
                    Ok(msg) => msg?,
                    Err(_) => {
                        self.forget_lapsed();
                        return Ok(());
                    }
                },
            };
            let stashed = self.stash.len();
            let armed = self.armed.len();
            self.route(msg, "", &mut Vec::new());
            if self.stash.len() > stashed || self.armed.len() < armed {
                return Ok(());
            }
        }
    }

    /// Stops the answers (the server drops the requests still waiting) and hands back every
    /// message that came but was not taken, so no task waits out its lease.
    pub(super) async fn close(mut self) {
        let _ = self.answers.unsubscribe().await;
        while let Some(msg) = self.answers.next().await {
            self.route(msg, "", &mut Vec::new());
        }
        for msg in self.stash.drain(..) {
            let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
        }
    }

    /// Armed requests whose end (a 408 from the server) never came: lost with a connection or
    /// in a leader move.
    fn forget_lapsed(&mut self) {
        let now = Instant::now();
        self.armed.retain(|consumer, (_, until)| {
            let lapsed = *until <= now;
            if lapsed {
                tracing::info!(
                    consumer = consumer.as_str(),
                    "an armed pull request went \
                    unanswered past its expiry (its consumer's leader moved?); no longer armed"
                );
            }
            !lapsed
        });
    }

    /// Up to `max` messages of `consumer` that are there now (a no-wait pull), or, with `wait`,
    /// the first ones to arrive within it. A request unanswered [`ANSWER_GRACE`] past its expiry
    /// is asked again for what is still missing (see the module doc).
    pub(super) async fn pull(
        &mut self,
        consumer: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Message>, WorkerError> {
        let fail_at = Instant::now() + PULL_TIMEOUT + wait.unwrap_or_default();
        let mut out = Vec::with_capacity(max);
        let mut asked = 0;
        loop {
            let reply = self.send(consumer, max - out.len(), wait).await?;
            asked += 1;
            let give_up = (Instant::now() + wait.unwrap_or_default() + ANSWER_GRACE).min(fail_at);
            let collected = self.collect(&reply, max, &mut out);
            if let Ok(done) = tokio::time::timeout_at(give_up, collected).await {
                return done.map(|()| out);
            }
            if out.len() >= max || Instant::now() >= fail_at {
                // Messages that came count as the answer; none in the whole time is a failure.
                return match out.is_empty() {
                    true => Err(pull_error(&format!(
                        "{asked} pull requests to {consumer} went unanswered"
                    ))),
                    false => Ok(out),
                };
            }
            tracing::info!(
                consumer,
                got = out.len(),
                "a pull request went unanswered (its consumer's leader moved?); asking again"
            );
        }
    }

    /// Sends a pull request for `max` messages of `consumer`; returns its reply subject.
    async fn send(
        &mut self,
        consumer: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<String, WorkerError> {
        self.request += 1;
        let reply = format!("{}.{}", self.inbox, self.request);
        let body = match wait {
            Some(w) => serde_json::json!({ "batch": max, "expires": w.as_nanos() as u64 }),
            None => serde_json::json!({ "batch": max, "no_wait": true }),
        };
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{consumer}", self.stream);
        self.client
            .publish_with_reply(subject, reply.clone(), body.to_string().into())
            .await
            .op("pull task")?;
        Ok(reply)
    }

    /// Reads answers into `out` until it holds `max` messages or `reply`'s request ended.
    /// Cancel-safe: what came stays in `out`.
    async fn collect(
        &mut self,
        reply: &str,
        max: usize,
        out: &mut Vec<Message>,
    ) -> Result<(), WorkerError> {
        while out.len() < max {
            let msg = self.answer().await?;
            if self.route(msg, reply, out) {
                break;
            }
        }
        Ok(())
    }

    /// The next answer to any request; [`WorkerError::ReaderLost`] when the connection drops
    /// first (the requests waiting at the server ended with it).
    async fn answer(&mut self) -> Result<async_nats::Message, WorkerError> {
        tokio::select! {
            msg = self.answers.next() => msg.ok_or_else(|| pull_error("the pull inbox closed")),
            _ = self.resets.changed() => {
                self.armed.clear();
                Err(WorkerError::ReaderLost)
            }
        }
    }

    /// Files one answer: a message of an armed consumer in the stash (that request is done),
    /// any other message in `out`; a status ends its request. True when it ended `reply`'s.
    fn route(&mut self, msg: async_nats::Message, reply: &str, out: &mut Vec<Message>) -> bool {
        let Some(status) = msg.status else {
            let msg = Message {
                message: msg,
                context: self.js.clone(),
            };
            let consumer = msg.info().map(|i| i.consumer.to_string());
            match consumer.ok().and_then(|c| self.armed.remove(&c)) {
                Some(_) => self.stash.push_back(msg),
                None if reply.is_empty() => self.stash.push_back(msg),
                None => out.push(msg),
            }
            return false;
        };
        // 100: an idle heartbeat, the request is still open. 404 no messages, 408 timeout or
        // requests pending, 409 …: that request ended (a status for an earlier one is stale).
        if status.as_u16() == 100 {
            return false;
        }
        let subject = msg.subject.as_str();
        self.armed.retain(|_, (r, _)| r != subject);
        !reply.is_empty() && subject == reply
    }
}

/// A failed pull.
pub(super) fn pull_error(why: &str) -> WorkerError {
    WorkerError::Bus(crate::bus::BusError::Op {
        op: "pull task",
        source: why.to_string().into(),
    })
}
