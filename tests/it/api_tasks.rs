//! Creating, reading and listing tasks; the queue as bots see it.

use crate::harness::TestApp;
use futures::{FutureExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taskfleet::domain::TaskStatus;
use taskfleet::tasks::ListFilter;

#[tokio::test]
async fn seed_001_walkthrough_create_pending_start_complete_and_log() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act: the four curl calls of seed 001.
    let (status, created) = app
        .call(app.req(Method::POST, "/api/tasks").json(&json!({
            "task_name": "发送消息", "assigned_to": "anna", "priority": "P1", "created_by": "hope"
        })))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let (_, pending) = app
        .call(app.req(Method::GET, "/api/tasks/pending?assigned_to=anna"))
        .await;
    let (start_status, started) = app
        .call(app.req(Method::PUT, &format!("/api/tasks/{id}/start")))
        .await;
    let (done_status, done) = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{id}/complete"))
                .header("Content-Type", "application/json")
                .body(r#"{"result":"执行成功"}"#),
        )
        .await;
    let (_, logs) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}/logs")))
        .await;

    // Assert
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["status"], "pending");
    assert_eq!(created["priority"], "P1");
    assert_eq!(created["created_by"], "hope");
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["id"], id.as_str());
    assert_eq!(start_status, StatusCode::OK);
    assert_eq!(started["status"], "running");
    assert_eq!(started["attempt"], 1);
    assert_eq!(done_status, StatusCode::OK);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], "执行成功");
    let actions: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create", "start", "complete"]);
    let complete = &logs[2];
    for field in [
        "task_id",
        "action",
        "old_status",
        "new_status",
        "message",
        "operator",
        "created_time",
    ] {
        assert!(
            complete.get(field).is_some(),
            "log row lacks {field}: {complete}"
        );
    }
    assert_eq!(complete["old_status"], "running");
    assert_eq!(complete["new_status"], "completed");
    assert_eq!(complete["message"], "执行成功");
    assert_eq!(complete["operator"], "admin");
}

#[tokio::test]
async fn pending_lists_p0_before_p1_before_p2_and_oldest_first_within_a_priority() {
    let app = TestApp::spawn().await;
    let p2a = app.create("p2 first", "anna", "P2").await;
    let p1a = app.create("p1 first", "anna", "P1").await;
    let p0a = app.create("p0 first", "anna", "P0").await;
    let p2b = app.create("p2 second", "anna", "P2").await;
    let p0b = app.create("p0 second", "anna", "P0").await;
    let _other = app.create("someone else's", "trump", "P0").await;

    let pending = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();

    let ids: Vec<String> = pending.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(ids, [p0a, p0b, p1a, p2a, p2b]);
}

#[tokio::test]
async fn pending_honours_limit_and_skips_started_tasks() {
    let app = TestApp::spawn().await;
    let first = app.create("one", "anna", "P1").await;
    let second = app.create("two", "anna", "P1").await;
    let third = app.create("three", "anna", "P1").await;
    app.admin.action(&first, "start", None).await.unwrap();

    let page = app
        .admin
        .pending(&[("assigned_to", "anna".into()), ("limit", "1".into())])
        .await
        .unwrap();
    let all = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();

    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id.as_str(), second);
    let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [second.as_str(), third.as_str()]);
}

#[tokio::test]
async fn a_task_is_queued_on_its_assignee_and_priority_subject_with_its_id_as_msg_id() {
    let app = TestApp::spawn().await;
    let id = app.create("x", "session_agent", "P0").await;

    let js = app.jetstream().await;
    let stream = js.get_stream("TASKS").await.unwrap();
    let msg = stream
        .direct_get_last_for_subject("tasks.session_agent.p0")
        .await
        .unwrap();

    assert_eq!(
        msg.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(id.as_str())
    );
    let body: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["task_name"], "x");
}

