//! The vocabulary of taskfleet: ids, names, priorities, statuses, tasks and their events.
//!
//! Everything here is pure data plus the rules that govern it (parsing, the state machine);
//! nothing in this module talks to NATS or HTTP.

pub mod cron;
mod event;
pub mod flow;
mod names;
pub mod payload;
mod stall;
mod task;
pub mod timestamp;

pub use cron::{CronError, CronSpec};
pub use event::{EventKind, LogEntry, TaskEvent};
pub use flow::{DeclaredLimits, FlowKeys, KeyLimits, Rate, Share, SHARES};
pub use names::{Assignee, DomainError, Priority, TaskId, TaskKind};
pub use stall::StallRule;
pub use task::{
    after_seconds, limits, run_at_field, Action, Lease, NewTask, Progress, Task, TaskStatus,
    DEFAULT_MAX_ATTEMPTS,
};

/// Current time, as stored in every record (UTC, RFC 3339 on the wire).
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
