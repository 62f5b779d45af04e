//! Wiring one process: connect to NATS, build the API state, serve until shutdown. The `api`,
//! `relay` and `worker` commands (`cli/mod.rs`) and `up` (`up.rs`) start their parts from here:
//! [`run_api`] (or [`api_router`] on a connection of its own) for the API,
//! [`run_with_health`] for a relay or worker process (health endpoint, connection, drain).

use crate::api::{self, auth::Keys, AppState, Limits};
use crate::bus::{Bus, BusError};
use crate::config::Config;
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::tasks::TaskService;
use anyhow::Context;
use secrecy::SecretString;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connects to NATS at `url` as `name` and ensures the topology.
pub async fn connect(cfg: &Config, url: &str, name: &str) -> anyhow::Result<Bus> {
    match Bus::connect(&cfg.connect_options(url, name), &cfg.topology()).await {
        Ok(bus) => Ok(bus),
        // These name the URL already.
        Err(e @ (BusError::Connect { .. } | BusError::ConnectTimeout { .. })) => Err(e.into()),
        Err(e) => {
            Err(e).with_context(|| format!("connecting to NATS at {}", crate::bus::redact_url(url)))
        }
    }
}

/// `taskfleet migrate` against NATS at `url`: converts a store from before task storage v2,
/// saying what it did, then makes sure the rest of the topology exists.
pub async fn migrate(cfg: &Config, url: &str) -> anyhow::Result<()> {
    let client = crate::bus::connect_client(&cfg.connect_options(url, "taskfleet-migrate")).await?;
    let js = async_nats::jetstream::new(client.clone());
    eprintln!("migrating the store at {} …", crate::bus::redact_url(url));
    let report = crate::tasks::migrate(&js, &cfg.topology(), |n| {
        eprintln!("  … {n} tasks carried over");
    })
    .await?;
    if report.was_legacy {
        println!(
            "migrated to task storage v2: {} tasks carried over ({} had been already, {} \
             deleted or unreadable entries skipped)",
            report.tasks, report.already, report.skipped
        );
    } else {
        println!("nothing to migrate: the store is already in task storage v2 (or empty)");
    }
    crate::bus::Topology::ensure(&js, &cfg.topology()).await?;
    drain(&client).await;
    Ok(())
}

/// Builds the API's shared state.
pub fn api_state(
    cfg: &Config,
    bus: Bus,
    admin_key: Option<&SecretString>,
    shutdown: CancellationToken,
) -> anyhow::Result<AppState> {
    let keys = Keys::from_config(&cfg.api, admin_key, cfg.fleet.task_token_secret.as_ref())?;
    let tasks = TaskService::new(bus, Arc::new(Metrics::default()))
        .with_max_delay_days(cfg.scheduling.max_delay_days)
        .with_running_index_cap(cfg.api.running_index_cap);
    Ok(AppState {
        flow: crate::limits::Limits::new(tasks.bus()),
        deliveries: crate::relay::store::DeliveryStore::new(tasks.bus().clone()),
        schedules: crate::schedules::ScheduleService::new(tasks.clone(), cfg.scheduling.catch_up_s),
        tasks,
        keys: Arc::new(keys),
        limits: Limits {
            body: cfg.api.body_limit,
            default_page: cfg.api.default_limit,
            max_page: cfg.api.max_limit,
        },
        shutdown,
        destinations: Arc::new(cfg.relay.destinations.keys().cloned().collect()),
        stall: cfg.relay.stall_rule(),
        overview: Default::default(),
    })
}

/// Starts the retention sweeper (finished tasks older than `events.max_age_s` go) and the
/// answers to workers' queue checks until `shutdown`. Every API process runs one of each; they
/// take turns through the sweeper's cursor and share the checks as a queue group.
pub fn spawn_sweeper(cfg: &Config, tasks: &TaskService, shutdown: &CancellationToken) {
    let sweeper = crate::tasks::Sweeper::new(
        tasks.clone(),
        Duration::from_secs(cfg.events.max_age_s),
        Duration::from_secs(cfg.events.sweep_interval_s.max(1)),
    );
    tokio::spawn(sweeper.run(shutdown.clone()));
    // Workers whose NATS user may not read the queue as JSON ask the API to move an unreadable
    // message aside (see `tasks/unreadable.rs`).
    let checks = tasks.clone().answer_queue_checks(shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = checks.await {
            tracing::warn!(error.message = %e, "cannot answer workers' queue checks");
        }
    });
}

/// Starts the cron scheduler (see `schedules/runner.rs`) until `shutdown`: it applies the
/// config's `[[schedules]]`, then handles fired ticks; every API process runs one, sharing
/// the ticks through one durable consumer.
pub fn spawn_scheduler(cfg: &Config, state: &AppState, shutdown: &CancellationToken) {
    let service = state.schedules.clone();
    tokio::spawn(service.run(cfg.schedules.clone(), shutdown.clone()));
}

/// The API of one process over `bus`: its state ([`api_state`]), its sweeper and scheduler
/// started until `shutdown`, and the router to serve.
pub fn api_router(
    cfg: &Config,
    bus: Bus,
    admin_key: Option<&SecretString>,
    shutdown: &CancellationToken,
) -> anyhow::Result<axum::Router> {
    let state = api_state(cfg, bus, admin_key, shutdown.clone())?;
    spawn_sweeper(cfg, &state.tasks, shutdown);
    spawn_scheduler(cfg, &state, shutdown);
    Ok(api::router(
        state,
        Duration::from_secs(cfg.api.request_timeout_s),
    ))
}

/// Serves the API on `listener` against NATS at `nats_url` until `shutdown` is cancelled, then
/// drains the NATS connection.
pub async fn run_api(
    cfg: &Config,
    nats_url: &str,
    listener: TcpListener,
    admin_key: Option<&SecretString>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bus = connect(cfg, nats_url, "taskfleet-api").await?;
    let client = bus.client.clone();
    let router = api_router(cfg, bus, admin_key, &shutdown)?;
    let served = api::serve(listener, router, shutdown).await;
    drain(&client).await;
    served.context("serving the API")
}

/// Runs a `relay` or `worker` process: serves `health` on `listen` (if set) until the end,
/// connects to NATS at `url` as `name`, runs `run` on that connection, then drains it.
pub async fn run_with_health<F, Fut, E>(
    cfg: &Config,
    url: &str,
    name: &str,
    health: Health,
    listen: Option<SocketAddr>,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Bus, Health) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    anyhow::Error: From<E>,
{
    let _serving = health::spawn(listen, &health).await?;
    let bus = connect(cfg, url, name).await?;
    let client = bus.client.clone();
    let result = run(bus, health).await;
    drain(&client).await;
    Ok(result?)
}

/// Drains the connection, but never waits long for a NATS that is gone.
pub async fn drain(client: &async_nats::Client) {
    let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
}
