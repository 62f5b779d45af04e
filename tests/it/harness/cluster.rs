//! `NatsCluster`: three (or more) nats-servers clustered on loopback ports, JetStream on each,
//! one config file, store dir and log per node in a temp dir; `kill`/`restart` one node; a look
//! at each node's own view of a stream (its monitoring port's `/jsz`). `ClusterApp`: the API
//! served in-process against the cluster, and `ClusterWorker`: the real `taskfleet worker` binary
//! pinned to one node.
//!
//! Nodes are numbered from 0 in code; their server names are `n1`, `n2`, `n3`, ….

use super::app::{test_config, ADMIN_KEY, TASK_TOKEN_SECRET};
use super::dies_with_test;
use super::eventually;
use reqwest::StatusCode;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskfleet::client::ApiClient;
use taskfleet::config::Config;
use tokio_util::sync::CancellationToken;

/// The cluster's name in every node's config.
pub const CLUSTER_NAME: &str = "taskfleet-test";

/// One node: its ports (fixed for its lifetime, so a restart comes back on the same ones),
/// config file and log.
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster owned by one test. `Drop` kills every node.
pub struct NatsCluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// `n` free loopback ports, all bound at once (so they differ) and then released.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl NatsCluster {
    /// Starts `n` clustered nodes and waits until JetStream has a meta leader, every node is
    /// healthy and an R`n` stream can be created. A port taken meanwhile by someone else (the
    /// ports are picked before the servers bind them) makes it start over with new ports.
    pub async fn start(n: usize) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(n).await {
                Ok(c) => return c,
                Err(why) => {
                    eprintln!("nats cluster did not form, starting over: {why}");
                    last = why;
                }
            }
        }
        panic!("nats cluster did not form three times; last: {last}");
    }

    async fn try_start(n: usize) -> Result<Self, String> {
        let bin = taskfleet::natsd::find_binary(None).unwrap_or_else(|e| {
            panic!(
                "{e}\nhint: run `scripts/ensure-nats.sh` or `make test`, which install nats-server"
            )
        });
        let dir = tempfile::tempdir().expect("cluster temp dir");
        let ports = free_ports(3 * n);
        let cluster_ports: Vec<u16> = (0..n).map(|i| ports[3 * i + 1]).collect();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let (client_port, cluster_port, monitor_port) =
                (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|&&p| p != cluster_port)
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client_port}\n\
                     http: 127.0.0.1:{monitor_port}\n\
                     jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
                     cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n  routes: [\n    {routes}\n  ]\n}}\n",
                    store = store.display(),
                    routes = routes.join(",\n    "),
                ),
            )
            .expect("write node config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                monitor_port,
                conf,
                child: None,
            });
        }
        let mut me = Self {
            nodes,
            bin,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        for i in 0..n {
            me.spawn(i);
        }
        me.wait_formed(Duration::from_secs(30)).await?;
        Ok(me)
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = dies_with_test(&mut Command::new(&self.bin))
            .arg("-c")
            .arg(&node.conf)
            .arg("-l")
            .arg(&node.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        node.child = Some(child);
    }

    /// Waits until every node is up and healthy, there is a meta leader, and an R`n` stream can
    /// be created and deleted.
    async fn wait_formed(&mut self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        let n = self.nodes.len();
        loop {
            for i in 0..n {
                if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                    return Err(format!(
                        "{} exited with {status}:\n{}",
                        self.nodes[i].name,
                        tail(&self.nodes[i].log, 15)
                    ));
                }
            }
            let mut healthy = 0;
            for i in 0..n {
                if self.healthy(i).await {
                    healthy += 1;
                }
            }
            if healthy == n && self.meta_leader().await.is_some() && self.probe_stream().await {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "not formed after {limit:?} ({healthy} of {n} healthy); {}",
                    self.log_tails()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates and deletes an R`n` stream through node 0.
    async fn probe_stream(&self) -> bool {
        let Some(js) = self.jetstream(0).await else {
            return false;
        };
        let created = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "CLUSTER_PROBE".into(),
                subjects: vec!["cluster.probe".into()],
                num_replicas: self.nodes.len(),
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await;
        if created.is_err() {
            return false;
        }
        js.delete_stream("CLUSTER_PROBE").await.is_ok()
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The server name of node `i` (`n1` for node 0).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node index of server name `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `nats://127.0.0.1:<client port of node i>`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's URL, comma separated (the documented `NATS_URL` of a cluster).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether node `i`'s process is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILL node `i` (no flush, no goodbye to the cluster) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again with the same config: same ports, same store. Returns once it
    /// accepts client connections; whether it caught up is for the caller to check.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        let started = Instant::now();
        loop {
            let exited = self.nodes[i].child.as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                // E.g. another process took one of its ports while it was down.
                panic!(
                    "{} exited with {status} on restart:\n{}",
                    self.name(i),
                    tail(&self.nodes[i].log, 15)
                );
            }
            if self.client(i).await.is_some() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} accepts no connections 20 s after its restart:\n{}",
                self.name(i),
                tail(&self.nodes[i].log, 15)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client connected to node `i` only (it does not fail over to other nodes).
    pub async fn client(&self, i: usize) -> Option<async_nats::Client> {
        tokio::time::timeout(
            Duration::from_secs(2),
            async_nats::ConnectOptions::new()
                .ignore_discovered_servers()
                .connect(self.url(i)),
        )
        .await
        .ok()?
        .ok()
    }

    /// A JetStream context over a connection to node `i` only.
    pub async fn jetstream(&self, i: usize) -> Option<async_nats::jetstream::Context> {
        self.client(i).await.map(async_nats::jetstream::new)
    }

    /// A JetStream context over a connection to the first live node.
    pub async fn any_jetstream(&self) -> async_nats::jetstream::Context {
        for i in 0..self.nodes.len() {
            if self.is_up(i) {
                if let Some(js) = self.jetstream(i).await {
                    return js;
                }
            }
        }
        panic!("no live node accepts connections: {}", self.log_tails())
    }

    /// Whether node `i` answers `/healthz` with 200 (JetStream enabled, meta group current, and
    /// every stream and consumer it hosts current).
    pub async fn healthy(&self, i: usize) -> bool {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor_port);
        match self
            .http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r.status() == StatusCode::OK,
            Err(_) => false,
        }
    }

    /// Node `i`'s own JetStream report (`/jsz` with account and stream details).
    pub async fn jsz(&self, i: usize) -> Option<Value> {
        let url = format!(
            "http://127.0.0.1:{}/jsz?accounts=true&streams=true&consumers=true",
            self.nodes[i].monitor_port
        );
        let r = self
            .http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The meta leader's node index, as some live node sees it.
    pub async fn meta_leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if !self.is_up(i) {
                continue;
            }
            if let Some(j) = self.jsz(i).await {
                if let Some(l) = j["meta_cluster"]["leader"].as_str() {
                    return self.index_of(l);
                }
            }
        }
        None
    }

    /// Node `i`'s local replica of `stream`: (messages, last sequence), from its own `/jsz`.
    /// None when the node is down or holds no replica.
    pub async fn local_stream_state(&self, i: usize, stream: &str) -> Option<(u64, u64)> {
        let j = self.jsz(i).await?;
        let details = j["account_details"].as_array()?;
        details
            .iter()
            .filter_map(|a| a["stream_detail"].as_array())
            .flatten()
            .find(|s| s["name"] == stream)
            .map(|s| {
                (
                    s["state"]["messages"].as_u64().unwrap_or_default(),
                    s["state"]["last_seq"].as_u64().unwrap_or_default(),
                )
            })
    }

    /// The node index leading `stream` (or its `consumer`), from stream or consumer info through
    /// any live node.
    pub async fn leader(&self, stream: &str, consumer: Option<&str>) -> Option<usize> {
        let js = self.any_jetstream().await;
        let s = js.get_stream(stream).await.ok()?;
        let cluster = match consumer {
            None => s.get_info().await.ok()?.cluster,
            Some(c) => s.consumer_info(c).await.ok()?.cluster,
        };
        self.index_of(cluster?.leader.as_deref()?)
    }

    /// Makes node `to` the leader of `stream` (or its `consumer`) by asking the current leader to
    /// step down in its favour (nats-server 2.11+ honours a preferred placement). Waits up to
    /// 20 s; false when it did not happen.
    pub async fn move_leader_to(&self, stream: &str, consumer: Option<&str>, to: usize) -> bool {
        self.move_leader(stream, consumer, Some(to), |l| l == to)
            .await
    }

    /// Makes some node other than `from` the leader of `stream` (or its `consumer`). Waits up to
    /// 20 s; false when it did not happen.
    pub async fn move_leader_off(&self, stream: &str, consumer: Option<&str>, from: usize) -> bool {
        let other = (0..self.len()).find(|&i| i != from && self.is_up(i));
        self.move_leader(stream, consumer, other, |l| l != from)
            .await
    }

    async fn move_leader(
        &self,
        stream: &str,
        consumer: Option<&str>,
        preferred: Option<usize>,
        done: impl Fn(usize) -> bool,
    ) -> bool {
        let started = Instant::now();
        let subject = match consumer {
            None => format!("STREAM.LEADER.STEPDOWN.{stream}"),
            Some(c) => format!("CONSUMER.LEADER.STEPDOWN.{stream}.{c}"),
        };
        let body = match preferred {
            Some(p) => serde_json::json!({ "placement": { "preferred": self.name(p) } }),
            None => serde_json::json!({}),
        };
        while started.elapsed() < Duration::from_secs(20) {
            match self.leader(stream, consumer).await {
                Some(l) if done(l) => return true,
                Some(_) => {
                    let js = self.any_jetstream().await;
                    let answer: Result<Value, _> = js.request(subject.clone(), &body).await;
                    if let Ok(a) = answer {
                        if a.get("error").is_some() {
                            eprintln!("{subject} refused: {a}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        false
    }

    /// What node `i` leads: `meta`, streams, and `STREAM/consumer` for durable consumers, as
    /// node `i` itself reports it.
    pub async fn led_by(&self, i: usize) -> Vec<String> {
        let mut led = Vec::new();
        if self.meta_leader().await == Some(i) {
            led.push("meta".to_string());
        }
        let Some(j) = self.jsz(i).await else {
            return led;
        };
        let me = self.name(i);
        for a in j["account_details"].as_array().into_iter().flatten() {
            for s in a["stream_detail"].as_array().into_iter().flatten() {
                let stream = s["name"].as_str().unwrap_or_default();
                if s["cluster"]["leader"] == me {
                    led.push(stream.to_string());
                }
                for c in s["consumer_detail"].as_array().into_iter().flatten() {
                    if c["cluster"]["leader"] == me {
                        led.push(format!(
                            "{stream}/{}",
                            c["name"].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
        led
    }

    /// The last lines of every node's log (for failure messages).
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, tail(&n.log, 10)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The API served in-process against a cluster (like `TestApp`, which owns a single server).
pub struct ClusterApp {
    /// The nodes.
    pub cluster: NatsCluster,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Client with the admin key.
    pub admin: ApiClient,
    token: CancellationToken,
}

impl ClusterApp {
    /// Serves the API against `nats_url` (one node or several) with `nats.replicas` = the
    /// cluster's size, and waits until `/healthz` answers.
    pub async fn spawn(cluster: NatsCluster, nats_url: &str) -> Self {
        taskfleet::telemetry::init_for_tests();
        let mut cfg: Config = test_config(nats_url);
        cfg.nats.replicas = cluster.len();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        let (t, nats_url) = (token.clone(), nats_url.to_string());
        tokio::spawn(async move {
            let key = cfg.api.admin_key.clone();
            let r = taskfleet::serve::run_api(&cfg, &nats_url, listener, key.as_ref(), t).await;
            if let Err(e) = &r {
                eprintln!("the API stopped: {e:#}");
            }
            r
        });
        let http = reqwest::Client::new();
        // Creating every stream with three replicas on a cluster that just formed took over
        // 20 s once, on a loaded 2-core machine.
        eventually(
            "the API to answer /healthz",
            Duration::from_secs(45),
            || async {
                let r = http.get(format!("{url}/healthz")).send().await.ok()?;
                (r.status() == StatusCode::OK).then_some(())
            },
        )
        .await;
        Self {
            cluster,
            admin: ApiClient::new(&url, Some(ADMIN_KEY.into())),
            url,
            token,
        }
    }

    /// Starts `taskfleet worker --assignee <assignee> --concurrency <n>` with `NATS_URL` =
    /// `nats_url` and `TASKFLEET_NATS__REPLICAS` = the cluster's size; waits until it pulls.
    pub async fn worker(
        &self,
        assignee: &str,
        concurrency: usize,
        nats_url: &str,
    ) -> ClusterWorker {
        let dir = tempfile::tempdir().expect("worker temp dir");
        let log = dir.path().join("worker.log");
        let stderr = std::fs::File::create(&log).expect("worker log file");
        let child = dies_with_test(&mut Command::new(env!("CARGO_BIN_EXE_taskfleet")))
            .args(["worker", "--assignee", assignee, "--concurrency"])
            .arg(concurrency.to_string())
            .env_remove("TASKFLEET_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("NATS_URL", nats_url)
            .env("TASKFLEET_NATS__REPLICAS", self.cluster.len().to_string())
            .env("RUST_LOG", "info,async_nats=warn")
            .env("NO_COLOR", "1")
            .env("TASKFLEET_WORKER__ACK_WAIT_S", "5")
            .env("TASKFLEET_WORKER__IDLE_POLL_MS", "200")
            .env("TASKFLEET_WORKER__KILL_GRACE_S", "1")
            .env("TASKFLEET_WORKER__SHUTDOWN_GRACE_S", "2")
            .env("TASKFLEET_WORKER__API_URL", &self.url)
            .env("TASKFLEET_FLEET__TASK_TOKEN_SECRET", TASK_TOKEN_SECRET)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn taskfleet worker");
        let mut worker = ClusterWorker {
            child,
            log,
            _dir: dir,
        };
        let (log, pid) = (worker.log.clone(), worker.child.id());
        let child = &mut worker.child;
        eventually(
            &format!("worker {pid} to start pulling"),
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("worker {pid} exited with {status}:\n{text}");
                }
                async move { text.contains("worker pulling").then_some(()) }
            },
        )
        .await;
        worker
    }
}

impl Drop for ClusterApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A `taskfleet worker` process against the cluster. `Drop` SIGKILLs it.
pub struct ClusterWorker {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ClusterWorker {
    /// Whether `worker_id` (`<assignee>@<host>-<pid>-<random>`) is this process.
    pub fn is(&self, worker_id: &str) -> bool {
        worker_id.rsplit('-').nth(1) == Some(self.child.id().to_string().as_str())
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Freezes it (SIGSTOP) or lets it go on (SIGCONT).
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // Our own child, not yet reaped (it is reaped only in `Drop`).
        let pid = self.child.id();
        if let Err(e) = taskfleet::sys::signal_process(pid, sig) {
            panic!("kill({pid}, {sig}): {e}");
        }
    }
}

impl Drop for ClusterWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
