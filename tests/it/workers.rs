//! Workers: pulling in priority order, running commands and agents, leases, cancellation.

use crate::harness::app::worker_settings;
use crate::harness::{eventually, TestApp};
use serde_json::{json, Value};
use std::time::Duration;
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

#[tokio::test]
async fn an_exec_task_runs_and_completes_with_its_output_as_result() {
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
    let actions: Vec<String> = app
        .admin
        .logs(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.action)
        .collect();
    assert_eq!(actions.first().map(String::as_str), Some("create"));
    assert!(
        actions.contains(&"start".to_string()) && actions.contains(&"output".to_string()),
        "{actions:?}"
    );
    assert_eq!(actions.last().map(String::as_str), Some("complete"));
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
