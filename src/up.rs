//! `taskfleet up`: everything on one machine. Starts nats-server from `nats.conf` (unless a NATS
//! URL is given), creates the topology, makes sure an admin key exists, and serves the API until
//! Ctrl-C or SIGTERM. The child nats-server is stopped on every exit path.

use crate::config::Config;
use crate::natsd::{LocalNats, LocalNatsOptions};
use crate::{api, serve};
use anyhow::Context;
use secrecy::SecretString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Options of `taskfleet up` beyond the config file.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// NATS store and local state (`./data`).
    pub data_dir: PathBuf,
    /// API listen address (else the config's `api.addr`).
    pub api_addr: Option<SocketAddr>,
    /// External NATS (else the config's `nats.url`, else a local nats-server).
    pub nats_url: Option<String>,
    /// The nats-server config for the local server.
    pub nats_config: PathBuf,
}

/// Where the admin key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `TASKFLEET_API_KEY` or the config file.
    Configured,
    /// An existing `<data-dir>/api-key`.
    File(PathBuf),
    /// Generated now into `<data-dir>/api-key`.
    Generated(PathBuf),
}

/// The admin key: configured, else read from `<data-dir>/api-key`, else generated there (0600).
pub fn ensure_api_key(cfg: &Config, data_dir: &Path) -> anyhow::Result<(SecretString, KeySource)> {
    if let Some(k) = &cfg.api.admin_key {
        return Ok((k.clone(), KeySource::Configured));
    }
    let path = data_dir.join("api-key");
    if path.exists() {
        let key = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string();
        if key.len() >= 16 {
            return Ok((SecretString::from(key), KeySource::File(path)));
        }
        anyhow::bail!(
            "{} is empty or too short; delete it to generate a new key",
            path.display()
        );
    }
    let key = format!(
        "tfk_{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{key}")?;
    Ok((SecretString::from(key), KeySource::Generated(path)))
}

