//! A three-node NATS cluster with every stream and bucket at three replicas: a node killed mid-load
//! loses no task and no event, and catches up after it restarts.

use crate::harness::cluster::{ClusterApp, ClusterWorker, NatsCluster};
use crate::harness::eventually;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};
use taskfleet::domain::{EventKind, Task, TaskEvent};

/// How many tasks the failover test runs.
const TASKS: usize = 300;
/// The streams whose replica on the killed node must catch up.
const STREAMS: [&str; 3] = ["TASKS", "EVENTS", "KV_tasks"];

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

/// Every event matching `filter`, in stream order.
async fn read_events(js: &async_nats::jetstream::Context, filter: &str) -> Vec<TaskEvent> {
    let total = count_events(js, filter).await.expect("EVENTS answers");
    let stream = js.get_stream("EVENTS").await.expect("EVENTS stream");
    let mut messages = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer")
        .messages()
        .await
        .expect("consumer messages");
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
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    Some((info.state.messages, info.state.last_sequence))
}

/// The queue's messages and, per worker consumer, (pending, ack pending, redelivered).
async fn queue_report(js: &async_nats::jetstream::Context) -> String {
    let Ok(stream) = js.get_stream("TASKS").await else {
        return "TASKS does not answer".into();
    };
    let messages = stream.get_info().await.map(|i| i.state.messages);
    let mut consumers = Vec::new();
    for name in WORKER_CONSUMERS {
        consumers.push(
            stream
                .consumer_info(name)
                .await
                .map(|i| (i.num_pending, i.num_ack_pending, i.num_redelivered)),
        );
    }
    format!("TASKS holds {messages:?}; consumers {consumers:?}")
}

