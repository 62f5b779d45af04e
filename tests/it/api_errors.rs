//! Bad input gets a clear 4xx in the `{"error": {"code", "message"}}` shape and writes nothing;
//! it is never a 500.

use crate::harness::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A valid task id that names no task.
const UNKNOWN_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// Messages in the TASKS (queue) stream.
async fn queued(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let mut stream = js.get_stream("TASKS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Asserts that nothing at all was written: no task state, no queue message.
async fn assert_nothing_written(app: &TestApp) {
    let tasks = app.admin.list_tasks(&[]).await.unwrap();
    assert!(tasks.is_empty(), "tasks were written: {tasks:?}");
    assert_eq!(queued(app).await, 0, "queue messages were written");
}

/// Why `(status, body)` is not the expected error, or `None` when it is.
fn error_mismatch(
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    code: &str,
) -> Option<String> {
    let message = body["error"]["message"].as_str().unwrap_or_default();
    if status != expected || body["error"]["code"] != code || message.is_empty() {
        Some(format!(
            "got {status} {body}, want {expected} with code {code:?} and a message"
        ))
    } else {
        None
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str, what: &str) {
    if let Some(why) = error_mismatch(status, body, expected, code) {
        panic!("{what}: {why}");
    }
}

#[tokio::test]
async fn invalid_create_bodies_get_400_or_422_with_a_code_and_message_and_write_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let long_name = "x".repeat(65);
    let bad = StatusCode::BAD_REQUEST;
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    // (what, body, expected status, a word the message must contain so the caller knows why)
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "unknown priority P3",
            json!({"task_name": "t", "assigned_to": "anna", "priority": "P3"}).to_string(),
            invalid,
            "priority",
        ),
        (
            "a command destination in notify (it would run on the relay's host)",
            json!({"task_name": "t", "assigned_to": "anna",
                "notify": [{"type": "command", "argv": ["touch", "/tmp/x"]}]})
            .to_string(),
            invalid,
            "command",
        ),
        (
            "a webhook in notify signed with a variable of the relay's environment",
            json!({"task_name": "t", "assigned_to": "anna", "notify": [{"type": "webhook",
                "url": "https://example.com/h", "secret_env": "HOME"}]})
            .to_string(),
            invalid,
            "secret_env",
        ),
        (
            "a chat push in notify whose token is a variable of the relay's environment",
            json!({"task_name": "t", "assigned_to": "anna", "notify": [{"type": "chat",
                "url": "https://example.com/push", "session_id": "s", "token_env": "HOME"}]})
            .to_string(),
            invalid,
            "token_env",
        ),
        (
            "a webhook in notify with a header of the relay's environment",
            json!({"task_name": "t", "assigned_to": "anna", "notify": [{"type": "webhook",
                "url": "https://example.com/h", "headers_env": {"Authorization": "HOME"}}]})
            .to_string(),
            invalid,
            "headers_env",
        ),
        (
            "a webhook in notify forging the signature header",
            json!({"task_name": "t", "assigned_to": "anna", "notify": [{"type": "webhook",
                "url": "https://example.com/h", "headers": {"Webhook-Signature": "v1,x"}}]})
            .to_string(),
            invalid,
            "Webhook-Signature",
        ),
        (
            "unknown priority high",
            json!({"task_name": "t", "assigned_to": "anna", "priority": "high"}).to_string(),
            invalid,
            "priority",
        ),
        (
            "uppercase assignee",
            json!({"task_name": "t", "assigned_to": "Anna"}).to_string(),
            invalid,
            "assigned_to",
        ),
        (
            "assignee with a space",
            json!({"task_name": "t", "assigned_to": "an na"}).to_string(),
            invalid,
            "assigned_to",
        ),
        (
            "assignee of 65 characters",
            json!({"task_name": "t", "assigned_to": long_name}).to_string(),
            invalid,
            "assigned_to",
        ),
        (
            "empty assignee",
            json!({"task_name": "t", "assigned_to": ""}).to_string(),
            invalid,
            "assigned_to",
        ),
        (
            "empty task_name",
            json!({"task_name": "", "assigned_to": "anna"}).to_string(),
            invalid,
            "task_name",
        ),
        (
            "blank task_name",
            json!({"task_name": " \t ", "assigned_to": "anna"}).to_string(),
            invalid,
            "task_name",
        ),
        (
            "missing task_name",
            json!({"assigned_to": "anna"}).to_string(),
            invalid,
            "task_name",
        ),
        (
            "missing assigned_to",
            json!({"task_name": "t"}).to_string(),
            invalid,
            "assigned_to",
        ),
        (
            "malformed JSON",
            r#"{"task_name":"#.to_string(),
            bad,
            "JSON",
        ),
        ("JSON that is not an object", "[1]".to_string(), invalid, ""),
        ("empty body", String::new(), invalid, ""),
        (
            "payload that is not an object",
            json!({"task_name": "t", "assigned_to": "anna", "payload": [1, 2]}).to_string(),
            invalid,
            "payload",
        ),
        (
            "boolean priority",
            json!({"task_name": "t", "assigned_to": "anna", "priority": true}).to_string(),
            invalid,
            "priority",
        ),
        (
            "steps as a string",
            json!({"task_name": "t", "assigned_to": "anna", "steps": "x"}).to_string(),
            invalid,
            "",
        ),
        (
            "max_attempts 0",
            json!({"task_name": "t", "assigned_to": "anna", "max_attempts": 0}).to_string(),
            invalid,
            "max_attempts",
        ),
    ];

    // Act
    let mut failures = Vec::new();
    for (what, body, expected, hint) in &cases {
        let (status, answer) = app
            .call(
                app.req(Method::POST, "/api/tasks")
                    .header("Content-Type", "application/json")
                    .body(body.clone()),
            )
            .await;
        let code = if *expected == bad {
            "bad_request"
        } else {
            "validation_failed"
        };
        if let Some(why) = error_mismatch(status, &answer, *expected, code) {
            failures.push(format!("{what}: {why}"));
        } else if !answer["error"]["message"].as_str().unwrap().contains(hint) {
            failures.push(format!(
                "{what}: message does not mention {hint:?}: {answer}"
            ));
        } else if *expected == invalid && answer.to_string().contains(" at line ") {
            failures.push(format!(
                "{what}: a place in the JSON text, not the field: {answer}"
            ));
        }
    }

    // Assert
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_writes_nothing() {
    // Arrange: the default limit is 1 MiB.
    let app = TestApp::spawn().await;
    let body = json!({
        "task_name": "huge", "assigned_to": "anna", "description": "x".repeat(1536 * 1024)
    });

    // Act
    let (status, answer) = app
        .call(app.req(Method::POST, "/api/tasks").json(&body))
        .await;

    // Assert
    assert_error(
        status,
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "1.5 MiB create",
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn bad_list_query_values_get_400() {
    // Arrange
    let app = TestApp::spawn().await;
    app.create("exists", "anna", "P1").await;

    // Act
    let mut answers = Vec::new();
    for path in [
        "/api/tasks/pending?limit=0",
        "/api/tasks/pending?limit=abc",
        "/api/tasks/pending?limit=-1",
        "/api/tasks/pending?limit=1001",
        "/api/tasks/pending?assigned_to=BAD",
        "/api/tasks/pending?assigned_to=an%20na",
        "/api/tasks?status=done",
        "/api/tasks?limit=0",
        "/api/tasks?assigned_to=BAD",
    ] {
        answers.push((path, app.call(app.req(Method::GET, path)).await));
    }

    // Assert
    for (path, (status, body)) in &answers {
        assert_error(*status, body, StatusCode::BAD_REQUEST, "bad_request", path);
    }
}

#[tokio::test]
async fn an_unknown_task_id_is_404_for_get_and_every_action() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let mut answers = Vec::new();
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::GET, "/logs"),
        (Method::GET, "/events"),
        (Method::PUT, "/start"),
        (Method::PUT, "/complete"),
        (Method::PUT, "/fail"),
        (Method::PUT, "/cancel"),
        (Method::PUT, "/retry"),
        (Method::POST, "/start"),
    ] {
        let path = format!("/api/tasks/{UNKNOWN_ID}{suffix}");
        let what = format!("{method} {path}");
        let req = app
            .req(method, &path)
            .timeout(std::time::Duration::from_secs(10));
        answers.push((what, app.call(req).await));
    }

    // Assert
    for (what, (status, body)) in &answers {
        assert_error(*status, body, StatusCode::NOT_FOUND, "not_found", what);
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_malformed_task_id_is_404_not_500() {
    // Arrange
    let app = TestApp::spawn().await;
    let too_long = "x".repeat(65);

    // Act
    let mut answers = Vec::new();
    for id in ["a.b", "%2A", "a%20b", "%3E", too_long.as_str()] {
        for (method, suffix) in [
            (Method::GET, ""),
            (Method::GET, "/logs"),
            (Method::PUT, "/start"),
            (Method::PUT, "/complete"),
            (Method::PUT, "/fail"),
            (Method::PUT, "/cancel"),
            (Method::PUT, "/retry"),
        ] {
            let path = format!("/api/tasks/{id}{suffix}");
            let what = format!("{method} {path}");
            answers.push((what, app.call(app.req(method, &path)).await));
        }
    }

    // Assert
    for (what, (status, body)) in &answers {
        assert_error(*status, body, StatusCode::NOT_FOUND, "not_found", what);
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, body) = app.call(app.req(Method::GET, "/api/nope")).await;
    let (anon_status, anon_body) = app
        .call(app.http.get(format!("{}/api/nope", app.url)))
        .await;

    // Assert
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET /api/nope",
    );
    assert_error(
        anon_status,
        &anon_body,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET /api/nope without a key",
    );
}

#[tokio::test]
async fn a_malformed_action_body_gets_400_and_changes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("running", "anna", "P1").await;
    app.admin.action(&id, "start", None).await.unwrap();
    let before = app.admin.get_task(&id).await.unwrap();

    // Act
    let (status, body) = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{id}/complete"))
                .header("Content-Type", "application/json")
                .body(r#"{"result":"#),
        )
        .await;

    // Assert
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "complete with malformed JSON",
    );
    let after = app.admin.get_task(&id).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.status.as_str(), "running");
}

