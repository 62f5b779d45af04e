//! The task state machine over HTTP: legal moves, illegal ones (409, nothing written), attempts,
//! fencing tokens and concurrent claims.

use crate::harness::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taskfleet::domain::TaskStatus;

/// Messages in the TASKS (queue) stream.
async fn queued(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let mut stream = js.get_stream("TASKS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// The task as the API returns it.
async fn get(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// `PUT /api/tasks/{id}/{verb}` with an optional JSON body.
async fn act(app: &TestApp, id: &str, verb: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = app.req(Method::PUT, &format!("/api/tasks/{id}/{verb}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    app.call(req).await
}

/// The log's action column.
async fn actions(app: &TestApp, id: &str) -> Vec<String> {
    let logs = app.admin.logs(id).await.unwrap();
    logs.into_iter().map(|l| l.action).collect()
}

/// Asserts `verb` is refused with 409 `illegal_transition` and writes nothing: the task reads back
/// identical (same revision included), and the log and queue do not grow.
async fn assert_illegal(app: &TestApp, id: &str, verb: &str) {
    let before = get(app, id).await;
    let log_before = actions(app, id).await;
    let queue_before = queued(app).await;

    let (status, body) = act(app, id, verb, None).await;

    let what = format!("{verb} on a {} task", before["status"]);
    assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}");
    assert_eq!(
        body["error"]["code"], "illegal_transition",
        "{what}: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    assert_eq!(get(app, id).await, before, "{what} changed the task");
    assert_eq!(
        actions(app, id).await,
        log_before,
        "{what} wrote to the log"
    );
    assert_eq!(queued(app).await, queue_before, "{what} touched the queue");
}

#[tokio::test]
async fn completing_or_failing_a_pending_task_is_illegal_and_changes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("pending", "anna", "P1").await;

    // Act + Assert
    assert_illegal(&app, &id, "complete").await;
    assert_illegal(&app, &id, "fail").await;
    assert_eq!(get(&app, &id).await["status"], "pending");
}

#[tokio::test]
async fn starting_a_running_task_is_illegal_and_changes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("running", "anna", "P1").await;
    app.admin.action(&id, "start", None).await.unwrap();

    // Act + Assert
    assert_illegal(&app, &id, "start").await;
    let task = get(&app, &id).await;
    assert_eq!(task["status"], "running");
    assert_eq!(task["attempt"], 1);
}

#[tokio::test]
async fn a_completed_task_cannot_be_started_completed_or_cancelled() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("done", "anna", "P1").await;
    app.admin.action(&id, "start", None).await.unwrap();
    app.admin
        .action(&id, "complete", Some(&json!({"result": "ok"})))
        .await
        .unwrap();

    // Act + Assert
    assert_illegal(&app, &id, "start").await;
    assert_illegal(&app, &id, "complete").await;
    assert_illegal(&app, &id, "cancel").await;
    let task = get(&app, &id).await;
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"], "ok");
}

#[tokio::test]
async fn a_cancelled_task_cannot_be_completed() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("cancelled", "anna", "P1").await;
    app.admin.action(&id, "cancel", None).await.unwrap();

    // Act + Assert
    assert_illegal(&app, &id, "complete").await;
    assert_eq!(get(&app, &id).await["status"], "cancelled");
}

#[tokio::test]
async fn only_failed_or_cancelled_tasks_can_be_retried() {
    // Arrange
    let app = TestApp::spawn().await;
    let pending = app.create("pending", "anna", "P1").await;
    let running = app.create("running", "anna", "P1").await;
    let completed = app.create("completed", "anna", "P1").await;
    app.admin.action(&running, "start", None).await.unwrap();
    app.admin.action(&completed, "start", None).await.unwrap();
    app.admin
        .action(&completed, "complete", None)
        .await
        .unwrap();

    // Act + Assert
    assert_illegal(&app, &pending, "retry").await;
    assert_illegal(&app, &running, "retry").await;
    assert_illegal(&app, &completed, "retry").await;
    let pending_list = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();
    let ids: Vec<&str> = pending_list.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [pending.as_str()]);
}

