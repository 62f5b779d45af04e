//! Delayed tasks (`run_at`, `delay_s`): held by the broker's message schedules until due, then
//! queued and run like any task.

use crate::harness::app::worker_settings;
use crate::harness::{eventually, TestApp};
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// Creates a task with `body` over the API, asserting 201; returns the task.
async fn create(app: &TestApp, body: Value) -> Value {
    let (status, task) = app
        .call(app.req(Method::POST, "/api/tasks").json(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    task
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().expect("a time").parse().expect("RFC 3339")
}

/// The task's log actions, in order.
async fn actions(app: &TestApp, id: &str) -> Vec<String> {
    let logs = app.admin.logs(id).await.unwrap();
    logs.into_iter().map(|l| l.action).collect()
}

/// Waits until the task has `status` (a delayed task fires within seconds here).
async fn until_status(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(
        &format!("task {id} to be {status}"),
        Duration::from_secs(30),
        || async {
            let (_, t) = app
                .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
                .await;
            (t["status"] == status).then_some(t)
        },
    )
    .await
}

/// Sends a create of `{"task_name": "bad", "assigned_to": "anna"}` plus each case's fields and
/// asserts a 422 whose message names the case's field.
async fn creates_are_refused_naming(app: &TestApp, cases: &[(Value, &str)]) {
    for (extra, field) in cases {
        let mut body = json!({"task_name": "bad", "assigned_to": "anna"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = app
            .call(app.req(Method::POST, "/api/tasks").json(&body))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body} → {message}");
    }
}

/// How many schedule messages `TASKS` holds for delayed tasks.
async fn held_schedules(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let stream = js.get_stream("TASKS").await.unwrap();
    let mut subjects = stream.info_with_subjects("scheduled.>").await.unwrap();
    let mut n = 0;
    while let Some(Ok((_, count))) = futures::StreamExt::next(&mut subjects).await {
        n += count as u64;
    }
    n
}

#[tokio::test]
async fn a_delayed_task_is_scheduled_until_its_run_at_then_runs_never_before() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;

    // Act
    let task = create(
        &app,
        json!({"task_name": "later", "assigned_to": "anna", "kind": "noop", "delay_s": 2}),
    )
    .await;
    let id = task["id"].as_str().unwrap();
    let (_, seen) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    let done = until_status(&app, id, "completed").await;

    // Assert
    assert_eq!(task["status"], "scheduled");
    assert_eq!(seen["status"], "scheduled", "{seen}");
    let run_at = time(&task["run_at"]);
    assert!(run_at > time(&task["created_time"]) + chrono::Duration::milliseconds(1500));
    assert!(time(&done["started_time"]) >= run_at - chrono::Duration::milliseconds(50));
    assert_eq!(
        actions(&app, id).await,
        ["scheduled", "create", "start", "complete"]
    );
    assert_eq!(
        held_schedules(&app).await,
        0,
        "the schedule message is gone"
    );
}

#[tokio::test]
async fn delayed_tasks_due_together_are_listed_p0_first_once_they_fire() {
    // Arrange: a bot's (manual) tasks, created P2 first.
    let app = TestApp::spawn().await;
    let run_at = (Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut ids = Vec::new();
    for p in ["P2", "P1", "P0"] {
        let t = create(
            &app,
            json!({"task_name": p, "assigned_to": "anna", "priority": p, "run_at": run_at}),
        )
        .await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let before = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();

    // Act
    let pending = eventually(
        "all three in the pending list",
        Duration::from_secs(30),
        || async {
            let p = app
                .admin
                .pending(&[("assigned_to", "anna".into())])
                .await
                .ok()?;
            (p.len() == 3).then_some(p)
        },
    )
    .await;

    // Assert
    assert!(before.is_empty(), "nothing is pending before run_at");
    let order: Vec<&str> = pending.iter().map(|t| t.task_name.as_str()).collect();
    assert_eq!(order, ["P0", "P1", "P2"]);
    let p0 = app.admin.get_task(&ids[2]).await.unwrap();
    assert_eq!(p0.status.as_str(), "pending");
    assert_eq!(actions(&app, &ids[2]).await, ["scheduled", "create"]);
}

/// The tasks a listing answered, by id, with their status.
async fn listed(app: &TestApp, query: &str) -> Vec<(String, String)> {
    let (status, page) = app
        .call(app.req(Method::GET, &format!("/api/tasks?{query}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let tasks = page.as_array().cloned().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    tasks
        .iter()
        .map(|t| (text(&t["id"]), text(&t["status"])))
        .collect()
}

/// Creates a bot's (manual) task for anna due in 1 s and waits until its schedule fired (no
/// worker, and no one reads anna's /pending, so nothing records it); answers its id.
async fn fired_and_unrecorded(app: &TestApp) -> String {
    let body = json!({"task_name": "due", "assigned_to": "anna", "delay_s": 1});
    let task = create(app, body).await;
    let fired = || async { (held_schedules(app).await == 0).then_some(()) };
    eventually("the schedule to fire", Duration::from_secs(30), fired).await;
    task["id"].as_str().unwrap().to_string()
}

/// Waits until anna's `status=pending` listing shows a task (the fired copy is stored with the
/// schedule's removal, but read from any replica); answers the listing.
async fn listed_pending(app: &TestApp) -> Vec<(String, String)> {
    let shown = || async {
        let page = listed(app, "assigned_to=anna&status=pending").await;
        (!page.is_empty()).then_some(page)
    };
    eventually("a task listed pending", Duration::from_secs(10), shown).await
}

#[tokio::test]
async fn a_fired_manual_task_nobody_read_yet_shows_pending_and_reading_it_writes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = fired_and_unrecorded(&app).await;

    // Act
    let pending = listed_pending(&app).await;
    let (_, one) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    let every = listed(&app, "assigned_to=anna").await;
    let scheduled = listed(&app, "assigned_to=anna&status=scheduled").await;

    // Assert
    let shown = vec![(id.clone(), "pending".to_string())];
    assert_eq!(pending, shown, "listed by status");
    assert_eq!(one["status"], "pending", "{one}");
    assert_eq!(every, shown, "listed with every status");
    assert!(scheduled.is_empty(), "no longer held: {scheduled:?}");
    assert_eq!(
        actions(&app, &id).await,
        ["scheduled"],
        "reads wrote nothing"
    );
}

#[tokio::test]
async fn a_bot_starts_a_fired_task_it_saw_pending_before_anyone_recorded_it() {
    // Arrange: the bot saw the task pending.
    let app = TestApp::spawn().await;
    let id = fired_and_unrecorded(&app).await;
    listed_pending(&app).await;

    // Act
    let start = format!("/api/tasks/{id}/start");
    let (status, started) = app.call(app.req(Method::POST, &start)).await;
    let complete = format!("/api/tasks/{id}/complete");
    let (done, _) = app.call(app.req(Method::POST, &complete)).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["status"], "running");
    assert!(
        started["queue_seq"].is_u64(),
        "queued by the fired copy: {started}"
    );
    assert_eq!(done, StatusCode::OK);
    assert_eq!(
        actions(&app, &id).await,
        ["scheduled", "create", "start", "complete"]
    );
    let js = app.jetstream().await;
    let mut stream = js.get_stream("TASKS").await.unwrap();
    let queued = stream.info().await.unwrap().state.messages;
    assert_eq!(queued, 0, "the fired copy left the queue with its task");
}

#[tokio::test]
async fn a_delayed_task_cancelled_before_it_fires_never_runs() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let task = create(
        &app,
        json!({"task_name": "never", "assigned_to": "anna", "kind": "noop", "delay_s": 2}),
    )
    .await;
    let id = task["id"].as_str().unwrap();

    // Act
    let cancelled = app.admin.action(id, "cancel", None).await.unwrap();
    let marker = create(
        &app,
        json!({"task_name": "marker", "assigned_to": "anna", "kind": "noop", "delay_s": 3}),
    )
    .await;
    until_status(&app, marker["id"].as_str().unwrap(), "completed").await;

    // Assert: a later delayed task ran, the cancelled one did not.
    assert_eq!(cancelled.status.as_str(), "cancelled");
    let after = app.admin.get_task(id).await.unwrap();
    assert_eq!(after.status.as_str(), "cancelled");
    assert_eq!(actions(&app, id).await, ["scheduled", "cancel"]);
    assert_eq!(held_schedules(&app).await, 0);
}

#[tokio::test]
async fn a_rescheduled_task_runs_at_its_new_time_not_the_old_one() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let task = create(
        &app,
        json!({"task_name": "moved", "assigned_to": "anna", "kind": "noop", "delay_s": 1}),
    )
    .await;
    let id = task["id"].as_str().unwrap();

    // Act
    let new_time = Utc::now() + chrono::Duration::seconds(4);
    let body = json!({ "run_at": new_time.to_rfc3339() });
    let moved = app
        .admin
        .action(id, "reschedule", Some(&body))
        .await
        .unwrap();
    let done = until_status(&app, id, "completed").await;

    // Assert
    assert_eq!(moved.status.as_str(), "scheduled");
    let started = time(&done["started_time"]);
    assert!(
        started >= new_time - chrono::Duration::milliseconds(50),
        "started {started}, rescheduled to {new_time}"
    );
    assert_eq!(
        actions(&app, id).await,
        ["scheduled", "scheduled", "create", "start", "complete"]
    );
}

#[tokio::test]
async fn only_a_scheduled_task_can_be_rescheduled() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("now", "anna", "P1").await;

    // Act
    let (status, body) = app
        .call(
            app.req(Method::POST, &format!("/api/tasks/{id}/reschedule"))
                .json(&json!({"delay_s": 60})),
        )
        .await;
    let (huge, too_far) = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{id}/reschedule"))
                .json(&json!({"delay_s": 5_382_810_902_744_406_016u64})),
        )
        .await;
    let (neither, why) = app
        .call(
            app.req(Method::POST, &format!("/api/tasks/{id}/reschedule"))
                .json(&json!({})),
        )
        .await;

    // Assert
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(huge, StatusCode::UNPROCESSABLE_ENTITY, "{too_far}");
    assert_eq!(neither, StatusCode::UNPROCESSABLE_ENTITY, "{why}");
    assert!(
        why["error"]["message"].as_str().unwrap().contains("run_at"),
        "{why}"
    );
}

#[tokio::test]
async fn a_delayed_task_survives_a_nats_server_restart_before_it_fires() {
    // Arrange
    let mut app = TestApp::spawn().await;
    let task = create(
        &app,
        json!({"task_name": "survivor", "assigned_to": "anna", "delay_s": 3}),
    )
    .await;
    let id = task["id"].as_str().unwrap().to_string();

    // Act: SIGKILL and restart on the same store before run_at.
    app.nats.kill();
    app.nats.restart().await;
    let pending = eventually(
        "the delayed task in the pending list",
        Duration::from_secs(40),
        || async {
            let p = app
                .admin
                .pending(&[("assigned_to", "anna".into())])
                .await
                .ok()?;
            (p.len() == 1).then_some(p)
        },
    )
    .await;

    // Assert
    assert_eq!(pending[0].id.as_str(), id);
    assert_eq!(actions(&app, &id).await, ["scheduled", "create"]);
}

#[tokio::test]
async fn a_run_at_in_the_past_queues_the_task_at_once() {
    // Arrange
    let app = TestApp::spawn().await;
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();

    // Act
    let task = create(
        &app,
        json!({"task_name": "late", "assigned_to": "anna", "run_at": past}),
    )
    .await;

    // Assert
    assert_eq!(task["status"], "pending");
    let pending = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
}

#[tokio::test]
async fn bad_run_at_and_delay_values_are_422s_naming_the_field_and_write_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let far = (Utc::now() + chrono::Duration::days(400)).to_rfc3339();
    let soon = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cases = [
        (json!({"run_at": "tomorrow at nine"}), "run_at"),
        (json!({"run_at": "2026-13-01T09:00:00Z"}), "run_at"),
        (json!({"run_at": far}), "max_delay_days"),
        (json!({"delay_s": 400 * 86_400}), "max_delay_days"),
        (json!({"delay_s": u64::MAX}), "max_delay_days"),
        (json!({"run_at": soon, "delay_s": 5}), "run_at or delay_s"),
        (json!({"delay_s": -5}), "delay_s"),
    ];

    // Act and assert
    creates_are_refused_naming(&app, &cases).await;
    let (_, listed) = app.call(app.req(Method::GET, "/api/tasks")).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert_eq!(held_schedules(&app).await, 0);
}

