//! `taskfleet relay`: wires the fan-out and the delivery loops from the config and runs them
//! until shutdown.

use super::config::RelayConfig;
use super::deliver::Delivery;
use super::fanout::FanOut;
use super::retry::RetrySchedule;
use super::sinks::SinkContext;
use crate::bus::{Bus, BusError};
use crate::domain::EventKind;
use crate::health::{Health, Phase};
use crate::outbound::destination::{Destination, DestinationError};
use crate::outbound::ssrf::AllowList;
use crate::tasks::TaskService;
use crate::text::message::Templates;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The relay could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A destination of the config is unusable.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// Another setting is unusable.
    #[error("relay configuration: {0}")]
    Config(String),
}

/// Named destinations with their `*_env` secrets read from the environment.
pub fn resolve_destinations(
    cfg: &RelayConfig,
) -> Result<BTreeMap<String, Destination>, DestinationError> {
    cfg.destinations
        .iter()
        .map(|(name, d)| Ok((name.clone(), d.clone().resolve_env(name)?)))
        .collect()
}

/// Message templates from the config: the built-in language plus overrides.
pub fn templates(cfg: &RelayConfig) -> Result<Templates, RelayError> {
    let mut overrides = Vec::new();
    for (kind, text) in &cfg.templates {
        let kind: EventKind = serde_json::from_value(serde_json::Value::String(kind.clone()))
            .map_err(|_| {
                RelayError::Config(format!("relay.templates: unknown event type {kind:?}"))
            })?;
        overrides.push((kind, text.clone()));
    }
    Templates::builtin(cfg.language)
        .with_overrides(overrides)
        .map_err(|e| RelayError::Config(format!("relay.templates: {e}")))
}

/// Runs the relay until `shutdown`: fans events out to destinations and delivers them.
pub async fn run(
    bus: Bus,
    cfg: RelayConfig,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    run_with_health(bus, cfg, shutdown, &Health::new("relay")).await
}

/// [`run`], reporting to `health`: running while it fans out, draining from `shutdown` on
/// (deliveries in flight finish), stopped when it returns.
pub async fn run_with_health(
    bus: Bus,
    cfg: RelayConfig,
    shutdown: CancellationToken,
    health: &Health,
) -> Result<(), RelayError> {
    let _stopped = health.stopped_on_drop();
    health.attach(&bus.client);
    let named = resolve_destinations(&cfg)?;
    let allow = AllowList::new(cfg.allow.iter()).map_err(|e| RelayError::Config(e.to_string()))?;
    let sinks = SinkContext::new(allow, Duration::from_secs(cfg.attempt_timeout_s))
        .map_err(|e| RelayError::Config(e.to_string()))?;
    let schedule = RetrySchedule::new(
        cfg.retry_schedule_s
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        0.2,
    )
    .map_err(|e| RelayError::Config(e.to_string()))?;
    let tasks = TaskService::new(bus.clone(), Arc::new(crate::metrics::Metrics::default()));
    let me = crate::registry::Announcement::new(
        &format!("relay@{}", std::process::id()),
        "relay",
        None,
        named.len(),
        Duration::from_secs(cfg.registry_ttl_s),
    );
    let announced = tokio::spawn(crate::registry::keep_announced(
        bus.clone(),
        me,
        Vec::new,
        shutdown.clone(),
    ));
    let delivery = Delivery::new(
        bus,
        sinks,
        schedule,
        named.clone(),
        cfg.push_destination.clone(),
        shutdown.clone(),
    );
    // Loops for the push queue and every named destination from the start, so pushes and
    // replays are delivered even before any task event has used them.
    delivery.ensure(super::job::PUSH_KEY);
    for (name, dest) in &named {
        delivery.ensure(&dest.key(Some(name)));
    }
    delivery.resume_all().await?;
    let mut fanout = FanOut::new(
        tasks,
        delivery.clone(),
        named,
        cfg.routes.clone(),
        templates(&cfg)?,
        Duration::from_secs(cfg.throttle_s),
        Duration::from_secs(cfg.stall_after_s),
    );
    fanout.push_destination = cfg.push_destination.clone();
    tracing::info!(
        destinations = cfg.destinations.len(),
        routes = cfg.routes.len(),
        "relay running"
    );
    health.set_phase(Phase::Running);
    let result = fanout.run(shutdown.clone()).await;
    health.set_phase(Phase::Draining);
    shutdown.cancel();
    delivery.wait().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), announced).await;
    Ok(result?)
}
