//! The only place subject, stream and bucket names are built.
//!
//! Layout (documented in the README for producers in other languages):
//! - `tasks.<assignee>.<p0|p1|p2>`: tasks that bots claim over the API (`manual`, the default);
//! - `tasks.<assignee>.<p0|p1|p2>.<kind>`: tasks that workers run (`exec`, `agent`, `hook`, `noop`);
//! - `events.<assignee>.<task_id>.<type>`: every task's events, in order.

use crate::domain::{Assignee, EventKind, Priority, TaskId, TaskKind};

/// Work-queue stream holding queued tasks.
pub const TASKS_STREAM: &str = "TASKS";
/// Limits stream holding task events (the task log).
pub const EVENTS_STREAM: &str = "EVENTS";
/// KV bucket with one entry per task (its current state).
pub const STATE_BUCKET: &str = "tasks";
/// The stream behind [`STATE_BUCKET`].
pub const STATE_STREAM: &str = "KV_tasks";
/// KV bucket mapping idempotency keys to task ids.
pub const IDEMPOTENCY_BUCKET: &str = "task_idempotency";
/// Every task subject.
pub const ALL_TASKS: &str = "tasks.>";
/// Every event subject.
pub const ALL_EVENTS: &str = "events.>";

/// The subject a task is queued on.
pub fn task(assignee: &Assignee, priority: Priority, kind: TaskKind) -> String {
    if kind.is_worker_run() {
        format!("tasks.{assignee}.{}.{kind}", priority.token())
    } else {
        format!("tasks.{assignee}.{}", priority.token())
    }
}

/// What a worker for `assignee` pulls at one priority (every worker-run kind).
pub fn worker_filter(assignee: &Assignee, priority: Priority) -> String {
    format!("tasks.{assignee}.{}.*", priority.token())
}

/// The two subjects whose messages together are the queue of one priority, in sequence order:
/// bot-claimed tasks and worker-run tasks. `None` means every assignee.
pub fn queue_subjects(assignee: Option<&Assignee>, priority: Priority) -> [String; 2] {
    let a = assignee.map_or("*", Assignee::as_str);
    let p = priority.token();
    [format!("tasks.{a}.{p}"), format!("tasks.{a}.{p}.*")]
}

/// Splits a task subject into assignee, priority and kind.
pub fn parse_task(subject: &str) -> Option<(Assignee, Priority, TaskKind)> {
    let mut parts = subject.split('.');
    if parts.next()? != "tasks" {
        return None;
    }
    let assignee = Assignee::parse(parts.next()?).ok()?;
    let priority = Priority::parse(parts.next()?).ok()?;
    let kind = match parts.next() {
        None => TaskKind::Manual,
        Some(k) => TaskKind::parse(k).ok()?,
    };
    parts.next().is_none().then_some((assignee, priority, kind))
}

/// The subject of one event.
pub fn event(assignee: &Assignee, task: &TaskId, kind: EventKind) -> String {
    format!("events.{assignee}.{task}.{}", kind.as_str())
}

/// Every event of one task.
pub fn task_events(task: &TaskId) -> String {
    format!("events.*.{task}.>")
}

/// Every event of one assignee.
pub fn assignee_events(assignee: &Assignee) -> String {
    format!("events.{assignee}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anna() -> Assignee {
        Assignee::parse("anna").unwrap()
    }

    #[test]
    fn manual_tasks_use_the_three_token_subject_and_worker_kinds_add_the_kind() {
        assert_eq!(
            task(&anna(), Priority::P1, TaskKind::Manual),
            "tasks.anna.p1"
        );
        assert_eq!(
            task(&anna(), Priority::P0, TaskKind::Exec),
            "tasks.anna.p0.exec"
        );
        assert_eq!(worker_filter(&anna(), Priority::P2), "tasks.anna.p2.*");
    }

    #[test]
    fn queue_subjects_cover_both_forms() {
        assert_eq!(
            queue_subjects(Some(&anna()), Priority::P0),
            ["tasks.anna.p0".to_string(), "tasks.anna.p0.*".to_string()]
        );
        assert_eq!(queue_subjects(None, Priority::P2)[0], "tasks.*.p2");
    }

    #[test]
    fn task_subjects_round_trip_and_junk_is_refused() {
        for kind in [TaskKind::Manual, TaskKind::Agent] {
            let s = task(&anna(), Priority::P2, kind);
            assert_eq!(parse_task(&s), Some((anna(), Priority::P2, kind)));
        }
        for bad in [
            "tasks.anna",
            "tasks.anna.p3",
            "tasks.Anna.p0",
            "tasks.anna.p0.x",
            "jobs.anna.p0",
            "tasks.anna.p0.exec.more",
        ] {
            assert_eq!(parse_task(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_subjects_include_assignee_and_task() {
        let id = TaskId::parse("01JD").unwrap();
        assert_eq!(
            event(&anna(), &id, EventKind::Started),
            "events.anna.01JD.started"
        );
        assert_eq!(task_events(&id), "events.*.01JD.>");
        assert_eq!(assignee_events(&anna()), "events.anna.>");
    }
}