#[tokio::test]
async fn a_cancelled_pending_task_leaves_the_queue_and_retry_puts_it_back_as_attempt_1() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("cancel me", "anna", "P1").await;
    let anna = [("assigned_to", "anna".to_string())];

    // Act: cancel
    let (cancel_status, cancelled) = act(&app, &id, "cancel", None).await;
    let pending_after_cancel = app.admin.pending(&anna).await.unwrap();
    let queued_after_cancel = queued(&app).await;
    // Act: retry
    let (retry_status, retried) = act(&app, &id, "retry", None).await;
    let pending_after_retry = app.admin.pending(&anna).await.unwrap();
    let queued_after_retry = queued(&app).await;
    // Act: start
    let (start_status, started) = act(&app, &id, "start", None).await;

    // Assert
    assert_eq!(cancel_status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(pending_after_cancel.is_empty(), "{pending_after_cancel:?}");
    assert_eq!(queued_after_cancel, 0);
    assert_eq!(retry_status, StatusCode::OK, "{retried}");
    assert_eq!(retried["status"], "pending");
    assert_eq!(retried["attempt"], 0);
    assert_eq!(pending_after_retry.len(), 1);
    assert_eq!(pending_after_retry[0].id.as_str(), id);
    assert_eq!(queued_after_retry, 1);
    assert_eq!(start_status, StatusCode::OK, "{started}");
    assert_eq!(started["status"], "running");
    assert_eq!(started["attempt"], 1);
    assert_eq!(started["lease"]["attempt"], 1);
    // A running manual task keeps its queue message (the queue holds every active task).
    assert_eq!(queued(&app).await, 1);
}

#[tokio::test]
async fn a_task_started_failed_retried_and_started_again_is_on_attempt_2() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("flaky", "anna", "P1").await;

    // Act
    let first = app.admin.action(&id, "start", None).await.unwrap();
    let failed = app
        .admin
        .action(&id, "fail", Some(&json!({"error": "first try"})))
        .await
        .unwrap();
    let retried = app.admin.action(&id, "retry", None).await.unwrap();
    let second = app.admin.action(&id, "start", None).await.unwrap();

    // Assert
    assert_eq!(first.attempt, 1);
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.attempt, 1);
    assert_eq!(retried.status, TaskStatus::Pending);
    assert_eq!(retried.attempt, 1);
    assert_eq!(retried.error, None);
    assert_eq!(second.status, TaskStatus::Running);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.lease.as_ref().unwrap().attempt, 2);
    assert_eq!(
        actions(&app, &id).await,
        ["create", "start", "fail", "retry", "start"]
    );
}

#[tokio::test]
async fn failing_with_an_error_records_it_on_the_task_and_in_the_log() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("doomed", "anna", "P1").await;
    app.admin.action(&id, "start", None).await.unwrap();

    // Act
    let (status, failed) = act(&app, &id, "fail", Some(json!({"error": "boom"}))).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "boom");
    assert_eq!(failed["lease"], Value::Null);
    let reread = get(&app, &id).await;
    assert_eq!(reread["status"], "failed");
    assert_eq!(reread["error"], "boom");
    let logs = app.admin.logs(&id).await.unwrap();
    let fail = logs.last().unwrap();
    assert_eq!(fail.action, "fail");
    assert_eq!(fail.message.as_deref(), Some("boom"));
    assert_eq!(fail.old_status, Some(TaskStatus::Running));
    assert_eq!(fail.new_status, Some(TaskStatus::Failed));
    assert_eq!(fail.operator, "admin");
}

#[tokio::test]
async fn completing_with_a_wrong_fencing_token_is_a_stale_lease_and_the_task_stays_running() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("fenced", "anna", "P1").await;
    let (_, started) = act(&app, &id, "start", None).await;
    let token = started["lease"]["token"].as_str().unwrap().to_string();
    let before = get(&app, &id).await;

    // Act
    let (status, body) = act(
        &app,
        &id,
        "complete",
        Some(json!({"result": "late", "fencing_token": format!("{token}x")})),
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "stale_lease");
    let after = get(&app, &id).await;
    assert_eq!(after, before);
    assert_eq!(after["status"], "running");
    assert_eq!(after["lease"]["token"], token.as_str());
    assert_eq!(actions(&app, &id).await, ["create", "start"]);
}

