//! Flow control across replicas (issue 13): concurrency keys, rate keys, lanes and the
//! assignee-wide cap, held by several worker processes at once; the limits API and its 422s.

use crate::harness::app::worker_settings;
use crate::harness::process::WorkerProcess;
use crate::harness::{eventually, TestApp};
use crate::workers::finished;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use taskfleet::bus::{Bus, TopologyConfig};
use taskfleet::domain::{DeclaredLimits, FlowKeys, Share, Task};
use taskfleet::limits::{Gate, Limits};

/// Creates a task for `assignee` with `extra` fields merged into the body; returns its id.
async fn create_with(app: &TestApp, assignee: &str, name: &str, extra: Value) -> String {
    let mut body = json!({"task_name": name, "assigned_to": assignee});
    for (k, v) in extra.as_object().expect("extra is an object") {
        body[k] = v.clone();
    }
    let t = app.admin.create_task(&body).await.expect("create");
    t.id.to_string()
}

/// Sets an override through the API and checks it was accepted.
async fn set_limit(app: &TestApp, assignee: &str, key: &str, limits: Value) {
    let path = format!("/api/limits/{assignee}/{}", urlencoding(key));
    let (status, body) = app.call(app.req(Method::PUT, &path).json(&limits)).await;
    assert_eq!(status, 200, "PUT {path}: {body}");
}

/// Percent-encodes the characters of a key that a path segment cannot hold as they are.
fn urlencoding(key: &str) -> String {
    key.replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
        .replace(' ', "%20")
}

/// Waits for every task of `ids` to finish and returns them.
async fn all_finished(app: &TestApp, ids: &[String], limit: Duration) -> Vec<Task> {
    let mut out = Vec::new();
    for id in ids {
        out.push(finished(app, id, limit).await);
    }
    out
}

/// `(started, finished)` of each task in milliseconds, ordered by start.
fn spans(tasks: &[Task]) -> Vec<(i64, i64, String)> {
    let mut spans: Vec<_> = tasks
        .iter()
        .map(|t| {
            let start = t
                .started_time
                .expect("a finished task started")
                .timestamp_millis();
            let end = t.finished_time.expect("finished").timestamp_millis();
            (start, end, t.id.to_string())
        })
        .collect();
    spans.sort();
    spans
}

/// Three worker processes for `assignee`, `concurrency` slots each.
async fn three_workers(app: &TestApp, assignee: &str, concurrency: usize) -> Vec<WorkerProcess> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(app.worker_process(assignee, concurrency, &[]).await);
    }
    out
}

#[tokio::test]
async fn a_key_with_limit_one_never_runs_two_tasks_at_once_across_three_replicas() {
    // Arrange
    let app = TestApp::spawn().await;
    set_limit(&app, "flow1", "repo:acme/web", json!({"concurrency": 1})).await;
    let _workers = three_workers(&app, "flow1", 4).await;
    let sleep = json!({"argv": ["sleep", "0.02"]});

    // Act
    let mut ids = Vec::new();
    for i in 0..50 {
        let extra = json!({"kind": "exec", "payload": sleep, "concurrency_key": "repo:acme/web"});
        ids.push(create_with(&app, "flow1", &format!("build {i}"), extra).await);
    }
    let other = create_with(
        &app,
        "flow1",
        "other key",
        json!({"concurrency_key": "repo:other", "kind": "noop"}),
    )
    .await;

    // Assert
    let other = finished(&app, &other, Duration::from_secs(10)).await;
    assert_eq!(
        other.status.as_str(),
        "completed",
        "another key's task is not held up"
    );
    let tasks = all_finished(&app, &ids, Duration::from_secs(90)).await;
    assert!(tasks.iter().all(|t| t.status.as_str() == "completed"));
    let spans = spans(&tasks);
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "{} started at {} before {} finished at {}",
            pair[1].2,
            pair[1].0,
            pair[0].2,
            pair[0].1
        );
    }
    let mut holders = std::collections::HashSet::new();
    for id in &ids {
        let logs = app.admin.logs(id).await.expect("logs");
        let start = logs.iter().find(|e| e.action == "start").expect("a start");
        holders.insert(start.operator.clone());
    }
    assert!(
        holders.len() >= 2,
        "the replicas shared the key's tasks: {holders:?}"
    );
}