#[tokio::test]
async fn a_create_without_a_json_content_type_still_works() {
    // Arrange: bots' curl scripts send `-d '{...}'` (form content type) or no type at all.
    let app = TestApp::spawn().await;
    let body = |name: &str| json!({"task_name": name, "assigned_to": "anna"}).to_string();

    // Act
    let (form_status, form) = app
        .call(
            app.req(Method::POST, "/api/tasks")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body("curl -d")),
        )
        .await;
    let (bare_status, bare) = app
        .call(app.req(Method::POST, "/api/tasks").body(body("no type")))
        .await;

    // Assert
    assert_eq!(form_status, StatusCode::CREATED, "{form}");
    assert_eq!(form["task_name"], "curl -d");
    assert_eq!(bare_status, StatusCode::CREATED, "{bare}");
    assert_eq!(bare["task_name"], "no type");
    let pending = app
        .admin
        .pending(&[("assigned_to", "anna".into())])
        .await
        .unwrap();
    let names: Vec<&str> = pending.iter().map(|t| t.task_name.as_str()).collect();
    assert_eq!(names, ["curl -d", "no type"]);
}

#[tokio::test]
async fn a_task_id_that_is_not_utf8_is_a_json_404() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, body) = app.call(app.req(Method::GET, "/api/tasks/%FF")).await;

    // Assert
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        "GET /api/tasks/%FF",
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_repeated_query_parameter_gets_a_json_400() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, body) = app
        .call(app.req(
            Method::GET,
            "/api/tasks/pending?assigned_to=anna&assigned_to=trump",
        ))
        .await;

    // Assert
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "repeated assigned_to",
    );
}

