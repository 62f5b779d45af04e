//! `GET /api/openapi.json`: served without a key, and kept in step with the code: every route of
//! the router is documented, every documented operation is routed, and the documented shapes of
//! a task, a log row, an error and a delivery record are the ones the API answers. (`make fuzz-api`
//! checks every response of a schemathesis run against the document.) Plus the bad input that run
//! found accepted, each now a 4xx that writes nothing, and the JSON 503 of a request timeout.

use crate::harness::app::relay_settings;
use crate::harness::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// A valid task id that names no task.
const UNKNOWN_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// `(METHOD, path)` with every `{param}` written `{}`.
type Operation = (String, String);

fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every `.route("path", get(…).post(…))` of the router's source, as operations.
fn routed_operations() -> BTreeSet<Operation> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"))
        .expect("read src/api/mod.rs");
    let mut ops = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).expect("a route path literal");
        // The method router is what follows the path, up to the `)` that closes `.route(`.
        let mut depth = 1;
        let end = chunk
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(chunk.len(), |(i, _)| i);
        let methods = &chunk[..end];
        for method in ["get", "post", "put", "delete", "patch"] {
            let called = methods.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0 || !methods[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                ops.insert((method.to_uppercase(), normalize(path)));
            }
        }
    }
    assert!(
        ops.len() > 20,
        "found only {} routes in src/api/mod.rs: {ops:?}",
        ops.len()
    );
    ops
}

fn documented_operations(doc: &Value) -> BTreeSet<Operation> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            ops.insert((method.to_uppercase(), normalize(path)));
        }
    }
    ops
}

