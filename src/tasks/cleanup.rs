//! Retention (seed 002: "keep completed tasks 7 days"): a finished task's whole ledger is removed
//! once it finished longer ago than the retention; pending and running tasks stay however old.
//!
//! The sweeper walks the ledger oldest first from a cursor kept in the `taskfleet_meta` bucket.
//! For every terminal event (completed, failed, cancelled) older than the cutoff it reads the
//! task's latest record; if the task is still finished before the cutoff, it purges the task's
//! subjects up to and including that record (a retry written in between is kept, state and
//! all). The cursor moves by compare-and-set, so with several API replicas one sweeps at a time
//! and the others find the cursor moved and wait for their next turn.

use super::unreadable::Covered;
use super::{TaskError, TaskService};
use crate::bus::{subjects, BusError, NatsResultExt};
use crate::domain::{now, Assignee, EventKind, TaskId, TaskStatus};
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The default age: finished tasks are kept 7 days.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The meta bucket's key of the sweeper's cursor (the next ledger sequence to look at).
const CURSOR_KEY: &str = "sweeper.events";

/// Messages read per step.
const STEP: usize = 500;

/// One step of a sweep.
struct Swept {
    removed: usize,
    /// The next sequence to look at.
    next: u64,
    /// The walk reached messages younger than the cutoff (or the end).
    done: bool,
}

/// The background sweeper of one API process.
#[derive(Debug, Clone)]
pub struct Sweeper {
    tasks: TaskService,
    keep: Duration,
    every: Duration,
}

impl Sweeper {
    /// A sweeper removing tasks finished more than `keep` ago, looking every `every`.
    pub fn new(tasks: TaskService, keep: Duration, every: Duration) -> Self {
        Self { tasks, keep, every }
    }

    /// Sweeps every `every` (with jitter) until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.every + jitter) => {}
            }
            match self.once().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "retention: removed finished tasks"),
                Err(e) => tracing::warn!(error.message = %e, "retention sweep failed"),
            }
        }
    }

    /// One sweep from the stored cursor; returns how many tasks it removed.
    pub async fn once(&self) -> Result<usize, TaskError> {
        let Some(cutoff) = cutoff(self.keep) else {
            return Ok(0);
        };
        let meta = &self.tasks.bus.topology.meta;
        let (mut cursor, mut revision) = read_cursor(meta).await?;
        let mut walk = LedgerWalk::open(&self.tasks, cursor).await?;
        let mut removed = 0;
        loop {
            let step = self.tasks.sweep_step(&mut walk, cutoff).await?;
            removed += step.removed;
            if step.done {
                self.tasks.after_walk(&mut walk).await?;
            }
            if step.next != cursor {
                let value = step.next.to_string().into();
                revision = match revision {
                    Some(r) => meta.update(CURSOR_KEY, value, r).await.ok(),
                    None => meta.create(CURSOR_KEY, value).await.ok(),
                };
                // Another replica moved the cursor: it is sweeping; leave it to it.
                if revision.is_none() {
                    return Ok(removed);
                }
                cursor = step.next;
            }
            if step.done {
                return Ok(removed);
            }
        }
    }
}

