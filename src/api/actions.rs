//! Status changes over HTTP: `PUT /api/tasks/{id}/start|complete|fail|cancel|retry`.
//!
//! `complete` and `fail` accept a fencing token (`fencing_token` in the body or the
//! `X-Fencing-Token` header); when given, only the current lease may finish the task.
//!
//! Every action (these and the Live Task Pulse ones in `progress.rs`) runs through [`act_once`]:
//! with an `Idempotency-Key` header, a repeat of an applied call answers 200 with the task's
//! current state (and `Idempotent-Replayed: true`) and applies nothing.

use super::auth::Principal;
use super::error::IdPath;
use super::error::{ApiError, JsonBody};
use super::state::AppState;
use super::tasks::authorized_task;
use crate::domain::Task;
use crate::tasks::{Applied, TaskError};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::future::Future;

/// The `Idempotency-Key` header of an action, if sent.
#[derive(Debug, Clone, Default)]
pub(super) struct IdempotencyKey(pub(super) Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match parts.headers.get("idempotency-key") {
            None => Ok(Self(None)),
            Some(v) => v
                .to_str()
                .map(|k| Self(Some(k.trim().to_string())))
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into())),
        }
    }
}

/// An action's answer: 200 with the task, marked `Idempotent-Replayed: true` for a repeat.
#[derive(Debug)]
pub(super) struct Acted(Applied);

