//! The relay scenarios of the benchmark contract: `step` events of one task, forwarded by the
//! relay (in this process) as signed webhooks to one local receiver, first to one destination,
//! then to [`FANOUT_DESTINATIONS`] destinations (each on its own path of the same receiver). The
//! receiver checks the order per destination; a scenario fails when a delivery is missing or
//! arrives after a later one of its destination.

use crate::fleet::{Fleet, ASSIGNEE};
use crate::relay_config::fanout_config;
use crate::Opts;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskfleet::domain::{EventKind, NewTask, Priority};

/// Webhook destinations of the fan-out scenario.
pub const FANOUT_DESTINATIONS: usize = 100;

/// What the local webhook receiver has seen.
#[derive(Default)]
struct Seen {
    /// Per destination, the highest step index received so far.
    highest: Vec<Option<u64>>,
    /// (destination, step index) pairs received at least once.
    distinct: HashSet<(usize, u64)>,
    /// Requests answered.
    requests: usize,
    /// Deliveries that arrived after a later step of their destination.
    out_of_order: usize,
    /// Deliveries of a (destination, step) already received.
    duplicates: usize,
    /// Requests whose body carried no step index, or whose path named no destination.
    unreadable: usize,
    /// When the latest new delivery arrived.
    last: Option<Instant>,
}

impl Seen {
    /// Counts one request to destination `dest` carrying step `seq`.
    fn note(&mut self, dest: usize, seq: Option<u64>) {
        self.requests += 1;
        let (Some(seq), Some(highest)) = (seq, self.highest.get_mut(dest)) else {
            self.unreadable += 1;
            return;
        };
        if !self.distinct.insert((dest, seq)) {
            self.duplicates += 1;
            return;
        }
        if highest.is_some_and(|h| seq < h) {
            self.out_of_order += 1;
        }
        *highest = Some(highest.map_or(seq, |h| h.max(seq)));
        self.last = Some(Instant::now());
    }
}

/// The part of a webhook body the receiver reads; serde skips the rest without building it
/// (the receiver shares the 2 cores with the relay, so it should cost little).
#[derive(serde::Deserialize)]
struct Body {
    data: BodyData,
}

/// `data` of a webhook body.
#[derive(serde::Deserialize)]
struct BodyData {
    event: BodyEvent,
}

/// `data.event` of a webhook body: its `data.seq` and its message.
#[derive(serde::Deserialize)]
struct BodyEvent {
    #[serde(default)]
    data: Option<Seq>,
    #[serde(default)]
    message: Option<String>,
}

/// An event's `data`, as [`publish_steps`] records it.
#[derive(serde::Deserialize)]
struct Seq {
    seq: Option<u64>,
}

/// The step index a delivery carries: the event's `data.seq` (as [`publish_steps`] records it),
/// else the number in its message `step N`.
fn step_of(body: &[u8]) -> Option<u64> {
    let event = serde_json::from_slice::<Body>(body).ok()?.data.event;
    event.data.and_then(|d| d.seq).or_else(|| {
        let message = event.message?;
        message.strip_prefix("step ")?.parse().ok()
    })
}

/// A local webhook receiver for `destinations` destinations (`/hook/<n>`): its base URL, what it
/// has seen, and its task.
async fn receiver(
    destinations: usize,
) -> anyhow::Result<(
    String,
    Arc<Mutex<Seen>>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let seen = Arc::new(Mutex::new(Seen {
        highest: vec![None; destinations],
        ..Seen::default()
    }));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook/{n}",
        axum::routing::post(
            move |axum::extract::Path(n): axum::extract::Path<usize>, body: bytes::Bytes| {
                let seq = step_of(&body);
                s.lock().expect("lock").note(n, seq);
                async { "ok" }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, seen, server))
}