#[tokio::test]
async fn a_started_task_leaves_the_pending_list_and_its_queue_message_goes_when_it_finishes() {
    // Arrange
    let app = TestApp::spawn().await;
    let anna = [("assigned_to", "anna".to_string())];
    let id = app.create("x", "anna", "P1").await;
    let js = app.jetstream().await;
    let mut stream = js.get_stream("TASKS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // Act
    app.admin.action(&id, "start", None).await.unwrap();
    let pending_while_running = app.admin.pending(&anna).await.unwrap();
    let queued_while_running = stream.info().await.unwrap().state.messages;
    app.admin.action(&id, "complete", None).await.unwrap();

    // Assert: the queue stream holds active tasks (queued or running), never finished ones.
    assert!(
        pending_while_running.is_empty(),
        "{pending_while_running:?}"
    );
    assert_eq!(queued_while_running, 1);
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_task_with_200() {
    let app = TestApp::spawn().await;
    let body = json!({"task_name": "once", "assigned_to": "anna", "idempotency_key": "req-42"});

    let (s1, first) = app
        .call(app.req(Method::POST, "/api/tasks").json(&body))
        .await;
    let (s2, second) = app
        .call(app.req(Method::POST, "/api/tasks").json(&body))
        .await;
    let pending = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();

    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(pending.len(), 1);
}

#[tokio::test]
async fn a_task_published_to_nats_directly_shows_up_as_pending() {
    // A producer in another language publishes to the documented subject.
    let app = TestApp::spawn().await;
    let js = app.jetstream().await;
    js.publish(
        "tasks.anna.p0",
        serde_json::to_vec(&json!({"task_name": "from python"}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let pending = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();

    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].task_name, "from python");
    assert_eq!(pending[0].priority.as_str(), "P0");
    let id = pending[0].id.to_string();
    let started = app.admin.action(&id, "start", None).await.unwrap();
    assert_eq!(started.status.as_str(), "running");
}

#[tokio::test]
async fn list_filters_by_assignee_and_status_newest_first() {
    let app = TestApp::spawn().await;
    let a1 = app.create("a1", "anna", "P1").await;
    let a2 = app.create("a2", "anna", "P2").await;
    let _t1 = app.create("t1", "trump", "P1").await;
    app.admin.action(&a1, "start", None).await.unwrap();

    let anna = app
        .admin
        .list_tasks(&[("assigned_to", "anna".into())])
        .await
        .unwrap();
    let running = app
        .admin
        .list_tasks(&[("status", "running".into())])
        .await
        .unwrap();
    let all = app.admin.list_tasks(&[]).await.unwrap();

    let ids: Vec<&str> = anna.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [a2.as_str(), a1.as_str()]);
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id.as_str(), a1);
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn the_running_listing_shows_each_started_task_and_none_queued_again_after_a_start() {
    let app = TestApp::spawn().await;
    running_listing_shows_started_tasks_only(&app).await;
}

#[tokio::test]
async fn the_running_listing_without_a_running_index_shows_the_same_from_the_queue() {
    let app = TestApp::spawn_with(|c| c.api.running_index_cap = 0).await;
    running_listing_shows_started_tasks_only(&app).await;
}

/// A running task; one never started; one started, failed and queued again (its `started`
/// record stays); one published straight to NATS with its own id, then started: the running
/// listing shows the first and the last, newest queued first, each as a read by id shows it.
async fn running_listing_shows_started_tasks_only(app: &TestApp) {
    // Arrange
    let running = app.create("running", "anna", "P1").await;
    app.admin.action(&running, "start", None).await.unwrap();
    let _pending = app.create("never started", "anna", "P1").await;
    let again = app.create("queued again", "trump", "P0").await;
    app.admin.action(&again, "start", None).await.unwrap();
    let boom = json!({"error": "boom"});
    app.admin.action(&again, "fail", Some(&boom)).await.unwrap();
    app.admin.action(&again, "retry", None).await.unwrap();
    let own_id = published_with_its_own_id(app, "tasks.trump.p2").await;
    app.admin.action(&own_id, "start", None).await.unwrap();

    // Act
    let listed = app
        .admin
        .list_tasks(&[("status", "running".into())])
        .await
        .unwrap();

    // Assert: newest queued first, each as a read by id shows it.
    let ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [own_id.as_str(), running.as_str()]);
    for task in &listed {
        let read = app.admin.get_task(task.id.as_str()).await.unwrap();
        assert_eq!(task, &read);
    }
}

#[tokio::test]
async fn the_running_listing_follows_starts_finishes_and_restarts_after_its_first_call() {
    // Arrange: one running task, listed once (the API's running index is seeded by this call).
    let app = TestApp::spawn().await;
    let running = |app: &TestApp| {
        let admin = app.admin.clone();
        async move {
            let listed = admin.list_tasks(&[("status", "running".into())]).await;
            let ids: Vec<String> = listed.unwrap().iter().map(|t| t.id.to_string()).collect();
            ids
        }
    };
    let first = app.create("first", "anna", "P1").await;
    let second = app.create("second", "trump", "P2").await;
    app.admin.action(&first, "start", None).await.unwrap();
    assert_eq!(running(&app).await, [first.as_str()]);

    // Act and assert: each change shows in the next listing.
    app.admin.action(&second, "start", None).await.unwrap();
    app.admin.action(&first, "complete", None).await.unwrap();
    assert_eq!(
        running(&app).await,
        [second.as_str()],
        "started after, finished after"
    );

    let boom = json!({"error": "boom"});
    app.admin
        .action(&second, "fail", Some(&boom))
        .await
        .unwrap();
    app.admin.action(&second, "retry", None).await.unwrap();
    assert!(running(&app).await.is_empty(), "failed and queued again");

    let own_id = published_with_its_own_id(&app, "tasks.anna.p0").await;
    app.admin.action(&second, "start", None).await.unwrap();
    app.admin.action(&own_id, "start", None).await.unwrap();
    assert_eq!(running(&app).await, [own_id, second], "newest queued first");
}

#[tokio::test]
async fn a_running_listing_given_up_half_way_leaves_the_running_index_seeded_for_the_next() {
    // Arrange: one running task among pending ones, and a task service as the API has.
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.create(&format!("t{i}"), "anna", "P1").await);
    }
    app.admin.action(&ids[2], "start", None).await.unwrap();
    let service = app.task_service().await;
    let running = ListFilter {
        status: Some(TaskStatus::Running),
        limit: 100,
        ..ListFilter::default()
    };

    // Act: the first listing is dropped at its first wait on NATS (its request timed out, its
    // client left), then a second one is made.
    let first = service.list(&running).now_or_never();
    let second = service.list(&running).await.unwrap();

    // Assert: the second waited for the seed the first began, rather than walking again.
    assert!(first.is_none(), "the first listing waits on NATS");
    let listed: Vec<String> = second.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(listed, [ids[2].as_str()]);
    let seeds = service.metrics().running_index_seeds.get();
    assert_eq!(seeds, 1, "the queue was walked once");
}