async fn document(app: &TestApp) -> Value {
    let r = app
        .http
        .get(format!("{}/api/openapi.json", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    r.json().await.unwrap()
}

/// The property names of a schema of `components.schemas`, and those it requires.
fn schema_fields(doc: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = &doc["components"]["schemas"][name];
    let props = schema["properties"].as_object().expect("properties");
    let required = schema["required"].as_array().cloned().unwrap_or_default();
    (
        props.keys().cloned().collect(),
        required
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect(),
    )
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[tokio::test]
async fn the_document_is_served_without_a_key_and_names_every_route_of_the_router() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let doc = document(&app).await;

    // Assert
    assert_eq!(doc["openapi"], "3.1.0");
    let routed = routed_operations();
    let documented = documented_operations(&doc);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "src/api/openapi.json is out of step with src/api/mod.rs:\n  routed but not documented: \
         {undocumented:?}\n  documented but not routed: {unrouted:?}"
    );
}

#[tokio::test]
async fn every_documented_operation_is_served_and_other_methods_are_405() {
    // Arrange
    let app = TestApp::spawn().await;
    let doc = document(&app).await;

    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = path
            .replace("{id}", UNKNOWN_ID)
            .replace("{name}", "nowhere");
        let methods: BTreeSet<String> = item.as_object().unwrap().keys().cloned().collect();
        for method in ["get", "post", "put", "delete", "patch"] {
            // Act (the event feed of an unknown task is a 404, not a stream)
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = if url == "/api/overview/events" && method == "get" {
                // An endless stream: its status is enough.
                let r = app.req(m, &url).send().await.expect("request");
                (r.status(), serde_json::Value::Null)
            } else {
                app.call(app.req(m, &url)).await
            };

            // Assert
            if methods.contains(method) {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !message.starts_with("no route"),
                    "{method} {url} is documented but not served: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {url} is not documented: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_task_a_log_row_and_an_error_have_exactly_the_documented_fields() {
    // Arrange
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let id = app.create("shape", "anna", "P1").await;
    let (_, started) = app
        .call(app.req(Method::PUT, &format!("/api/tasks/{id}/start")))
        .await;

    // Act
    let (_, task) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    let (_, logs) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}/logs")))
        .await;
    let (status, error) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{UNKNOWN_ID}")))
        .await;

    // Assert
    let (task_props, task_required) = schema_fields(&doc, "Task");
    assert_eq!(
        keys(&task),
        task_props,
        "Task: the API's fields vs the document's"
    );
    assert_eq!(
        task_required, task_props,
        "every Task field is always present"
    );
    let (lease_props, _) = schema_fields(&doc, "Lease");
    assert_eq!(keys(&started["lease"]), lease_props, "Lease");
    let (progress_props, _) = schema_fields(&doc, "Progress");
    assert!(
        keys(&task["progress"]).is_subset(&progress_props),
        "Progress"
    );
    let (log_props, log_required) = schema_fields(&doc, "LogEntry");
    for row in logs.as_array().unwrap() {
        assert_eq!(keys(row), log_props, "LogEntry");
    }
    assert_eq!(
        log_required, log_props,
        "every LogEntry field is always present"
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let documented_error = &doc["components"]["schemas"]["Error"]["properties"]["error"];
    assert_eq!(keys(&error), BTreeSet::from(["error".to_string()]));
    assert_eq!(keys(&error["error"]), keys(&documented_error["properties"]));
    let codes = documented_error["properties"]["code"]["enum"]
        .as_array()
        .unwrap();
    assert!(
        codes.contains(&error["error"]["code"]),
        "{error} has a code the document does not list"
    );
}

/// Asserts that `value` has every property the schema `name` requires and none it does not list.
fn assert_fits(doc: &Value, name: &str, value: &Value) {
    let (props, required) = schema_fields(doc, name);
    let have = keys(value);
    assert!(
        required.is_subset(&have) && have.is_subset(&props),
        "{name}: the API answered fields {have:?}; the document lists {props:?}, requiring \
         {required:?}"
    );
}

#[tokio::test]
async fn a_delivery_record_has_the_documented_fields() {
    // Arrange: a task whose start the relay delivers to its log (`created` is not for people).
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let _relay = app.relay(relay_settings()).await;
    let (status, task) = app
        .call(app.req(Method::POST, "/api/tasks").json(&json!({
            "task_name": "logged", "assigned_to": "anna", "notify": [{"type": "log"}]
        })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let start = format!("/api/tasks/{}/start", task["id"].as_str().unwrap());
    app.call(app.req(Method::PUT, &start)).await;

    // Act
    let records = app
        .wait_deliveries("status=delivered", 1, Duration::from_secs(15))
        .await;

    // Assert
    let record = &records[0];
    assert_fits(&doc, "DeliveryRecord", record);
    assert_fits(&doc, "DeliveryJob", &record["job"]);
    assert_fits(&doc, "TaskEvent", &record["job"]["event"]);
    assert_fits(&doc, "Task", &record["job"]["task"]);
    for attempt in record["attempts"].as_array().unwrap() {
        assert_fits(&doc, "Attempt", attempt);
    }
}

/// The rows of a task's log.
async fn log_rows(app: &TestApp, id: &str) -> usize {
    let (_, logs) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}/logs")))
        .await;
    logs.as_array().expect("log rows").len()
}

/// One bad request: what it is, method, path, `Idempotency-Key`, body, status and code expected.
type Case = (
    &'static str,
    Method,
    String,
    Option<&'static str>,
    String,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn bad_input_the_schema_fuzzer_found_is_a_4xx_that_writes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("fuzzed", "anna", "P1").await;
    app.call(app.req(Method::PUT, &format!("/api/tasks/{id}/start")))
        .await;
    let step = format!("/api/tasks/{id}/step");
    let (status, _) = app
        .call(app.req(Method::PUT, &step).header("Idempotency-Key", "k1"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let rows = log_rows(&app, &id).await;
    let long = "x".repeat(2001);
    // (what, method, path, idempotency key, body, expected status, expected code)
    let cases: Vec<Case> = vec![
        (
            "a notify entry that is neither a name nor a destination",
            Method::POST,
            "/api/tasks".into(),
            None,
            r#"{"task_name": "t", "assigned_to": "anna", "notify": [[null, null]]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "a notify object of no destination type",
            Method::POST,
            "/api/tasks".into(),
            None,
            r#"{"task_name": "t", "assigned_to": "anna", "notify": [{"type": "pager"}]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "a scalar body on start",
            Method::PUT,
            format!("/api/tasks/{id}/start"),
            None,
            "true".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "a scalar body on retry",
            Method::POST,
            format!("/api/tasks/{id}/retry"),
            None,
            "5".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "a body of only whitespace",
            Method::PUT,
            format!("/api/tasks/{id}/cancel"),
            None,
            "\n".into(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a message over 2000 characters beside a short info",
            Method::PUT,
            format!("/api/tasks/{id}/heartbeat"),
            None,
            json!({"info": "ok", "message": long}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "a blank step name on a repeat of an applied idempotency key",
            Method::PUT,
            step.clone(),
            Some("k1"),
            json!({"step": "\u{c}"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];

    for (what, method, path, key, body, expected, code) in cases {
        // Act
        let mut req = app
            .req(method, &path)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let (status, answer) = app.call(req).await;

        // Assert
        assert_eq!(status, expected, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
    }
    let (_, tasks) = app.call(app.req(Method::GET, "/api/tasks")).await;
    assert_eq!(
        tasks.as_array().unwrap().len(),
        1,
        "a task was created: {tasks}"
    );
    assert_eq!(log_rows(&app, &id).await, rows, "the task changed");
}

#[tokio::test]
async fn a_null_run_at_beside_delay_s_counts_as_absent_and_the_document_allows_it() {
    // Arrange: the fuzzer's case (2026-12-05): `run_at: null` with `delay_s`, which the API
    // takes as `delay_s` alone; the document's "not both" named any two present keys.
    let app = TestApp::spawn().await;
    let body = json!({"task_name": "t", "assigned_to": "anna", "run_at": null, "delay_s": 600});

    // Act
    let (status, task) = app
        .call(app.req(Method::POST, "/api/tasks").json(&body))
        .await;
    let doc = document(&app).await;

    // Assert: scheduled by `delay_s`; the document's clause forbids two non-null values only.
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!(task["status"], "scheduled", "{task}");
    let not_both = &doc["components"]["schemas"]["NewTask"]["allOf"][0]["not"];
    assert_eq!(not_both["required"], json!(["run_at", "delay_s"]));
    assert_eq!(not_both["properties"]["run_at"]["type"], "string");
    assert_eq!(not_both["properties"]["delay_s"]["type"], "integer");
}

#[tokio::test]
async fn info_and_message_may_both_be_sent_and_info_wins() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("noted", "anna", "P1").await;
    app.call(app.req(Method::PUT, &format!("/api/tasks/{id}/start")))
        .await;

    // Act
    let (status, task) = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{id}/heartbeat"))
                .json(&json!({"info": "from info", "message": "from message"})),
        )
        .await;
    let (_, only_message) = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{id}/progress"))
                .json(&json!({"percent": 50, "message": "half"})),
        )
        .await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["progress"]["info"], "from info");
    assert_eq!(only_message["progress"]["info"], "half");
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_a_json_503_like_every_other_error() {
    // Arrange: a 1 s limit, and a "worker" that takes stdin writes of a running task but never
    // answers (the API itself would wait 5 s for it).
    let app = TestApp::spawn_with(|cfg| cfg.api.request_timeout_s = 1).await;
    let id = app.create("slow", "anna", "P1").await;
    app.call(app.req(Method::PUT, &format!("/api/tasks/{id}/start")))
        .await;
    let nats = async_nats::connect(app.nats.url()).await.unwrap();
    let _silent = nats
        .subscribe(format!("control.anna.{id}.input"))
        .await
        .unwrap();
    nats.flush().await.unwrap();

    // Act
    let r = app
        .req(Method::POST, &format!("/api/tasks/{id}/input"))
        .json(&json!({"data": "y\n"}))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let content_type = r.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}
