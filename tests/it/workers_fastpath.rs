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
async fn a_message_that_is_no_valid_task_for_its_subject_is_dead_lettered_with_the_reason_never_run(
) {
    // Arrange: bodies that disagree with anna's P1 noop subject, one that is not JSON, then a
    // good one.
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let bad = [
        (
            "01JSUBJECTAUTHORITYBAD0001",
            json!({"task_name": "x", "assigned_to": "bob"}),
            "bob",
        ),
        (
            "01JSUBJECTAUTHORITYBAD0002",
            json!({"task_name": "x", "priority": "P0"}),
            "P0",
        ),
        (
            "01JSUBJECTAUTHORITYBAD0003",
            json!({"task_name": "x", "kind": "manual"}),
            "manual",
        ),
    ];
    let garbage = "01JSUBJECTAUTHORITYBAD0004";
    let good = "01JSUBJECTAUTHORITYGOOD001";

    // Act
    for (id, body, _) in &bad {
        publish_direct(&app, "tasks.anna.p1.noop", id, body.clone()).await;
    }
    let js = app.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, garbage);
    let junk = bytes::Bytes::from_static(b"\xff{not json");
    js.publish_with_headers("tasks.anna.p1.noop", headers, junk)
        .await
        .unwrap()
        .await
        .unwrap();
    publish_direct(&app, "tasks.anna.p1.noop", good, json!({"task_name": "ok"})).await;
    let ran = finished(&app, good, Duration::from_secs(15)).await;
    let anna = [("assigned_to", "anna".to_string())];
    let dead = crate::harness::eventually("4 dead letters", Duration::from_secs(10), || async {
        let dead = app.admin.dead_letters(&anna).await.ok()?;
        (dead.len() == 4).then_some(dead)
    })
    .await;

    // Assert: the good one ran; the others are no task of anyone's, left the queue, and are
    // dead letters of anna's (the subject's) saying why.
    assert_eq!(ran.status.as_str(), "completed", "{:?}", ran.error);
    for (id, _, named) in &bad {
        let got = app.admin.get_task(id).await;
        assert!(got.is_err(), "{id} became a task: {got:?}");
        let letter = dead
            .iter()
            .find(|t| t.id.as_str() == *id)
            .expect("dead letter");
        let why = letter.error.clone().unwrap_or_default();
        assert!(why.contains(named) && why.contains("subject"), "{why}");
    }
    let letter = dead
        .iter()
        .find(|t| t.id.as_str() == garbage)
        .expect("dead letter");
    assert!(
        letter.error.as_deref().unwrap_or_default().contains("JSON"),
        "{letter:?}"
    );
    assert_eq!(letter.payload["subject"], "tasks.anna.p1.noop");
    let mut queue = js.get_stream("TASKS").await.unwrap();
    assert_eq!(queue.info().await.unwrap().state.messages, 0);
}