#[tokio::test]
async fn a_holder_killed_with_kill_9_frees_its_place_within_ack_wait() {
    // Arrange: the holder runs a long task that may not be retried, so its place is the only
    // thing keeping the next task of the key waiting.
    let app = TestApp::spawn().await;
    set_limit(&app, "flow2", "gpu", json!({"concurrency": 1})).await;
    let mut holder = app.worker_process("flow2", 1, &[]).await;
    let long = json!({"kind": "exec", "payload": {"argv": ["sleep", "600"]},
        "concurrency_key": "gpu", "max_attempts": 1});
    let first = create_with(&app, "flow2", "long", long).await;
    crate::workers::running(&app, &first).await;
    let second = create_with(
        &app,
        "flow2",
        "next",
        json!({"kind": "noop", "concurrency_key": "gpu"}),
    )
    .await;
    let _other = app.worker_process("flow2", 1, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.admin.get_task(&second).await.unwrap().status.as_str(),
        "pending"
    );

    // Act
    holder.kill9();
    let killed = std::time::Instant::now();

    // Assert: ack_wait is 3 s for worker processes; the place lapses by then.
    let next = finished(&app, &second, Duration::from_secs(15)).await;
    assert_eq!(next.status.as_str(), "completed");
    assert!(
        killed.elapsed() < Duration::from_secs(3 + 5),
        "freed {:?} after the kill",
        killed.elapsed()
    );
}

#[tokio::test]
async fn a_rate_of_10_per_second_starts_30_tasks_in_3_seconds_spread_evenly() {
    // Arrange
    let app = TestApp::spawn().await;
    set_limit(&app, "flow3", "channel:tg-123", json!({"rate": "10/s"})).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let extra = json!({"kind": "noop", "rate_key": "channel:tg-123"});
        ids.push(create_with(&app, "flow3", &format!("message {i}"), extra).await);
    }

    // Act
    let _workers = three_workers(&app, "flow3", 4).await;
    let tasks = all_finished(&app, &ids, Duration::from_secs(30)).await;

    // Assert
    let starts: Vec<i64> = spans(&tasks).iter().map(|s| s.0).collect();
    let t0 = starts[0];
    let in_3s = starts.iter().filter(|&&s| s < t0 + 3000).count();
    let gaps: Vec<i64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        (28..=32).contains(&in_3s),
        "{in_3s} starts in the first 3 s, gaps {gaps:?}"
    );
    for second in 0..3 {
        let from = t0 + second * 1000;
        let n = starts
            .iter()
            .filter(|&&s| s >= from && s < from + 1000)
            .count();
        assert!(
            (8..=12).contains(&n),
            "{n} starts in second {second}: {starts:?}"
        );
    }
}

#[tokio::test]
async fn a_lane_of_20_tasks_runs_strictly_in_creation_order_across_three_replicas() {
    // Arrange
    let app = TestApp::spawn().await;
    let _workers = three_workers(&app, "flow4", 4).await;

    // Act
    let mut ids = Vec::new();
    for i in 0..20 {
        let extra = json!({"kind": "exec", "payload": {"argv": ["sleep", "0.01"]},
            "lane": "session:42"});
        ids.push(create_with(&app, "flow4", &format!("turn {i}"), extra).await);
    }
    let tasks = all_finished(&app, &ids, Duration::from_secs(60)).await;

    // Assert
    let spans = spans(&tasks);
    let order: Vec<String> = spans.iter().map(|s| s.2.clone()).collect();
    assert_eq!(order, ids, "the lane ran in creation order");
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two tasks of the lane overlapped: {pair:?}"
        );
    }
}

