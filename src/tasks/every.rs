//! A listing of every status: the ledger's walk merged with the queued tasks no one recorded.
//!
//! A task published straight to NATS is only its queue message until something records it (a
//! worker's claim, or a pending list that shows it): the ledger, which a listing of every status
//! walks (see `listing.rs`), does not hold it yet. So this listing walks two streams, each newest
//! first, and merges them by when each message was stored:
//!
//! - the ledger, as `listing.rs` does (the tasks taskfleet recorded);
//! - the queue (`TASKS`), for the messages whose task has no record. A message taskfleet queued
//!   carries the `Taskfleet-Recorded` header and is passed over unread; the others are looked up
//!   in the ledger in one batch per window.
//!
//! A published task can be recorded while a client pages (a worker claims it, a pending list
//! shows it): its first record is then newer than where the ledger walk began, so that walk
//! never meets it. The cursor keeps that point (the walk's horizon: the ledger's last sequence
//! when the first page was read), and the queue walk shows such a task, as it stands now, at
//! its place in the queue.
//!
//! The queue walk's first window is read while the ledger is walked. The walk stops at the time
//! of the ledger walk's last task when that walk filled the page and has more after it (nothing
//! stored before it can make the page), so it reads about the messages queued since then, not
//! the whole queue; and it walks at most about [`SCAN_BUDGET`] messages per call.
//!
//! The cursor carries where each walk resumes and the horizon (`<ledger sequence>.<queue
//! sequence>.<horizon>`), so a task is on exactly one page of a walk through the listing,
//! whichever stream it comes from. A queued task the page shows is recorded (`created`, as the
//! pending list does), so that it can then be read and started by id; one the page leaves out
//! is not, so the next page finds it where it is.

use super::delayed::deferred_until;
use super::history::Cursor;
use super::listing::{bounds, first_window, one_assignee, source};
use super::listing::{Found, Page, Source, WalkPage, GROWTH, SCAN_BUDGET};
use super::queue::{decode_queued, queued_task, recorded_by};
use super::{ListFilter, Stored, TaskError, TaskService};
use crate::domain::{Assignee, NewTask, Task, TaskId, TaskStatus};
use async_nats::jetstream::message::StreamMessage;
use std::collections::{HashMap, HashSet};

/// The queue walk's first window is sized for this share of the page (1/4), each next one
/// [`GROWTH`] times the last.
const FIRST_QUEUE_SHARE: usize = 4;

/// Published tasks remembered as recorded (`TaskService::recorded`: the ids of tasks published
/// straight to NATS that this process has found or made a record of, each with the sequence of
/// a record it had, so that the queue walk looks each up once, not on every listing; a task,
/// once recorded, keeps a record while its queue message lasts) before the memory starts over.
pub(super) const RECORDED_CAP: usize = 16_384;

/// A queued task the queue walk shows.
struct Queued {
    /// Its queue message.
    msg: StreamMessage,
    /// Its id and create request, read from the message, when no one recorded it yet (showing
    /// it records it); `None` for one first recorded after the walk's horizon.
    new: Option<(TaskId, NewTask)>,
    /// The task: as the message stands for it (pending, created when published), or its state.
    found: Found,
}

/// What the queue walk makes of one message.
enum Met {
    /// Nothing it shows: a task the ledger walk meets (recorded by the horizon), or no task.
    Passed,
    /// A task no one recorded yet: its id and create request.
    Unrecorded(Box<(TaskId, NewTask)>),
    /// A published task first recorded after the walk's horizon, in its latest state.
    Late(Box<Task>),
}

/// Why a queue walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// It walked the queue's first message: nothing is left.
    Done,
    /// It met a message stored before the ledger walk's last task: what is left is older than
    /// anything the page can show.
    Floor,
    /// It found a page of tasks, or walked its budget: what is left may be newer than the other
    /// walk's tasks.
    More,
}

/// A walk of the queue, newest first, a window at a time.
struct QueueWalk {
    /// The queue subjects walked.
    src: Source,
    /// The queue's first sequence.
    first: u64,
    /// The sequence the walk started below.
    below: u64,
    /// The last sequence of the next window.
    end: u64,
    /// Per subject filter, the messages after `end` (see `TaskService::read_range`).
    after_end: Vec<u64>,
    /// Sequences the next window spans (each [`GROWTH`] times the last).
    window: u64,
    /// The window read when the walk was opened, not yet taken: its start and messages.
    read: Option<(u64, Vec<StreamMessage>)>,
}

