//! Streams and buckets, created idempotently at start-up.

use super::permissions::{self as js_api, user_permissions};
use super::{subjects, BusError, NatsResultExt};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PriorityPolicy};
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// Sizes and retention of the topology.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Replicas of every stream and bucket (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// How long finished tasks and their events (the task log) are kept after they finish
    /// (the sweeper removes them; pending and running tasks are never aged out). Delivery
    /// records are kept as long.
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
    /// The task ledger: every event with the task's state after it (limits retention, no age
    /// limit: the sweeper removes finished tasks).
    pub events: stream::Stream,
    /// Tasks that used up their attempts (limits retention, max age).
    pub dead: stream::Stream,
    /// Relay deliveries, one subject per destination (work-queue retention).
    pub deliveries: stream::Stream,
    /// One record per delivery (attempts, status).
    pub delivery_records: kv::Store,
    /// Destination state (disabled after a 410).
    pub destinations: kv::Store,
    /// Idempotency key → task id.
    pub idempotency: kv::Store,
    /// taskfleet's own bookkeeping (the sweeper's cursor).
    pub meta: kv::Store,
    /// Cron schedules: definition and state per name.
    pub schedules: kv::Store,
}

/// The ledger layout this build writes, kept in the `EVENTS` stream's metadata.
pub const LAYOUT: &str = "2";
/// The metadata key holding [`LAYOUT`].
pub const LAYOUT_KEY: &str = "taskfleet_layout";

/// The `EVENTS` stream as storage v2 has it: written on `ledger.>`, stored as `events.>`,
/// republished on core NATS once stored, kept until the sweeper removes finished tasks.
pub fn ledger_config(cfg: &TopologyConfig) -> stream::Config {
    stream::Config {
        name: subjects::EVENTS_STREAM.into(),
        description: Some("taskfleet: the task ledger (events with the task's state)".into()),
        subjects: vec![
            subjects::LEDGER_WRITES.into(),
            subjects::INDEX_WRITES.into(),
        ],
        subject_transform: Some(stream::SubjectTransform {
            source: subjects::LEDGER_WRITES.into(),
            destination: subjects::ALL_EVENTS.into(),
        }),
        republish: Some(stream::Republish {
            source: subjects::ALL_EVENTS.into(),
            destination: subjects::ALL_EVENTS.into(),
            headers_only: false,
        }),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: DEDUP_WINDOW,
        allow_direct: true,
        allow_atomic_publish: true,
        max_message_size: cfg.max_msg_size,
        // A per-subject limit no task reaches, set for the size of the stream's blocks: with
        // one, nats-server stores a file stream in 4 MB blocks instead of 8 MB (it picks the
        // size from the limits; there is no setting for the size itself), and a read of a task
        // whose block is not cached loads and indexes half as much (docs/benchmarks.md, "4 MB
        // ledger blocks").
        max_messages_per_subject: LEDGER_MAX_PER_SUBJECT,
        metadata: [(LAYOUT_KEY.to_string(), LAYOUT.to_string())].into(),
        ..Default::default()
    }
}

const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// The ledger's per-subject limit: a task's records of one kind (`events.<a>.<id>.<type>`)
/// never come near it; see [`ledger_config`].
const LEDGER_MAX_PER_SUBJECT: i64 = i64::MAX;

/// The stream of the KV bucket `deliveries` (one record per delivery, its status in its key;
/// see `relay/store/record.rs`): what async-nats makes of a bucket with history 1, plus atomic
/// batches, so that a record changing status (a delete marker on the old key, the record on
/// the new one) is one write.
fn delivery_records_config(cfg: &TopologyConfig) -> stream::Config {
    stream::Config {
        name: js_api::kv_stream(subjects::DELIVERY_BUCKET),
        description: Some("taskfleet: relay delivery records".into()),
        subjects: vec![js_api::kv_keys(subjects::DELIVERY_BUCKET)],
        max_messages_per_subject: 1,
        max_age: cfg.events_max_age,
        max_message_size: cfg.max_msg_size,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        allow_atomic_publish: true,
        // Delete markers expire (`relay::store::MARKER_TTL_S`).
        allow_message_ttl: true,
        ..Default::default()
    }
}

