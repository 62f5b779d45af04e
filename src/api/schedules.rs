//! `/api/schedules`: cron schedules (admin key only). Create, list, get, replace, delete,
//! pause, resume and trigger; see `schedules/` for what they do.

use super::auth::{Principal, Scope};
use super::error::{ApiError, JsonBody};
use super::state::AppState;
use crate::domain::Task;
use crate::schedules::{valid_name, ScheduleError, ScheduleSpec, ScheduleView};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::Value;

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            e @ ScheduleError::Invalid { .. } => Self::Unprocessable(e.to_string()),
            e @ ScheduleError::NotFound(_) => Self::NotFound(e.to_string()),
            e @ ScheduleError::Exists(_) => Self::Conflict {
                code: "already_exists",
                message: e.to_string(),
            },
            e @ ScheduleError::Contended(_) => Self::Conflict {
                code: "contended",
                message: e.to_string(),
            },
            ScheduleError::Task(t) => t.into(),
            ScheduleError::Bus(b) => Self::Unavailable(b.into()),
        }
    }
}

fn admin_only(who: &Principal) -> Result<(), ApiError> {
    match who.scope {
        Scope::All => Ok(()),
        _ => Err(ApiError::Forbidden("schedules need an admin key".into())),
    }
}

/// The `{name}` path segment; a name no schedule can have is simply not found.
#[derive(Debug)]
pub(super) struct NamePath(String);

impl<S: Send + Sync> FromRequestParts<S> for NamePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) if valid_name(&name) => Ok(Self(name)),
            _ => Err(ApiError::NotFound(format!(
                "schedule {} not found",
                parts.uri.path().split('/').nth(3).unwrap_or_default()
            ))),
        }
    }
}

/// `POST /api/schedules` → 201 with the schedule; 409 when the name is taken.
pub(super) async fn create(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<Value>,
) -> Result<impl IntoResponse, ApiError> {
    admin_only(&who)?;
    let spec = ScheduleSpec::from_json(body)?;
    let view = state.schedules.create(&spec).await?;
    let location = format!("/api/schedules/{}", view.schedule.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    ))
}

/// `GET /api/schedules`: every schedule, by name.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    admin_only(&who)?;
    Ok(Json(state.schedules.list().await?))
}

/// `GET /api/schedules/{name}`.
pub(super) async fn get_one(
    State(state): State<AppState>,
    who: Principal,
    NamePath(name): NamePath,
) -> Result<Json<ScheduleView>, ApiError> {
    admin_only(&who)?;
    Ok(Json(state.schedules.get(&name).await?))
}

/// `PUT /api/schedules/{name}`: a new definition (the body's `name` may be left out).
pub(super) async fn replace(
    State(state): State<AppState>,
    who: Principal,
    NamePath(name): NamePath,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<ScheduleView>, ApiError> {
    admin_only(&who)?;
    let spec = ScheduleSpec::from_json(body)?;
    Ok(Json(state.schedules.replace(&name, &spec).await?))
}

/// `DELETE /api/schedules/{name}`: answers the schedule as it was.
pub(super) async fn delete(
    State(state): State<AppState>,
    who: Principal,
    NamePath(name): NamePath,
) -> Result<Json<ScheduleView>, ApiError> {
    admin_only(&who)?;
    Ok(Json(state.schedules.delete(&name).await?))
}

/// `POST /api/schedules/{name}/pause`.
pub(super) async fn pause(
    State(state): State<AppState>,
    who: Principal,
    NamePath(name): NamePath,
) -> Result<Json<ScheduleView>, ApiError> {
    admin_only(&who)?;
    Ok(Json(state.schedules.pause(&name).await?))
}

/// `POST /api/schedules/{name}/resume`.
pub(super) async fn resume(
    State(state): State<AppState>,
    who: Principal,
    NamePath(name): NamePath,
) -> Result<Json<ScheduleView>, ApiError> {
    admin_only(&who)?;
    Ok(Json(state.schedules.resume(&name).await?))
}

/// `POST /api/schedules/{name}/trigger` → 201 with the task created now (200 with the task a
/// trigger in the same second created).
pub(super) async fn trigger(
    State(state): State<AppState>,
    who: Principal,
    NamePath(name): NamePath,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    admin_only(&who)?;
    let created = state.schedules.trigger(&name, &who.name).await?;
    let status = match created.created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(created.task)))
}
