//! Secrets never appear in logs, delivery records or error bodies.
//!
//! One whole flow with the real binary at `RUST_LOG=debug` (every crate): `taskfleet up --secure`
//! (the API, the relay and anna's worker, each on NATS as its own user), a second worker with its
//! NATS user from its env file, one with a wrong NATS password, one with its password inside
//! `NATS_URL`, and the CLI. Every secret is fresh and random: the admin key, a scoped key, the
//! task-token secret, the task tokens workers hand out (to an `exec` task, which calls
//! `taskfleet pulse` with it, and to a `hook` gateway, which reports back with it), two webhook
//! signing secrets, a Telegram bot token, a chat bearer token and the NATS passwords, plus wrong
//! values a caller might send (a wrong key, a forged task token, a wrong NATS password).
//! Receivers that fail echo the secrets they know.
//!
//! No secret may then appear in any line the processes wrote to stdout or stderr, in the
//! nats-server log, in any error body, in `GET /api/deliveries`, or in any byte of the JetStream
//! store (every stream: the delivery records, the ledger, the queues). A lease's fencing token is
//! part of the task by design (`GET /api/tasks/{id}` shows it, and so do webhook envelopes and
//! delivery records, which carry the task): it must stay out of logs and error bodies.

use crate::harness::eventually;
use crate::harness::ports::{free_port, start_on_free_ports};
use crate::harness::receiver::{Answer, Endpoint};
use base64::Engine as _;
use rand::distr::{Alphanumeric, SampleString};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `prefix` and 32 random alphanumerics.
fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 32)
    )
}

/// A `whsec_` secret whose base64 key is alphanumeric only (so it shows verbatim inside JSON),
/// and that key.
fn fresh_webhook_secret() -> (String, String) {
    loop {
        let b64 = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 24]>());
        if b64.chars().all(|c| c.is_ascii_alphanumeric()) {
            return (format!("whsec_{b64}"), b64);
        }
    }
}

/// The secrets of one run.
struct Planted {
    admin_key: String,
    anna_key: String,
    wrong_key: String,
    token_secret: String,
    ops_secret: String,
    ops_key: String,
    audit_secret: String,
    audit_key: String,
    tg_token: String,
    chat_token: String,
    wrong_nats_password: String,
}

impl Planted {
    fn fresh() -> Self {
        let (ops_secret, ops_key) = fresh_webhook_secret();
        let (audit_secret, audit_key) = fresh_webhook_secret();
        let tg_random = Alphanumeric.sample_string(&mut rand::rng(), 35);
        Self {
            admin_key: fresh("adm_"),
            anna_key: fresh("anna_"),
            wrong_key: fresh("wrong_"),
            token_secret: fresh("tts_"),
            ops_secret,
            ops_key,
            audit_secret,
            audit_key,
            tg_token: format!("{}:{tg_random}", rand::random::<u32>()),
            chat_token: fresh("chat_"),
            wrong_nats_password: fresh("natsbad_"),
        }
    }

    /// The environment every process of the fleet gets (the config names these variables).
    fn env(&self, nats_port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("SECRETS_TEST_ANNA_KEY", self.anna_key.clone()),
            ("SECRETS_TEST_OPS_SECRET", self.ops_secret.clone()),
            ("SECRETS_TEST_AUDIT_SECRET", self.audit_secret.clone()),
            ("SECRETS_TEST_TG_TOKEN", self.tg_token.clone()),
            ("SECRETS_TEST_CHAT_TOKEN", self.chat_token.clone()),
            (
                "TASKFLEET_FLEET__TASK_TOKEN_SECRET",
                self.token_secret.clone(),
            ),
            ("TASKFLEET_NATS__LOCAL_PORT", nats_port.to_string()),
        ]
    }

    /// Every planted value, named.
    fn all(&self) -> Vec<(&'static str, String)> {
        vec![
            ("the admin API key", self.admin_key.clone()),
            ("anna's API key", self.anna_key.clone()),
            ("a wrong API key", self.wrong_key.clone()),
            ("the task-token secret", self.token_secret.clone()),
            ("the ops webhook secret", self.ops_secret.clone()),
            ("the ops webhook signing key", self.ops_key.clone()),
            ("the audit webhook secret", self.audit_secret.clone()),
            ("the audit webhook signing key", self.audit_key.clone()),
            ("the Telegram bot token", self.tg_token.clone()),
            ("the chat bearer token", self.chat_token.clone()),
            ("a wrong NATS password", self.wrong_nats_password.clone()),
        ]
    }
}

