//! The tasks running now, as one API process knows them: a bounded index kept current from the
//! ledger's `started` records, so that a `running` listing reads the states of running tasks
//! only, not a message of every queued task (docs/design.md, "Running tasks among a queue of
//! pending ones").
//!
//! A task can only be running once a `started` record of it is stored. The index is seeded once
//! from the queue (every queued task's `started` record looked up, the states of those that have
//! one read: what a `running` listing walked on every call before); then each listing first
//! walks the `started` records stored since the ledger sequence the index has seen
//! (`events.*.*.started`, any replica answers), then reads the latest records of the indexed
//! tasks, newest queued first, until its page is full. A task whose latest record is no longer
//! `running` leaves the index; it comes back with its next `started` record. Nothing is written:
//! the index is this process's view of the ledger, and each API replica keeps its own.
//!
//! Bounded: at most `api.running_index_cap` tasks ([`CAP`] by default; 0 turns the index off).
//! A fleet with more running lists by walking the queue as before (the index is seeded again
//! after [`RESEED_AFTER`]); an index more than [`CATCH_UP_LIMIT`] `started` records behind is
//! seeded again at once.

use super::listing::Page;
use super::{Cursor, ListFilter, TaskError, TaskService};
use crate::bus::{decode, direct, subjects};
use crate::domain::{Assignee, EventKind, TaskId, TaskStatus};
use async_nats::jetstream::message::StreamMessage;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedMutexGuard;

/// Most running tasks the index holds by default (about 100 bytes each; `api.running_index_cap`).
const CAP: usize = 50_000;
/// Most `started` records one listing walks to catch up; past that the index is seeded again.
const CATCH_UP_LIMIT: usize = 20_000;
/// How long a fleet with more running tasks than the cap is listed by walking the queue before
/// the index is seeded again.
const RESEED_AFTER: Duration = Duration::from_secs(300);
/// Ledger sequences a replica may be behind: the first walk after seeding starts this far before
/// the ledger's last sequence (the queue and the `started` records are read from any replica,
/// which may not have stored the newest records yet; a start it missed is met on that walk), and
/// a task whose record no replica answered is dropped only when it was indexed this far back.
const SEED_MARGIN: u64 = 2_000;
/// Most candidates whose states one listing reads when its filter narrows only after reading
/// (priority, kind, name, stalled); past that the page comes back short, with its cursor.
const READ_BUDGET: usize = super::listing::SCAN_BUDGET as usize;

/// The running tasks this process knows of (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct RunningIndex {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    /// The most tasks it holds; 0: none (running listings walk the queue).
    cap: usize,
}

impl Default for RunningIndex {
    fn default() -> Self {
        Self::new(CAP)
    }
}

impl RunningIndex {
    /// An empty index holding at most `cap` tasks.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            slot: Arc::default(),
            cap,
        }
    }
}

/// What the index holds.
#[derive(Debug, Default)]
enum Slot {
    /// Not seeded yet (no `running` listing in this process so far).
    #[default]
    Unseeded,
    /// More tasks than the cap were running when it was seeded, at this instant.
    Over(Instant),
    /// Seeded and kept current.
    Known(Known),
}

/// The indexed tasks and how far the ledger has been walked.
#[derive(Debug, Default)]
struct Known {
    /// The ledger sequence walked through: every `started` record up to it is accounted for.
    through: u64,
    /// The tasks by the sequence of their queue message, newest queued last.
    by_queue: BTreeMap<u64, TaskId>,
    /// Each task's entry.
    tasks: HashMap<TaskId, Entry>,
}

/// One indexed task.
#[derive(Debug, Clone)]
struct Entry {
    assignee: Assignee,
    /// The sequence of the queue message it runs from (the order of a listing).
    queue_seq: u64,
    /// The ledger sequence of the record that put it here: a state read at a later revision
    /// that is not `running` means the task has left `running` since.
    since: u64,
}

/// A task a listing may show, newest queued first: its queue sequence and key.
type Candidate = (u64, Assignee, TaskId);

impl Known {
    /// Notes that `id` runs from queue message `queue_seq`, by the record at ledger `since`.
    fn note(&mut self, assignee: Assignee, id: TaskId, queue_seq: u64, since: u64) {
        if let Some(old) = self.tasks.get(&id) {
            if old.since >= since {
                return;
            }
            self.by_queue.remove(&old.queue_seq);
        }
        self.by_queue.insert(queue_seq, id.clone());
        let entry = Entry {
            assignee,
            queue_seq,
            since,
        };
        self.tasks.insert(id, entry);
    }

    /// Drops `id` when what put it here is no newer than `revision` (a state read there, not
    /// running).
    fn forget(&mut self, id: &TaskId, revision: u64) {
        if let Some(e) = self.tasks.get(id).filter(|e| e.since <= revision) {
            self.by_queue.remove(&e.queue_seq);
            self.tasks.remove(id);
        }
    }

