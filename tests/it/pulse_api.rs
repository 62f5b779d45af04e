//! Live Task Pulse over HTTP (seed 002): step/next, heartbeat and progress on running tasks,
//! idempotency keys on actions, task-scoped tokens, and cleanup of finished tasks.

use crate::harness::app::TASK_TOKEN_SECRET;
use crate::harness::events::events;
use crate::harness::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taskfleet::client::{ApiClient, ClientError};
use taskfleet::domain::{TaskEvent, TaskId};

/// Creates a task for anna with `steps` and returns its id.
async fn create_with_steps(app: &TestApp, name: &str, steps: &[&str]) -> String {
    let body = json!({"task_name": name, "assigned_to": "anna", "steps": steps});
    app.admin.create_task(&body).await.unwrap().id.to_string()
}

/// Creates a task for anna and starts it.
async fn running(app: &TestApp, steps: &[&str]) -> String {
    let id = create_with_steps(app, "pulse", steps).await;
    app.admin.action(&id, "start", None).await.unwrap();
    id
}

/// The task's `progress` object as the API returns it.
async fn progress(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["progress"].clone()
}

/// `POST /api/tasks/{id}/{verb}` with a body and an optional idempotency key.
async fn post(
    app: &TestApp,
    id: &str,
    verb: &str,
    body: Value,
    key: Option<&str>,
) -> (StatusCode, Value, bool) {
    let mut req = app
        .req(Method::POST, &format!("/api/tasks/{id}/{verb}"))
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

/// Every event of `kind` of task `id`, oldest first.
async fn events_of(app: &TestApp, id: &str, kind: &str) -> Vec<TaskEvent> {
    events(app, &format!("events.anna.{id}.{kind}")).await
}

fn api_status(e: ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => status,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn seed_002_example_walks_three_steps_over_http_and_completes() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = create_with_steps(&app, "Weekly report", &["fetch", "summarise", "publish"]).await;
    assert_eq!(
        progress(&app, &id).await,
        json!({"done": 0, "total": 3, "current": "fetch"})
    );

    // Act + Assert: start, step, next (the alias), complete.
    app.admin.action(&id, "start", None).await.unwrap();
    assert_eq!(
        progress(&app, &id).await,
        json!({"done": 0, "total": 3, "current": "fetch"})
    );

    let (status, body, _) = post(&app, &id, "step", json!({"info": "25 rows"}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["progress"]["done"], 1);
    assert_eq!(
        progress(&app, &id).await,
        json!({"done": 1, "total": 3, "current": "summarise", "info": "25 rows"})
    );

    let (status, body, _) = post(&app, &id, "next", json!({}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        progress(&app, &id).await,
        json!({"done": 2, "total": 3, "current": "publish"})
    );

    let done = app
        .admin
        .action(&id, "complete", Some(&json!({"result": "https://x/1"})))
        .await
        .unwrap();
    assert_eq!(done.status.as_str(), "completed");
    assert_eq!(progress(&app, &id).await, json!({"done": 3, "total": 3}));

    let steps = events_of(&app, &id, "step").await;
    let data: Vec<&Value> = steps.iter().map(|e| &e.data).collect();
    assert_eq!(
        data,
        [
            &json!({"index": 0, "step": "fetch", "next": "summarise", "done": 1, "total": 3}),
            &json!({"index": 1, "step": "summarise", "next": "publish", "done": 2, "total": 3}),
        ]
    );
    assert_eq!(steps[0].message.as_deref(), Some("25 rows"));
    assert_eq!(steps[1].message, None);
}

#[tokio::test]
async fn a_task_without_named_steps_counts_steps_named_by_the_caller() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = running(&app, &[]).await;

    // Act
    let t = app
        .admin
        .step(&id, Some("logged in"), Some("login"), None)
        .await
        .unwrap();
    app.admin.step(&id, None, None, None).await.unwrap();

    // Assert
    assert_eq!((t.progress.done, t.progress.total), (1, 0));
    let data: Vec<Value> = events_of(&app, &id, "step")
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(
        data,
        [
            json!({"index": 0, "step": "login", "next": null, "done": 1, "total": 0}),
            json!({"index": 1, "step": "step 2", "next": null, "done": 2, "total": 0}),
        ]
    );
}

#[tokio::test]
async fn heartbeat_and_progress_update_the_task_and_emit_events() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = running(&app, &["fetch", "publish"]).await;

    // Act
    let beat = app
        .admin
        .heartbeat(&id, Some("60% processed"), None)
        .await
        .unwrap();
    let pct = app
        .admin
        .progress(&id, 60, Some("3 of 5 pages"), None)
        .await
        .unwrap();

    // Assert
    assert_eq!(beat.progress.info.as_deref(), Some("60% processed"));
    assert_eq!(pct.progress.percent, Some(60));
    assert_eq!(
        progress(&app, &id).await,
        json!({"done": 0, "total": 2, "current": "fetch", "percent": 60, "info": "3 of 5 pages"})
    );
    let beats = events_of(&app, &id, "heartbeat").await;
    assert_eq!(beats.len(), 1);
    assert_eq!(beats[0].message.as_deref(), Some("60% processed"));
    assert_eq!(beats[0].data["current"], "fetch");
    assert_eq!(beats[0].data["done"], 0);
    assert_eq!(beats[0].data["total"], 2);
    let reports = events_of(&app, &id, "progress").await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].data["percent"], 60);
    assert_eq!(reports[0].message.as_deref(), Some("3 of 5 pages"));

    // A step moves on and clears the percentage of the finished one.
    let stepped = app.admin.step(&id, None, None, None).await.unwrap();
    assert_eq!(stepped.progress.percent, None);
    assert_eq!(stepped.progress.current.as_deref(), Some("publish"));
}

