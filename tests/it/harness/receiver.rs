//! `Endpoint`: a local HTTP receiver on 127.0.0.1:0 for relay tests. It records every request
//! (path, headers, raw body, arrival time) and answers from a script: a queue of [`Answer`]s
//! used one per request, then a default answer (200 unless changed).

use super::eventually;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the endpoint answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
    delay: Duration,
}

#[allow(dead_code)]
impl Answer {
    /// `status` with the body `ok`.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: "ok".into(),
            delay: Duration::ZERO,
        }
    }

    /// With a `Retry-After` header.
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// With this response body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// Answers only after `delay` (a slow or hanging receiver).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// The body, byte for byte (for signature checks).
    pub raw: Bytes,
    /// When it arrived.
    pub at: Instant,
}

#[allow(dead_code)]
impl Hit {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `webhook-id` header.
    pub fn webhook_id(&self) -> String {
        self.header("webhook-id").unwrap_or_default().to_string()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }

    /// A webhook envelope's `type` (`task.created`, …).
    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }

    /// A chat push's `content`.
    pub fn content(&self) -> String {
        self.json()["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Debug)]
struct Inner {
    hits: Vec<Hit>,
    script: VecDeque<Answer>,
    default: Answer,
}

type Shared = Arc<Mutex<Inner>>;

/// A scripted local HTTP receiver. Dropping it does not stop the server (the test ends first).
#[derive(Debug, Clone)]
pub struct Endpoint {
    base: String,
    inner: Shared,
}

async fn handle(State(inner): State<Shared>, uri: Uri, headers: HeaderMap, raw: Bytes) -> Response {
    let answer = {
        let mut s = inner.lock().unwrap();
        s.hits.push(Hit {
            path: uri.path().to_string(),
            headers,
            raw,
            at: Instant::now(),
        });
        s.script.pop_front().unwrap_or_else(|| s.default.clone())
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap();
    let mut response = (status, answer.body).into_response();
    if let Some(v) = answer.retry_after {
        response
            .headers_mut()
            .insert("retry-after", v.parse().unwrap());
    }
    response
}

#[allow(dead_code)]
impl Endpoint {
    /// An endpoint that answers 200 to everything.
    pub async fn start() -> Self {
        Self::scripted(Vec::new()).await
    }

    /// An endpoint that answers `script` in order, then 200.
    pub async fn scripted(script: Vec<Answer>) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            hits: Vec::new(),
            script: script.into(),
            default: Answer::status(200),
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, inner }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What it answers once the script is used up.
    pub fn answer_from_now_on(&self, answer: Answer) {
        let mut s = self.inner.lock().unwrap();
        s.script.clear();
        s.default = answer;
    }

    /// Every request so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.inner.lock().unwrap().hits.clone()
    }

    /// Waits (bounded) until at least `n` requests arrived, and returns them all.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Hit> {
        eventually(&format!("{n} requests at {}", self.base), limit, || {
            let hits = self.hits();
            async move { (hits.len() >= n).then_some(hits) }
        })
        .await
    }

    /// Waits (bounded) until some request satisfies `pred`, and returns every request so far.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Hit) -> bool,
    ) -> Vec<Hit> {
        eventually(what, limit, || {
            let hits = self.hits();
            let found = hits.iter().any(&pred);
            async move { found.then_some(hits) }
        })
        .await
    }
}
