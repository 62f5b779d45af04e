//! API keys: who may call at all (401), and what a key scoped to one assignee may touch (403).

use crate::harness::app::{ADMIN_KEY, ANNA_KEY};
use crate::harness::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A request carrying no key at all.
fn anonymous(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http.request(method, format!("{}{path}", app.url))
}

/// A request carrying the key scoped to `anna` (with a timeout: a wrongly allowed `/events`
/// would stream forever).
fn as_anna(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    anonymous(app, method, path)
        .header("X-Bot-Key", ANNA_KEY)
        .timeout(std::time::Duration::from_secs(10))
}

/// Messages in the TASKS (queue) stream.
async fn queued(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let mut stream = js.get_stream("TASKS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no error message in {body}"
    );
}

#[tokio::test]
async fn a_request_without_a_key_gets_401_with_a_json_error_and_writes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("existing", "anna", "P1").await;
    let create = json!({"task_name": "sneaky", "assigned_to": "anna"});

    // Act
    let mut answers = Vec::new();
    for (method, path) in [
        (Method::GET, "/api/tasks".to_string()),
        (Method::GET, "/api/tasks/pending".to_string()),
        (Method::GET, format!("/api/tasks/{id}")),
        (Method::GET, format!("/api/tasks/{id}/logs")),
        (Method::PUT, format!("/api/tasks/{id}/start")),
        (Method::PUT, format!("/api/tasks/{id}/cancel")),
    ] {
        let what = format!("{method} {path}");
        answers.push((what, app.call(anonymous(&app, method, &path)).await));
    }
    let created = app
        .call(anonymous(&app, Method::POST, "/api/tasks").json(&create))
        .await;

    // Assert
    for (what, (status, body)) in &answers {
        assert_error(
            *status,
            body,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            what,
        );
    }
    assert_error(
        created.0,
        &created.1,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "POST /api/tasks",
    );
    let all = app.admin.list_tasks(&[]).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id.as_str(), id);
    assert_eq!(all[0].status.as_str(), "pending");
    assert_eq!(queued(&app).await, 1);
}

#[tokio::test]
async fn a_wrong_key_gets_401_whether_sent_as_x_bot_key_or_bearer() {
    // Arrange
    let app = TestApp::spawn().await;
    let create = json!({"task_name": "sneaky", "assigned_to": "anna"});
    let wrong = "not-a-key-we-know-0123456789";

    // Act
    let (s1, b1) = app
        .call(
            anonymous(&app, Method::POST, "/api/tasks")
                .header("X-Bot-Key", wrong)
                .json(&create),
        )
        .await;
    let (s2, b2) = app
        .call(
            anonymous(&app, Method::POST, "/api/tasks")
                .bearer_auth(wrong)
                .json(&create),
        )
        .await;
    let (s3, b3) = app
        .call(anonymous(&app, Method::GET, "/api/tasks").header("X-Bot-Key", ""))
        .await;
    let (s4, b4) = app
        .call(
            anonymous(&app, Method::GET, "/api/tasks")
                .header("Authorization", format!("Basic {ADMIN_KEY}")),
        )
        .await;

    // Assert
    assert_error(
        s1,
        &b1,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "X-Bot-Key",
    );
    assert_error(s2, &b2, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");
    assert_error(
        s3,
        &b3,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "empty key",
    );
    assert_error(s4, &b4, StatusCode::UNAUTHORIZED, "unauthorized", "Basic");
    assert!(app.admin.list_tasks(&[]).await.unwrap().is_empty());
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn the_admin_key_works_as_a_bearer_token() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, created) = app
        .call(
            anonymous(&app, Method::POST, "/api/tasks")
                .bearer_auth(ADMIN_KEY)
                .json(&json!({"task_name": "via bearer", "assigned_to": "trump"})),
        )
        .await;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let (get_status, got) = app
        .call(anonymous(&app, Method::GET, &format!("/api/tasks/{id}")).bearer_auth(ADMIN_KEY))
        .await;

    // Assert
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["created_by"], "admin");
    assert_eq!(get_status, StatusCode::OK, "{got}");
    assert_eq!(got["task_name"], "via bearer");
}

