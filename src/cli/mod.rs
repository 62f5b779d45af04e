//! The command line. `main` parses [`Cli`] and calls [`run`], which dispatches to one function.

mod api_flags;
mod delivery;
mod limits;
mod output;
mod pulse;
mod pulse_status;
mod schedule;
mod spool;
mod task;
mod workers;

use crate::config::Config;
use crate::health::Health;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// taskfleet: a task fleet for multi-container AI-bot deployments, on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "taskfleet", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML config file (see config/taskfleet.example.toml).
    #[arg(long, global = true, env = "TASKFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: a local nats-server (unless --nats-url), the API.
    Up(UpArgs),
    /// Serve the API alone against an existing NATS.
    Api(ApiArgs),
    /// Pull an assignee's tasks in strict priority order and run them.
    Worker(WorkerArgs),
    /// Deliver task events to chat sessions and webhooks.
    Relay(RelayArgs),
    /// List and replay the relay's deliveries over the API.
    Delivery(Box<delivery::DeliveryArgs>),
    /// What a bot calls from inside a task: start, next, heartbeat, progress, done, fail, push,
    /// status, cleanup.
    Pulse(Box<pulse::PulseArgs>),
    /// Seed 000's async-task verbs (start, done, fail, push, status); also how the binary
    /// behaves when invoked as `async-task`.
    #[command(name = "async-task")]
    AsyncTask(Box<pulse::AsyncTaskArgs>),
    /// Create, inspect and change tasks over the API.
    Task(Box<task::TaskArgs>),
    /// The workers and relays alive now (the worker registry), over the API.
    Workers(Box<workers::WorkersArgs>),
    /// Flow control over the API: keys in use with their limits, holders and waiting tasks;
    /// `limits set` / `limits rm` change a key's override.
    Limits(Box<limits::LimitsArgs>),
    /// Cron schedules over the API: create, list, get, pause, resume, trigger, delete.
    Schedule(Box<schedule::ScheduleArgs>),
    /// Write the NATS server's users and permissions (one user per process) and an env file
    /// with each process's credentials.
    #[command(name = "nats-config")]
    NatsConfig(NatsConfigArgs),
    /// Write the fleet-wide secrets (admin API key, task-token secret, and the secrets the
    /// --config file names) as an env file for compose and Kubernetes.
    Secrets(SecretsArgs),
    /// Convert a store written before task storage v2 (task state in the KV bucket `tasks`)
    /// into the task ledger, in place. Stop every taskfleet process first.
    Migrate(MigrateArgs),
}

/// Flags of `taskfleet migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The NATS server or cluster holding the store.
    #[arg(long, env = "NATS_URL", conflicts_with = "data_dir")]
    pub nats_url: Option<String>,
    /// The data dir of a store that `taskfleet up` runs: its nats-server is started for the
    /// migration (with --nats-config) and stopped after.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Config of that local nats-server.
    #[arg(long, default_value = "nats.conf")]
    pub nats_config: PathBuf,
}

/// Flags of `taskfleet secrets`.
#[derive(Debug, Args)]
pub struct SecretsArgs {
    /// The env file to write (mode 0600), e.g. deploy/fleet.env.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing file (all new secrets: every service must get them).
    #[arg(long)]
    pub force: bool,
}

/// Flags of `taskfleet nats-config`.
#[derive(Debug, Args)]
pub struct NatsConfigArgs {
    /// Assignees that get a worker user (`worker-<name>`), comma separated: anna,trump.
    #[arg(long, value_delimiter = ',', required = true)]
    pub assignees: Vec<String>,
    /// The authorization block to write, for the server config to `include`.
    #[arg(long)]
    pub out: PathBuf,
    /// Directory for one `<user>.env` per process (TASKFLEET_NATS__USER / __PASSWORD).
    #[arg(long)]
    pub env_dir: PathBuf,
    /// New passwords for every user (else those in existing env files are kept).
    #[arg(long)]
    pub rotate: bool,
}

/// Flags of `taskfleet up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// NATS store and local state (the generated API key goes here).
    #[arg(long, env = "TASKFLEET_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// API listen address [default: 127.0.0.1:8090].
    #[arg(long, env = "TASKFLEET_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Use this NATS server or cluster instead of starting one.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Config of the local nats-server.
    #[arg(long, default_value = "nats.conf")]
    pub nats_config: PathBuf,
    /// Per-process NATS users: the API, the relay and each worker connect with their own
    /// least-privilege credentials (generated into <data-dir>/nats-auth/).
    #[arg(long)]
    pub secure: bool,
}

