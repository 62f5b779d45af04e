//! Streams and buckets, created idempotently at start-up.

use super::permissions::{self as js_api, user_permissions};
use super::{subjects, BusError, NatsResultExt};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// Sizes and retention of the topology.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Replicas of every stream and bucket (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// How long events (the task log) are kept.
    pub events_max_age: Duration,
    /// How long idempotency keys are remembered.
    pub idempotency_ttl: Duration,
    /// How long dead letters are kept.
    pub dead_letter_max_age: Duration,
    /// Largest message the streams accept, in bytes.
    pub max_msg_size: i32,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(7 * 24 * 3600),
            dead_letter_max_age: Duration::from_secs(30 * 24 * 3600),
            max_msg_size: 2 * 1024 * 1024,
        }
    }
}

/// Handles to the fleet's streams and buckets.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Queued tasks (work-queue retention).
    pub tasks: stream::Stream,
    /// Task events (limits retention, max age).
    pub events: stream::Stream,
    /// Tasks that used up their attempts (limits retention, max age).
    pub dead: stream::Stream,
    /// Relay deliveries, one subject per destination (work-queue retention).
    pub deliveries: stream::Stream,
    /// One record per delivery (attempts, status).
    pub delivery_records: kv::Store,
    /// Destination state (disabled after a 410).
    pub destinations: kv::Store,
    /// Current state of every task.
    pub state: kv::Store,
    /// The stream behind `state`, for reads answered by its leader only.
    pub state_stream: stream::Stream,
    /// Idempotency key → task id.
    pub idempotency: kv::Store,
}

const DEDUP_WINDOW: Duration = Duration::from_secs(120);

