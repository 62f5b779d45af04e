//! `GET /api/overview` and its live feed `GET /api/overview/events`: the dashboard's first page,
//! per assignee × priority what is queued, running and stalled and how long the oldest pending
//! task has waited; per assignee its delayed tasks, failures of the last hour, workers online and
//! tasks finished per minute over the last 15 minutes; and the relay's pending and dead
//! deliveries, its queue per destination and its disabled destinations. Computed from what
//! `/metrics` reads (the queue walk of `TaskService::queue_gauges` with the queue's subject
//! counts, the worker registry, the delivery copies), counts of ledger events by time, the
//! relay's stream and KV `relay_destinations`; a key scoped to some assignees sees only theirs
//! (and no delivery or relay figures, which span every assignee). The computed overview is kept
//! per scope in [`Cache`] so that the open pages of one scope share one computation per tick.

use super::auth::Principal;
use super::error::ApiError;
use super::state::AppState;
use super::throughput::{Minutes, Throughput};
use crate::bus::{direct, subjects};
use crate::domain::{Assignee, EventKind, Priority};
use crate::relay::job::DeliveryStatus;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the live feed sends the overview again when no task event came (ages move on).
const FEED_EVERY: Duration = Duration::from_secs(2);
/// How long the live feed gathers a burst of task events into one new overview (so a page shows
/// a change well within a second, and recomputes at most about four times a second).
const FEED_SETTLE: Duration = Duration::from_millis(250);

/// The whole overview.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Overview {
    /// When it was computed.
    generated_at: chrono::DateTime<chrono::Utc>,
    /// One row per queue holding messages (assignee × priority), by assignee then priority.
    queues: Vec<QueueRow>,
    /// One row per assignee seen (in a queue, the registry or the key's scope).
    assignees: Vec<AssigneeRow>,
    /// Workers alive now (relays not counted).
    workers_online: u64,
    /// Tasks finished per minute over the last 15 minutes: the whole fleet's, or for a scoped
    /// key the sum of its assignees'; `null` when unavailable.
    throughput: Option<Throughput>,
    /// Delivery records pending and dead; `null` for a scoped key or when unavailable.
    deliveries: Option<DeliveryCounts>,
    /// The relay's queue and its disabled destinations; `null` for a scoped key or when
    /// unavailable.
    relay: Option<RelayView>,
}

/// One queue's figures.
#[derive(Debug, Clone, Serialize)]
struct QueueRow {
    /// Whose queue.
    assignee: String,
    /// Its priority (`P0`..`P3`).
    priority: String,
    /// Messages in the queue (pending and running tasks and leftovers of finished ones).
    depth: u64,
    /// Pending tasks: those the walk of the queue's head (its first 500 messages) saw pending,
    /// plus every message behind the walk (which no worker has reached yet).
    queued: i64,
    /// Running tasks seen by the walk (workers take a queue in order, so they sit at its head).
    running: i64,
    /// Running tasks with no update for longer than `relay.stall_after_s`.
    stalled: i64,
    /// Seconds the oldest pending task has waited, `null` when none is pending.
    oldest_pending_s: Option<f64>,
}

/// One assignee's figures.
#[derive(Debug, Clone, Serialize)]
struct AssigneeRow {
    /// The assignee.
    assignee: String,
    /// Delayed tasks waiting for their time; `null` when unavailable.
    scheduled: Option<u64>,
    /// `failed` events of the last hour; `null` when unavailable.
    failed_last_hour: Option<u64>,
    /// Its workers alive now.
    workers_online: u64,
    /// Tasks finished per minute over the last 15 minutes; `null` when unavailable.
    throughput: Option<Throughput>,
}

/// The relay's delivery records.
#[derive(Debug, Clone, Serialize)]
struct DeliveryCounts {
    /// Waiting for (another) attempt.
    pending: u64,
    /// Gave up.
    dead: u64,
}

