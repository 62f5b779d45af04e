//! A nats-server child process for one test: random port, temp store dir, loopback only.
//! Readiness is checked by connecting; `Drop` kills it and removes the store.

use super::dies_with_test;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server owned by one test.
pub struct NatsServer {
    child: Option<Child>,
    /// Client port (kept across restarts).
    pub port: u16,
    store: tempfile::TempDir,
    bin: PathBuf,
}

fn binary() -> PathBuf {
    taskfleet::natsd::find_binary(None).unwrap_or_else(|e| {
        panic!("{e}\nhint: run `scripts/ensure-nats.sh` or `make test`, which install nats-server")
    })
}

impl NatsServer {
    /// Starts a fresh server and waits until it accepts connections with JetStream.
    pub async fn start() -> Self {
        let store = tempfile::tempdir().expect("temp store dir");
        let mut me = Self {
            child: None,
            port: 0,
            store,
            bin: binary(),
        };
        me.spawn().await;
        me
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's JetStream store (`--store_dir`).
    pub fn store_dir(&self) -> std::path::PathBuf {
        self.store.path().join("store")
    }

    async fn spawn(&mut self) {
        let ports_dir = self.store.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).unwrap();
        let port_arg = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let child = dies_with_test(&mut Command::new(&self.bin))
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--store_dir"])
            .arg(self.store_dir())
            .arg("-l")
            .arg(self.store.path().join("nats.log"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let pid = child.id();
        self.child = Some(child);
        let started = Instant::now();
        if self.port == 0 {
            let ports_file = ports_dir.join(format!(
                "{}_{pid}.ports",
                self.bin.file_name().unwrap().to_string_lossy()
            ));
            loop {
                if let Ok(text) = std::fs::read_to_string(&ports_file) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                        let url = v["nats"][0].as_str().unwrap_or_default().to_string();
                        self.port = url.rsplit(':').next().unwrap().parse().unwrap();
                        break;
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "nats-server wrote no ports file: {}",
                    self.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        loop {
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(1), async_nats::connect(self.url())).await
            {
                if async_nats::jetstream::new(c).query_account().await.is_ok() {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server not ready: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server with SIGKILL (no flush) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.store.path().join("nats.log")).unwrap_or_default();
        text.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
