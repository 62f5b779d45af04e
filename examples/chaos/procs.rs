//! Child processes of the suite. Every pid it starts is recorded in a registry and ended by that
//! pid: by `Drop`, by the scenario that kills it on purpose, and by [`kill_registered`] when the
//! suite itself is interrupted. Children also get a parent-death SIGKILL, so even `kill -9` of
//! the suite leaves nothing behind.

use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pids of the children still running (started and not yet reaped).
static PIDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// The registry, locked (a panic elsewhere does not poison it for the cleanup).
fn registry() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    PIDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `sig` to `pid` (one of ours).
pub fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    taskfleet::sys::signal_process(pid, sig)
}

/// SIGKILLs every child still registered (the suite is being interrupted) and returns their pids.
pub fn kill_registered() -> Vec<u32> {
    let pids: Vec<u32> = registry().iter().copied().collect();
    for &pid in &pids {
        let _ = signal(pid, libc::SIGKILL);
    }
    pids
}

/// Pids still registered (should be none between scenarios).
pub fn registered() -> Vec<u32> {
    registry().iter().copied().collect()
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` free loopback ports, all bound at once (so they differ: one at a time, the kernel can
/// hand out a port just released again, which once gave a node's monitor port to another
/// node's clients) and then released.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ports)
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One child process with its output in a log file. `Drop` SIGKILLs and reaps it.
pub struct Proc {
    /// What it is, for messages (`worker chaos1 #2`).
    pub name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`, a parent-death
    /// SIGKILL, and its pid registered.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        taskfleet::sys::die_with_parent(&mut cmd, libc::SIGKILL);
        let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        registry().insert(child.id());
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            reaped: None,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs (reaps it if it exited).
    pub fn alive(&mut self) -> bool {
        if self.reaped.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.reaped = Some(status);
                registry().remove(&self.child.id());
                false
            }
            Err(_) => false,
        }
    }

    /// `kill -9` by pid, then reaps it.
    pub fn kill9(&mut self) {
        if self.reaped.is_none() {
            let _ = signal(self.pid(), libc::SIGKILL);
            self.reaped = self.child.wait().ok();
            registry().remove(&self.child.id());
        }
    }

    /// Sends SIGTERM by pid.
    pub fn term(&self) -> anyhow::Result<()> {
        signal(self.pid(), libc::SIGTERM).with_context(|| format!("SIGTERM to {}", self.name))
    }

    /// Waits up to `limit` for it to exit; `None` if it still runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if !self.alive() {
                return self.reaped;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits up to `limit` until its log contains `needle`; fails if it exits first.
    pub async fn wait_log(&mut self, needle: &str, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if !self.alive() {
                bail!(
                    "{} exited ({:?}) before logging {needle:?}:\n{}",
                    self.name,
                    self.reaped,
                    tail(&self.log, 20)
                );
            }
            if started.elapsed() > limit {
                bail!(
                    "{} did not log {needle:?} within {limit:?}:\n{}",
                    self.name,
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
