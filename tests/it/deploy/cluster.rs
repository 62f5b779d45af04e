//! The NATS side of deploy/ on real nats-servers: the configs pass `nats-server -t`, and the
//! compose cluster's config, with the users `taskfleet nats-config` writes, forms a JetStream
//! cluster on loopback that takes the fleet's R3 streams ([`DeployCluster`], also used by
//! `services`).

use super::compose::{nats_services, taskfleet_services};
use super::k8s::{nats_conf as k8s_nats_conf, pods};
use super::support::*;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};
use taskfleet::cli::Command;

/// `nats-server -t` on `conf` with SERVER_NAME set, next to `auth_conf`.
fn config_test(conf: &str, server_name: &str, auth_conf: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
    std::fs::write(dir.path().join("auth.conf"), auth_conf).unwrap();
    let out = Process::new(nats_server())
        .arg("-c")
        .arg(dir.path().join("nats.conf"))
        .arg("-t")
        .env("SERVER_NAME", server_name)
        .output()
        .expect("run nats-server -t");
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(
        n, 1,
        "deploy/nats/nats.conf: expected `{from}` once, found {n}"
    );
    text.replacen(from, to, 1)
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The three nodes of compose.yaml, started from deploy/nats/nats.conf with the generated
/// auth.conf; host names, ports and the store moved to loopback and a temp dir. `Drop` kills them.
pub struct DeployCluster {
    nodes: Vec<Child>,
    client: Vec<u16>,
    monitor: Vec<u16>,
    dir: tempfile::TempDir,
}

impl DeployCluster {
    /// Starts the three nodes and waits until each is healthy. A port taken meanwhile by
    /// someone else (the ports are picked before the servers bind them; tests run in parallel)
    /// makes it start over with new ports, as `NatsCluster::start` does.
    pub async fn start() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let me = Self::spawn();
            match me.wait_healthy().await {
                Ok(()) => return me,
                Err(why) => {
                    eprintln!("deploy cluster did not start, starting over: {why}");
                    last = why;
                }
            }
        }
        panic!("deploy cluster did not start three times; last: {last}");
    }

    /// The three nodes, spawned on fresh ports (not yet known to be up).
    fn spawn() -> Self {
        let conf = read(&deploy("nats/nats.conf"));
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(9);
        let (client, rest) = ports.split_at(3);
        let (monitor, route) = rest.split_at(3);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node = dir.path().join(format!("nats-{}", i + 1));
            std::fs::create_dir_all(&node).unwrap();
            let host = format!("\nhost: 127.0.0.1\nport: {}\n", client[i]);
            let mut c = replace_once(&conf, "\nport: 4222\n", &host);
            let http = format!("\nhttp: \"127.0.0.1:{}\"\n", monitor[i]);
            c = replace_once(&c, "\nhttp_port: 8222\n", &http);
            let listen = format!("    listen: \"127.0.0.1:{}\"\n", route[i]);
            c = replace_once(&c, "    port: 6222\n", &listen);
            for (n, port) in route.iter().enumerate() {
                let from = format!("\"nats://nats-{}:6222\"", n + 1);
                c = replace_once(&c, &from, &format!("\"nats://127.0.0.1:{port}\""));
            }
            let store = format!("store_dir: \"{}\"", node.join("data").display());
            c = replace_once(&c, "store_dir: \"/data\"", &store);
            std::fs::write(node.join("nats.conf"), c).unwrap();
            std::fs::write(node.join("auth.conf"), &credentials().auth_conf).unwrap();
            let child = Process::new(nats_server())
                .arg("-c")
                .arg(node.join("nats.conf"))
                .arg("-l")
                .arg(node.join("nats.log"))
                .env("SERVER_NAME", format!("nats-{}", i + 1))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server");
            nodes.push(child);
        }
        Self {
            nodes,
            client: client.to_vec(),
            monitor: monitor.to_vec(),
            dir,
        }
    }

    /// Every node's `/healthz` (what compose's health check asks) answers 200 within 30 s; a
    /// node that exited (say, its port was taken) ends the wait at once.
    async fn wait_healthy(&self) -> Result<(), String> {
        let started = Instant::now();
        for (i, port) in self.monitor.iter().enumerate() {
            let url = format!("http://127.0.0.1:{port}/healthz");
            while !http_ok(&url).await {
                // A fatal error is the last line a node logs before it exits.
                let log = self.log_tail(i);
                if log.contains("[FTL]") || started.elapsed() >= Duration::from_secs(30) {
                    return Err(format!("nats-{} not healthy:\n{log}", i + 1));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.dir.path().join(format!("nats-{}/nats.log", i + 1)))
    }

    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.client[i % 3])
    }

    /// compose's `NATS_URL` with each `nats://nats-N:4222` pointed at node N here.
    fn localize_url(&self, url: &str) -> String {
        let mut out = url.to_string();
        for (n, port) in self.client.iter().enumerate() {
            let from = format!("nats://nats-{}:4222", n + 1);
            out = out.replace(&from, &format!("nats://127.0.0.1:{port}"));
        }
        assert!(!out.contains("nats-"), "{url}: only nats-1..3");
        out
    }
}