/// `GET /api/overview`: computed for this request (a script that just wrote sees its write),
/// and kept for the live feeds of the same scope.
pub(super) async fn get(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Overview>, ApiError> {
    Ok(Json(shared(&state, who.visible(), Instant::now()).await?))
}

/// `GET /api/overview/events`: the overview at once, then again after every burst of task events
/// (see [`next_change`]) and at least every two seconds, as server-sent `overview` events, until
/// the client goes away or the process shuts down.
pub(super) async fn feed(
    State(state): State<AppState>,
    who: Principal,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let visible = who.visible();
    let stop = state.shutdown.clone();
    // On the reader connection: a fleet user may write a ledger message no client can read,
    // and its republished copy must not drop the connection other requests use.
    let wakes = match state.tasks.bus().reader().await {
        Ok(reader) => reader
            .client
            .subscribe(subjects::ALL_EVENTS)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    }
    .inspect_err(|e| tracing::debug!(error.message = %e, "overview feed without task events"))
    .ok();
    let ticks = futures::stream::unfold((true, wakes), |(first, mut wakes)| async move {
        let since = match first {
            true => recent(),
            false => next_change(&mut wakes).await,
        };
        Some((since, (false, wakes)))
    });
    let stream = ticks
        .then(move |since| {
            let (state, visible) = (state.clone(), visible.clone());
            async move {
                Ok(match shared(&state, visible, since).await {
                    Ok(o) => Event::default()
                        .event("overview")
                        .json_data(&o)
                        .unwrap_or_else(|_| Event::default().comment("unencodable overview")),
                    Err(e) => Event::default().event("error").data(e.to_string()),
                })
            }
        })
        .take_until(async move { stop.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Waits for the next reason to send the overview again: a task event on `wakes` (then
/// [`FEED_SETTLE`] more, dropping the rest of the burst), or [`FEED_EVERY`] without one. A
/// subscription that ended is dropped, and the feed falls back to the timer alone. Returns how
/// fresh the overview sent must be: computed after the event that woke the feed, or
/// [`recent`] after a quiet tick.
async fn next_change(wakes: &mut Option<async_nats::Subscriber>) -> Instant {
    let Some(sub) = wakes else {
        tokio::time::sleep(FEED_EVERY).await;
        return recent();
    };
    match tokio::time::timeout(FEED_EVERY, sub.next()).await {
        Err(_elapsed) => recent(),
        Ok(None) => {
            *wakes = None;
            recent()
        }
        Ok(Some(_event)) => {
            let woke = Instant::now();
            tokio::time::sleep(FEED_SETTLE).await;
            while let Some(Some(_)) = futures::FutureExt::now_or_never(sub.next()) {}
            woke
        }
    }
}

/// How long a computed overview serves every page of the same scope that asks.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Most scopes (sets of assignees a key sees) the cache keeps; past it, it starts over.
const MAX_SCOPES: usize = 256;

/// The overviews last computed, one per scope, shared by every page and request (in
/// [`AppState`]): N open pages cost one computation per tick, not N.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// Per scope (`None`: every assignee), the last overview and when its computation began.
    slots: std::sync::Mutex<BTreeMap<Scope, Arc<Slot>>>,
    /// Ledger event counts of whole minutes already past, for the throughput series.
    minutes: Minutes,
}

/// One scope's last overview and when its computation began; locked while it is computed.
type Slot = tokio::sync::Mutex<Option<(Instant, Overview)>>;

/// The assignees a caller sees, `None` for all: what an overview is cached under.
type Scope = Option<BTreeSet<Assignee>>;

/// The freshness a plain request asks for: an overview begun within [`FRESH_FOR`].
fn recent() -> Instant {
    let now = Instant::now();
    now.checked_sub(FRESH_FOR).unwrap_or(now)
}

/// The overview as `visible` may see it, computed at or after `since`: the cached one when it
/// is that fresh, else computed now (callers of one scope wait for one computation and share it).
async fn shared(
    state: &AppState,
    visible: Option<HashSet<Assignee>>,
    since: Instant,
) -> Result<Overview, ApiError> {
    let scope: Scope = visible.as_ref().map(|v| v.iter().cloned().collect());
    let slot = {
        let mut slots = state.overview.slots.lock().expect("overview cache lock");
        if slots.len() >= MAX_SCOPES && !slots.contains_key(&scope) {
            slots.clear();
        }
        slots.entry(scope).or_default().clone()
    };
    let mut slot = slot.lock().await;
    if let Some((_, o)) = slot.as_ref().filter(|(began, _)| *began >= since) {
        return Ok(o.clone());
    }
    let began = Instant::now();
    let o = compute(state, visible).await?;
    *slot = Some((began, o.clone()));
    Ok(o)
}

/// The overview as `visible` (`None`: every assignee) may see it.
async fn compute(
    state: &AppState,
    visible: Option<HashSet<Assignee>>,
) -> Result<Overview, ApiError> {
    let shown = |a: &Assignee| visible.as_ref().is_none_or(|v| v.contains(a));
    let queues = queue_rows(state, &shown).await?;
    let workers = workers_by_assignee(state).await?;
    let mut names: BTreeSet<Assignee> = visible.clone().unwrap_or_default().into_iter().collect();
    names.extend(
        queues
            .iter()
            .filter_map(|q| Assignee::parse(&q.assignee).ok()),
    );
    names.extend(workers.keys().filter(|a| shown(a)).cloned());
    let mut assignees = Vec::new();
    for a in names {
        assignees.push(assignee_row(state, &a, &workers).await);
    }
    let (deliveries, relay, throughput) = match visible {
        None => (
            delivery_counts(state).await,
            relay_view(state).await,
            state.overview.minutes.throughput(&state.tasks, None).await,
        ),
        Some(_) => (
            None,
            None,
            Throughput::sum(assignees.iter().map(|a| &a.throughput)),
        ),
    };
    Ok(Overview {
        generated_at: chrono::Utc::now(),
        workers_online: assignees.iter().map(|a| a.workers_online).sum(),
        throughput,
        queues,
        assignees,
        deliveries,
        relay,
    })
}

/// One row per queue holding messages that `shown` lets the caller see. Pending tasks are
/// counted exactly however long the queue: the walk of its head classifies what it reads, and
/// every message behind the walk is a task no worker has reached yet.
async fn queue_rows(
    state: &AppState,
    shown: &impl Fn(&Assignee) -> bool,
) -> Result<Vec<QueueRow>, ApiError> {
    let depths = queue_depths(state).await?;
    let mut queues = Vec::new();
    for ((assignee, priority), depth) in depths.into_iter().filter(|((a, _), _)| shown(a)) {
        let g = state
            .tasks
            .queue_gauges(&assignee, priority, state.stall)
            .await?;
        queues.push(QueueRow {
            assignee: assignee.to_string(),
            priority: priority.to_string(),
            depth,
            queued: g.pending + depth.saturating_sub(g.walked) as i64,
            running: g.running,
            stalled: g.stalled,
            oldest_pending_s: g.oldest_pending_s,
        });
    }
    Ok(queues)
}

/// Messages per queue, from the task stream's subject counts.
async fn queue_depths(state: &AppState) -> Result<BTreeMap<(Assignee, Priority), u64>, ApiError> {
    let stream = &state.tasks.bus().topology.tasks;
    let mut info = stream
        .info_with_subjects(subjects::ALL_TASKS)
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let mut out = BTreeMap::new();
    while let Some(item) = info.next().await {
        let (subject, n) = item.map_err(|e| ApiError::Unavailable(e.into()))?;
        if let Some((a, p, _)) = subjects::parse_task(&subject) {
            *out.entry((a, p)).or_default() += n as u64;
        }
    }
    Ok(out)
}

/// Workers (not relays) alive now, by assignee.
async fn workers_by_assignee(state: &AppState) -> Result<BTreeMap<Assignee, u64>, ApiError> {
    let all = crate::registry::list(state.tasks.bus())
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let mut out = BTreeMap::new();
    for w in all.iter().filter(|w| w.kind == "worker") {
        if let Some(a) = w.assignee.as_deref().and_then(|a| Assignee::parse(a).ok()) {
            *out.entry(a).or_default() += 1;
        }
    }
    Ok(out)
}

/// One assignee's delayed tasks, failures of the last hour and workers.
async fn assignee_row(
    state: &AppState,
    a: &Assignee,
    workers: &BTreeMap<Assignee, u64>,
) -> AssigneeRow {
    let (held, tasks) = (format!("scheduled.{a}.>"), subjects::TASKS_STREAM);
    let scheduled = state
        .tasks
        .read_source(tasks, (&held, 1, usize::MAX), |client| {
            let held = &held;
            async move { direct::count_after(&client, tasks, held, 0).await }
        })
        .await;
    let failed = subjects::events_of_kind(Some(a), EventKind::Failed);
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let failed = state.tasks.count_events_since(&failed, hour_ago).await;
    if let Err(e) = &failed {
        tracing::debug!(error.message = %e, "failures of the last hour unavailable");
    }
    AssigneeRow {
        assignee: a.to_string(),
        scheduled: scheduled.ok(),
        failed_last_hour: failed.ok(),
        workers_online: workers.get(a).copied().unwrap_or(0),
        throughput: state
            .overview
            .minutes
            .throughput(&state.tasks, Some(a))
            .await,
    }
}

/// Pending and dead delivery records (their copies), `None` when unavailable.
async fn delivery_counts(state: &AppState) -> Option<DeliveryCounts> {
    let store = &state.deliveries;
    Some(DeliveryCounts {
        pending: store.count(DeliveryStatus::Pending).await.ok()?,
        dead: store.count(DeliveryStatus::Dead).await.ok()?,
    })
}

/// The relay's queue (`DELIVERIES`, one subject per destination).
#[derive(Debug, Clone, Serialize)]
struct RelayView {
    /// Delivery jobs waiting in the relay's queue, every destination.
    backlog: u64,
    /// Destinations with jobs waiting or disabled, by queue key.
    destinations: Vec<DestinationRow>,
}

/// One destination of the relay's queue.
#[derive(Debug, Clone, Serialize)]
struct DestinationRow {
    /// Its queue key (`n_<name>` for a configured destination, `h_<hash>` for an ad-hoc one).
    destination: String,
    /// Delivery jobs waiting for it.
    backlog: u64,
    /// Whether the relay stopped delivering to it (after a `410 Gone`) until a replay.
    disabled: bool,
    /// Why it is disabled, `null` when it is not.
    reason: Option<String>,
}

/// The relay's backlog per destination (from the delivery store) and its disabled
/// destinations (KV `relay_destinations`), `None` when unavailable.
async fn relay_view(state: &AppState) -> Option<RelayView> {
    let mut rows: BTreeMap<String, DestinationRow> = BTreeMap::new();
    for (key, n) in state.deliveries.backlog().await.ok()? {
        destination_row(&mut rows, &key).backlog += n;
    }
    for (key, d) in crate::relay::disabled::list(state.tasks.bus()).await.ok()? {
        let row = destination_row(&mut rows, &key);
        row.disabled = true;
        row.reason = Some(d.reason.unwrap_or_else(|| "disabled".to_string()));
    }
    Some(RelayView {
        backlog: rows.values().map(|r| r.backlog).sum(),
        destinations: rows.into_values().collect(),
    })
}

/// The row of destination `key` in `rows`, added empty if missing.
fn destination_row<'a>(
    rows: &'a mut BTreeMap<String, DestinationRow>,
    key: &str,
) -> &'a mut DestinationRow {
    rows.entry(key.to_string())
        .or_insert_with(|| DestinationRow {
            destination: key.to_string(),
            backlog: 0,
            disabled: false,
            reason: None,
        })
}
