//! The dashboard's relay routes against a real relay and real receivers: each attempt keeps its
//! status and the first 4 KiB of the body (flagged when cut); a destination's dead deliveries
//! since a time are queued again (`?since=`) and arrive; a destination a 410 disabled is listed
//! and enabled again without a replay; dead letters page with a cursor; scoped keys and bad
//! input get a 4xx that writes nothing.

use crate::harness::app::{relay_settings, ADMIN_KEY};
use crate::harness::receiver::{Answer, Endpoint};
use crate::harness::relay::webhook;
use crate::harness::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// How long a delivery may take to settle in these tests.
const SETTLE: Duration = Duration::from_secs(15);

/// The id of the delivery in `records` of `task`'s event `kind`.
fn id_of(records: &[Value], task: &taskfleet::domain::Task, kind: &str) -> String {
    records
        .iter()
        .find(|r| {
            r["job"]["event"]["task_id"] == task.id.as_str() && r["job"]["event"]["type"] == kind
        })
        .and_then(|r| r["job"]["id"].as_str())
        .unwrap_or_else(|| panic!("no {kind} delivery of {} in {records:?}", task.task_name))
        .to_string()
}

/// `GET /api/deliveries/{id}` with the admin key.
async fn delivery(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .call(app.req(Method::GET, &format!("/api/deliveries/{id}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The property names of the schema `name` of the served OpenAPI document.
async fn documented(app: &TestApp, name: &str) -> Vec<String> {
    let (_, doc) = app.call(app.req(Method::GET, "/api/openapi.json")).await;
    let props = doc["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name}"));
    props.keys().cloned().collect()
}

/// The keys of a JSON object, sorted.
fn fields(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

/// `taskfleet delivery <args>` against `app` with the admin key: its JSON output.
async fn cli(app: &TestApp, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskfleet"))
        .arg("delivery")
        .args(args)
        .env_remove("TASKFLEET_CONFIG")
        .env("TASKFLEET_API_URL", &app.url)
        .env("TASKFLEET_API_KEY", ADMIN_KEY)
        .output()
        .await
        .expect("run taskfleet");
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

/// The last sequence of the delivery queue (every queued job is a message there).
async fn queued_so_far(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let mut queue = js
        .get_stream("DELIVERIES")
        .await
        .expect("the delivery queue");
    queue.info().await.expect("queue info").state.last_sequence
}

#[tokio::test]
async fn an_attempt_keeps_its_status_and_the_first_4_kib_of_the_body_flagged_when_cut() {
    // Arrange: one receiver refuses with 10,000 bytes (2-byte characters), one with a short body.
    let app = TestApp::spawn().await;
    let long = Endpoint::start().await;
    long.answer_from_now_on(Answer::status(400).body("é".repeat(5000)));
    let short = Endpoint::start().await;
    short.answer_from_now_on(Answer::status(400).body("no thanks"));
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .task_notifying(
            "refused",
            json!([webhook(&long.url("/long")), webhook(&short.url("/short"))]),
        )
        .await;
    let dead = app
        .wait_deliveries(&format!("status=dead&task_id={}", task.id), 2, SETTLE)
        .await;

    // Assert
    let by_url = |needle: &str| {
        dead.iter()
            .find(|r| {
                r["job"]["destination"]["url"]
                    .as_str()
                    .unwrap()
                    .contains(needle)
            })
            .unwrap_or_else(|| panic!("no dead delivery to {needle}: {dead:?}"))
    };
    let cut = &by_url("/long")["attempts"][0];
    assert_eq!(cut["status"], 400);
    let body = cut["response"].as_str().unwrap();
    assert_eq!(body.len(), 4096, "2,048 two-byte characters");
    assert!("é".repeat(5000).starts_with(body));
    assert_eq!(cut["truncated"], true, "{cut}");
    let allowed = documented(&app, "Attempt").await;
    assert!(fields(cut).iter().all(|f| allowed.contains(f)), "{cut}");
    let whole = &by_url("/short")["attempts"][0];
    assert_eq!(whole["status"], 400);
    assert_eq!(whole["response"], "no thanks");
    assert!(whole.get("truncated").is_none(), "{whole}");
}

#[tokio::test]
async fn replaying_a_destination_since_a_time_in_the_query_requeues_only_later_dead_deliveries_and_they_arrive(
) {
    // Arrange: a named webhook that refuses (400: dead at once); one event before the time,
    // two after it.
    let app = TestApp::spawn().await;
    let (hook, _relay) = app.relay_to_named_hook("hook", Answer::status(400)).await;
    let before = app.task_notifying("before", json!(["hook"])).await;
    app.wait_deliveries("status=dead&destination=hook", 1, SETTLE)
        .await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let after = app.task_notifying("after", json!(["hook"])).await;
    app.act(&after, "start").await;
    let dead = app
        .wait_deliveries("status=dead&destination=hook", 3, SETTLE)
        .await;
    let early = id_of(&dead, &before, "created");
    let later = [
        id_of(&dead, &after, "created"),
        id_of(&dead, &after, "started"),
    ];

    // Act
    hook.answer_from_now_on(Answer::status(200));
    let path = format!("/api/destinations/hook/replay?since={}", urlencode(&since));
    let (status, answer) = app.call(app.req(Method::POST, &path)).await;
    let hits = hook.wait_for(5, SETTLE).await;

    // Assert: exactly the later two, queued and delivered in order; the earlier stays dead.
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        answer,
        json!({"replayed": later, "count": 2, "more": false})
    );
    let again: Vec<String> = hits[3..].iter().map(|h| h.webhook_id()).collect();
    assert_eq!(again, later);
    for id in &later {
        let settled = eventually("the replay to be recorded", SETTLE, || async {
            let r = delivery(&app, id).await;
            (r["status"] == "delivered").then_some(r)
        })
        .await;
        assert_eq!(settled["attempts"].as_array().unwrap().len(), 2);
    }
    assert_eq!(delivery(&app, &early).await["status"], "dead");
}

/// `s` percent-encoded for a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn enabling_a_destination_a_410_disabled_lets_its_deliveries_flow_again() {
    // Arrange: a named webhook that answers 410 Gone, so the relay disables it; the next event
    // is then dead without a request.
    let app = TestApp::spawn().await;
    let (hook, _relay) = app.relay_to_named_hook("gone", Answer::status(410)).await;
    let task = app.task_notifying("gone away", json!(["gone"])).await;
    app.wait_deliveries("status=dead&destination=gone", 1, SETTLE)
        .await;
    app.act(&task, "start").await;
    let dead = app
        .wait_deliveries("status=dead&destination=gone", 2, SETTLE)
        .await;
    let (_, listed) = app.call(app.req(Method::GET, "/api/destinations")).await;
    let listed_by_cli = cli(&app, &["destinations"]).await;

    // Act
    hook.answer_from_now_on(Answer::status(200));
    let (status, enabled) = app
        .call(app.req(Method::POST, "/api/destinations/gone/enable"))
        .await;
    let again = cli(&app, &["enable", "gone"]).await;
    let (_, after) = app.call(app.req(Method::GET, "/api/destinations")).await;
    app.act(&task, "complete").await;
    let hits = hook
        .wait_until("task.completed to arrive", SETTLE, |h| {
            h.kind() == "task.completed"
        })
        .await;

    // Assert: listed disabled with why and when; enabled once; then deliveries flow.
    let gone = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["key"] == "n_gone")
        .unwrap_or_else(|| panic!("n_gone not listed: {listed}"));
    assert_eq!(gone["disabled"], true, "{gone}");
    assert_eq!(listed_by_cli, listed, "the CLI lists the same");
    let mut shape = documented(&app, "DestinationState").await;
    shape.sort();
    assert_eq!(
        fields(gone),
        shape,
        "every documented field, always present"
    );
    assert!(gone["reason"].as_str().unwrap().contains("410"), "{gone}");
    assert!(gone["time"].is_string(), "{gone}");
    assert_eq!(
        hits.len(),
        2,
        "the event dead while disabled was never sent"
    );
    assert!(dead
        .iter()
        .any(|r| r["reason"].as_str().is_some_and(|why| why.contains("410"))));
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled, json!({"enabled": ["n_gone"]}));
    assert_eq!(again, json!({"enabled": []}), "nothing left to enable");
    assert!(
        !after
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["disabled"] == true),
        "{after}"
    );
    let started = id_of(&dead, &task, "started");
    assert_eq!(
        delivery(&app, &started).await["status"],
        "dead",
        "enabling replays nothing"
    );
}