    /// The indexed tasks `filter` may show by assignee, queued before its cursor, newest first.
    fn candidates(&self, filter: &ListFilter) -> Vec<Candidate> {
        let before = filter.before_seq().unwrap_or(u64::MAX);
        self.by_queue
            .range(..before)
            .rev()
            .filter_map(|(&q, id)| Some((q, self.tasks.get(id)?.assignee.clone(), id.clone())))
            .filter(|(_, a, _)| filter.assignee.as_ref().is_none_or(|x| x == a))
            .filter(|(_, a, _)| filter.scope.as_ref().is_none_or(|s| s.contains(a)))
            .collect()
    }
}

/// The queue sequence a `started` record's state carries, when that state is `running` (the
/// rest of the record is skipped, not built).
fn started_at(m: &StreamMessage) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Record {
        task: State,
    }
    #[derive(serde::Deserialize)]
    struct State {
        status: TaskStatus,
        #[serde(default)]
        queue_seq: Option<u64>,
    }
    let r: Record = decode("started record", &m.payload).ok()?;
    (r.task.status == TaskStatus::Running)
        .then_some(r.task.queue_seq)
        .flatten()
}

impl TaskService {
    /// A page of running tasks from the index, or `None` when the index is not in use (more
    /// tasks running than its cap, or a cap of 0): the caller walks the queue.
    pub(super) async fn running_page(
        &self,
        filter: &ListFilter,
    ) -> Result<Option<Page>, TaskError> {
        let Some((candidates, through)) = self.running_candidates(filter).await? else {
            return Ok(None);
        };
        // A task with no record at all was removed with its log (finished, then aged out),
        // unless a replica behind the one the walk read has not stored its start yet.
        let gone = through.saturating_sub(SEED_MARGIN);
        let mut page = Page::default();
        let mut left: Vec<(TaskId, u64)> = Vec::new();
        let mut read = 0;
        for chunk in candidates.chunks(filter.limit.max(1)) {
            let keys: Vec<(Assignee, TaskId)> = chunk
                .iter()
                .map(|(_, a, id)| (a.clone(), id.clone()))
                .collect();
            let mut states = self.latest_states(&keys).await?;
            for (q, _, id) in chunk {
                let Some(state) = states.remove(id) else {
                    left.push((id.clone(), gone));
                    continue;
                };
                let t = state.task;
                if t.status != TaskStatus::Running {
                    left.push((id.clone(), t.revision));
                } else if filter.accepts(&t) && page.tasks.len() < filter.limit {
                    page.tasks.push(t);
                    page.next = Some(Cursor::at(*q));
                }
            }
            read += chunk.len();
            if page.tasks.len() == filter.limit {
                break;
            }
            if filter.narrows_after_read() && read >= READ_BUDGET {
                // A rare match among many running tasks: walk on from here in the next call.
                page.next = chunk.last().map(|(q, _, _)| Cursor::at(*q));
                self.forget_running(&left).await;
                return Ok(Some(page));
            }
        }
        self.forget_running(&left).await;
        // A full page whose last task is the index's last candidate is the last page too.
        let oldest = candidates.last().map(|(q, _, _)| Cursor::at(*q));
        if page.tasks.len() < filter.limit || page.next == oldest {
            page.next = None;
        }
        Ok(Some(page))
    }

    /// The index's candidates for `filter` and the ledger sequence it has walked through, after
    /// seeding the index or walking the `started` records stored since it last looked; `None`
    /// when the index is not in use.
    ///
    /// The walk runs on a task of its own that holds the index: a listing given up half way
    /// (its request timed out, its client left) leaves the walk to finish, and the next listing
    /// waits for it and takes the index it left, instead of seeding again from the start (with
    /// a deep queue, a seed can take longer than a request may).
    async fn running_candidates(
        &self,
        filter: &ListFilter,
    ) -> Result<Option<(Vec<Candidate>, u64)>, TaskError> {
        if self.running.cap == 0 {
            return Ok(None);
        }
        let slot = Arc::clone(&self.running.slot).lock_owned().await;
        let (service, filter) = (self.clone(), filter.clone());
        let walk = tokio::spawn(async move { service.refreshed_candidates(slot, &filter).await });
        match walk.await {
            Ok(candidates) => candidates,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: the queue walk answers this last listing.
            Err(_) => Ok(None),
        }
    }

    /// [`running_candidates`](Self::running_candidates) with the index held: seeds it or
    /// catches it up first.
    async fn refreshed_candidates(
        &self,
        mut slot: OwnedMutexGuard<Slot>,
        filter: &ListFilter,
    ) -> Result<Option<(Vec<Candidate>, u64)>, TaskError> {
        if matches!(&*slot, Slot::Over(at) if at.elapsed() < RESEED_AFTER) {
            return Ok(None);
        }
        if let Slot::Known(known) = &mut *slot {
            if !self.catch_up(known).await? {
                tracing::info!("the running index fell behind the ledger; seeding it again");
                *slot = Slot::Unseeded;
            }
        }
        if !matches!(&*slot, Slot::Known(_)) {
            *slot = self.seed_running().await?;
        }
        Ok(match &*slot {
            Slot::Known(known) => Some((known.candidates(filter), known.through)),
            _ => None,
        })
    }

