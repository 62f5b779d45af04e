//! One fresh fleet per scenario: a nats-server on a random port with its own store (the repo's
//! `nats.conf`), optionally the API as a `taskfleet api` process, `taskfleet worker` processes,
//! and the benchmark's own NATS connection (which also creates the streams and buckets).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use taskfleet::bus::Bus;
use taskfleet::client::ApiClient;
use taskfleet::config::Config;
use taskfleet::domain::{Task, TaskId};
use taskfleet::natsd::{LocalNats, LocalNatsOptions};
use taskfleet::tasks::TaskService;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// Every benchmark task goes to this assignee.
pub const ASSIGNEE: &str = "bench";

/// Workers log only their "worker pulling" line (to know they are ready) and warnings: per-task
/// lines are info in the submodules, which stay at warn.
const WORKER_LOG: &str = "warn,taskfleet::worker=info,taskfleet::worker::run=warn,\
    taskfleet::worker::control=warn,taskfleet::worker::kinds=warn,taskfleet::worker::output=warn,\
    taskfleet::worker::process=warn,taskfleet::worker::dispatch=warn";

/// The API process and a client for it.
pub struct Api {
    child: Child,
    /// Its process id (for RSS).
    pub pid: u32,
    /// A client carrying the run's key.
    pub client: ApiClient,
}

impl Api {
    /// Waits (up to 30 s) until the API answers a pending list, which reads the queue.
    async fn wait_reading(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let q = [("assigned_to", ASSIGNEE.to_string()), ("limit", "1".into())];
        while self.client.pending(&q).await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("`taskfleet api` exited with {status}");
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("`taskfleet api` did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }
}

/// A running fleet; [`Fleet::stop`] takes it down.
pub struct Fleet {
    _dir: tempfile::TempDir,
    /// nats-server's store: `nats` in the temporary directory, or a directory that outlives
    /// the run ([`Fleet::start_on`]).
    store: PathBuf,
    /// nats-server (`None` only while [`Fleet::restart_nats`] restarts it), and how it is run.
    nats: Option<LocalNats>,
    nats_opts: LocalNatsOptions,
    /// Its client URL (the same after a restart).
    nats_url: String,
    /// The benchmark's own connection.
    pub bus: Bus,
    /// The API process, when started.
    pub api: Option<Api>,
    workers: Vec<Child>,
    relay: Option<Child>,
}

/// The release `taskfleet` binary next to this example (`target/release/taskfleet`).
pub fn taskfleet_bin() -> anyhow::Result<PathBuf> {
    // `TASKFLEET_BIN=/path/to/older/taskfleet` measures another build (before/after figures).
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
            "{} not found: run `cargo build --release --bin taskfleet` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// The fleet's task-token secret for this run (random; API and workers share it).
fn token_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        )
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child that gets SIGTERM when the benchmark dies, so a killed run leaves no processes behind.
fn die_with_parent(cmd: &mut Command) {
    taskfleet::sys::die_with_parent(cmd.as_std_mut(), libc::SIGTERM);
}

/// VmRSS of a process in MB (kB / 1024), as the contract asks.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time a process has used so far (user + system), in seconds.
#[allow(dead_code)] // bench_scale only
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces) start after its closing bracket;
    // utime and stime are the 14th and 15th fields of the line, the 12th and 13th after it.
    let mut after = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: f64 = after.next()?.parse::<f64>().ok()? + after.next()?.parse::<f64>().ok()?;
    Some(ticks / rustix::param::clock_ticks_per_second() as f64)
}

impl Fleet {
    /// A fresh nats-server and the benchmark's connection; with `api`, the API process too.
    pub async fn start(api: bool) -> anyhow::Result<Self> {
        Self::start_on(api, None).await
    }

    #[allow(dead_code)] // bench_scale only
    /// [`Fleet::start`] with nats-server's store in `store` when given (kept after the run,
    /// and used as it is when it already holds one), else in the temporary directory.
    pub async fn start_on(api: bool, store: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = store.unwrap_or_else(|| dir.path().join("nats"));
        let nats_opts = LocalNatsOptions {
            bin: None,
            conf: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/nats.conf")),
            store_dir: store.clone(),
            log_file: dir.path().join("nats.log"),
            port: free_port()?,
        };
        let nats = LocalNats::start(&nats_opts).await?;
        let nats_url = nats.url.clone();
        let mut cfg = Config::default();
        cfg.nats.url = Some(nats_url.clone());
        let bus = taskfleet::serve::connect(&cfg, &nats_url, "bench").await?;
        let mut fleet = Self {
            _dir: dir,
            store,
            nats: Some(nats),
            nats_opts,
            nats_url,
            bus,
            api: None,
            workers: Vec::new(),
            relay: None,
        };
        if api {
            fleet.api = Some(fleet.start_api().await?);
        }
        Ok(fleet)
    }

