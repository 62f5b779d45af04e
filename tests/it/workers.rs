//! Workers: pulling in priority order, running commands and agents, leases, cancellation.

use crate::harness::app::worker_settings;
use crate::harness::process::{processes_with, unique_sleep};
use crate::harness::{eventually, TestApp};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use taskfleet::domain::Task;

/// Creates a worker-run task and returns its id.
pub(crate) async fn create_kind(
    app: &TestApp,
    assignee: &str,
    priority: &str,
    kind: &str,
    payload: Value,
) -> String {
    let t = app
        .admin
        .create_task(&json!({
            "task_name": format!("{kind} task"), "assigned_to": assignee,
            "priority": priority, "kind": kind, "payload": payload,
        }))
        .await
        .expect("create");
    t.id.to_string()
}

/// Waits until the task reaches a terminal status.
pub(crate) async fn finished(app: &TestApp, id: &str, limit: Duration) -> Task {
    eventually(&format!("task {id} to finish"), limit, || async {
        let t = app.admin.get_task(id).await.ok()?;
        t.status.is_terminal().then_some(t)
    })
    .await
}

/// Waits until the task is running and returns it.
pub(crate) async fn running(app: &TestApp, id: &str) -> Task {
    eventually(
        &format!("task {id} to run"),
        Duration::from_secs(15),
        || async {
            let t = app.admin.get_task(id).await.ok()?;
            (t.status.as_str() == "running").then_some(t)
        },
    )
    .await
}

/// Waits until the task's captured output has a line equal to `line`.
pub(crate) async fn output_line(app: &TestApp, id: &str, line: &str) {
    eventually(
        &format!("task {id} to print {line:?}"),
        Duration::from_secs(15),
        || async {
            let page = app.admin.output(id, &[]).await.ok()?;
            let lines = page["lines"].as_array()?;
            lines.iter().any(|l| l == line).then_some(())
        },
    )
    .await
}

/// The task log's actions, in order.
pub(crate) async fn actions(app: &TestApp, id: &str) -> Vec<String> {
    let logs = app.admin.logs(id).await.expect("logs");
    logs.into_iter().map(|l| l.action).collect()
}

#[tokio::test]
async fn an_exec_task_completes_with_its_output_as_result_and_its_log_shows_the_output() {
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;

    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": "echo hello; echo oops >&2"}),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(20)).await;

    assert_eq!(task.status.as_str(), "completed", "{task:?}");
    assert_eq!(task.result, Some(json!("hello\n")));
    assert_eq!(task.attempt, 1);
    let logs = app.admin.logs(&id).await.unwrap();
    let actions: Vec<&str> = logs.iter().map(|l| l.action.as_str()).collect();
    assert_eq!(actions.first(), Some(&"create"));
    assert!(
        actions.contains(&"start") && actions.contains(&"output"),
        "{actions:?}"
    );
    assert_eq!(actions.last(), Some(&"complete"));
    let mut output: Vec<&str> = logs
        .iter()
        .filter(|l| l.action == "output")
        .filter_map(|l| l.message.as_deref())
        .collect();
    output.sort();
    assert_eq!(
        output,
        ["hello", "stderr: oops"],
        "the output rows say what came"
    );
}

#[tokio::test]
async fn a_noop_asked_to_stamp_reports_its_handler_start_between_its_claim_and_its_finish() {
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;

    let plain = create_kind(&app, "anna", "P1", "noop", json!({})).await;
    let stamped = create_kind(&app, "anna", "P1", "noop", json!({"stamp": true})).await;
    let plain = finished(&app, &plain, Duration::from_secs(20)).await;
    let task = finished(&app, &stamped, Duration::from_secs(20)).await;

    assert_eq!(plain.result, Some(json!("ok")), "{plain:?}");
    let at = (task.result.as_ref())
        .and_then(|r| r["handler_started_us"].as_i64())
        .unwrap_or_else(|| panic!("no handler_started_us in {:?}", task.result));
    let claimed = task.started_time.expect("started").timestamp_micros();
    let done = task.finished_time.expect("finished").timestamp_micros();
    assert!(
        claimed <= at && at <= done,
        "claimed {claimed}, handler {at}, finished {done}"
    );
}