async fn read_cursor(meta: &kv::Store) -> Result<(u64, Option<u64>), TaskError> {
    match meta.entry(CURSOR_KEY).await.op("read sweeper cursor")? {
        Some(e) if e.operation == kv::Operation::Put => {
            let seq = std::str::from_utf8(&e.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            Ok((seq, Some(e.revision)))
        }
        _ => Ok((1, None)),
    }
}

fn cutoff(keep: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(keep)
        .ok()
        .and_then(|age| now().checked_sub_signed(age))
}

impl TaskService {
    /// Removes every task that is completed, failed or cancelled and finished more than
    /// `older_than` ago, walking the whole ledger; returns how many.
    #[tracing::instrument(skip(self))]
    pub async fn cleanup(&self, older_than: Duration) -> Result<usize, TaskError> {
        let Some(cutoff) = cutoff(older_than) else {
            return Ok(0);
        };
        let mut walk = LedgerWalk::open(self, 1).await?;
        let mut removed = 0;
        loop {
            let step = self.sweep_step(&mut walk, cutoff).await?;
            removed += step.removed;
            if step.done {
                self.after_walk(&mut walk).await?;
                tracing::info!(removed, "removed finished tasks");
                return Ok(removed);
            }
        }
    }

    /// After a walk ended: when its connection was lost meanwhile (a message no client can read
    /// ends the walk that way), moves such messages among the next [`STEP`] aside, so that the
    /// next sweep walks past them.
    async fn after_walk(&self, walk: &mut LedgerWalk) -> Result<(), TaskError> {
        if walk.resets.has_changed().unwrap_or(false) {
            let covered = Covered::Ledger(subjects::ALL_EVENTS, walk.next_seq, STEP);
            let moved = self.check(covered).await?;
            tracing::debug!(moved, from = walk.next_seq, "retention walk interrupted");
        }
        Ok(())
    }

    /// Looks at up to [`STEP`] more ledger messages, removing the finished tasks whose terminal
    /// events among them are older than `cutoff`.
    async fn sweep_step(
        &self,
        walk: &mut LedgerWalk,
        cutoff: DateTime<Utc>,
    ) -> Result<Swept, TaskError> {
        let mut candidates = Vec::new();
        let mut seen = HashSet::new();
        let mut done = false;
        while candidates.len() < STEP {
            let Some((seq, subject, time)) = walk.next().await? else {
                done = true;
                break;
            };
            if time > cutoff {
                walk.unread = Some((seq, subject, time));
                done = true;
                break;
            }
            walk.next_seq = seq + 1;
            if let Some((a, id, kind)) = subjects::parse_event(&subject) {
                let terminal = matches!(
                    kind,
                    EventKind::Completed | EventKind::Failed | EventKind::Cancelled
                );
                if terminal && seen.insert(id.clone()) {
                    candidates.push((a, id));
                }
            }
        }
        let removed = self.remove_finished(&candidates, cutoff).await?;
        Ok(Swept {
            removed,
            next: walk.next_seq,
            done,
        })
    }

    /// Purges the ledger of each candidate still finished before `cutoff`, up to and including
    /// its latest record.
    async fn remove_finished(
        &self,
        candidates: &[(Assignee, TaskId)],
        cutoff: DateTime<Utc>,
    ) -> Result<usize, TaskError> {
        let states = self.latest_states(candidates).await?;
        let mut removed = 0;
        for (a, id) in candidates {
            let Some(s) = states.get(id) else { continue };
            let t = &s.task;
            let expired = t.status.is_terminal() && t.finished_time.is_some_and(|f| f <= cutoff);
            if !expired {
                continue;
            }
            let events = &self.bus.topology.events;
            events
                .purge()
                .filter(subjects::task_ledger(a, id))
                .sequence(t.revision + 1)
                .await
                .map_err(|e| BusError::from_op("purge finished task", e))?;
            // Its index entries (written in the batch of its final event, so at most one more),
            // and the listings' copy of them, which a listing takes as the task's state.
            events
                .purge()
                .filter(subjects::task_index(a, id))
                .sequence(t.revision + 2)
                .await
                .map_err(|e| BusError::from_op("purge finished task", e))?;
            if matches!(t.status, TaskStatus::Failed | TaskStatus::Cancelled) {
                self.unindex(a, id).await?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes a swept task's entries from the listings' copy of the index (`LEDGER_INDEX`).
    async fn unindex(&self, a: &Assignee, id: &TaskId) -> Result<(), TaskError> {
        let copy = self
            .bus
            .js
            .get_stream_no_info(subjects::INDEX_STREAM)
            .await
            .op("index copy")?;
        copy.purge()
            .filter(subjects::task_index(a, id))
            .await
            .map_err(|e| BusError::from_op("purge a swept task's index entries", e))?;
        Ok(())
    }
}

/// The ledger read oldest first from a sequence, through an ordered consumer (headers only: the
/// sweeper needs subjects and times). A consumer, not batch direct gets: those count the
/// messages pending after their start on every request, which costs the whole subject index on
/// a large stream with purged tasks in it. Read over the reader connection (a fleet user may
/// have written a message no client can read); `resets` tells whether it was lost meanwhile.
struct LedgerWalk {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    next_seq: u64,
    unread: Option<(u64, String, DateTime<Utc>)>,
    resets: tokio::sync::watch::Receiver<u64>,
}

/// How long the walk waits for a message before it counts as the end of the ledger.
const END_WAIT: Duration = Duration::from_millis(500);

impl LedgerWalk {
    async fn open(tasks: &TaskService, from: u64) -> Result<Self, BusError> {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let reader = tasks.bus.reader().await?;
        let mut resets = reader.resets();
        resets.borrow_and_update();
        let events = super::ledger::events_over(reader.client).await?;
        let messages = events
            .create_consumer(OrderedConfig {
                filter_subject: subjects::ALL_EVENTS.into(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                headers_only: true,
                ..Default::default()
            })
            .await
            .op("open ledger walk")?
            .messages()
            .await
            .op("open ledger walk")?;
        Ok(Self {
            messages,
            next_seq: from.max(1),
            unread: None,
            resets,
        })
    }

    /// The next message's sequence, subject and time; `None` at the end of the ledger.
    async fn next(&mut self) -> Result<Option<(u64, String, DateTime<Utc>)>, BusError> {
        use futures::StreamExt;
        if let Some(m) = self.unread.take() {
            return Ok(Some(m));
        }
        let Ok(next) = tokio::time::timeout(END_WAIT, self.messages.next()).await else {
            return Ok(None);
        };
        let Some(msg) = next else { return Ok(None) };
        let msg = msg.op("ledger walk")?;
        let info = msg.info().map_err(|source| BusError::Op {
            op: "ledger walk",
            source,
        })?;
        let time = DateTime::from_timestamp_nanos(info.published.unix_timestamp_nanos() as i64);
        Ok(Some((info.stream_sequence, msg.subject.to_string(), time)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_now_minus_the_retention() {
        let c = cutoff(Duration::from_secs(3600)).unwrap();
        let age = now() - c;
        assert!((age.num_seconds() - 3600).abs() <= 1);
        assert!(cutoff(Duration::MAX).is_none());
    }
}
