//! What `/metrics` shows about one queue beyond its depth, from one oldest-first walk of its
//! messages: how long its oldest pending task has waited, and how many of its running tasks went
//! quiet (stalled). Workers take a queue's tasks in order, so its running tasks sit at its head
//! and a short walk sees them; the walk reads at most [`WALK_BUDGET`] messages per scrape.
//!
//! A queued task that never left `pending` (no `started` and no `cancelled` record) is counted
//! as waiting from its message alone; only the others' states are read (see
//! `TaskService::moved_on`), so a scrape of a deep queue reads a lookup per waiting task, not
//! its state. (A copy fired by a schedule that was moved since, which the next pending list
//! drops, counts as waiting until then.)

use super::queue::{decode_queued, QueueWalk};
use super::{TaskError, TaskService};
use crate::bus::subjects;
use crate::domain::{Assignee, EventKind, Priority, StallRule, Task, TaskId, TaskStatus};
use async_nats::jetstream::message::StreamMessage;
use chrono::{DateTime, Utc};

/// Most messages one queue's walk reads (a running task queued behind more pending ones than
/// this, say one a bot started out of turn, is not seen).
pub const WALK_BUDGET: usize = 500;

/// Messages the walk reads, and looks their tasks up for, at a time (a batch costs a round trip
/// for the messages and one for the lookups).
const WALK_BATCH: usize = 250;

/// The records a task leaves `pending` with (see [`TaskStatus::after`]): a queued task
/// without either is waiting.
const WAYS_OUT: [EventKind; 2] = [EventKind::Started, EventKind::Cancelled];

/// One queue's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueGauges {
    /// Seconds the oldest pending task has waited since it was queued (or queued again), if a
    /// task is pending.
    pub oldest_pending_s: Option<f64>,
    /// Running tasks the stall rule calls stalled (no update for longer than its `after`).
    pub stalled: i64,
    /// Pending tasks the walk saw (at most [`WALK_BUDGET`] messages are read).
    pub pending: i64,
    /// Running tasks the walk saw (stalled ones included).
    pub running: i64,
    /// Messages the walk read (so the queue's depth minus this is what lies behind the walk).
    pub walked: u64,
}

impl QueueGauges {
    /// Counts one batch of the walk: `moved`, the states of its tasks that once left `pending`
    /// (a task queued again after a failure is pending again), and `waiting`, the messages of
    /// those that never did.
    fn tally(
        &mut self,
        batch: &[StreamMessage],
        moved: Vec<Task>,
        waiting: &[&StreamMessage],
        (stall, now): (StallRule, DateTime<Utc>),
    ) {
        let queued_at = |seq: u64| {
            let m = batch.iter().find(|m| m.sequence == seq)?;
            Some(m.time.unix_timestamp_nanos())
        };
        let mut oldest = waiting.first().map(|m| m.time.unix_timestamp_nanos());
        self.pending += waiting.len() as i64;
        for t in moved {
            match t.status {
                TaskStatus::Pending => {
                    self.pending += 1;
                    let since = t.queue_seq.and_then(queued_at).unwrap_or_else(|| {
                        i128::from(t.created_time.timestamp_nanos_opt().unwrap_or(0))
                    });
                    oldest = Some(oldest.map_or(since, |o| o.min(since)));
                }
                TaskStatus::Running => {
                    self.running += 1;
                    self.stalled += i64::from(stall.is_stalled(&t, now));
                }
                _ => {}
            }
        }
        if let (None, Some(since)) = (self.oldest_pending_s, oldest) {
            let now_ns = i128::from(now.timestamp_nanos_opt().unwrap_or(i64::MAX));
            self.oldest_pending_s = Some((now_ns - since).max(0) as f64 / 1e9);
        }
    }
}

impl TaskService {
    /// The figures of the queue of `assignee` at `priority`; a task counts as stalled by `stall`
    /// (the relay's rule, from `relay.stall_after_s`).
    pub async fn queue_gauges(
        &self,
        assignee: &Assignee,
        priority: Priority,
        stall: StallRule,
    ) -> Result<QueueGauges, TaskError> {
        let filters = subjects::queue_subjects(Some(assignee), priority);
        let mut walk = QueueWalk::new(self, subjects::TASKS_STREAM, filters);
        let now = crate::domain::now();
        let mut out = QueueGauges::default();
        let mut read = 0;
        while read < WALK_BUDGET {
            let mut batch = Vec::new();
            while batch.len() < WALK_BATCH && read < WALK_BUDGET {
                match walk.next(WALK_BATCH).await? {
                    Some(m) => batch.push(m),
                    None => break,
                }
                read += 1;
            }
            if batch.is_empty() {
                break;
            }
            out.walked += batch.len() as u64;
            // A message that is no valid task is neither waiting nor moved on.
            let (valid, keys): (Vec<&StreamMessage>, Vec<(Assignee, TaskId)>) = batch
                .iter()
                .filter_map(|m| {
                    let (id, new) = decode_queued(m.into()).ok()?;
                    Some((m, (new.assigned_to, id)))
                })
                .unzip();
            let (moved, waiting) = self.moved_on(&keys, &WAYS_OUT).await?;
            let waiting: Vec<&StreamMessage> = waiting.into_iter().map(|i| valid[i]).collect();
            out.tally(&batch, moved, &waiting, (stall, now));
        }
        Ok(out)
    }
}
