//! A three-node NATS cluster (`harness::cluster`) with every stream and bucket at three replicas:
//! workers on different nodes run every task exactly once; a node that is down loses no write and
//! catches up after it restarts; a node killed mid-load (a follower; and, ignored until the bug
//! named there is fixed, the leader of the queue, the log, the state and the consumers) loses no
//! task and no event; API and workers take every node in `NATS_URL`; a lone worker keeps taking
//! tasks while its consumer's leader steps down again and again. See `docs/cluster.md`.
//!
//! Run the ignored one with `cargo test --test it cluster:: -- --ignored --nocapture`.

use crate::harness::cluster::{ClusterApp, ClusterWorker, NatsCluster};
use crate::harness::{eventually, poll_until};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};
use taskfleet::bus::subjects;
use taskfleet::domain::{EventKind, Priority, Share, Task, TaskEvent};

/// How many tasks the tests with workers run.
const TASKS: usize = 300;
/// How long each task of [`kill_a_node_mid_load`]'s load runs, in ms.
const LOAD_TASK_MS: u64 = 50;
/// The streams whose replica on a restarted node must catch up.
const STREAMS: [&str; 2] = ["TASKS", "EVENTS"];
/// Every stream and bucket of the topology.
const TOPOLOGY: [&str; 11] = [
    "TASKS",
    "EVENTS",
    "LEDGER_INDEX",
    "TASKS_DEAD",
    "DELIVERIES",
    "DELIVERY_RECORDS_PENDING",
    "DELIVERY_RECORDS_DEAD",
    "KV_taskfleet_meta",
    "KV_task_idempotency",
    "KV_deliveries",
    "KV_relay_destinations",
];
/// The workers' durable consumers on TASKS.
/// The tenant of the load's tasks.
const TENANT: &str = "load";

/// The worker consumers the load goes through: per priority, the consumer of tasks of no tenant
/// and the one of [`TENANT`]'s fair-share turn.
fn worker_consumers() -> Vec<String> {
    let anna = taskfleet::domain::Assignee::parse("anna").expect("valid");
    let shares = [None, Some(Share::of(TENANT))];
    (Priority::ALL.iter())
        .flat_map(|&p| shares.map(|s| subjects::worker_consumer(&anna, p, s)))
        .collect()
}

/// How many events match `filter`, or None while the stream cannot answer (an election).
async fn count_events(js: &async_nats::jetstream::Context, filter: &str) -> Option<usize> {
    let stream = js.get_stream("EVENTS").await.ok()?;
    let mut subjects = stream.info_with_subjects(filter).await.ok()?;
    let mut n = 0;
    while let Some(s) = subjects.next().await {
        n += s.ok()?.1;
    }
    Some(n)
}

/// Every event matching `filter`, in stream order. Creating the reading consumer is retried: right
/// after a node died the cluster may still try to place it there.
async fn read_events(js: &async_nats::jetstream::Context, filter: &str) -> Vec<TaskEvent> {
    let total = count_events(js, filter).await.expect("EVENTS answers");
    let stream = js.get_stream("EVENTS").await.expect("EVENTS stream");
    let consumer = eventually(
        "an ordered consumer on EVENTS",
        Duration::from_secs(30),
        || {
            let stream = stream.clone();
            async move {
                stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: filter.to_string(),
                        deliver_policy: DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
                    .ok()
            }
        },
    )
    .await;
    let mut messages = consumer.messages().await.expect("consumer messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("events arrive")
            .expect("stream open")
            .expect("event message");
        out.push(serde_json::from_slice(&m.payload).expect("a task event"));
    }
    out
}

/// (messages, last sequence) of `stream` as its leader reports it.
async fn leader_state(js: &async_nats::jetstream::Context, stream: &str) -> Option<(u64, u64)> {
    let info = js.get_stream(stream).await.ok()?.get_info().await.ok()?;
    Some((info.state.messages, info.state.last_sequence))
}