/// Runs the fleet until `shutdown` is cancelled.
pub async fn run(cfg: Config, opts: UpOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    let external = opts.nats_url.clone().or(cfg.nats.url.clone());
    let local = match &external {
        Some(_) => None,
        None => {
            let nats_opts = LocalNatsOptions {
                bin: cfg.nats.server_bin.clone(),
                conf: opts.nats_config.clone(),
                store_dir: opts.data_dir.join("nats"),
                log_file: opts.data_dir.join("nats-server.log"),
                port: cfg.nats.local_port,
            };
            let start = LocalNats::start(&nats_opts);
            tokio::select! {
                started = start => Some(started?),
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    };
    let url = external.unwrap_or_else(|| local.as_ref().map(|l| l.url.clone()).unwrap_or_default());
    let outcome = run_services(&cfg, &opts, &url, local.as_ref(), shutdown).await;
    if let Some(l) = local {
        l.stop().await;
    }
    outcome
}

async fn run_services(
    cfg: &Config,
    opts: &UpOptions,
    url: &str,
    local: Option<&LocalNats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (key, source) = ensure_api_key(cfg, &opts.data_dir)?;
    let mut cfg = cfg.clone();
    if cfg.fleet.task_token_secret.is_none() {
        cfg.fleet.task_token_secret =
            Some(ensure_secret(&opts.data_dir.join("task-token-secret"))?);
    }
    let addr = opts.api_addr.unwrap_or(cfg.api.addr);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the API to {addr} (is another taskfleet running?)"))?;
    let api_addr = listener.local_addr()?;
    eprintln!(
        "creating streams and buckets on {} …",
        crate::bus::redact_url(url)
    );
    let bus = serve::connect(&cfg, url, "taskfleet-up").await?;
    let state = serve::api_state(&cfg, bus.clone(), Some(&key), shutdown.clone())?;
    let router = api::router(state, Duration::from_secs(cfg.api.request_timeout_s));

    // Every subsystem stops when the signal comes or when any of them fails.
    let stop = shutdown.child_token();
    let mut set = tokio::task::JoinSet::new();
    let token = stop.clone();
    set.spawn(async move {
        let r = api::serve(listener, router, token).await;
        ("api".to_string(), r.map_err(anyhow::Error::from))
    });
    let api_url = cfg
        .worker
        .api_url
        .clone()
        .unwrap_or_else(|| format!("http://{api_addr}"));
    {
        let (bus, token, relay_cfg) = (bus.clone(), stop.clone(), cfg.relay.clone());
        set.spawn(async move {
            let r = crate::relay::run(bus, relay_cfg, token).await;
            ("relay".to_string(), r.map_err(anyhow::Error::from))
        });
    }
    for assignee in &cfg.fleet.assignees {
        let opts = crate::worker::WorkerOptions {
            assignee: assignee.clone(),
            concurrency: cfg.worker.concurrency,
            worker_id: crate::worker::default_worker_id(assignee),
            api_url: api_url.clone(),
            task_token_secret: cfg.fleet.task_token_secret.clone(),
            settings: cfg.worker.clone(),
        };
        let (bus, token, name) = (bus.clone(), stop.clone(), format!("worker {assignee}"));
        set.spawn(async move {
            let r = crate::worker::run(bus, opts, token).await;
            (name, r.map_err(anyhow::Error::from))
        });
    }
    print_banner(api_addr, url, local, &source, &cfg.fleet.assignees);
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let (name, result) = joined.unwrap_or_else(|e| ("a subsystem".into(), Err(e.into())));
        match result {
            Ok(()) if !stop.is_cancelled() => {
                tracing::warn!(subsystem = name, "stopped unexpectedly; stopping the fleet");
                stop.cancel();
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(subsystem = name, error.cause_chain = ?e, "failed; stopping the fleet");
                first_error.get_or_insert(e.context(format!("{name} failed")));
                stop.cancel();
            }
        }
    }
    eprintln!("shutting down: draining the NATS connection …");
    let _ = bus.client.drain().await;
    first_error.map_or(Ok(()), Err)
}

/// A random secret kept in `path` (mode 0600), created on first use.
fn ensure_secret(path: &Path) -> anyhow::Result<SecretString> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if s.trim().len() >= 32 {
            return Ok(SecretString::from(s.trim().to_string()));
        }
    }
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    write_private(path, &secret)?;
    Ok(SecretString::from(secret))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

fn print_banner(
    api: SocketAddr,
    nats: &str,
    local: Option<&LocalNats>,
    source: &KeySource,
    workers: &[crate::domain::Assignee],
) {
    let api_url = format!("http://{api}");
    let key_line = match source {
        KeySource::Configured => "from TASKFLEET_API_KEY / config".to_string(),
        KeySource::File(p) => format!(
            "in {} (export TASKFLEET_API_KEY=$(cat {}))",
            p.display(),
            p.display()
        ),
        KeySource::Generated(p) => format!(
            "generated into {} (mode 0600; export TASKFLEET_API_KEY=$(cat {}))",
            p.display(),
            p.display()
        ),
    };
    let nats_line = match local {
        Some(l) => format!(
            "{} (local nats-server pid {}, log {})",
            nats,
            l.pid,
            l.log_file.display()
        ),
        None => format!("{} (external)", crate::bus::redact_url(nats)),
    };
    println!("taskfleet is up");
    println!("  API:     {api_url}");
    println!("  NATS:    {nats_line}");
    println!("  API key: {key_line}");
    if workers.is_empty() {
        println!("  workers: none (list assignees in [fleet] assignees of a --config file)");
    } else {
        let names: Vec<&str> = workers.iter().map(|a| a.as_str()).collect();
        println!("  workers: {}", names.join(", "));
    }
    println!(
        "  try:     curl -H \"X-Bot-Key: $TASKFLEET_API_KEY\" \"{api_url}/api/tasks/pending?assigned_to=anna\""
    );
    println!("Press Ctrl-C to stop.");
}
