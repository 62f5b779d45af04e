//! The stall rule: when a running task counts as stalled. One rule for the relay's `stalled`
//! events, the API's `status=stalled` listing, the overview's and `/metrics`' stalled counts, and
//! `pulse status` (which asks the API); its threshold is the config's `relay.stall_after_s`.

use super::task::{Task, TaskStatus};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// A task is stalled when it is running and has had no update for longer than `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallRule {
    /// How long a running task may go without an update (event) before it counts as stalled.
    pub after: Duration,
}

impl Default for StallRule {
    /// Three minutes (`relay.stall_after_s = 180`).
    fn default() -> Self {
        Self::from_secs(180)
    }
}

impl StallRule {
    /// The rule with a threshold of `after`.
    pub fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The rule with a threshold of `secs` seconds.
    pub fn from_secs(secs: u64) -> Self {
        Self::new(Duration::from_secs(secs))
    }

    /// Whether `task` is running and unchanged (its `updated_time`) for longer than `after` at
    /// `now`; the same as `task.updated_time < self.since(now)` for a running task.
    pub fn is_stalled(&self, task: &Task, now: DateTime<Utc>) -> bool {
        task.status == TaskStatus::Running && task.updated_time < self.since(now)
    }

    /// Whether a running task quiet for `quiet` (no update in that long) counts as stalled.
    pub fn is_quiet_too_long(&self, quiet: Duration) -> bool {
        quiet > self.after
    }

    /// The cut-off at `now`: running tasks last updated before it are stalled.
    pub fn since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.after)
            .ok()
            .and_then(|after| now.checked_sub_signed(after))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewTask, TaskId};

    fn running_since(updated: DateTime<Utc>) -> Task {
        let new: NewTask =
            serde_json::from_value(serde_json::json!({"task_name": "t", "assigned_to": "anna"}))
                .unwrap();
        let mut t = Task::from_new(TaskId::generate(), new);
        t.status = TaskStatus::Running;
        t.updated_time = updated;
        t
    }

    #[test]
    fn a_running_task_is_stalled_only_after_more_than_the_threshold_without_an_update() {
        let rule = StallRule::from_secs(60);
        let now = crate::domain::now();
        let at = |s: i64| running_since(now - chrono::Duration::seconds(s));
        assert!(!rule.is_stalled(&at(59), now));
        assert!(!rule.is_stalled(&at(60), now));
        assert!(rule.is_stalled(&at(61), now));
        assert!(!rule.is_quiet_too_long(Duration::from_secs(60)));
        assert!(rule.is_quiet_too_long(Duration::from_secs(61)));
    }

    #[test]
    fn only_running_tasks_can_be_stalled() {
        let rule = StallRule::from_secs(1);
        let now = crate::domain::now();
        let mut t = running_since(now - chrono::Duration::hours(1));
        for status in TaskStatus::ALL {
            t.status = status;
            assert_eq!(rule.is_stalled(&t, now), status == TaskStatus::Running);
        }
    }

    #[test]
    fn the_default_is_three_minutes_and_a_huge_threshold_stalls_nothing() {
        assert_eq!(StallRule::default().after, Duration::from_secs(180));
        let now = crate::domain::now();
        let never = StallRule::from_secs(u64::MAX);
        assert_eq!(never.since(now), DateTime::<Utc>::MIN_UTC);
        assert!(!never.is_stalled(&running_since(now - chrono::Duration::days(9999)), now));
    }
}
