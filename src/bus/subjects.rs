//! The only place subject, stream and bucket names are built.
//!
//! Layout (documented in the README for producers in other languages):
//! - `tasks.<assignee>.<p0|p1|p2>`: tasks that bots claim over the API (`manual`, the default);
//! - `tasks.<assignee>.<p0|p1|p2>.<kind>`: tasks that workers run (`exec`, `agent`, `hook`, `noop`);
//! - `events.<assignee>.<task_id>.<type>`: every task's events, in order; each stored event also
//!   carries the task's state after it (the task ledger), so the last one is the current state.
//!   taskfleet writes them to `ledger.<assignee>.<task_id>.<type>`: the `EVENTS` stream stores
//!   them as `events.…` and republishes each one on core NATS once it is stored, so a core
//!   subscriber of `events.>` sees exactly the stored events (never a write the ledger refused).

use crate::domain::{Assignee, EventKind, Priority, Share, TaskId, TaskKind, TaskStatus};

/// Work-queue stream holding queued tasks.
pub const TASKS_STREAM: &str = "TASKS";
/// Limits stream holding task events with the task's state after each one: the task ledger.
pub const EVENTS_STREAM: &str = "EVENTS";
/// The subjects the ledger is written to (transformed to `events.>` when stored).
pub const LEDGER_WRITES: &str = "ledger.>";
/// Where the ledger keeps its index of tasks by rare final status (failed, cancelled): one small
/// message per such change, written with its event in one atomic batch, so that listing those
/// statuses walks a subject with a literal prefix instead of every event.
pub const INDEX_WRITES: &str = "index.>";
/// The server's copy of the ledger's index entries (failed, cancelled), which listings of those
/// statuses walk: there they are dense, in the ledger a few among millions of events.
pub const INDEX_STREAM: &str = "LEDGER_INDEX";
/// The delivery record statuses (key tokens) the server also copies into a stream of their
/// own, for listings (see `relay/store/record.rs`).
pub const COPIED_DELIVERY_STATUSES: [&str; 2] = ["pending", "dead"];

/// The stream copying the delivery records of `status` (a key token): `DELIVERY_RECORDS_DEAD`.
pub fn delivery_copy_stream(status: &str) -> String {
    format!("DELIVERY_RECORDS_{}", status.to_uppercase())
}

/// `$KV.deliveries.<rest>`: a subject (or filter) in the delivery record bucket.
pub fn delivery_record_subject(rest: &str) -> String {
    format!("$KV.{DELIVERY_BUCKET}.{rest}")
}
/// KV bucket of taskfleet's own bookkeeping (the retention sweeper's cursor).
pub const META_BUCKET: &str = "taskfleet_meta";
/// Before task storage v2 (taskfleet 0.1 sessions 1 and 2): the KV bucket holding each task's
/// state. Its presence marks a store that `taskfleet migrate` must convert.
pub const LEGACY_STATE_BUCKET: &str = "tasks";
/// The stream behind [`LEGACY_STATE_BUCKET`].
pub const LEGACY_STATE_STREAM: &str = "KV_tasks";
/// KV bucket mapping idempotency keys to task ids.
pub const IDEMPOTENCY_BUCKET: &str = "task_idempotency";
/// Limits stream holding tasks that used up their attempts (dead letters).
pub const DEAD_STREAM: &str = "TASKS_DEAD";
/// Work-queue stream of relay deliveries, one subject per destination.
pub const DELIVERIES_STREAM: &str = "DELIVERIES";
/// KV bucket with one record per delivery (attempts, status).
pub const DELIVERY_BUCKET: &str = "deliveries";
/// KV bucket with the state of destinations (disabled after a 410).
pub const DESTINATION_BUCKET: &str = "relay_destinations";
/// KV bucket where workers and relays announce themselves (entries expire by per-message TTL).
pub const WORKER_BUCKET: &str = "taskfleet_workers";
/// KV bucket of flow control: holds of concurrency keys and lanes, rate schedules, overrides
/// (see `limits/`). Keys start with the assignee.
pub const LIMITS_BUCKET: &str = "taskfleet_limits";
/// The relay's durable consumer of every task event.
pub const RELAY_EVENTS_CONSUMER: &str = "relay_events";
/// The priority group the relay pulls its consumers in (`relay_events` and the delivery
/// queues): each consumer hands its messages to one pinned relay replica at a time.
pub const RELAY_GROUP: &str = "relay";
/// Every delivery subject.
pub const ALL_DELIVERIES: &str = "deliveries.>";
/// Every task subject.
pub const ALL_TASKS: &str = "tasks.>";
/// Every delayed task's schedule message (`scheduled.<assignee>.<id>`, in `TASKS`).
pub const ALL_SCHEDULED: &str = "scheduled.>";
/// Every cron schedule's messages (`schedules.<name>.next|tick`, in `TASKS`).
pub const ALL_SCHEDULES: &str = "schedules.>";
/// KV bucket of cron schedules: one entry per schedule name (definition and state).
pub const SCHEDULES_BUCKET: &str = "taskfleet_schedules";
/// The API replicas' shared durable consumer of fired schedule ticks (on `TASKS`).
pub const SCHEDULER_CONSUMER: &str = "scheduler";
/// Every fired tick of every cron schedule: what [`SCHEDULER_CONSUMER`] pulls.
pub const SCHEDULE_TICKS: &str = "schedules.*.tick";
/// Every dead-letter subject.
pub const ALL_DEAD: &str = "dead.>";
/// Every event subject.
pub const ALL_EVENTS: &str = "events.>";