/// What the queue walk found, newest first, and where it ended.
struct QueuePage {
    /// The tasks found, newest first, at most the filter's limit.
    found: Vec<Queued>,
    /// The sequence the next walk starts below when every task found is shown.
    resume: u64,
    /// Why the walk stopped.
    stop: Stop,
}

impl TaskService {
    /// A page of a listing of every status (see the module docs).
    pub(super) async fn every_status_page(&self, filter: &ListFilter) -> Result<Page, TaskError> {
        let queue_below = match filter.before {
            None => Some(u64::MAX),
            Some(c) => c.queue.filter(|&q| q > 0),
        };
        // The queue walk's first window is read while the ledger is walked: most pages need
        // no more of the queue than that.
        let opened = async {
            match queue_below {
                Some(below) => self.open_queue(filter, below).await.map(Some),
                None => Ok(None),
            }
        };
        let (ledger, opened) = tokio::join!(self.walk_page(filter), opened);
        let ledger = ledger?;
        let horizon = match filter.before {
            None => Some(ledger.last),
            Some(c) => c.horizon,
        };
        // Queued tasks older than the ledger walk's last are for a later page, unless the
        // ledger has nothing after it: then the queue is walked on to know whether any is left.
        let floor = (ledger.found.len() == filter.limit && ledger.next.is_some())
            .then(|| ledger.found.last().map(|f| f.time))
            .flatten();
        let queued = match opened? {
            Some(walk) => self.unrecorded(filter, walk, (floor, horizon)).await?,
            None => QueuePage {
                found: Vec::new(),
                resume: 0,
                stop: Stop::Done,
            },
        };
        let (picks, next) = merge(ledger, queued, (filter.limit, horizon));
        // Recorded oldest first, so that their records keep the order they were queued in.
        let mut tasks = Vec::with_capacity(picks.len());
        for pick in picks.into_iter().rev() {
            match pick {
                Pick::Ledger(task) => tasks.push(*task),
                Pick::Queue(u) => tasks.extend(self.record_listed(*u).await?),
            }
        }
        tasks.reverse();
        Ok(Page { tasks, next })
    }

    /// Records a queued task this page shows (`created`), as the pending list does, unless it
    /// has a record; `None` when it cannot be a task after all.
    async fn record_listed(&self, q: Queued) -> Result<Option<Task>, TaskError> {
        let Some((id, new)) = q.new else {
            return Ok(Some(q.found.task));
        };
        let task = self.materialise(&q.msg, id.clone(), new, false).await?;
        if let Some(t) = &task {
            self.remember_recorded(id, t.revision);
        }
        Ok(task)
    }

    /// Remembers that published task `id` had a record at ledger sequence `seq` (the earliest
    /// such sequence known: what tells whether it had one by a walk's horizon).
    fn remember_recorded(&self, id: TaskId, seq: u64) {
        let seq = self.recorded.get(&id).map_or(seq, |known| known.min(seq));
        self.recorded.insert(id, seq);
    }

    /// The queue walk of `filter` below sequence `below`, with its first window read.
    async fn open_queue(&self, filter: &ListFilter, below: u64) -> Result<QueueWalk, TaskError> {
        let queued = ListFilter {
            status: Some(TaskStatus::Pending),
            ..filter.clone()
        };
        let src = source(&queued, one_assignee(filter).as_ref(), false);
        let (first, last, stored) = bounds(&self.bus.js, src.stream).await?;
        let end = below.saturating_sub(1).min(last);
        let after_end = self.counts_after(&src, end, end == last).await?;
        // A quarter of the page at first: most of what a queue holds is recorded, and what the
        // page can use is queued after the ledger walk's last task (see `unrecorded`).
        let wanted = filter.limit.div_ceil(FIRST_QUEUE_SHARE);
        let mut walk = QueueWalk {
            window: first_window(wanted, false, last.saturating_sub(first) + 1, stored),
            src,
            first,
            below: end.saturating_add(1),
            end,
            after_end,
            read: None,
        };
        walk.read = self.next_window(&mut walk).await?;
        Ok(walk)
    }