/// A work-queue stream `(name, what it holds, subjects)`: `TASKS`, `DELIVERIES`.
fn work_queue_config(
    cfg: &TopologyConfig,
    (name, what, filter): (&str, &str, &str),
) -> stream::Config {
    stream::Config {
        name: name.into(),
        description: Some(format!("taskfleet: {what}")),
        subjects: vec![filter.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: DEDUP_WINDOW,
        allow_direct: true,
        max_message_size: cfg.max_msg_size,
        ..Default::default()
    }
}

/// `TASKS`: the queue (`tasks.>`), plus the broker-held schedules (message schedules, ADR-51)
/// that fire into it: delayed tasks on `scheduled.<assignee>.<id>` and cron schedules' next
/// ticks on `schedules.<name>.next`, firing into `schedules.<name>.tick`.
fn tasks_config(cfg: &TopologyConfig) -> stream::Config {
    let queue = (subjects::TASKS_STREAM, "queued tasks", subjects::ALL_TASKS);
    let mut config = work_queue_config(cfg, queue);
    config.subjects.push(subjects::ALL_SCHEDULED.into());
    config.subjects.push(subjects::ALL_SCHEDULES.into());
    config.allow_message_schedules = true;
    config
}

/// `TASKS_DEAD`: tasks that used up their attempts (or were refused), kept `dead_letter_max_age`.
fn dead_config(cfg: &TopologyConfig) -> stream::Config {
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
    }
}

