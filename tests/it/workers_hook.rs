//! `hook` tasks: handed to a bot's local gateway, kept running until the bot reports back.

use crate::harness::app::worker_settings;
use crate::harness::{eventually, TestApp};
use crate::workers::{create_kind, finished};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;

/// A local HTTP receiver standing in for a bot's gateway; returns its URL and what it receives.
async fn gateway() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hooks/taskfleet",
        post(move |Json(body): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "accepted"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/taskfleet", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn a_hook_task_is_posted_to_the_gateway_and_runs_until_the_bot_reports_back() {
    // Arrange
    let app = TestApp::spawn().await;
    let (url, mut received) = gateway().await;
    let mut settings = worker_settings();
    settings.hook_url = Some(url);
    let _worker = app.worker("anna", 1, settings).await;

    // Act: the gateway gets the task; the bot finishes it with the token it was given.
    let id = create_kind(&app, "anna", "P1", "hook", json!({"say": "hi"})).await;
    let body = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("the gateway got the task")
        .unwrap();
    let still = app.admin.get_task(&id).await.unwrap();
    let token = body["task_token"].as_str().unwrap().to_string();
    let bot = taskfleet::client::ApiClient::new(&app.url, Some(token));
    let reported = bot
        .action(&id, "complete", Some(&json!({"result": "said hi"})))
        .await;
    let task = finished(&app, &id, Duration::from_secs(10)).await;

    // Assert
    assert_eq!(body["task"]["id"], id.as_str());
    assert_eq!(body["task"]["payload"]["say"], "hi");
    assert_eq!(body["api_url"], app.url.as_str());
    assert_eq!(still.status.as_str(), "running");
    assert!(reported.is_ok(), "{reported:?}");
    assert_eq!(task.status.as_str(), "completed");
    assert_eq!(task.result, Some(json!("said hi")));
    // The worker let go of it: its only slot takes the next task.
    let next = create_kind(&app, "anna", "P1", "noop", json!({})).await;
    assert_eq!(
        finished(&app, &next, Duration::from_secs(10))
            .await
            .status
            .as_str(),
        "completed"
    );
}

#[tokio::test]
async fn a_hook_task_fails_with_the_reason_when_the_gateway_is_down() {
    let app = TestApp::spawn().await;
    let mut settings = worker_settings();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    settings.hook_url = Some(format!("http://{}/hooks", closed.local_addr().unwrap()));
    drop(closed);
    let _worker = app.worker("anna", 1, settings).await;

    let id = create_kind(&app, "anna", "P1", "hook", json!({})).await;
    let task = eventually("the hook task to fail", Duration::from_secs(15), || async {
        let t = app.admin.get_task(&id).await.ok()?;
        t.status.is_terminal().then_some(t)
    })
    .await;

    assert_eq!(task.status.as_str(), "failed");
    assert!(
        task.error
            .as_deref()
            .unwrap_or("")
            .contains("hook endpoint"),
        "{task:?}"
    );
}