impl Topology {
    /// Creates or updates every stream and bucket. A connection whose NATS user may not create
    /// streams (a worker's or the relay's, see `taskfleet nats-config`) opens them instead.
    pub async fn ensure(js: &jetstream::Context, cfg: &TopologyConfig) -> Result<Self, BusError> {
        let create = js_api::stream_api("CREATE", subjects::TASKS_STREAM);
        if let Some(p) = user_permissions(&js.client()).await {
            if !p.may_publish(&create) {
                tracing::debug!("this NATS user may not create streams; opening them");
                return Self::open(js).await;
            }
        }
        let tasks = ensure_stream(
            js,
            stream::Config {
                name: subjects::TASKS_STREAM.into(),
                description: Some("taskfleet: queued tasks".into()),
                subjects: vec![subjects::ALL_TASKS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                duplicate_window: DEDUP_WINDOW,
                allow_direct: true,
                max_message_size: cfg.max_msg_size,
                ..Default::default()
            },
        )
        .await?;
        let events = ensure_stream(
            js,
            stream::Config {
                name: subjects::EVENTS_STREAM.into(),
                description: Some("taskfleet: task events, the task log".into()),
                subjects: vec![subjects::ALL_EVENTS.into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                max_age: cfg.events_max_age,
                duplicate_window: DEDUP_WINDOW,
                allow_direct: true,
                max_message_size: cfg.max_msg_size,
                ..Default::default()
            },
        )
        .await?;
        let dead = ensure_stream(
            js,
            stream::Config {
                name: subjects::DEAD_STREAM.into(),
                description: Some("taskfleet: tasks that used up their attempts".into()),
                subjects: vec![subjects::ALL_DEAD.into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                max_age: cfg.dead_letter_max_age,
                allow_direct: true,
                max_message_size: cfg.max_msg_size,
                ..Default::default()
            },
        )
        .await?;
        let state = ensure_bucket(
            js,
            kv::Config {
                bucket: subjects::STATE_BUCKET.into(),
                description: "taskfleet: current state of every task".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                max_value_size: cfg.max_msg_size,
                ..Default::default()
            },
        )
        .await?;
        let idempotency = ensure_bucket(
            js,
            kv::Config {
                bucket: subjects::IDEMPOTENCY_BUCKET.into(),
                description: "taskfleet: idempotency key to task id".into(),
                history: 1,
                max_age: cfg.idempotency_ttl,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            },
        )
        .await?;
        let deliveries = ensure_stream(
            js,
            stream::Config {
                name: subjects::DELIVERIES_STREAM.into(),
                description: Some("taskfleet: relay deliveries per destination".into()),
                subjects: vec![subjects::ALL_DELIVERIES.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                duplicate_window: DEDUP_WINDOW,
                allow_direct: true,
                max_message_size: cfg.max_msg_size,
                ..Default::default()
            },
        )
        .await?;
        let delivery_records = ensure_bucket(
            js,
            kv::Config {
                bucket: subjects::DELIVERY_BUCKET.into(),
                description: "taskfleet: relay delivery records".into(),
                history: 1,
                max_age: cfg.events_max_age,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                max_value_size: cfg.max_msg_size,
                ..Default::default()
            },
        )
        .await?;
        let destinations = ensure_bucket(
            js,
            kv::Config {
                bucket: subjects::DESTINATION_BUCKET.into(),
                description: "taskfleet: relay destination state".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            },
        )
        .await?;
        // The relay's cursor exists from the first start of any process, so events published
        // before the relay first runs are still delivered.
        events
            .create_consumer(pull::Config {
                durable_name: Some(subjects::RELAY_EVENTS_CONSUMER.into()),
                description: Some("taskfleet relay: every task event".into()),
                filter_subject: subjects::ALL_EVENTS.into(),
                ack_policy: AckPolicy::Explicit,
                // One event at a time: after a crash the unacked event comes back first,
                // so destinations still see events in order.
                ack_wait: Duration::from_secs(10),
                max_deliver: -1,
                max_ack_pending: 1,
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map(|_: async_nats::jetstream::consumer::PullConsumer| ())
            .op("create relay consumer")?;
        Ok(Self {
            tasks,
            events,
            dead,
            deliveries,
            delivery_records,
            destinations,
            state,
            state_stream: js
                .get_stream(subjects::STATE_STREAM)
                .await
                .op("open state stream")?,
            idempotency,
        })
    }
}

impl Topology {
    /// Opens the streams and buckets without changing them, waiting up to 30 s for each one
    /// that a process allowed to create them (the API) has not created yet.
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        Ok(Self {
            tasks: open_stream(js, subjects::TASKS_STREAM).await?,
            events: open_stream(js, subjects::EVENTS_STREAM).await?,
            dead: open_stream(js, subjects::DEAD_STREAM).await?,
            deliveries: open_stream(js, subjects::DELIVERIES_STREAM).await?,
            delivery_records: open_bucket(js, subjects::DELIVERY_BUCKET).await?,
            destinations: open_bucket(js, subjects::DESTINATION_BUCKET).await?,
            state: open_bucket(js, subjects::STATE_BUCKET).await?,
            state_stream: open_stream(js, subjects::STATE_STREAM).await?,
            idempotency: open_bucket(js, subjects::IDEMPOTENCY_BUCKET).await?,
        })
    }
}

const OPEN_WAIT: Duration = Duration::from_secs(30);

async fn open_stream(js: &jetstream::Context, name: &str) -> Result<stream::Stream, BusError> {
    let started = std::time::Instant::now();
    loop {
        match js.get_stream(name).await {
            Ok(s) => return Ok(s),
            Err(e) if started.elapsed() >= OPEN_WAIT => return Err(e).op("open stream"),
            Err(e) => {
                tracing::info!(stream = name, error.message = %e, "waiting for the API to create the stream");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn open_bucket(js: &jetstream::Context, bucket: &str) -> Result<kv::Store, BusError> {
    // Waits on the bucket's stream, then opens the bucket over it.
    open_stream(js, &js_api::kv_stream(bucket)).await?;
    js.get_key_value(bucket).await.op("open bucket")
}

/// Several processes may race here at start-up; the server answers identical creates
/// idempotently, and a lost race is retried.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, BusError> {
    let mut last = None;
    for attempt in 0..5u64 {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return js.get_stream(&config.name).await.op("get stream"),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
            }
        }
    }
    Err(last.expect("loop ran")).op("create stream")
}

async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, BusError> {
    let mut last = None;
    for attempt in 0..5u64 {
        match js.create_or_update_key_value(config.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
            }
        }
    }
    Err(last.expect("loop ran")).op("create bucket")
}
