//! Relay helpers: recording events the API has no route for (heartbeats), reading deliveries
//! over the API, and the real `taskfleet relay` binary as a child process (so tests can kill -9
//! it).

use super::app::{relay_settings, test_config, TestApp, TestRelay};
use super::dies_with_test;
use super::eventually;
use super::receiver::{Answer, Endpoint};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use taskfleet::config::RelayConfig;
use taskfleet::domain::{EventKind, Task};
use taskfleet::outbound::destination::Destination;
use taskfleet::tasks::TaskService;

#[allow(dead_code)]
impl TestApp {
    /// A webhook answering `answer` to every request, and a relay that knows it as destination
    /// `name` (at path `/<name>`, no secret).
    pub async fn relay_to_named_hook(&self, name: &str, answer: Answer) -> (Endpoint, TestRelay) {
        let hook = Endpoint::start().await;
        hook.answer_from_now_on(answer);
        let settings = named_hook_settings(name, hook.url(&format!("/{name}")));
        let relay = self.relay(settings).await;
        (hook, relay)
    }

    /// `n` dead letters of anna, `dead 00`, `dead 01`, …: tasks created, then copied to the
    /// dead-letter stream as a worker does. Their ids, in that order.
    pub async fn seed_dead_letters(&self, n: usize) -> Vec<String> {
        let js = self.jetstream().await;
        let mut ids = Vec::new();
        for i in 0..n {
            let id = self.create(&format!("dead {i:02}"), "anna", "p1").await;
            let (_, task) = self
                .call(self.req(Method::GET, &format!("/api/tasks/{id}")))
                .await;
            js.publish(format!("dead.anna.{id}"), task.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    }

    /// A task service of its own on the test's NATS (for events with no HTTP route yet).
    pub async fn task_service(&self) -> TaskService {
        let cfg = test_config(&self.nats.url());
        let bus = taskfleet::serve::connect(&cfg, &self.nats.url(), "test")
            .await
            .expect("test connects");
        TaskService::new(bus, Arc::new(taskfleet::metrics::Metrics::default()))
    }

    /// Records a heartbeat of `task` with `message`.
    pub async fn heartbeat(&self, service: &TaskService, task: &Task, message: &str) {
        service
            .record(
                task,
                EventKind::Heartbeat,
                "test",
                Some(message.into()),
                serde_json::json!({}),
            )
            .await;
    }

    /// `GET /api/deliveries?<query>` with the admin key; panics unless 200.
    pub async fn deliveries(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .call(self.req(Method::GET, &format!("/api/deliveries?{query}")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().expect("a JSON array").clone()
    }

    /// Waits (bounded) until `GET /api/deliveries/{id}` says delivered; answers that record.
    pub async fn wait_delivered(&self, id: &str, limit: Duration) -> Value {
        eventually(&format!("delivery {id} to be delivered"), limit, || async {
            let (_, r) = self
                .call(self.req(Method::GET, &format!("/api/deliveries/{id}")))
                .await;
            (r["status"] == "delivered").then_some(r)
        })
        .await
    }

    /// Waits (bounded) until `GET /api/deliveries?<query>` lists at least `n` records.
    pub async fn wait_deliveries(&self, query: &str, n: usize, limit: Duration) -> Vec<Value> {
        eventually(&format!("{n} deliveries for ?{query}"), limit, || async {
            let list = self.deliveries(query).await;
            (list.len() >= n).then_some(list)
        })
        .await
    }

    /// Starts `taskfleet relay --config <config>` against this app's NATS and waits until it
    /// runs.
    pub async fn relay_process(&self, config: &Path) -> RelayProcess {
        let dir = tempfile::tempdir().expect("relay temp dir");
        let log = dir.path().join("relay.log");
        let stderr = std::fs::File::create(&log).expect("relay log file");
        let stdout = stderr.try_clone().expect("relay log file");
        let child = dies_with_test(&mut Command::new(env!("CARGO_BIN_EXE_taskfleet")))
            .arg("relay")
            .arg("--config")
            .arg(config)
            .env_remove("TASKFLEET_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_TRACES_EXPORTER")
            .env("NATS_URL", self.nats.url())
            .env("RUST_LOG", "info,async_nats=warn")
            .env("NO_COLOR", "1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn taskfleet relay");
        let mut relay = RelayProcess {
            child,
            log,
            _dir: dir,
        };
        relay.wait_running().await;
        relay
    }
}

/// A `taskfleet relay` process. `Drop` SIGKILLs it.
pub struct RelayProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl RelayProcess {
    /// What it logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn wait_running(&mut self) {
        let (log, pid) = (self.log.clone(), self.child.id());
        let child = &mut self.child;
        eventually(
            &format!("relay {pid} to run"),
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("relay {pid} exited with {status}:\n{text}");
                }
                async move { text.contains("relay running").then_some(()) }
            },
        )
        .await;
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(dead_code)]
impl TestApp {
    /// Creates a task for `anna` named `name` that notifies `notify` (a JSON array of
    /// destination objects or names).
    pub async fn task_notifying(&self, name: &str, notify: Value) -> Task {
        self.admin
            .create_task(&serde_json::json!({
                "task_name": name, "assigned_to": "anna", "notify": notify
            }))
            .await
            .expect("task created")
    }

    /// `PUT /api/tasks/{id}/{verb}` with the admin key; panics unless it succeeds.
    pub async fn act(&self, task: &Task, verb: &str) -> Task {
        self.admin
            .action(task.id.as_str(), verb, None)
            .await
            .unwrap_or_else(|e| panic!("{verb} {}: {e}", task.id))
    }
}

/// [`relay_settings`] with one webhook destination, `name`, at `url` (no secret).
pub fn named_hook_settings(name: &str, url: String) -> RelayConfig {
    let mut settings = relay_settings();
    let dest = Destination::Webhook {
        url,
        secret: None,
        secret_env: None,
        events: vec![],
        headers: Default::default(),
        headers_env: Default::default(),
    };
    settings.destinations.insert(name.into(), dest);
    settings
}

/// A relay config file in `dir` with one named webhook, `hook`, at `hook_url`, and test timings
/// (ack wait 2 + 5 s), for `taskfleet relay` processes.
#[allow(dead_code)]
pub fn hook_relay_config(dir: &tempfile::TempDir, hook_url: &str) -> PathBuf {
    let path = dir.path().join("taskfleet.toml");
    let toml = format!(
        r#"[relay]
allow = ["127.0.0.1/32"]
attempt_timeout_s = 2
retry_schedule_s = [0, 1, 1, 1]

[relay.destinations.hook]
type = "webhook"
url = "{hook_url}"
"#
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// An inline webhook destination posting to `url`.
#[allow(dead_code)]
pub fn webhook(url: &str) -> Value {
    serde_json::json!({"type": "webhook", "url": url})
}

#[allow(dead_code)]
impl TestApp {
    /// Waits (bounded) until the relay's fan-out has taken and acknowledged every event so far
    /// (its consumer has nothing pending and nothing unacknowledged).
    pub async fn wait_fanned_out(&self, limit: Duration) {
        let js = self.jetstream().await;
        eventually("the fan-out to catch up", limit, || {
            let js = js.clone();
            async move {
                let stream = js.get_stream("EVENTS").await.ok()?;
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    stream.get_consumer("relay_events").await.ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
    }
}