impl IntoResponse for Acted {
    fn into_response(self) -> Response {
        let mut response = Json(self.0.task).into_response();
        if self.0.replayed {
            response.headers_mut().insert(
                "idempotent-replayed",
                axum::http::HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// Runs `apply` on `task` once per idempotency key (always, without one). `verb` names the
/// action in the key, so the same key on `step` and on `complete` are two actions.
pub(super) async fn act_once<F, Fut>(
    state: &AppState,
    task: &Task,
    verb: &'static str,
    key: IdempotencyKey,
    apply: F,
) -> Result<Acted, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Task, TaskError>>,
{
    let applied = state
        .tasks
        .once(&task.id, verb, key.0.as_deref(), apply)
        .await?;
    Ok(Acted(applied))
}

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

/// The body of `start` and `retry`: none, `null` or an object, whatever it holds (a scalar is a
/// 422 like on every other route).
type IgnoredBody = serde_json::Map<String, Value>;

/// `start`: claims a pending task for the caller (a bot polling on HEARTBEAT).
pub(super) async fn start(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    key: IdempotencyKey,
    JsonBody(_body): JsonBody<Option<IgnoredBody>>,
) -> Result<Acted, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    // Only a pending task takes places (a repeat of a running task's start must not replace
    // its holder's).
    let permit = match task.status {
        crate::domain::TaskStatus::Pending => gate(&state, &task, &who.name).await?,
        _ => crate::limits::Permit::default(),
    };
    let started = act_once(&state, &task, "start", key, || {
        state.tasks.start_seen(&task, &who.name)
    })
    .await;
    if started.is_err() && !permit.is_empty() {
        let _ = state.flow.release(&permit, false).await;
    }
    started
}

/// How long a bot's claim of a task with flow-control keys holds them, unless it ends sooner
/// (its `timeout_s` if longer): a bot that never finishes frees them after this.
const MANUAL_HOLD: std::time::Duration = std::time::Duration::from_secs(3600);

/// Flow control for a bot's `start`: takes the task's places, or answers 409 saying what it
/// waits for (the task stays pending; `Retry-After` says when to try again).
async fn gate(state: &AppState, task: &Task, who: &str) -> Result<crate::limits::Permit, ApiError> {
    let hold = task
        .timeout_s
        .map(std::time::Duration::from_secs)
        .map_or(MANUAL_HOLD, |t| t.max(MANUAL_HOLD));
    let (a, id) = (task.assigned_to.as_str(), task.id.as_str());
    match state.flow.acquire(a, id, &task.flow(), who, hold).await? {
        crate::limits::Gate::Go(permit) => Ok(permit),
        crate::limits::Gate::Wait(wait) => Err(ApiError::Conflict {
            code: "waiting",
            message: format!(
                "task {id} waits: {} (try again in {:.1} s)",
                wait.reason,
                wait.retry_in.as_secs_f64()
            ),
        }),
    }
}

/// Whether ending `task` over the API gives flow-control places back, asked before it ends:
/// it has keys or its assignee a cap, and no worker runs it (a worker gives its places back once
/// the run has stopped). Only then is its queue message read, to tell a worker's task from one
/// a bot started over the API (which runs from a stand-in).
async fn gives_places_back(state: &AppState, task: &Task) -> bool {
    if task.flow().is_empty() && !has_cap(state, task).await {
        return false;
    }
    let worker_kind = task.status == crate::domain::TaskStatus::Running
        && task.kind != crate::domain::TaskKind::Manual;
    !worker_kind || state.tasks.runs_from_stand_in(task).await
}

/// After `task` (as it was before) ended through the API: with `give_back` (see
/// [`gives_places_back`]), gives back the flow-control places a bot held (and a place in a
/// lane's line), so the next task of its keys starts now.
pub(super) async fn ended(state: &AppState, task: &Task, give_back: bool) {
    if !give_back {
        return;
    }
    if let Err(e) = state.flow.forget_task(task).await {
        tracing::warn!(task_id = %task.id, error.message = %e, "flow-control places not given back; they lapse");
    }
}

async fn has_cap(state: &AppState, task: &Task) -> bool {
    let declared = state.flow.declared(task.assigned_to.as_str()).await;
    declared.map_or(true, |d| d.max_running.is_some())
}

/// `complete`: `{"result": …}`.
pub(super) async fn complete(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    headers: HeaderMap,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<Option<ActionBody>>,
) -> Result<Acted, ApiError> {
    let body = body.unwrap_or_default();
    let task = authorized_task(&state, &who, &id).await?;
    let fence = fence(&headers, &body);
    let give_back = gives_places_back(&state, &task).await;
    let acted = act_once(&state, &task, "complete", key, || {
        state.tasks.complete(
            &task.id,
            body.result,
            fence.as_deref(),
            &who.name,
            Value::Null,
        )
    })
    .await?;
    ended(&state, &task, give_back).await;
    Ok(acted)
}

/// `fail`: `{"error": …}` (also accepts `reason`, `message` or `result`).
pub(super) async fn fail(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    headers: HeaderMap,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<Option<ActionBody>>,
) -> Result<Acted, ApiError> {
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
    let give_back = gives_places_back(&state, &task).await;
    let acted = act_once(&state, &task, "fail", key, || {
        state
            .tasks
            .fail(&task.id, error, fence.as_deref(), &who.name, Value::Null)
    })
    .await?;
    ended(&state, &task, give_back).await;
    Ok(acted)
}

/// `cancel`: optional `{"reason": …}`.
pub(super) async fn cancel(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<Option<ActionBody>>,
) -> Result<Acted, ApiError> {
    let body = body.unwrap_or_default();
    let task = authorized_task(&state, &who, &id).await?;
    let reason = body.reason.or(body.message).or(body.error);
    let give_back = gives_places_back(&state, &task).await;
    let acted = act_once(&state, &task, "cancel", key, || {
        state.tasks.cancel(&task.id, reason, &who.name)
    })
    .await?;
    ended(&state, &task, give_back).await;
    Ok(acted)
}

/// `retry`: queues a failed or cancelled task again.
pub(super) async fn retry(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    key: IdempotencyKey,
    JsonBody(_body): JsonBody<Option<IgnoredBody>>,
) -> Result<Acted, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    act_once(&state, &task, "retry", key, || {
        state.tasks.retry(&task.id, &who.name)
    })
    .await
}

/// The body of `reschedule`: the new time, as `run_at` (RFC 3339) or `delay_s` from now.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RescheduleBody {
    #[serde(default, deserialize_with = "crate::domain::run_at_field")]
    run_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    delay_s: Option<u64>,
}

impl RescheduleBody {
    /// The time asked for; exactly one of the two fields must be given.
    fn when(&self) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
        match (self.run_at, self.delay_s) {
            (Some(at), None) => Ok(at),
            (None, Some(s)) => Ok(crate::domain::after_seconds(crate::domain::now(), s)),
            _ => Err(ApiError::Unprocessable(
                "give run_at (RFC 3339) or delay_s (seconds from now), exactly one".into(),
            )),
        }
    }
}

/// `reschedule`: moves a scheduled (delayed) task to another time.
pub(super) async fn reschedule(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    key: IdempotencyKey,
    JsonBody(body): JsonBody<RescheduleBody>,
) -> Result<Acted, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    let at = body.when()?;
    act_once(&state, &task, "reschedule", key, || {
        state.tasks.reschedule(&task.id, at, &who.name)
    })
    .await
}