#[tokio::test]
async fn completing_with_the_right_fencing_token_in_the_header_succeeds() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("fenced", "anna", "P1").await;
    let (_, started) = act(&app, &id, "start", None).await;
    let token = started["lease"]["token"].as_str().unwrap().to_string();

    // Act
    let (status, done) = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{id}/complete"))
                .header("X-Fencing-Token", &token)
                .json(&json!({"result": "on time"})),
        )
        .await;

    // Assert
    assert!(!token.is_empty());
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], "on time");
    assert_eq!(get(&app, &id).await["status"], "completed");
}

#[tokio::test]
async fn a_zombie_holding_the_lease_of_an_earlier_attempt_cannot_finish_the_new_one() {
    // Arrange: attempt 1 (token A) fails and is retried; attempt 2 holds token B.
    let app = TestApp::spawn().await;
    let id = app.create("zombie", "anna", "P1").await;
    let first = app.admin.action(&id, "start", None).await.unwrap();
    let token_a = first.lease.unwrap().token;
    app.admin.action(&id, "fail", None).await.unwrap();
    app.admin.action(&id, "retry", None).await.unwrap();
    let second = app.admin.action(&id, "start", None).await.unwrap();
    let token_b = second.lease.unwrap().token;
    let before = get(&app, &id).await;

    // Act
    let (zombie_done, zombie_done_body) = act(
        &app,
        &id,
        "complete",
        Some(json!({"result": "zombie", "fencing_token": token_a})),
    )
    .await;
    let (zombie_fail, zombie_fail_body) = act(
        &app,
        &id,
        "fail",
        Some(json!({"error": "zombie", "fencing_token": token_a})),
    )
    .await;
    let after_zombie = get(&app, &id).await;
    let (live, live_body) = act(
        &app,
        &id,
        "complete",
        Some(json!({"result": "live", "fencing_token": token_b})),
    )
    .await;

    // Assert
    assert_ne!(token_a, token_b);
    assert_eq!(zombie_done, StatusCode::CONFLICT, "{zombie_done_body}");
    assert_eq!(zombie_done_body["error"]["code"], "stale_lease");
    assert_eq!(zombie_fail, StatusCode::CONFLICT, "{zombie_fail_body}");
    assert_eq!(zombie_fail_body["error"]["code"], "stale_lease");
    assert_eq!(after_zombie, before);
    assert_eq!(live, StatusCode::OK, "{live_body}");
    assert_eq!(live_body["status"], "completed");
    assert_eq!(live_body["result"], "live");
    assert_eq!(live_body["attempt"], 2);
}

#[tokio::test]
async fn fifty_concurrent_starts_let_exactly_one_caller_claim_the_task() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("contested", "anna", "P1").await;
    let path = format!("/api/tasks/{id}/start");

    // Act
    let answers =
        futures::future::join_all((0..50).map(|_| app.call(app.req(Method::PUT, &path)))).await;

    // Assert
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, b)| b)
        .collect();
    let losers: Vec<&(StatusCode, Value)> = answers
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    assert_eq!(losers.len(), 49);
    for (status, body) in &losers {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "illegal_transition", "{body}");
    }
    let task = get(&app, &id).await;
    assert_eq!(task["status"], "running");
    assert_eq!(task["attempt"], 1);
    assert_eq!(task["lease"]["token"], winners[0]["lease"]["token"]);
    let starts = actions(&app, &id)
        .await
        .into_iter()
        .filter(|a| a == "start")
        .count();
    assert_eq!(starts, 1);
}

#[tokio::test]
async fn retrying_a_cancelled_task_is_logged_as_retry_from_cancelled_to_pending() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("again", "anna", "P1").await;
    app.admin
        .action(&id, "cancel", Some(&json!({"reason": "not now"})))
        .await
        .unwrap();

    // Act
    app.admin.action(&id, "retry", None).await.unwrap();

    // Assert
    let logs = app.admin.logs(&id).await.unwrap();
    let rows: Vec<(&str, Option<TaskStatus>, Option<TaskStatus>)> = logs
        .iter()
        .map(|l| (l.action.as_str(), l.old_status, l.new_status))
        .collect();
    use TaskStatus::*;
    assert_eq!(
        rows,
        [
            ("create", None, Some(Pending)),
            ("cancel", Some(Pending), Some(Cancelled)),
            ("retry", Some(Cancelled), Some(Pending)),
        ]
    );
    assert_eq!(logs[1].message.as_deref(), Some("not now"));
    assert_eq!(logs[2].operator, "admin");
}
