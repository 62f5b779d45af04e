//! `taskfleet up`: everything on one machine. Starts nats-server from `nats.conf` (unless a NATS
//! URL is given), creates the topology, makes sure an admin key exists, and serves the API until
//! Ctrl-C or SIGTERM. The child nats-server is stopped on every exit path.

use crate::config::Config;
use crate::natsauth::{self, Generated, Role};
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
    /// One NATS user per process (API, relay, each worker), generated into
    /// `<data-dir>/nats-auth/`; the local server runs `nats_config` plus their auth file.
    pub secure: bool,
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
    let key = crate::secrets::new_api_key();
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
    let secure = match (opts.secure, &external) {
        (false, _) => None,
        (true, Some(_)) => anyhow::bail!(
            "--secure runs its own nats-server; for an external one, generate its users with \
             `taskfleet nats-config` and give each process its env file"
        ),
        (true, None) => Some(secure_files(&cfg, &opts)?),
    };
    let local = match &external {
        Some(_) => None,
        None => {
            let nats_opts = LocalNatsOptions {
                bin: cfg.nats.server_bin.clone(),
                conf: secure
                    .as_ref()
                    .map_or(opts.nats_config.clone(), |(conf, _)| conf.clone()),
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
    let users = secure.as_ref().map(|(_, users)| users);
    let outcome = run_services(&cfg, &opts, &url, local.as_ref(), users, shutdown).await;
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
    users: Option<&Generated>,
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
    let bus = serve::connect(&as_role(&cfg, users, &Role::Api), url, "taskfleet-up").await?;
    // With --secure, the relay and every worker get their own connection as their own user.
    let mut buses = vec![bus.clone()];
    let mut bus_as = async |role: Role, name: &str| -> anyhow::Result<crate::bus::Bus> {
        if users.is_none() {
            return Ok(bus.clone());
        }
        let b = serve::connect(&as_role(&cfg, users, &role), url, name).await?;
        buses.push(b.clone());
        Ok(b)
    };
    let state = serve::api_state(&cfg, bus.clone(), Some(&key), shutdown.clone())?;
    serve::spawn_sweeper(&cfg, &state.tasks, &shutdown);
    serve::spawn_scheduler(&cfg, &state, &shutdown);
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
        let bus = bus_as(Role::Relay, "taskfleet-relay").await?;
        let (token, relay_cfg) = (stop.clone(), cfg.relay.clone());
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
        let bus = bus_as(Role::Worker(assignee.clone()), &opts.worker_id).await?;
        let (token, name) = (stop.clone(), format!("worker {assignee}"));
        set.spawn(async move {
            let r = crate::worker::run(bus, opts, token).await;
            (name, r.map_err(anyhow::Error::from))
        });
    }
    if users.is_some() {
        let dir = opts.data_dir.join("nats-auth");
        eprintln!(
            "NATS: one user per process (--secure), credentials in {}",
            dir.display()
        );
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
    for b in buses {
        let _ = b.client.drain().await;
    }
    first_error.map_or(Ok(()), Err)
}

/// `up --secure`: users in `<data-dir>/nats-auth/` (passwords kept across runs), and
/// `<data-dir>/nats-secure.conf`: the text of `nats.conf` plus an include of their auth file.
/// Connections without credentials (the readiness check) may only ask JetStream's account info.
fn secure_files(cfg: &Config, opts: &UpOptions) -> anyhow::Result<(PathBuf, Generated)> {
    let dir = opts.data_dir.join("nats-auth");
    let users = natsauth::generate(&natsauth::Options {
        assignees: cfg.fleet.assignees.clone(),
        out: dir.join("auth.conf"),
        env_dir: dir,
        rotate: false,
        bcrypt_cost: natsauth::DEFAULT_BCRYPT_COST,
        anonymous_probe: true,
    })?;
    let base = std::fs::read_to_string(&opts.nats_config)
        .with_context(|| format!("reading {}", opts.nats_config.display()))?;
    let conf = opts.data_dir.join("nats-secure.conf");
    let text = format!(
        "# Written by `taskfleet up --secure` from {}: edit that file instead.\n{base}\n\
         # One NATS user per process (taskfleet nats-config).\ninclude \"nats-auth/auth.conf\"",
        opts.nats_config.display()
    );
    write_private(&conf, &text)?;
    Ok((conf, users))
}

/// `cfg` with the NATS credentials of `role` when `users` were generated (`--secure`).
fn as_role(cfg: &Config, users: Option<&Generated>, role: &Role) -> Config {
    let mut cfg = cfg.clone();
    if let Some(c) = users.and_then(|u| u.credentials(role)) {
        cfg.nats.user = Some(c.user.clone());
        cfg.nats.password = Some(c.password.clone());
    }
    cfg
}

/// A random secret kept in `path` (mode 0600), created on first use.
fn ensure_secret(path: &Path) -> anyhow::Result<SecretString> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if s.trim().len() >= 32 {
            return Ok(SecretString::from(s.trim().to_string()));
        }
    }
    let secret = crate::secrets::new_token_secret();
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
    println!("  UI:      {api_url}/  (the dashboard; sign in with the API key)");
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