    /// The next window of `walk` (its start and its messages, newest first), if any is left.
    async fn next_window(
        &self,
        walk: &mut QueueWalk,
    ) -> Result<Option<(u64, Vec<StreamMessage>)>, TaskError> {
        if walk.end < walk.first || walk.end == 0 {
            return Ok(None);
        }
        let start = walk.end.saturating_sub(walk.window - 1).max(walk.first);
        let window = (start, walk.end);
        let mut msgs = self
            .read_range(&walk.src, window, &mut walk.after_end)
            .await?;
        msgs.sort_by_key(|m| std::cmp::Reverse(m.sequence));
        walk.end = start.saturating_sub(1);
        walk.window = walk.window.saturating_mul(GROWTH);
        Ok(Some((start, msgs)))
    }

    /// The messages of `walk` whose tasks have no record by the `horizon` (a ledger sequence)
    /// and match `filter`, newest first: up to `filter.limit`, none stored before `floor`
    /// (nanoseconds since the epoch), about [`SCAN_BUDGET`] messages walked at most.
    async fn unrecorded(
        &self,
        filter: &ListFilter,
        mut walk: QueueWalk,
        (floor, horizon): (Option<i128>, Option<u64>),
    ) -> Result<QueuePage, TaskError> {
        let mut page = QueuePage {
            found: Vec::new(),
            resume: walk.below,
            stop: Stop::Done,
        };
        let mut walked = 0;
        let mut next = walk.read.take();
        while let Some((start, mut msgs)) = next {
            walked += msgs.len() as u64;
            // Nothing stored before the floor can make the page: look none of it up (the
            // first such message stays, to stop the walk).
            let older =
                |m: &StreamMessage| floor.is_some_and(|f| m.time.unix_timestamp_nanos() < f);
            msgs.truncate(msgs.iter().position(older).map_or(msgs.len(), |i| i + 1));
            let read = self.no_record(msgs, horizon).await?;
            if let Some(stop) = take(&mut page, read, (filter, floor)) {
                page.stop = stop;
                return Ok(page);
            }
            page.resume = start;
            if walked >= SCAN_BUDGET && walk.end >= walk.first && walk.end > 0 {
                page.stop = Stop::More;
                return Ok(page);
            }
            next = self.next_window(&mut walk).await?;
        }
        Ok(page)
    }

    /// Queue messages `msgs` (newest first), each with what the queue walk makes of it (see
    /// [`Met`]). A message taskfleet queued is passed over unread (its task is recorded), and
    /// so is one that is no task (the pending list moves those aside) or whose task this
    /// process knows had a record by the `horizon` (see [`RECORDED_CAP`]).
    async fn no_record(
        &self,
        msgs: Vec<StreamMessage>,
        horizon: Option<u64>,
    ) -> Result<Vec<(StreamMessage, Met)>, TaskError> {
        let by_horizon = |seq: u64| horizon.is_none_or(|h| seq <= h);
        let read: Vec<_> = msgs
            .into_iter()
            .map(|m| {
                let new = match recorded_by((&m).into()) {
                    None => decode_queued((&m).into()).ok(),
                    Some(_) => None,
                };
                let known = |id: &TaskId| self.recorded.get(id).is_some_and(&by_horizon);
                (m, new.filter(|(id, _)| !known(id)))
            })
            .collect();
        let keys: Vec<(Assignee, TaskId)> = read
            .iter()
            .filter_map(|(_, new)| new.as_ref())
            .map(|(id, new)| (new.assigned_to.clone(), id.clone()))
            .collect();
        let recorded = self.latest_states(&keys).await?;
        let late = self.recorded_late(&keys, &recorded, horizon).await?;
        let met = |(id, new): (TaskId, NewTask)| match recorded.get(&id) {
            None => Met::Unrecorded(Box::new((id, new))),
            Some(s) if late.contains(&id) => Met::Late(Box::new(s.task.clone())),
            Some(_) => Met::Passed,
        };
        Ok(read
            .into_iter()
            .map(|(m, new)| (m, new.map_or(Met::Passed, met)))
            .collect())
    }

