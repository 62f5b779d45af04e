//! Who may do what: one NATS user per role and its exact subject permissions, built from
//! [`crate::bus::subjects`] (fleet subjects, streams, buckets, consumers) and
//! [`crate::bus::permissions`] (JetStream API subjects), never retyped.
//!
//! | user | publishes | subscribes | JetStream |
//! |---|---|---|---|
//! | `api` | `tasks.>`, `ledger.>`, `deliveries.>`, `dead.*.*`, `schedules.>`, the seven KV buckets, `control.<a>.>` per assignee, replies to requests it got | its inbox, `queue.check.*` | creates and updates the streams and buckets; direct gets on all; leader reads and purges (retention) of `EVENTS`; consumers on `EVENTS`; deletes queue messages, and ledger messages no client can read |
//! | `relay` | `deliveries.>`, `ledger.*.*.stalled`, KV `deliveries`, `relay_destinations`, `taskfleet_workers` under `relay._` | its inbox | pulls `relay_events` and `relay_*` on `DELIVERIES` (and replaces a `relay_*` kept on disk); reads the ledger (direct and leader gets), the queue and delivery records (direct gets), `DELIVERIES` messages as JSON (a job no client can parse) |
//! | `worker-<a>` | `ledger.<a>.>`, `dead.<a>.*`, `wake.<a>`, `queue.check.<a>`, KV `taskfleet_workers` under `worker.<a>` and `taskfleet_limits` under `<a>`, replies to requests it got | `tasks.<a>.>`, `wake.<a>`, `events.<a>.>`, `control.<a>.>`, its inbox | creates and pulls `worker_<a>_<p0,p1,p2>` (filter `tasks.<a>.<p>.*` only); direct gets of `events.<a>.>` by literal subject |
//!
//! Everyone may also ask `$SYS.REQ.USER.INFO` (its own permissions) and stream info of the
//! fleet's streams (how a process opens the topology it may not create).

use crate::bus::permissions::{
    acks, consumer_api, direct_get, flow_control, inbox_prefix, js_info, kv_keys, kv_stream,
    stream_api, USER_INFO,
};
use crate::bus::subjects;
use crate::domain::{Assignee, EventKind, Priority, Share, TaskId};

/// One process kind of the fleet, and so one NATS user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API (also `taskfleet up`'s own connection): creates the topology.
    Api,
    /// The relay: reads events, delivers them.
    Relay,
    /// Every worker replica of one assignee (they share one user).
    Worker(Assignee),
}

/// The subjects one user may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPermissions {
    /// Publish allow list.
    pub publish: Vec<String>,
    /// Subscribe allow list.
    pub subscribe: Vec<String>,
    /// May publish to the reply subject of a request it received (once, within 2 minutes).
    pub allow_responses: bool,
}

impl Role {
    /// The API, the relay, then one worker per assignee.
    pub fn all(assignees: &[Assignee]) -> Vec<Role> {
        let mut roles = vec![Role::Api, Role::Relay];
        roles.extend(assignees.iter().cloned().map(Role::Worker));
        roles
    }

    /// The NATS user name: `api`, `relay`, `worker-<assignee>`.
    pub fn user(&self) -> String {
        match self {
            Role::Api => "api".into(),
            Role::Relay => "relay".into(),
            Role::Worker(a) => format!("worker-{a}"),
        }
    }

    /// One line saying what the user is for (a comment in the generated config).
    pub fn purpose(&self) -> String {
        match self {
            Role::Api => {
                "the HTTP API: creates streams and buckets, queues tasks for everyone".into()
            }
            Role::Relay => "the relay: reads every event, queues and records deliveries".into(),
            Role::Worker(a) => format!("workers of {a}: pull and run {a}'s tasks only"),
        }
    }

    /// The user's permissions; `assignees` are the fleet's (the API may send control requests
    /// to their workers).
    pub fn permissions(&self, assignees: &[Assignee]) -> UserPermissions {
        let mut p = common(&self.user());
        match self {
            Role::Api => api(&mut p, assignees),
            Role::Relay => relay(&mut p),
            Role::Worker(a) => worker(&mut p, a),
        }
        p
    }
}

/// Every stream of the fleet, KV buckets' streams included.
pub fn fleet_streams() -> Vec<String> {
    let mut s: Vec<String> = [
        subjects::TASKS_STREAM,
        subjects::EVENTS_STREAM,
        subjects::INDEX_STREAM,
        subjects::DEAD_STREAM,
        subjects::DELIVERIES_STREAM,
    ]
    .map(String::from)
    .into();
    s.extend(buckets().map(kv_stream));
    // Copies of the pending and dead delivery records (read by listings, filled by the server).
    s.extend(
        subjects::COPIED_DELIVERY_STATUSES
            .into_iter()
            .map(subjects::delivery_copy_stream),
    );
    s
}