/// Waits (bounded) until node `i`'s own replicas of [`STREAMS`] hold what their leaders hold and
/// the node reports itself healthy; returns how long that took.
async fn caught_up(
    cluster: &NatsCluster,
    js: &async_nats::jetstream::Context,
    i: usize,
) -> Duration {
    let started = Instant::now();
    eventually(
        &format!("{} to catch up", cluster.name(i)),
        Duration::from_secs(30),
        || async {
            for stream in STREAMS {
                let leader = leader_state(js, stream).await?;
                let local = cluster.local_stream_state(i, stream).await?;
                if local != leader {
                    return None;
                }
            }
            cluster.healthy(i).await.then_some(())
        },
    )
    .await;
    started.elapsed()
}

/// Creates `n` noop tasks for anna, P0/P1/P2 in turn, 16 at a time; returns their ids.
async fn create_noops(app: &ClusterApp, n: usize) -> Vec<String> {
    create_noops_with(app, n, json!({})).await
}

/// `n` noop tasks with `payload` (e.g. `{"sleep_ms": 20}` so that one worker alone cannot
/// drain them at once).
async fn create_noops_with(app: &ClusterApp, n: usize, payload: Value) -> Vec<String> {
    let payload = &payload;
    futures::stream::iter(0..n)
        .map(|i| async move {
            let priority = ["P0", "P1", "P2"][i % 3];
            let body = json!({
                "task_name": format!("noop {i}"), "assigned_to": "anna",
                "priority": priority, "kind": "noop", "payload": payload, "tenant": TENANT,
            });
            app.admin
                .create_task(&body)
                .await
                .expect("create")
                .id
                .to_string()
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Rounds of 12 tasks of the load's tenant (200 ms each, more than one worker's 8 slots take at
/// once), each run to the end, until both workers have taken one: each has then opened the
/// consumers of the load's fair-share turn (a worker opens them lazily, on a ring or a sweep, so
/// a warm-up the other worker ran alone leaves one of them to open in the middle of the load).
async fn warm_up(app: &ClusterApp, workers: [&ClusterWorker; 2]) -> HashSet<String> {
    let mut warm = HashSet::new();
    for _ in 0..40 {
        let ids = create_noops_with(app, 12, json!({"sleep_ms": 200})).await;
        for id in &ids {
            eventually(
                &format!("warm-up task {id} to complete"),
                Duration::from_secs(20),
                || async {
                    let t = app.admin.get_task(id).await.ok()?;
                    (t.status.as_str() == "completed").then_some(())
                },
            )
            .await;
        }
        warm.extend(ids);
        // A worker names each task it takes in its log (read here, not through a consumer of
        // our own: a consumer led by the node the test moves leaders off would be in the way).
        let took_one = |w: &&ClusterWorker| {
            let log = w.log();
            warm.iter().any(|id| log.contains(id.as_str()))
        };
        if workers.iter().all(took_one) {
            return warm;
        }
    }
    panic!(
        "a worker took no warm-up task:\n{}\n{}",
        workers[0].log(),
        workers[1].log()
    );
}

/// The queue's messages and, per worker consumer, (pending, ack pending, redelivered).
async fn queue_report(js: &async_nats::jetstream::Context) -> String {
    let Ok(stream) = js.get_stream("TASKS").await else {
        return "TASKS does not answer".into();
    };
    let messages = stream.get_info().await.map(|i| i.state.messages);
    let mut consumers = Vec::new();
    for name in worker_consumers() {
        consumers.push(
            stream
                .consumer_info(name)
                .await
                .map(|i| (i.num_pending, i.num_ack_pending, i.num_redelivered)),
        );
    }
    format!("TASKS holds {messages:?}; consumers {consumers:?}")
}

/// Every line of the workers' logs about task `id` (by id, or by the queue sequence its lines
/// name: a failed claim knows no task id yet), and every line saying an event was not recorded.
fn log_lines(workers: [&ClusterWorker; 2], id: &str) -> String {
    let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
    let seqs: BTreeSet<String> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains(id))
        .filter_map(|l| {
            l.split("seq=")
                .nth(1)?
                .split(' ')
                .next()
                .map(|s| format!("seq={s} "))
        })
        .collect();
    logs.iter()
        .flat_map(|l| l.lines())
        .filter(|l| {
            l.contains(id)
                || seqs.iter().any(|s| l.contains(s.as_str()))
                || l.contains("event could not be recorded")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last lines of both workers' logs (where they stopped).
fn log_tails(workers: [&ClusterWorker; 2]) -> String {
    workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let log = w.log();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "--- worker {} ---\n{}",
                i + 1,
                lines[lines.len().saturating_sub(3)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the API lists `TASKS` tasks of anna, all terminal, and returns them with how long
/// it took until the event log held a `completed` event per task. Reports progress every 5 s and,
/// on timeout, what it last saw with the workers' logs about unfinished tasks.
async fn every_task_finished(
    app: &ClusterApp,
    js: &async_nats::jetstream::Context,
    limit: Duration,
    workers: [&ClusterWorker; 2],
    warm: &HashSet<String>,
) -> (Vec<Task>, Option<Duration>) {
    let started = Instant::now();
    let mut next_note = Duration::from_secs(5);
    let mut all_completed = None;
    loop {
        let completed = count_events(js, "events.anna.*.completed").await;
        if all_completed.is_none() && completed >= Some(TASKS + warm.len()) {
            all_completed = Some(started.elapsed());
        }
        // Bounded, so a slow answer does not blur when the completions were all recorded.
        let listed = tokio::time::timeout(
            Duration::from_secs(2),
            app.admin.list_tasks(&[
                ("assigned_to", "anna".to_string()),
                ("limit", "1000".to_string()),
            ]),
        )
        .await
        .map(|listed| {
            listed.map(|mut tasks| {
                tasks.retain(|t| !warm.contains(t.id.as_str()));
                tasks
            })
        });
        let seen = match listed {
            Err(_) => "the API did not answer within 2 s".to_string(),
            Ok(listed) => match listed {
                Ok(tasks)
                    if tasks.len() == TASKS && tasks.iter().all(|t| t.status.is_terminal()) =>
                {
                    return (tasks, all_completed);
                }
                Ok(tasks) => {
                    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
                    for t in &tasks {
                        *by_status.entry(t.status.to_string()).or_default() += 1;
                    }
                    let open: Vec<String> = tasks
                        .iter()
                        .filter(|t| !t.status.is_terminal())
                        .take(3)
                        .map(|t| {
                            format!(
                                "{} {} attempt {} lease {:?}\n{}",
                                t.id,
                                t.status,
                                t.attempt,
                                t.lease.as_ref().map(|l| &l.holder),
                                log_lines(workers, t.id.as_str())
                            )
                        })
                        .collect();
                    format!(
                        "{} tasks listed: {by_status:?}; {}; not finished: {open:#?}",
                        tasks.len(),
                        queue_report(js).await
                    )
                }
                Err(e) => format!("the API answered: {e}"),
            },
        };
        if started.elapsed() > limit {
            panic!(
                "not every task finished after {limit:?}: {seen}; completed events \
                 {completed:?}\n{}\n{}",
                log_tails(workers),
                app.cluster.log_tails()
            );
        }
        if started.elapsed() > next_note {
            eprintln!(
                "after {:?}: {seen}; completed events {completed:?}",
                started.elapsed()
            );
            next_note += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that every task completed exactly once and that no event of it is missing: one
/// `created`, one `started` per attempt, one `retried` per takeover, one `completed` (by one of
/// the workers, in the last attempt), no `failed`. Returns (tasks taken over, tasks whose events
/// are not in causal order in the stream, completions by the first worker).
fn assert_each_completed_once(
    ids: &[String],
    tasks: &[Task],
    events: &[TaskEvent],
    workers: [&ClusterWorker; 2],
) -> (usize, usize, usize) {
    let created: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(created.len(), TASKS);
    let mut by_task: BTreeMap<String, Vec<&TaskEvent>> = BTreeMap::new();
    for e in events {
        by_task.entry(e.task_id.to_string()).or_default().push(e);
    }
    assert_eq!(
        by_task.keys().cloned().collect::<HashSet<_>>(),
        created,
        "events of other tasks, or tasks without events"
    );
    let (mut takeovers, mut out_of_order) = (0, 0);
    for t in tasks {
        let id = t.id.to_string();
        let evs = &by_task[&id];
        let kinds: Vec<EventKind> = evs.iter().map(|e| e.kind).collect();
        let count = |k: EventKind| kinds.iter().filter(|&&x| x == k).count();
        let why = || {
            let list: Vec<String> = evs
                .iter()
                .map(|e| {
                    format!(
                        "{} #{} by {} at {}",
                        e.kind.as_str(),
                        e.attempt,
                        e.operator,
                        e.time.format("%H:%M:%S%.3f")
                    )
                })
                .collect();
            format!("{id}: {list:#?}\n{}", log_lines(workers, &id))
        };
        assert_eq!(t.status.as_str(), "completed", "{}", why());
        assert_eq!(count(EventKind::Created), 1, "{}", why());
        assert_eq!(count(EventKind::Completed), 1, "{}", why());
        assert_eq!(count(EventKind::Failed), 0, "{}", why());
        let started: Vec<u32> = evs
            .iter()
            .filter(|e| e.kind == EventKind::Started)
            .map(|e| e.attempt)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            started,
            (1..=t.attempt).collect::<Vec<_>>(),
            "one started event per attempt: {}",
            why()
        );
        assert_eq!(count(EventKind::Started), t.attempt as usize, "{}", why());
        assert_eq!(
            count(EventKind::Retried),
            t.attempt as usize - 1,
            "a retried event per takeover: {}",
            why()
        );
        let completed = evs.iter().find(|e| e.kind == EventKind::Completed).unwrap();
        assert_eq!(completed.attempt, t.attempt, "{}", why());
        assert!(
            workers.iter().any(|w| w.is(&completed.operator)),
            "{}",
            why()
        );
        takeovers += usize::from(t.attempt > 1);
        out_of_order += usize::from(
            kinds.first() != Some(&EventKind::Created)
                || kinds.last() != Some(&EventKind::Completed),
        );
    }
    let by_first = events
        .iter()
        .filter(|e| e.kind == EventKind::Completed && workers[0].is(&e.operator))
        .count();
    assert!(
        by_first > 0 && by_first < TASKS,
        "one worker did everything ({by_first} by the first)"
    );
    (takeovers, out_of_order, by_first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_different_nodes_run_every_task_exactly_once_with_three_replicas() {
    // Arrange: the API on n3, one worker on n1 and one on n2.
    let began = Instant::now();
    let cluster = NatsCluster::start(3).await;
    let api_url = cluster.url(2);
    let app = ClusterApp::spawn(cluster, &api_url).await;
    let (w1_url, w2_url) = (app.cluster.url(0), app.cluster.url(1));
    let (w1, w2) = tokio::join!(
        app.worker("anna", 8, &w1_url),
        app.worker("anna", 8, &w2_url)
    );
    let js = app.cluster.jetstream(0).await.expect("connect to n1");
    w1.freeze(true);
    w2.freeze(true);
    // Each takes 20 ms: the work outlasts a worker's 8 slots, so both must take part.
    let ids = create_noops_with(&app, TASKS, json!({"sleep_ms": 20})).await;

    // Act
    let started = Instant::now();
    w1.freeze(false);
    w2.freeze(false);
    let (tasks, _) = every_task_finished(
        &app,
        &js,
        Duration::from_secs(30),
        [&w1, &w2],
        &HashSet::new(),
    )
    .await;
    let ran = started.elapsed();

    // Assert
    for name in TOPOLOGY {
        let info = js.get_stream(name).await.unwrap().get_info().await.unwrap();
        let cluster = info.cluster.expect("cluster info");
        assert_eq!(info.config.num_replicas, 3, "{name}");
        assert_eq!(cluster.replicas.len(), 2, "{name}: {cluster:?}");
    }
    let events = read_events(&js, "events.anna.>").await;
    let (takeovers, _, by_first) = assert_each_completed_once(&ids, &tasks, &events, [&w1, &w2]);
    assert_eq!(takeovers, 0, "a task was taken over with no failure at all");
    eprintln!(
        "R3, no failure: {TASKS} tasks ran in {ran:?} (the n1 worker {by_first}); {:?} in all",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_loses_no_write_and_catches_up_after_it_restarts() {
    // Arrange: the victim leads nothing (no election, so every write succeeds at once); the API
    // is on another node.
    let cluster = NatsCluster::start(3).await;
    let meta = eventually("a meta leader", Duration::from_secs(10), || {
        cluster.meta_leader()
    })
    .await;
    let victim = (0..3).rev().find(|&i| i != meta).unwrap();
    let survivor = (0..3).find(|&i| i != victim).unwrap();
    let api_url = cluster.url(survivor);
    let mut app = ClusterApp::spawn(cluster, &api_url).await;
    for group in app.cluster.led_by(victim).await {
        if group != "meta" {
            let (stream, consumer) = match group.split_once('/') {
                Some((s, c)) => (s, Some(c)),
                None => (group.as_str(), None),
            };
            assert!(
                app.cluster.move_leader_off(stream, consumer, victim).await,
                "{group}"
            );
        }
    }
    let js = app.cluster.jetstream(survivor).await.expect("connect");
    let mut ids = create_noops(&app, 100).await;

    // Act
    app.cluster.kill(victim);
    ids.extend(create_noops(&app, 100).await);
    let during = leader_state(&js, "EVENTS").await.expect("EVENTS answers");
    app.cluster.restart(victim).await;
    let took = caught_up(&app.cluster, &js, victim).await;

    // Assert
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 200);
    assert_eq!(leader_state(&js, "TASKS").await.unwrap().0, 200);
    assert_eq!(count_events(&js, "events.anna.*.created").await, Some(200));
    assert_eq!(leader_state(&js, "EVENTS").await.unwrap(), during);
    let info = js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    let peers = info.cluster.expect("cluster info").replicas;
    let back = peers
        .iter()
        .find(|p| p.name == app.cluster.name(victim))
        .expect("the restarted node is a replica again");
    assert!(back.current && !back.offline, "{back:?}");
    eprintln!(
        "{} was down for 100 of 200 creates; it caught up {took:?} after its restart",
        app.cluster.name(victim)
    );
}

/// Whether the killed node leads the queue, the event log, the state bucket and the workers'
/// consumers (the worst case: every one of them needs an election) or nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Leader,
    Follower,
}

/// Three nodes, R3 everything, one worker process on each of two nodes and the API on the third;
/// `TASKS` noop tasks; the third node is SIGKILLed once a third of them completed. Every task must
/// complete exactly once with no event lost; the node must catch up after a restart. Returns the
/// figures observed.
async fn kill_a_node_mid_load(victim_role: Victim) -> String {
    // Arrange: the victim is the last node that does not lead the meta group (moving that needs
    // the system account); the API's only URL is the victim, so its client must fail over to a
    // node the cluster advertised. The workers are frozen while the tasks are created.
    let began = Instant::now();
    let cluster = NatsCluster::start(3).await;
    let formed = began.elapsed();
    let meta = eventually("a meta leader", Duration::from_secs(10), || {
        cluster.meta_leader()
    })
    .await;
    let victim = (0..3).rev().find(|&i| i != meta).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let victim_url = cluster.url(victim);
    let mut app = ClusterApp::spawn(cluster, &victim_url).await;
    let (w1_url, w2_url) = (app.cluster.url(others[0]), app.cluster.url(others[1]));
    let (mut w1, mut w2) = tokio::join!(
        app.worker("anna", 8, &w1_url),
        app.worker("anna", 8, &w2_url)
    );
    // The workers open the consumer of the load's fair-share turn once they see its first task.
    let warm = warm_up(&app, [&w1, &w2]).await;
    let c = &app.cluster;
    match victim_role {
        Victim::Leader => {
            for stream in STREAMS {
                assert!(
                    c.move_leader_to(stream, None, victim).await,
                    "{stream} did not move to {} (nats-server < 2.11?)",
                    c.name(victim)
                );
            }
            for consumer in worker_consumers() {
                assert!(
                    c.move_leader_to("TASKS", Some(&consumer), victim).await,
                    "{consumer}"
                );
            }
        }
        Victim::Follower => {
            for group in c.led_by(victim).await {
                if group != "meta" {
                    let (stream, consumer) = match group.split_once('/') {
                        Some((s, c)) => (s, Some(c)),
                        None => (group.as_str(), None),
                    };
                    assert!(c.move_leader_off(stream, consumer, victim).await, "{group}");
                }
            }
        }
    }
    // A pull a worker sent while a leader moved can go unanswered; the worker asks again after
    // 1 s (`worker/pull.rs`; it used to wait 5 s), time enough for the other worker to take much
    // of the load alone: warm up again, so both workers take part in the load from its start.
    let warm: HashSet<String> = warm
        .union(&warm_up(&app, [&w1, &w2]).await)
        .cloned()
        .collect();
    let c = &app.cluster;
    let js = c.jetstream(others[0]).await.expect("connect to a survivor");
    w1.freeze(true);
    w2.freeze(true);
    // Each takes 50 ms, so one worker alone needs about 2 s for the load (300 × 50 ms over 8
    // slots): a worker whose first pull after the freeze goes unanswered for 1 s still takes
    // part, and the kill lands while both run tasks.
    let ids = create_noops_with(&app, TASKS, json!({"sleep_ms": LOAD_TASK_MS})).await;
    let led = app.cluster.led_by(victim).await;
    match victim_role {
        Victim::Leader => assert!(
            STREAMS.iter().all(|s| led.iter().any(|l| l == s)),
            "{led:?}"
        ),
        Victim::Follower => assert!(led.is_empty(), "{led:?}"),
    }
    w1.freeze(false);
    w2.freeze(false);
    let loaded = Instant::now();

    // Act
    let done_at_kill = eventually(
        "a third of the tasks to complete",
        Duration::from_secs(30),
        || async {
            let n = count_events(&js, "events.anna.*.completed").await?;
            (n >= TASKS / 3).then_some(n)
        },
    )
    .await;
    app.cluster.kill(victim);
    let killed = Instant::now();
    let (tasks, events_done) =
        every_task_finished(&app, &js, Duration::from_secs(45), [&w1, &w2], &warm).await;
    let all_done = killed.elapsed();
    // Events of the last state changes may still be on their way; missing ones are named below.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        eventually(
            "a completed event for every task",
            Duration::MAX,
            || async {
                let n = count_events(&js, "events.anna.*.completed").await?;
                (n >= TASKS + warm.len()).then_some(())
            },
        ),
    )
    .await;
    let mut events = read_events(&js, "events.anna.>").await;
    events.retain(|e| !warm.contains(e.task_id.as_str()));
    eventually(
        "the queue and the workers' consumers to drain",
        Duration::from_secs(15),
        || async {
            let stream = js.get_stream("TASKS").await.ok()?;
            for name in worker_consumers() {
                let info = stream.consumer_info(&name).await.ok()?;
                if info.num_pending + info.num_ack_pending as u64 > 0 {
                    return None;
                }
            }
            (stream.get_info().await.ok()?.state.messages == 0).then_some(())
        },
    )
    .await;
    app.cluster.restart(victim).await;
    let took = caught_up(&app.cluster, &js, victim).await;

    // Assert
    assert!(done_at_kill < TASKS, "every task finished before the kill");
    assert!(w1.running() && w2.running(), "a worker died");
    let (takeovers, out_of_order, by_first) =
        assert_each_completed_once(&ids, &tasks, &events, [&w1, &w2]);
    format!(
        "cluster formed in {formed:?}; {victim} led {led:?} when it was killed at \
         {done_at_kill}/{TASKS} completions ({:?} after the workers started); the event log held \
         every completion {events_done:?} after the kill and the API listed every task as \
         finished after {all_done:?} ({takeovers} taken over as a later attempt, {out_of_order} \
         with events out of causal order in the stream; the first worker completed {by_first}); \
         the node caught up {took:?} after its restart; {:?} in all",
        killed - loaded,
        began.elapsed(),
        victim = app.cluster.name(victim),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_node_killed_mid_load_loses_no_task_and_no_event_and_catches_up_after_restart() {
    let figures = kill_a_node_mid_load(Victim::Follower).await;
    eprintln!("follower killed: {figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_no_task_and_no_event_and_catches_up_after_restart() {
    let figures = kill_a_node_mid_load(Victim::Leader).await;
    eprintln!("leader killed: {figures}");
}

#[tokio::test]
async fn the_api_and_a_worker_take_every_node_in_a_comma_separated_nats_url() {
    // Arrange
    let cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();

    // Act
    let app = ClusterApp::spawn(cluster, &urls).await;
    let _worker = app.worker("anna", 1, &urls).await;
    let id = app
        .admin
        .create_task(&json!({"task_name": "noop", "assigned_to": "anna", "kind": "noop"}))
        .await
        .expect("create")
        .id
        .to_string();

    // Assert
    let task = eventually("the task to finish", Duration::from_secs(20), || async {
        let t = app.admin.get_task(&id).await.ok()?;
        t.status.is_terminal().then_some(t)
    })
    .await;
    assert_eq!(task.status.as_str(), "completed");
}

/// How often the leader of the consumer a lone worker pulls from moves in
/// [`a_lone_worker_starts_every_task_within_4_s_while_its_consumer_leader_moves`].
const LEADER_MOVES: usize = 60;

/// Asks the leader of `consumer` on TASKS to step down `n` times, 30 ms apart (one asked for
/// during the election that follows is refused and asked again), for at most 40 s; returns
/// how many times it stepped down and how long that took.
async fn step_down(
    js: &async_nats::jetstream::Context,
    consumer: &str,
    n: usize,
) -> (usize, Duration) {
    let started = Instant::now();
    let subject = format!("CONSUMER.LEADER.STEPDOWN.TASKS.{consumer}");
    let mut moved = 0;
    while moved < n && started.elapsed() < Duration::from_secs(40) {
        let answer: Result<Value, _> = js.request(subject.clone(), &json!({})).await;
        if answer.is_ok_and(|a| a["success"] == true) {
            moved += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    (moved, started.elapsed())
}

/// How many clients create tasks at once in that test (one a pull per task and more).
const CREATORS: usize = 4;

/// Creates a P0 noop task of no tenant for anna every `every` until `stop` is set; returns
/// each one's id and when its create was answered (the task is queued by then). The worker is
/// timed from there: how long the API took under load is not the worker's wait.
async fn create_until(
    app: &ClusterApp,
    every: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> BTreeMap<String, chrono::DateTime<chrono::Utc>> {
    let mut queued = BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let body = json!({
            "task_name": format!("noop {}", queued.len()), "assigned_to": "anna",
            "priority": "P0", "kind": "noop", "payload": {},
        });
        let task = app.admin.create_task(&body).await.expect("create");
        queued.insert(task.id.to_string(), chrono::Utc::now());
        tokio::time::sleep(every).await;
    }
    queued
}

/// Per task of `queued`, how long from its create's answer to its first `started` event; or the
/// ids of those that have not started yet (all of them while EVENTS cannot answer).
async fn start_delays(
    js: &async_nats::jetstream::Context,
    queued: &BTreeMap<String, chrono::DateTime<chrono::Utc>>,
) -> Result<BTreeMap<String, Duration>, Vec<String>> {
    let all = || queued.keys().cloned().collect::<Vec<_>>();
    if count_events(js, "events.anna.*.started")
        .await
        .ok_or_else(all)?
        < queued.len()
    {
        return Err(all());
    }
    let mut delays = BTreeMap::new();
    for e in read_events(js, "events.anna.*.started").await {
        let id = e.task_id.to_string();
        if let (Some(at), 1) = (queued.get(&id), e.attempt) {
            delays.insert(id, (e.time - *at).to_std().unwrap_or_default());
        }
    }
    match delays.len() == queued.len() {
        true => Ok(delays),
        false => Err(queued
            .keys()
            .filter(|id| !delays.contains_key(*id))
            .cloned()
            .collect()),
    }
}

/// [`start_delays`] once every task of `queued` started, polled for up to 30 s; past that a panic
/// that names the tasks that did not start, with their events and `worker`'s log about them.
async fn wait_for_starts(
    js: &async_nats::jetstream::Context,
    queued: &BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    worker: &ClusterWorker,
) -> BTreeMap<String, Duration> {
    let missing = match poll_until(Duration::from_secs(30), || start_delays(js, queued)).await {
        Ok(delays) => return delays,
        Err(missing) => missing,
    };
    let (log, mut about) = (worker.log(), String::new());
    for id in missing.iter().take(5) {
        let events = read_events(js, &format!("events.anna.{id}.*")).await;
        let kinds: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
        about += &format!("\n{id}: events {kinds:?}\n");
        (log.lines().filter(|l| l.contains(id.as_str())))
            .for_each(|l| about += &format!("  {l}\n"));
    }
    panic!(
        "{} of {} tasks did not start within 30 s:{about}",
        missing.len(),
        queued.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_worker_starts_every_task_within_4_s_while_its_consumer_leader_moves() {
    // Arrange: the API on n3; one worker with eight slots on n1; its P0 consumer led by n2, so a
    // pull crosses a route to reach the leader.
    let cluster = NatsCluster::start(3).await;
    let api_url = cluster.url(2);
    let app = ClusterApp::spawn(cluster, &api_url).await;
    let worker = app.worker("anna", 8, &app.cluster.url(0)).await;
    let anna = taskfleet::domain::Assignee::parse("anna").expect("valid");
    let consumer = subjects::worker_consumer(&anna, Priority::P0, None);
    assert!(
        app.cluster
            .move_leader_to("TASKS", Some(&consumer), 1)
            .await
    );
    let js = app.cluster.jetstream(0).await.expect("connect to n1");

    // Act: tasks created by four clients, each every 15 ms, while the consumer's leader steps
    // down again and again. A pull sent as the leader steps down can go unanswered: the worker
    // used to wait out its 5 s pull timeout, and 1 s more, before it pulled again (in 5 of 5
    // runs before the fix, some task started 6-7 s after it was created). A request an idle
    // worker left waiting there can be dropped the same way: a worker whose free slots were
    // all held by such requests used to wait for their answers with no end (1 fresh-clone CI
    // run in 7 timed out with tasks never started).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let moves = async {
        let moved = step_down(&js, &consumer, LEADER_MOVES).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        moved
    };
    let every = Duration::from_millis(15);
    let creators =
        futures::future::join_all((0..CREATORS).map(|_| create_until(&app, every, &stop)));
    let (created, (moved, took)) = tokio::join!(creators, moves);
    let queued: BTreeMap<_, _> = created.into_iter().flatten().collect();
    let delays = wait_for_starts(&js, &queued, &worker).await;

    // Assert: 4 s lies between the 6-7 s of the fault and what an election alone costs on a
    // loaded machine (slowest starts of 2.5-2.7 s in 3 of 8 runs beside a CPU hog; one CI run
    // at 3.1 s when timed from the create's send).
    assert!(moved >= 10, "the leader stepped down only {moved} times");
    let (slowest, longest) = delays.iter().max_by_key(|(_, d)| **d).expect("tasks");
    let log = worker.log();
    let about = |id: &str| -> String {
        (log.lines())
            .filter(|l| l.contains(id) || l.contains("pull"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        *longest < Duration::from_secs(4),
        "{slowest} started {longest:?} after its create was answered:\n{}",
        about(slowest)
    );
    let mut sorted: Vec<Duration> = delays.values().copied().collect();
    sorted.sort();
    let asked_again = log.matches("asking again").count();
    let lapsed = log.matches("no longer armed").count();
    eprintln!(
        "{} tasks over {moved} leader moves in {took:?}: median start {:?}, slowest \
         {longest:?}; {asked_again} pull requests unanswered and asked again, {lapsed} armed \
         ones unanswered and forgotten",
        queued.len(),
        sorted[sorted.len() / 2],
    );
}