/// The subject a task is queued on: `tasks.<assignee>.<p>` for bot-claimed kinds,
/// `tasks.<assignee>.<p>.<kind>` for worker-run ones, and `….<kind>.s<NN>` for a worker-run task
/// of a tenant (its fair-share turn, see [`Share`]).
pub fn task(
    assignee: &Assignee,
    priority: Priority,
    kind: TaskKind,
    share: Option<Share>,
) -> String {
    match (kind.is_worker_run(), share) {
        (false, _) => format!("tasks.{assignee}.{}", priority.token()),
        (true, None) => format!("tasks.{assignee}.{}.{kind}", priority.token()),
        (true, Some(s)) => format!("tasks.{assignee}.{}.{kind}.{}", priority.token(), s.token()),
    }
}

/// The subject holding a delayed task's schedule message until it fires into the queue.
pub fn scheduled(assignee: &Assignee, id: &TaskId) -> String {
    format!("scheduled.{assignee}.{id}")
}

/// The subject holding cron schedule `name`'s next tick (a message schedule, `@at`).
pub fn schedule_next(name: &str) -> String {
    format!("schedules.{name}.next")
}

/// The subject cron schedule `name`'s ticks fire into.
pub fn schedule_tick(name: &str) -> String {
    format!("schedules.{name}.tick")
}

/// The task a delayed task's schedule subject (`scheduled.<assignee>.<id>`) names.
pub fn parse_scheduled(subject: &str) -> Option<(Assignee, TaskId)> {
    let mut parts = subject.split('.');
    if parts.next()? != "scheduled" {
        return None;
    }
    let assignee = Assignee::parse(parts.next()?).ok()?;
    let id = TaskId::parse(parts.next()?).ok()?;
    parts.next().is_none().then_some((assignee, id))
}

/// What a worker for `assignee` pulls at one priority: every worker-run kind of no tenant, or,
/// with `share`, of the tenants of that fair-share turn.
pub fn worker_filter(assignee: &Assignee, priority: Priority, share: Option<Share>) -> String {
    match share {
        None => format!("tasks.{assignee}.{}.*", priority.token()),
        Some(s) => format!("tasks.{assignee}.{}.*.{}", priority.token(), s.token()),
    }
}

/// Every queued worker-run task of a tenant of `assignee` (any priority, kind and share): what
/// a worker looks at to find the shares with work.
pub fn shared_tasks(assignee: &Assignee) -> String {
    format!("tasks.{assignee}.*.*.*")
}

/// The subjects whose messages together are the queue of one priority, in sequence order:
/// bot-claimed tasks, worker-run tasks, and worker-run tasks of tenants. `None` means every
/// assignee.
pub fn queue_subjects(assignee: Option<&Assignee>, priority: Priority) -> [String; 3] {
    let a = assignee.map_or("*", Assignee::as_str);
    let p = priority.token();
    [
        format!("tasks.{a}.{p}"),
        format!("tasks.{a}.{p}.*"),
        format!("tasks.{a}.{p}.*.*"),
    ]
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
    // A worker-run kind may name its fair-share turn.
    if let Some(share) = parts.next() {
        Share::parse(share).filter(|_| kind.is_worker_run())?;
    }
    parts.next().is_none().then_some((assignee, priority, kind))
}

/// The subject of one event as stored (and as core subscribers see it).
pub fn event(assignee: &Assignee, task: &TaskId, kind: EventKind) -> String {
    format!("events.{assignee}.{task}.{}", kind.as_str())
}

/// Where taskfleet writes one event (stored as [`event`]).
pub fn ledger_write(assignee: &Assignee, task: &TaskId, kind: EventKind) -> String {
    format!("ledger.{assignee}.{task}.{}", kind.as_str())
}

/// Every ledger write of one assignee (its worker's publish permission).
pub fn assignee_ledger(assignee: &Assignee) -> String {
    format!("ledger.{assignee}.>")
}

