//! `TestApp`: a nats-server plus the API served on 127.0.0.1:0, with request helpers.

use super::nats::NatsServer;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use taskfleet::client::ApiClient;
use taskfleet::config::{ApiKeyConfig, Config, RelayConfig, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// The admin key of every test app.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The secret API and workers share for task-scoped tokens.
pub const TASK_TOKEN_SECRET: &str = "test-task-token-secret-0123456789abcdef";
/// A key scoped to `anna`.
pub const ANNA_KEY: &str = "test-anna-key-0123456789";

/// A running API against its own nats-server. Dropping it stops the API.
pub struct TestApp {
    /// The server (tests may kill and restart it).
    pub nats: NatsServer,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Client with the admin key.
    pub admin: ApiClient,
    /// Client with the key scoped to `anna`.
    pub anna: ApiClient,
    /// Plain HTTP client for raw requests.
    pub http: reqwest::Client,
    token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The config every test app uses, pointed at `nats_url`.
pub fn test_config(nats_url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.nats.url = Some(nats_url.to_string());
    cfg.nats.connect_timeout_s = 10;
    cfg.api.admin_key = Some(SecretString::from(ADMIN_KEY));
    cfg.fleet.task_token_secret = Some(SecretString::from(TASK_TOKEN_SECRET));
    cfg.api.keys = vec![ApiKeyConfig {
        name: "anna-bot".into(),
        key: Some(SecretString::from(ANNA_KEY)),
        key_env: None,
        assignees: vec!["anna".into()],
    }];
    cfg
}

impl TestApp {
    /// Starts nats-server and the API, and waits until `/healthz` answers.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Like [`TestApp::spawn`], with the API's config changed by `configure` first (e.g. to set
    /// `relay.push_destination`).
    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        taskfleet::telemetry::init_for_tests();
        let nats = NatsServer::start().await;
        let mut cfg = test_config(&nats.url());
        configure(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        let (t, nats_url) = (token.clone(), nats.url());
        let handle = tokio::spawn(async move {
            let key = cfg.api.admin_key.clone();
            taskfleet::serve::run_api(&cfg, &nats_url, listener, key.as_ref(), t).await
        });
        let app = Self {
            nats,
            admin: ApiClient::new(&url, Some(ADMIN_KEY.into())),
            anna: ApiClient::new(&url, Some(ANNA_KEY.into())),
            http: reqwest::Client::new(),
            url,
            token,
            handle: Some(handle),
        };
        super::eventually(
            "the API to answer /healthz",
            std::time::Duration::from_secs(20),
            || async {
                let r = app
                    .http
                    .get(format!("{}/healthz", app.url))
                    .send()
                    .await
                    .ok()?;
                (r.status() == StatusCode::OK).then_some(())
            },
        )
        .await;
        app
    }

    /// A raw request with the admin key.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("X-Bot-Key", ADMIN_KEY)
    }

    /// Sends a raw request and returns status and JSON body (`Null` when not JSON).
    pub async fn call(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = req.send().await.expect("request");
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Creates a manual task for `assignee` at `priority` and returns its id.
    pub async fn create(&self, name: &str, assignee: &str, priority: &str) -> String {
        let (status, body) = self
            .call(self.req(Method::POST, "/api/tasks").json(&json!({
                "task_name": name, "assigned_to": assignee, "priority": priority, "created_by": "test"
            })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("string id").to_string()
    }

    /// Another API process (its own scheduler) against this app's nats-server, configured by
    /// `configure`; stops when the token is cancelled.
    pub async fn another_api(
        &self,
        configure: impl FnOnce(&mut Config),
    ) -> (ApiClient, CancellationToken) {
        let mut cfg = test_config(&self.nats.url());
        configure(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        let (t, nats_url) = (token.clone(), self.nats.url());
        tokio::spawn(async move {
            let key = cfg.api.admin_key.clone();
            taskfleet::serve::run_api(&cfg, &nats_url, listener, key.as_ref(), t).await
        });
        super::eventually(
            "the other API to answer /healthz",
            std::time::Duration::from_secs(20),
            || async {
                let r = self.http.get(format!("{url}/healthz")).send().await.ok()?;
                (r.status() == StatusCode::OK).then_some(())
            },
        )
        .await;
        (ApiClient::new(&url, Some(ADMIN_KEY.into())), token)
    }

    /// A JetStream context on the test's server, for looking at streams directly.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap())
    }

    /// Stops the API and waits for it to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        self.handle.take().unwrap().await?
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A worker running inside the test process.
pub struct TestWorker {
    token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), taskfleet::worker::WorkerError>>>,
}

impl TestApp {
    /// Starts an in-process worker for `assignee` with `settings` (see `worker_settings`).
    pub async fn worker(
        &self,
        assignee: &str,
        concurrency: usize,
        settings: WorkerConfig,
    ) -> TestWorker {
        let cfg = test_config(&self.nats.url());
        let bus = taskfleet::serve::connect(&cfg, &self.nats.url(), "test-worker")
            .await
            .expect("worker connects");
        let assignee = taskfleet::domain::Assignee::parse(assignee).unwrap();
        let opts = taskfleet::worker::WorkerOptions {
            worker_id: taskfleet::worker::default_worker_id(&assignee),
            assignee,
            concurrency,
            api_url: self.url.clone(),
            task_token_secret: cfg.fleet.task_token_secret.clone(),
            settings,
        };
        let token = CancellationToken::new();
        let handle = tokio::spawn(taskfleet::worker::run(bus, opts, token.clone()));
        TestWorker {
            token,
            handle: Some(handle),
        }
    }
}

/// Worker settings for tests: short waits so failures show quickly.
pub fn worker_settings() -> WorkerConfig {
    WorkerConfig {
        ack_wait_s: 5,
        shutdown_grace_s: 2,
        idle_poll_ms: 200,
        output_interval_ms: 50,
        kill_grace_s: 1,
        ..WorkerConfig::default()
    }
}

impl TestWorker {
    /// Asks the worker to stop (as on SIGTERM) and waits for it.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("worker task").expect("worker ran");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A relay running inside the test process.
#[allow(dead_code)]
pub struct TestRelay {
    token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), taskfleet::relay::RelayError>>>,
}

impl TestApp {
    /// Starts an in-process relay with `settings` (see `relay_settings`).
    pub async fn relay(&self, settings: RelayConfig) -> TestRelay {
        let cfg = test_config(&self.nats.url());
        let bus = taskfleet::serve::connect(&cfg, &self.nats.url(), "test-relay")
            .await
            .expect("relay connects");
        let token = CancellationToken::new();
        let handle = tokio::spawn(taskfleet::relay::run(bus, settings, token.clone()));
        TestRelay {
            token,
            handle: Some(handle),
        }
    }
}

/// Relay settings for tests: loopback allowed (receivers run on 127.0.0.1), short retries.
pub fn relay_settings() -> RelayConfig {
    RelayConfig {
        allow: vec!["127.0.0.1/32".into()],
        retry_schedule_s: vec![0, 1, 1, 1],
        attempt_timeout_s: 5,
        ..RelayConfig::default()
    }
}

#[allow(dead_code)]
impl TestRelay {
    /// Stops the relay (as on SIGTERM) and waits for it.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("relay task").expect("relay ran");
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