#[tokio::test]
async fn the_admin_key_works_as_x_bot_key() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, created) = app
        .call(
            anonymous(&app, Method::POST, "/api/tasks")
                .header("X-Bot-Key", ADMIN_KEY)
                .json(&json!({"task_name": "via header", "assigned_to": "trump"})),
        )
        .await;
    let (list_status, list) = app
        .call(anonymous(&app, Method::GET, "/api/tasks").header("X-Bot-Key", ADMIN_KEY))
        .await;

    // Assert
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(list_status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["id"], created["id"]);
}

#[tokio::test]
async fn healthz_and_metrics_need_no_key() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let health = anonymous(&app, Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    let health_status = health.status();
    let health_body: Value = health.json().await.unwrap();
    let metrics = anonymous(&app, Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    let metrics_status = metrics.status();
    let metrics_text = metrics.text().await.unwrap();

    // Assert
    assert_eq!(health_status, StatusCode::OK);
    assert_eq!(health_body["status"], "ok");
    assert_eq!(metrics_status, StatusCode::OK);
    assert!(metrics_text.contains("taskfleet_"), "{metrics_text}");
}

#[tokio::test]
async fn the_anna_key_can_create_get_start_and_complete_annas_tasks() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let created = app
        .anna
        .create_task(&json!({"task_name": "mine", "assigned_to": "anna", "priority": "P0"}))
        .await
        .unwrap();
    let id = created.id.to_string();
    let got = app.anna.get_task(&id).await.unwrap();
    let started = app.anna.action(&id, "start", None).await.unwrap();
    let done = app
        .anna
        .action(&id, "complete", Some(&json!({"result": "ok"})))
        .await
        .unwrap();
    let logs = app.anna.logs(&id).await.unwrap();

    // Assert
    assert_eq!(created.status.as_str(), "pending");
    assert_eq!(created.created_by.as_deref(), Some("anna-bot"));
    assert_eq!(got.id, created.id);
    assert_eq!(started.status.as_str(), "running");
    assert_eq!(started.lease.as_ref().unwrap().holder, "anna-bot");
    assert_eq!(done.status.as_str(), "completed");
    assert_eq!(done.result, Some(json!("ok")));
    let actions: Vec<&str> = logs.iter().map(|l| l.action.as_str()).collect();
    assert_eq!(actions, ["create", "start", "complete"]);
    assert!(logs.iter().all(|l| l.operator == "anna-bot"), "{logs:?}");
}

#[tokio::test]
async fn the_anna_key_may_not_create_a_task_for_trump_and_nothing_is_written() {
    // Arrange
    let app = TestApp::spawn().await;

    // Act
    let (status, body) = app
        .call(
            as_anna(&app, Method::POST, "/api/tasks")
                .json(&json!({"task_name": "not yours", "assigned_to": "trump"})),
        )
        .await;

    // Assert
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "forbidden",
        "create for trump",
    );
    assert!(app.admin.list_tasks(&[]).await.unwrap().is_empty());
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn the_anna_key_may_not_read_or_act_on_trumps_task() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("trump's", "trump", "P1").await;

    // Act
    let mut answers = Vec::new();
    for (method, path) in [
        (Method::GET, format!("/api/tasks/{id}")),
        (Method::GET, format!("/api/tasks/{id}/logs")),
        (Method::GET, format!("/api/tasks/{id}/events")),
        (Method::PUT, format!("/api/tasks/{id}/start")),
        (Method::PUT, format!("/api/tasks/{id}/cancel")),
        (Method::PUT, format!("/api/tasks/{id}/complete")),
        (Method::PUT, format!("/api/tasks/{id}/fail")),
        (Method::PUT, format!("/api/tasks/{id}/retry")),
    ] {
        let what = format!("{method} {path}");
        answers.push((what, app.call(as_anna(&app, method, &path)).await));
    }

    // Assert
    for (what, (status, body)) in &answers {
        assert_error(*status, body, StatusCode::FORBIDDEN, "forbidden", what);
    }
    let task = app.admin.get_task(&id).await.unwrap();
    assert_eq!(task.status.as_str(), "pending");
}