fn buckets() -> [&'static str; 7] {
    [
        subjects::LIMITS_BUCKET,
        subjects::META_BUCKET,
        subjects::SCHEDULES_BUCKET,
        subjects::IDEMPOTENCY_BUCKET,
        subjects::DELIVERY_BUCKET,
        subjects::DESTINATION_BUCKET,
        subjects::WORKER_BUCKET,
    ]
}

/// Announcing oneself in the worker registry under `prefix` (`worker.<a>`, `relay._`).
fn announce(p: &mut UserPermissions, prefix: &str) {
    p.publish
        .push(format!("$KV.{}.{prefix}.>", subjects::WORKER_BUCKET));
}

fn common(user: &str) -> UserPermissions {
    let mut publish = vec![USER_INFO.to_string()];
    publish.extend(fleet_streams().iter().map(|s| stream_api("INFO", s)));
    UserPermissions {
        publish,
        subscribe: vec![format!("{}.>", inbox_prefix(user))],
        allow_responses: false,
    }
}

/// Creating short-lived consumers (KV watches, log readers, feeds) on `stream`; with `pull`,
/// also pulling from and deleting them. Unnamed creates carry their filter only in the body.
fn reader_consumers(p: &mut UserPermissions, stream: &str, pull: bool) {
    p.publish.push(consumer_api("CREATE", stream, None));
    p.publish.push(consumer_api("CREATE", stream, Some(">")));
    p.publish.push(consumer_api("INFO", stream, Some("*")));
    if pull {
        p.publish.push(consumer_api("DELETE", stream, Some("*")));
        p.publish.push(consumer_api("MSG.NEXT", stream, Some("*")));
    }
}

fn api(p: &mut UserPermissions, assignees: &[Assignee]) {
    p.publish.push(js_info());
    for s in fleet_streams() {
        p.publish.push(stream_api("CREATE", &s));
        p.publish.push(stream_api("UPDATE", &s));
        p.publish.push(direct_get(&s, None));
        p.publish.push(direct_get(&s, Some(">")));
    }
    // Claiming or cancelling a queued task removes its message; a message no client can parse
    // is read as JSON and moved to the dead letters (see `tasks/unreadable.rs`).
    p.publish
        .push(stream_api("MSG.DELETE", subjects::TASKS_STREAM));
    p.publish
        .push(stream_api("MSG.GET", subjects::TASKS_STREAM));
    // ...also when a worker, which may not read the queue as JSON, asks it to (the check reads
    // the worker consumers' delivered range), and writes such a message's dead letter.
    p.subscribe.push(subjects::queue_check(None));
    p.publish.push(subjects::dead_filter(None));
    p.publish
        .push(consumer_api("INFO", subjects::TASKS_STREAM, Some("*")));
    p.allow_responses = true;
    // A store from before task storage v2: the API refuses it at start, `migrate` converts it.
    let legacy = subjects::LEGACY_STATE_STREAM;
    p.publish.push(stream_api("INFO", legacy));
    p.publish.push(stream_api("DELETE", legacy));
    p.publish.push(direct_get(legacy, None));
    // Task state read from the ledger's leader; finished tasks purged after the retention; a
    // message no client can read, written into a task's log by a fleet user, read as JSON,
    // moved to the dead letters and deleted (see `tasks/unreadable.rs`).
    p.publish
        .push(stream_api("MSG.GET", subjects::EVENTS_STREAM));
    p.publish
        .push(stream_api("MSG.DELETE", subjects::EVENTS_STREAM));
    p.publish.push(stream_api("PURGE", subjects::EVENTS_STREAM));
    // An index entry no client can read is read as JSON and removed from the listings' copy.
    p.publish
        .push(stream_api("MSG.GET", subjects::INDEX_STREAM));
    p.publish
        .push(stream_api("MSG.DELETE", subjects::INDEX_STREAM));
    p.publish.push(stream_api("INFO", subjects::INDEX_STREAM));
    // The sweeper removes a swept task's entries from the copy too (listings trust them).
    p.publish.push(stream_api("PURGE", subjects::INDEX_STREAM));
    // Live feeds and the retention walk read EVENTS (delivery records are read with direct
    // gets only).
    let events = subjects::EVENTS_STREAM;
    reader_consumers(p, events, true);
    p.publish.push(flow_control(events));
    for s in [
        subjects::ALL_TASKS,
        subjects::ALL_SCHEDULED,
        subjects::LEDGER_WRITES,
        subjects::INDEX_WRITES,
        subjects::ALL_DELIVERIES,
    ] {
        p.publish.push(s.to_string());
    }
    p.publish.extend(buckets().map(kv_keys));
    p.publish
        .extend(assignees.iter().map(subjects::assignee_control));
    scheduler(p);
}

