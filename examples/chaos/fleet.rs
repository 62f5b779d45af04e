//! One fleet per scenario: nats-server (one node or a cluster), the release binary as
//! `taskfleet api`, `taskfleet worker` and `taskfleet relay` processes, the suite's own NATS
//! connection and an HTTP client carrying the run's admin key.

use super::nats::{NatsCluster, NatsNode};
use super::procs::{free_port, Proc};
use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The release `taskfleet` binary: `TASKFLEET_BIN`, else `target/release/taskfleet` next to
/// this example.
pub fn taskfleet_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TASKFLEET_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("taskfleet"))
        .context("locating target/release")?;
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// Where NATS runs.
pub enum Nats {
    /// One server.
    Single(NatsNode),
    /// Three clustered nodes.
    Cluster(NatsCluster),
}

impl Nats {
    /// The `NATS_URL` processes get (every node of a cluster).
    pub fn url(&self) -> String {
        match self {
            Self::Single(n) => n.url(),
            Self::Cluster(c) => c.urls(),
        }
    }

    /// Stream replicas: 1, or 3 on a cluster.
    pub fn replicas(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(c) => c.nodes.len(),
        }
    }
}

/// An HTTP client for the API with the run's admin key; answers are `(status, JSON or text)`.
#[derive(Clone)]
pub struct Http {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    key: String,
    client: reqwest::Client,
}

impl Http {
    fn new(base: String, key: String) -> Self {
        Self::with_pool(base, key, 64)
    }

    fn with_pool(base: String, key: String, idle: usize) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(idle)
            .build()
            .expect("reqwest client");
        Self { base, key, client }
    }

    /// The same API and key over a fresh connection per request (junk must not meet a
    /// connection an earlier junk request left in an odd state).
    pub fn unpooled(&self) -> Self {
        Self::with_pool(self.base.clone(), self.key.clone(), 0)
    }

    /// A request to `path` with the key.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("X-Bot-Key", &self.key)
    }

    /// A request to `path` without any key (for junk headers).
    pub fn bare(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Sends `r` and reads the answer; `Err` only when no HTTP answer came.
    pub async fn call(&self, r: reqwest::RequestBuilder) -> reqwest::Result<(u16, Value)> {
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, body))
    }

    /// GET `path` of a paged listing: status, the `X-Next-Cursor` header, the body.
    pub async fn call_paged(&self, path: &str) -> reqwest::Result<(u16, Option<String>, Value)> {
        let resp = self.req(Method::GET, path).send().await?;
        let status = resp.status().as_u16();
        let next = resp
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, next, body))
    }

    /// GET `path`, expecting 200.
    pub async fn get_ok(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.call(self.req(Method::GET, path)).await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// `method path` with a JSON body, expecting 2xx.
    pub async fn send_ok(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, answer) = self.call(self.req(method.clone(), path).json(body)).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {answer}");
        }
        Ok(answer)
    }
}

/// The processes of one scenario. Fields drop in order: processes first, NATS, then nothing
/// else (the scenario's directory is kept or removed by the runner).
pub struct Fleet {
    /// The API process.
    pub api: Option<Proc>,
    /// Worker processes (a killed one stays in its slot until replaced).
    pub workers: Vec<Proc>,
    /// The relay process.
    pub relay: Option<Proc>,
    /// The suite's own connection (reconnects by itself).
    pub nc: async_nats::Client,
    /// The HTTP client (set once the API runs).
    pub http: Http,
    /// NATS.
    pub nats: Nats,
    dir: PathBuf,
    token_secret: String,
    spawned: usize,
}

impl Fleet {
    /// A fleet on one fresh nats-server, with the API process running.
    pub async fn single(dir: &Path) -> anyhow::Result<Self> {
        let node = NatsNode::single(dir).await?;
        Self::with(dir, Nats::Single(node)).await
    }

    /// A fleet on a fresh three-node cluster, with the API process running.
    pub async fn cluster(dir: &Path) -> anyhow::Result<Self> {
        let cluster = NatsCluster::start(dir, 3).await?;
        Self::with(dir, Nats::Cluster(cluster)).await
    }

