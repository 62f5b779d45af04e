//! The dashboard's figures and filters (issue 16, overview and tasks pages): the overview's
//! throughput series counts tasks finished, its queue counts stay exact past the 500 messages
//! the queue walk reads, it shows the relay's backlog and disabled destinations; the task list
//! narrows by priority, kind and text in the name, and refuses bad values with a 400 that names
//! the field.

use crate::harness::TestApp;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The overview with the admin key.
async fn overview(app: &TestApp) -> Value {
    let (status, body) = app.call(app.req(Method::GET, "/api/overview")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The row of `assignee` in the overview's `assignees`.
fn person<'a>(o: &'a Value, assignee: &str) -> &'a Value {
    o["assignees"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["assignee"] == assignee))
        .unwrap_or_else(|| panic!("no row for {assignee} in {o}"))
}

/// The sum and length of a per-minute series.
fn series(v: &Value) -> (u64, usize) {
    let xs = v.as_array().unwrap_or_else(|| panic!("a series: {v}"));
    (xs.iter().map(|x| x.as_u64().unwrap()).sum(), xs.len())
}

#[tokio::test]
async fn the_overview_throughput_counts_the_tasks_finished_per_minute_per_assignee_and_in_all() {
    // Arrange: carol completes two and fails one, and has one waiting (so she has a row); erin
    // completes one and has nothing left (no row, but in the fleet's total).
    let app = TestApp::spawn().await;
    let error = json!({"error": "broken"});
    for (name, who, done) in [
        ("one", "carol", true),
        ("two", "carol", true),
        ("three", "carol", false),
        ("four", "erin", true),
    ] {
        let id = app.create(name, who, "P1").await;
        app.admin.action(&id, "start", None).await.unwrap();
        match done {
            true => app.admin.action(&id, "complete", None).await.unwrap(),
            false => app.admin.action(&id, "fail", Some(&error)).await.unwrap(),
        };
    }
    app.create("waiting", "carol", "P1").await;

    // Act
    let o = overview(&app).await;

    // Assert
    let carol = &person(&o, "carol")["throughput"];
    assert_eq!(series(&carol["completed"]), (2, 15), "{o}");
    assert_eq!(series(&carol["failed"]), (1, 15), "{o}");
    assert_eq!(series(&o["throughput"]["completed"]), (3, 15), "{o}");
    assert_eq!(series(&o["throughput"]["failed"]), (1, 15), "{o}");
}

