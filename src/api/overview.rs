//! `GET /api/overview` and its live feed `GET /api/overview/events`: the dashboard's first page,
//! per assignee × priority what is queued, running and stalled and how long the oldest pending
//! task has waited; per assignee its delayed tasks, failures of the last hour and workers online;
//! and the relay's pending and dead deliveries. Computed from what `/metrics` reads (the queue
//! walk of `TaskService::queue_gauges`, the worker registry, the delivery copies); a key scoped
//! to some assignees sees only theirs (and no delivery counts, which span every assignee).

use super::auth::Principal;
use super::error::ApiError;
use super::state::AppState;
use crate::bus::{direct, subjects};
use crate::domain::{Assignee, EventKind, Priority};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::time::Duration;

/// How often the live feed sends the overview again.
const FEED_EVERY: Duration = Duration::from_secs(2);

/// The whole overview.
#[derive(Debug, Serialize)]
pub(super) struct Overview {
    /// When it was computed.
    generated_at: chrono::DateTime<chrono::Utc>,
    /// One row per queue holding messages (assignee × priority), by assignee then priority.
    queues: Vec<QueueRow>,
    /// One row per assignee seen (in a queue, the registry or the key's scope).
    assignees: Vec<AssigneeRow>,
    /// Workers alive now (relays not counted).
    workers_online: u64,
    /// Delivery records pending and dead; `null` for a scoped key or when unavailable.
    deliveries: Option<DeliveryCounts>,
}

/// One queue's figures.
#[derive(Debug, Serialize)]
struct QueueRow {
    /// Whose queue.
    assignee: String,
    /// Its priority (`P0`..`P3`).
    priority: String,
    /// Messages in the queue (pending and running tasks and leftovers of finished ones).
    depth: u64,
    /// Pending tasks seen by the walk (its first 500 messages).
    queued: i64,
    /// Running tasks seen by the walk.
    running: i64,
    /// Running tasks with no update for longer than `relay.stall_after_s`.
    stalled: i64,
    /// Seconds the oldest pending task has waited, `null` when none is pending.
    oldest_pending_s: Option<f64>,
}

/// One assignee's figures.
#[derive(Debug, Serialize)]
struct AssigneeRow {
    /// The assignee.
    assignee: String,
    /// Delayed tasks waiting for their time; `null` when unavailable.
    scheduled: Option<u64>,
    /// `failed` events of the last hour; `null` when unavailable.
    failed_last_hour: Option<u64>,
    /// Its workers alive now.
    workers_online: u64,
}

/// The relay's delivery records.
#[derive(Debug, Serialize)]
struct DeliveryCounts {
    /// Waiting for (another) attempt.
    pending: u64,
    /// Gave up.
    dead: u64,
}

/// `GET /api/overview`.
pub(super) async fn get(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Overview>, ApiError> {
    Ok(Json(compute(&state, who.visible()).await?))
}

/// `GET /api/overview/events`: the overview at once, then every two seconds, as server-sent
/// `overview` events, until the client goes away or the process shuts down.
pub(super) async fn feed(
    State(state): State<AppState>,
    who: Principal,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let visible = who.visible();
    let stop = state.shutdown.clone();
    let ticks = futures::stream::unfold(true, |first| async move {
        if !first {
            tokio::time::sleep(FEED_EVERY).await;
        }
        Some(((), false))
    });
    let stream = ticks
        .then(move |()| {
            let (state, visible) = (state.clone(), visible.clone());
            async move {
                Ok(match compute(&state, visible).await {
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

/// The overview as `visible` (`None`: every assignee) may see it.
async fn compute(
    state: &AppState,
    visible: Option<HashSet<Assignee>>,
) -> Result<Overview, ApiError> {
    let shown = |a: &Assignee| visible.as_ref().is_none_or(|v| v.contains(a));
    let depths = queue_depths(state).await?;
    let mut queues = Vec::new();
    let stall_after =
        chrono::Duration::from_std(state.stall_after).unwrap_or(chrono::Duration::MAX);
    for ((assignee, priority), depth) in depths.into_iter().filter(|((a, _), _)| shown(a)) {
        let g = state
            .tasks
            .queue_gauges(&assignee, priority, stall_after)
            .await?;
        queues.push(QueueRow {
            assignee: assignee.to_string(),
            priority: priority.to_string(),
            depth,
            queued: g.pending,
            running: g.running,
            stalled: g.stalled,
            oldest_pending_s: g.oldest_pending_s,
        });
    }
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
    let deliveries = match visible {
        None => delivery_counts(state).await,
        Some(_) => None,
    };
    Ok(Overview {
        generated_at: chrono::Utc::now(),
        workers_online: assignees.iter().map(|a| a.workers_online).sum(),
        queues,
        assignees,
        deliveries,
    })
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
    let client = &state.tasks.bus().client;
    let held = format!("scheduled.{a}.>");
    let scheduled = direct::count_after(client, subjects::TASKS_STREAM, &held, 0).await;
    let failed = subjects::events_of_kind(Some(a), EventKind::Failed);
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let failed = direct::count_since(client, subjects::EVENTS_STREAM, &failed, hour_ago).await;
    if let Err(e) = &failed {
        tracing::debug!(error.message = %e, "failures of the last hour unavailable");
    }
    AssigneeRow {
        assignee: a.to_string(),
        scheduled: scheduled.ok(),
        failed_last_hour: failed.ok(),
        workers_online: workers.get(a).copied().unwrap_or(0),
    }
}

/// Pending and dead delivery records (their copies), `None` when unavailable.
async fn delivery_counts(state: &AppState) -> Option<DeliveryCounts> {
    let client = &state.tasks.bus().client;
    let mut n = [0; 2];
    for (i, status) in ["pending", "dead"].into_iter().enumerate() {
        let stream = subjects::delivery_copy_stream(status);
        let filter = subjects::delivery_record_subject(&format!("{status}.>"));
        n[i] = direct::count_after(client, &stream, &filter, 0)
            .await
            .ok()?;
    }
    Some(DeliveryCounts {
        pending: n[0],
        dead: n[1],
    })
}