#[tokio::test]
async fn a_stopping_worker_hands_its_running_task_back_and_another_replica_starts_it_at_once() {
    // Arrange: A has the task; B idles. ack_wait is 30 s, so only a hand-back is this fast.
    let app = TestApp::spawn().await;
    let mut settings = worker_settings();
    settings.ack_wait_s = 30;
    settings.shutdown_grace_s = 1;
    let a = app.worker("anna", 1, settings.clone()).await;
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": "sleep 3; echo finished"}),
    )
    .await;
    eventually("A to start the task", Duration::from_secs(10), || async {
        let t = app.admin.get_task(&id).await.ok()?;
        (t.status.as_str() == "running").then_some(())
    })
    .await;
    let _b = app.worker("anna", 1, settings).await;

    // Act: SIGTERM-equivalent for A.
    let stopping = std::time::Instant::now();
    a.stop().await;
    let task = finished(&app, &id, Duration::from_secs(15)).await;

    // Assert
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?}",
        stopping.elapsed()
    );
    assert_eq!(task.status.as_str(), "completed");
    assert_eq!(task.attempt, 2);
    let logs = app.admin.logs(&id).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.action == "retry"
                && l.message.as_deref().unwrap_or("").contains("handed back")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn a_single_slot_worker_runs_a_mixed_backlog_p0_first_then_p1_then_p2_oldest_first() {
    // Arrange: the whole backlog is queued before any worker exists; kinds and priorities mix.
    let app = TestApp::spawn().await;
    let plan = [
        ("P2", "noop"),
        ("P1", "exec"),
        ("P0", "noop"),
        ("P2", "exec"),
        ("P0", "exec"),
        ("P1", "noop"),
        ("P0", "noop"),
        ("P2", "noop"),
        ("P1", "exec"),
    ];
    let mut created = Vec::new();
    for (i, (priority, kind)) in plan.into_iter().enumerate() {
        let payload = match kind {
            "exec" => json!({"argv": ["echo", format!("task {i}")]}),
            _ => json!({}),
        };
        let id = create_kind(&app, "anna", priority, kind, payload).await;
        created.push((priority, id));
    }
    let for_a_bot = app.create("claimed over the API", "anna", "P0").await;

    // Act
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let mut done = Vec::new();
    for (_, id) in &created {
        done.push(finished(&app, id, Duration::from_secs(20)).await);
    }

    // Assert
    assert!(
        done.iter().all(|t| t.status.as_str() == "completed"),
        "{done:?}"
    );
    done.sort_by_key(|t| t.started_time.expect("started"));
    let run_order: Vec<String> = done.iter().map(|t| t.id.to_string()).collect();
    let mut expected = created.clone();
    expected.sort_by_key(|(priority, _)| *priority); // stable: creation order within a priority
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(run_order, expected);
    let manual = app.admin.get_task(&for_a_bot).await.unwrap();
    assert_eq!(
        manual.status.as_str(),
        "pending",
        "workers leave manual tasks to bots"
    );
}

#[tokio::test]
async fn a_task_cancelled_while_pending_is_never_started() {
    // Arrange: the only slot is busy until we write to the blocker's stdin.
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let blocker = create_kind(
        &app,
        "anna",
        "P0",
        "exec",
        json!({"command": "echo ready; head -n 1"}),
    )
    .await;
    output_line(&app, &blocker, "ready").await;
    let doomed = create_kind(&app, "anna", "P1", "noop", json!({})).await;
    let later = create_kind(&app, "anna", "P1", "noop", json!({})).await;

    // Act
    let cancelled = app
        .admin
        .action(&doomed, "cancel", Some(&json!({"reason": "not needed"})))
        .await
        .unwrap();
    app.admin.input(&blocker, "go\n", false).await.unwrap();
    let later = finished(&app, &later, Duration::from_secs(20)).await;

    // Assert: the slot moved on past the cancelled task without starting it.
    assert_eq!(cancelled.status.as_str(), "cancelled");
    assert_eq!(later.status.as_str(), "completed");
    let doomed_now = app.admin.get_task(&doomed).await.unwrap();
    assert_eq!(doomed_now.status.as_str(), "cancelled");
    assert_eq!(doomed_now.attempt, 0);
    assert_eq!(doomed_now.started_time, None);
    assert_eq!(actions(&app, &doomed).await, ["create", "cancel"]);
}

#[tokio::test]
async fn cancelling_a_running_sleep_600_stops_it_within_2_s_and_leaves_no_process() {
    // Arrange: the command leaves two sleeps in its process group.
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let marker = unique_sleep();
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": format!("sleep {marker} & sleep {marker}; echo never")}),
    )
    .await;
    eventually("the sleeps to run", Duration::from_secs(15), || async {
        (processes_with(&marker).len() >= 2).then_some(())
    })
    .await;

    // Act
    let asked = Instant::now();
    let cancelled = app.admin.action(&id, "cancel", None).await.unwrap();
    eventually(
        "every process of the task to be gone",
        Duration::from_secs(10),
        || async { processes_with(&marker).is_empty().then_some(()) },
    )
    .await;
    let took = asked.elapsed();
    // The worker is done with it once its only slot runs something else.
    let next = create_kind(&app, "anna", "P1", "noop", json!({})).await;
    let next = finished(&app, &next, Duration::from_secs(10)).await;

    // Assert
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(cancelled.status.as_str(), "cancelled");
    assert_eq!(next.status.as_str(), "completed");
    let task = app.admin.get_task(&id).await.unwrap();
    assert_eq!(task.status.as_str(), "cancelled", "{task:?}");
    let log = actions(&app, &id).await;
    assert_eq!(log.last().map(String::as_str), Some("cancel"), "{log:?}");
    assert!(
        !log.iter().any(|a| a == "complete" || a == "fail"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_command_over_its_timeout_fails_with_the_reason_and_leaves_no_process() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let marker = unique_sleep();

    // Act
    let id = create_kind(
        &app,
        "anna",
        "P1",
        "exec",
        json!({"command": format!("sleep {marker}"), "timeout_s": 1}),
    )
    .await;
    let task = finished(&app, &id, Duration::from_secs(15)).await;

    // Assert: 1 s limit, then SIGTERM (1 s grace at most).
    assert_eq!(task.status.as_str(), "failed", "{task:?}");
    let error = task.error.clone().unwrap_or_default();
    assert!(error.contains("timed out after 1 s"), "{error}");
    let ran = (task.finished_time.unwrap() - task.started_time.unwrap())
        .to_std()
        .unwrap();
    assert!(
        ran >= Duration::from_secs(1) && ran < Duration::from_secs(3),
        "ran {ran:?}"
    );
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
    assert_eq!(task.attempt, 1);
}
