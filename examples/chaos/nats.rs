//! nats-servers on loopback: one server from the repo's `nats.conf` (random client and
//! monitoring ports, a store dir of its own), or a three-node cluster configured as in
//! docs/cluster.md. Each node can be killed with SIGKILL and started again on the same ports and
//! store.

use super::procs::{free_ports, tail, Proc};
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The cluster's name in every node's config.
const CLUSTER_NAME: &str = "taskfleet-chaos";

/// How one node is started.
enum Launch {
    /// `nats-server -c <repo>/nats.conf -p … -m … --store_dir …` (a single server).
    Single,
    /// `nats-server -c <node config>` (a cluster node).
    Config(PathBuf),
}

/// One nats-server: fixed ports and store for its whole life, so a restart comes back the same.
pub struct NatsNode {
    /// Server name (`n1`…, or `single`).
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Monitoring port (`/healthz`, `/jsz`).
    pub monitor: u16,
    store: PathBuf,
    log: PathBuf,
    launch: Launch,
    proc: Option<Proc>,
}

/// The nats-server binary (`NATS_SERVER_BIN`, `.tools/nats`, PATH).
fn nats_bin() -> anyhow::Result<PathBuf> {
    taskfleet::natsd::find_binary(None)
        .map_err(|e| anyhow::anyhow!("{e}; run scripts/ensure-nats.sh (make chaos does)"))
}

impl NatsNode {
    /// A single server from the repo's `nats.conf`, started and ready for JetStream.
    pub async fn single(dir: &Path) -> anyhow::Result<Self> {
        let ports = free_ports(2)?;
        let (port, monitor) = (ports[0], ports[1]);
        let mut node = Self {
            name: "single".into(),
            port,
            monitor,
            store: dir.join("nats-store"),
            log: dir.join("nats.log"),
            launch: Launch::Single,
            proc: None,
        };
        node.start().await?;
        Ok(node)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(nats_bin()?);
        match &self.launch {
            Launch::Single => {
                let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf");
                cmd.args(["-c", conf, "-a", "127.0.0.1"])
                    .arg("-p")
                    .arg(self.port.to_string())
                    .arg("-m")
                    .arg(self.monitor.to_string())
                    .arg("--store_dir")
                    .arg(&self.store);
            }
            Launch::Config(conf) => {
                cmd.arg("-c").arg(conf);
            }
        }
        cmd.arg("-l").arg(&self.log);
        self.proc = Some(Proc::spawn(
            &format!("nats-server {}", self.name),
            cmd,
            &self.log.with_extension("out"),
        )?);
        Ok(())
    }

    /// Starts it and waits until it accepts clients (and, for a single server, JetStream).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        let started = Instant::now();
        let single = matches!(self.launch, Launch::Single);
        loop {
            if let Some(p) = self.proc.as_mut() {
                if !p.alive() {
                    bail!("{} exited at start:\n{}", p.name, tail(&self.log, 15));
                }
            }
            if self.accepts(single).await {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "nats-server {} not ready within 30 s:\n{}",
                    self.name,
                    tail(&self.log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether it accepts a client (and answers JetStream's account info, with `js`).
    async fn accepts(&self, js: bool) -> bool {
        let connect = async_nats::ConnectOptions::new()
            .ignore_discovered_servers()
            .connect(self.url());
        let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
            return false;
        };
        if !js {
            return true;
        }
        let info = client.request("$JS.API.INFO", "".into());
        matches!(
            tokio::time::timeout(Duration::from_secs(1), info).await,
            Ok(Ok(m)) if !String::from_utf8_lossy(&m.payload).contains("\"error\"")
        )
    }

    /// `kill -9` by pid (no flush), reaped.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Whether its process runs.
    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }

    /// GET `http://127.0.0.1:<monitor><path>` as JSON.
    pub async fn monitor(&self, http: &reqwest::Client, path: &str) -> anyhow::Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.monitor);
        let r = http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{url}: {status} {body}");
        }
        Ok(body)
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Three (or more) clustered nodes, every stream with three replicas.
pub struct NatsCluster {
    /// The nodes, `n1`… in order.
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// Starts `n` nodes on loopback and waits until each is healthy and there is a meta leader.
    pub async fn start(dir: &Path, n: usize) -> anyhow::Result<Self> {
        let ports: Vec<[u16; 3]> = free_ports(3 * n)?
            .chunks(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        let mut nodes = Vec::new();
        for (i, [client, route, monitor]) in ports.iter().copied().enumerate() {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .filter(|p| p[1] != route)
                .map(|p| format!("nats-route://127.0.0.1:{}", p[1]))
                .collect();
            let store = dir.join(format!("{name}-store"));
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                node_config(&name, [client, route, monitor], &store, &routes),
            )
            .context("writing a node config")?;
            nodes.push(NatsNode {
                log: dir.join(format!("{name}.log")),
                name,
                port: client,
                monitor,
                store,
                launch: Launch::Config(conf),
                proc: None,
            });
        }
        for node in &mut nodes {
            node.spawn()?;
        }
        let me = Self { nodes };
        me.wait_formed(Duration::from_secs(45)).await?;
        Ok(me)
    }

    /// Every node's URL, comma separated (the documented `NATS_URL` of a cluster).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsNode::url).collect();
        urls.join(",")
    }

    /// The node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until every running node's `/healthz` is 200 and `/jsz` names a meta leader.
    pub async fn wait_formed(&self, limit: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let mut ok = true;
            for node in self.nodes.iter().filter(|n| n.is_up()) {
                let healthy = node.monitor(&http, "/healthz").await.is_ok();
                let jsz = node.monitor(&http, "/jsz").await.unwrap_or(Value::Null);
                ok &= healthy && jsz["meta_cluster"]["leader"].as_str().is_some();
            }
            if ok {
                return Ok(());
            }
            if started.elapsed() > limit {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail(8)))
                    .collect();
                bail!(
                    "cluster not healthy within {limit:?}:\n{}",
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One node's config file: docs/cluster.md's, on loopback, with `max_payload` as in nats.conf.
fn node_config(
    name: &str,
    [client, route, monitor]: [u16; 3],
    store: &Path,
    routes: &[String],
) -> String {
    format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{monitor}\n\
         max_payload: 2MB\n\
         max_pending: 64MB\n\
         jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n\
         cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route}\n  routes: [\n    {routes}\n  ]\n}}\n",
        store = store.display(),
        routes = routes.join(",\n    "),
    )
}