#[tokio::test]
async fn a_lane_waits_for_its_failed_task_to_be_finished_and_then_goes_on() {
    // Arrange
    let app = TestApp::spawn().await;
    let _worker = app.worker("flow5", 4, worker_settings()).await;

    // Act: the first task of the lane fails; the second must wait for it, then run.
    let fail =
        json!({"kind": "exec", "payload": {"command": "sleep 0.3; exit 3"}, "lane": "chat:7"});
    let first = create_with(&app, "flow5", "fails", fail).await;
    let second = create_with(
        &app,
        "flow5",
        "after",
        json!({"kind": "noop", "lane": "chat:7"}),
    )
    .await;

    // Assert
    let first = finished(&app, &first, Duration::from_secs(15)).await;
    let second = finished(&app, &second, Duration::from_secs(15)).await;
    assert_eq!(first.status.as_str(), "failed");
    assert_eq!(second.status.as_str(), "completed");
    assert!(second.started_time.unwrap() >= first.finished_time.unwrap());
}

#[tokio::test]
async fn a_waiting_task_says_what_it_waits_for_and_the_limits_list_shows_the_key() {
    // Arrange
    let app = TestApp::spawn().await;
    set_limit(&app, "flow6", "repo:x", json!({"concurrency": 1})).await;
    let _worker = app.worker("flow6", 2, worker_settings()).await;
    let long =
        json!({"kind": "exec", "payload": {"argv": ["sleep", "30"]}, "concurrency_key": "repo:x"});
    let first = create_with(&app, "flow6", "holder", long).await;
    crate::workers::running(&app, &first).await;

    // Act
    let second = create_with(
        &app,
        "flow6",
        "waiter",
        json!({"kind": "noop", "concurrency_key": "repo:x"}),
    )
    .await;

    // Assert
    let why = eventually("the waiter to say why", Duration::from_secs(10), || async {
        let t = app.admin.get_task(&second).await.ok()?;
        t.waiting_for
    })
    .await;
    assert_eq!(why, "concurrency repo:x: 1 of 1 running");
    let (status, view) = app
        .call(app.req(Method::GET, "/api/limits?assignee=flow6"))
        .await;
    assert_eq!(status, 200, "{view}");
    let key = view["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "repo:x")
        .cloned()
        .expect("the key is listed");
    assert_eq!(key["kind"], "concurrency");
    assert_eq!(key["limit"], 1);
    assert_eq!(key["running"], json!([first]));
    assert_eq!(key["waiting"], 1);
    assert_eq!(view["overrides"][0]["concurrency"], 1);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(
            r#"taskfleet_limit_running{assignee="flow6",kind="concurrency",key="repo:x"} 1"#
        ),
        "{text}"
    );
    app.admin
        .action(&first, "cancel", None)
        .await
        .expect("cancel the holder");
    assert_eq!(
        finished(&app, &second, Duration::from_secs(10))
            .await
            .status
            .as_str(),
        "completed"
    );
}

#[tokio::test]
async fn a_lane_task_that_ran_before_the_api_put_it_in_line_holds_no_place_in_it() {
    // Arrange: an idle worker took the lane's turn for a task and finished it before the API,
    // just after the create, got to put the task in line.
    let app = TestApp::spawn().await;
    let limits = Limits::new(&bus_of(&app).await);
    let lane = FlowKeys {
        lane: Some("chat:9".into()),
        ..FlowKeys::default()
    };
    let lease = Duration::from_secs(30);
    let Gate::Go(permit) = limits
        .acquire("flow9", "first", &lane, "w1", lease)
        .await
        .unwrap()
    else {
        panic!("the lane's first task takes its turn");
    };
    limits.release(&permit, true).await.expect("finished");

    // Act: the API's join, late.
    limits.join_lane("flow9", "chat:9", "first").await.unwrap();

    // Assert: nobody waits in the lane, and its next task takes its turn at once.
    let (status, view) = app
        .call(app.req(Method::GET, "/api/limits?assignee=flow9"))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["keys"][0]["key"], "chat:9", "{view}");
    assert_eq!(view["keys"][0]["waiting"], 0, "{view}");
    let next = limits.acquire("flow9", "second", &lane, "w1", lease).await;
    assert!(matches!(next, Ok(Gate::Go(_))), "{next:?}");
}

