//! The command line. `main` parses [`Cli`] and calls [`run`], which dispatches to one function.

mod task;

use crate::config::Config;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Create, inspect and change tasks over the API.
    Task(Box<task::TaskArgs>),
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

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Task(args) => return task::run(*args).await,
        Command::Up(args) => {
            serve_command(cli.config, |cfg, token| async move {
                let opts = crate::up::UpOptions {
                    data_dir: args.data_dir,
                    api_addr: args.api_addr,
                    nats_url: args.nats_url,
                    nats_config: args.nats_config,
                };
                crate::up::run(cfg, opts, token).await
            })
            .await
        }
        Command::Api(args) => {
            serve_command(cli.config, |cfg, token| async move {
                let url = args
                    .nats_url
                    .or(cfg.nats.url.clone())
                    .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
                let addr = args.api_addr.unwrap_or(cfg.api.addr);
                let listener = tokio::net::TcpListener::bind(addr).await?;
                tracing::info!(addr = %listener.local_addr()?, "API listening");
                let key = cfg.api.admin_key.clone();
                crate::serve::run_api(&cfg, &url, listener, key.as_ref(), token).await
            })
            .await
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads config, installs telemetry and a signal token, runs `f`, flushes telemetry.
async fn serve_command<F, Fut>(config: Option<PathBuf>, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Config, tokio_util::sync::CancellationToken) -> Fut,
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