#[tokio::test]
async fn pulse_calls_on_a_task_that_is_not_running_are_409() {
    // Arrange
    let app = TestApp::spawn().await;
    let pending = create_with_steps(&app, "pending", &["a"]).await;
    let finished = running(&app, &["a"]).await;
    app.admin.action(&finished, "complete", None).await.unwrap();

    // Act + Assert
    for id in [&pending, &finished] {
        for (verb, body) in [
            ("step", json!({})),
            ("heartbeat", json!({"info": "x"})),
            ("progress", json!({"percent": 10})),
        ] {
            let (status, body, _) = post(&app, id, verb, body, None).await;
            assert_eq!(status, StatusCode::CONFLICT, "{verb}: {body}");
            assert_eq!(body["error"]["code"], "illegal_transition", "{body}");
        }
    }
    assert_eq!(
        progress(&app, &pending).await,
        json!({"done": 0, "total": 1, "current": "a"})
    );
}

#[tokio::test]
async fn stepping_past_the_last_named_step_is_409_with_a_clear_message() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = running(&app, &["only"]).await;
    app.admin.step(&id, None, None, None).await.unwrap();

    // Act
    let (status, body, _) = post(&app, &id, "step", json!({}), None).await;

    // Assert
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("all 1 of its steps are done"), "{message}");
    assert_eq!(progress(&app, &id).await, json!({"done": 1, "total": 1}));
}

#[tokio::test]
async fn a_percent_outside_0_to_100_is_422() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = running(&app, &[]).await;

    // Act + Assert
    for body in [
        json!({"percent": 150}),
        json!({"percent": -1}),
        json!({"percent": "half"}),
        json!({"info": "no percent"}),
    ] {
        let (status, answer, _) = post(&app, &id, "progress", body.clone(), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }
    assert_eq!(progress(&app, &id).await, json!({"done": 0, "total": 0}));
    assert!(events_of(&app, &id, "progress").await.is_empty());
}

#[tokio::test]
async fn the_same_idempotency_key_on_step_advances_once() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = running(&app, &["a", "b", "c"]).await;

    // Act
    let first = post(&app, &id, "step", json!({"info": "x"}), Some("step-1")).await;
    let again = post(&app, &id, "step", json!({"info": "x"}), Some("step-1")).await;
    let other = post(&app, &id, "next", json!({}), Some("step-1")).await;

    // Assert
    assert_eq!((first.0, first.2), (StatusCode::OK, false), "{}", first.1);
    assert_eq!((again.0, again.2), (StatusCode::OK, true), "{}", again.1);
    assert_eq!(again.1["progress"]["done"], 1);
    assert_eq!(other.0, StatusCode::OK, "{}", other.1);
    assert_eq!(
        other.1["progress"]["done"], 1,
        "next is the same action as step"
    );
    assert_eq!(events_of(&app, &id, "step").await.len(), 1);

    let t = app
        .admin
        .step(&id, None, None, Some("step-2"))
        .await
        .unwrap();
    assert_eq!(t.progress.done, 2);
}