/// A connection of taskfleet's own to the app's NATS server.
async fn bus_of(app: &TestApp) -> Bus {
    let options = crate::migrate::options(&app.nats.url());
    Bus::connect(&options, &TopologyConfig::default())
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_limit_lowered_at_runtime_holds_from_the_next_claim_without_restarting_workers() {
    // Arrange: the config lets 3 run at once; an override then lowers it to 1.
    let app = TestApp::spawn().await;
    let mut settings = worker_settings();
    settings.limits = DeclaredLimits {
        concurrency: [("build:*".to_string(), 3)].into(),
        ..Default::default()
    };
    let _worker = app.worker("flow7", 6, settings).await;
    set_limit(&app, "flow7", "build:main", json!({"concurrency": 1})).await;

    // Act
    let mut ids = Vec::new();
    for i in 0..6 {
        let extra = json!({"kind": "exec", "payload": {"argv": ["sleep", "0.1"]},
            "concurrency_key": "build:main"});
        ids.push(create_with(&app, "flow7", &format!("b{i}"), extra).await);
    }
    let tasks = all_finished(&app, &ids, Duration::from_secs(30)).await;

    // Assert
    for pair in spans(&tasks).windows(2) {
        assert!(pair[1].0 >= pair[0].1, "ran two at once: {pair:?}");
    }
    let path = "/api/limits/flow7/build%3Amain";
    let (status, _) = app.call(app.req(Method::DELETE, path)).await;
    assert_eq!(status, 204);
    let (status, _) = app.call(app.req(Method::DELETE, path)).await;
    assert_eq!(status, 404, "a second delete finds no override");
}

#[tokio::test]
async fn a_max_running_cap_holds_across_replicas() {
    // Arrange
    let app = TestApp::spawn().await;
    let mut settings = worker_settings();
    settings.limits.max_running = Some(2);
    let _a = app.worker("flow8", 4, settings.clone()).await;
    let _b = app.worker("flow8", 4, settings).await;

    // Act
    let mut ids = Vec::new();
    for i in 0..12 {
        let extra = json!({"kind": "exec", "payload": {"argv": ["sleep", "0.1"]}});
        ids.push(create_with(&app, "flow8", &format!("c{i}"), extra).await);
    }
    let tasks = all_finished(&app, &ids, Duration::from_secs(30)).await;

    // Assert: at no start were more than 2 running.
    let spans = spans(&tasks);
    for (start, _, id) in &spans {
        let at_once = spans
            .iter()
            .filter(|(s, e, _)| s <= start && e > start)
            .count();
        assert!(at_once <= 2, "{at_once} running when {id} started");
    }
}

#[tokio::test]
async fn bad_limits_and_bad_flow_fields_are_422s_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"concurrency": -1}), "concurrency"),
        (json!({"rate": "20/fortnight"}), "rate"),
        (json!({"rate": "10/s", "burst": 0}), "burst"),
        (json!({"burst": 3, "concurrency": 1}), "burst"),
        (json!({}), "concurrency"),
        (json!({"concurrency": 1, "limit": 2}), "limit"),
        (json!({"concurrency": null, "rate": "1/s"}), "concurrency"),
    ];
    for (body, field) in cases {
        let (status, answer) = app
            .call(app.req(Method::PUT, "/api/limits/flow9/k").json(&body))
            .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            answer.to_string().contains(field),
            "{body}: {answer} names {field}"
        );
    }
    let long = "k".repeat(129);
    let path = format!("/api/limits/flow9/{long}");
    let (status, answer) = app
        .call(app.req(Method::PUT, &path).json(&json!({"concurrency": 1})))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.to_string().contains("key"), "{answer}");
    for field in ["concurrency_key", "rate_key", "lane"] {
        let body = json!({"task_name": "x", "assigned_to": "flow9", field: long});
        let (status, answer) = app
            .call(app.req(Method::POST, "/api/tasks").json(&body))
            .await;
        assert_eq!(status, 422, "{answer}");
        assert!(answer.to_string().contains(field), "{answer}");
    }
    let (_, view) = app
        .call(app.req(Method::GET, "/api/limits?assignee=flow9"))
        .await;
    assert_eq!(view["overrides"], json!([]), "nothing was written: {view}");
}

