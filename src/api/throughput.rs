//! The overview's throughput series: tasks finished per minute over the last
//! [`MINUTES`] minutes, per assignee or fleet-wide, counted from the ledger without reading an
//! event. Per minute boundary one direct get asks how many `completed` (or `failed`) events were
//! stored since it ([`crate::bus::direct::count_since`]: the server finds the first by time and counts the
//! rest); a minute's count is the difference of its two boundaries'. A whole minute that ended a
//! while ago no longer changes, so [`Minutes`] keeps its count and each overview asks only for
//! the minute under way (and the one that just ended): two requests per series, not sixteen.

use crate::bus::subjects;
use crate::domain::{Assignee, EventKind};
use crate::tasks::{TaskError, TaskService};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Minutes of throughput the overview shows.
pub(super) const MINUTES: i64 = 15;

/// How long after a minute ends its count is kept as final (events are stamped by the server,
/// whose clock may trail this one's a little).
const SETTLED_AFTER_S: i64 = 10;

/// Most minute counts kept (past it, the memory starts over).
const MAX_KEPT: usize = 100_000;

/// Tasks finished per minute, oldest minute first; the last entry is the minute under way
/// (calendar minutes, UTC).
#[derive(Debug, Clone, Serialize)]
pub(super) struct Throughput {
    /// `completed` events per minute.
    completed: Vec<u64>,
    /// `failed` events per minute (retries included).
    failed: Vec<u64>,
}

impl Throughput {
    /// The minute-by-minute sum of `series`, `None` if one is unavailable.
    pub(super) fn sum<'a>(series: impl Iterator<Item = &'a Option<Throughput>>) -> Option<Self> {
        let mut total = Self {
            completed: vec![0; MINUTES as usize],
            failed: vec![0; MINUTES as usize],
        };
        for t in series {
            let t = t.as_ref()?;
            let add = |into: &mut Vec<u64>, from: &[u64]| {
                into.iter_mut().zip(from).for_each(|(x, y)| *x += y);
            };
            add(&mut total.completed, &t.completed);
            add(&mut total.failed, &t.failed);
        }
        Some(total)
    }
}

/// Event counts of settled minutes, by event filter and Unix minute.
#[derive(Debug, Default)]
pub(super) struct Minutes {
    kept: std::sync::Mutex<HashMap<(String, i64), u64>>,
}

impl Minutes {
    /// The tasks `a` (`None`: every assignee) finished per minute, `None` when unavailable.
    pub(super) async fn throughput(
        &self,
        tasks: &TaskService,
        a: Option<&Assignee>,
    ) -> Option<Throughput> {
        let now = Utc::now();
        let completed = self.per_minute(tasks, a, EventKind::Completed, now).await;
        let failed = self.per_minute(tasks, a, EventKind::Failed, now).await;
        match (completed, failed) {
            (Ok(completed), Ok(failed)) => Some(Throughput { completed, failed }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error.message = %e, "throughput unavailable");
                None
            }
        }
    }

    /// `kind` events of `a` per calendar minute, the last [`MINUTES`] up to `now`'s.
    async fn per_minute(
        &self,
        tasks: &TaskService,
        a: Option<&Assignee>,
        kind: EventKind,
        now: DateTime<Utc>,
    ) -> Result<Vec<u64>, TaskError> {
        let filter = subjects::events_of_kind(a, kind);
        let current = now.timestamp().div_euclid(60);
        let first = current - (MINUTES - 1);
        let known: Vec<Option<u64>> = {
            let kept = self.kept.lock().expect("minute counts lock");
            (first..current)
                .map(|m| kept.get(&(filter.clone(), m)).copied())
                .collect()
        };
        let mut ask = BTreeSet::from([current]);
        for (m, k) in (first..current).zip(&known) {
            if k.is_none() {
                ask.extend([m, m + 1]);
            }
        }
        let since = counts_since(tasks, &filter, ask).await?;
        let mut out = Vec::with_capacity(MINUTES as usize);
        for (m, k) in (first..current).zip(known) {
            out.push(k.unwrap_or_else(|| since[&m].saturating_sub(since[&(m + 1)])));
        }
        out.push(since[&current]);
        self.keep(&filter, first, &out, now);
        Ok(out)
    }

    /// Keeps the counts of `out` (minutes from `first` on) whose minute is settled, and forgets
    /// this filter's minutes older than `first`.
    fn keep(&self, filter: &str, first: i64, out: &[u64], now: DateTime<Utc>) {
        let mut kept = self.kept.lock().expect("minute counts lock");
        if kept.len() > MAX_KEPT {
            kept.clear();
        }
        kept.retain(|(f, m), _| f != filter || *m >= first);
        for (m, n) in (first..).zip(out) {
            if (m + 1) * 60 + SETTLED_AFTER_S <= now.timestamp() {
                kept.insert((filter.to_string(), m), *n);
            }
        }
    }
}

/// Per Unix minute of `minutes`, how many events on `filter` were stored since it began (read
/// over the reader connection, see [`TaskService::count_events_since`]).
async fn counts_since(
    tasks: &TaskService,
    filter: &str,
    minutes: BTreeSet<i64>,
) -> Result<BTreeMap<i64, u64>, TaskError> {
    futures::stream::iter(minutes)
        .map(|m| async move {
            let t = DateTime::from_timestamp(m * 60, 0).unwrap_or_default();
            let n = tasks.count_events_since(filter, t).await?;
            Ok::<_, TaskError>((m, n))
        })
        .buffered(8)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_minutes_that_ended_a_while_ago_are_kept_and_older_ones_are_forgotten() {
        // Arrange: now is 5 s into minute 100, so minute 99 ended 5 s ago (not settled).
        let minutes = Minutes::default();
        let now = DateTime::from_timestamp(100 * 60 + 5, 0).unwrap();
        minutes.kept.lock().unwrap().insert(("f".into(), 80), 7);
        minutes.kept.lock().unwrap().insert(("g".into(), 80), 7);

        // Act
        let out: Vec<u64> = (0..MINUTES as u64).collect();
        minutes.keep("f", 86, &out, now);

        // Assert
        let kept = minutes.kept.lock().unwrap();
        assert_eq!(kept.get(&("f".into(), 86)), Some(&0));
        assert_eq!(kept.get(&("f".into(), 98)), Some(&12));
        assert_eq!(kept.get(&("f".into(), 99)), None, "ended 5 s ago");
        assert_eq!(kept.get(&("f".into(), 100)), None, "under way");
        assert_eq!(kept.get(&("f".into(), 80)), None, "older than the series");
        assert_eq!(kept.get(&("g".into(), 80)), Some(&7), "another filter's");
    }

    #[test]
    fn a_sum_adds_minute_by_minute_and_is_unavailable_if_one_series_is() {
        let one = Some(Throughput {
            completed: vec![1; MINUTES as usize],
            failed: vec![0; MINUTES as usize],
        });
        let total = Throughput::sum([one.clone(), one.clone()].iter()).unwrap();
        assert_eq!(total.completed, vec![2; MINUTES as usize]);
        assert_eq!(total.failed, vec![0; MINUTES as usize]);
        assert!(Throughput::sum([one, None].iter()).is_none());
    }
}