/// Cron schedules: arming ticks (`schedules.<name>.next`), removing them (a purge of `TASKS`),
/// and the shared durable consumer of fired ticks.
fn scheduler(p: &mut UserPermissions) {
    let (tasks, consumer) = (subjects::TASKS_STREAM, subjects::SCHEDULER_CONSUMER);
    p.publish.push(subjects::ALL_SCHEDULES.to_string());
    p.publish.push(stream_api("PURGE", tasks));
    p.publish.push(consumer_api(
        "CREATE",
        tasks,
        Some(&format!("{consumer}.{}", subjects::SCHEDULE_TICKS)),
    ));
    p.publish
        .push(consumer_api("CREATE", tasks, Some(consumer)));
    p.publish
        .push(consumer_api("DURABLE.CREATE", tasks, Some(consumer)));
    p.publish
        .push(consumer_api("MSG.NEXT", tasks, Some(consumer)));
    p.publish.extend(acks(tasks, consumer));
}

fn relay(p: &mut UserPermissions) {
    let (events, consumer) = (subjects::EVENTS_STREAM, subjects::RELAY_EVENTS_CONSUMER);
    p.publish.push(consumer_api("INFO", events, Some(consumer)));
    p.publish
        .push(consumer_api("MSG.NEXT", events, Some(consumer)));
    p.publish
        .push(consumer_api("UNPIN", events, Some(consumer)));
    p.publish.extend(acks(events, consumer));
    announce(p, "relay._");

    // One durable `relay_<key>` per destination, filtered on `deliveries.<key>`.
    let deliveries = subjects::DELIVERIES_STREAM;
    let create = format!("*.{}", subjects::delivery("*"));
    p.publish.push(consumer_api("NAMES", deliveries, None));
    p.publish
        .push(consumer_api("CREATE", deliveries, Some(&create)));
    p.publish.push(consumer_api("INFO", deliveries, Some("*")));
    // A consumer kept on disk (made by an older relay) is replaced by one kept in memory.
    p.publish
        .push(consumer_api("DELETE", deliveries, Some("*")));
    // A loop takes its destination over at start and hands it back at shutdown.
    p.publish.push(consumer_api("UNPIN", deliveries, Some("*")));
    p.publish
        .push(consumer_api("MSG.NEXT", deliveries, Some("*")));
    p.publish.extend(acks(deliveries, "*"));
    // A job no client can parse is read as JSON and ended (see `bus/raw.rs`).
    p.publish.push(stream_api("MSG.GET", deliveries));
    p.publish.push(subjects::ALL_DELIVERIES.to_string());
    // Stalled tasks are reported by the relay, for any assignee.
    p.publish.push(pattern(&subjects::ledger_write(
        &any_assignee(),
        &any_task(),
        EventKind::Stalled,
    )));
    // Task state: the ledger's last records (leader reads before a write; direct gets of many),
    // and the queue (running tasks at start-up).
    p.publish
        .push(stream_api("MSG.GET", subjects::EVENTS_STREAM));
    p.publish.push(direct_get(subjects::EVENTS_STREAM, None));
    p.publish.push(direct_get(subjects::TASKS_STREAM, None));
    // Delivery records: read by id with a direct get of a wildcard subject (in the body),
    // written as values and delete markers (a status change is one atomic batch of both).
    let records = subjects::DELIVERY_BUCKET;
    p.publish.push(direct_get(&kv_stream(records), None));
    p.publish.push(kv_keys(records));
    // Destination state: plain KV reads and writes.
    let destinations = subjects::DESTINATION_BUCKET;
    p.publish.push(direct_get(
        &kv_stream(destinations),
        Some(&kv_keys(destinations)),
    ));
    p.publish.push(kv_keys(destinations));
}

