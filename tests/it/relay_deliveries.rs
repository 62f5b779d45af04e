//! The relay's deliveries: dead letters with every attempt (API and CLI), replay of one and of a
//! destination since a time, isolation between destinations, SSRF refusal, admin-only routes.

use crate::cli::next_page_cursor;
use crate::harness::app::{relay_settings, ADMIN_KEY};
use crate::harness::receiver::{Answer, Endpoint};
use crate::harness::relay::webhook;
use crate::harness::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::process::Output;
use std::time::Duration;
use taskfleet::config::RelayConfig;
use taskfleet::outbound::destination::Destination;
use tokio::process::Command;

async fn taskfleet(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskfleet"))
        .args(args)
        .env_remove("TASKFLEET_CONFIG")
        .env("TASKFLEET_API_URL", &app.url)
        .env("TASKFLEET_API_KEY", ADMIN_KEY)
        .output()
        .await
        .expect("run taskfleet")
}

#[tokio::test]
async fn delivery_list_pages_on_with_the_cursor_it_prints() {
    // Arrange: three tasks whose webhook answers 500 forever: three dead deliveries.
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    hook.answer_from_now_on(Answer::status(500));
    let _relay = app.relay(relay_settings()).await;
    for i in 0..3 {
        let body = json!({"task_name": format!("doomed {i}"), "assigned_to": "anna",
            "notify": [webhook(&hook.url("/hook"))]});
        app.admin.create_task(&body).await.unwrap();
    }
    let dead = app
        .wait_deliveries("status=dead", 3, Duration::from_secs(20))
        .await;

    // Act
    let first = taskfleet(
        &app,
        &["delivery", "list", "--status", "dead", "--limit", "2"],
    )
    .await;
    let cursor = next_page_cursor(&first, "--before");
    let args = [
        "delivery", "list", "--status", "dead", "--limit", "2", "--before", &cursor,
    ];
    let second = taskfleet(&app, &args).await;
    let whole = taskfleet(
        &app,
        &["delivery", "list", "--status", "dead", "--limit", "3"],
    )
    .await;

    // Assert: the two pages hold the three deliveries, each once, newest first; a page that
    // holds all three, full, prints no next one.
    let ids = |o: &Output| -> Vec<String> {
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut lines = out.lines();
        assert!(lines.next().is_some_and(|h| h.starts_with("id ")), "{out}");
        lines
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let listed: Vec<String> = [ids(&first), ids(&second)].concat();
    let expected: Vec<&str> = dead
        .iter()
        .map(|r| r["job"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, expected, "{first:?} {second:?}");
    assert_eq!(ids(&whole), expected);
    let hint = String::from_utf8_lossy(&whole.stderr);
    assert!(!hint.contains("--before"), "{hint}");
}

fn named_webhook(url: &str) -> Destination {
    Destination::Webhook {
        url: url.into(),
        secret: None,
        secret_env: None,
        events: vec![],
        headers: Default::default(),
        headers_env: Default::default(),
    }
}

#[tokio::test]
async fn a_dead_delivery_is_listed_with_every_attempt_and_replays_with_the_same_webhook_id() {
    // Arrange: 500 with a long body (3-byte characters, so 4 KiB falls inside one) forever.
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    hook.answer_from_now_on(Answer::status(500).body("€".repeat(5000)));
    let _relay = app.relay(relay_settings()).await;
    let task = app
        .admin
        .create_task(&json!({
            "task_name": "doomed", "assigned_to": "anna",
            "notify": [webhook(&hook.url("/hook"))],
        }))
        .await
        .unwrap();

    // Act
    let dead = app
        .wait_deliveries("status=dead", 1, Duration::from_secs(15))
        .await;
    let cli = taskfleet(&app, &["delivery", "list", "--status", "dead"]).await;

    // Assert: four attempts (schedule [0, 1, 1, 1]), each fully recorded.
    let record = &dead[0];
    let id = record["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(record["job"]["event"]["task_id"], task.id.as_str());
    assert_eq!(record["reason"], "gave up after 4 attempts");
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{record}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(a["status"], 500);
        assert!(a["duration_ms"].is_u64());
        let response = a["response"].as_str().unwrap();
        assert!(
            !response.is_empty() && response.len() <= 4096,
            "{}",
            response.len()
        );
        assert!("€".repeat(5000).starts_with(response));
        assert_eq!(
            a["next_attempt_time"].is_string(),
            n < 3,
            "attempt {n}: {a}"
        );
    }
    assert_eq!(hook.hits().len(), 4);
    assert!(hook.hits().iter().all(|h| h.webhook_id() == id));
    let (status, one) = app
        .call(app.req(Method::GET, &format!("/api/deliveries/{id}")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, record);
    assert!(cli.status.success(), "{cli:?}");
    let out = String::from_utf8_lossy(&cli.stdout);
    let line = out.lines().find(|l| l.contains(&id)).expect(&out);
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert!(
        columns[1] == "dead" && columns[3] == "4",
        "status dead, 4 attempts: {out}"
    );

    // Act: the receiver recovers; replay it.
    hook.answer_from_now_on(Answer::status(200));
    let (status, body) = app
        .call(app.req(Method::POST, &format!("/api/deliveries/{id}/replay")))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let hits = hook.wait_for(5, Duration::from_secs(10)).await;
    let replayed = app.wait_delivered(&id, Duration::from_secs(10)).await;

    // Assert
    assert_eq!(hits[4].webhook_id(), id, "a replay keeps the webhook-id");
    assert_eq!(replayed["attempts"].as_array().unwrap().len(), 5);
    assert_eq!(replayed["attempts"][4]["status"], 200);
}

#[tokio::test]
async fn replaying_a_destination_since_a_time_requeues_its_later_dead_deliveries_in_order() {
    // Arrange: a named webhook that refuses (400: dead at once).
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    hook.answer_from_now_on(Answer::status(400));
    let mut settings = relay_settings();
    settings
        .destinations
        .insert("hook".into(), named_webhook(&hook.url("/hook")));
    let _relay = app.relay(settings).await;
    let before = app.task_notifying("before", json!(["hook"])).await;
    app.wait_deliveries("status=dead&destination=hook", 1, Duration::from_secs(10))
        .await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let after = app.task_notifying("after", json!(["hook"])).await;
    app.act(&after, "start").await;
    let dead = app
        .wait_deliveries("status=dead&destination=n_hook", 3, Duration::from_secs(10))
        .await;
    let original: Vec<String> = hook.hits().iter().map(|h| h.webhook_id()).collect();

    // Act
    hook.answer_from_now_on(Answer::status(200));
    let cli = taskfleet(
        &app,
        &["delivery", "replay-destination", "hook", "--since", &since],
    )
    .await;
    let hits = hook.wait_for(5, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing else is replayed

    // Assert
    assert!(cli.status.success(), "{cli:?}");
    let replayed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let of = |t: &taskfleet::domain::Task, kind: &str| -> String {
        let r = dead
            .iter()
            .find(|r| {
                r["job"]["event"]["task_id"] == t.id.as_str() && r["job"]["event"]["type"] == kind
            })
            .unwrap_or_else(|| panic!("no dead {kind} of {}", t.task_name));
        r["job"]["id"].as_str().unwrap().to_string()
    };
    let expected = [of(&after, "created"), of(&after, "started")];
    assert_eq!(replayed["replayed"], json!(expected));
    let again: Vec<String> = hook.hits()[3..].iter().map(|h| h.webhook_id()).collect();
    assert_eq!(
        again, expected,
        "the later two again, in order, same webhook-ids"
    );
    assert_eq!(hits.len(), 5);
    assert_eq!(original[1..], expected);
    assert!(!again.contains(&of(&before, "created")));
}

#[tokio::test]
async fn a_failing_destination_does_not_delay_another_destination_of_the_same_task() {
    // Arrange
    let app = TestApp::spawn().await;
    let bad = Endpoint::start().await;
    bad.answer_from_now_on(Answer::status(503));
    let good = Endpoint::start().await;
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .task_notifying(
            "two ways",
            json!([webhook(&bad.url("/bad")), webhook(&good.url("/good"))]),
        )
        .await;
    app.act(&task, "start").await;
    app.act(&task, "complete").await;
    let hits = good
        .wait_until(
            "task.completed at the good one",
            Duration::from_secs(10),
            |h| h.kind() == "task.completed",
        )
        .await;

    // Assert: the good one got every event while the bad one is still retrying its first (its
    // loop may make its first attempt a moment after the good one finished: wait for it).
    let kinds: Vec<String> = hits.iter().map(|h| h.kind()).collect();
    assert_eq!(kinds, ["task.created", "task.started", "task.completed"]);
    let bad_hits = bad
        .wait_until(
            "a first attempt at the bad one",
            Duration::from_secs(10),
            |_| true,
        )
        .await;
    assert!(bad_hits.iter().all(|h| h.kind() == "task.created"));
    let pending = app
        .deliveries(&format!("status=pending&task_id={}", task.id))
        .await;
    assert!(!pending.is_empty(), "the bad destination is still retrying");
}

#[tokio::test]
async fn without_an_allow_list_a_webhook_to_loopback_is_refused_and_dead() {
    // Arrange
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let _relay = app
        .relay(RelayConfig {
            allow: vec![],
            ..relay_settings()
        })
        .await;

    // Act
    let task = app
        .task_notifying("internal", json!([webhook(&hook.url("/hook"))]))
        .await;
    let dead = app
        .wait_deliveries(
            &format!("status=dead&task_id={}", task.id),
            1,
            Duration::from_secs(10),
        )
        .await;

    // Assert
    let attempts = dead[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{}", dead[0]);
    assert!(attempts[0]["status"].is_null());
    let why = attempts[0]["response"].as_str().unwrap();
    assert!(why.contains("refused"), "{why}");
    assert!(dead[0]["reason"].as_str().unwrap().contains("refused"));
    assert!(hook.hits().is_empty(), "the receiver saw nothing");
}

#[tokio::test]
async fn scoped_keys_get_403_on_every_delivery_route() {
    // Arrange
    let app = TestApp::spawn().await;
    let routes = [
        (
            Method::POST,
            "/api/push",
            json!({"sessionId": "s", "content": "hi", "role": "assistant"}),
        ),
        (Method::GET, "/api/deliveries?status=dead", Value::Null),
        (Method::GET, "/api/deliveries/evt_x.n_hook", Value::Null),
        (
            Method::POST,
            "/api/deliveries/evt_x.n_hook/replay",
            Value::Null,
        ),
        (
            Method::POST,
            "/api/destinations/hook/replay",
            json!({"since": "2024-01-01T00:00:00Z"}),
        ),
    ];

    for (method, path, body) in routes {
        // Act
        let mut req = app.anna.request(method.clone(), path);
        if !body.is_null() {
            req = req.json(&body);
        }
        let (status, answer) = app.call(req).await;

        // Assert
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(
            answer["error"]["code"], "forbidden",
            "{method} {path}: {answer}"
        );
    }
    let (status, _) = app.call(app.req(Method::GET, "/api/deliveries")).await;
    assert_eq!(status, StatusCode::OK, "the admin key may");
}