/// The destinations and the hook gateway; the failing ones echo the secrets they know.
struct Receivers {
    /// A webhook that fails: 500 with its secret and key in the body.
    ops: Endpoint,
    /// A webhook that takes everything.
    audit: Endpoint,
    /// Telegram answering 401 with the bot token in the body.
    tg: Endpoint,
    /// A chat push endpoint answering 403 with the bearer token in the body.
    chat: Endpoint,
    /// The bot gateway `hook` tasks go to.
    gateway: Endpoint,
}

impl Receivers {
    async fn start(p: &Planted) -> Self {
        let (ops, tg, chat) = (
            Endpoint::start().await,
            Endpoint::start().await,
            Endpoint::start().await,
        );
        let (secret, key, token) = (&p.ops_secret, &p.ops_key, &p.tg_token);
        ops.answer_from_now_on(
            Answer::status(500).body(format!("signature check failed with {secret} (key {key})")),
        );
        tg.answer_from_now_on(Answer::status(401).body(format!(
            r#"{{"ok":false,"error_code":401,"description":"Unauthorized: bot{token} unknown"}}"#
        )));
        chat.answer_from_now_on(
            Answer::status(403).body(format!("Bearer {} may not post here", p.chat_token)),
        );
        Self {
            ops,
            audit: Endpoint::start().await,
            tg,
            chat,
            gateway: Endpoint::start().await,
        }
    }

    /// The fleet's config: anna's scoped key, the hook gateway, and every event routed to all
    /// four destinations (secrets by variable name only), retried once.
    fn config(&self) -> String {
        format!(
            r#"
[fleet]
assignees = ["anna"]

[[api.keys]]
name = "anna-bot"
key_env = "SECRETS_TEST_ANNA_KEY"
assignees = ["anna"]

[worker]
hook_url = "{hook}"
idle_poll_ms = 200
output_interval_ms = 50
kill_grace_s = 1
shutdown_grace_s = 2

[relay]
allow = ["127.0.0.1/32"]
retry_schedule_s = [0, 1]
attempt_timeout_s = 5
throttle_s = 0
push_destination = "webchat"

[relay.destinations.ops]
type = "webhook"
url = "{ops}"
secret_env = "SECRETS_TEST_OPS_SECRET"

[relay.destinations.audit]
type = "webhook"
url = "{audit}"
secret_env = "SECRETS_TEST_AUDIT_SECRET"

[relay.destinations.tg]
type = "telegram"
bot_token_env = "SECRETS_TEST_TG_TOKEN"
chat_id = "-1001234567890"
api_base = "{tg}"

[relay.destinations.webchat]
type = "chat"
url = "{chat}"
session_id = "main"
token_env = "SECRETS_TEST_CHAT_TOKEN"

[[relay.routes]]
destinations = ["ops", "audit", "tg", "webchat"]
"#,
            hook = self.gateway.url("/hooks/taskfleet"),
            ops = self.ops.url("/ops"),
            audit = self.audit.url("/audit"),
            tg = self.tg.url(""),
            chat = self.chat.url("/api/push"),
        )
    }
}

/// A `taskfleet` child process at debug level, stdout and stderr in one log file; `Drop` kills
/// it.
struct Proc {
    child: Child,
    log: PathBuf,
    /// Where this process's part of the log begins (an earlier attempt's may come before).
    from: usize,
}

impl Proc {
    /// Starts `taskfleet <args>` with `env` (and no inherited config, key, OTLP or NATS URL).
    /// The log is appended to: a start again on other ports (a port was taken) keeps what the
    /// first attempt logged, so the secret checks read every attempt.
    fn start(args: &[&str], env: &[(&str, String)], log: PathBuf) -> Self {
        let out = (std::fs::OpenOptions::new().create(true).append(true))
            .open(&log)
            .expect("log file");
        let from = out.metadata().expect("log file").len() as usize;
        let err = out.try_clone().expect("log file");
        let child = taskfleet_command(args, env)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn taskfleet");
        Self { child, log, from }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log has a line containing `needle`, and returns that line.
    async fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let pid = self.child.id();
        self.until_line(needle, limit)
            .await
            .unwrap_or_else(|(status, text)| panic!("{pid} exited with {status}:\n{text}"))
    }

