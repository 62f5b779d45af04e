//! The relay: task events delivered to webhooks and chat sessions.

use crate::harness::app::relay_settings;
use crate::harness::{eventually, TestApp};
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskfleet::relay::signature::Signer;

/// A local HTTP receiver recording every request (headers, JSON body).
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    pub(crate) seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    /// Raw bodies, byte for byte, for signature checks.
    pub(crate) raw: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    pub(crate) async fn start() -> (String, Receiver) {
        let r = Receiver::default();
        let (seen, raw) = (r.seen.clone(), r.raw.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let (seen, raw) = (seen.clone(), raw.clone());
                async move {
                    raw.lock().unwrap().push(body.clone());
                    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    seen.lock().unwrap().push((headers, v));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, r)
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn a_tasks_webhook_gets_its_transitions_signed_and_in_order() {
    // Arrange
    let app = TestApp::spawn().await;
    let (url, receiver) = Receiver::start().await;
    let _relay = app.relay(relay_settings()).await;

    // Act
    let task = app
        .admin
        .create_task(&json!({
            "task_name": "deploy", "assigned_to": "anna",
            "notify": [{"type": "webhook", "url": url, "secret": SECRET}]
        }))
        .await
        .unwrap();
    let id = task.id.to_string();
    app.admin.action(&id, "start", None).await.unwrap();
    app.admin
        .action(&id, "complete", Some(&json!({"result": "done"})))
        .await
        .unwrap();
    let seen = eventually("three deliveries", Duration::from_secs(20), || async {
        let s = receiver.seen.lock().unwrap().clone();
        (s.len() >= 3).then_some(s)
    })
    .await;

    // Assert
    let types: Vec<&str> = seen
        .iter()
        .map(|(_, b)| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["task.created", "task.started", "task.completed"]);
    let signer = Signer::from_secret(SECRET).unwrap();
    let raw = receiver.raw.lock().unwrap().clone();
    for ((headers, body), raw) in seen.iter().zip(&raw) {
        let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_string();
        assert!(h("webhook-id").starts_with(body["data"]["event"]["id"].as_str().unwrap()));
        signer
            .verify(
                &h("webhook-id"),
                &h("webhook-timestamp"),
                raw.as_bytes(),
                &h("webhook-signature"),
            )
            .expect("the Standard Webhooks signature verifies");
    }
    assert_eq!(seen[2].1["data"]["task"]["result"], "done");
}