    async fn with(dir: &Path, nats: Nats) -> anyhow::Result<Self> {
        let addrs = nats
            .url()
            .split(',')
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        let nc = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(addrs)
            .await?;
        let api_port = free_port()?;
        let key = format!("{:032x}", rand::random::<u128>());
        let mut fleet = Self {
            api: None,
            workers: Vec::new(),
            relay: None,
            nc,
            http: Http::new(format!("http://127.0.0.1:{api_port}"), key),
            nats,
            dir: dir.to_path_buf(),
            token_secret: format!("{:064x}", rand::random::<u128>()),
            spawned: 0,
        };
        fleet.start_api().await?;
        Ok(fleet)
    }

    /// `taskfleet <args>` with a clean environment: no inherited `TASKFLEET_*`, this fleet's
    /// NATS, replica count and task-token secret, logs without colour.
    fn command(&self, args: &[&str], rust_log: &str) -> anyhow::Result<Command> {
        let mut cmd = Command::new(taskfleet_bin()?);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TASKFLEET_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("NATS_URL", self.nats.url())
            .env("TASKFLEET_NATS__REPLICAS", self.nats.replicas().to_string())
            .env("TASKFLEET_FLEET__TASK_TOKEN_SECRET", &self.token_secret)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1");
        Ok(cmd)
    }

    fn log_file(&mut self, what: &str) -> PathBuf {
        self.spawned += 1;
        self.dir.join(format!("{:02}-{what}.log", self.spawned))
    }

    /// (Re)starts `taskfleet api` and waits until `/healthz` answers 200.
    pub async fn start_api(&mut self) -> anyhow::Result<()> {
        let addr = self.http.base.trim_start_matches("http://").to_string();
        let mut cmd = self.command(
            &["api", "--api-addr", &addr],
            "warn,taskfleet=info,async_nats=info",
        )?;
        cmd.env("TASKFLEET_API_KEY", &self.http.key);
        let log = self.log_file("api");
        let mut api = Proc::spawn("taskfleet api", cmd, &log)?;
        let started = Instant::now();
        loop {
            let r = self.http.bare(Method::GET, "/healthz");
            if matches!(self.http.call(r).await, Ok((200, _))) {
                break;
            }
            if !api.alive() || started.elapsed() > Duration::from_secs(45) {
                bail!(
                    "taskfleet api not healthy:\n{}",
                    super::procs::tail(&log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.api = Some(api);
        Ok(())
    }

    /// Starts `taskfleet worker --assignee <a> --concurrency <n>` with `env` on top (timings);
    /// waits until it pulls and returns its index in `workers`.
    pub async fn spawn_worker(
        &mut self,
        assignee: &str,
        concurrency: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<usize> {
        let n = concurrency.to_string();
        let args = ["worker", "--assignee", assignee, "--concurrency", &n];
        let mut cmd = self.command(&args, "info,async_nats=info")?;
        cmd.env("TASKFLEET_WORKER__API_URL", &self.http.base)
            .envs(env.iter().copied());
        let log = self.log_file(&format!("worker-{assignee}"));
        let name = format!("worker {assignee} #{}", self.workers.len() + 1);
        let mut w = Proc::spawn(&name, cmd, &log)?;
        w.wait_log("worker pulling", Duration::from_secs(45))
            .await?;
        self.workers.push(w);
        Ok(self.workers.len() - 1)
    }

    /// Starts `taskfleet --config <config> relay` and waits until it runs.
    pub async fn spawn_relay(&mut self, config: &Path) -> anyhow::Result<()> {
        let conf = config.to_string_lossy().into_owned();
        let cmd = self.command(&["--config", &conf, "relay"], "info,async_nats=info")?;
        let log = self.log_file("relay");
        let mut relay = Proc::spawn("taskfleet relay", cmd, &log)?;
        relay
            .wait_log("relay running", Duration::from_secs(45))
            .await?;
        self.relay = Some(relay);
        Ok(())
    }

    /// Whether the API process still runs.
    pub fn api_alive(&mut self) -> bool {
        self.api.as_mut().is_some_and(Proc::alive)
    }
}

/// The pid inside a worker id (`<assignee>@<host>-<pid>-<random>`).
pub fn holder_pid(holder: &str) -> Option<u32> {
    holder.rsplit('-').nth(1)?.parse().ok()
}