fn worker(p: &mut UserPermissions, a: &Assignee) {
    let tasks = subjects::TASKS_STREAM;
    // Its consumers: one per priority for tasks of no tenant, one per fair-share turn.
    for priority in Priority::ALL {
        for share in Share::every_turn() {
            let c = subjects::worker_consumer(a, priority, share);
            let filtered = format!("{c}.{}", subjects::worker_filter(a, priority, share));
            p.publish
                .push(consumer_api("CREATE", tasks, Some(&filtered)));
            p.publish.push(consumer_api("INFO", tasks, Some(&c)));
            p.publish.push(consumer_api("MSG.NEXT", tasks, Some(&c)));
            p.publish.extend(acks(tasks, &c));
        }
    }
    // Task state is the ledger: this assignee's records only, appended by compare-and-set and
    // read with direct gets of literal subjects (the leader's MSG.GET and a direct get with a
    // body take any subject, so they are not granted).
    p.publish.push(subjects::assignee_ledger(a));
    // A failed task's index entry, written in the batch of its `failed` event.
    p.publish.push(subjects::assignee_index(a));
    p.publish.push(direct_get(
        subjects::EVENTS_STREAM,
        Some(&subjects::assignee_events(a)),
    ));
    p.publish.push(subjects::dead_filter(Some(a)));
    p.publish.push(subjects::wake(a));
    announce(p, &format!("worker.{a}"));
    // Flow control: its assignee's holds, rates and declared limits (see `limits/`).
    let limits = format!("$KV.{}.{a}.>", subjects::LIMITS_BUCKET);
    p.publish.push(direct_get(
        &kv_stream(subjects::LIMITS_BUCKET),
        Some(&limits),
    ));
    p.publish.push(limits);
    // Holds delayed tasks (a message published to NATS asking to run later; a schedule armed
    // again). A schedule fires only into its own task's queue subject: `decode_queued` refuses
    // a fired message whose schedule subject names another assignee or task.
    p.publish.push(format!("scheduled.{a}.*"));
    // Asks the API to move aside a queue message its reader connection could not parse.
    p.publish.push(subjects::queue_check(Some(a)));
    // Answers to stdin writes (`control.<a>.<id>.input` requests from the API).
    p.allow_responses = true;

    p.subscribe.push(subjects::assignee_tasks(a));
    p.subscribe.push(subjects::wake(a));
    // Its own tasks' live events (cancellations; a hook task's bot reporting back).
    p.subscribe.push(subjects::assignee_events(a));
    p.subscribe.push(subjects::assignee_control(a));
}

/// Placeholder for "any assignee / any task" when a pattern is built with a `subjects` builder.
const ANY: &str = "__any__";

fn any_assignee() -> Assignee {
    Assignee::parse(ANY).expect("the placeholder is a valid assignee")
}

fn any_task() -> TaskId {
    TaskId::parse(ANY).expect("the placeholder is a valid task id")
}