    /// As [`Proc::wait_line`], but a process that exits first gives its exit status and log.
    async fn until_line(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<String, (ExitStatus, String)> {
        let (log, pid, from) = (self.log.clone(), self.child.id(), self.from);
        let child = &mut self.child;
        eventually(&format!("{pid} to log {needle:?}"), limit, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let text = text.get(from..).unwrap_or_default().to_string();
            let found = match child.try_wait() {
                Ok(Some(status)) => Some(Err((status, text))),
                _ => text
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(|l| Ok(l.to_string())),
            };
            async move { found }
        })
        .await
    }

    /// SIGTERM, then waits (bounded) for the exit.
    async fn stop(&mut self, limit: Duration) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.wait_exit(limit).await;
    }

    /// Waits (bounded) for the exit; on a timeout, panics with the log's last lines.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > limit {
                let text = self.text();
                let tail: Vec<&str> = text.lines().rev().take(30).collect::<Vec<_>>();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{} did not exit within {limit:?}; it last said:\n{}",
                    self.child.id(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn taskfleet_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskfleet"));
    cmd.args(args)
        .env_remove("TASKFLEET_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("NATS_URL")
        .env_remove("TASKFLEET_API_KEY")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

/// Runs `taskfleet <args>` to the end (bounded); returns what it printed.
async fn run_cli(args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = tokio::process::Command::from(taskfleet_command(args, env));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
        .await
        .expect("the CLI returns")
        .expect("run taskfleet");
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    )
}

/// Starts `up --secure` with `config` and its data in `dir/data`, its API on a port it picks
/// and its nats-server on one [`free_port`] hands out, and waits for its banner; returns it, the
/// NATS port and the API's URL. Another test may take the NATS port before nats-server binds
/// it: a start that fails so is tried again on another, three times at most.
async fn start_up(p: &Planted, config: &str, dir: &Path) -> (Proc, u16, String) {
    let data = dir.join("data");
    let nats_conf = concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf");
    let up_args = [
        "--config",
        config,
        "up",
        "--secure",
        "--data-dir",
        data.to_str().unwrap(),
        "--api-addr",
        "127.0.0.1:0",
        "--nats-config",
        nats_conf,
    ];
    let up_args = &up_args;
    start_on_free_ports("taskfleet up --secure", || async move {
        let nats_port = free_port();
        let mut env = p.env(nats_port);
        env.push(("TASKFLEET_API_KEY", p.admin_key.clone()));
        let mut up = Proc::start(up_args, &env, dir.join("up.log"));
        let wait = up.until_line("API:     http", Duration::from_secs(90));
        let line = wait
            .await
            .map_err(|(status, text)| format!("(exit {status})\n{text}"))?;
        let api = line.split_whitespace().last().unwrap().to_string();
        up.wait_line("Press Ctrl-C", Duration::from_secs(30)).await;
        Ok((up, nats_port, api))
    })
    .await
}

/// `KEY=value` of an env file.
fn env_value(file: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {file:?}"))
        .trim()
        .trim_matches('"')
        .to_string()
}

/// `up --secure` and three more workers of anna's, all at debug level.
struct Fleet {
    dir: tempfile::TempDir,
    api: String,
    http: reqwest::Client,
    up: Proc,
    /// Its NATS user from its env file, as a container gets it.
    worker: Proc,
    /// A wrong NATS password: refused, so it gives up.
    refused: Proc,
    /// Its password inside `NATS_URL`, which the URL syntax allows.
    url_worker: Proc,
}

impl Fleet {
    async fn start(p: &Planted, rx: &Receivers) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fleet.toml");
        std::fs::write(&config, rx.config()).unwrap();
        let (config, data) = (config.to_str().unwrap(), dir.path().join("data"));
        let (up, nats_port, api) = start_up(p, config, dir.path()).await;
        let env = p.env(nats_port);

        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let env_file = data.join("nats-auth/worker-anna.env");
        let password = env_value(&env_file, "TASKFLEET_NATS__PASSWORD");
        let args = ["--config", config, "worker", "--assignee", "anna"];
        let with = |extra: Vec<(&'static str, String)>| [env.clone(), extra].concat();
        let mut worker = Proc::start(
            &args,
            &with(vec![
                ("NATS_URL", nats_url.clone()),
                ("TASKFLEET_WORKER__API_URL", api.clone()),
                ("TASKFLEET_NATS__USER", "worker-anna".into()),
                ("TASKFLEET_NATS__PASSWORD", password.clone()),
            ]),
            dir.path().join("worker.log"),
        );
        worker
            .wait_line("worker pulling", Duration::from_secs(30))
            .await;
        let refused = Proc::start(
            &args,
            &with(vec![
                ("NATS_URL", nats_url),
                ("TASKFLEET_NATS__USER", "worker-anna".into()),
                ("TASKFLEET_NATS__PASSWORD", p.wrong_nats_password.clone()),
                ("TASKFLEET_NATS__CONNECT_TIMEOUT_S", "3".into()),
            ]),
            dir.path().join("refused.log"),
        );
        let url = format!("nats://worker-anna:{password}@127.0.0.1:{nats_port}");
        let url_worker = Proc::start(
            &args,
            &with(vec![("NATS_URL", url)]),
            dir.path().join("url.log"),
        );
        Self {
            dir,
            api,
            http: reqwest::Client::new(),
            up,
            worker,
            refused,
            url_worker,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A request with `key` in `X-Bot-Key`.
    fn req(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .header("X-Bot-Key", key)
    }

    /// A request with `token` as the bearer.
    fn bearer(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(token)
    }

    /// Creates a task with `key`; returns its id.
    async fn create(&self, key: &str, task: Value) -> String {
        let r = self.req(Method::POST, "/api/tasks", key).json(&task).send();
        let r = r.await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Sends `req`, expects a 2xx, returns the JSON body (`Null` if none).
    async fn ok(&self, req: RequestBuilder) -> Value {
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "{status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The NATS password of `user` (from its env file).
    fn nats_password(&self, user: &str) -> String {
        let file = self.data().join(format!("nats-auth/{user}.env"));
        env_value(&file, "TASKFLEET_NATS__PASSWORD")
    }
}

/// A place secrets may not appear in, with what it holds.
struct Place {
    name: String,
    text: String,
}

/// The bodies of refused requests.
#[derive(Default)]
struct ErrorBodies(Vec<Place>);

impl ErrorBodies {
    /// Sends `req`, expects a 4xx, keeps the body.
    async fn expect(&mut self, what: &str, req: RequestBuilder) {
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_client_error(), "{what}: got {status}: {text}");
        self.0.push(Place {
            name: format!("the {status} body of {what}"),
            text,
        });
    }
}

/// Every file under `dir`, read as (lossy) text, one place each.
fn files_under(dir: &Path, places: &mut Vec<Place>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, places);
        } else if let Ok(bytes) = std::fs::read(&path) {
            places.push(Place {
                name: format!("the JetStream store's {}", path.display()),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
    }
}

/// One line per secret found in a place: what, where, and the line with the secret masked.
fn leaks(secrets: &[(&str, String)], places: &[Place]) -> Vec<String> {
    let mut found = Vec::new();
    for place in places {
        for (what, value) in secrets {
            for line in place.text.lines().filter(|l| l.contains(value.as_str())) {
                let line = line.replace(value.as_str(), "<SECRET>");
                let shown: String = line.chars().take(400).collect();
                found.push(format!("{what} in {}: {shown}", place.name));
            }
        }
    }
    found
}

/// Wrong keys (as a header and as a bearer token); a manual task claimed, refused a stale
/// fencing token, finished with its own; anna's key on trump's task. Returns the task's id and
/// its lease's fencing token.
async fn keys_and_leases(fleet: &Fleet, p: &Planted, errors: &mut ErrorBodies) -> (String, String) {
    let (admin, anna) = (p.admin_key.as_str(), p.anna_key.as_str());
    let wrong = fleet.req(Method::GET, "/api/tasks", &p.wrong_key);
    errors.expect("a wrong X-Bot-Key", wrong).await;
    let wrong = fleet.bearer(Method::GET, "/api/deliveries", &p.wrong_key);
    errors.expect("a wrong bearer key", wrong).await;
    let manual = json!({"task_name": "manual", "assigned_to": "anna"});
    let manual = fleet.create(anna, manual).await;
    let start = fleet.req(Method::PUT, &format!("/api/tasks/{manual}/start"), anna);
    let lease = fleet.ok(start).await["lease"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let complete = format!("/api/tasks/{manual}/complete");
    let stale = format!("1.{}", Alphanumeric.sample_string(&mut rand::rng(), 24));
    let body = json!({"result": "done", "fencing_token": stale});
    let req = fleet.req(Method::PUT, &complete, anna).json(&body);
    errors.expect("a stale fencing token", req).await;
    let req = fleet
        .req(Method::PUT, &complete, anna)
        .header("X-Fencing-Token", &lease);
    fleet.ok(req.json(&json!({"result": "done"}))).await;
    let theirs = json!({"task_name": "theirs", "assigned_to": "trump"});
    let theirs = fleet.create(admin, theirs).await;
    let req = fleet.req(Method::GET, &format!("/api/tasks/{theirs}"), anna);
    errors.expect("anna's key on trump's task", req).await;
    (manual, lease)
}

/// An exec task that keeps its task token in `token_file` (printing nothing) and reports with
/// `taskfleet pulse`; a hook task whose gateway reports back with its task token, after a forged
/// one and the token on another task (`other`) are refused. Returns the exec task's id, the hook
/// task's token and the forged one.
async fn task_tokens(
    fleet: &Fleet,
    p: &Planted,
    rx: &Receivers,
    errors: &mut ErrorBodies,
    (token_file, other): (&Path, &str),
) -> (String, String, String) {
    let command = format!(
        "printf %s \"$TASKFLEET_TASK_TOKEN\" > '{}' && '{}' pulse progress 50 'half way'",
        token_file.display(),
        env!("CARGO_BIN_EXE_taskfleet"),
    );
    let exec = json!({"task_name": "exec", "assigned_to": "anna", "kind": "exec",
        "payload": {"command": command}});
    let exec = fleet.create(&p.admin_key, exec).await;
    let hook = json!({"task_name": "hook", "assigned_to": "anna", "kind": "hook"});
    let hook = fleet.create(&p.admin_key, hook).await;
    let hits = rx.gateway.wait_for(1, Duration::from_secs(30)).await;
    let token = hits[0].json()["task_token"].as_str().unwrap().to_string();
    let forged = format!("{}x", &token[..token.len() - 1]);
    let done = format!("/api/tasks/{hook}/complete");
    let req = fleet.bearer(Method::PUT, &done, &forged);
    errors
        .expect("a forged task token", req.json(&json!({"result": "no"})))
        .await;
    let req = fleet.bearer(Method::GET, &format!("/api/tasks/{other}"), &token);
    errors.expect("a task token on another task", req).await;
    let req = fleet.bearer(Method::PUT, &done, &token);
    fleet.ok(req.json(&json!({"result": "ok"}))).await;
    (exec, token, forged)
}

/// Waits for `exec` to finish and for every destination's verdict (the failing ones dead, the
/// others delivered); returns the task, `GET /api/deliveries` and the task's output.
async fn settled(fleet: &Fleet, admin: &str, exec: &str) -> (Value, String, String) {
    let path = format!("/api/tasks/{exec}");
    let task = eventually(
        "the exec task to finish",
        Duration::from_secs(30),
        || async {
            let t = fleet.ok(fleet.req(Method::GET, &path, admin)).await;
            matches!(t["status"].as_str(), Some("completed" | "failed")).then_some(t)
        },
    )
    .await;
    let deliveries = eventually(
        "every destination's verdict",
        Duration::from_secs(60),
        || async {
            let r = fleet
                .req(Method::GET, "/api/deliveries?limit=1000", admin)
                .send();
            let text = r.await.ok()?.text().await.ok()?;
            let list: Vec<Value> = serde_json::from_str(&text).ok()?;
            let has = |name: &str, status: &str| {
                list.iter()
                    .any(|d| d["job"]["name"] == name && d["status"] == status)
            };
            let all = has("ops", "dead")
                && has("tg", "dead")
                && has("webchat", "dead")
                && has("audit", "delivered");
            all.then_some(text)
        },
    )
    .await;
    let output = fleet
        .ok(fleet.req(Method::GET, &format!("{path}/output"), admin))
        .await;
    (task, deliveries, output.to_string())
}

fn place(name: &str, text: String) -> Place {
    Place {
        name: name.into(),
        text,
    }
}

#[tokio::test]
async fn no_secret_appears_in_logs_records_or_error_bodies() {
    // Arrange
    let p = Planted::fresh();
    let rx = Receivers::start(&p).await;
    let mut fleet = Fleet::start(&p, &rx).await;
    let mut errors = ErrorBodies::default();
    let token_file = fleet.dir.path().join("exec-token");

    // Act
    let (manual, lease_token) = keys_and_leases(&fleet, &p, &mut errors).await;
    let files = (token_file.as_path(), manual.as_str());
    let (exec, hook_token, forged) = task_tokens(&fleet, &p, &rx, &mut errors, files).await;
    let push = json!({"sessionId": "s1", "content": "hello", "role": "assistant"});
    fleet
        .ok(fleet
            .req(Method::POST, "/api/push", &p.admin_key)
            .json(&push))
        .await;
    let (api, key) = (fleet.api.clone(), "TASKFLEET_API_KEY");
    let list = ["task", "list", "--api", &api];
    let cli_ok = run_cli(&list, &[(key, p.admin_key.clone())]).await;
    let get = ["task", "get", &manual, "--api", &api];
    let cli_wrong = run_cli(&get, &[(key, p.wrong_key.clone())]).await;
    let (exec_task, deliveries, output) = settled(&fleet, &p.admin_key, &exec).await;
    let refused = fleet.refused.wait_exit(Duration::from_secs(30)).await;
    fleet.worker.stop(Duration::from_secs(30)).await;
    fleet.up.stop(Duration::from_secs(60)).await;

    // Assert: the flow ran as meant.
    assert_eq!(exec_task["status"], "completed", "{exec_task}");
    assert!(!refused.success(), "a wrong NATS password is refused");
    let refused_log = fleet.refused.text();
    assert!(
        refused_log.contains("authorization violation"),
        "{refused_log}"
    );
    assert!(
        fleet.up.text().contains(" DEBUG "),
        "up logged at debug level"
    );
    assert!(
        rx.ops.hits().len() >= 2 && !rx.tg.hits().is_empty(),
        "every sink was tried"
    );
    let exec_token = std::fs::read_to_string(&token_file).expect("the exec task's token");
    assert!(
        exec_token.starts_with("tft."),
        "a task token: {exec_token:?}"
    );
    // No secret anywhere.
    let mut secrets = p.all();
    secrets.push(("the exec task's task token", exec_token));
    secrets.push(("the hook task's task token", hook_token));
    secrets.push(("a forged task token", forged));
    for user in ["api", "relay", "worker-anna"] {
        secrets.push(("a NATS password", fleet.nats_password(user)));
    }
    let nats_log = std::fs::read_to_string(fleet.data().join("nats-server.log")).unwrap();
    let logs = [
        place("the log of `up --secure`", fleet.up.text()),
        place("the second worker's log", fleet.worker.text()),
        place("the refused worker's log", refused_log),
        place("the URL-password worker's log", fleet.url_worker.text()),
        place("`taskfleet task list`", cli_ok),
        place("`taskfleet task get` with a wrong key", cli_wrong),
        place("the nats-server log", nats_log),
    ];
    let mut stored = vec![
        place("GET /api/deliveries", deliveries),
        place("GET /api/tasks/{id}/output", output),
    ];
    files_under(&fleet.data().join("nats"), &mut stored);
    let lease = [("the lease's fencing token", lease_token)];
    let mut found = leaks(&secrets, &logs);
    found.extend(leaks(&lease, &logs));
    found.extend(leaks(&secrets, &errors.0));
    found.extend(leaks(&lease, &errors.0));
    found.extend(leaks(&secrets, &stored));
    assert!(
        found.is_empty(),
        "{} leaks:\n{}",
        found.len(),
        found.join("\n")
    );
    assert!(
        stored.len() > 10,
        "the store was read: {} files",
        stored.len()
    );
    assert_eq!(errors.0.len(), 6);
}