impl Drop for DeployCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn http_ok(url: &str) -> bool {
    let get = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2));
    matches!(get.send().await, Ok(r) if r.status().is_success())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The API's config as compose gives it (its env file, the fleet secrets as stand-ins).
fn compose_api_config() -> taskfleet::config::Config {
    let api = taskfleet_services()
        .into_iter()
        .find(|s| matches!(parse_cli(&s.command()).command, Command::Api(_)))
        .expect("an api service");
    api.config()
}

#[test]
fn nats_configs_pass_nats_server_config_test() {
    let creds = credentials();
    if !creds.real {
        eprintln!("taskfleet {NATS_CONFIG} does not exist yet: checked with an empty auth.conf");
    }
    let conf = read(&deploy("nats/nats.conf"));
    for n in nats_services() {
        config_test(&conf, &n.name, &creds.auth_conf)
            .unwrap_or_else(|e| panic!("deploy/nats/nats.conf as {}: {e}", n.name));
    }
    let k8s = k8s_nats_conf();
    for i in 0..3 {
        config_test(&k8s, &format!("nats-{i}"), &creds.auth_conf)
            .unwrap_or_else(|e| panic!("deploy/k8s nats.conf as nats-{i}: {e}"));
    }
}

#[test]
fn nats_config_writes_every_env_file_and_user_the_deploy_files_name() {
    let creds = credentials();
    if !creds.real {
        eprintln!("skipped: `taskfleet {NATS_CONFIG}` does not exist yet");
        return;
    }
    for svc in taskfleet_services() {
        let user = &svc.env()["TASKFLEET_NATS__USER"];
        let entry = format!("user: \"{user}\"");
        assert!(
            creds.auth_conf.contains(&entry),
            "{}: auth.conf has no {user}",
            svc.name
        );
    }
    for pod in pods() {
        // Pod::env panics when no generated env file makes the Secret it names.
        let user = &pod.env()["TASKFLEET_NATS__USER"];
        let entry = format!("user: \"{user}\"");
        assert!(
            creds.auth_conf.contains(&entry),
            "{}: auth.conf has no {user}",
            pod.name
        );
    }
}

#[tokio::test]
async fn deploy_nats_conf_forms_a_jetstream_cluster_that_takes_r3_streams() {
    let cluster = DeployCluster::start().await;
    let cfg = compose_api_config();
    // One node's URL: `taskfleet_connects_with_the_compose_nats_url_list` checks the list.
    let opts = cfg.connect_options(&cluster.node_url(1), "deploy-test");

    let bus = taskfleet::bus::Bus::connect(&opts, &cfg.topology())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log_tail(1)));

    for name in ["TASKS", "EVENTS", "DELIVERIES"] {
        let mut stream = bus.js.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let cluster_info = info.cluster.as_ref().expect("cluster info");
        assert_eq!(
            cluster_info.replicas.len(),
            2,
            "{name}: a leader and two replicas"
        );
    }
}

#[tokio::test]
async fn taskfleet_connects_with_the_compose_nats_url_list() {
    let cluster = DeployCluster::start().await;
    let cfg = compose_api_config();
    let url = cluster.localize_url(cfg.nats.url.as_deref().expect("NATS_URL"));
    assert_eq!(url.matches("nats://").count(), 3, "{url}");
    let mut opts = cfg.connect_options(&url, "deploy-test");
    opts.connect_timeout = Duration::from_secs(10);

    let connected = taskfleet::bus::connect_client(&opts).await;

    if let Err(e) = connected {
        panic!(
            "taskfleet cannot use the NATS_URL that compose and k8s give every service ({url}): \
             {:#}",
            anyhow::Error::from(e)
        );
    }
}
