//! Live Task Pulse over HTTP (seed 002), for a running task:
//!
//! - `POST|PUT /api/tasks/{id}/step` (alias `/next`) `{"info"?, "step"?}`: finish the current
//!   step and move to the next;
//! - `POST|PUT /api/tasks/{id}/heartbeat` `{"info"?}`: a long step is still alive;
//! - `POST|PUT /api/tasks/{id}/progress` `{"percent": 0..=100, "info"?}`;
//!
//! each answering 200 with the task (409 `illegal_transition` unless it is running), and
//! idempotent with an `Idempotency-Key` header. Plus `POST /api/tasks/cleanup`
//! `{"older_than_s"?}` (admin only): removes tasks finished longer ago, `{"removed": n}`.

use super::actions::{act_once, Acted, IdempotencyKey};
use super::auth::{Principal, Scope};
use super::error::{ApiError, IdPath, JsonBody};
use super::state::AppState;
use super::tasks::authorized_task;
use crate::domain::limits;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// Body of `step` / `next`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StepBody {
    /// One-line note on the finished step.
    #[serde(default)]
    info: Option<String>,
    /// Accepted for `info` (`info` wins when both are sent).
    #[serde(default)]
    message: Option<String>,
    /// Name of the finished step, for a task without named steps.
    #[serde(default)]
    step: Option<String>,
}

/// Body of `heartbeat`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct HeartbeatBody {
    #[serde(default)]
    info: Option<String>,
    /// Accepted for `info` (`info` wins when both are sent).
    #[serde(default)]
    message: Option<String>,
}

/// Body of `progress`.
#[derive(Debug, Deserialize)]
pub(super) struct ProgressBody {
    percent: f64,
    #[serde(default)]
    info: Option<String>,
    /// Accepted for `info` (`info` wins when both are sent).
    #[serde(default)]
    message: Option<String>,
}

/// Body of `cleanup`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct CleanupBody {
    #[serde(default)]
    older_than_s: Option<u64>,
}

/// The note of a report: `info`, else `message`; each refused (422) over
/// [`crate::tasks::MAX_INFO_CHARS`] characters, whichever is used.
fn note(info: Option<String>, message: Option<String>) -> Result<Option<String>, ApiError> {
    let max = crate::tasks::MAX_INFO_CHARS;
    for (field, text) in [("info", &info), ("message", &message)] {
        if text.as_deref().is_some_and(|t| t.chars().count() > max) {
            return Err(ApiError::Unprocessable(format!(
                "{field} is longer than {max} characters"
            )));
        }
    }
    Ok(info.or(message))
}

/// The name of the finished step, when given: 1 to [`limits::STEP_NAME`] characters, not blank.
/// Checked here too, before an idempotent repeat is answered, so a bad name is never a 200.
fn step_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    match name {
        Some(n) if n.trim().is_empty() || n.chars().count() > limits::STEP_NAME => Err(
            ApiError::Unprocessable("step must be a name of 1 to 200 characters".into()),
        ),
        name => Ok(name),
    }
}

/// `step` (and `next`): 200 with the task whose current step moved on.
pub(super) async fn step(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<Option<StepBody>>,
) -> Result<Acted, ApiError> {
    let body = body.unwrap_or_default();
    let task = authorized_task(&state, &who, &id).await?;
    let info = note(body.info, body.message)?;
    let name = step_name(body.step)?;
    act_once(&state, &task, "step", key, || {
        state.tasks.step(&task.id, info, name, &who.name)
    })
    .await
}

/// `heartbeat`: 200 with the task.
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<Option<HeartbeatBody>>,
) -> Result<Acted, ApiError> {
    let body = body.unwrap_or_default();
    let task = authorized_task(&state, &who, &id).await?;
    let info = note(body.info, body.message)?;
    act_once(&state, &task, "heartbeat", key, || {
        state.tasks.heartbeat(&task.id, info, &who.name)
    })
    .await
}

/// `progress`: 200 with the task; 422 unless `percent` is a number from 0 to 100.
pub(super) async fn progress(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<ProgressBody>,
) -> Result<Acted, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    if !(0.0..=100.0).contains(&body.percent) {
        return Err(ApiError::Unprocessable(format!(
            "percent must be between 0 and 100, got {}",
            body.percent
        )));
    }
    let info = note(body.info, body.message)?;
    let percent = body.percent.round() as u8;
    act_once(&state, &task, "progress", key, || {
        state.tasks.progress(&task.id, percent, info, &who.name)
    })
    .await
}

/// `POST /api/tasks/cleanup` `{"older_than_s": 604800}` (the default): removes completed,
/// failed and cancelled tasks that finished longer ago. Admin keys only.
pub(super) async fn cleanup(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<Option<CleanupBody>>,
) -> Result<Json<Value>, ApiError> {
    if who.scope != Scope::All {
        return Err(ApiError::Forbidden("cleanup needs an admin key".into()));
    }
    let older_than = body
        .and_then(|b| b.older_than_s)
        .map_or(crate::tasks::DEFAULT_KEEP, Duration::from_secs);
    let removed = state.tasks.cleanup(older_than).await?;
    Ok(Json(json!({ "removed": removed })))
}