/// A task published straight to NATS on `subject` with its own id in the body (as a Python
/// producer does), recorded by a pending-list read; its id.
async fn published_with_its_own_id(app: &TestApp, subject: &str) -> String {
    let own_id = ulid::Ulid::new().to_string();
    let body = json!({"id": own_id, "task_name": "from python"});
    let js = app.jetstream().await;
    let ack = js.publish(subject.to_string(), body.to_string().into());
    ack.await.unwrap().await.unwrap();
    app.admin.pending(&[]).await.unwrap();
    own_id
}

#[tokio::test]
async fn the_event_feed_streams_history_then_live_events() {
    let app = TestApp::spawn().await;
    let id = app.create("watched", "anna", "P1").await;
    let feed = app.admin.watch(&id).await.unwrap();
    futures::pin_mut!(feed);

    let first = feed.next().await.unwrap().unwrap();
    app.admin.action(&id, "start", None).await.unwrap();
    let second = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .expect("a live event")
        .unwrap()
        .unwrap();

    assert_eq!(first.kind.as_str(), "created");
    assert_eq!(second.kind.as_str(), "started");
    assert_eq!(second.task_id.as_str(), id);
}

#[tokio::test]
async fn health_needs_no_key_and_metrics_count_tasks_and_queue_depth() {
    let app = TestApp::spawn().await;
    app.create("m", "anna", "P0").await;

    let health = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        metrics.contains(r#"taskfleet_tasks_created_total{assignee="anna",priority="P0"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"taskfleet_queue_depth{assignee="anna",priority="P0"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("taskfleet_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn stopping_the_api_ends_open_event_feeds_instead_of_hanging() {
    let app = TestApp::spawn().await;
    let id = app.create("watched", "anna", "P1").await;
    let feed = app.admin.watch(&id).await.unwrap();

    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), app.stop()).await;

    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    drop(feed);
}

/// Creates an exec task of anna's running `command` (with a tenant and a concurrency key, which
/// only worker-run tasks use); returns its id.
async fn exec_task(app: &TestApp, command: &str) -> String {
    let exec = json!({
        "task_name": "by hand", "assigned_to": "anna", "kind": "exec",
        "payload": {"command": command}, "tenant": "acme", "concurrency_key": "repo:x"
    });
    app.admin.create_task(&exec).await.unwrap().id.to_string()
}

#[tokio::test]
async fn a_worker_task_started_over_the_api_is_listed_as_running() {
    // Arrange: an exec task no worker runs yet, and a manual one, both started by a bot.
    let app = TestApp::spawn().await;
    let exec = exec_task(&app, "true").await;
    let manual = app.create("manual", "anna", "P1").await;
    for id in [&exec, &manual] {
        app.admin.action(id, "start", None).await.unwrap();
    }

    // Act
    let every = app
        .admin
        .list_tasks(&[("status", "running".into())])
        .await
        .unwrap();
    let anna = app
        .admin
        .list_tasks(&[("status", "running".into()), ("assigned_to", "anna".into())])
        .await
        .unwrap();
    let of_kind = |kind: &str| {
        let query = [("status", "running".into()), ("kind", kind.to_string())];
        let admin = app.admin.clone();
        async move { admin.list_tasks(&query).await.unwrap() }
    };
    let (execs, manuals) = (of_kind("exec").await, of_kind("manual").await);

    // Assert: both in both listings, the exec task still of its kind, and each in the listing
    // of its kind only.
    let ids = |listed: &[taskfleet::domain::Task]| -> Vec<String> {
        listed.iter().map(|t| t.id.to_string()).collect()
    };
    assert_eq!(ids(&execs), [exec.as_str()]);
    assert_eq!(ids(&manuals), [manual.as_str()]);
    for listed in [every, anna] {
        let mut ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
        ids.sort();
        let mut want = [exec.as_str(), manual.as_str()];
        want.sort();
        assert_eq!(ids, want);
        let kinds: Vec<&str> = listed.iter().map(|t| t.kind.as_str()).collect();
        assert!(kinds.contains(&"exec"), "{kinds:?}");
    }
}