/// Flags of `taskfleet api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Listen address [default: 127.0.0.1:8090].
    #[arg(long, env = "TASKFLEET_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// NATS server or cluster [default: nats://127.0.0.1:4222].
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
}

/// Flags of `taskfleet worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Whose tasks to run, e.g. anna.
    #[arg(long, env = "TASKFLEET_ASSIGNEE")]
    pub assignee: String,
    /// Tasks run at once [default: worker.concurrency, 4].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// NATS server or cluster [default: nats://127.0.0.1:4222].
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Serve GET /healthz and /readyz here [default: worker.health_listen, else none].
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
}

/// Flags of `taskfleet relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// NATS server or cluster [default: nats://127.0.0.1:4222].
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Serve GET /healthz and /readyz here [default: relay.health_listen, else none].
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
}

/// Parses the command line; invoked as `async-task` (a symlink), the binary takes seed 000's
/// verbs directly: `async-task start "…"` is `taskfleet async-task start "…"`.
pub fn parse() -> Cli {
    use clap::Parser;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_stem())
        .map(|s| s.to_string_lossy().into_owned());
    if invoked_as.as_deref() == Some("async-task") {
        args.insert(1, "async-task".into());
    }
    Cli::parse_from(args)
}

impl Cli {
    /// Whether the command runs best on one thread: a worker process (see `main.rs`).
    pub fn one_thread(&self) -> bool {
        matches!(self.command, Command::Worker(_))
    }

    /// Whether the command prints and exits (everything but the services and `migrate`), so a
    /// closed pipe on its output may end it (see [`crate::sys::default_sigpipe`]).
    pub fn prints_and_exits(&self) -> bool {
        !matches!(
            self.command,
            Command::Up(_)
                | Command::Api(_)
                | Command::Worker(_)
                | Command::Relay(_)
                | Command::Migrate(_)
        )
    }
}

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let config = cli.config;
    let outcome = match cli.command {
        Command::Task(args) => return task::run(*args).await,
        Command::Workers(args) => return workers::run(*args).await,
        Command::Limits(args) => return limits::run(*args).await,
        Command::Schedule(args) => return schedule::run(*args).await,
        Command::Up(args) => serve_command(config, |cfg, t| up(cfg, args, t)).await,
        Command::Api(args) => serve_command(config, |cfg, t| api(cfg, args, t)).await,
        Command::Worker(args) => serve_command(config, |cfg, t| worker(cfg, args, t)).await,
        Command::Relay(args) => serve_command(config, |cfg, t| relay(cfg, args, t)).await,
        Command::Delivery(args) => return delivery::run(*args).await,
        Command::Pulse(args) => return pulse::run(*args).await,
        Command::AsyncTask(args) => return pulse::run_async_task(*args).await,
        Command::NatsConfig(args) => nats_config(args),
        Command::Secrets(args) => secrets(config, args),
        Command::Migrate(args) => serve_command(config, |cfg, _| migrate(cfg, args)).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn nats_url(flag: Option<String>, cfg: &Config) -> String {
    given(flag)
        .or(cfg.nats.url.clone())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into())
}

/// A `--nats-url` (or `NATS_URL`) left empty is not given: the config's or the default applies.
fn given(url: Option<String>) -> Option<String> {
    url.filter(|u| !u.trim().is_empty())
}

async fn up(cfg: Config, args: UpArgs, token: CancellationToken) -> anyhow::Result<()> {
    let opts = crate::up::UpOptions {
        data_dir: args.data_dir,
        api_addr: args.api_addr,
        nats_url: given(args.nats_url),
        nats_config: args.nats_config,
        secure: args.secure,
    };
    crate::up::run(cfg, opts, token).await
}