    /// Drops tasks read as no longer running, with the revision read.
    async fn forget_running(&self, left: &[(TaskId, u64)]) {
        if left.is_empty() {
            return;
        }
        if let Slot::Known(known) = &mut *self.running.slot.lock().await {
            for (id, revision) in left {
                known.forget(id, *revision);
            }
        }
    }

    /// Walks the `started` records stored after `known.through` into the index; `false` when
    /// there were more than [`CATCH_UP_LIMIT`] (the index is then seeded again) or the index
    /// outgrew its cap.
    async fn catch_up(&self, known: &mut Known) -> Result<bool, TaskError> {
        let filter = subjects::events_of_kind(None, EventKind::Started);
        let mut walked = 0;
        loop {
            let (from, filter) = (known.through + 1, filter.as_str());
            let msgs = self
                .read_source(
                    subjects::EVENTS_STREAM,
                    (filter, from, direct::MAX_BATCH),
                    |c| async move {
                        direct::batch(&c, subjects::EVENTS_STREAM, filter, from, direct::MAX_BATCH)
                            .await
                    },
                )
                .await?;
            for m in &msgs {
                known.through = known.through.max(m.sequence);
                let key = subjects::parse_event(&m.subject);
                if let (Some((a, id, _)), Some(q)) = (key, started_at(m)) {
                    known.note(a, id, q, m.sequence);
                }
            }
            walked += msgs.len();
            if msgs.len() < direct::MAX_BATCH {
                return Ok(known.tasks.len() <= self.running.cap);
            }
            if walked >= CATCH_UP_LIMIT {
                return Ok(false);
            }
        }
    }

    /// The index from the queue: the running tasks among every queued task (their `started`
    /// records looked up, the states of those that have one read), walked through the ledger's
    /// last sequence as it was before the queue was read, less [`SEED_MARGIN`].
    async fn seed_running(&self) -> Result<Slot, TaskError> {
        self.metrics.running_index_seeds.inc();
        let (_, last, _) = super::listing::bounds(&self.bus.js, subjects::EVENTS_STREAM).await?;
        let mut known = Known {
            through: last.saturating_sub(SEED_MARGIN),
            ..Known::default()
        };
        let mut walk = super::queue::QueueWalk::new(
            self,
            subjects::TASKS_STREAM,
            [subjects::ALL_TASKS.to_string()],
        );
        let mut msgs = Vec::new();
        loop {
            let next = walk.next(direct::MAX_BATCH).await?;
            let done = next.is_none();
            if let Some(m) = next {
                msgs.push(m);
                if msgs.len() < direct::MAX_BATCH {
                    continue;
                }
            }
            for t in self.started_states(&msgs).await? {
                if let (TaskStatus::Running, Some(q)) = (t.status, t.queue_seq) {
                    known.note(t.assigned_to, t.id, q, t.revision);
                }
            }
            if known.tasks.len() > self.running.cap {
                tracing::info!(
                    cap = self.running.cap,
                    "more tasks running than the running index holds; \
                    running listings walk the queue"
                );
                return Ok(Slot::Over(Instant::now()));
            }
            if done {
                return Ok(Slot::Known(known));
            }
            msgs.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TaskId {
        TaskId::parse(s).expect("a valid id")
    }

    fn anna() -> Assignee {
        Assignee::parse("anna").expect("a valid assignee")
    }

    #[test]
    fn a_task_started_again_from_a_newer_message_is_listed_once_at_its_new_place() {
        let mut k = Known::default();
        k.note(anna(), id("t1"), 5, 100);
        k.note(anna(), id("t1"), 9, 140);
        let order: Vec<u64> = k
            .candidates(&ListFilter::default())
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(order, vec![9]);
    }

    #[test]
    fn a_state_read_before_the_latest_start_does_not_drop_the_task() {
        let mut k = Known::default();
        k.note(anna(), id("t1"), 5, 140);
        k.forget(&id("t1"), 120);
        assert_eq!(
            k.tasks.len(),
            1,
            "a read older than the start says nothing about it"
        );
        k.forget(&id("t1"), 150);
        assert!(k.tasks.is_empty() && k.by_queue.is_empty());
    }

    #[test]
    fn candidates_come_newest_queued_first_below_the_cursor() {
        let mut k = Known::default();
        for (n, q) in [("a", 3), ("b", 7), ("c", 5)] {
            k.note(anna(), id(n), q, q * 10);
        }
        let filter = ListFilter {
            before: Some(Cursor::at(7)),
            ..ListFilter::default()
        };
        let order: Vec<u64> = k.candidates(&filter).iter().map(|c| c.0).collect();
        assert_eq!(order, vec![5, 3]);
    }
}
