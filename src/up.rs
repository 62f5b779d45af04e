//! `taskfleet up`: everything on one machine. Starts nats-server from `nats.conf` (unless a NATS
//! URL is given), creates the topology, makes sure an admin key exists, and serves the API until
//! Ctrl-C or SIGTERM. The child nats-server is stopped on every exit path.

use crate::bus::Bus;
use crate::config::Config;
use crate::natsauth::{self, Generated, Role};
use crate::natsd::{LocalNats, LocalNatsOptions};
use crate::{api, serve};
use anyhow::Context;
use secrecy::SecretString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
                started = start => Some((started?, nats_opts)),
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    };
    let url =
        external.unwrap_or_else(|| local.as_ref().map(|l| l.0.url.clone()).unwrap_or_default());
    let users = secure.as_ref().map(|(_, users)| users);
    let about = local.as_ref().map(|(l, _)| local_note(l));
    let services = run_services(&cfg, &opts, &url, about, users, shutdown.clone());
    match local {
        Some((nats, nats_opts)) => keeping_nats_up(nats, &nats_opts, services, &shutdown).await,
        None => services.await,
    }
}

/// Runs `services` while keeping the local nats-server up: one that exits on its own (killed,
/// crashed) is started again on the same store and port, so the fleet's connections come back
/// and nothing it stored is lost. Stopped when `services` end; when it cannot be started
/// again, the fleet stops with that error.
async fn keeping_nats_up(
    mut nats: LocalNats,
    opts: &LocalNatsOptions,
    services: impl std::future::Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut services = std::pin::pin!(services);
    loop {
        let exited = tokio::select! {
            outcome = &mut services => {
                nats.stop().await;
                return outcome;
            }
            exited = nats.exited() => exited,
        };
        let how = exited.map_or_else(|e| e.to_string(), |status| status.to_string());
        tracing::warn!(pid = nats.pid, exit = %how,
            "the local nats-server exited; starting it again on the same store");
        // A server that dies at once is not started again and again.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let restarted = tokio::select! {
            restarted = LocalNats::start(opts) => restarted,
            outcome = &mut services => return outcome,
        };
        match restarted {
            Ok(started) => nats = started,
            Err(e) => {
                tracing::error!(error.message = %e, "cannot start the local nats-server again; stopping the fleet");
                shutdown.cancel();
                let _ = services.await;
                return Err(e.into());
            }
        }
    }
}

/// How the banner names the local nats-server.
fn local_note(nats: &LocalNats) -> String {
    format!(
        "local nats-server pid {}, log {}",
        nats.pid,
        nats.log_file.display()
    )
}

/// Serves the API and runs the relay and one worker per assignee on NATS at `url` until
/// `shutdown`, or until any of them stops; then drains every connection.
async fn run_services(
    cfg: &Config,
    opts: &UpOptions,
    url: &str,
    local: Option<String>,
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
    let mut conns = Connections::open(&cfg, url, users).await?;
    let router = serve::api_router(&cfg, conns.shared.clone(), Some(&key), &shutdown)?;

    // Every subsystem stops when the signal comes or when any of them fails.
    let stop = shutdown.child_token();
    let mut set = Subsystems::new();
    spawn_subsystem(&mut set, "api", api::serve(listener, router, stop.clone()));
    spawn_relay_and_workers(&cfg, &mut conns, &mut set, &stop, api_addr).await?;
    if users.is_some() {
        let dir = opts.data_dir.join("nats-auth");
        eprintln!(
            "NATS: one user per process (--secure), credentials in {}",
            dir.display()
        );
    }
    print_banner(
        api_addr,
        url,
        local.as_deref(),
        &source,
        &cfg.fleet.assignees,
    );
    let outcome = supervise(set, &stop).await;
    eprintln!("shutting down: draining the NATS connection …");
    conns.drain().await;
    outcome
}

/// `up`'s running parts, each ending with its name and result.
type Subsystems = tokio::task::JoinSet<(String, anyhow::Result<()>)>;

/// Runs `part` in `set` under `name`.
fn spawn_subsystem<E>(
    set: &mut Subsystems,
    name: impl Into<String>,
    part: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) where
    anyhow::Error: From<E>,
{
    let name = name.into();
    set.spawn(async move { (name, part.await.map_err(anyhow::Error::from)) });
}

/// Starts the relay and one worker per `fleet.assignees`, each on its connection from `conns`;
/// tasks reach the API at `worker.api_url`, else at `api_addr`.
async fn spawn_relay_and_workers(
    cfg: &Config,
    conns: &mut Connections<'_>,
    set: &mut Subsystems,
    stop: &CancellationToken,
    api_addr: SocketAddr,
) -> anyhow::Result<()> {
    let bus = conns.as_role(Role::Relay, "taskfleet-relay").await?;
    let relay = crate::relay::run(bus, cfg.relay.clone(), stop.clone());
    spawn_subsystem(set, "relay", relay);
    for assignee in &cfg.fleet.assignees {
        let opts = crate::worker::WorkerOptions::from_config(cfg, assignee.clone(), api_addr);
        let bus = conns
            .as_role(Role::Worker(assignee.clone()), &opts.worker_id)
            .await?;
        let worker = crate::worker::run(bus, opts, stop.clone());
        spawn_subsystem(set, format!("worker {assignee}"), worker);
    }
    Ok(())
}

/// Waits for every subsystem; the first to stop (failing or not) before `stop` stops the rest.
/// The first failure is the outcome.
async fn supervise(mut set: Subsystems, stop: &CancellationToken) -> anyhow::Result<()> {
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
    first_error.map_or(Ok(()), Err)
}

/// `up`'s NATS connections: one shared by every part, or with `--secure` (`users`) one per
/// process, each as its own user.
struct Connections<'a> {
    cfg: &'a Config,
    url: &'a str,
    users: Option<&'a Generated>,
    /// The API's connection (the only one without `--secure`); it ensures the topology.
    shared: Bus,
    /// Every connection opened, drained at the end.
    all: Vec<Bus>,
}

impl<'a> Connections<'a> {
    /// Connects as the API and ensures the topology.
    async fn open(
        cfg: &'a Config,
        url: &'a str,
        users: Option<&'a Generated>,
    ) -> anyhow::Result<Self> {
        let shared = serve::connect(&as_role(cfg, users, &Role::Api), url, "taskfleet-up").await?;
        let all = vec![shared.clone()];
        Ok(Self {
            cfg,
            url,
            users,
            shared,
            all,
        })
    }

    /// The connection for `role`: its own one named `name` with `--secure`, else the shared one.
    async fn as_role(&mut self, role: Role, name: &str) -> anyhow::Result<Bus> {
        if self.users.is_none() {
            return Ok(self.shared.clone());
        }
        let bus = serve::connect(&as_role(self.cfg, self.users, &role), self.url, name).await?;
        self.all.push(bus.clone());
        Ok(bus)
    }

    /// Drains every connection.
    async fn drain(self) {
        for bus in self.all {
            serve::drain(&bus.client).await;
        }
    }
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
    local: Option<&str>,
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
        Some(about) => format!("{nats} ({about})"),
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