#[tokio::test]
async fn a_nats_server_restart_keeps_every_limit_and_hold() {
    // Arrange: an override, and a task holding its key.
    let mut app = TestApp::spawn().await;
    set_limit(&app, "flow10", "repo:y", json!({"concurrency": 1})).await;
    let worker = app.worker("flow10", 2, worker_settings()).await;
    let long =
        json!({"kind": "exec", "payload": {"argv": ["sleep", "30"]}, "concurrency_key": "repo:y"});
    let first = create_with(&app, "flow10", "holder", long).await;
    crate::workers::running(&app, &first).await;

    // Act
    app.nats.restart().await;

    // Assert: the override and the hold are still there, so a second task of the key waits.
    let second = create_with(
        &app,
        "flow10",
        "waiter",
        json!({"kind": "noop", "concurrency_key": "repo:y"}),
    )
    .await;
    let why = eventually("the waiter to say why", Duration::from_secs(15), || async {
        app.admin.get_task(&second).await.ok()?.waiting_for
    })
    .await;
    assert_eq!(why, "concurrency repo:y: 1 of 1 running");
    let (_, view) = app
        .call(app.req(Method::GET, "/api/limits?assignee=flow10"))
        .await;
    assert_eq!(view["overrides"][0]["key"], "repo:y", "{view}");
    app.admin
        .action(&first, "cancel", None)
        .await
        .expect("cancel the holder");
    let second = finished(&app, &second, Duration::from_secs(15)).await;
    assert_eq!(second.status.as_str(), "completed");
    worker.stop().await;
}

#[tokio::test]
async fn a_bot_starting_manual_tasks_over_the_api_is_held_to_the_same_limits() {
    // Arrange
    let app = TestApp::spawn().await;
    set_limit(&app, "flow11", "repo:z", json!({"concurrency": 1})).await;
    let key = json!({"concurrency_key": "repo:z"});
    let first = create_with(&app, "flow11", "first", key.clone()).await;
    let second = create_with(&app, "flow11", "second", key).await;
    let lane = json!({"lane": "chat:9"});
    let turn1 = create_with(&app, "flow11", "turn 1", lane.clone()).await;
    let turn2 = create_with(&app, "flow11", "turn 2", lane).await;
    let start = |id: &str| app.req(Method::PUT, &format!("/api/tasks/{id}/start"));

    // Act
    let (ok, _) = app.call(start(&first)).await;
    let (held, why) = app.call(start(&second)).await;
    app.admin
        .action(&first, "complete", Some(&json!({"result": "done"})))
        .await
        .expect("complete the first");
    let (after, _) = app.call(start(&second)).await;
    let (early, behind) = app.call(start(&turn2)).await;
    let (turn, _) = app.call(start(&turn1)).await;

    // Assert
    assert_eq!(ok, 200);
    assert_eq!(held, 409, "{why}");
    assert_eq!(why["error"]["code"], "waiting", "{why}");
    assert!(
        why["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrency repo:z: 1 of 1 running"),
        "{why}"
    );
    assert_eq!(after, 200, "the completed task gave its place back at once");
    assert_eq!(early, 409, "turn 2 waits for turn 1: {behind}");
    assert_eq!(turn, 200);
    let second = app.admin.get_task(&turn2).await.unwrap();
    assert_eq!(
        second.status.as_str(),
        "pending",
        "a refused start changed nothing"
    );
}

