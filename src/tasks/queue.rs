//! The queue as bots see it: the pending list, read in priority and arrival order straight from
//! the work-queue stream (no consumer involved, so it never competes with workers), with each
//! message's task state read from the ledger in one batch request.
//!
//! Messages published to NATS directly by other producers get their first record (`created`)
//! here, the first time anybody lists them ("materialising"), so that they can then be read and
//! started by id.

use super::ledger::{self, Stored};
use super::unreadable::Covered;
use super::{TaskError, TaskService};
use crate::bus::{direct, subjects, BusError};
use crate::domain::{Assignee, EventKind, NewTask, Priority, Task, TaskId, TaskKind, TaskStatus};
use async_nats::jetstream::message::StreamMessage;
use futures::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};

/// Walks the messages of several subjects of one stream in sequence order, a batch at a time.
pub(crate) struct QueueWalk<'a> {
    tasks: &'a TaskService,
    stream: &'static str,
    cursors: Vec<Cursor>,
}

struct Cursor {
    subject: String,
    next_seq: u64,
    buffered: VecDeque<StreamMessage>,
    done: bool,
}

impl<'a> QueueWalk<'a> {
    pub(crate) fn new(
        tasks: &'a TaskService,
        stream: &'static str,
        subjects: impl IntoIterator<Item = String>,
    ) -> Self {
        let cursors = subjects
            .into_iter()
            .map(|subject| Cursor {
                subject,
                next_seq: 1,
                buffered: VecDeque::new(),
                done: false,
            })
            .collect();
        Self {
            tasks,
            stream,
            cursors,
        }
    }

    /// The next message in sequence order; `want` sizes the batches read ahead.
    /// Read over the reader connection: a message no client can read is moved aside on the way.
    pub(crate) async fn next(&mut self, want: usize) -> Result<Option<StreamMessage>, TaskError> {
        let stream = self.stream;
        for c in self
            .cursors
            .iter_mut()
            .filter(|c| c.buffered.is_empty() && !c.done)
        {
            let (subject, start) = (c.subject.as_str(), c.next_seq);
            let got = self
                .tasks
                .read_queue((subject, start, want), |client| async move {
                    direct::batch(&client, stream, subject, start, want).await
                })
                .await?;
            match got.last() {
                Some(last) => c.next_seq = last.sequence + 1,
                None => c.done = true,
            }
            c.buffered.extend(got);
        }
        let earliest = self
            .cursors
            .iter_mut()
            .filter(|c| !c.buffered.is_empty())
            .min_by_key(|c| c.buffered.front().map(|m| m.sequence));
        Ok(earliest.and_then(|c| c.buffered.pop_front()))
    }
}

/// A message of the queue stream, however it was read (direct get or pulled by a worker).
#[derive(Debug, Clone, Copy)]
pub struct QueuedMessage<'a> {
    /// Its subject (`tasks.<assignee>.<prio>[.<kind>]`).
    pub subject: &'a str,
    /// Its headers.
    pub headers: Option<&'a async_nats::HeaderMap>,
    /// The create request.
    pub payload: &'a [u8],
    /// Stream sequence.
    pub seq: u64,
    /// When it was published, in nanoseconds since the epoch.
    pub published_ns: i128,
}

impl<'a> From<&'a StreamMessage> for QueuedMessage<'a> {
    fn from(m: &'a StreamMessage) -> Self {
        Self {
            subject: m.subject.as_str(),
            headers: Some(&m.headers),
            payload: &m.payload,
            seq: m.sequence,
            published_ns: m.time.unix_timestamp_nanos(),
        }
    }
}

/// Reads a queue message: the body is a create request; fields it omits come from the subject.
pub fn decode_queued(msg: QueuedMessage<'_>) -> Result<(TaskId, NewTask), String> {
    let (assignee, priority, kind) = subjects::parse_task(msg.subject)
        .ok_or_else(|| format!("subject {} is not a task subject", msg.subject))?;
    let mut body: serde_json::Value =
        serde_json::from_slice(msg.payload).map_err(|e| format!("body is not JSON: {e}"))?;
    let obj = body.as_object_mut().ok_or("body is not a JSON object")?;
    obj.entry("assigned_to").or_insert(assignee.as_str().into());
    obj.entry("priority").or_insert(priority.as_str().into());
    obj.entry("kind").or_insert(kind.as_str().into());
    let new: NewTask = serde_json::from_value(body).map_err(|e| e.to_string())?;
    new.validate()?;
    // The subject is the authority: a producer allowed to publish for one assignee must not
    // create tasks for another (nor at another priority or of another kind).
    let subject_says = (&assignee, priority, kind);
    if (&new.assigned_to, new.priority, new.kind) != subject_says {
        return Err(format!(
            "the body says {} {} {} but the message is on {} (the subject decides)",
            new.assigned_to,
            new.priority.as_str(),
            new.kind.as_str(),
            msg.subject
        ));
    }
    let id = new.id.clone().unwrap_or_else(|| message_task_id(msg));
    check_scheduler(msg, &assignee, &id)?;
    Ok((id, new))
}