#[tokio::test]
async fn scheduled_tasks_are_listed_by_status_and_counted_in_metrics() {
    // Arrange
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let t = create(
            &app,
            json!({"task_name": name, "assigned_to": "anna", "delay_s": 600}),
        )
        .await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    app.create("now", "anna", "P1").await;

    // Act
    let (_, listed) = app
        .call(app.req(Method::GET, "/api/tasks?status=scheduled"))
        .await;
    let (_, all) = app.call(app.req(Method::GET, "/api/tasks")).await;
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // Assert
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[1].as_str(), ids[0].as_str()], "newest first");
    assert_eq!(
        all.as_array().unwrap().len(),
        3,
        "every task, scheduled ones too: {all}"
    );
    assert!(
        metrics.lines().any(|l| l == "taskfleet_tasks_scheduled 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_task_published_to_nats_with_delay_s_waits_then_runs() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let js = app.jetstream().await;
    let body = json!({"id": "direct-delayed-1", "task_name": "from nats", "delay_s": 2});

    // Act
    js.publish("tasks.anna.p1.noop", body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let scheduled = until_status(&app, "direct-delayed-1", "scheduled").await;
    let done = until_status(&app, "direct-delayed-1", "completed").await;

    // Assert
    let run_at = time(&scheduled["run_at"]);
    assert!(time(&done["started_time"]) >= run_at - chrono::Duration::milliseconds(50));
    assert_eq!(
        actions(&app, "direct-delayed-1").await,
        ["scheduled", "create", "start", "complete"]
    );
}

#[tokio::test]
async fn a_schedule_that_targets_another_assignees_queue_is_refused() {
    // Arrange: anna's schedule subject, firing into trump's queue.
    let app = TestApp::spawn().await;
    let js = app.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    let at = (Utc::now() + chrono::Duration::milliseconds(500)).to_rfc3339();
    headers.insert("Nats-Schedule", format!("@at {at}").as_str());
    headers.insert("Nats-Schedule-Target", "tasks.trump.p0");
    let body = json!({"id": "smuggled", "task_name": "x", "assigned_to": "trump"});

    // Act
    js.publish_with_headers("scheduled.anna.smuggled", headers, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dead = eventually(
        "the fired message in the dead letters",
        Duration::from_secs(30),
        || async {
            let pending = app
                .admin
                .pending(&[("assigned_to", "trump".into())])
                .await
                .ok()?;
            assert!(pending.is_empty(), "{pending:?}");
            let (_, dead) = app
                .call(app.req(Method::GET, "/api/dead-letters?assigned_to=trump"))
                .await;
            (dead.as_array()?.len() == 1).then_some(dead)
        },
    )
    .await;

    // Assert
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("scheduled.anna.smuggled"), "{error}");
}

#[tokio::test]
async fn creates_with_one_debounce_key_fold_into_one_task_that_runs_once_quiet() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let body = |name: &str| {
        json!({"task_name": name, "assigned_to": "anna", "kind": "noop",
               "debounce_key": "chat:42", "debounce_s": 2})
    };

    // Act: three creates in quick succession, then one after the task ran.
    let first = create(&app, body("first")).await;
    let mut folded = Vec::new();
    for name in ["second", "third"] {
        let r = app
            .req(Method::POST, "/api/tasks")
            .json(&body(name))
            .send()
            .await
            .unwrap();
        let header = r.headers().get("taskfleet-folded-into").cloned();
        folded.push((r.status(), header, r.json::<Value>().await.unwrap()));
    }
    let id = first["id"].as_str().unwrap();
    let done = until_status(&app, id, "completed").await;
    let after = create(&app, body("fourth")).await;

    // Assert
    for (status, header, task) in &folded {
        assert_eq!(*status, StatusCode::OK, "{task}");
        assert_eq!(header.as_ref().unwrap().to_str().unwrap(), id);
        assert_eq!(task["id"], id);
    }
    assert_eq!(done["task_name"], "third", "the last create's body wins");
    assert_eq!(
        actions(&app, id).await,
        [
            "scheduled",
            "scheduled",
            "scheduled",
            "create",
            "start",
            "complete"
        ]
    );
    assert_ne!(
        after["id"], id,
        "a create after the task ran makes a new one"
    );
    assert_eq!(after["status"], "scheduled");
}

#[tokio::test]
async fn debounce_fields_go_together_and_alone() {
    // Arrange
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"debounce_key": "k"}), "debounce_s"),
        (json!({"debounce_s": 5}), "debounce_key"),
        (json!({"debounce_key": "k", "debounce_s": 0}), "debounce_s"),
        (
            json!({"debounce_key": "k", "debounce_s": 5, "delay_s": 5}),
            "delay_s",
        ),
        (
            json!({"debounce_key": "k", "debounce_s": 5, "idempotency_key": "i"}),
            "idempotency_key",
        ),
    ];

    // Act and assert
    creates_are_refused_naming(&app, &cases).await;
}

#[tokio::test]
async fn a_delayed_task_created_through_an_api_that_stops_before_it_fires_still_runs() {
    // Arrange: the create goes through a second API process, which then stops.
    let app = TestApp::spawn().await;
    let (other, stop) = app.another_api(|_| {}).await;
    let body = json!({"task_name": "orphan", "assigned_to": "anna", "kind": "noop", "delay_s": 2});
    let task = other.create_task(&body).await.unwrap();
    stop.cancel();

    // Act: a worker starts only after that API is gone.
    let _worker = app.worker("anna", 2, worker_settings()).await;
    let done = until_status(&app, task.id.as_str(), "completed").await;

    // Assert
    assert_eq!(task.status.as_str(), "scheduled");
    let run_at = task.run_at.unwrap();
    assert!(time(&done["started_time"]) >= run_at - chrono::Duration::milliseconds(50));
}