/// A KV bucket `(name, what it holds)` keeping one value per key (`max_age` zero: forever).
fn bucket_config(
    cfg: &TopologyConfig,
    (name, what): (&str, &str),
    max_age: Duration,
) -> kv::Config {
    kv::Config {
        bucket: name.into(),
        description: format!("taskfleet: {what}"),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// The worker registry (see `registry.rs`): each announcement carries its own TTL; an expired
/// one leaves a delete marker for a second.
fn registry_config(cfg: &TopologyConfig) -> kv::Config {
    let what = (subjects::WORKER_BUCKET, "live workers and relays");
    kv::Config {
        limit_markers: Some(Duration::from_secs(1)),
        ..bucket_config(cfg, what, Duration::ZERO)
    }
}

/// The relay's cursor on the ledger. It exists from the first start of any process, so events
/// published before the relay first runs are still delivered.
async fn ensure_relay_cursor(events: &stream::Stream) -> Result<(), BusError> {
    events
        .create_consumer(relay_cursor_config())
        .await
        .map(|_: async_nats::jetstream::consumer::PullConsumer| ())
        .op("create relay consumer")
}

/// The relay's cursor on the ledger: a window of events in flight, all to one relay replica
/// at a time (the pinned client of group [`subjects::RELAY_GROUP`]), which fans them out in
/// order; after a crash the unacked events come back first (the next holder waits for them),
/// so destinations still see events in order.
fn relay_cursor_config() -> pull::Config {
    let (name, filter) = (subjects::RELAY_EVENTS_CONSUMER, subjects::ALL_EVENTS);
    let ack_wait = Duration::from_secs(10);
    pull::Config {
        description: Some("taskfleet relay: every task event".into()),
        deliver_policy: DeliverPolicy::New,
        ..relay_consumer_config(name, filter, ack_wait, RELAY_CURSOR_WINDOW)
    }
}

/// A durable consumer `name` of the relay on `filter`: up to `window` messages out, all to one
/// relay replica at a time (the pinned client of group [`subjects::RELAY_GROUP`], unpinned when
/// it stops pulling for `ack_wait`), explicit acks, redelivered without limit.
pub fn relay_consumer_config(
    name: &str,
    filter: &str,
    ack_wait: Duration,
    window: usize,
) -> pull::Config {
    pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: window as i64,
        deliver_policy: DeliverPolicy::All,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![subjects::RELAY_GROUP.into()],
        priority_timeout: ack_wait,
        ..Default::default()
    }
}

/// The durable consumer `name` of one destination's queue (`filter`, in `DELIVERIES`): as
/// [`relay_consumer_config`], with its state kept in memory. A durable consumer on disk has
/// its state written at most every 100 ms while busy, which with 100 busy destinations was a
/// third of the machine's CPU (docs/benchmarks.md). Nothing needs that state across a server
/// restart: the stream is a work queue, so an acknowledged job is gone from it and every job
/// still in it is handed out again by the consumer made after the restart.
pub fn delivery_consumer_config(
    name: &str,
    filter: &str,
    ack_wait: Duration,
    window: usize,
) -> pull::Config {
    pull::Config {
        memory_storage: true,
        ..relay_consumer_config(name, filter, ack_wait, window)
    }
}

/// How many events the relay's cursor hands out before the first is acknowledged.
const RELAY_CURSOR_WINDOW: usize = 64;

/// The copy of the ledger's index entries (`index.<status>.<assignee>.<id>`, see
/// `tasks/listing.rs`), sourced by the server: one message per task and status (the newest: an
/// entry with its task's state, or a retry's retraction), kept as long as finished tasks are
/// (an entry is written when its task finishes; the sweeper purges a swept task's entries).
fn index_copy_config(cfg: &TopologyConfig) -> stream::Config {
    stream::Config {
        name: subjects::INDEX_STREAM.into(),
        description: Some("taskfleet: the ledger's index entries, copied for listings".into()),
        sources: Some(vec![stream::Source {
            name: subjects::EVENTS_STREAM.into(),
            filter_subject: Some(subjects::INDEX_WRITES.into()),
            ..Default::default()
        }]),
        max_messages_per_subject: 1,
        max_age: cfg.events_max_age,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream keeping a copy of the delivery records with `status` (see `relay/store/record.rs`):
/// sourced from the bucket's `<status>.>` keys, one message per key like the bucket.
fn delivery_copy_config(cfg: &TopologyConfig, status: &str) -> stream::Config {
    let bucket = js_api::kv_stream(subjects::DELIVERY_BUCKET);
    let keys = subjects::delivery_record_subject(&format!("{status}.>"));
    stream::Config {
        name: subjects::delivery_copy_stream(status),
        description: Some(format!(
            "taskfleet: {} delivery records, copied from {bucket} for listings",
            status
        )),
        sources: Some(vec![stream::Source {
            name: bucket,
            filter_subject: Some(keys),
            ..Default::default()
        }]),
        max_messages_per_subject: 1,
        max_age: cfg.events_max_age,
        max_message_size: cfg.max_msg_size,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        allow_direct: true,
        allow_message_ttl: true,
        ..Default::default()
    }
}

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
        refuse_legacy(js).await?;
        let tasks = ensure_stream(js, tasks_config(cfg)).await?;
        let events = ensure_stream(js, ledger_config(cfg)).await?;
        ensure_stream(js, index_copy_config(cfg)).await?;
        let dead = ensure_stream(js, dead_config(cfg)).await?;
        let meta = (
            subjects::META_BUCKET,
            "bookkeeping (the retention sweeper's cursor)",
        );
        let meta = ensure_bucket(js, bucket_config(cfg, meta, Duration::ZERO)).await?;
        let keys = (subjects::IDEMPOTENCY_BUCKET, "idempotency key to task id");
        let idempotency = ensure_bucket(js, bucket_config(cfg, keys, cfg.idempotency_ttl)).await?;
        let jobs = (
            subjects::DELIVERIES_STREAM,
            "relay deliveries per destination",
            subjects::ALL_DELIVERIES,
        );
        let mut deliveries = work_queue_config(cfg, jobs);
        // With more than one replica, the relay queues the jobs of several events at once as an
        // atomic batch, all or none (their order); see `DeliveryStore::queue_together`.
        deliveries.allow_atomic_publish = true;
        let deliveries = ensure_stream(js, deliveries).await?;
        ensure_stream(js, delivery_records_config(cfg)).await?;
        for status in subjects::COPIED_DELIVERY_STATUSES {
            ensure_stream(js, delivery_copy_config(cfg, status)).await?;
        }
        let delivery_records = js
            .get_key_value(subjects::DELIVERY_BUCKET)
            .await
            .op("open bucket")?;
        let state = (subjects::DESTINATION_BUCKET, "relay destination state");
        let destinations = ensure_bucket(js, bucket_config(cfg, state, Duration::ZERO)).await?;
        ensure_bucket(js, registry_config(cfg)).await?;
        let flow = (
            subjects::LIMITS_BUCKET,
            "flow control: holds, rates, overrides",
        );
        ensure_bucket(js, bucket_config(cfg, flow, Duration::ZERO)).await?;
        let crons = (subjects::SCHEDULES_BUCKET, "cron schedules and their state");
        let schedules = ensure_bucket(js, bucket_config(cfg, crons, Duration::ZERO)).await?;
        ensure_relay_cursor(&events).await?;
        Ok(Self {
            tasks,
            events,
            dead,
            deliveries,
            delivery_records,
            destinations,
            idempotency,
            meta,
            schedules,
        })
    }
}

impl Topology {
    /// Opens the streams and buckets without changing them, waiting up to 30 s for each one
    /// that a process allowed to create them (the API) has not created yet.
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let events = open_stream(js, subjects::EVENTS_STREAM).await?;
        check_layout(&events)?;
        Ok(Self {
            tasks: open_stream(js, subjects::TASKS_STREAM).await?,
            events,
            dead: open_stream(js, subjects::DEAD_STREAM).await?,
            deliveries: open_stream(js, subjects::DELIVERIES_STREAM).await?,
            delivery_records: open_bucket(js, subjects::DELIVERY_BUCKET).await?,
            destinations: open_bucket(js, subjects::DESTINATION_BUCKET).await?,
            idempotency: open_bucket(js, subjects::IDEMPOTENCY_BUCKET).await?,
            meta: open_bucket(js, subjects::META_BUCKET).await?,
            schedules: open_bucket(js, subjects::SCHEDULES_BUCKET).await?,
        })
    }
}