#[tokio::test]
async fn a_wrong_method_on_a_known_route_gets_a_json_error() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("x", "anna", "P1").await;

    // Act
    let (status, body) = app
        .call(app.req(Method::DELETE, &format!("/api/tasks/{id}")))
        .await;

    // Assert
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "DELETE /api/tasks/{id}",
    );
    assert_eq!(
        app.admin.get_task(&id).await.unwrap().status.as_str(),
        "pending"
    );
}

#[tokio::test]
async fn an_array_body_is_a_422_on_every_route_that_takes_a_body_and_writes_nothing() {
    // Arrange: one completed task a cleanup would remove.
    let app = TestApp::spawn().await;
    let done = app.create("done", "anna", "P1").await;
    app.admin.action(&done, "start", None).await.unwrap();
    app.admin.action(&done, "complete", None).await.unwrap();
    let create = json!([{"task_name": "t", "assigned_to": "anna"}]);

    // Act
    let cleanup = app
        .call(
            app.req(Method::POST, "/api/tasks/cleanup")
                .json(&json!([{"older_than_s": 0}])),
        )
        .await;
    let created = app
        .call(app.req(Method::POST, "/api/tasks").json(&create))
        .await;
    let cancel = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{done}/cancel"))
                .json(&json!([])),
        )
        .await;

    // Assert
    for (route, (status, body)) in [
        ("cleanup", cleanup),
        ("create", created),
        ("cancel", cancel),
    ] {
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{route}: {body}");
        assert!(
            message.contains("must be a JSON object"),
            "{route} says what is wrong, not how serde read it: {body}"
        );
    }
    let tasks = app.admin.list_tasks(&[]).await.unwrap();
    assert_eq!(tasks.len(), 1, "only the completed task: {tasks:?}");
    assert_eq!(tasks[0].status.as_str(), "completed");
}