/// Waits until the API lists `TASKS` tasks of anna, all terminal, and returns them with how long
/// it took until the event log held a `completed` event per task. Reports progress every 5 s and,
/// on timeout, what it last saw with the workers' logs about unfinished tasks.
async fn every_task_finished(
    app: &ClusterApp,
    js: &async_nats::jetstream::Context,
    limit: Duration,
    workers: [&ClusterWorker; 2],
) -> (Vec<Task>, Option<Duration>) {
    let started = Instant::now();
    let mut next_note = Duration::from_secs(5);
    let mut all_completed = None;
    loop {
        let completed = count_events(js, "events.anna.*.completed").await;
        if all_completed.is_none() && completed >= Some(TASKS) {
            all_completed = Some(started.elapsed());
        }
        let listed = app
            .admin
            .list_tasks(&[
                ("assigned_to", "anna".to_string()),
                ("limit", "1000".to_string()),
            ])
            .await;
        let seen = match listed {
            Ok(tasks) if tasks.len() == TASKS && tasks.iter().all(|t| t.status.is_terminal()) => {
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
        };
        if started.elapsed() > limit {
            panic!(
                "not every task finished after {limit:?}: {seen}; completed events {completed:?}\n{}",
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

/// Whether the killed node leads the queue, the event log, the state bucket and the workers'
/// consumers (the worst case: every one of them needs an election) or nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Leader,
    Follower,
}

/// The workers' durable consumers on TASKS.
const WORKER_CONSUMERS: [&str; 3] = ["worker_anna_p0", "worker_anna_p1", "worker_anna_p2"];

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

/// Three nodes, R3 everything, one worker process on each of two nodes and the API on the third;
/// `TASKS` noop tasks; the third node is SIGKILLed once a third of them completed. Every task must
/// complete exactly once with no event lost; the node must catch up after a restart. Returns the
/// figures observed.
async fn kill_a_node_mid_load(victim_role: Victim) -> String {
    // Arrange: the victim is the last node that does not lead the meta group (moving that needs
    // the system account); the API's only URL is the victim, so its client must fail over to a
    // node the cluster advertised.
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
            for consumer in WORKER_CONSUMERS {
                assert!(c.move_leader_to("TASKS", Some(consumer), victim).await);
            }
        }
        Victim::Follower => {
            for group in c.led_by(victim).await {
                let (stream, consumer) = match group.split_once('/') {
                    Some((s, c)) => (s.to_string(), Some(c.to_string())),
                    None => (group.clone(), None),
                };
                if stream != "meta" {
                    assert!(
                        c.move_leader_off(&stream, consumer.as_deref(), victim)
                            .await,
                        "{group} still led by {}",
                        c.name(victim)
                    );
                }
            }
        }
    }
    let js = c.jetstream(others[0]).await.expect("connect to a survivor");
    w1.freeze(true);
    w2.freeze(true);
    let ids: Vec<String> = futures::stream::iter(0..TASKS)
        .map(|i| {
            let app = &app;
            async move {
                let priority = ["P0", "P1", "P2"][i % 3];
                let body = json!({
                    "task_name": format!("noop {i}"), "assigned_to": "anna",
                    "priority": priority, "kind": "noop",
                });
                app.admin
                    .create_task(&body)
                    .await
                    .expect("create")
                    .id
                    .to_string()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
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
        every_task_finished(&app, &js, Duration::from_secs(45), [&w1, &w2]).await;
    let all_done = killed.elapsed();
    // Events of the last state changes may still be on their way; missing ones are named below.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        eventually(
            "a completed event for every task",
            Duration::MAX,
            || async {
                (count_events(&js, "events.anna.*.completed").await? >= TASKS).then_some(())
            },
        ),
    )
    .await;
    let events = read_events(&js, "events.anna.>").await;
    eventually(
        "the queue and the workers' consumers to drain",
        Duration::from_secs(15),
        || async {
            let stream = js.get_stream("TASKS").await.ok()?;
            for name in WORKER_CONSUMERS {
                let info = stream.consumer_info(name).await.ok()?;
                if info.num_pending + info.num_ack_pending as u64 > 0 {
                    return None;
                }
            }
            (stream.get_info().await.ok()?.state.messages == 0).then_some(())
        },
    )
    .await;
    app.cluster.restart(victim).await;
    let restarted = Instant::now();
    eventually(
        "the restarted node to catch up",
        Duration::from_secs(30),
        || async {
            for stream in STREAMS {
                let leader = leader_state(&js, stream).await?;
                let local = app.cluster.local_stream_state(victim, stream).await?;
                if local != leader {
                    return None;
                }
            }
            app.cluster.healthy(victim).await.then_some(())
        },
    )
    .await;
    let caught_up = restarted.elapsed();

    // Assert
    assert!(done_at_kill < TASKS, "every task finished before the kill");
    assert!(w1.running() && w2.running(), "a worker died");
    let workers = [&w1, &w2];
    let created: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(created.len(), TASKS);
    let mut by_task: BTreeMap<String, Vec<&TaskEvent>> = BTreeMap::new();
    for e in &events {
        by_task.entry(e.task_id.to_string()).or_default().push(e);
    }
    assert_eq!(
        by_task.keys().cloned().collect::<HashSet<_>>(),
        created,
        "events of other tasks, or tasks without events"
    );
    let (mut takeovers, mut out_of_order) = (0, 0);
    for t in &tasks {
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
            w1.is(&completed.operator) || w2.is(&completed.operator),
            "{}",
            why()
        );
        takeovers += usize::from(t.attempt > 1);
        out_of_order += usize::from(
            kinds.first() != Some(&EventKind::Created)
                || kinds.last() != Some(&EventKind::Completed),
        );
    }
    let by_w1 = events
        .iter()
        .filter(|e| e.kind == EventKind::Completed && w1.is(&e.operator))
        .count();
    assert!(
        by_w1 > 0 && by_w1 < TASKS,
        "one worker did everything ({by_w1} by the first)"
    );
    format!(
        "cluster formed in {formed:?}; {victim} led {led:?} when it was killed at {done_at_kill}/{TASKS} \
         completions ({:?} after the workers started); the event log held every completion \
         {events_done:?} after the kill and the API listed every task as finished after \
         {all_done:?} ({takeovers} taken over as a later attempt, {out_of_order} with events out of \
         causal order in the stream; the first worker completed {by_w1}); the node caught up \
         {caught_up:?} after its restart; {:?} in all",
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
#[ignore = "bug: a worker's pull can hang forever (src/worker/dispatch.rs fetch_one) and events \
            are dropped after ~1 s of retries (src/tasks/mod.rs emit) while a killed leader is \
            replaced"]
async fn a_node_killed_mid_load_loses_no_task_and_no_event_and_catches_up_after_restart() {
    let figures = kill_a_node_mid_load(Victim::Leader).await;
    eprintln!("leader killed: {figures}");
}

#[tokio::test]
#[ignore = "bug: src/bus/mod.rs connect_client passes NATS_URL as one address; a comma-separated list of nodes fails to parse"]
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