/// What to tell an operator whose store predates storage v2.
pub const MIGRATE_HINT: &str = "stop every taskfleet process (api, workers, relay, up) and run \
     `taskfleet migrate --nats-url <this NATS URL>` (or `taskfleet migrate --data-dir <dir>` for \
     a store that `taskfleet up --data-dir <dir>` runs); it converts the tasks in place and \
     keeps their logs";

/// Refuses a store written before storage v2: task state in the KV bucket `tasks`, or an
/// `EVENTS` stream without the ledger layout.
async fn refuse_legacy(js: &jetstream::Context) -> Result<(), BusError> {
    if js.get_stream(subjects::LEGACY_STATE_STREAM).await.is_ok() {
        return Err(BusError::Incompatible(format!(
            "this NATS store keeps task state in the KV bucket `{}` (the layout before task \
             storage v2); {MIGRATE_HINT}",
            subjects::LEGACY_STATE_BUCKET
        )));
    }
    match js.get_stream(subjects::EVENTS_STREAM).await {
        Ok(events) => check_layout(&events),
        Err(_) => Ok(()),
    }
}

/// Refuses an `EVENTS` stream that is not the ledger this build writes.
fn check_layout(events: &stream::Stream) -> Result<(), BusError> {
    let config = &events.cached_info().config;
    match config.metadata.get(LAYOUT_KEY) {
        Some(v) if v == LAYOUT => Ok(()),
        found => Err(BusError::Incompatible(format!(
            "the EVENTS stream has taskfleet layout {} but this build needs {LAYOUT}; \
             {MIGRATE_HINT}",
            found.map_or("1 (no layout mark)", String::as_str)
        ))),
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