    async fn start_api(&self) -> anyhow::Result<Api> {
        // A random key for this run only; it is never printed.
        let key = format!("{:032x}", rand::random::<u128>());
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(taskfleet_bin()?);
        cmd.args(["api", "--api-addr", &addr])
            .env("NATS_URL", &self.nats_url)
            .env("TASKFLEET_API_KEY", &key)
            .env("TASKFLEET_FLEET__TASK_TOKEN_SECRET", token_secret())
            .env("RUST_LOG", "warn")
            .env_remove("TASKFLEET_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("spawning `taskfleet api`")?;
        let pid = child.id().unwrap_or_default();
        let client = ApiClient::new(&format!("http://{addr}"), Some(key));
        let mut api = Api { child, pid, client };
        api.wait_reading().await?;
        Ok(api)
    }

    /// Stops nats-server (SIGTERM: it writes its state out) and starts it again on the same
    /// port and store, as after any restart, then waits until the benchmark's connection and
    /// the API read again.
    #[allow(dead_code)] // bench_scale only
    pub async fn restart_nats(&mut self) -> anyhow::Result<()> {
        if let Some(nats) = self.nats.take() {
            nats.stop().await;
        }
        eprintln!("starting nats-server again on the same store …");
        self.nats = Some(LocalNats::start(&self.nats_opts).await?);
        eprintln!("waiting for the benchmark's connection and the API to reconnect …");
        let started = Instant::now();
        while self.bus.js.query_account().await.is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the benchmark's connection did not come back within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(api) = self.api.as_mut() {
            api.wait_reading().await?;
        }
        Ok(())
    }

    /// Starts `n` worker processes for [`ASSIGNEE`] and waits until each is pulling.
    pub async fn spawn_workers(&mut self, n: usize, concurrency: usize) -> anyhow::Result<()> {
        self.spawn_workers_for(ASSIGNEE, n, concurrency).await
    }

    /// Starts `n` worker processes for `assignee` and waits until each is pulling.
    pub async fn spawn_workers_for(
        &mut self,
        assignee: &str,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let bin = taskfleet_bin()?;
        let mut ready = Vec::new();
        for i in 0..n {
            let mut cmd = Command::new(&bin);
            cmd.args(["worker", "--assignee", assignee, "--concurrency"])
                .arg(concurrency.to_string())
                .env("NATS_URL", &self.nats_url)
                .env("RUST_LOG", WORKER_LOG)
                .env("TASKFLEET_FLEET__TASK_TOKEN_SECRET", token_secret())
                .env("NO_COLOR", "1")
                .env_remove("TASKFLEET_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().context("spawning `taskfleet worker`")?;
            let stderr = child.stderr.take().context("worker stderr")?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let label = format!("{assignee} {i}");
            tokio::spawn(async move {
                let mut tx = Some(tx);
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("worker pulling") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    } else {
                        eprintln!("  [worker {label}] {line}");
                    }
                }
            });
            ready.push(rx);
            self.workers.push(child);
        }
        for rx in ready {
            tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .context("a worker was not pulling within 30 s")?
                .context("a worker exited before it was pulling")?;
        }
        Ok(())
    }

    /// Process ids of the workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(Child::id).collect()
    }

    /// Kills the worker processes; the rest of the fleet keeps running.
    #[allow(dead_code)] // bench_scale only
    pub async fn stop_workers(&mut self) {
        for mut w in self.workers.drain(..) {
            let _ = w.kill().await;
        }
    }

    /// Starts `taskfleet relay` with the config file `config` (its log at error level only:
    /// failed deliveries are expected and would flood stderr).
    #[allow(dead_code)] // bench_scale only
    pub fn spawn_relay(&mut self, config: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(taskfleet_bin()?);
        cmd.arg("--config")
            .arg(config)
            .arg("relay")
            .env("NATS_URL", &self.nats_url)
            .env("RUST_LOG", "error")
            .env("TASKFLEET_FLEET__TASK_TOKEN_SECRET", token_secret())
            .env_remove("TASKFLEET_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        self.relay = Some(cmd.spawn().context("spawning `taskfleet relay`")?);
        Ok(())
    }

    /// Kills the relay process, if one runs.
    #[allow(dead_code)] // bench_scale only
    pub async fn stop_relay(&mut self) {
        if let Some(mut relay) = self.relay.take() {
            let _ = relay.kill().await;
        }
    }

    /// The fleet's temporary directory (config files of extra processes go there).
    #[allow(dead_code)] // bench_scale only
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// nats-server's process id.
    #[allow(dead_code)] // bench_scale only
    pub fn nats_pid(&self) -> u32 {
        self.nats.as_ref().map_or(0, |n| n.pid)
    }

    /// nats-server's store directory (for the bytes on disk).
    #[allow(dead_code)] // bench_scale only
    pub fn store_dir(&self) -> PathBuf {
        self.store.clone()
    }

    /// A task's current state, read as the API reads it.
    pub async fn task(&self, id: &TaskId) -> anyhow::Result<Task> {
        let tasks = TaskService::new(self.bus.clone(), Default::default());
        Ok(tasks.get(id).await?)
    }

    /// Kills the processes and stops nats-server (its store goes with the temporary directory
    /// unless [`Fleet::start_on`] put it elsewhere).
    pub async fn stop(mut self) {
        for w in &mut self.workers {
            let _ = w.kill().await;
        }
        if let Some(mut relay) = self.relay.take() {
            let _ = relay.kill().await;
        }
        if let Some(mut api) = self.api.take() {
            let _ = api.child.kill().await;
        }
        drop(self.bus);
        if let Some(nats) = self.nats.take() {
            nats.stop().await;
        }
    }
}
