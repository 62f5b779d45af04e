//! Queue messages that no client can read (headers async-nats cannot parse, see `bus::raw`):
//! found by reading the queue as JSON, copied to the dead letters as failed tasks with the
//! reason, the headers and the body, then removed from the queue, so no such message can stop
//! a queue.
//!
//! Readers of the queue (a worker's pulls, the API's pending list and listings) read it over
//! the bus's second connection ([`Bus::reader`](crate::bus::Bus::reader)). When that connection
//! is lost in the middle of a read, the messages the read covered are checked here and the
//! read is tried again.

use super::queue::{refused_task, QueuedMessage};
use super::{TaskError, TaskService};
use crate::bus::{permissions, raw, subjects, BusError, NatsResultExt};
use crate::domain::{Assignee, Priority, Share};
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most messages one check reads (each is one request; a check runs only after a lost reader
/// connection).
const CHECK_LIMIT: usize = 2_000;

/// How many times a read is tried again after moving messages aside.
const READ_ATTEMPTS: usize = 4;

/// How long a worker waits for the API to answer a queue check.
const CHECK_ANSWER: Duration = Duration::from_secs(10);

/// How much of an unreadable message's header block its dead letter shows.
const SHOWN_HEADERS: usize = 512;

impl TaskService {
    /// Runs `read` on the reader connection. If that connection is lost meanwhile (a message
    /// async-nats cannot parse makes it drop the connection), checks up to `span` messages on
    /// `filter` from sequence `from` on, moves the unreadable ones aside, and reads again.
    pub(crate) async fn read_queue<T, F, Fut>(
        &self,
        (filter, from, span): (&str, u64, usize),
        read: F,
    ) -> Result<T, TaskError>
    where
        F: Fn(async_nats::Client) -> Fut,
        Fut: Future<Output = Result<T, BusError>>,
    {
        let reader = self.bus.reader().await?;
        for _ in 0..READ_ATTEMPTS {
            let mut resets = reader.resets();
            resets.borrow_and_update();
            tokio::select! {
                got = read(reader.client.clone()) => return Ok(got?),
                _ = resets.changed() => {
                    self.check_span(filter, from, span).await?;
                }
            }
        }
        Ok(read(reader.client.clone()).await?)
    }

    /// `read` over the reader connection for the queue stream (see
    /// [`read_queue`](Self::read_queue)), over the main one for every other stream.
    pub(crate) async fn read_source<T, F, Fut>(
        &self,
        stream: &str,
        span: (&str, u64, usize),
        read: F,
    ) -> Result<T, TaskError>
    where
        F: Fn(async_nats::Client) -> Fut,
        Fut: Future<Output = Result<T, BusError>>,
    {
        if stream == subjects::TASKS_STREAM {
            return self.read_queue(span, read).await;
        }
        Ok(read(self.bus.client.clone()).await?)
    }

    /// Moves aside the unreadable messages that the worker consumers of `assignee` delivered
    /// and that are not acknowledged yet: after a worker's reader connection was lost, the one
    /// that broke it is among them. How many were moved.
    pub async fn check_delivered(&self, assignee: &Assignee) -> Result<usize, TaskError> {
        let mut moved = 0;
        for priority in Priority::ALL {
            for share in Share::every_turn() {
                moved += self.check_consumer(assignee, priority, share).await?;
            }
        }
        Ok(moved)
    }

    /// [`check_delivered`](Self::check_delivered) for one worker consumer (none yet for a
    /// fair-share turn no task of a tenant was queued on: nothing to check).
    async fn check_consumer(
        &self,
        assignee: &Assignee,
        priority: Priority,
        share: Option<Share>,
    ) -> Result<usize, TaskError> {
        let name = subjects::worker_consumer(assignee, priority, share);
        let info = match self.bus.topology.tasks.consumer_info(&name).await {
            Ok(info) => info,
            Err(_) if share.is_some() => return Ok(0),
            Err(e) => return Err(e).op("consumer info").map_err(Into::into),
        };
        let (floor, last) = (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        );
        tracing::debug!(consumer = %name, floor, last, "checking delivered queue messages");
        if last <= floor {
            return Ok(0);
        }
        let filter = subjects::worker_filter(assignee, priority, share);
        let span = (last - floor) as usize;
        self.check_range(&filter, floor + 1, last, span).await
    }

    /// [`check_delivered`](Self::check_delivered) by whoever may: this process if its NATS user
    /// may read the queue as JSON, else the API, asked over `queue.check.<assignee>`.
    pub async fn check_delivered_anywhere(&self, assignee: &Assignee) -> Result<usize, TaskError> {
        let read_json = permissions::stream_api("MSG.GET", subjects::TASKS_STREAM);
        let may = permissions::user_permissions(&self.bus.client).await;
        if may.is_none_or(|p| p.may_publish(&read_json)) {
            return self.check_delivered(assignee).await;
        }
        let ask = self
            .bus
            .client
            .request(subjects::queue_check(Some(assignee)), "".into());
        let answer = tokio::time::timeout(CHECK_ANSWER, ask)
            .await
            .map_err(|_| TaskError::Invalid("the API did not answer the queue check".into()))?
            .op("ask the API to check the queue")?;
        let answer: serde_json::Value = crate::bus::decode("queue check answer", &answer.payload)?;
        match answer["moved"].as_u64() {
            Some(n) => Ok(n as usize),
            None => Err(TaskError::Invalid(format!(
                "the API could not check the queue: {}",
                answer["error"].as_str().unwrap_or("no reason given")
            ))),
        }
    }

    /// Answers workers' `queue.check.<assignee>` requests (an API process) until `shutdown`:
    /// checks that assignee's delivered messages and replies `{"moved": n}`.
    pub async fn answer_queue_checks(self, shutdown: CancellationToken) -> Result<(), TaskError> {
        let mut requests = self
            .bus
            .client
            .queue_subscribe(subjects::queue_check(None), "taskfleet-api".into())
            .await
            .op("subscribe queue checks")?;
        loop {
            let req = tokio::select! {
                r = requests.next() => match r { Some(r) => r, None => return Ok(()) },
                _ = shutdown.cancelled() => return Ok(()),
            };
            let assignee = req.subject.as_str().rsplit('.').next().map(Assignee::parse);
            let moved = match assignee {
                Some(Ok(a)) => self.check_delivered(&a).await.map_err(|e| e.to_string()),
                _ => Err("no assignee in the subject".into()),
            };
            let body = match &moved {
                Ok(n) => serde_json::json!({ "moved": n }),
                Err(e) => {
                    tracing::warn!(subject = %req.subject, error.message = %e, "queue check failed");
                    serde_json::json!({ "error": e })
                }
            };
            if let Some(reply) = req.reply {
                let _ = self
                    .bus
                    .client
                    .publish(reply, body.to_string().into())
                    .await;
            }
        }
    }

    /// [`check_range`](Self::check_range) of the next `span` messages from `from`.
    async fn check_span(&self, filter: &str, from: u64, span: usize) -> Result<usize, TaskError> {
        self.check_range(filter, from, u64::MAX, span).await
    }

    /// Reads up to `span` messages on `filter` in `[from, to]` as JSON and moves the
    /// unreadable ones aside. How many were moved.
    async fn check_range(
        &self,
        filter: &str,
        from: u64,
        to: u64,
        span: usize,
    ) -> Result<usize, TaskError> {
        let client = &self.bus.client;
        let (mut seq, mut moved) = (from, 0);
        for _ in 0..span.clamp(1, CHECK_LIMIT) {
            let Some(m) = raw::get(client, subjects::TASKS_STREAM, seq, filter).await? else {
                break;
            };
            if m.seq > to {
                break;
            }
            if let Some(problem) = m.problem() {
                self.move_aside(&m, &problem).await?;
                moved += 1;
            }
            seq = m.seq + 1;
        }
        Ok(moved)
    }

    /// Copies an unreadable queue message to the dead letters (a failed task of its subject's
    /// assignee), then removes it from the queue.
    async fn move_aside(&self, m: &raw::RawStored, problem: &str) -> Result<(), TaskError> {
        let msg = QueuedMessage {
            subject: &m.subject,
            headers: None,
            payload: &m.payload,
            seq: m.seq,
            published_ns: m.published_ns,
        };
        let why = format!(
            "no client can read this message: {problem} (headers: {:?})",
            raw::shown(&m.headers, SHOWN_HEADERS)
        );
        self.move_to_dead_letters(msg, &why).await
    }

    /// Copies a queue message that can never become a task (`why`) to the dead letters (a
    /// failed task of its subject's assignee, with the reason and the body), then removes it
    /// from the queue.
    pub(crate) async fn move_to_dead_letters(
        &self,
        msg: QueuedMessage<'_>,
        why: &str,
    ) -> Result<(), TaskError> {
        match refused_task(msg, why) {
            Some(task) => self.dead_letter(&task).await?,
            // No assignee in the subject: no worker or list would ever take it.
            None => tracing::warn!(subject = %msg.subject, seq = msg.seq, why,
                "removing a message outside every assignee's queue"),
        }
        self.dequeue(Some(msg.seq)).await;
        tracing::warn!(subject = %msg.subject, seq = msg.seq, why,
            "moved a queue message to the dead letters");
        Ok(())
    }
}
