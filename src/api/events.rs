//! The task log (`/logs`, seed 001's `bot_task_log` rows) and the live feed (`/events`, SSE).

use super::auth::Principal;
use super::error::ApiError;
use super::error::IdPath;
use super::state::AppState;
use super::tasks::authorized_task;
use crate::domain::LogEntry;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::time::Duration;

/// `GET /api/tasks/{id}/logs`, oldest first.
pub(super) async fn logs(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<Vec<LogEntry>>, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    Ok(Json(state.tasks.logs(&task.id).await?))
}

/// `GET /api/tasks/{id}/events`: every event so far, then live ones, as server-sent events
/// (`event:` is the event type, `id:` the event id, `data:` the JSON event).
pub(super) async fn feed(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    let events = state.tasks.follow(&task.id).await?;
    let stop = state.shutdown.clone();
    let stream = events
        .take_until(async move { stop.cancelled().await })
        .map(|e| {
            Ok(match e {
                Ok(ev) => Event::default()
                    .event(ev.kind.as_str())
                    .id(ev.id.clone())
                    .json_data(&ev)
                    .unwrap_or_else(|_| Event::default().comment("undecodable event")),
                Err(err) => Event::default().event("error").data(err.to_string()),
            })
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
