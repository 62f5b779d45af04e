//! Worker processes (the real binary): many tasks on two replicas, `kill -9`, a lapsed lease,
//! used-up attempts and dead letters, SIGTERM hand-back.

use crate::harness::app::{worker_settings, ADMIN_KEY};
use crate::harness::events::{count_events, events};
use crate::harness::process::{processes_with, unique_sleep, WorkerProcess};
use crate::harness::{eventually, TestApp};
use crate::workers::{create_kind, finished, running};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Starts two worker processes for anna, one slot each, with extra `env`.
async fn two_workers(app: &TestApp, env: &[(&str, &str)]) -> [WorkerProcess; 2] {
    [
        app.worker_process("anna", 1, env).await,
        app.worker_process("anna", 1, env).await,
    ]
}

/// Waits until `id` runs and returns (index of the worker holding it, index of the other).
async fn holder_of(app: &TestApp, id: &str, workers: &[WorkerProcess; 2]) -> (usize, usize) {
    let task = running(app, id).await;
    let holder = task.lease.expect("a running task has a lease").holder;
    match workers.iter().position(|w| w.is(&holder)) {
        Some(0) => (0, 1),
        Some(_) => (1, 0),
        None => panic!("{holder} is neither worker"),
    }
}

#[tokio::test]
async fn two_worker_processes_on_one_assignee_run_1000_tasks_each_exactly_once() {
    // Arrange
    let app = TestApp::spawn().await;
    let a = app.worker_process("anna", 8, &[]).await;
    let b = app.worker_process("anna", 8, &[]).await;

    // Act
    let ids: Vec<String> = futures::stream::iter(0..1000)
        .map(|i| {
            let app = &app;
            async move {
                let priority = ["P0", "P1", "P2"][i % 3];
                // 5 ms each: more than one worker process keeps up with, so both take part.
                let body = json!({
                    "task_name": format!("noop {i}"), "assigned_to": "anna",
                    "priority": priority, "kind": "noop", "payload": {"sleep_ms": 5},
                });
                app.admin
                    .create_task(&body)
                    .await
                    .expect("create")
                    .id
                    .to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    eventually("1000 completed events", Duration::from_secs(60), || async {
        (count_events(&app, "events.anna.*.completed").await >= 1000).then_some(())
    })
    .await;

    // Assert
    let tasks = app
        .admin
        .list_tasks(&[
            ("assigned_to", "anna".to_string()),
            ("limit", "1000".to_string()),
        ])
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1000);
    let odd = tasks
        .iter()
        .find(|t| t.status.as_str() != "completed" || t.attempt != 1);
    assert!(odd.is_none(), "{odd:?}");
    let started = events(&app, "events.anna.*.started").await;
    assert_eq!(started.len(), 1000);
    assert_eq!(count_events(&app, "events.anna.*.completed").await, 1000);
    let started_ids: HashSet<String> = started.iter().map(|e| e.task_id.to_string()).collect();
    assert_eq!(started_ids, ids.into_iter().collect::<HashSet<_>>());
    let by_a = started.iter().filter(|e| a.is(&e.operator)).count();
    let by_b = started.iter().filter(|e| b.is(&e.operator)).count();
    assert_eq!(by_a + by_b, 1000);
    assert!(by_a > 0 && by_b > 0, "A ran {by_a}, B ran {by_b}");
}

#[tokio::test]
async fn after_kill_9_of_a_worker_mid_task_the_other_finishes_it_as_attempt_2() {
    // Arrange
    let app = TestApp::spawn().await;
    let mut workers = two_workers(&app, &[]).await;
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": "sleep 3; echo done"}),
    )
    .await;
    let (dead, other) = holder_of(&app, &id, &workers).await;

    // Act
    workers[dead].kill9();
    let task = finished(&app, &id, Duration::from_secs(20)).await;

    // Assert
    let survivor = &workers[other];
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(task.attempt, 2);
    assert_eq!(task.result, Some(json!("done\n")));
    let started = events(&app, &format!("events.anna.{id}.started")).await;
    let attempts: Vec<(u32, bool)> = started
        .iter()
        .map(|e| (e.attempt, survivor.is(&e.operator)))
        .collect();
    assert_eq!(attempts, [(1, false), (2, true)]);
    let completed = events(&app, &format!("events.anna.{id}.completed")).await;
    assert_eq!(completed.len(), 1);
    assert!(survivor.is(&completed[0].operator), "{completed:?}");
    let logs = app.admin.logs(&id).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.action == "retry" && l.message.as_deref().unwrap_or("").contains("expired")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn a_worker_whose_lease_lapsed_cannot_complete_the_task_it_was_running() {
    // Arrange: the holder freezes (SIGSTOP) mid-task; its lease lapses after 3 s.
    let app = TestApp::spawn().await;
    let workers = two_workers(&app, &[]).await;
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": "sleep 4; echo done"}),
    )
    .await;
    let (zombie, other) = holder_of(&app, &id, &workers).await;
    workers[zombie].signal(libc::SIGSTOP);
    eventually(
        "the other worker to take over as attempt 2",
        Duration::from_secs(20),
        || async {
            let t = app.admin.get_task(&id).await.ok()?;
            let holder = t.lease?.holder;
            (t.attempt == 2 && workers[other].is(&holder)).then_some(())
        },
    )
    .await;

    // Act: the zombie wakes up with its own run of the command about to end.
    workers[zombie].signal(libc::SIGCONT);
    let task = finished(&app, &id, Duration::from_secs(20)).await;

    // Assert
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(task.attempt, 2);
    let completed = events(&app, &format!("events.anna.{id}.completed")).await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert!(workers[other].is(&completed[0].operator), "{completed:?}");
    assert_eq!(completed[0].attempt, 2);
    let started = events(&app, &format!("events.anna.{id}.started")).await;
    let second = started.iter().find(|e| e.attempt == 2).expect("attempt 2");
    assert!(
        workers[other].is(second.data["worker"].as_str().unwrap_or_default()),
        "{second:?}"
    );
    eventually(
        "the zombie to notice it lost the task",
        Duration::from_secs(10),
        || async {
            let log = workers[zombie].log();
            (log.contains("another replica holds the task") || log.contains("result discarded"))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn when_max_attempts_are_used_up_the_task_fails_and_is_dead_lettered_for_api_and_cli() {
    // Arrange: one attempt allowed; its worker is killed mid-task.
    let app = TestApp::spawn().await;
    let mut doomed = app.worker_process("anna", 1, &[]).await;
    let marker = unique_sleep();
    let id = app
        .admin
        .create_task(&json!({
            "task_name": "fragile", "assigned_to": "anna", "kind": "exec",
            "payload": {"argv": ["sleep", marker]}, "max_attempts": 1,
        }))
        .await
        .unwrap()
        .id
        .to_string();
    let holder = running(&app, &id).await.lease.unwrap().holder;
    assert!(doomed.is(&holder), "{holder}");
    eventually("the command to run", Duration::from_secs(10), || async {
        (!processes_with(&marker).is_empty()).then_some(())
    })
    .await;

    // Act
    doomed.kill9();
    let mut settings = worker_settings();
    settings.ack_wait_s = 3; // the consumer's, as the worker process created it
    let _next = app.worker("anna", 1, settings).await;
    let task = finished(&app, &id, Duration::from_secs(20)).await;
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskfleet"))
        .args(["task", "dead", "-a", "anna"])
        .env("TASKFLEET_API_URL", &app.url)
        .env("TASKFLEET_API_KEY", ADMIN_KEY)
        .output()
        .await
        .expect("run taskfleet task dead");

    // Assert
    assert_eq!(task.status.as_str(), "failed");
    assert_eq!(task.attempt, 1);
    let error = task.error.clone().unwrap_or_default();
    assert!(
        error.contains("gave up after 1 attempts") && error.contains(&holder),
        "{error}"
    );
    let logs = app.admin.logs(&id).await.unwrap();
    let last = logs.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.message.as_deref()),
        ("fail", Some(error.as_str()))
    );
    let dead = app
        .admin
        .dead_letters(&[("assigned_to", "anna".to_string())])
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id.as_str(), id);
    assert_eq!(dead[0].status.as_str(), "failed");
    assert_eq!(dead[0].error.as_deref(), Some(error.as_str()));
    let listed = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{cli:?}");
    assert!(
        listed.contains(&id) && listed.contains("attempts 1"),
        "{listed}"
    );
    assert_eq!(
        processes_with(&marker),
        Vec::<u32>::new(),
        "orphaned command"
    );
}

#[tokio::test]
async fn sigterm_makes_a_worker_process_hand_its_task_back_and_the_other_starts_it_at_once() {
    // Arrange: ack wait is 30 s, so only a hand-back is this fast.
    let app = TestApp::spawn().await;
    let env = [
        ("TASKFLEET_WORKER__ACK_WAIT_S", "30"),
        ("TASKFLEET_WORKER__SHUTDOWN_GRACE_S", "1"),
    ];
    let mut workers = two_workers(&app, &env).await;
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": "sleep 4; echo finished"}),
    )
    .await;
    let (stopping, other) = holder_of(&app, &id, &workers).await;

    // Act
    let asked = Instant::now();
    workers[stopping].signal(libc::SIGTERM);
    let exit = workers[stopping].wait_exit(Duration::from_secs(10)).await;
    let task = finished(&app, &id, Duration::from_secs(15)).await;

    // Assert
    assert!(exit.success(), "{exit:?}\n{}", workers[stopping].log());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(task.attempt, 2);
    let completed = events(&app, &format!("events.anna.{id}.completed")).await;
    assert!(workers[other].is(&completed[0].operator), "{completed:?}");
    let logs = app.admin.logs(&id).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.action == "retry"
                && l.message.as_deref().unwrap_or("").contains("handed back")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn after_kill_9_of_a_worker_nothing_of_its_command_keeps_running() {
    // Arrange: `sh -c` forks the sleep (a grandchild of the worker), as most commands do.
    let app = TestApp::spawn().await;
    let mut worker = app.worker_process("anna", 1, &[]).await;
    let marker = unique_sleep();
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": format!("sleep {marker}; echo after")}),
    )
    .await;
    running(&app, &id).await;
    eventually(
        "the shell and its sleep to run",
        Duration::from_secs(10),
        || async { (processes_with(&marker).len() >= 2).then_some(()) },
    )
    .await;

    // Act
    worker.kill9();
    let gone = tokio::time::timeout(
        Duration::from_secs(3),
        eventually("the command to die", Duration::from_secs(30), || async {
            processes_with(&marker).is_empty().then_some(())
        }),
    )
    .await;

    // Assert: else attempt 1 keeps working while another worker runs attempt 2.
    let left = processes_with(&marker);
    for pid in &left {
        // Clean up what the bug left behind (our own test's unique sleep).
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(gone.is_ok() && left.is_empty(), "still running: {left:?}");
}

/// The stream and consumer sequences of the one queue message a consumer of `TASKS` has handed
/// out and not had acknowledged, with the consumer's name.
async fn the_unacked_delivery(js: &async_nats::jetstream::Context) -> Option<(String, u64, u64)> {
    let stream = js.get_stream("TASKS").await.ok()?;
    let mut names = stream.consumer_names();
    while let Some(name) = names.next().await {
        let info = stream.consumer_info(name.ok()?).await.ok()?;
        if info.num_ack_pending == 1 {
            let d = &info.delivered;
            return Some((info.name.clone(), d.stream_sequence, d.consumer_sequence));
        }
    }
    None
}

/// Sends a NAK on the ack subject of the one unacknowledged delivery of `TASKS`: the server
/// hands the message out again at once, as a consumer's new leader does after a failover.
async fn hand_out_again(js: &async_nats::jetstream::Context) {
    let (consumer, sseq, dseq) = the_unacked_delivery(js).await.expect("the task's delivery");
    let client = js.client();
    let ack = format!("$JS.ACK.TASKS.{consumer}.1.{sseq}.{dseq}.0.0");
    client.publish(ack, "-NAK".into()).await.unwrap();
    client.flush().await.unwrap();
}

/// An exec command that appends a line to `runs` and then sleeps `secs`.
fn noting_runs(runs: &std::path::Path, secs: u64) -> serde_json::Value {
    json!({"command": format!("echo run >> {}; sleep {secs}; echo done", runs.display())})
}

/// Asserts that task `id` completed as attempt 1 after one run and one start, and that its
/// queue message is settled (the stream is empty).
async fn assert_ran_once(
    app: &TestApp,
    id: &str,
    runs: &std::path::Path,
    js: &async_nats::jetstream::Context,
) {
    let task = finished(app, id, Duration::from_secs(20)).await;
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(task.attempt, 1);
    assert_eq!(std::fs::read_to_string(runs).unwrap(), "run\n");
    let started = events(app, &format!("events.anna.{id}.started")).await;
    assert_eq!(started.len(), 1, "{started:?}");
    eventually("the queue to be empty", Duration::from_secs(5), || async {
        let info = js.get_stream("TASKS").await.ok()?.get_info().await.ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_message_handed_out_again_to_the_worker_running_it_does_not_start_the_task_twice() {
    // Arrange: one worker with a slot to spare runs a command that notes each of its runs;
    // its claim is older than half its 3 s lease when the copy comes.
    let app = TestApp::spawn().await;
    let worker = app.worker_process("anna", 2, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let id = create_kind(&app, "anna", "P1", "exec", noting_runs(&runs, 4)).await;
    running(&app, &id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let js = app.jetstream().await;

    // Act
    hand_out_again(&js).await;
    eventually(
        "the worker to get the copy",
        Duration::from_secs(10),
        || async { worker.log().contains("delivered again").then_some(()) },
    )
    .await;

    // Assert
    assert_ran_once(&app, &id, &runs, &js).await;
}

#[tokio::test]
async fn a_message_handed_out_again_to_another_worker_within_the_lease_is_left_to_its_holder() {
    // Arrange: A (one slot) runs the task; B, started after, has slots free. 30 s leases.
    let app = TestApp::spawn().await;
    let long_lease = [("TASKFLEET_WORKER__ACK_WAIT_S", "30")];
    let a = app.worker_process("anna", 1, &long_lease).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let id = create_kind(&app, "anna", "P1", "exec", noting_runs(&runs, 2)).await;
    let holder = running(&app, &id).await.lease.expect("a lease").holder;
    assert!(a.is(&holder), "{holder}");
    let b = app.worker_process("anna", 2, &long_lease).await;
    let js = app.jetstream().await;

    // Act: the copy can only go to B (A has no free slot, so no pull waiting).
    hand_out_again(&js).await;
    eventually(
        "B to leave or take the copy",
        Duration::from_secs(10),
        || async {
            let log = b.log();
            (log.contains("left to its holder") || log.contains("attempt=2")).then_some(())
        },
    )
    .await;

    // Assert
    assert_ran_once(&app, &id, &runs, &js).await;
}