#[tokio::test]
async fn bad_input_and_scoped_keys_on_the_destination_routes_get_a_4xx_that_writes_nothing() {
    // Arrange: one dead delivery to a named webhook.
    let app = TestApp::spawn().await;
    let (hook, _relay) = app.relay_to_named_hook("hook", Answer::status(400)).await;
    app.task_notifying("refused", json!(["hook"])).await;
    let dead = app
        .wait_deliveries("status=dead&destination=hook", 1, SETTLE)
        .await;
    let id = dead[0]["job"]["id"].as_str().unwrap().to_string();
    let queued = queued_so_far(&app).await;
    let day = "2024-01-01T00:00:00Z";
    let bad = [
        (
            "/api/destinations/hook/replay?since=yesterday",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "since",
        ),
        (
            "/api/destinations/hook/replay?since=2024-13-01T00:00:00Z",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "since",
        ),
        (
            &format!("/api/destinations/hook/replay?since={day}") as &str,
            json!({"since": day}),
            StatusCode::BAD_REQUEST,
            "since",
        ),
        (
            "/api/destinations/hook/replay",
            json!({"since": "soon"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "since",
        ),
        (
            "/api/destinations/a.b/enable",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "destination",
        ),
        (
            "/api/destinations/nobody/enable",
            Value::Null,
            StatusCode::NOT_FOUND,
            "nobody",
        ),
    ];

    for (path, body, want, names) in bad {
        // Act
        let mut req = app.req(Method::POST, path);
        if !body.is_null() {
            req = req.json(&body);
        }
        let (status, answer) = app.call(req).await;

        // Assert
        assert_eq!(status, want, "{path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{path}: {answer}");
    }
    let scoped = [
        (Method::GET, "/api/destinations".to_string()),
        (Method::POST, "/api/destinations/hook/enable".to_string()),
        (
            Method::POST,
            format!("/api/destinations/hook/replay?since={day}"),
        ),
    ];
    for (method, path) in scoped {
        let (status, answer) = app.call(app.anna.request(method.clone(), &path)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }

    // Assert: nothing was queued or changed.
    assert_eq!(queued_so_far(&app).await, queued);
    let record = delivery(&app, &id).await;
    assert_eq!(record["status"], "dead");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(hook.hits().len(), 1);
}

/// The ids of one page of `GET /api/dead-letters?limit=2&after={after}`, and its cursor.
async fn dead_letters_page(app: &TestApp, after: &str) -> (Vec<String>, Option<String>) {
    let path = format!("/api/dead-letters?limit=2&after={after}");
    let r = app.req(Method::GET, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let next = r
        .headers()
        .get("x-next-cursor")
        .map(|v| v.to_str().unwrap().to_string());
    let tasks: Vec<Value> = r.json().await.unwrap();
    let ids = tasks.iter().map(|t| t["id"].as_str().unwrap().into());
    (ids.collect(), next)
}

#[tokio::test]
async fn dead_letters_page_oldest_first_through_the_cursor() {
    // Arrange: five dead letters (tasks copied to the dead-letter stream, as a worker does).
    let app = TestApp::spawn().await;
    let ids = app.seed_dead_letters(5).await;

    // Act
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let (page, next) = dead_letters_page(&app, &after).await;
        pages.push(page);
        match next {
            Some(n) if pages.len() < 5 => after = n,
            _ => break,
        }
    }
    let (bad, answer) = app
        .call(app.req(Method::GET, "/api/dead-letters?after=later"))
        .await;

    // Assert
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), ids);
    assert_eq!(bad, StatusCode::BAD_REQUEST);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("after"));
}

