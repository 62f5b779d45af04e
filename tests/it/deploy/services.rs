//! The taskfleet services of compose.yaml and deploy/k8s as real `taskfleet` processes, each with
//! its own arguments, env file and config, against [`DeployCluster`]: they start, stop cleanly on
//! SIGTERM, and a worker stopped in a rolling restart hands its task to the new replica.

use super::cluster::{free_ports, http_ok, DeployCluster};
use super::compose::taskfleet_services;
use super::k8s::pods;
use super::support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use taskfleet::cli::Command;

/// How one service runs: its arguments, environment and config file.
struct Plan {
    label: String,
    args: Vec<String>,
    env: Env,
    file: PathBuf,
}

impl Plan {
    fn kind(&self) -> &'static str {
        match parse_cli(&self.args).command {
            Command::Api(_) => "api",
            Command::Relay(_) => "relay",
            Command::Worker(_) => "worker",
            other => panic!("{}: {other:?}", self.label),
        }
    }

    /// Starts it as the container would. Differences, none in what is checked: `--config` names
    /// the repository file the container gets mounted, the API and the health endpoints of
    /// relay and workers listen on free loopback ports,
    /// NATS_URL names one node here (`taskfleet_connects_with_the_compose_nats_url_list` is about
    /// the list), HOME is a temp dir, and `extra` is added to the environment.
    fn spawn(&self, nats: &str, dir: &Path, extra: &[(&str, &str)]) -> Running {
        let (mut api_port, mut health_port) = (None, None);
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| match a.as_str() {
                CONFIG_IN_CONTAINER => self.file.display().to_string(),
                "0.0.0.0:8090" => {
                    let port = free_ports(1)[0];
                    api_port = Some(port);
                    format!("127.0.0.1:{port}")
                }
                "0.0.0.0:8091" => {
                    let port = free_ports(1)[0];
                    health_port = Some(port);
                    format!("127.0.0.1:{port}")
                }
                _ => a.clone(),
            })
            .collect();
        let log = tempfile::Builder::new()
            .prefix(&self.label.replace(' ', "-"))
            .suffix(".log")
            .tempfile_in(dir)
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let child = Process::new(BIN)
            .args(&args)
            .env_clear()
            // What the image has: debian:bookworm-slim's PATH, and a home (Dockerfile `ENV HOME`).
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", dir)
            .envs(&self.env)
            .env("NATS_URL", nats)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn taskfleet");
        Running {
            label: self.label.clone(),
            kind: self.kind(),
            child,
            log,
            api_port,
            health_port,
        }
    }
}

fn plans() -> Vec<Plan> {
    let mut plans = Vec::new();
    for svc in taskfleet_services() {
        plans.push(Plan {
            label: format!("compose {}", svc.name),
            args: svc.command(),
            env: svc.env(),
            file: svc.config_file(),
        });
    }
    for pod in pods() {
        plans.push(Plan {
            label: format!("k8s {}", pod.name),
            args: pod.args(),
            env: pod.env(),
            file: pod.config_file(),
        });
    }
    plans
}

/// A running service; stderr goes to `log`. `Drop` kills it.
struct Running {
    label: String,
    kind: &'static str,
    child: Child,
    log: PathBuf,
    api_port: Option<u16>,
    /// Where relay and workers serve `/healthz` and `/readyz`.
    health_port: Option<u16>,
}

