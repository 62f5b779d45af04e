//! The local nats-server that `taskfleet up` runs as a child process.
//!
//! The child gets its own process group (so a terminal's Ctrl-C reaches only us and we stop it
//! after draining) and a parent-death signal (so even `kill -9` of `up` leaves no orphan).

use crate::sys;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Lowest nats-server version taskfleet works with: the ledger's compare-and-set on a wildcard
/// subject needs 2.11, a takeover's atomic batch with message ids 2.12.1.
pub const MIN_VERSION: (u32, u32, u32) = (2, 12, 1);

/// The local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    /// No usable binary was found.
    #[error("no nats-server >= 2.12.1 found ({0}); run `scripts/ensure-nats.sh` (or `make run`), or set NATS_SERVER_BIN")]
    NotFound(String),
    /// The binary is too old.
    #[error("{path} is nats-server {found}, older than 2.12.1; run `scripts/ensure-nats.sh` or set NATS_SERVER_BIN")]
    TooOld {
        /// The binary.
        path: String,
        /// Its version.
        found: String,
    },
    /// The config file is missing.
    #[error("NATS config {0} not found; run from the repository root or pass --nats-config")]
    NoConfig(String),
    /// Spawning failed.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The server exited or never accepted connections.
    #[error("nats-server did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        /// What went wrong.
        reason: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
}

/// How to run the local server.
#[derive(Debug, Clone)]
pub struct LocalNatsOptions {
    /// Explicit binary (config `nats.server_bin`); else `NATS_SERVER_BIN`, `.tools/nats`, PATH.
    pub bin: Option<PathBuf>,
    /// The server config (`nats.conf`).
    pub conf: PathBuf,
    /// Store directory (JetStream data goes below it).
    pub store_dir: PathBuf,
    /// Log file.
    pub log_file: PathBuf,
    /// Client port.
    pub port: u16,
}

impl LocalNatsOptions {
    /// A throwaway server's options (benchmarks, probes): config `conf`, its store and log
    /// under `dir`, on a free loopback port.
    pub fn scratch(conf: PathBuf, dir: &std::path::Path) -> std::io::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Self {
            bin: None,
            conf,
            store_dir: dir.join("nats"),
            log_file: dir.join("nats.log"),
            port,
        })
    }
}

/// A running child nats-server. Dropping it kills the server; prefer [`LocalNats::stop`].
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    /// Client URL.
    pub url: String,
    /// Process id.
    pub pid: u32,
    /// Log file.
    pub log_file: PathBuf,
}

/// Finds a nats-server binary of at least [`MIN_VERSION`].
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, NatsdError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    candidates.extend(explicit.map(Path::to_path_buf));
    candidates.extend(std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from));
    candidates.push(PathBuf::from(".tools/nats/bin/nats-server"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    let mut too_old = None;
    for c in candidates.into_iter().filter(|c| c.is_file()) {
        match version(&c) {
            Some(v) if v >= MIN_VERSION => return Ok(c),
            Some(v) => too_old = Some((c, v)),
            None => {}
        }
    }
    match too_old {
        Some((path, (a, b, c))) => Err(NatsdError::TooOld {
            path: path.display().to_string(),
            found: format!("{a}.{b}.{c}"),
        }),
        None => Err(NatsdError::NotFound(
            "looked at NATS_SERVER_BIN, .tools/nats/bin and PATH".into(),
        )),
    }
}

/// The version a nats-server binary reports (`nats-server: v2.15.1`).
pub fn version(bin: &Path) -> Option<(u32, u32, u32)> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().find_map(|w| {
        w.strip_prefix('v')
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next().unwrap_or("0").parse().ok()?,
    ))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl LocalNats {
    /// Starts the server and waits until it accepts connections with JetStream enabled.
    pub async fn start(opts: &LocalNatsOptions) -> Result<Self, NatsdError> {
        let bin = find_binary(opts.bin.as_deref())?;
        if !opts.conf.is_file() {
            return Err(NatsdError::NoConfig(opts.conf.display().to_string()));
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&opts.conf)
            .arg("--store_dir")
            .arg(&opts.store_dir)
            .arg("-p")
            .arg(opts.port.to_string())
            .arg("-l")
            .arg(&opts.log_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        sys::die_with_parent(cmd.as_std_mut(), libc::SIGTERM);
        let child = cmd.spawn().map_err(|source| NatsdError::Spawn {
            path: bin.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let mut me = Self {
            child,
            url: format!("nats://127.0.0.1:{}", opts.port),
            pid,
            log_file: opts.log_file.clone(),
        };
        eprintln!(
            "waiting for nats-server ({}, pid {pid}) to accept connections on {} …",
            bin.display(),
            me.url
        );
        me.wait_ready(Duration::from_secs(30)).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), NatsdError> {
        let started = Instant::now();
        let mut next_note = Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.not_ready(format!("it exited with {status}")));
            }
            if let Ok(Ok(client)) =
                tokio::time::timeout(Duration::from_secs(1), async_nats::connect(&self.url)).await
            {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > limit {
                return Err(self.not_ready(format!("no JetStream connection after {limit:?}")));
            }
            if started.elapsed() > next_note {
                eprintln!("still waiting for nats-server on {} …", self.url);
                next_note += Duration::from_secs(5);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn not_ready(&self, reason: String) -> NatsdError {
        NatsdError::NotReady {
            reason,
            log: self.log_file.display().to_string(),
            tail: tail(&self.log_file, 15),
        }
    }

    /// Waits until the server exits without being asked to (killed, crashed): how it ended.
    pub async fn exited(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Stops the server: SIGTERM (it flushes JetStream), SIGKILL after 15 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // A pid we spawned and still own (not yet reaped); gone already is fine.
            let _ = sys::signal_process(pid, libc::SIGTERM);
            eprintln!("stopping nats-server (pid {pid}) …");
            if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn too_old_and_missing_binaries_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(super::version(&fake), Some((2, 9, 10)));
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.15.1'\n").unwrap();
        assert_eq!(super::version(&fake), Some((2, 15, 1)));
        assert!(super::version(&dir.path().join("missing")).is_none());
    }
}