/// `subject` with every placeholder token replaced by `*`.
fn pattern(subject: &str) -> String {
    subject
        .split('.')
        .map(|t| if t == ANY { "*" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::permissions::subject_matches;

    fn a(name: &str) -> Assignee {
        Assignee::parse(name).unwrap()
    }

    fn may(list: &[String], subject: &str) -> bool {
        list.iter().any(|p| subject_matches(p, subject))
    }

    #[test]
    fn annas_worker_reaches_nothing_of_trumps() {
        let p = Role::Worker(a("anna")).permissions(&[a("anna"), a("trump")]);
        assert!(p
            .publish
            .iter()
            .chain(&p.subscribe)
            .all(|s| !s.contains("trump")));
        assert!(may(&p.publish, "ledger.anna.T1.started"));
        assert!(may(&p.publish, "index.failed.anna.T1"));
        assert!(!may(&p.publish, "index.failed.trump.T1"));
        assert!(!may(&p.publish, "ledger.trump.T1.started"));
        assert!(may(
            &p.publish,
            "$JS.API.DIRECT.GET.EVENTS.events.anna.T1.created"
        ));
        assert!(!may(&p.publish, "$JS.API.DIRECT.GET.EVENTS"));
        assert!(!may(&p.publish, "$JS.API.STREAM.MSG.GET.EVENTS"));
        assert!(
            !may(&p.publish, "tasks.anna.p0.exec"),
            "workers never queue tasks"
        );
        assert!(may(
            &p.publish,
            "$JS.API.CONSUMER.CREATE.TASKS.worker_anna_p0.tasks.anna.p0.*"
        ));
        assert!(!may(
            &p.publish,
            "$JS.API.CONSUMER.CREATE.TASKS.worker_anna_p0.tasks.trump.p0.*"
        ));
        assert!(!may(&p.publish, "$JS.API.CONSUMER.CREATE.TASKS"));
        assert!(may(
            &p.publish,
            "$JS.API.CONSUMER.MSG.NEXT.TASKS.worker_anna_p2"
        ));
        assert!(!may(
            &p.publish,
            "$JS.API.CONSUMER.MSG.NEXT.TASKS.worker_trump_p2"
        ));
        assert!(may(&p.publish, "$JS.ACK.TASKS.worker_anna_p1.1.2.3.4.5"));
        assert!(!may(&p.publish, "$JS.API.STREAM.CREATE.TASKS"));
        assert!(may(&p.subscribe, "tasks.anna.p0.exec"));
        assert!(!may(&p.subscribe, "tasks.trump.p0.exec"));
        assert!(!may(&p.subscribe, "_INBOX.x"));
        assert!(p.allow_responses);
    }

    #[test]
    fn the_api_queues_for_everyone_and_the_relay_only_reads_events() {
        let fleet = [a("anna")];
        let api = Role::Api.permissions(&fleet);
        assert!(may(&api.publish, "tasks.someone_new.p1"));
        assert!(may(&api.publish, "$JS.API.STREAM.CREATE.EVENTS"));
        assert!(may(&api.publish, "ledger.anna.T1.created"));
        assert!(may(&api.publish, "$JS.API.STREAM.PURGE.EVENTS"));
        assert!(may(&api.publish, "$JS.API.STREAM.MSG.DELETE.EVENTS"));
        assert!(may(&api.publish, "$JS.API.STREAM.MSG.GET.EVENTS"));
        assert!(may(&api.publish, "$JS.API.STREAM.MSG.DELETE.LEDGER_INDEX"));
        assert!(may(&api.publish, "control.anna.T1.input"));
        assert!(!may(&api.publish, "control.trump.T1.input"));
        let relay = Role::Relay.permissions(&fleet);
        assert!(!may(&relay.publish, "tasks.anna.p0"));
        assert!(may(&relay.publish, "ledger.anna.T1.stalled"));
        assert!(!may(&relay.publish, "ledger.anna.T1.completed"));
        assert!(may(
            &relay.publish,
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.relay_events"
        ));
        assert!(may(
            &relay.publish,
            "$JS.API.CONSUMER.CREATE.DELIVERIES.relay_h_1.deliveries.h_1"
        ));
        assert!(!may(&relay.publish, "$JS.API.STREAM.UPDATE.EVENTS"));
        assert!(
            !may(&relay.publish, "$JS.API.STREAM.PURGE.EVENTS"),
            "the relay reads tasks only"
        );
    }

    #[test]
    fn the_relay_reads_and_moves_delivery_records_and_the_api_lists_them_and_their_copies() {
        let relay = Role::Relay.permissions(&[a("anna")]);
        assert!(may(&relay.publish, "$JS.API.DIRECT.GET.KV_deliveries"));
        assert!(may(&relay.publish, "$JS.API.STREAM.MSG.GET.DELIVERIES"));
        assert!(!may(&relay.publish, "$JS.API.STREAM.MSG.GET.TASKS"));
        assert!(may(
            &relay.publish,
            "$KV.deliveries.dead.n_hook.n_hook.evt_1"
        ));
        assert!(!may(
            &relay.publish,
            "$JS.API.DIRECT.GET.DELIVERY_RECORDS_DEAD"
        ));
        assert!(!may(
            &relay.publish,
            "$JS.API.CONSUMER.CREATE.KV_deliveries"
        ));
        let api = Role::Api.permissions(&[a("anna")]);
        for stream in [
            "KV_deliveries",
            "DELIVERY_RECORDS_PENDING",
            "DELIVERY_RECORDS_DEAD",
        ] {
            assert!(may(&api.publish, &format!("$JS.API.DIRECT.GET.{stream}")));
            assert!(may(
                &api.publish,
                &format!("$JS.API.STREAM.CREATE.{stream}")
            ));
        }
        assert!(
            !may(&api.publish, "$JS.API.CONSUMER.CREATE.KV_deliveries"),
            "listings read with direct gets, not watches"
        );
    }

    #[test]
    fn every_user_may_open_the_topology_and_read_its_own_inbox_only() {
        for role in Role::all(&[a("anna")]) {
            let p = role.permissions(&[a("anna")]);
            for s in fleet_streams() {
                assert!(may(&p.publish, &format!("$JS.API.STREAM.INFO.{s}")), "{s}");
            }
            assert_eq!(
                p.subscribe
                    .iter()
                    .filter(|s| s.starts_with("_INBOX"))
                    .collect::<Vec<_>>(),
                [&format!("_INBOX_{}.>", role.user())]
            );
        }
        assert_eq!(
            pattern("ledger.__any__.__any__.stalled"),
            "ledger.*.*.stalled"
        );
    }
}
