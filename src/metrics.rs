//! Prometheus metrics of one process (`GET /metrics`). Each process owns its registry, so tests
//! that run many fleets in one binary never mix their figures.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// Labels of the task counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task's assignee.
    pub assignee: String,
    /// `P0`, `P1` or `P2`.
    pub priority: String,
}

/// Labels of the per-assignee gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AssigneeLabel {
    /// The assignee.
    pub assignee: String,
}

/// Labels of finished tasks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    /// The task's assignee.
    pub assignee: String,
    /// `P0`, `P1` or `P2`.
    pub priority: String,
    /// `completed`, `failed` or `cancelled`.
    pub status: String,
}

/// Labels of HTTP request timings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Request method.
    pub method: String,
    /// Route template, e.g. `/api/tasks/{id}`.
    pub route: String,
    /// Response status code.
    pub status: String,
}

/// Labels of cron schedule ticks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    /// The schedule's name.
    pub schedule: String,
    /// `created`, `skipped` or `missed`.
    pub outcome: String,
}

/// Labels of flow control figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// The assignee.
    pub assignee: String,
    /// `concurrency`, `lane`, `rate` or `max_running`.
    pub kind: String,
    /// The key (empty for `max_running`).
    pub key: String,
}

/// Labels of flow control waits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowWaitLabels {
    /// The assignee.
    pub assignee: String,
    /// What the task waited for: `concurrency`, `lane`, `rate` or `max_running`.
    pub kind: String,
}

/// Flow control figures (see `limits/`).
#[derive(Debug, Default)]
pub struct FlowMetrics {
    /// Tasks holding each key now (refreshed on every scrape of the API).
    pub running: Family<FlowLabels, Gauge>,
    /// Tasks waiting for each key now (refreshed on every scrape of the API).
    pub waiting: Family<FlowLabels, Gauge>,
    /// Seconds until a rate key's next start (refreshed on every scrape of the API).
    pub next_slot: Family<FlowLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Times a worker put a task back because of a limit.
    pub waits: Family<FlowWaitLabels, Counter>,
}

impl FlowMetrics {
    fn register(&self, registry: &mut Registry) {
        let running = "Tasks holding a concurrency key, lane or max_running now";
        registry.register("limit_running", running, self.running.clone());
        let waiting = "Tasks waiting for a concurrency key, rate key or lane now";
        registry.register("limit_waiting", waiting, self.waiting.clone());
        let next = "Seconds until a rate key's next start";
        registry.register("rate_next_slot_seconds", next, self.next_slot.clone());
        let waits = "Times a worker put a task back because of a limit, by what it waited for";
        registry.register("flow_waits", waits, self.waits.clone());
    }
}

/// Labels of the delivery record gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `pending` or `dead`.
    pub status: String,
}

/// What the queues and the relay's records look like now, refreshed on every scrape of the
/// API (the alerts of `deploy/prometheus/alerts.yaml` and the dashboard read these).
#[derive(Debug, Default)]
pub struct BacklogMetrics {
    /// Seconds the oldest pending task of each queue has waited.
    pub oldest_pending_age: Family<TaskLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Running tasks with no update for `relay.stall_after_s`, per queue.
    pub tasks_stalled: Family<TaskLabels, Gauge>,
    /// Delivery records that are pending (queued or waiting for a retry) or dead.
    pub delivery_records: Family<DeliveryLabels, Gauge>,
}