    /// Of the tasks `keys` with a record (`recorded`, their latest), those first recorded
    /// after the `horizon`; the others are remembered as recorded by it.
    async fn recorded_late(
        &self,
        keys: &[(Assignee, TaskId)],
        recorded: &HashMap<TaskId, Stored>,
        horizon: Option<u64>,
    ) -> Result<HashSet<TaskId>, TaskError> {
        let h = horizon.unwrap_or(u64::MAX);
        let after: Vec<(Assignee, TaskId)> = keys
            .iter()
            .filter(|(_, id)| recorded.get(id).is_some_and(|s| s.task.revision > h))
            .cloned()
            .collect();
        // Nothing had a record by sequence 0 (a walk that began on an empty ledger).
        let by_then = match after.is_empty() || h == 0 {
            true => HashSet::new(),
            false => self.recorded_by_seq(&after, h).await?,
        };
        let mut late = HashSet::new();
        for (id, s) in recorded {
            match s.task.revision <= h {
                true => self.remember_recorded(id.clone(), s.task.revision),
                false if by_then.contains(id) => self.remember_recorded(id.clone(), h),
                false => {
                    late.insert(id.clone());
                }
            }
        }
        Ok(late)
    }
}

/// Takes one window of the queue walk (newest first, each message with what the walk makes of
/// it) into `page`: the tasks it shows that `filter` accepts, except those no one recorded that
/// wait for a later start; every other message is passed over. Returns why the walk stops, if
/// it does within the window.
fn take(
    page: &mut QueuePage,
    read: Vec<(StreamMessage, Met)>,
    (filter, floor): (&ListFilter, Option<i128>),
) -> Option<Stop> {
    for (msg, met) in read {
        let time = msg.time.unix_timestamp_nanos();
        if floor.is_some_and(|f| time < f) {
            return Some(Stop::Floor);
        }
        if page.found.len() == filter.limit {
            return Some(Stop::More);
        }
        page.resume = msg.sequence;
        let (task, new) = match met {
            Met::Passed => continue,
            Met::Late(task) => (*task, None),
            Met::Unrecorded(u) if deferred_until((&msg).into(), &u.1).is_some() => continue,
            Met::Unrecorded(u) => {
                let (id, new) = *u;
                let task = queued_task((&msg).into(), id.clone(), new.clone());
                (task, Some((id, new)))
            }
        };
        if filter.accepts(&task) {
            let found = Found {
                seq: msg.sequence,
                time,
                task,
            };
            page.found.push(Queued { msg, new, found });
        }
    }
    None
}

/// A task a page shows: from the ledger walk (its state), or from the queue walk.
enum Pick {
    Ledger(Box<Task>),
    Queue(Box<Queued>),
}

/// The two walks merged newest first, up to `limit` tasks (a task once), and the cursor of the
/// next page: each walk resumes at its first task left out, or where it ended when none was.
/// A walk that may hold more tasks newer than the other's next stops the merge where its
/// tasks run out (the page comes back short, with a cursor).
/// The cursor keeps the walk's `horizon`.
fn merge(
    ledger: WalkPage,
    queued: QueuePage,
    (limit, horizon): (usize, Option<u64>),
) -> (Vec<Pick>, Option<Cursor>) {
    let (ledger_end, queue_end) = (ledger.next, queued.stop);
    let mut l = ledger.found.into_iter().peekable();
    let mut q = queued.found.into_iter().peekable();
    let (mut picks, mut shown) = (Vec::new(), HashSet::new());
    while picks.len() < limit {
        let from_ledger = match (l.peek(), q.peek()) {
            (Some(a), Some(b)) => a.time >= b.found.time,
            (Some(_), None) if queue_end != Stop::More => true,
            (None, Some(_)) if ledger_end.is_none() => false,
            _ => break,
        };
        let pick = match from_ledger {
            true => l.next().map(|f| Pick::Ledger(Box::new(f.task))),
            false => q.next().map(|u| Pick::Queue(Box::new(u))),
        };
        let Some(pick) = pick else { break };
        let id = match &pick {
            Pick::Ledger(t) => t.id.clone(),
            Pick::Queue(u) => u.found.task.id.clone(),
        };
        if shown.insert(id) {
            picks.push(pick);
        }
    }
    let seq = match l.peek() {
        Some(f) => f.seq + 1,
        None => ledger_end.unwrap_or(0),
    };
    let queue = match (q.peek(), queue_end) {
        (Some(u), _) => Some(u.found.seq + 1),
        (None, Stop::Done) => None,
        (None, _) => Some(queued.resume),
    };
    let next = (seq > 0 || queue.is_some()).then_some(Cursor {
        seq,
        queue,
        horizon,
    });
    (picks, next)
}