#[tokio::test]
async fn a_bot_finishing_a_worker_task_it_started_over_the_api_gives_its_place_back_at_once() {
    // Arrange: two exec tasks of a key with limit 1, no worker; a bot starts the first.
    let app = TestApp::spawn().await;
    set_limit(&app, "flow12", "repo:w", json!({"concurrency": 1})).await;
    let exec = json!({
        "kind": "exec", "payload": {"command": "true"}, "concurrency_key": "repo:w"
    });
    let first = create_with(&app, "flow12", "first", exec.clone()).await;
    let second = create_with(&app, "flow12", "second", exec).await;
    let start = |id: &str| app.req(Method::PUT, &format!("/api/tasks/{id}/start"));
    let (ok, _) = app.call(start(&first)).await;
    let (held, _) = app.call(start(&second)).await;

    // Act
    app.admin
        .action(&first, "complete", Some(&json!({"result": "done"})))
        .await
        .expect("complete the first");
    let (after, why) = app.call(start(&second)).await;

    // Assert: no worker runs it, so its place is not left to one.
    assert_eq!((ok.as_u16(), held.as_u16()), (200, 409));
    assert_eq!(after, 200, "the place came back with the finish: {why}");
}

/// Creates `n` tasks of `tenant` for `assignee` (32 creates in flight); their ids, in creation
/// order.
async fn backlog(
    app: &TestApp,
    assignee: &str,
    tenant: &str,
    n: usize,
    extra: &Value,
) -> Vec<String> {
    use futures::StreamExt;
    let creates = (0..n).map(|i| {
        let mut extra = extra.clone();
        extra["tenant"] = json!(tenant);
        async move { create_with(app, assignee, &format!("{tenant} {i}"), extra).await }
    });
    futures::stream::iter(creates).buffered(32).collect().await
}

/// The tasks of `assignee` that started (running or finished), whatever their tenant.
async fn started_tasks(app: &TestApp, assignee: &str) -> Vec<Task> {
    let mut out = Vec::new();
    for status in ["running", "completed"] {
        let query = [
            ("assigned_to", assignee.to_string()),
            ("status", status.to_string()),
            ("limit", "500".to_string()),
        ];
        let page = app.admin.list_tasks(&query).await.expect("list");
        assert!(page.len() < 500, "more started than one page holds");
        out.extend(page);
    }
    out
}

#[tokio::test]
async fn a_tenants_one_task_waits_behind_another_tenants_2000_for_at_most_one_task_per_free_slot() {
    // Arrange: tenant A's 2,000 tasks queued before tenant B's one (B by `created_by`, the
    // default tenant), while a worker with 2 slots is busy with A's.
    let app = TestApp::spawn().await;
    let slow = json!({"kind": "exec", "payload": {"argv": ["sleep", "0.05"]}});
    let mut worker = app.worker_process("fair1", 2, &[]).await;
    let a = backlog(&app, "fair1", "tenant-a", 2_000, &slow).await;
    eventually(
        "tenant A's first task to start",
        Duration::from_secs(15),
        || async {
            let t = app.admin.get_task(&a[0]).await.ok()?;
            t.started_time.map(|_| ())
        },
    )
    .await;

    // Act
    let mut body = slow.clone();
    body["created_by"] = json!("tenant-b");
    let b = create_with(&app, "fair1", "tenant b's only task", body).await;
    let b = finished(&app, &b, Duration::from_secs(30)).await;
    worker.kill9();

    // Assert: of A's tasks, at most one per free slot (2) started between B's create and its
    // start; most of A's backlog is still queued.
    let b_start = b.started_time.expect("B started");
    let a_between: Vec<_> = started_tasks(&app, "fair1")
        .await
        .into_iter()
        .filter(|t| t.tenant.as_deref() == Some("tenant-a"))
        .filter(|t| {
            t.started_time
                .is_some_and(|s| s > b.created_time && s < b_start)
        })
        .map(|t| t.task_name)
        .collect();
    assert!(
        a_between.len() <= 2,
        "A's tasks that went before B: {a_between:?}"
    );
    assert_eq!(
        b.tenant, None,
        "B's tenant is its created_by, not stored as a tenant"
    );
    let pending = app
        .admin
        .pending(&[
            ("assigned_to", "fair1".to_string()),
            ("limit", "500".to_string()),
        ])
        .await
        .expect("pending");
    assert_eq!(pending.len(), 500, "A's backlog still waits");
}