#[tokio::test]
async fn a_retried_complete_with_the_same_key_is_200_both_times() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = running(&app, &[]).await;
    let body = json!({"result": "ok"});

    // Act
    let first = post(&app, &id, "complete", body.clone(), Some("done-1")).await;
    let again = post(&app, &id, "complete", body.clone(), Some("done-1")).await;
    let unkeyed = post(&app, &id, "complete", body, None).await;

    // Assert
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert_eq!((again.0, again.2), (StatusCode::OK, true), "{}", again.1);
    assert_eq!(again.1["status"], "completed");
    assert_eq!(unkeyed.0, StatusCode::CONFLICT, "{}", unkeyed.1);
    assert_eq!(events_of(&app, &id, "completed").await.len(), 1);
}

#[tokio::test]
async fn a_failed_action_releases_its_key_so_a_retry_applies() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = create_with_steps(&app, "later", &["a"]).await;

    // Act: refused while pending, then applied once running.
    let refused = post(&app, &id, "step", json!({}), Some("k")).await;
    app.admin.action(&id, "start", None).await.unwrap();
    let applied = post(&app, &id, "step", json!({}), Some("k")).await;

    // Assert
    assert_eq!(refused.0, StatusCode::CONFLICT, "{}", refused.1);
    assert_eq!(
        (applied.0, applied.2),
        (StatusCode::OK, false),
        "{}",
        applied.1
    );
    assert_eq!(applied.1["progress"]["done"], 1);
}

#[tokio::test]
async fn concurrent_steps_never_lose_an_update() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = running(&app, &[]).await;

    // Act
    let calls = (0..8).map(|_| app.admin.step(&id, None, None, None));
    let results = futures::future::join_all(calls).await;

    // Assert
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut dones: Vec<u32> = results
        .iter()
        .map(|r| r.as_ref().unwrap().progress.done)
        .collect();
    dones.sort();
    assert_eq!(dones, (1..=8).collect::<Vec<_>>());
    assert_eq!(progress(&app, &id).await["done"], 8);
}

#[tokio::test]
async fn a_task_token_steps_its_own_task_but_gets_403_on_another() {
    // Arrange
    let app = TestApp::spawn().await;
    let own = running(&app, &["a", "b"]).await;
    let other = running(&app, &["a", "b"]).await;
    let token = taskfleet::token::mint(
        TASK_TOKEN_SECRET.as_bytes(),
        &TaskId::parse(&own).unwrap(),
        1,
    );
    let task = ApiClient::new(&app.url, Some(token));

    // Act
    let stepped = task.step(&own, Some("fetched"), None, None).await;
    let beat = task.heartbeat(&own, None, None).await;
    let foreign = task.step(&other, None, None, None).await;

    // Assert
    assert_eq!(stepped.unwrap().progress.done, 1);
    assert!(beat.is_ok());
    assert_eq!(api_status(foreign.unwrap_err()), 403);
    assert_eq!(progress(&app, &other).await["done"], 0);
}

#[tokio::test]
async fn cleanup_removes_only_old_finished_tasks_and_needs_an_admin_key() {
    // Arrange
    let app = TestApp::spawn().await;
    let completed = running(&app, &[]).await;
    app.admin
        .action(&completed, "complete", None)
        .await
        .unwrap();
    let failed = running(&app, &[]).await;
    let fail = json!({"error": "login expired"});
    app.admin
        .action(&failed, "fail", Some(&fail))
        .await
        .unwrap();
    let cancelled = create_with_steps(&app, "cancel me", &[]).await;
    app.admin.action(&cancelled, "cancel", None).await.unwrap();
    let pending = create_with_steps(&app, "waiting", &[]).await;
    let busy = running(&app, &[]).await;

    // Act + Assert: nothing is a week old yet; then everything finished goes.
    assert_eq!(
        api_status(app.anna.cleanup(Some(0)).await.unwrap_err()),
        403
    );
    assert_eq!(app.admin.cleanup(None).await.unwrap(), 0);
    let (status, body) = app
        .call(
            app.req(Method::POST, "/api/tasks/cleanup")
                .json(&json!({"older_than_s": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"removed": 3}));

    for gone in [&completed, &failed, &cancelled] {
        assert_eq!(api_status(app.admin.get_task(gone).await.unwrap_err()), 404);
    }
    assert_eq!(
        app.admin.get_task(&pending).await.unwrap().status.as_str(),
        "pending"
    );
    assert_eq!(
        app.admin.get_task(&busy).await.unwrap().status.as_str(),
        "running"
    );
    assert_eq!(app.admin.cleanup(Some(0)).await.unwrap(), 0);
}
