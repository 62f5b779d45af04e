//! The real `taskfleet worker` binary as a child process (so tests can SIGKILL, SIGSTOP and
//! SIGTERM it), and a look at `/proc` for processes a task left behind.

use super::app::{TestApp, TASK_TOKEN_SECRET};
use super::dies_with_test;
use super::eventually;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A `taskfleet worker` process (or any `taskfleet` command started with [`spawn_taskfleet`]).
/// `Drop` SIGKILLs it.
pub struct WorkerProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts `taskfleet worker --assignee <assignee> --concurrency <n>` against this app with
    /// test timings (ack wait 3 s, idle poll 200 ms, kill grace 1 s); `env` adds or overrides
    /// variables (e.g. `("TASKFLEET_WORKER__ACK_WAIT_S", "30")`). Waits until it pulls.
    pub async fn worker_process(
        &self,
        assignee: &str,
        concurrency: usize,
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let dir = tempfile::tempdir().expect("worker temp dir");
        let log = dir.path().join("worker.log");
        let stderr = std::fs::File::create(&log).expect("worker log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskfleet"));
        dies_with_test(&mut cmd)
            .args(["worker", "--assignee", assignee, "--concurrency"])
            .arg(concurrency.to_string())
            .env_remove("TASKFLEET_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_TRACES_EXPORTER")
            .env("NATS_URL", self.nats.url())
            .env("RUST_LOG", "info,async_nats=warn")
            .env("NO_COLOR", "1")
            .env("TASKFLEET_WORKER__ACK_WAIT_S", "3")
            .env("TASKFLEET_WORKER__IDLE_POLL_MS", "200")
            .env("TASKFLEET_WORKER__KILL_GRACE_S", "1")
            .env("TASKFLEET_WORKER__SHUTDOWN_GRACE_S", "2")
            .env("TASKFLEET_WORKER__OUTPUT_INTERVAL_MS", "50")
            .env("TASKFLEET_WORKER__API_URL", &self.url)
            .env("TASKFLEET_FLEET__TASK_TOKEN_SECRET", TASK_TOKEN_SECRET)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("spawn taskfleet worker");
        let mut worker = WorkerProcess {
            child,
            log,
            _dir: dir,
        };
        worker.wait_pulling().await;
        worker
    }
}

/// Starts `taskfleet <args>` with `env` on top of the test environment (no config file, no
/// OTLP, no colour), stderr into a log; waits for nothing.
#[allow(dead_code)]
pub fn spawn_taskfleet(args: &[&str], env: &[(&str, &str)]) -> WorkerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("taskfleet.log");
    let stderr = std::fs::File::create(&log).expect("log file");
    let child = dies_with_test(&mut Command::new(env!("CARGO_BIN_EXE_taskfleet")))
        .args(args)
        .env_remove("TASKFLEET_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env("RUST_LOG", "info,async_nats=warn")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn taskfleet");
    WorkerProcess {
        child,
        log,
        _dir: dir,
    }
}

impl WorkerProcess {
    /// Waits (bounded) until its log contains `needle`; panics if it exits first.
    #[allow(dead_code)]
    pub async fn wait_log(&mut self, needle: &str, limit: Duration) {
        let (log, pid) = (self.log.clone(), self.pid());
        let child = &mut self.child;
        eventually(&format!("{pid} to log {needle:?}"), limit, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{pid} exited with {status}:\n{text}");
            }
            async move { text.contains(needle).then_some(()) }
        })
        .await;
    }

    /// `http://<addr>` of its health endpoint, from the "health endpoint listening" log line
    /// (so `--health-listen 127.0.0.1:0` works).
    #[allow(dead_code)]
    pub async fn health_url(&mut self) -> String {
        self.wait_log("health endpoint listening", Duration::from_secs(20))
            .await;
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("health endpoint listening"))
            .expect("the line");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        format!("http://{addr}")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether `worker_id` (`<assignee>@<host>-<pid>-<random>`, a lease holder or an event's
    /// operator) is this process.
    pub fn is(&self, worker_id: &str) -> bool {
        worker_id.rsplit('-').nth(1) == Some(self.pid().to_string().as_str())
    }

    /// What it logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (SIGKILL, SIGSTOP, SIGCONT, SIGTERM…).
    pub fn signal(&self, sig: libc::c_int) {
        // Our own child, not yet reaped (it is reaped only in `wait_exit`/`kill9`/`Drop`).
        let pid = self.pid();
        if let Err(e) = taskfleet::sys::signal_process(pid, sig) {
            panic!("kill({pid}, {sig}): {e}");
        }
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits (bounded) for it to exit and returns how it exited.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let log = self.log.clone();
        let child = &mut self.child;
        let what = format!(
            "worker {} to exit; log:\n{}",
            child.id(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        eventually(&what, limit, || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    async fn wait_pulling(&mut self) {
        let (log, pid) = (self.log.clone(), self.pid());
        let child = &mut self.child;
        eventually(
            &format!("worker {pid} to start pulling"),
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("worker {pid} exited with {status}:\n{text}");
                }
                async move { text.contains("worker pulling").then_some(()) }
            },
        )
        .await;
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue; // gone meanwhile
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .map(|i| s[i + 1..].trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true);
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != me && !zombie && text.contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// A `sleep` argument no other process has: `600.<random digits>` (GNU sleep takes fractions).
pub fn unique_sleep() -> String {
    format!("600.{}", rand::random::<u32>())
}
