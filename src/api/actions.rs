//! Status changes over HTTP: `PUT /api/tasks/{id}/start|complete|fail|cancel|retry`.
//!
//! `complete` and `fail` accept a fencing token (`fencing_token` in the body or the
//! `X-Fencing-Token` header); when given, only the current lease may finish the task.

use super::auth::Principal;
use super::error::IdPath;
use super::error::{ApiError, JsonBody};
use super::state::AppState;
use super::tasks::authorized_task;
use crate::domain::Task;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

/// Optional body of the action routes.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionBody {
    result: Option<Value>,
    error: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    fencing_token: Option<String>,
}

fn fence(headers: &HeaderMap, body: &ActionBody) -> Option<String> {
    body.fencing_token.clone().or_else(|| {
        headers
            .get("x-fencing-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

/// `start`: claims a pending task for the caller (a bot polling on HEARTBEAT).
pub(super) async fn start(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    JsonBody(_body): JsonBody<Option<Value>>,
) -> Result<Json<Task>, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    Ok(Json(state.tasks.start(&task.id, &who.name).await?))
}

/// `complete`: `{"result": …}`.
pub(super) async fn complete(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Option<ActionBody>>,
) -> Result<Json<Task>, ApiError> {
    let body = body.unwrap_or_default();
    let task = authorized_task(&state, &who, &id).await?;
    let fence = fence(&headers, &body);
    let done = state
        .tasks
        .complete(
            &task.id,
            body.result,
            fence.as_deref(),
            &who.name,
            Value::Null,
        )
        .await?;
    Ok(Json(done))
}

/// `fail`: `{"error": …}` (also accepts `reason`, `message` or `result`).
pub(super) async fn fail(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Option<ActionBody>>,
) -> Result<Json<Task>, ApiError> {
    let body = body.unwrap_or_default();
    let task = authorized_task(&state, &who, &id).await?;
    let fence = fence(&headers, &body);
    let error = body
        .error
        .clone()
        .or(body.reason.clone())
        .or(body.message.clone())
        .or(body.result.as_ref().map(|r| match r {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
        .unwrap_or_else(|| "failed (no reason given)".into());
    let failed = state
        .tasks
        .fail(&task.id, error, fence.as_deref(), &who.name, Value::Null)
        .await?;
    Ok(Json(failed))
}

/// `cancel`: optional `{"reason": …}`.
pub(super) async fn cancel(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<Option<ActionBody>>,
) -> Result<Json<Task>, ApiError> {
    let body = body.unwrap_or_default();
    let task = authorized_task(&state, &who, &id).await?;
    let reason = body.reason.or(body.message).or(body.error);
    Ok(Json(state.tasks.cancel(&task.id, reason, &who.name).await?))
}

/// `retry`: queues a failed or cancelled task again.
pub(super) async fn retry(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    JsonBody(_body): JsonBody<Option<Value>>,
) -> Result<Json<Task>, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    Ok(Json(state.tasks.retry(&task.id, &who.name).await?))
}