/// Every stored event of one task: its last message is the task's state, and every write is a
/// compare-and-set against the last sequence on this subject.
pub fn task_ledger(assignee: &Assignee, task: &TaskId) -> String {
    format!("events.{assignee}.{task}.*")
}

/// The same for a task whose assignee is not known yet (ids are unique fleet-wide).
pub fn task_ledger_any_assignee(task: &TaskId) -> String {
    format!("events.*.{task}.*")
}

/// Events of one type, of one assignee or of all (the listing walks these newest first).
pub fn events_of_kind(assignee: Option<&Assignee>, kind: EventKind) -> String {
    format!(
        "events.{}.*.{}",
        assignee.map_or("*", Assignee::as_str),
        kind.as_str()
    )
}

/// The index entry of a task that became `status` (`failed` or `cancelled`).
pub fn status_index(status: TaskStatus, assignee: &Assignee, task: &TaskId) -> String {
    format!("index.{}.{assignee}.{task}", status.as_str())
}

/// Every index entry of one status, of one assignee or of all.
pub fn status_index_filter(status: TaskStatus, assignee: Option<&Assignee>) -> String {
    format!(
        "index.{}.{}.*",
        status.as_str(),
        assignee.map_or("*", Assignee::as_str)
    )
}

/// Every index entry of one task (the sweeper removes them with it).
pub fn task_index(assignee: &Assignee, task: &TaskId) -> String {
    format!("index.*.{assignee}.{task}")
}

/// Every index entry of one assignee (its worker's publish permission).
pub fn assignee_index(assignee: &Assignee) -> String {
    format!("index.*.{assignee}.*")
}

/// Assignee and task id of an index subject.
pub fn parse_index(subject: &str) -> Option<(Assignee, TaskId)> {
    let mut parts = subject.split('.');
    if parts.next()? != "index" {
        return None;
    }
    TaskStatus::parse(parts.next()?)?;
    let assignee = Assignee::parse(parts.next()?).ok()?;
    let task = TaskId::parse(parts.next()?).ok()?;
    parts.next().is_none().then_some((assignee, task))
}

/// Assignee, task id and event type of a stored event subject.
pub fn parse_event(subject: &str) -> Option<(Assignee, TaskId, EventKind)> {
    let mut parts = subject.split('.');
    if parts.next()? != "events" {
        return None;
    }
    let assignee = Assignee::parse(parts.next()?).ok()?;
    let task = TaskId::parse(parts.next()?).ok()?;
    let kind = EventKind::parse(parts.next()?)?;
    parts.next().is_none().then_some((assignee, task, kind))
}

/// Every event of one task.
pub fn task_events(task: &TaskId) -> String {
    format!("events.*.{task}.>")
}

/// The durable pull consumer shared by every worker replica of `assignee` at `priority`: of
/// the tasks of no tenant, or of one fair-share turn.
pub fn worker_consumer(assignee: &Assignee, priority: Priority, share: Option<Share>) -> String {
    match share {
        None => format!("worker_{assignee}_{}", priority.token()),
        Some(s) => format!("worker_{assignee}_{}_{}", priority.token(), s.token()),
    }
}

/// Every queue subject of one assignee (a worker's doorbell: any publish wakes it up).
pub fn assignee_tasks(assignee: &Assignee) -> String {
    format!("tasks.{assignee}.>")
}

/// Wakes idle workers of `assignee` (core NATS, outside every stream), e.g. after a hand-back.
pub fn wake(assignee: &Assignee) -> String {
    format!("wake.{assignee}")
}

/// A worker's request to the API to check its delivered queue messages for ones no client can
/// read (core NATS, outside every stream; see `tasks/unreadable.rs`). `None`: every assignee's.
pub fn queue_check(assignee: Option<&Assignee>) -> String {
    format!("queue.check.{}", assignee.map_or("*", Assignee::as_str))
}

/// Requests to the worker running a task (stdin writes), answered by that worker.
pub fn control(assignee: &Assignee, task: &TaskId, verb: &str) -> String {
    format!("control.{assignee}.{task}.{verb}")
}

/// Every control request for `assignee`'s running tasks.
pub fn assignee_control(assignee: &Assignee) -> String {
    format!("control.{assignee}.>")
}

/// Every `cancelled` event of one assignee (workers stop the process at once).
pub fn assignee_cancellations(assignee: &Assignee) -> String {
    format!("events.{assignee}.*.cancelled")
}

/// The dead-letter subject of one task.
pub fn dead(assignee: &Assignee, task: &TaskId) -> String {
    format!("dead.{assignee}.{task}")
}

/// Every dead letter of one assignee, or of all when `None`.
pub fn dead_filter(assignee: Option<&Assignee>) -> String {
    format!("dead.{}.*", assignee.map_or("*", Assignee::as_str))
}

