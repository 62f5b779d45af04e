//! Messages that no client can read (headers async-nats cannot parse, see `bus::raw`), in the
//! queue (`TASKS`) or in the task ledger (`EVENTS`): found by reading the stream as JSON, copied
//! to the dead letters as failed tasks with the reason, the headers and the body, then removed
//! from the stream, so no such message can stop a queue or make a task unreadable.
//!
//! Reads of either stream (a worker's pulls, the API's pending list, listings, task states and
//! logs, the overview's counts) go over the bus's second connection
//! ([`Bus::reader`](crate::bus::Bus::reader)) through [`read_on_reader`](TaskService::read_on_reader).
//! When that connection is lost in the middle of a read, the messages the read covered
//! ([`Covered`]) are checked here and the read is tried again. A leader read of a task's state
//! is JSON already (it cannot break a connection): it finds the unreadable message itself.
//!
//! Taskfleet never writes such a message: each one a fleet user wrote into a task's log is
//! removed from the log (the dead letter keeps it), and no event of taskfleet's is lost.

use super::ledger::{self, Stored};
use super::queue::{refused_task, QueuedMessage};
use super::{TaskError, TaskService};
use crate::bus::{permissions, raw, subjects, BusError, NatsResultExt};
use crate::domain::{Assignee, Priority, Share, TaskId};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most messages one check reads per filter (each is one request; a check runs only after a
/// lost reader connection, or a leader read that met an unreadable message).
const CHECK_LIMIT: usize = 2_000;

/// How many times a read is tried again after moving messages aside.
const READ_ATTEMPTS: usize = 4;

/// How long a worker waits for the API to answer a queue check.
const CHECK_ANSWER: Duration = Duration::from_secs(10);

/// How much of an unreadable message's header block its dead letter shows.
const SHOWN_HEADERS: usize = 512;

/// Task logs (or other ledger filters) whose unreadable message this process may not move
/// aside, remembered once warned about (past this many, the memory starts over).
pub(super) const WARNED_CAP: usize = 10_000;

/// What a read over the reader connection covered: what is checked when that connection is
/// lost during it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Covered<'a> {
    /// Up to `n` queue messages on a filter from a sequence on.
    Queue(&'a str, u64, usize),
    /// Up to `n` ledger messages on a filter (one task's: `events.<a>.<id>.*`) from a sequence
    /// on.
    Ledger(&'a str, u64, usize),
    /// The ledger messages on a filter stored since a time (up to [`CHECK_LIMIT`]).
    LedgerSince(&'a str, DateTime<Utc>),
    /// Several tasks' ledgers, each from its start (up to [`CHECK_LIMIT`] each).
    Ledgers(&'a [String]),
    /// Up to `n` entries of the index copy (`LEDGER_INDEX`) on a filter from a sequence on.
    Index(&'a str, u64, usize),
}

/// A message read as JSON, shaped as the queue's messages are for a dead letter (the headers
/// are the problem: none are kept).
fn as_queued(m: &raw::RawStored) -> QueuedMessage<'_> {
    QueuedMessage {
        subject: &m.subject,
        headers: None,
        payload: &m.payload,
        seq: m.seq,
        published_ns: m.published_ns,
    }
}

impl TaskService {
    /// Runs `read` on the reader connection. If that connection is lost meanwhile twice in a
    /// row (a message async-nats cannot parse makes it drop the connection each time it is
    /// read), checks up to `span` queue messages on `filter` from sequence `from` on, moves the
    /// unreadable ones aside, and reads again (see [`read_on_reader`](Self::read_on_reader)).
    pub(crate) async fn read_queue<T, F, Fut>(
        &self,
        (filter, from, span): (&str, u64, usize),
        read: F,
    ) -> Result<T, TaskError>
    where
        F: Fn(async_nats::Client) -> Fut,
        Fut: Future<Output = Result<T, BusError>>,
    {
        self.read_on_reader(Covered::Queue(filter, from, span), read)
            .await
    }

    /// Runs `read` on the reader connection. If that connection is lost meanwhile, reads
    /// again; if it is lost again, checks the messages `covered` names, moves the unreadable
    /// ones aside, and reads again.
    pub(crate) async fn read_on_reader<T, F, Fut>(
        &self,
        covered: Covered<'_>,
        read: F,
    ) -> Result<T, TaskError>
    where
        F: Fn(async_nats::Client) -> Fut,
        Fut: Future<Output = Result<T, BusError>>,
    {
        let reader = self.bus.reader().await?;
        for attempt in 0..READ_ATTEMPTS {
            let mut resets = reader.resets();
            resets.borrow_and_update();
            tokio::select! {
                got = read(reader.client.clone()) => return Ok(got?),
                // The first loss may be the network's (or another read's): read again at once;
                // a message that breaks the connection breaks it again.
                _ = resets.changed() => if attempt > 0 {
                    self.check(covered).await?;
                }
            }
        }
        Ok(read(reader.client.clone()).await?)
    }

    /// `read` over the reader connection for the queue and the ledger (see
    /// [`read_on_reader`](Self::read_on_reader)), over the main one for every other stream
    /// (written by taskfleet alone).
    pub(crate) async fn read_source<T, F, Fut>(
        &self,
        stream: &str,
        (filter, from, span): (&str, u64, usize),
        read: F,
    ) -> Result<T, TaskError>
    where
        F: Fn(async_nats::Client) -> Fut,
        Fut: Future<Output = Result<T, BusError>>,
    {
        let covered = match stream {
            subjects::TASKS_STREAM => Covered::Queue(filter, from, span),
            subjects::EVENTS_STREAM => Covered::Ledger(filter, from, span),
            subjects::INDEX_STREAM => Covered::Index(filter, from, span),
            _ => return Ok(read(self.bus.client.clone()).await?),
        };
        self.read_on_reader(covered, read).await
    }

    /// The latest record of a task, read as JSON from the ledger's leader (a read that cannot
    /// break a connection): when the last message of its log is one no client can read, the
    /// log is checked, such messages moved aside, and the record read again.
    pub(crate) async fn leader_read(
        &self,
        assignee: Option<&Assignee>,
        id: &TaskId,
    ) -> Result<Option<Stored>, TaskError> {
        let filter = match assignee {
            Some(a) => subjects::task_ledger(a, id),
            None => subjects::task_ledger_any_assignee(id),
        };
        for _ in 0..READ_ATTEMPTS {
            match ledger::leader_last(&self.bus.client, &filter).await? {
                Ok(stored) => return Ok(stored),
                Err(seq) => {
                    tracing::debug!(task_id = %id, seq, "the last record of a task is unreadable");
                    self.check(Covered::Ledger(&filter, 1, CHECK_LIMIT)).await?;
                }
            }
        }
        match ledger::leader_last(&self.bus.client, &filter).await? {
            Ok(stored) => Ok(stored),
            Err(seq) => {
                let why = format!("at sequence {seq}, still there after {READ_ATTEMPTS} checks");
                Err(unreadable_error(&filter, &why))
            }
        }
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
        self.check_range(subjects::TASKS_STREAM, &filter, (floor + 1, last), span)
            .await
    }

    /// [`check_delivered`](Self::check_delivered) by whoever may: this process if its NATS user
    /// may read the queue as JSON, else the API, asked over `queue.check.<assignee>`.
    pub async fn check_delivered_anywhere(&self, assignee: &Assignee) -> Result<usize, TaskError> {
        let read_json = permissions::stream_api("MSG.GET", subjects::TASKS_STREAM);
        if self.may_publish(&[read_json]).await {
            return self.check_delivered(assignee).await;
        }
        self.ask_api_check(assignee, "").await
    }

    /// Asks an API process over `queue.check.<assignee>` to check: with an empty `body` the
    /// assignee's delivered queue messages, with `{"task": "<id>"}` that task's log. How many
    /// messages it moved aside.
    async fn ask_api_check(&self, assignee: &Assignee, body: &str) -> Result<usize, TaskError> {
        let subject = subjects::queue_check(Some(assignee));
        let ask = self.bus.client.request(subject, body.to_string().into());
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

    /// A worker's check of one task's log, done by an API process (`{"task": id}` on
    /// `queue.check.<assignee>`): the log, `events.<assignee>.<id>.*`, from its start.
    async fn answer_ledger_check(&self, assignee: &Assignee, body: &[u8]) -> Result<usize, String> {
        let asked: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let id = asked["task"].as_str().ok_or("no task named")?;
        let id = TaskId::parse(id).map_err(|e| e.to_string())?;
        let filter = subjects::task_ledger(assignee, &id);
        let covered = Covered::Ledger(&filter, 1, CHECK_LIMIT);
        self.check(covered).await.map_err(|e| e.to_string())
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
                Some(Ok(a)) if req.payload.is_empty() => {
                    self.check_delivered(&a).await.map_err(|e| e.to_string())
                }
                Some(Ok(a)) => self.answer_ledger_check(&a, &req.payload).await,
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

    /// Checks the messages a read covered, moving the unreadable ones aside. How many were
    /// moved.
    pub(super) async fn check(&self, covered: Covered<'_>) -> Result<usize, TaskError> {
        let (stream, events) = (subjects::TASKS_STREAM, subjects::EVENTS_STREAM);
        match covered {
            Covered::Queue(filter, from, span) => {
                self.check_range(stream, filter, (from, u64::MAX), span)
                    .await
            }
            Covered::Ledger(filter, from, span) => self.check_ledger(filter, from, span).await,
            Covered::LedgerSince(filter, since) => {
                self.may_fix_ledger(filter).await?;
                let client = &self.bus.client;
                let Some(first) = raw::first_since(client, events, filter, since).await? else {
                    return Ok(0);
                };
                self.check_range(events, filter, (first.seq, u64::MAX), CHECK_LIMIT)
                    .await
            }
            Covered::Ledgers(filters) => {
                let mut moved = 0;
                for filter in filters {
                    moved += self.check_ledger(filter, 1, CHECK_LIMIT).await?;
                }
                Ok(moved)
            }
            Covered::Index(filter, from, span) => {
                let index = subjects::INDEX_STREAM;
                self.check_range(index, filter, (from, u64::MAX), span)
                    .await
            }
        }
    }

    /// Reads up to `span` messages of `stream` on `filter` in `[from, to]` as JSON and moves
    /// the unreadable ones aside. How many were moved.
    async fn check_range(
        &self,
        stream: &str,
        filter: &str,
        (from, to): (u64, u64),
        span: usize,
    ) -> Result<usize, TaskError> {
        let client = &self.bus.client;
        let (mut seq, mut moved) = (from, 0);
        for _ in 0..span.clamp(1, CHECK_LIMIT) {
            let Some(m) = raw::get(client, stream, seq, filter).await? else {
                break;
            };
            if m.seq > to {
                break;
            }
            if let Some(problem) = m.problem() {
                match stream {
                    subjects::EVENTS_STREAM => self.move_record_aside(&m, &problem).await?,
                    subjects::INDEX_STREAM => self.drop_index_entry(&m, &problem).await?,
                    _ => self.move_aside(&m, &problem).await?,
                }
                moved += 1;
            }
            seq = m.seq + 1;
        }
        Ok(moved)
    }

    /// Copies an unreadable queue message to the dead letters (a failed task of its subject's
    /// assignee), then removes it from the queue.
    async fn move_aside(&self, m: &raw::RawStored, problem: &str) -> Result<(), TaskError> {
        let msg = as_queued(m);
        let why = format!(
            "no client can read this message: {problem} (headers: {:?})",
            raw::shown(&m.headers, SHOWN_HEADERS)
        );
        self.move_to_dead_letters(msg, &why).await
    }

    /// Copies an unreadable message of a task's log to the dead letters (a failed task of its
    /// subject's assignee, under an id of its own derived from the stream sequence, whose error
    /// names the task), then removes it from the ledger. Taskfleet never writes such a message,
    /// so the log loses no event of taskfleet's.
    async fn move_record_aside(&self, m: &raw::RawStored, problem: &str) -> Result<(), TaskError> {
        // `events.<assignee>.<task>.<type>`
        let task = m.subject.split('.').nth(2).unwrap_or("?");
        let why = format!(
            "the log of task {task} held a message no client can read: {problem} (headers: {:?})",
            raw::shown(&m.headers, SHOWN_HEADERS)
        );
        let msg = as_queued(m);
        if let Some(mut letter) = refused_task(msg, &why) {
            letter.id = ledger_letter_id(m);
            letter.queue_seq = None;
            self.dead_letter(&letter).await?;
        }
        match self.bus.topology.events.delete_message(m.seq).await {
            Ok(_) => {}
            // Already gone (another API process moved it first).
            Err(e) => {
                tracing::debug!(seq = m.seq, error.message = %e, "ledger message already removed")
            }
        }
        tracing::warn!(subject = %m.subject, seq = m.seq, task_id = %task, problem,
            "moved an unreadable message of a task's log to the dead letters");
        Ok(())
    }

    /// Removes an unreadable entry from the index copy: an entry only points at a task (whose
    /// log the listing reads next), taskfleet never writes one no client can read, and the
    /// copy keeps one entry per subject, so the task's next real entry takes its place.
    async fn drop_index_entry(&self, m: &raw::RawStored, problem: &str) -> Result<(), TaskError> {
        let index = self.bus.js.get_stream(subjects::INDEX_STREAM).await;
        let index = index.op("open the index copy")?;
        if let Err(e) = index.delete_message(m.seq).await {
            tracing::debug!(seq = m.seq, error.message = %e, "index entry already removed");
        }
        tracing::warn!(subject = %m.subject, seq = m.seq, problem,
            "removed an index entry no client can read from the listings' copy");
        Ok(())
    }

    /// Checks `filter` of the ledger from `from` on here or, when this process's user may not
    /// (a worker under `--secure`) and the filter is one task's log, has an API process check
    /// that log (as it does for the queue); else the error of
    /// [`may_fix_ledger`](Self::may_fix_ledger).
    async fn check_ledger(&self, filter: &str, from: u64, span: usize) -> Result<usize, TaskError> {
        let refused = match self.may_fix_ledger(filter).await {
            Ok(()) => {
                let events = subjects::EVENTS_STREAM;
                return self
                    .check_range(events, filter, (from, u64::MAX), span)
                    .await;
            }
            Err(refused) => refused,
        };
        // `events.<assignee>.<task>.*`
        let parts: Vec<&str> = filter.split('.').collect();
        let (Some(a), Some(id)) = (parts.get(1), parts.get(2)) else {
            return Err(refused);
        };
        let (Ok(assignee), false) = (Assignee::parse(a), *id == "*") else {
            return Err(refused);
        };
        let body = serde_json::json!({ "task": id }).to_string();
        match self.ask_api_check(&assignee, &body).await {
            Ok(moved) => Ok(moved),
            Err(e) => {
                tracing::debug!(filter, error.message = %e, "the API did not check the task's log");
                Err(refused)
            }
        }
    }

    /// Whether this process's NATS user may publish every one of `subjects` (its permissions
    /// are kept once the server answered; with no answer, it may: a refusal is an error anyway,
    /// and the next call asks again).
    async fn may_publish(&self, subjects: &[String]) -> bool {
        let asked = self.user_permissions.get_or_try_init(|| async {
            permissions::user_permissions(&self.bus.client)
                .await
                .ok_or(())
        });
        match asked.await {
            Ok(p) => subjects.iter().all(|s| p.may_publish(s)),
            Err(()) => true,
        }
    }

    /// Refuses to check `filter` of the ledger when this process's NATS user may not read it
    /// as JSON and delete from it (a worker under `--secure`): the read fails with a clear
    /// error, warned about once per filter.
    async fn may_fix_ledger(&self, filter: &str) -> Result<(), TaskError> {
        let events = subjects::EVENTS_STREAM;
        let needed = [
            permissions::stream_api("MSG.GET", events),
            permissions::stream_api("MSG.DELETE", events),
        ];
        if self.may_publish(&needed).await {
            return Ok(());
        }
        let err = unreadable_error(
            filter,
            "this process's NATS user may not move it aside (MSG.GET and MSG.DELETE on EVENTS); \
             the API moves it to the dead letters when it reads the task",
        );
        let first = self.unreadable_warned.insert(filter.to_string(), ());
        if first {
            let task = filter.split('.').nth(2).unwrap_or("*");
            tracing::warn!(task_id = task, filter, error.message = %err,
                "a task's log holds a message this process cannot read nor move aside");
        }
        Err(err)
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

/// The id of the dead letter of ledger message `m`: a ULID of its store time and, with its
/// top bit set (a queue message's letter never has it), its stream sequence. The same message
/// always gets the same id, which no task has (task ids are random ULIDs or chosen names).
fn ledger_letter_id(m: &raw::RawStored) -> TaskId {
    let ms = (m.published_ns / 1_000_000).max(0) as u64;
    let random = (1u128 << 79) | u128::from(m.seq);
    TaskId::parse(&ulid::Ulid::from_parts(ms, random).to_string())
        .expect("a ULID is a valid task id")
}

/// The error of a read that met a message no client can read in `filter` of the ledger and
/// could not move it aside, for the reason `why` (503 in the API).
fn unreadable_error(filter: &str, why: &str) -> TaskError {
    let task = filter.split('.').nth(2).unwrap_or("*");
    TaskError::Bus(BusError::Op {
        op: "read a task log holding a message no client can read",
        source: format!("the log of task {task} holds a message no client can read: {why}").into(),
    })
}
