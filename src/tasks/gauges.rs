//! What `/metrics` shows about one queue beyond its depth, from one oldest-first walk of its
//! messages: how long its oldest pending task has waited, and how many of its running tasks went
//! quiet (stalled). Workers take a queue's tasks in order, so its running tasks sit at its head
//! and a short walk sees them; the walk reads at most [`WALK_BUDGET`] messages per scrape.

use super::queue::QueueWalk;
use super::{TaskError, TaskService};
use crate::bus::subjects;
use crate::domain::{Assignee, Priority, StallRule, TaskStatus};
use std::collections::HashMap;

/// Most messages one queue's walk reads (a running task queued behind more pending ones than
/// this, say one a bot started out of turn, is not seen).
pub const WALK_BUDGET: usize = 500;

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
        let now_ns = i128::from(now.timestamp_nanos_opt().unwrap_or(i64::MAX));
        let mut out = QueueGauges::default();
        let mut read = 0;
        while read < WALK_BUDGET {
            let mut batch = Vec::new();
            while batch.len() < 80 && read < WALK_BUDGET {
                match walk.next(80).await? {
                    Some(m) => batch.push(m),
                    None => break,
                }
                read += 1;
            }
            if batch.is_empty() {
                break;
            }
            out.walked += batch.len() as u64;
            let queued: HashMap<u64, i128> = batch
                .iter()
                .map(|m| (m.sequence, m.time.unix_timestamp_nanos()))
                .collect();
            for t in self.queued_states(&batch, false).await? {
                match t.status {
                    TaskStatus::Pending => out.pending += 1,
                    TaskStatus::Running => out.running += 1,
                    _ => {}
                }
                match t.status {
                    TaskStatus::Pending if out.oldest_pending_s.is_none() => {
                        let since = t.queue_seq.and_then(|s| queued.get(&s).copied());
                        let since = since.unwrap_or_else(|| {
                            i128::from(t.created_time.timestamp_nanos_opt().unwrap_or(0))
                        });
                        out.oldest_pending_s = Some((now_ns - since).max(0) as f64 / 1e9);
                    }
                    TaskStatus::Running if stall.is_stalled(&t, now) => out.stalled += 1,
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}