#[tokio::test]
async fn a_create_with_a_field_the_api_does_not_know_is_a_422_naming_it_and_creates_nothing() {
    // Arrange: `type` where the API says `kind` (it would make a manual task no worker runs),
    // and a misspelt `priorty`.
    let app = TestApp::spawn().await;
    let typo = json!({"task_name": "t", "assigned_to": "anna", "type": "exec",
        "payload": {"command": "echo hi"}});
    let other = json!({"task_name": "t", "assigned_to": "anna", "priorty": "P0"});

    // Act
    let (typo_status, typo_body) = app
        .call(app.req(Method::POST, "/api/tasks").json(&typo))
        .await;
    let (other_status, other_body) = app
        .call(app.req(Method::POST, "/api/tasks").json(&other))
        .await;

    // Assert
    assert_eq!(typo_status, StatusCode::UNPROCESSABLE_ENTITY, "{typo_body}");
    assert_eq!(
        typo_body["error"]["message"],
        "unknown field `type` (a task's kind is `kind`)"
    );
    assert_eq!(
        other_status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{other_body}"
    );
    assert_eq!(other_body["error"]["message"], "unknown field `priorty`");
    assert!(app.admin.list_tasks(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_result_too_large_to_record_is_a_quick_422_and_the_task_keeps_running() {
    // Arrange: a running task whose payload fills most of a record.
    let app = TestApp::spawn().await;
    let max = app.jetstream().await.client().server_info().max_payload;
    let half = "x".repeat(max / 2);
    let (status, task) = app
        .call(
            app.req(Method::POST, "/api/tasks")
                .json(&json!({"task_name": "t", "assigned_to": "anna", "payload": {"blob": half}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = task["id"].as_str().unwrap().to_string();
    let (status, _) = app
        .call(app.req(Method::PUT, &format!("/api/tasks/{id}/start")))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Act
    let started = std::time::Instant::now();
    let (status, body) = app
        .call(
            app.req(Method::PUT, &format!("/api/tasks/{id}/complete"))
                .json(&json!({"result": "y".repeat(max * 2 / 3)})),
        )
        .await;

    // Assert
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{body}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (_, now) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    assert_eq!(now["status"], "running");
}