#[tokio::test]
async fn the_overview_counts_every_queued_task_past_the_five_hundred_the_walk_reads() {
    // Arrange
    let app = TestApp::spawn().await;
    let first = app.create("first", "erin", "P2").await;
    let names: Vec<String> = (0..520).map(|i| format!("task {i}")).collect();
    let app_ref = &app;
    futures::stream::iter(&names)
        .for_each_concurrent(16, |n| async move {
            app_ref.create(n, "erin", "P2").await;
        })
        .await;
    app.admin.action(&first, "start", None).await.unwrap();

    // Act
    let o = overview(&app).await;

    // Assert
    let cell = o["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["assignee"] == "erin" && q["priority"] == "P2")
        .unwrap_or_else(|| panic!("erin's P2 queue in {o}"));
    assert_eq!(
        (&cell["queued"], &cell["running"], &cell["depth"]),
        (&json!(520), &json!(1), &json!(521)),
        "{cell}"
    );
}

#[tokio::test]
async fn the_overview_shows_the_relay_backlog_and_disabled_destinations_to_an_unscoped_key_only() {
    // Arrange: a delivery job waits for a destination no relay serves, another destination was
    // disabled (as the relay records a 410).
    let app = TestApp::spawn().await;
    let js = app.jetstream().await;
    js.publish("deliveries.n_waiting", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let kv = js.get_key_value("relay_destinations").await.unwrap();
    let gone = json!({"disabled": true, "reason": "410 Gone", "time": "2026-12-02T00:00:00Z"});
    kv.put("n_gone", gone.to_string().into()).await.unwrap();

    // Act
    let o = overview(&app).await;
    let scoped = app
        .http
        .get(format!("{}/api/overview", app.url))
        .header("X-Bot-Key", crate::harness::app::ANNA_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();

    // Assert
    let relay = &o["relay"];
    assert_eq!(relay["backlog"], 1, "{o}");
    let rows = relay["destinations"].as_array().unwrap();
    let row = |key: &str| rows.iter().find(|r| r["destination"] == key).cloned();
    assert_eq!(
        row("n_waiting"),
        Some(json!({"destination": "n_waiting", "backlog": 1, "disabled": false, "reason": null}))
    );
    assert_eq!(
        row("n_gone"),
        Some(
            json!({"destination": "n_gone", "backlog": 0, "disabled": true, "reason": "410 Gone"})
        )
    );
    assert!(scoped["relay"].is_null(), "{scoped}");
}

/// Creates a task from `body` (admin key) and returns its id.
async fn create(app: &TestApp, body: Value) -> String {
    let (status, task) = app
        .call(app.req(Method::POST, "/api/tasks").json(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    task["id"].as_str().unwrap().to_string()
}

/// The names listed by `GET /api/tasks?{query}`, and the next-page cursor.
async fn names(app: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let r = app
        .req(Method::GET, &format!("/api/tasks?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    let next = r
        .headers()
        .get("x-next-cursor")
        .map(|v| v.to_str().unwrap().to_string());
    let tasks: Vec<Value> = r.json().await.unwrap();
    let names = tasks
        .iter()
        .map(|t| t["task_name"].as_str().unwrap().to_string())
        .collect();
    (names, next)
}

#[tokio::test]
async fn each_task_list_filter_narrows_the_list_and_they_combine() {
    // Arrange
    let app = TestApp::spawn().await;
    let base = json!({"assigned_to": "anna", "created_by": "test"});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    create(
        &app,
        with(json!({"task_name": "Deploy web", "priority": "P0"})),
    )
    .await;
    create(
        &app,
        with(json!({"task_name": "deploy DB", "kind": "noop"})),
    )
    .await;
    create(&app, with(json!({"task_name": "Backup", "priority": "P2"}))).await;
    let started = create(&app, with(json!({"task_name": "deploy docs"}))).await;
    app.admin.action(&started, "start", None).await.unwrap();

    // Act
    let everything = names(&app, "").await.0;
    let p0 = names(&app, "priority=p0").await.0;
    let p2 = names(&app, "priority=P2&status=pending").await.0;
    let noop = names(&app, "kind=noop").await.0;
    let manual = names(&app, "kind=manual&status=pending").await.0;
    let deploy = names(&app, "q=DEPLOY").await.0;
    let pending_deploys = names(&app, "q=deploy&status=pending&kind=manual").await.0;
    let none = names(&app, "q=nothing%20like%20this").await;

    // Assert
    assert_eq!(everything.len(), 4, "{everything:?}");
    assert_eq!(p0, ["Deploy web"]);
    assert_eq!(p2, ["Backup"]);
    assert_eq!(noop, ["deploy DB"]);
    assert_eq!(manual, ["Backup", "Deploy web"]);
    assert_eq!(deploy, ["deploy docs", "deploy DB", "Deploy web"]);
    assert_eq!(pending_deploys, ["Deploy web"]);
    assert_eq!(none, (vec![], None));
}

#[tokio::test]
async fn a_filtered_page_links_the_next_one_with_its_filters() {
    // Arrange
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.create(&format!("Report {i}"), "anna", "P1").await;
    }

    // Act
    let r = app
        .req(Method::GET, "/api/tasks?q=report%20&limit=1&priority=p1")
        .send()
        .await
        .unwrap();
    let first = r.headers().clone();
    let page: Vec<Value> = r.json().await.unwrap();
    let (rest, _) = names(&app, "q=report&limit=5&priority=p1").await;

    // Assert
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["task_name"], "Report 2");
    let link = first
        .get("link")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        link.contains("q=report+") && link.contains("priority=p1"),
        "{link}"
    );
    assert_eq!(rest, ["Report 2", "Report 1", "Report 0"]);
}

#[tokio::test]
async fn a_bad_task_list_filter_is_a_400_that_names_the_field() {
    // Arrange
    let app = TestApp::spawn().await;
    app.create("one", "anna", "P1").await;
    let long = "x".repeat(201);

    for (query, field) in [
        ("priority=p9".to_string(), "priority"),
        ("priority=0".to_string(), "priority"),
        ("kind=robot".to_string(), "kind"),
        (format!("q={long}"), "q must"),
    ] {
        // Act
        let (status, body) = app
            .call(app.req(Method::GET, &format!("/api/tasks?{query}")))
            .await;

        // Assert
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{query}: {message}");
    }
}

#[tokio::test]
async fn a_rare_name_among_thousands_of_tasks_is_found_through_short_pages_that_bound_the_walk() {
    // Arrange: the one match is the oldest of 6,001 tasks, more than one call walks (about 5,000).
    let app = TestApp::spawn().await;
    app.create("the needle", "anna", "P1").await;
    let app_ref = &app;
    futures::stream::iter(0..6000)
        .for_each_concurrent(32, |i| async move {
            app_ref.create(&format!("hay {i}"), "anna", "P1").await;
        })
        .await;

    // Act: follow the cursor the way a client pages.
    let mut pages = Vec::new();
    let mut before = String::new();
    loop {
        let (found, next) = names(&app, &format!("q=NEEDLE&limit=10&before={before}")).await;
        pages.push(found);
        match next {
            Some(next) if pages.len() < 10 => before = next,
            _ => break,
        }
    }

    // Assert
    assert!(pages.len() >= 2, "one call walked everything: {pages:?}");
    assert!(pages[0].is_empty(), "{pages:?}");
    assert_eq!(pages.concat(), ["the needle"], "{pages:?}");
}

#[tokio::test]
async fn status_stalled_lists_the_running_tasks_unchanged_past_stall_after_only() {
    // Arrange: stall_after 1 s; a bot starts two manual tasks and keeps reporting on one only.
    let app = TestApp::spawn_with(|cfg| cfg.relay.stall_after_s = 1).await;
    let quiet = create(
        &app,
        json!({"task_name": "gone quiet", "assigned_to": "anna"}),
    )
    .await;
    let busy = create(
        &app,
        json!({"task_name": "still busy", "assigned_to": "anna"}),
    )
    .await;
    create(&app, json!({"task_name": "waiting", "assigned_to": "anna"})).await;
    for id in [&quiet, &busy] {
        app.admin.action(id, "start", None).await.expect("start");
    }

    // Act: past stall_after, with a heartbeat for the busy one just before the look.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    app.admin
        .heartbeat(&busy, None, None)
        .await
        .expect("heartbeat");
    let (stalled, _) = names(&app, "status=stalled&assigned_to=anna").await;
    let (running, _) = names(&app, "status=running&assigned_to=anna").await;

    // Assert
    assert_eq!(stalled, ["gone quiet"]);
    assert_eq!(running.len(), 2, "{running:?}");
}