/// A message a schedule fired must come from that task's own schedule subject
/// (`scheduled.<assignee>.<id>`): a user allowed to hold schedules for one assignee must not
/// queue tasks for another through a schedule's target.
fn check_scheduler(msg: QueuedMessage<'_>, assignee: &Assignee, id: &TaskId) -> Result<(), String> {
    let Some(scheduler) = msg.headers.and_then(|h| h.get("Nats-Scheduler")) else {
        return Ok(());
    };
    match subjects::parse_scheduled(scheduler.as_str()) {
        Some((a, t)) if &a == assignee && &t == id => Ok(()),
        _ => Err(format!(
            "fired by the schedule {}, which is not task {id}'s schedule for {assignee}",
            scheduler.as_str()
        )),
    }
}

/// The task id a queue message stands for when its body names none: its `Nats-Msg-Id` if that
/// is a task id, else one derived from the message (deterministic, so every reader derives the
/// same id for the same message).
pub(crate) fn message_task_id(msg: QueuedMessage<'_>) -> TaskId {
    let header_id = msg
        .headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|v| TaskId::parse(v.as_str()).ok());
    header_id.unwrap_or_else(|| {
        let ms = (msg.published_ns / 1_000_000).max(0) as u64;
        TaskId::parse(&ulid::Ulid::from_parts(ms, msg.seq as u128).to_string())
            .expect("a ULID is a valid task id")
    })
}

/// The task a queue message stands for, read without decoding the whole body: the subject's
/// assignee, and the body's `id` or else [`message_task_id`] (what [`decode_queued`] gives a
/// valid message). `None` when the message cannot be a task (no task subject; a body that is
/// no JSON object, or whose `id` is no task id).
pub(crate) fn queued_key(msg: QueuedMessage<'_>) -> Option<(Assignee, TaskId)> {
    /// The one field of a create body that names its task.
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Option<TaskId>,
    }
    let (assignee, _, _) = subjects::parse_task(msg.subject)?;
    let id = match serde_json::from_slice::<IdOnly>(msg.payload) {
        Ok(body) => body.id.unwrap_or_else(|| message_task_id(msg)),
        // Say, a key given twice (a JSON object keeps the last): read as a whole.
        Err(_) => decode_queued(msg).ok()?.0,
    };
    Some((assignee, id))
}

/// What a dead letter shows of a queue message refused as not a valid task: a failed task of
/// the subject's assignee (none when the subject names no assignee) with the reason as its
/// error and the message body (lossy UTF-8, at most [`REFUSED_BODY_CAP`] bytes) as `raw`.
pub fn refused_task(msg: QueuedMessage<'_>, why: &str) -> Option<Task> {
    let mut tokens = msg.subject.split('.').skip(1);
    let assignee = Assignee::parse(tokens.next()?).ok()?;
    let priority = tokens
        .next()
        .and_then(|p| Priority::parse(p).ok())
        .unwrap_or(Priority::P1);
    let body: serde_json::Value = serde_json::from_slice(msg.payload).unwrap_or_default();
    let name = body["task_name"].as_str().unwrap_or("(not a valid task)");
    let name: String = name.chars().take(200).collect();
    let raw = &msg.payload[..msg.payload.len().min(REFUSED_BODY_CAP)];
    let new = serde_json::json!({
        "task_name": name, "assigned_to": assignee.as_str(), "priority": priority,
        "payload": {"raw": String::from_utf8_lossy(raw), "subject": msg.subject},
    });
    let new: NewTask = serde_json::from_value(new).ok()?;
    let mut task = queued_task(msg, message_task_id(msg), new);
    task.status = TaskStatus::Failed;
    task.error = Some(format!("refused: {why}"));
    task.finished_time = Some(chrono::Utc::now());
    Some(task)
}

