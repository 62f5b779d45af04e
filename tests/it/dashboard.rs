//! The web dashboard (issue 16 item 1): the page and its files are served without a key under a
//! strict Content-Security-Policy and name no external URL; `/api/overview` counts tasks per
//! assignee × priority and shows a scoped key only its assignees; its live feed answers at once.

use crate::harness::TestApp;
use reqwest::{header, Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// A file of the page fetched without a key: status, content type, policy, body.
async fn fetch(app: &TestApp, path: &str) -> (StatusCode, String, String, String) {
    let r = app
        .http
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .expect("request");
    let value = |name| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (kind, csp) = (
        value(header::CONTENT_TYPE),
        value(header::CONTENT_SECURITY_POLICY),
    );
    (r.status(), kind, csp, r.text().await.expect("body"))
}

/// The `/ui/…` files `text` references (`href="/ui/…"`, `src="/ui/…"`, `from "/ui/…"`).
fn referenced(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['"', '\''] {
        let opener = format!("{quote}/ui/");
        for (i, _) in text.match_indices(&opener) {
            let rest = &text[i + 1..];
            if let Some(end) = rest.find(quote) {
                out.push(rest[..end].to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Checks what every dashboard file must hold: the policy, and no URL of another origin.
fn assert_self_contained(path: &str, csp: &str, body: &str) {
    assert!(csp.contains("default-src 'self'"), "{path}: policy {csp:?}");
    assert!(!csp.contains("unsafe-inline"), "{path}: policy {csp:?}");
    for scheme in ["http://", "https://", "//cdn", "fonts.googleapis"] {
        assert!(!body.contains(scheme), "{path} names {scheme}");
    }
}

#[tokio::test]
async fn the_page_and_every_file_it_references_are_served_without_a_key_under_a_strict_policy() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, kind, csp, page) = fetch(&app, "/").await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert_self_contained("/", &csp, &page);
    assert!(!page.contains("<script>"), "no inline script");
    let mut pending = referenced(&page);
    assert!(pending.iter().any(|p| p.ends_with(".css")), "{pending:?}");
    assert!(pending.iter().any(|p| p.ends_with(".js")), "{pending:?}");
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let (status, kind, csp, body) = fetch(&app, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let want = if path.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(kind.starts_with(want), "{path}: {kind}");
        assert_self_contained(&path, &csp, &body);
        pending.extend(referenced(&body));
    }
    assert!(seen.len() >= 4, "the page's modules: {seen:?}");
    let (_, doc) = app.call(app.req(Method::GET, "/api/openapi.json")).await;
    let param = &doc["paths"]["/ui/{file}"]["get"]["parameters"][0]["schema"]["enum"];
    let documented: std::collections::BTreeSet<String> = param
        .as_array()
        .expect("the documented file names")
        .iter()
        .map(|f| format!("/ui/{}", f.as_str().unwrap()))
        .collect();
    assert_eq!(
        documented, seen,
        "the OpenAPI document names every file of the page"
    );
}

#[tokio::test]
async fn a_dashboard_file_is_not_sent_again_while_it_is_unchanged_and_an_unknown_one_is_a_json_404()
{
    // Arrange
    let app = TestApp::spawn().await;
    let first = app
        .http
        .get(format!("{}/ui/app.js", app.url))
        .send()
        .await
        .unwrap();
    let etag = first.headers()[header::ETAG].clone();

    // Act
    let again = app
        .http
        .get(format!("{}/ui/app.js", app.url))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    let (missing, _, _, body) = fetch(&app, "/ui/nothing.js").await;

    // Assert
    assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(missing, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

/// The overview row of `assignee` at `priority`, if any.
fn queue<'a>(overview: &'a Value, assignee: &str, priority: &str) -> Option<&'a Value> {
    overview["queues"]
        .as_array()?
        .iter()
        .find(|q| q["assignee"] == assignee && q["priority"] == priority)
}

#[tokio::test]
async fn the_dashboard_overview_counts_a_created_task_in_its_cell_and_a_scoped_key_sees_only_its_own(
) {
    // Arrange
    let app = TestApp::spawn().await;
    app.create("for anna", "anna", "P1").await;
    app.create("for bob", "bob", "P2").await;
    app.create("bob again", "bob", "P2").await;

    // Act
    let (status, all) = app.call(app.req(Method::GET, "/api/overview")).await;
    let anna = app
        .http
        .get(format!("{}/api/overview", app.url))
        .header("X-Bot-Key", crate::harness::app::ANNA_KEY)
        .send()
        .await
        .unwrap();
    let anna_status = anna.status();
    let anna: Value = anna.json().await.unwrap();
    let (no_key, _) = app
        .call(app.http.get(format!("{}/api/overview", app.url)))
        .await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{all}");
    let cell = queue(&all, "anna", "P1").expect("anna's P1 queue");
    assert_eq!(
        (cell["queued"].clone(), cell["running"].clone()),
        (1.into(), 0.into())
    );
    assert!(cell["oldest_pending_s"].as_f64().is_some(), "{cell}");
    assert_eq!(
        queue(&all, "bob", "P2").expect("bob's P2 queue")["queued"],
        2
    );
    assert!(queue(&all, "anna", "P2").is_none(), "{all}");
    assert!(all["deliveries"].is_object(), "{all}");
    assert_eq!(anna_status, StatusCode::OK);
    assert_eq!(queue(&anna, "anna", "P1").expect("anna's own")["queued"], 1);
    let names: Vec<&Value> = anna["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| &q["assignee"])
        .collect();
    assert!(names.iter().all(|n| *n == "anna"), "{anna}");
    let people: Vec<&Value> = anna["assignees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["assignee"])
        .collect();
    assert_eq!(people, vec!["anna"], "{anna}");
    assert!(anna["deliveries"].is_null(), "{anna}");
    assert_eq!(no_key, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_dashboard_overview_stream_sends_a_first_event_at_once() {
    // Arrange
    let app = TestApp::spawn().await;
    app.create("for anna", "anna", "P0").await;
    let started = std::time::Instant::now();

    // Act
    let mut r = app
        .req(Method::GET, "/api/overview/events")
        .send()
        .await
        .expect("request");
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("an event within 5 s")
            .expect("a chunk")
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }

    // Assert
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(text.starts_with("event: overview\n"), "{text}");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let overview: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        queue(&overview, "anna", "P0").expect("anna's P0")["queued"],
        1
    );
}

/// The overview's row of `assignee` in `assignees`.
fn person<'a>(overview: &'a Value, assignee: &str) -> Option<&'a Value> {
    overview["assignees"]
        .as_array()?
        .iter()
        .find(|a| a["assignee"] == assignee)
}

#[tokio::test]
async fn the_dashboard_overview_counts_failures_of_the_last_hour_and_running_tasks_per_assignee() {
    // Arrange
    let app = TestApp::spawn().await;
    let failing = app.create("fails", "bob", "P1").await;
    let running = app.create("runs", "bob", "P1").await;
    app.admin.action(&failing, "start", None).await.unwrap();
    let error = serde_json::json!({"error": "broken"});
    app.admin
        .action(&failing, "fail", Some(&error))
        .await
        .unwrap();
    app.admin.action(&running, "start", None).await.unwrap();

    // Act
    let (status, all) = app.call(app.req(Method::GET, "/api/overview")).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{all}");
    let bob = person(&all, "bob").expect("bob's row");
    assert_eq!(bob["failed_last_hour"], 1, "{all}");
    assert_eq!(bob["scheduled"], 0, "{all}");
    let cell = queue(&all, "bob", "P1").expect("bob's P1 queue");
    assert_eq!(cell["running"], 1, "{all}");
    assert_eq!(cell["queued"], 0, "{all}");
}

#[tokio::test]
async fn the_overview_counts_a_task_queued_again_after_a_failure_as_queued_and_junk_as_neither() {
    // Arrange: in bob's P1 queue, oldest first: a running task; one started, failed and queued
    // again; one never started; one published straight to NATS (no record yet); a message with
    // a blank name, which is no task.
    let app = TestApp::spawn().await;
    let running = app.create("runs", "bob", "P1").await;
    app.admin.action(&running, "start", None).await.unwrap();
    let again = app.create("queued again", "bob", "P1").await;
    app.admin.action(&again, "start", None).await.unwrap();
    let error = serde_json::json!({"error": "broken"});
    app.admin
        .action(&again, "fail", Some(&error))
        .await
        .unwrap();
    app.admin.action(&again, "retry", None).await.unwrap();
    app.create("waits", "bob", "P1").await;
    let js = app.jetstream().await;
    for body in [r#"{"task_name": "from python"}"#, r#"{"task_name": " "}"#] {
        let ack = js.publish("tasks.bob.p1", body.into()).await.unwrap();
        ack.await.unwrap();
    }

    // Act
    let (status, all) = app.call(app.req(Method::GET, "/api/overview")).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{all}");
    let cell = queue(&all, "bob", "P1").expect("bob's P1 queue");
    assert_eq!(
        (cell["running"].clone(), cell["queued"].clone()),
        (1.into(), 3.into()),
        "{all}"
    );
    assert!(cell["oldest_pending_s"].as_f64().is_some(), "{cell}");
}