impl Running {
    fn log(&self) -> String {
        read(&self.log)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Until it is up: the API's `/healthz` answers 200, as do the `/readyz` of workers and
    /// relay (what compose's health checks and the k8s probes ask).
    async fn wait_up(&mut self) {
        let started = Instant::now();
        loop {
            let exited = self.child.try_wait().unwrap();
            assert!(exited.is_none(), "{} exited:\n{}", self.label, self.log());
            let up = match (self.kind, self.api_port, self.health_port) {
                ("api", Some(port), _) => {
                    http_ok(&format!("http://127.0.0.1:{port}/healthz")).await
                }
                ("worker" | "relay", _, Some(port)) => {
                    http_ok(&format!("http://127.0.0.1:{port}/readyz")).await
                        && http_ok(&format!("http://127.0.0.1:{port}/healthz")).await
                }
                other => panic!("{}: {other:?}", self.label),
            };
            if up {
                return;
            }
            let late = started.elapsed() > Duration::from_secs(60);
            assert!(!late, "{} not up:\n{}", self.label, self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn sigterm(&self) {
        // A child this test started and has not reaped yet.
        let _ = taskfleet::sys::signal_process(self.pid(), libc::SIGTERM);
    }

    async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            let late = started.elapsed() > limit;
            assert!(
                !late,
                "{}: running {limit:?} after SIGTERM\n{}",
                self.label,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn compose_and_k8s_services_run_against_the_deploy_cluster_and_stop_on_sigterm() {
    let cluster = DeployCluster::start().await;
    let logs = tempfile::tempdir().unwrap();
    let mut plans = plans();
    // The APIs first: they create the streams that the other users may only open.
    plans.sort_by_key(|p| p.kind() != "api");

    let mut running = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let mut r = plan.spawn(&cluster.node_url(i), logs.path(), &[]);
        r.wait_up().await;
        running.push(r);
    }
    for r in &running {
        r.sigterm();
    }

    for r in &mut running {
        let status = r.exit_status(Duration::from_secs(30)).await;
        assert!(status.success(), "{}: {status}\n{}", r.label, r.log());
    }
}

/// `GET /api/tasks/{id}` until `done` holds.
async fn task_until(api: &str, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let task: Value = http
            .get(format!("{api}/api/tasks/{id}"))
            .header("X-Bot-Key", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&task) {
            return task;
        }
        let finished = !matches!(task["status"].as_str(), Some("pending" | "running"));
        assert!(
            !finished && started.elapsed() < Duration::from_secs(30),
            "{task:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn held_by(task: &Value, worker: &Running) -> bool {
    let holder = task["lease"]["holder"].as_str().unwrap_or_default();
    task["status"] == "running" && holder.contains(&format!("-{}-", worker.pid()))
}

#[tokio::test]
async fn a_worker_stopped_in_a_rolling_restart_hands_its_task_to_the_new_replica() {
    let cluster = DeployCluster::start().await;
    let logs = tempfile::tempdir().unwrap();
    let plans = plans();
    let find = |label: &str| plans.iter().find(|p| p.label == label).unwrap();
    let api_plan = find("compose api");
    let worker_plan = find("compose worker-anna");
    let mut api = api_plan.spawn(&cluster.node_url(0), logs.path(), &[]);
    api.wait_up().await;
    let url = format!("http://127.0.0.1:{}", api.api_port.unwrap());
    let key = api_plan.env["TASKFLEET_API_KEY"].clone();
    // A 1 s grace instead of deploy/taskfleet.toml's 20 s keeps the test short; the grace
    // periods against the real value are `…_stop_grace_outlasts_…` and `k8s_termination_…`.
    let grace = [("TASKFLEET_WORKER__SHUTDOWN_GRACE_S", "1")];
    let mut old = worker_plan.spawn(&cluster.node_url(1), logs.path(), &grace);
    old.wait_up().await;
    let created: Value = reqwest::Client::new()
        .post(format!("{url}/api/tasks"))
        .header("X-Bot-Key", &key)
        .json(
            &json!({"task_name": "long", "assigned_to": "anna", "kind": "exec",
                      "payload": {"command": "sleep 60"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a task id").to_string();
    task_until(&url, &key, &id, |t| held_by(t, &old)).await;

    // Rolling update: the new replica first, then SIGTERM to the old one.
    let mut new = worker_plan.spawn(&cluster.node_url(2), logs.path(), &grace);
    new.wait_up().await;
    old.sigterm();

    let status = old.exit_status(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", old.log());
    let task = task_until(&url, &key, &id, |t| held_by(t, &new)).await;
    assert_eq!(task["attempt"], 2, "{task:#}");
    new.sigterm();
    api.sigterm();
    assert!(new.exit_status(Duration::from_secs(20)).await.success());
    assert!(api.exit_status(Duration::from_secs(20)).await.success());
}