impl BacklogMetrics {
    fn register(&self, registry: &mut Registry) {
        let oldest = "Seconds the oldest pending task of each queue has waited since it was queued";
        let age = self.oldest_pending_age.clone();
        registry.register("oldest_pending_age_seconds", oldest, age);
        let stalled = "Running tasks with no update for relay.stall_after_s, per queue";
        registry.register("tasks_stalled", stalled, self.tasks_stalled.clone());
        let records =
            "Delivery records now pending or dead (a dead one replayed leaves within a minute)";
        let records_family = self.delivery_records.clone();
        registry.register("delivery_records", records, records_family);
    }
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// The metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Tasks created.
    pub tasks_created: Family<TaskLabels, Counter>,
    /// Attempts started.
    pub tasks_started: Family<TaskLabels, Counter>,
    /// Tasks that reached a terminal status.
    pub tasks_finished: Family<FinishedLabels, Counter>,
    /// Messages waiting in the task queue (refreshed on every scrape).
    pub queue_depth: Family<TaskLabels, Gauge>,
    /// HTTP request latency in seconds.
    pub http_latency: HistogramFamily,
    /// Workers announced in the worker registry, per assignee (refreshed on every scrape).
    pub workers_online: Family<AssigneeLabel, Gauge>,
    /// Delayed tasks waiting for their `run_at` (refreshed on every scrape).
    pub tasks_scheduled: Gauge,
    /// Seconds between a delayed task's `run_at` and when it was queued.
    pub delayed_lag: Histogram,
    /// Cron schedule ticks handled, per schedule and outcome.
    pub schedule_ticks: Family<ScheduleLabels, Counter>,
    /// Seconds between a tick's time and when it was handled.
    pub schedule_lag: Histogram,
    /// Oldest pending age, stalled tasks, pending and dead deliveries.
    pub backlog: BacklogMetrics,
    /// Flow control: keys' holders and waiters, waits.
    pub flow: FlowMetrics,
    /// Times the API's running index was seeded by walking the task queue.
    pub running_index_seeds: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Mutex::default(),
            tasks_created: Family::default(),
            tasks_started: Family::default(),
            tasks_finished: Family::default(),
            queue_depth: Family::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            workers_online: Family::default(),
            tasks_scheduled: Gauge::default(),
            delayed_lag: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            schedule_ticks: Family::default(),
            schedule_lag: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            backlog: BacklogMetrics::default(),
            flow: FlowMetrics::default(),
            running_index_seeds: Counter::default(),
        };
        let mut registry = Registry::with_prefix("taskfleet");
        metrics.register_tasks(&mut registry);
        metrics.register_schedules(&mut registry);
        metrics.flow.register(&mut registry);
        metrics.backlog.register(&mut registry);
        metrics.registry = Mutex::new(registry);
        metrics
    }
}

impl Metrics {
    /// Registers the task, worker, HTTP and running-index metrics.
    fn register_tasks(&self, registry: &mut Registry) {
        registry.register(
            "workers_online",
            "Workers alive now (announced in the worker registry), per assignee",
            self.workers_online.clone(),
        );
        registry.register("tasks_created", "Tasks created", self.tasks_created.clone());
        registry.register(
            "tasks_started",
            "Task attempts started",
            self.tasks_started.clone(),
        );
        registry.register(
            "tasks_finished",
            "Tasks that reached completed, failed or cancelled",
            self.tasks_finished.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages waiting in the task queue, including ones being worked on",
            self.queue_depth.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            self.http_latency.clone(),
        );
        registry.register(
            "running_index_seeds",
            "Times this process walked the task queue to seed its index of running tasks (its \
            first running listing; again when it fell behind or held more than api.running_index_cap)",
            self.running_index_seeds.clone(),
        );
    }

    /// Registers the delayed-task and cron schedule metrics.
    fn register_schedules(&self, registry: &mut Registry) {
        registry.register(
            "tasks_scheduled",
            "Delayed tasks waiting for their run_at (schedule messages held by the broker)",
            self.tasks_scheduled.clone(),
        );
        registry.register(
            "delayed_task_lag_seconds",
            "Seconds between a delayed task's run_at and when it was queued (fire lag)",
            self.delayed_lag.clone(),
        );
        registry.register(
            "schedule_ticks",
            "Cron schedule ticks handled, by schedule and outcome (created, skipped, missed)",
            self.schedule_ticks.clone(),
        );
        registry.register(
            "schedule_lag_seconds",
            "Seconds between a cron schedule tick's time and when it was handled",
            self.schedule_lag.clone(),
        );
    }
}

impl Metrics {
    /// Counts a task put back because of a limit of `kind`.
    pub fn note_flow_wait(&self, assignee: &str, kind: &str) {
        let labels = FlowWaitLabels {
            assignee: assignee.to_string(),
            kind: kind.to_string(),
        };
        self.flow.waits.get_or_create(&labels).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Labels for a task.
pub fn task_labels(task: &crate::domain::Task) -> TaskLabels {
    TaskLabels {
        assignee: task.assigned_to.to_string(),
        priority: task.priority.to_string(),
    }
}
