//! The worker's short paths (issue 7): a task published straight to NATS is claimed with one
//! write, a noop's steps are recorded, and nothing of the usual trail is skipped.

use crate::harness::app::worker_settings;
use crate::harness::TestApp;
use crate::workers::{actions, finished};
use serde_json::json;
use std::time::Duration;

/// Publishes a worker-run task to `tasks.<assignee>.<p>.<kind>` the way a producer in another
/// language would (no taskfleet headers), with `id` as its `Nats-Msg-Id`.
async fn publish_direct(app: &TestApp, subject: &str, id: &str, body: serde_json::Value) {
    let js = app.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    js.publish_with_headers(
        subject.to_string(),
        headers,
        serde_json::to_vec(&body).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test]
async fn a_task_published_straight_to_nats_runs_with_its_whole_trail() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let id = "01JDIRECTPUBLISHEDTASK0001";

    // Act
    publish_direct(
        &app,
        "tasks.anna.p1.noop",
        id,
        json!({"task_name": "from python", "kind": "noop"}),
    )
    .await;
    let task = finished(&app, id, Duration::from_secs(15)).await;

    // Assert
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(task.task_name, "from python");
    assert_eq!(task.attempt, 1);
    assert!(task.started_time.is_some_and(|s| s >= task.created_time));
    assert_eq!(actions(&app, id).await, ["create", "start", "complete"]);
    let pending = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
}

#[tokio::test]
async fn a_listed_task_published_straight_to_nats_is_claimed_once_with_one_created_event() {
    // Arrange: the pending list records it first (no worker yet).
    let app = TestApp::spawn().await;
    let id = "01JDIRECTPUBLISHEDTASK0002";
    publish_direct(
        &app,
        "tasks.anna.p0.noop",
        id,
        json!({"task_name": "listed first", "kind": "noop"}),
    )
    .await;
    let listed = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    // Act: a worker then pulls it; its state already exists.
    let _worker = app.worker("anna", 1, worker_settings()).await;
    let task = finished(&app, id, Duration::from_secs(15)).await;

    // Assert
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(actions(&app, id).await, ["create", "start", "complete"]);
}

#[tokio::test]
async fn a_noop_with_steps_reports_each_step_before_completing() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 1, worker_settings()).await;

    // Act
    let id = crate::workers::create_kind(&app, "anna", "P1", "noop", json!({"steps": 3})).await;
    let task = finished(&app, &id, Duration::from_secs(15)).await;

    // Assert
    assert_eq!(task.status.as_str(), "completed", "{:?}", task.error);
    assert_eq!(task.progress.done, 3);
    assert_eq!(
        actions(&app, &id).await,
        ["create", "start", "step", "step", "step", "complete"]
    );
}

#[tokio::test]
async fn a_body_naming_another_assignee_priority_or_kind_than_its_subject_is_never_run() {
    // Arrange: three bodies that disagree with anna's P1 noop subject, then a good one.
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let bad = [
        (
            "01JSUBJECTAUTHORITYBAD0001",
            json!({"task_name": "x", "assigned_to": "bob"}),
        ),
        (
            "01JSUBJECTAUTHORITYBAD0002",
            json!({"task_name": "x", "priority": "P0"}),
        ),
        (
            "01JSUBJECTAUTHORITYBAD0003",
            json!({"task_name": "x", "kind": "manual"}),
        ),
    ];
    let good = "01JSUBJECTAUTHORITYGOOD001";

    // Act
    for (id, body) in &bad {
        publish_direct(&app, "tasks.anna.p1.noop", id, body.clone()).await;
    }
    publish_direct(&app, "tasks.anna.p1.noop", good, json!({"task_name": "ok"})).await;
    let ran = finished(&app, good, Duration::from_secs(15)).await;

    // Assert: the good one ran; the others are no task of anyone's, and left the queue.
    assert_eq!(ran.status.as_str(), "completed", "{:?}", ran.error);
    for (id, _) in &bad {
        let got = app.admin.get_task(id).await;
        assert!(got.is_err(), "{id} became a task: {got:?}");
    }
    let js = app.jetstream().await;
    let mut queue = js.get_stream("TASKS").await.unwrap();
    assert_eq!(queue.info().await.unwrap().state.messages, 0);
}