#[tokio::test]
async fn a_forbidden_start_changes_nothing() {
    // Arrange
    let app = TestApp::spawn().await;
    let id = app.create("trump's", "trump", "P1").await;
    let (_, before) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;

    // Act
    let (status, body) = app
        .call(as_anna(
            &app,
            Method::PUT,
            &format!("/api/tasks/{id}/start"),
        ))
        .await;

    // Assert
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "forbidden",
        "start trump's",
    );
    let (_, after) = app
        .call(app.req(Method::GET, &format!("/api/tasks/{id}")))
        .await;
    assert_eq!(after, before);
    assert_eq!(after["status"], "pending");
    assert_eq!(after["attempt"], 0);
    let pending = app
        .admin
        .pending(&[("assigned_to", "trump".into())])
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id.as_str(), id);
    assert_eq!(queued(&app).await, 1);
    let actions: Vec<String> = app
        .admin
        .logs(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.action)
        .collect();
    assert_eq!(actions, ["create"]);
}

#[tokio::test]
async fn the_anna_key_may_not_list_trumps_tasks() {
    // Arrange
    let app = TestApp::spawn().await;
    app.create("trump's", "trump", "P1").await;

    // Act
    let (pending_status, pending) = app
        .call(as_anna(
            &app,
            Method::GET,
            "/api/tasks/pending?assigned_to=trump",
        ))
        .await;
    let (list_status, list) = app
        .call(as_anna(&app, Method::GET, "/api/tasks?assigned_to=trump"))
        .await;

    // Assert
    assert_error(
        pending_status,
        &pending,
        StatusCode::FORBIDDEN,
        "forbidden",
        "pending for trump",
    );
    assert_error(
        list_status,
        &list,
        StatusCode::FORBIDDEN,
        "forbidden",
        "list for trump",
    );
}

#[tokio::test]
async fn the_anna_key_lists_only_annas_tasks() {
    // Arrange
    let app = TestApp::spawn().await;
    let a1 = app.create("anna one", "anna", "P1").await;
    let _t1 = app.create("trump one", "trump", "P1").await;
    let a2 = app.create("anna two", "anna", "P0").await;
    let _s1 = app.create("agent one", "session_agent", "P2").await;

    // Act
    let mine = app.anna.list_tasks(&[]).await.unwrap();
    let everyone = app.admin.list_tasks(&[]).await.unwrap();

    // Assert
    let ids: Vec<&str> = mine.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [a2.as_str(), a1.as_str()]);
    assert_eq!(everyone.len(), 4);
}

#[tokio::test]
async fn the_anna_key_pending_list_without_assigned_to_shows_annas_pending_tasks_only() {
    // Arrange
    let app = TestApp::spawn().await;
    let a1 = app.create("anna one", "anna", "P2").await;
    let _t1 = app.create("trump one", "trump", "P0").await;
    let a2 = app.create("anna two", "anna", "P0").await;
    let a3 = app.create("anna started", "anna", "P0").await;
    app.admin.action(&a3, "start", None).await.unwrap();

    // Act
    let pending = app.anna.pending(&[]).await.unwrap();

    // Assert
    let ids: Vec<&str> = pending.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [a2.as_str(), a1.as_str()]);
}

#[tokio::test]
async fn the_anna_key_cannot_read_trumps_task_by_reusing_its_idempotency_key() {
    // Arrange
    let app = TestApp::spawn().await;
    let trumps = app
        .admin
        .create_task(&json!({
            "task_name": "trump's secret", "assigned_to": "trump",
            "payload": {"secret": 42}, "idempotency_key": "req-1"
        }))
        .await
        .unwrap();

    // Act
    let (status, body) = app
        .call(as_anna(&app, Method::POST, "/api/tasks").json(&json!({
            "task_name": "mine", "assigned_to": "anna", "idempotency_key": "req-1"
        })))
        .await;

    // Assert: whatever the answer, it must not be trump's task.
    assert_ne!(body["id"], trumps.id.as_str(), "{status}: {body}");
    assert_ne!(body["assigned_to"], "trump", "{status}: {body}");
    assert!(
        !body.to_string().contains("trump's secret"),
        "{status}: {body}"
    );
}