/// How much of a refused message's body its dead letter keeps.
const REFUSED_BODY_CAP: usize = 4096;

/// Tasks whose states one `multi_last` request reads (each may match up to 11 event subjects;
/// the server answers at most 1,024 messages).
const STATES_PER_REQUEST: usize = 80;

/// Literal event subjects (`events.<a>.<id>.<kind>`) one `multi_last` request looks up (at most
/// one message each; the server answers at most 1,024).
const KIND_LOOKUPS_PER_REQUEST: usize = 500;

/// `multi_last` requests of one read of the ledger sent at once (see
/// [`TaskService::ledger_lasts`]).
const LEDGER_READS_IN_FLIGHT: usize = 4;

impl TaskService {
    /// Pending tasks, P0 first and oldest first within a priority. `None` lists every assignee.
    pub async fn pending(
        &self,
        assignee: Option<&Assignee>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for priority in Priority::ALL {
            let mut walk = QueueWalk::new(
                self,
                subjects::TASKS_STREAM,
                subjects::queue_subjects(assignee, priority),
            );
            while out.len() < limit {
                let mut batch = Vec::new();
                while batch.len() < limit - out.len() {
                    match walk.next(limit - out.len()).await? {
                        Some(m) => batch.push(m),
                        None => break,
                    }
                }
                if batch.is_empty() {
                    break;
                }
                for t in self.queued_states(&batch, true).await? {
                    // Messages of claimed tasks stay until their worker acks them: skip those.
                    if t.status == TaskStatus::Pending && seen.insert(t.id.clone()) {
                        out.push(t);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The states of the tasks some queue messages stand for, in message order; a message
    /// whose task has no record yet is recorded (`created`). Invalid messages are skipped.
    pub(crate) async fn queued_states(
        &self,
        msgs: &[StreamMessage],
        tidy: bool,
    ) -> Result<Vec<Task>, TaskError> {
        let mut decoded: Vec<(usize, TaskId, NewTask)> = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            match decode_queued(m.into()) {
                Ok((id, new)) => decoded.push((i, id, new)),
                Err(why) => self.set_aside(m, &why, tidy).await,
            }
        }
        let keys: Vec<(Assignee, TaskId)> = decoded
            .iter()
            .map(|(_, id, new)| (new.assigned_to.clone(), id.clone()))
            .collect();
        let mut states = self.latest_states(&keys).await?;
        let mut out = Vec::with_capacity(decoded.len());
        for (i, id, new) in decoded {
            let m = &msgs[i];
            let state = match states.remove(&id) {
                Some(s) if s.task.status == TaskStatus::Scheduled && tidy => {
                    self.fire_listed(m, s.task).await?
                }
                Some(s) if tidy && stray_stand_in(m, &s.task) => {
                    self.dequeue(Some(m.sequence)).await;
                    None
                }
                // Fired, not recorded yet: shown as the first tidying reader will record it.
                Some(s) if fired_and_due(m, &s.task) => {
                    Some(super::delayed::queued_by_schedule(s.task, Some(m.sequence)))
                }
                Some(s) => Some(s.task),
                None => self.materialise(m, id, new, tidy).await?,
            };
            out.extend(state);
        }
        Ok(out)
    }

    /// A queue message whose task has no record yet: recorded `created` (or, when its body
    /// asks to run later, `scheduled`, and the message dropped). `None` when it cannot be a
    /// task after all (moved aside) or is scheduled.
    pub(super) async fn materialise(
        &self,
        m: &StreamMessage,
        id: TaskId,
        new: NewTask,
        tidy: bool,
    ) -> Result<Option<Task>, TaskError> {
        if let Some(at) = super::delayed::deferred_until(m.into(), &new) {
            if tidy {
                self.defer(m.into(), &id, new, at).await?;
                self.dequeue(Some(m.sequence)).await;
            }
            return Ok(None);
        }
        let mut task = queued_task(m.into(), id.clone(), new);
        match self.record_new(&mut task, "nats").await {
            Ok(true) => Ok(Some(task)),
            Ok(false) => self.load(&id).await,
            Err(TaskError::Bus(BusError::TooLarge(why))) => {
                let why = format!("the task is too large to record ({why})");
                self.set_aside(m, &why, tidy).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A scheduled task whose message is in the queue, met by the pending list: queued now
    /// if due; else (a superseded schedule fired) its schedule is armed again and the message
    /// dropped.
    async fn fire_listed(&self, m: &StreamMessage, t: Task) -> Result<Option<Task>, TaskError> {
        let id = t.id.clone();
        match self.fire(t, m.into(), "api").await {
            Ok(Some(pending)) => Ok(Some(pending)),
            Ok(None) => {
                self.dequeue(Some(m.sequence)).await;
                Ok(None)
            }
            // Someone else queued (or cancelled) it meanwhile.
            Err(TaskError::IllegalTransition(_)) => self.load(&id).await,
            Err(e) => Err(e),
        }
    }

    /// The states of the tasks some queue messages stand for that have been started, in
    /// message order (see [`moved_on`](Self::moved_on)): a running task has a `started` record,
    /// and most of a queue (its pending tasks) has none. A message that is no task, or whose
    /// task has no record yet, cannot be running and is skipped.
    pub(crate) async fn started_states(
        &self,
        msgs: &[StreamMessage],
    ) -> Result<Vec<Task>, TaskError> {
        let keys: Vec<(Assignee, TaskId)> =
            msgs.iter().filter_map(|m| queued_key(m.into())).collect();
        Ok(self.moved_on(&keys, &[EventKind::Started]).await?.0)
    }

    /// Tasks split by whether each has a record of one of `kinds`: the latest states of those
    /// that have (in the order of `tasks`), and the indices in `tasks` of those that have none.
    /// Only the literal subjects `events.<a>.<id>.<kind>` are looked up for every task
    /// ([`KIND_LOOKUPS_PER_REQUEST`] to a request), so the server reads no record of a task
    /// that has none of them: with `started` and `cancelled` (the only ways out of `pending`),
    /// the tasks of a deep queue that are still waiting cost a lookup each, not a read of their
    /// state.
    pub(crate) async fn moved_on(
        &self,
        tasks: &[(Assignee, TaskId)],
        kinds: &[EventKind],
    ) -> Result<(Vec<Task>, Vec<usize>), TaskError> {
        let asked: Vec<String> = tasks
            .iter()
            .flat_map(|(a, id)| kinds.iter().map(|&k| subjects::event(a, id, k)))
            .collect();
        let found: HashSet<(Assignee, TaskId)> = self
            .ledger_lasts(&asked, KIND_LOOKUPS_PER_REQUEST, None)
            .await?
            .iter()
            .filter_map(|m| subjects::parse_event(&m.subject).map(|(a, id, _)| (a, id)))
            .collect();
        let (moved, waiting): (Vec<_>, Vec<_>) =
            (0..tasks.len()).partition(|&i| found.contains(&tasks[i]));
        let moved: Vec<(Assignee, TaskId)> = moved.into_iter().map(|i| tasks[i].clone()).collect();
        let mut states = self.latest_states(&moved).await?;
        let states = moved
            .iter()
            .filter_map(|(_, id)| states.remove(id).map(|s| s.task))
            .collect();
        Ok((states, waiting))
    }

    /// With `tidy` (the API's pending list), moves a queue message that can never become a
    /// task to the dead letters, so no reader meets it again; otherwise, or when it cannot be
    /// moved (NATS failing), it is skipped this time.
    async fn set_aside(&self, m: &StreamMessage, why: &str, tidy: bool) {
        if !tidy {
            tracing::debug!(seq = m.sequence, subject = %m.subject, why, "skipping a queue message that is no task");
            return;
        }
        if let Err(e) = self.move_to_dead_letters(m.into(), why).await {
            tracing::warn!(seq = m.sequence, subject = %m.subject, why, error.message = %e,
                "skipping a queue message that is no task");
        }
    }

    /// The latest record of each task (read from any replica, over the reader connection), in
    /// as few requests as the server allows (see [`ledger_lasts`](Self::ledger_lasts)). Tasks
    /// without a record are missing from the map.
    pub(crate) async fn latest_states(
        &self,
        tasks: &[(Assignee, TaskId)],
    ) -> Result<HashMap<TaskId, Stored>, TaskError> {
        let filters = task_ledgers(tasks);
        let mut by_task: HashMap<TaskId, Vec<StreamMessage>> = HashMap::new();
        for m in self
            .ledger_lasts(&filters, STATES_PER_REQUEST, None)
            .await?
        {
            if let Some((_, id, _)) = subjects::parse_event(&m.subject) {
                by_task.entry(id).or_default().push(m);
            }
        }
        Ok(by_task
            .into_iter()
            .filter_map(|(id, msgs)| Some((id, ledger::newest(msgs)?)))
            .collect())
    }

    /// Of the tasks `tasks`, those that had a record stored at or before ledger sequence `seq`.
    pub(super) async fn recorded_by_seq(
        &self,
        tasks: &[(Assignee, TaskId)],
        seq: u64,
    ) -> Result<HashSet<TaskId>, TaskError> {
        let filters = task_ledgers(tasks);
        let found = self
            .ledger_lasts(&filters, STATES_PER_REQUEST, Some(seq))
            .await?;
        Ok(found
            .iter()
            .filter_map(|m| subjects::parse_event(&m.subject).map(|(_, id, _)| id))
            .collect())
    }

    /// The last ledger message (with `up_to`, the last at or before that sequence) of each
    /// subject matching one of `filters`, `per_request` filters to a `multi_last` request and
    /// [`LEDGER_READS_IN_FLIGHT`] requests at once (the server answers one connection's
    /// requests in turn; sent together, the next is under way while this side decodes the last).
    async fn ledger_lasts(
        &self,
        filters: &[String],
        per_request: usize,
        up_to: Option<u64>,
    ) -> Result<Vec<StreamMessage>, TaskError> {
        let reads: Vec<_> = filters
            .chunks(per_request)
            .map(|chunk| self.last_of_subjects(chunk, up_to))
            .collect();
        let mut answers = futures::stream::iter(reads).buffer_unordered(LEDGER_READS_IN_FLIGHT);
        let mut out = Vec::new();
        while let Some(msgs) = answers.next().await {
            out.extend(msgs?);
        }
        Ok(out)
    }

    /// The last message (with `up_to`, the last at or before it) of each ledger subject
    /// matching one of `filters`, in one request.
    async fn last_of_subjects(
        &self,
        filters: &[String],
        up_to: Option<u64>,
    ) -> Result<Vec<StreamMessage>, TaskError> {
        self.read_on_reader(Covered::Ledgers(filters), |client| async move {
            direct::multi_last(&client, subjects::EVENTS_STREAM, filters, up_to).await
        })
        .await
    }
}

/// The ledger filter (`events.<a>.<id>.*`) of each task.
fn task_ledgers(tasks: &[(Assignee, TaskId)]) -> Vec<String> {
    tasks
        .iter()
        .map(|(a, id)| subjects::task_ledger(a, id))
        .collect()
}

/// Whether `m` is a stand-in left on the manual subject for worker-run task `t` that has
/// finished: a start over the API publishes one before its `started` record (see
/// `TaskService::hold_for_api`), so a crash in between, or after the finish and before its
/// removal, leaves one behind. Nothing else puts a worker-run task on a manual subject (the
/// subject decides a queued task's kind).
fn stray_stand_in(m: &StreamMessage, t: &Task) -> bool {
    t.status.is_terminal()
        && t.kind.is_worker_run()
        && subjects::parse_task(&m.subject).is_some_and(|(_, _, k)| k == TaskKind::Manual)
}

/// Whether `m` is the copy a schedule fired for `t`, a scheduled task that is due by its
/// record: the task is queued, though no reader recorded it yet.
fn fired_and_due(m: &StreamMessage, t: &Task) -> bool {
    t.status == TaskStatus::Scheduled
        && super::delayed::fired(m.into())
        && super::delayed::is_due(t)
}

/// The event type whose last record holds the state a taskfleet-published queue message was
/// queued with (its `Taskfleet-Recorded` header), or `None` for a message a producer published
/// straight to NATS.
pub(crate) fn recorded_by(msg: QueuedMessage<'_>) -> Option<EventKind> {
    let value = msg.headers?.get(crate::bus::RECORDED_HEADER)?;
    Some(EventKind::parse(value.as_str()).unwrap_or(EventKind::Created))
}

/// The pending task a message published straight to NATS stands for (created when published).
pub(crate) fn queued_task(msg: QueuedMessage<'_>, id: TaskId, new: NewTask) -> Task {
    let mut task = Task::from_new(id, new);
    task.queue_seq = Some(msg.seq);
    let published = chrono::DateTime::from_timestamp_nanos(msg.published_ns as i64);
    task.created_time = published;
    task.updated_time = published;
    task
}