#[tokio::test]
async fn a_full_last_page_of_dead_letters_carries_no_cursor() {
    // Arrange: four dead letters, read two at a time.
    let app = TestApp::spawn().await;
    let ids = app.seed_dead_letters(4).await;

    // Act
    let (first, next) = dead_letters_page(&app, "").await;
    let next = next.expect("a first page with more after it");
    let (second, last) = dead_letters_page(&app, &next).await;

    // Assert: the second page holds the newest two and names no page after it.
    assert_eq!([first, second].concat(), ids);
    assert_eq!(
        last, None,
        "a cursor after the last dead letter leads to an empty page"
    );
}

#[tokio::test]
async fn a_configured_webhook_sends_its_extra_headers_with_one_read_from_the_relays_environment() {
    // Arrange: a named webhook with a static header and one from a variable the relay has.
    let app = TestApp::spawn().await;
    let hook = Endpoint::start().await;
    let mut settings = relay_settings();
    let dest = json!({"type": "webhook", "url": hook.url("/ops"),
        "headers": {"X-Team": "ops"}, "headers_env": {"X-From-Env": "PATH"}});
    let dest = serde_json::from_value(dest).expect("a webhook destination");
    settings.destinations.insert("ops".into(), dest);
    let _relay = app.relay(settings).await;

    // Act
    app.task_notifying("with headers", json!(["ops"])).await;
    let hits = hook.wait_for(1, SETTLE).await;

    // Assert
    let path = std::env::var("PATH").expect("tests run with a PATH");
    assert_eq!(hits[0].header("x-team"), Some("ops"));
    assert_eq!(hits[0].header("x-from-env"), Some(path.as_str()));
    assert!(hits[0].header("webhook-id").is_some());
}
