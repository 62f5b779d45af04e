//! Delivery: one loop per destination, each on its own durable consumer with one message in
//! flight, so events reach a destination in order (a later one waits while an earlier one is
//! retrying) and a slow or dead destination never holds up the others. Retries are JetStream
//! naks with the schedule's delay, so they survive relay restarts; every attempt is recorded.

use super::destination::Destination;
use super::job::{clip_response, Attempt, DeliveryJob, DeliveryRecord, DeliveryStatus};
use super::retry::{RetrySchedule, Verdict};
use super::sinks::{self, SinkContext};
use crate::bus::{decode, encode, subjects, Bus, NatsResultExt};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every delivery loop shares.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) bus: Bus,
    pub(super) sinks: SinkContext,
    pub(super) schedule: RetrySchedule,
    /// Named destinations, secrets resolved.
    pub(super) named: BTreeMap<String, Destination>,
    /// Where pushes go (`relay.push_destination`).
    pub(super) push_destination: Option<String>,
    running: Mutex<HashSet<String>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Delivery {
    pub(super) fn new(
        bus: Bus,
        sinks: SinkContext,
        schedule: RetrySchedule,
        named: BTreeMap<String, Destination>,
        push_destination: Option<String>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            bus,
            sinks,
            schedule,
            named,
            push_destination,
            running: Mutex::new(HashSet::new()),
            tracker: TaskTracker::new(),
            shutdown,
        })
    }

    /// Starts the delivery loop of `key` unless it runs already.
    pub(super) fn ensure(self: &Arc<Self>, key: &str) {
        if !self.running.lock().expect("lock").insert(key.to_string()) {
            return;
        }
        let me = self.clone();
        let key = key.to_string();
        self.tracker.spawn(async move {
            while !me.shutdown.is_cancelled() {
                match me.run_loop(&key).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(destination = key, error.message = %e, "delivery loop failed; restarting in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Resumes the loops of every destination that has a consumer (after a restart).
    pub(super) async fn resume_all(self: &Arc<Self>) -> Result<(), crate::bus::BusError> {
        let mut names = self.bus.topology.deliveries.consumer_names();
        while let Some(name) = names.next().await {
            let name = name.op("list delivery consumers")?;
            if let Some(key) = name.strip_prefix("relay_") {
                self.ensure(key);
            }
        }
        Ok(())
    }

    /// Waits for every loop to stop (after shutdown).
    pub(super) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    async fn consumer(&self, key: &str) -> Result<PullConsumer, crate::bus::BusError> {
        let name = subjects::delivery_consumer(key);
        self.bus
            .topology
            .deliveries
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subjects::delivery(key),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.sinks.timeout + Duration::from_secs(5),
                    max_deliver: -1,
                    max_ack_pending: 1,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .op("create delivery consumer")
    }

    async fn run_loop(&self, key: &str) -> Result<(), crate::bus::BusError> {
        let consumer = self.consumer(key).await?;
        loop {
            let mut batch = tokio::select! {
                b = consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages() => b.op("fetch delivery")?,
                _ = self.shutdown.cancelled() => return Ok(()),
            };
            let batch = tokio::select! {
                m = batch.next() => m,
                _ = self.shutdown.cancelled() => return Ok(()),
            };
            // A long poll: nothing arrived within its expiry, ask again.
            let Some(msg) = batch else { continue };
            let msg = msg.map_err(|e| crate::bus::BusError::Op {
                op: "fetch delivery",
                source: e,
            })?;
            self.attempt(key, &msg).await;
        }
    }

    /// One attempt of the message at the head of a destination's queue.
    async fn attempt(&self, key: &str, msg: &Message) {
        let job: DeliveryJob = match decode("delivery job", &msg.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(destination = key, error.message = %e, "undecodable delivery; dropping");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let attempt_no = msg.info().map(|i| i.delivered.max(1) as usize).unwrap_or(1);
        let destination = match (&job.destination, &job.name) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(name)) => self.named.get(name).cloned(),
            (None, None) if key == super::job::PUSH_KEY => self
                .push_destination
                .as_ref()
                .and_then(|n| self.named.get(n).cloned()),
            (None, None) => None,
        };
        let Some(destination) = destination else {
            self.finish(
                &job,
                None,
                DeliveryStatus::Dead,
                Some("unknown destination".into()),
            )
            .await;
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        if let Some(reason) = self.disabled(key).await {
            self.finish(&job, None, DeliveryStatus::Dead, Some(reason))
                .await;
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let started = Instant::now();
        let time = crate::domain::now();
        let outcome = sinks::send(&self.sinks, &destination, &job).await;
        let mut attempt = Attempt {
            time,
            status: outcome.status,
            duration_ms: started.elapsed().as_millis() as u64,
            response: outcome.response.as_deref().map(clip_response),
            next_attempt_time: None,
        };
        tracing::info!(destination = key, kind = destination.kind(), delivery = job.id,
            attempt = attempt_no, status = ?outcome.status, verdict = ?outcome.verdict, "delivery attempt");
        match outcome.verdict {
            Verdict::Delivered => {
                self.finish(&job, Some(attempt), DeliveryStatus::Delivered, None)
                    .await;
                let _ = msg.double_ack().await;
            }
            Verdict::Retry { after } => match self.schedule.delay_for(attempt_no, after) {
                Some(delay) => {
                    attempt.next_attempt_time =
                        Some(time + chrono::Duration::from_std(delay).unwrap_or_default());
                    self.finish(&job, Some(attempt), DeliveryStatus::Pending, None)
                        .await;
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
                None => {
                    let why = format!("gave up after {attempt_no} attempts");
                    self.finish(&job, Some(attempt), DeliveryStatus::Dead, Some(why))
                        .await;
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            },
            Verdict::Permanent => {
                let why = "permanent failure (the destination refused it)".to_string();
                self.finish(&job, Some(attempt), DeliveryStatus::Dead, Some(why))
                    .await;
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Verdict::Disable => {
                let why = "the destination answered 410 Gone: disabled".to_string();
                let _ = self
                    .bus
                    .topology
                    .destinations
                    .put(
                        key,
                        serde_json::json!({"disabled": true, "reason": why, "time": time})
                            .to_string()
                            .into(),
                    )
                    .await;
                self.finish(&job, Some(attempt), DeliveryStatus::Dead, Some(why))
                    .await;
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }

    async fn disabled(&self, key: &str) -> Option<String> {
        let v = self.bus.topology.destinations.get(key).await.ok()??;
        let state: serde_json::Value = serde_json::from_slice(&v).ok()?;
        state["disabled"]
            .as_bool()
            .filter(|d| *d)
            .map(|_| state["reason"].as_str().unwrap_or("disabled").to_string())
    }

    /// Appends the attempt to the delivery's record and sets its status.
    async fn finish(
        &self,
        job: &DeliveryJob,
        attempt: Option<Attempt>,
        status: DeliveryStatus,
        reason: Option<String>,
    ) {
        let records = &self.bus.topology.delivery_records;
        for _ in 0..5 {
            let entry = records.entry(&job.id).await.ok().flatten();
            let (mut record, revision) = match entry {
                Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => (
                    decode::<DeliveryRecord>("delivery record", &e.value).ok(),
                    Some(e.revision),
                ),
                _ => (None, None),
            };
            let rec = record.get_or_insert_with(|| DeliveryRecord {
                job: job.clone(),
                status,
                attempts: Vec::new(),
                reason: None,
                updated_time: crate::domain::now(),
            });
            rec.attempts.extend(attempt.clone());
            rec.status = status;
            rec.reason = reason.clone();
            rec.updated_time = crate::domain::now();
            let value = encode(&*rec);
            let written = match revision {
                Some(r) => records.update(&job.id, value, r).await.map(|_| ()).is_ok(),
                None => records.create(&job.id, value).await.map(|_| ()).is_ok(),
            };
            if written {
                return;
            }
        }
        tracing::warn!(delivery = job.id, "could not record the delivery attempt");
    }
}