/// Records `events` `step` events of one new task, one after another (`data.seq` = index).
async fn publish_steps(fleet: &Fleet, events: usize) -> anyhow::Result<()> {
    let tasks = taskfleet::tasks::TaskService::new(fleet.bus.clone(), Default::default());
    let new: NewTask = serde_json::from_value(json!({
        "task_name": "bench", "assigned_to": ASSIGNEE, "priority": Priority::P1.as_str(),
        "kind": "noop", "payload": {},
    }))?;
    let task = tasks.create(new, "bench").await?.task;
    for i in 0..events {
        let info = Some(format!("step {i}"));
        tasks
            .record(&task, EventKind::Step, "bench", info, json!({ "seq": i }))
            .await;
    }
    Ok(())
}

/// What one relay run measured.
struct Measured {
    /// Deliveries expected: events × destinations.
    expected: usize,
    /// From the relay's start to the last new delivery received (s).
    secs: f64,
    /// Deliveries that arrived after a later step of their destination.
    out_of_order: usize,
    /// Deliveries received more than once.
    duplicates: usize,
}

/// `events` step events to `destinations` webhooks, the relay in this process; fails when a
/// delivery is missing, unreadable or out of order. The events are recorded first and the relay
/// starts on that backlog, so the figure is the relay's rate, not that of this loop recording
/// events one at a time (about 1,700/s here, which bounded the figure before 2026-12-04).
async fn run(fleet: &Fleet, destinations: usize, events: usize) -> anyhow::Result<Measured> {
    let (base, seen, server) = receiver(destinations).await?;
    let token = tokio_util::sync::CancellationToken::new();
    let relay = fanout_config(&base, destinations, ASSIGNEE)?;
    let expected = events * destinations;
    publish_steps(fleet, events).await?;
    let t0 = Instant::now();
    let relay_task = tokio::spawn(taskfleet::relay::run(
        fleet.bus.clone(),
        relay,
        token.clone(),
    ));
    let limit = Duration::from_secs(60) + Duration::from_millis(expected as u64 * 20);
    let got = || seen.lock().expect("lock").distinct.len();
    while got() < expected && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    token.cancel();
    let _ = relay_task.await;
    server.abort();
    let s = seen.lock().expect("lock");
    if s.distinct.len() < expected {
        bail!(
            "only {} of {expected} deliveries within {limit:?}",
            s.distinct.len()
        );
    }
    if s.unreadable > 0 || s.out_of_order > 0 {
        bail!(
            "{} deliveries out of order per destination, {} unreadable (of {} requests)",
            s.out_of_order,
            s.unreadable,
            s.requests
        );
    }
    let end = s.last.context("nothing received")?;
    Ok(Measured {
        expected,
        secs: end.duration_since(t0).as_secs_f64(),
        out_of_order: s.out_of_order,
        duplicates: s.duplicates,
    })
}

/// Relay to one webhook: `relay_events` step events; deliveries/s.
pub async fn relay(o: &Opts) -> anyhow::Result<f64> {
    let fleet = Fleet::start(false).await?;
    let result = run(&fleet, 1, o.relay_events).await;
    fleet.stop().await;
    let m = result?;
    Ok(m.expected as f64 / m.secs)
}

/// Relay fan-out: `relay_fanout_events` step events × [`FANOUT_DESTINATIONS`] webhooks;
/// deliveries/s (all deliveries ÷ relay started → last delivery received) and details.
pub async fn relay_fanout(o: &Opts) -> anyhow::Result<Value> {
    let fleet = Fleet::start(false).await?;
    let events = o.relay_fanout_events;
    let result = run(&fleet, FANOUT_DESTINATIONS, events).await;
    fleet.stop().await;
    let m = result?;
    Ok(json!({
        "events": events, "destinations": FANOUT_DESTINATIONS, "deliveries": m.expected,
        "secs": m.secs, "deliveries_per_s": m.expected as f64 / m.secs,
        "out_of_order": m.out_of_order, "duplicates": m.duplicates,
    }))
}