/// Messages in the `TASKS` stream.
async fn queued_messages(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let mut stream = js.get_stream("TASKS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_worker_task_started_over_the_api_is_run_by_no_worker_and_leaves_no_queue_message() {
    // Arrange: two exec tasks of anna's.
    let app = TestApp::spawn().await;
    let ids = [
        exec_task(&app, "exit 3").await,
        exec_task(&app, "exit 3").await,
    ];

    // Act: a bot starts both over the API; then a worker of their assignee comes up, with time
    // to pull what it can; then the bot completes one with its fencing token and cancels the
    // other.
    let mut started = Vec::new();
    for id in &ids {
        started.push(app.admin.action(id, "start", None).await.unwrap());
    }
    let worker = app
        .worker("anna", 2, crate::harness::app::worker_settings())
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let pending = app.admin.pending(&[]).await.unwrap();
    let held = queued_messages(&app).await;
    let token = started[0].lease.as_ref().unwrap().token.clone();
    let body = json!({"result": "by hand", "fencing_token": token});
    let done = app
        .admin
        .action(started[0].id.as_str(), "complete", Some(&body))
        .await;
    let gone = app
        .admin
        .action(started[1].id.as_str(), "cancel", None)
        .await;

    // Assert: one stand-in each while running; the worker ran neither (the bot's result and
    // attempt 1 stand); nothing left queued.
    assert_eq!(held, 2);
    assert!(pending.is_empty(), "{pending:?}");
    let done = done.unwrap();
    assert_eq!((done.status.as_str(), done.attempt), ("completed", 1));
    assert_eq!(done.result, Some(json!("by hand")));
    assert_eq!(gone.unwrap().status.as_str(), "cancelled");
    assert_eq!(queued_messages(&app).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn the_pending_list_removes_a_stand_in_left_behind_by_a_start_over_the_api() {
    // Arrange: a finished exec task, and the stand-in a start over the API would have left on
    // the manual subject had the API died after publishing it.
    let app = TestApp::spawn().await;
    let id = exec_task(&app, "true").await;
    app.admin.action(&id, "start", None).await.unwrap();
    app.admin.action(&id, "complete", None).await.unwrap();
    let js = app.jetstream().await;
    let stand_in = json!({"id": id, "task_name": "by hand"});
    js.publish("tasks.anna.p1", stand_in.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let left = queued_messages(&app).await;

    // Act
    let pending = app.admin.pending(&[]).await.unwrap();

    // Assert
    assert_eq!(left, 1);
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(queued_messages(&app).await, 0);
}

#[tokio::test]
async fn a_bot_racing_a_worker_for_exec_tasks_never_gets_one_run_by_both() {
    // Arrange: a worker of anna's, and a file each task's command notes its id in.
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs.txt");
    let worker = app
        .worker("anna", 4, crate::harness::app::worker_settings())
        .await;
    let command = format!("echo $TASKFLEET_TASK_ID >> {}", runs.display());

    // Act: a bot starts each task over the API as soon as it is created, racing the worker.
    let mut raced = Vec::new();
    for _ in 0..30 {
        let id = exec_task(&app, &command).await;
        let bot_won = app.admin.action(&id, "start", None).await.is_ok();
        raced.push((id, bot_won));
    }
    let bot_won = raced.iter().filter(|(_, won)| *won).count() as u64;
    crate::harness::wait::eventually(
        "the worker's tasks to finish and its messages to go",
        std::time::Duration::from_secs(30),
        || {
            let app = &app;
            async move { (queued_messages(app).await == bot_won).then_some(()) }
        },
    )
    .await;

    // Assert: a task the bot won runs (its stand-in queued) and never ran on the worker; every
    // other one ran once, on the worker.
    let noted = std::fs::read_to_string(&runs).unwrap_or_default();
    for (id, won) in &raced {
        let task = app.admin.get_task(id).await.unwrap();
        let times = noted.lines().filter(|l| l == id).count();
        let want = if *won {
            ("running", 0)
        } else {
            ("completed", 1)
        };
        assert_eq!((task.status.as_str(), times), want, "task {id}");
    }
    worker.stop().await;
}