fn nats_config(args: NatsConfigArgs) -> anyhow::Result<()> {
    let assignees = args
        .assignees
        .iter()
        .filter(|a| !a.trim().is_empty())
        .map(|a| crate::domain::Assignee::parse(a.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let generated = crate::natsauth::generate(&crate::natsauth::Options {
        assignees,
        out: args.out,
        env_dir: args.env_dir,
        rotate: args.rotate,
        bcrypt_cost: crate::natsauth::DEFAULT_BCRYPT_COST,
        anonymous_probe: false,
    })?;
    let file = generated.auth_file.display();
    println!("wrote {file} (mode 0600): users, bcrypt password hashes, permissions");
    for c in &generated.users {
        let kept = if c.reused {
            "password kept"
        } else {
            "new password"
        };
        println!(
            "wrote {} (mode 0600): {}, {kept}",
            c.env_file.display(),
            c.user
        );
    }
    println!(
        "next: include it from the server config (`include \"<its path relative to that file>\"`),"
    );
    println!("      restart nats-server, and give each process only its own env file");
    Ok(())
}

fn secrets(config: Option<PathBuf>, args: SecretsArgs) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref())?;
    let written = crate::secrets::write_env_file(&args.out, &cfg, args.force)?;
    println!(
        "wrote {} (mode 0600), new random values: {}",
        written.path.display(),
        written.generated.join(", ")
    );
    for (name, what) in &written.to_fill {
        println!("  still to set in it: {name} ({what})");
    }
    Ok(())
}

async fn migrate(cfg: Config, args: MigrateArgs) -> anyhow::Result<()> {
    let local = match &args.data_dir {
        Some(dir) => Some(
            crate::natsd::LocalNats::start(&crate::natsd::LocalNatsOptions {
                bin: cfg.nats.server_bin.clone(),
                conf: args.nats_config.clone(),
                store_dir: dir.join("nats"),
                log_file: dir.join("nats-server.log"),
                port: cfg.nats.local_port,
            })
            .await?,
        ),
        None => None,
    };
    let url = match &local {
        Some(l) => l.url.clone(),
        None => nats_url(args.nats_url, &cfg),
    };
    let result = crate::serve::migrate(&cfg, &url).await;
    if let Some(l) = local {
        l.stop().await;
    }
    result
}

async fn api(cfg: Config, args: ApiArgs, token: CancellationToken) -> anyhow::Result<()> {
    let url = nats_url(args.nats_url, &cfg);
    let key = cfg.api.admin_key.clone();
    if key.is_none() && cfg.api.keys.is_empty() {
        anyhow::bail!(
            "no API key configured: set TASKFLEET_API_KEY or add [[api.keys]] to the config"
        );
    }
    let addr = args.api_addr.unwrap_or(cfg.api.addr);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    crate::serve::run_api(&cfg, &url, listener, key.as_ref(), token).await
}

async fn relay(cfg: Config, args: RelayArgs, token: CancellationToken) -> anyhow::Result<()> {
    let url = nats_url(args.nats_url, &cfg);
    let listen = args.health_listen.or(cfg.relay.health_listen);
    let relay_cfg = cfg.relay.clone();
    let health = Health::new("relay");
    crate::serve::run_with_health(
        &cfg,
        &url,
        "taskfleet-relay",
        health,
        listen,
        |bus, h| async move { crate::relay::run_with_health(bus, relay_cfg, token, &h).await },
    )
    .await
}

async fn worker(cfg: Config, args: WorkerArgs, token: CancellationToken) -> anyhow::Result<()> {
    let url = nats_url(args.nats_url, &cfg);
    let assignee = crate::domain::Assignee::parse(&args.assignee)?;
    let mut opts = crate::worker::WorkerOptions::from_config(&cfg, assignee, cfg.api.addr);
    opts.concurrency = args.concurrency.unwrap_or(opts.concurrency);
    if cfg.fleet.task_token_secret.is_none() {
        tracing::warn!(
            "no fleet.task_token_secret: running tasks get no TASKFLEET_TASK_TOKEN (set \
             TASKFLEET_FLEET__TASK_TOKEN_SECRET to the API's; `up` writes its own to \
             <data-dir>/task-token-secret)"
        );
    }
    let listen = args.health_listen.or(cfg.worker.health_listen);
    let name = opts.worker_id.clone();
    let health = Health::new("worker");
    crate::serve::run_with_health(&cfg, &url, &name, health, listen, |bus, h| async move {
        crate::worker::run_with_health(bus, opts, token, &h).await
    })
    .await
}

/// Loads config, installs telemetry and a signal token, runs `f`, flushes telemetry.
async fn serve_command<F, Fut>(config: Option<PathBuf>, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cfg = Config::load(config.as_deref())?;
    let guard = crate::telemetry::init(&cfg.telemetry, "taskfleet");
    let token = crate::shutdown::token_on_signal();
    let result = f(cfg, token).await;
    if let Err(e) = &result {
        tracing::error!(error.cause_chain = ?e, error.message = %e, "taskfleet stopped with an error");
    }
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .ok();
    result
}