/// The queue of one destination (`key` from `Destination::key`).
pub fn delivery(key: &str) -> String {
    format!("deliveries.{key}")
}

/// The durable consumer that delivers to one destination.
pub fn delivery_consumer(key: &str) -> String {
    format!("relay_{key}")
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
            task(&anna(), Priority::P1, TaskKind::Manual, None),
            "tasks.anna.p1"
        );
        assert_eq!(
            task(&anna(), Priority::P0, TaskKind::Exec, None),
            "tasks.anna.p0.exec"
        );
        assert_eq!(
            worker_filter(&anna(), Priority::P2, None),
            "tasks.anna.p2.*"
        );
    }

    #[test]
    fn a_tenants_worker_task_names_its_fair_share_turn_and_bot_tasks_do_not() {
        let turn = Share::of("hope").token();
        let hope = Some(Share::of("hope"));
        assert_eq!(
            task(&anna(), Priority::P1, TaskKind::Exec, hope),
            format!("tasks.anna.p1.exec.{turn}")
        );
        assert_eq!(
            task(&anna(), Priority::P1, TaskKind::Manual, hope),
            "tasks.anna.p1"
        );
        assert_eq!(
            worker_filter(&anna(), Priority::P1, hope),
            format!("tasks.anna.p1.*.{turn}")
        );
        assert_ne!(
            worker_consumer(&anna(), Priority::P1, hope),
            worker_consumer(&anna(), Priority::P1, None)
        );
        let subject = task(&anna(), Priority::P1, TaskKind::Exec, hope);
        assert_eq!(
            parse_task(&subject),
            Some((anna(), Priority::P1, TaskKind::Exec))
        );
        assert_eq!(parse_task("tasks.anna.p1.exec.s99"), None);
        assert_eq!(parse_task("tasks.anna.p1.s01"), None);
    }

    #[test]
    fn queue_subjects_cover_both_forms() {
        assert_eq!(
            queue_subjects(Some(&anna()), Priority::P0),
            [
                "tasks.anna.p0".to_string(),
                "tasks.anna.p0.*".to_string(),
                "tasks.anna.p0.*.*".to_string()
            ]
        );
        assert_eq!(queue_subjects(None, Priority::P2)[0], "tasks.*.p2");
    }

    #[test]
    fn task_subjects_round_trip_and_junk_is_refused() {
        for kind in [TaskKind::Manual, TaskKind::Agent] {
            let s = task(&anna(), Priority::P2, kind, None);
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
    fn worker_subjects_are_scoped_to_one_assignee() {
        let id = TaskId::parse("T1").unwrap();
        assert_eq!(
            worker_consumer(&anna(), Priority::P1, None),
            "worker_anna_p1"
        );
        assert_eq!(assignee_tasks(&anna()), "tasks.anna.>");
        assert_eq!(wake(&anna()), "wake.anna");
        assert_eq!(control(&anna(), &id, "input"), "control.anna.T1.input");
        assert_eq!(assignee_control(&anna()), "control.anna.>");
        assert_eq!(assignee_cancellations(&anna()), "events.anna.*.cancelled");
        assert_eq!(task_ledger(&anna(), &id), "events.anna.T1.*");
        assert_eq!(task_ledger_any_assignee(&id), "events.*.T1.*");
        assert_eq!(assignee_ledger(&anna()), "ledger.anna.>");
        assert_eq!(dead(&anna(), &id), "dead.anna.T1");
        assert_eq!(dead_filter(None), "dead.*.*");
    }

    #[test]
    fn event_subjects_include_assignee_and_task() {
        let id = TaskId::parse("01JD").unwrap();
        assert_eq!(
            event(&anna(), &id, EventKind::Started),
            "events.anna.01JD.started"
        );
        assert_eq!(
            ledger_write(&anna(), &id, EventKind::Started),
            "ledger.anna.01JD.started"
        );
        assert_eq!(task_events(&id), "events.*.01JD.>");
        assert_eq!(assignee_events(&anna()), "events.anna.>");
        assert_eq!(
            events_of_kind(Some(&anna()), EventKind::Failed),
            "events.anna.*.failed"
        );
        assert_eq!(
            parse_event("events.anna.01JD.started"),
            Some((anna(), id.clone(), EventKind::Started))
        );
        assert_eq!(parse_event("events.anna.01JD.nope"), None);
        assert_eq!(parse_event("ledger.anna.01JD.started"), None);
        let failed = status_index(TaskStatus::Failed, &anna(), &id);
        assert_eq!(failed, "index.failed.anna.01JD");
        assert_eq!(parse_index(&failed), Some((anna(), id.clone())));
        assert_eq!(
            status_index_filter(TaskStatus::Cancelled, None),
            "index.cancelled.*.*"
        );
        assert_eq!(task_index(&anna(), &id), "index.*.anna.01JD");
    }
}
