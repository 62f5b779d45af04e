//! An HTTP client for the taskfleet API, shared by the CLI and the integration tests.

use crate::domain::{LogEntry, StallRule, Task, TaskEvent};
use futures::{Stream, StreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error.
    #[error("{message} (HTTP {status} {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code from the body.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The API could not be reached: the innermost cause (`Connection refused`, a DNS
    /// failure, a timeout), and where to point the client instead.
    #[error(
        "cannot reach the taskfleet API at {url}: {} (is it running? `taskfleet up` starts \
         one; --api or TASKFLEET_API_URL names another)",
        root_cause(source)
    )]
    Unreachable {
        /// Base URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The response was not what the API sends.
    #[error("unexpected response from the API: {0}")]
    Decode(String),
}

/// The innermost error of `e`'s chain (reqwest's own says only "error sending request").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A client for one API base URL and key.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8090`) sending `key` as `X-Bot-Key`.
    pub fn new(base: &str, key: Option<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("reqwest client"),
            base: base.trim_end_matches('/').to_string(),
            key,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` (starting with `/`) carrying the key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            r = r.header("X-Bot-Key", k);
        }
        r
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        Ok(self.send_with_headers(req).await?.0)
    }

    /// [`send`](Self::send), with the answer's headers.
    async fn send_with_headers<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(T, reqwest::header::HeaderMap), ClientError> {
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let err = &body["error"];
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: err["code"].as_str().unwrap_or("unknown").to_string(),
                message: err["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        let body =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((body, headers))
    }

    /// The fleet's stall rule: the threshold `GET /healthz` reports (`stall_after_s`, the API's
    /// `relay.stall_after_s`).
    pub async fn stall_rule(&self) -> Result<StallRule, ClientError> {
        let health: Value = self.send(self.request(Method::GET, "/healthz")).await?;
        match health["stall_after_s"].as_u64() {
            Some(secs) => Ok(StallRule::from_secs(secs)),
            None => Err(ClientError::Decode(
                "/healthz does not say stall_after_s (an API older than this CLI?)".into(),
            )),
        }
    }

    /// `POST /api/tasks`.
    pub async fn create_task(&self, body: &Value) -> Result<Task, ClientError> {
        self.send(self.request(Method::POST, "/api/tasks").json(body))
            .await
    }

    /// `GET /api/tasks/{id}`.
    pub async fn get_task(&self, id: &str) -> Result<Task, ClientError> {
        self.send(self.request(Method::GET, &format!("/api/tasks/{id}")))
            .await
    }

    /// `GET /api/tasks?…`.
    pub async fn list_tasks(&self, query: &[(&str, String)]) -> Result<Vec<Task>, ClientError> {
        Ok(self.list_tasks_page(query).await?.0)
    }

    /// `GET /api/tasks?…`, with the cursor of the next page if there may be one: pass it as
    /// `before`.
    pub async fn list_tasks_page(
        &self,
        query: &[(&str, String)],
    ) -> Result<(Vec<Task>, Option<String>), ClientError> {
        self.page("/api/tasks", query).await
    }

    /// One page of the listing at `path`, with the next page's cursor (`X-Next-Cursor`) if
    /// there may be one.
    async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(Vec<T>, Option<String>), ClientError> {
        let req = self.request(Method::GET, path).query(query);
        let (items, headers) = self.send_with_headers(req).await?;
        let next = headers
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((items, next))
    }

    /// `GET /api/tasks/pending?…`.
    pub async fn pending(&self, query: &[(&str, String)]) -> Result<Vec<Task>, ClientError> {
        self.send(self.request(Method::GET, "/api/tasks/pending").query(query))
            .await
    }

    /// `PUT /api/tasks/{id}/{verb}` with an optional JSON body.
    pub async fn action(
        &self,
        id: &str,
        verb: &str,
        body: Option<&Value>,
    ) -> Result<Task, ClientError> {
        self.action_once(id, verb, body, None).await
    }

    /// `PUT /api/tasks/{id}/{verb}` with an optional JSON body and `Idempotency-Key`: a repeat
    /// with the same key applies nothing and returns the task's current state.
    pub async fn action_once(
        &self,
        id: &str,
        verb: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Task, ClientError> {
        let mut req = self.request(Method::PUT, &format!("/api/tasks/{id}/{verb}"));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        self.send(req).await
    }

    /// `PUT /api/tasks/{id}/step`: finishes the current step (`info` is its one-line note;
    /// `step` names it for a task without named steps) and moves to the next.
    pub async fn step(
        &self,
        id: &str,
        info: Option<&str>,
        step: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Task, ClientError> {
        let body = serde_json::json!({ "info": info, "step": step });
        self.action_once(id, "step", Some(&body), idempotency_key)
            .await
    }

    /// `PUT /api/tasks/{id}/heartbeat`: a long step is still alive.
    pub async fn heartbeat(
        &self,
        id: &str,
        info: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Task, ClientError> {
        let body = serde_json::json!({ "info": info });
        self.action_once(id, "heartbeat", Some(&body), idempotency_key)
            .await
    }

    /// `PUT /api/tasks/{id}/progress`: the running task's percentage (0 to 100).
    pub async fn progress(
        &self,
        id: &str,
        percent: u8,
        info: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Task, ClientError> {
        let body = serde_json::json!({ "percent": percent, "info": info });
        self.action_once(id, "progress", Some(&body), idempotency_key)
            .await
    }

    /// `POST /api/tasks/cleanup`: removes tasks finished more than `older_than_s` seconds ago
    /// (the server's default, 7 days, when `None`); returns how many. Needs an admin key.
    pub async fn cleanup(&self, older_than_s: Option<u64>) -> Result<u64, ClientError> {
        let body = match older_than_s {
            Some(s) => serde_json::json!({ "older_than_s": s }),
            None => serde_json::json!({}),
        };
        let answer: Value = self
            .send(self.request(Method::POST, "/api/tasks/cleanup").json(&body))
            .await?;
        answer["removed"]
            .as_u64()
            .ok_or_else(|| ClientError::Decode(format!("no `removed` count in {answer}")))
    }

    /// `GET /api/tasks/{id}/logs`.
    pub async fn logs(&self, id: &str) -> Result<Vec<LogEntry>, ClientError> {
        self.send(self.request(Method::GET, &format!("/api/tasks/{id}/logs")))
            .await
    }

    /// `GET /api/tasks/{id}/output?…`: captured output lines.
    pub async fn output(&self, id: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.send(
            self.request(Method::GET, &format!("/api/tasks/{id}/output"))
                .query(query),
        )
        .await
    }

    /// `POST /api/tasks/{id}/input`: writes to the running process's stdin.
    pub async fn input(&self, id: &str, data: &str, eof: bool) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "data": data, "eof": eof });
        self.send(
            self.request(Method::POST, &format!("/api/tasks/{id}/input"))
                .json(&body),
        )
        .await
    }

    /// `GET /api/dead-letters?…`: tasks that used up their attempts.
    pub async fn dead_letters(&self, query: &[(&str, String)]) -> Result<Vec<Task>, ClientError> {
        Ok(self.dead_letters_page(query).await?.0)
    }

    /// `GET /api/dead-letters?…`, with the cursor of the next page if there may be one: pass
    /// it as `after`.
    pub async fn dead_letters_page(
        &self,
        query: &[(&str, String)],
    ) -> Result<(Vec<Task>, Option<String>), ClientError> {
        self.page("/api/dead-letters", query).await
    }

    /// `GET /api/workers?…`: the workers and relays alive now.
    pub async fn workers(
        &self,
        query: &[(&str, String)],
    ) -> Result<Vec<crate::registry::Announcement>, ClientError> {
        self.send(self.request(Method::GET, "/api/workers").query(query))
            .await
    }

    /// `GET /api/limits?…`: flow control: declared limits, overrides, keys in use.
    pub async fn limits(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.send(self.request(Method::GET, "/api/limits").query(query))
            .await
    }

    /// `PUT /api/limits/{assignee}/{key}` with `{concurrency, rate, burst}`, or with `body`
    /// `None`, `DELETE` (the override goes).
    pub async fn set_limit(
        &self,
        assignee: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let key = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
        let path = format!("/api/limits/{assignee}/{key}");
        match body {
            Some(b) => self.send(self.request(Method::PUT, &path).json(b)).await,
            None => {
                let gone: Result<Value, _> = self.send(self.request(Method::DELETE, &path)).await;
                match gone {
                    // 204: no body to decode.
                    Err(ClientError::Decode(_)) | Ok(_) => Ok(Value::Null),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// `POST /api/schedules`: a new cron schedule (`{name, cron, timezone, task, overlap}`).
    pub async fn create_schedule(
        &self,
        body: &Value,
    ) -> Result<crate::schedules::ScheduleView, ClientError> {
        self.send(self.request(Method::POST, "/api/schedules").json(body))
            .await
    }

    /// `GET /api/schedules`: every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<crate::schedules::ScheduleView>, ClientError> {
        self.send(self.request(Method::GET, "/api/schedules")).await
    }

    /// `GET /api/schedules/{name}`, or with `method` PUT (and a body) / DELETE on it.
    pub async fn schedule(
        &self,
        method: Method,
        name: &str,
        body: Option<&Value>,
    ) -> Result<crate::schedules::ScheduleView, ClientError> {
        let mut req = self.request(method, &format!("/api/schedules/{name}"));
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }

    /// `POST /api/schedules/{name}/pause` or `/resume`.
    pub async fn schedule_action(
        &self,
        name: &str,
        verb: &str,
    ) -> Result<crate::schedules::ScheduleView, ClientError> {
        let path = format!("/api/schedules/{name}/{verb}");
        self.send(self.request(Method::POST, &path)).await
    }

    /// `POST /api/schedules/{name}/trigger`: the schedule's task, created now.
    pub async fn trigger_schedule(&self, name: &str) -> Result<Task, ClientError> {
        let path = format!("/api/schedules/{name}/trigger");
        self.send(self.request(Method::POST, &path)).await
    }

    /// `GET /api/tasks/{id}/events`: every event so far, then live ones.
    pub async fn watch(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<TaskEvent, ClientError>>, ClientError> {
        let resp = self
            .request(Method::GET, &format!("/api/tasks/{id}/events"))
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status,
                code: body["error"]["code"].as_str().unwrap_or("unknown").into(),
                message: body["error"]["message"].as_str().unwrap_or("").into(),
            });
        }
        let bytes = resp.bytes_stream();
        Ok(sse_events(bytes))
    }
}

/// Splits a server-sent-events byte stream into the JSON `data:` payloads of its events.
fn sse_events(
    bytes: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> impl Stream<Item = Result<TaskEvent, ClientError>> {
    futures::stream::unfold((bytes, String::new()), |(mut bytes, mut buf)| async move {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                let parsed = serde_json::from_str::<TaskEvent>(&data.join("\n"))
                    .map_err(|e| ClientError::Decode(e.to_string()));
                return Some((parsed, (bytes, buf)));
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                Some(Err(e)) => {
                    return Some((Err(ClientError::Decode(e.to_string())), (bytes, buf)))
                }
                None => return None,
            }
        }
    })
}
