//! Cleanup (seed 002: "keep completed tasks 7 days"): removes the state entries of tasks that
//! finished long enough ago. Their events age out of the event stream by themselves.

use super::{ListFilter, TaskError, TaskService};
use crate::bus::BusError;
use crate::domain::{now, Task};
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The default age: finished tasks are kept 7 days.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether `t` is finished (completed, failed or cancelled) at or before `cutoff`.
fn expired(t: &Task, cutoff: DateTime<Utc>) -> bool {
    t.status.is_terminal() && t.finished_time.is_some_and(|f| f <= cutoff)
}

impl TaskService {
    /// Removes every task that is completed, failed or cancelled and finished more than
    /// `older_than` ago; returns how many. A task changed in the meantime (e.g. retried) stays.
    #[tracing::instrument(skip(self))]
    pub async fn cleanup(&self, older_than: Duration) -> Result<usize, TaskError> {
        let Some(cutoff) = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|age| now().checked_sub_signed(age))
        else {
            return Ok(0);
        };
        let filter = ListFilter {
            limit: usize::MAX,
            ..ListFilter::default()
        };
        let state = &self.bus.topology.state;
        let mut removed = 0;
        for t in self.list(&filter).await? {
            if !expired(&t, cutoff) {
                continue;
            }
            // Only the state we judged: a retry in between makes the purge fail, keeping it.
            match state
                .purge_expect_revision(
                    crate::bus::subjects::state_key(&t.assigned_to, &t.id),
                    Some(t.revision),
                )
                .await
            {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(BusError::from_op("kv purge", e).into()),
            }
        }
        tracing::info!(removed, "removed finished tasks");
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewTask, TaskId, TaskStatus};

    #[test]
    fn only_tasks_finished_before_the_cutoff_expire() {
        let new: NewTask =
            serde_json::from_value(serde_json::json!({"task_name": "x", "assigned_to": "anna"}))
                .unwrap();
        let mut t = Task::from_new(TaskId::generate(), new);
        let cutoff = now();
        assert!(!expired(&t, cutoff), "pending");
        t.status = TaskStatus::Running;
        assert!(!expired(&t, cutoff), "running");
        t.status = TaskStatus::Completed;
        t.finished_time = Some(cutoff - chrono::Duration::seconds(1));
        assert!(expired(&t, cutoff));
        t.finished_time = Some(cutoff + chrono::Duration::seconds(1));
        assert!(!expired(&t, cutoff), "finished after the cutoff");
    }
}