/// A tenant name whose hash falls on the same turn as `tenant`'s.
fn same_hash_as(tenant: &str) -> String {
    (0..)
        .map(|i| format!("tenant-{i}"))
        .find(|t| t != tenant && Share::of(t) == Share::of(tenant))
        .expect("some name hashes onto the same turn")
}

#[tokio::test]
async fn a_worker_started_after_two_tenants_queued_takes_them_in_turn() {
    // Arrange: 300 of tenant A's tasks, then 3 of tenant B's, queued while no worker runs; B's
    // name hashes onto A's turn, so only the seating keeps them apart.
    let app = TestApp::spawn().await;
    let quick = json!({"kind": "noop"});
    let a = backlog(&app, "fair2", "tenant-a", 300, &quick).await;
    let b = backlog(&app, "fair2", &same_hash_as("tenant-a"), 3, &quick).await;

    // Act: one slot, so the order of starts is the order of picks.
    let _worker = app.worker_process("fair2", 1, &[]).await;
    let b_done = all_finished(&app, &b, Duration::from_secs(30)).await;

    // Assert: B's three ran within the first six picks, alternating with A's.
    let last_b = b_done
        .iter()
        .filter_map(|t| t.started_time)
        .max()
        .expect("B's tasks started");
    let a_before = started_tasks(&app, "fair2")
        .await
        .into_iter()
        .filter(|t| t.tenant.as_deref() == Some("tenant-a"))
        .filter(|t| t.started_time.is_some_and(|s| s < last_b))
        .count();
    assert!(
        a_before <= 3,
        "{a_before} of A's tasks went before B's last"
    );
    let a_turn = app.admin.get_task(&a[0]).await.expect("get").fair_turn;
    assert!(a_turn.is_some());
    assert!(b_done
        .iter()
        .all(|t| t.fair_turn.is_some() && t.fair_turn != a_turn));
}

#[tokio::test]
async fn p0_still_goes_before_every_tenants_p1() {
    // Arrange: two tenants' P1 tasks queued, then one P0 of a third tenant.
    let app = TestApp::spawn().await;
    let quick = json!({"kind": "noop"});
    backlog(&app, "fair3", "tenant-a", 50, &quick).await;
    backlog(&app, "fair3", "tenant-b", 50, &quick).await;
    let mut urgent = quick.clone();
    urgent["priority"] = json!("P0");
    urgent["tenant"] = json!("tenant-c");
    let p0 = create_with(&app, "fair3", "urgent", urgent).await;

    // Act
    let _worker = app.worker_process("fair3", 1, &[]).await;
    let p0 = finished(&app, &p0, Duration::from_secs(30)).await;

    // Assert: nothing started before the P0.
    let p0_start = p0.started_time.expect("started");
    let earlier = started_tasks(&app, "fair3")
        .await
        .into_iter()
        .filter(|t| t.started_time.is_some_and(|s| s < p0_start))
        .count();
    assert_eq!(earlier, 0);
}
