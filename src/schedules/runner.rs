//! The scheduler every API process runs: it applies the config's `[[schedules]]`, then pulls
//! fired ticks from the durable consumer `scheduler` (shared by every API replica: `TASKS` is a
//! work queue, so each tick goes to one of them) and checks every schedule's armed tick at
//! start and every [`AUDIT_EVERY`].

use super::model::{ScheduleSpec, Tick};
use super::{ScheduleError, ScheduleService};
use crate::bus::{subjects, Bus, NatsResultExt};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each API process checks that every active schedule has its tick armed.
pub(super) const AUDIT_EVERY: Duration = Duration::from_secs(30);

/// How long a fired tick may be worked on before the broker hands it to another replica.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The shared durable consumer of fired ticks (created idempotently by every API process).
async fn consumer(bus: &Bus) -> Result<PullConsumer, ScheduleError> {
    let config = pull::Config {
        durable_name: Some(subjects::SCHEDULER_CONSUMER.into()),
        description: Some("taskfleet: fired cron schedule ticks, handled by the API".into()),
        filter_subject: subjects::SCHEDULE_TICKS.into(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    };
    Ok(bus
        .topology
        .tasks
        .get_or_create_consumer(subjects::SCHEDULER_CONSUMER, config)
        .await
        .op("create scheduler consumer")?)
}

impl ScheduleService {
    /// Runs the scheduler until `shutdown`: applies `config` (the config file's schedules),
    /// then handles fired ticks, starting over after NATS trouble.
    pub async fn run(self, config: Vec<ScheduleSpec>, shutdown: CancellationToken) {
        while let Err(e) = self.apply_config(&config).await {
            tracing::warn!(error.message = %e, "cannot apply the config's schedules; retrying");
            if !e.is_transient() || sleep_or_stop(&shutdown, Duration::from_secs(2)).await {
                break;
            }
        }
        loop {
            match self.consume(&shutdown).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error.message = %e, "scheduler interrupted; restarting"),
            }
            if sleep_or_stop(&shutdown, Duration::from_secs(2)).await {
                return;
            }
        }
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), ScheduleError> {
        let mut messages = consumer(self.bus())
            .await?
            .messages()
            .await
            .op("pull schedule ticks")?;
        let mut audit = tokio::time::interval(AUDIT_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = audit.tick() => self.audit().await,
                next = messages.next() => match next {
                    Some(Ok(m)) => self.handle(m).await,
                    Some(Err(e)) => return Err(crate::bus::BusError::from_op("pull schedule ticks", e).into()),
                    None => return Err(crate::bus::BusError::Incompatible("the tick consumer ended".into()).into()),
                },
            }
        }
    }

    /// One fired tick: handled and acked; a malformed one is dropped with a log line; one that
    /// failed for a reason that may pass (NATS) comes back in a few seconds.
    async fn handle(&self, m: Message) {
        let tick = match serde_json::from_slice::<Tick>(&m.payload) {
            Ok(t) if subjects::schedule_tick(&t.schedule) == m.subject.as_str() => t,
            Ok(_) | Err(_) => {
                tracing::warn!(subject = %m.subject, "dropped a malformed schedule tick");
                let _ = m.ack_with(AckKind::Term).await;
                return;
            }
        };
        let reply = match self.fire(&tick).await {
            Ok(_) => AckKind::Ack,
            Err(e) if e.is_transient() => {
                tracing::warn!(schedule = %tick.schedule, error.message = %e, "schedule tick failed; retrying");
                AckKind::Nak(Some(Duration::from_secs(2)))
            }
            Err(e) => {
                tracing::warn!(schedule = %tick.schedule, error.message = %e, "schedule tick dropped");
                AckKind::Ack
            }
        };
        let _ = m.ack_with(reply).await;
    }
}

/// Waits `d` unless `shutdown` comes first; true when it did.
async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
