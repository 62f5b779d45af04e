//! Test helpers for the sinks: a real HTTP receiver on `127.0.0.1:0` that records every request
//! and answers as scripted, a context that allows it, and sample jobs.

use super::SinkContext;
use crate::domain::{Assignee, EventKind, NewTask, Task, TaskEvent, TaskId};
use crate::outbound::ssrf::AllowList;
use crate::relay::job::{DeliveryJob, EventJson, TaskJson};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the receiver saw.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Seen {
    /// A header's value as text.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Answer {
    pub(super) fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub(super) fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    pub(super) fn body(mut self, body: &str) -> Self {
        self.body = body.to_string();
        self
    }

    pub(super) fn json(self, body: serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(&body.to_string())
    }

    pub(super) fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Script,
}

/// A local HTTP server; dropped, it stops.
pub(super) struct Receiver {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver answering the `n`th request (0-based) with `script(n)`.
    pub(super) async fn answering(
        script: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            seen: seen.clone(),
            script: Arc::new(script),
        };
        let app = axum::Router::new().fallback(record).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, seen, server }
    }

    /// A receiver answering every request with `200 ok`.
    pub(super) async fn ok() -> Self {
        Self::answering(|_| Answer::status(200).body("ok")).await
    }

    /// The URL of `path` on this receiver.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far, in order.
    pub(super) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = {
        let mut seen = shared.seen.lock().unwrap();
        seen.push(Seen {
            method,
            path: uri.path().to_string(),
            headers,
            body,
        });
        seen.len() - 1
    };
    let answer = (shared.script)(n);
    tokio::time::sleep(answer.delay).await;
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// A context allowing `127.0.0.1/32`, with a 5 s timeout.
pub(super) fn ctx() -> SinkContext {
    let allow = AllowList::new(["127.0.0.1/32"]).unwrap();
    SinkContext::new(allow, Duration::from_secs(5)).unwrap()
}

/// A push job (no task, no event) with `text`.
pub(super) fn job(text: &str) -> DeliveryJob {
    DeliveryJob {
        id: "msg_2bRxsTq6kVfZ1example".into(),
        key: "h_test".into(),
        name: None,
        destination: None,
        event: None,
        task: None,
        text: text.to_string(),
        session_id: None,
        created_time: chrono::Utc::now(),
    }
}

/// A `completed` event job for task `t_42` ("Weekly report") with `text`.
pub(super) fn task_job(text: &str) -> DeliveryJob {
    let new: NewTask = serde_json::from_value(serde_json::json!({
        "task_name": "Weekly report",
        "assigned_to": "anna",
    }))
    .unwrap();
    let id = TaskId::parse("t_42").unwrap();
    let task = Task::from_new(id.clone(), new);
    let event = TaskEvent::new(
        &id,
        &Assignee::parse("anna").unwrap(),
        EventKind::Completed,
        "test",
    );
    DeliveryJob {
        event: Some(EventJson::of(&event)),
        task: Some(TaskJson::of(&task)),
        ..job(text)
    }
}
