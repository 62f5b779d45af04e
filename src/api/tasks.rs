//! Create, read and list tasks.

use super::auth::Principal;
use super::error::{ApiError, StrictJsonBody};
use super::error::{IdPath, Params};
use super::state::AppState;
use crate::domain::{Assignee, NewTask, Priority, Share, Task, TaskId, TaskKind, TaskStatus};
use crate::tasks::{Cursor, ListFilter};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

/// Parses a task id from the path; anything that cannot be an id is simply not found.
pub(super) fn path_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).map_err(|_| ApiError::NotFound(format!("task {raw} not found")))
}

/// Loads a task and checks the caller may touch it.
pub(super) async fn authorized_task(
    state: &AppState,
    who: &Principal,
    raw_id: &str,
) -> Result<Task, ApiError> {
    let task = state.tasks.get(&path_id(raw_id)?).await?;
    who.check_task(&task)?;
    Ok(task)
}

/// Refuses (422) a `notify` entry the relay could never deliver to: neither a destination name
/// nor a destination object. Whether a name is configured is the relay's to say.
fn check_notify(new: &NewTask) -> Result<(), ApiError> {
    for (i, entry) in new.notify.iter().enumerate() {
        crate::outbound::destination::parse_notify(entry)
            .map_err(|e| ApiError::Unprocessable(format!("notify[{i}]: {e}")))?;
    }
    Ok(())
}

/// The fair-share turn of a worker-run task's tenant (`tenant`, else `created_by`, else the
/// caller), seated in the limits bucket so tenants active at once take different turns. `None`
/// (the tenant's hash then decides) for a bot-claimed kind, or when the bucket cannot answer.
async fn seat_tenant(state: &AppState, new: &NewTask, caller: &str) -> Option<Share> {
    if !new.kind.is_worker_run() {
        return None;
    }
    let tenant = new.tenant_or_creator().unwrap_or(caller);
    let assignee = new.assigned_to.as_str();
    match state.flow.turn_of(assignee, tenant).await {
        Ok(turn) => Some(turn),
        Err(e) => {
            tracing::warn!(error.message = %e, "tenant's turn not seated; its hash decides");
            None
        }
    }
}

/// `POST /api/tasks` → 201 with the task; 200 with the earlier task for a repeated idempotency key.
pub(super) async fn create(
    State(state): State<AppState>,
    who: Principal,
    StrictJsonBody(mut new): StrictJsonBody<NewTask>,
) -> Result<impl IntoResponse, ApiError> {
    who.check(&new.assigned_to)?;
    check_notify(&new)?;
    new.fair_turn = seat_tenant(&state, &new, &who.name).await;
    let lane = new.lane.clone();
    let created = state.tasks.create(new, &who.name).await?;
    let due = created.task.status == crate::domain::TaskStatus::Pending;
    if let (Some(lane), true) = (lane, created.created && due) {
        // In line right after the create: tasks created one after another run in that order
        // (a delayed task joins when a worker first meets it, once it is due).
        let (a, id) = (created.task.assigned_to.as_str(), created.task.id.as_str());
        if let Err(e) = state.flow.join_lane(a, &lane, id).await {
            tracing::warn!(error.message = %e, lane, "lane not joined at create; the worker joins it when it first sees the task");
        }
    }
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/tasks/{}", created.task.id);
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        header::LOCATION,
        location.parse().expect("a task path is a header value"),
    );
    if created.folded {
        // The task this create was folded into (its debounce key's waiting task).
        let id = created
            .task
            .id
            .as_str()
            .parse()
            .expect("a task id is a header value");
        headers.insert("taskfleet-folded-into", id);
    }
    Ok((status, headers, Json(created.task)))
}

/// `GET /api/tasks/{id}`.
pub(super) async fn get_one(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<Task>, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    let mut task = state.tasks.as_shown(task).await;
    if task.status == crate::domain::TaskStatus::Pending {
        // Best effort: a task is shown even when flow control cannot say why it waits.
        task.waiting_for = state.flow.waiting_for(&task).await.unwrap_or_default();
    }
    Ok(Json(task))
}

/// Query of the list endpoints; parsed by hand so bad values get clear 400s.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    assigned_to: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    before: Option<String>,
    /// `p0`, `p1` or `p2` (any case).
    priority: Option<String>,
    /// A task kind (`manual`, `exec`, …).
    kind: Option<String>,
    /// Text the task's name holds, compared case-insensitively.
    q: Option<String>,
    /// Only tasks finished at or after this time (RFC 3339), with a final `status`.
    finished_after: Option<String>,
}

/// Longest `q` accepted, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// A list's priority, kind and (lowercased) text in the name, each when given.
type Narrowing = (Option<Priority>, Option<TaskKind>, Option<String>);

/// The optional filters of the task list beyond assignee and status: priority, kind and name.
fn parse_narrowing(q: &ListQuery) -> Result<Narrowing, ApiError> {
    let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let priority = given(&q.priority)
        .map(|p| {
            // Exactly `p0`/`P0`…: not the bare digits or padding the create body allows.
            let exact = Priority::parse(&p).ok().filter(|_| p.len() == 2);
            exact.ok_or_else(|| {
                ApiError::BadRequest(format!("priority must be one of p0, p1, p2, got {p:?}"))
            })
        })
        .transpose()?;
    let kind = given(&q.kind)
        .map(|k| {
            TaskKind::parse(&k).map_err(|_| {
                ApiError::BadRequest(format!(
                    "kind must be one of manual, exec, agent, hook, noop, got {k:?}"
                ))
            })
        })
        .transpose()?;
    let text = given(&q.q).map(|t| t.to_lowercase());
    if text
        .as_ref()
        .is_some_and(|t| t.chars().count() > MAX_QUERY_CHARS)
    {
        return Err(ApiError::BadRequest(format!(
            "q must be at most {MAX_QUERY_CHARS} characters"
        )));
    }
    Ok((priority, kind, text))
}

fn parse_assignee(raw: Option<&str>) -> Result<Option<Assignee>, ApiError> {
    raw.filter(|s| !s.is_empty())
        .map(|s| Assignee::parse(s).map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()
}

/// The `status` of a listing; `stalled` means running and unchanged for longer than
/// `relay.stall_after_s` ([`crate::domain::StallRule`], the rule of the relay, the overview's and
/// `/metrics`' stalled count).
fn parse_status(
    raw: Option<&str>,
    state: &AppState,
) -> Result<(Option<TaskStatus>, Option<chrono::DateTime<chrono::Utc>>), ApiError> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok((None, None)),
        Some("stalled") => Ok((
            Some(TaskStatus::Running),
            Some(state.stall.since(crate::domain::now())),
        )),
        Some(s) => match TaskStatus::parse(s) {
            Some(status) => Ok((Some(status), None)),
            None => Err(ApiError::BadRequest(format!(
                "status must be one of scheduled, pending, running, stalled, completed, failed, \
                 cancelled, got {s:?}"
            ))),
        },
    }
}

/// `finished_after`: an RFC 3339 time, for a listing of a final status only (those list the
/// most recently finished first, so the walk can stop at the first task finished before it).
fn parse_finished_after(
    raw: Option<&str>,
    status: Option<TaskStatus>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let when = chrono::DateTime::parse_from_rfc3339(raw).map_err(|_| {
        ApiError::BadRequest(format!(
            "finished_after must be an RFC 3339 time such as 2026-12-07T18:00:00Z, got {raw:?}"
        ))
    })?;
    match status {
        Some(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled) => {
            Ok(Some(when.with_timezone(&chrono::Utc)))
        }
        _ => Err(ApiError::BadRequest(
            "finished_after needs status=completed, failed or cancelled".into(),
        )),
    }
}

/// Ends `page` at its first task finished before `cutoff`: a listing of a final status is
/// newest finished first, so none after it is due either, and no next page is offered.
fn cut_at(page: &mut crate::tasks::Page, cutoff: chrono::DateTime<chrono::Utc>) {
    let older = (page.tasks.iter()).position(|t| t.finished_time.is_none_or(|f| f < cutoff));
    if let Some(at) = older {
        page.tasks.truncate(at);
        page.next = None;
    }
}

fn parse_limit(raw: Option<&str>, state: &AppState) -> Result<usize, ApiError> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(state.limits.default_page);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=state.limits.max_page).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be a number from 1 to {}, got {raw:?}",
            state.limits.max_page
        ))),
    }
}

/// `GET /api/tasks?assigned_to=&status=&priority=&kind=&q=&finished_after=&limit=&before=`,
/// newest first. A full page carries the next page's cursor in `X-Next-Cursor` (and a
/// `Link: <…>; rel="next"`); pass it as `before`. With `priority`, `kind` or `q` (checked on
/// each task read, see `TaskService::list_page`) one call walks a bounded number of tasks: a
/// page may come back short, even empty, with a cursor to walk on from; only a page without a
/// cursor is the end. `finished_after` ends the listing at the first task finished before it.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let assignee = parse_assignee(q.assigned_to.as_deref())?;
    if let Some(a) = &assignee {
        who.check(a)?;
    }
    let (status, unchanged_since) = parse_status(q.status.as_deref(), &state)?;
    let before = match q.before.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(raw.parse::<Cursor>().map_err(|_| {
            ApiError::BadRequest(format!(
                "before must be a cursor from X-Next-Cursor, got {raw:?}"
            ))
        })?),
    };
    let (priority, kind, name_contains) = parse_narrowing(&q)?;
    let finished_after = parse_finished_after(q.finished_after.as_deref(), status)?;
    let filter = ListFilter {
        assignee,
        status,
        scope: who.visible(),
        limit: parse_limit(q.limit.as_deref(), &state)?,
        before,
        priority,
        kind,
        name_contains,
        unchanged_since,
    };
    let mut page = state.tasks.list_page(&filter).await?;
    if let Some(cutoff) = finished_after {
        cut_at(&mut page, cutoff);
    }
    if filter.status.is_none() {
        // A listing by status shows what it walked; one of every status shows states as
        // `GET /api/tasks/{id}` does (a fired delayed task no one recorded yet is pending).
        let shown = page.tasks.into_iter().map(|t| state.tasks.as_shown(t));
        page.tasks = futures::future::join_all(shown).await;
    }
    let mut headers = axum::http::HeaderMap::new();
    if let Some(next) = page.next {
        let link = next_link(&q, &filter, next);
        if let Ok(v) = axum::http::HeaderValue::from_str(&next.to_string()) {
            headers.insert("x-next-cursor", v);
        }
        if let Ok(v) = axum::http::HeaderValue::from_str(&link) {
            headers.insert(header::LINK, v);
        }
    }
    Ok((headers, Json(page.tasks)))
}

/// `<…>; rel="next"` for the page after the one answered.
fn next_link(q: &ListQuery, f: &ListFilter, next: Cursor) -> String {
    let mut url = format!("/api/tasks?limit={}&before={next}", f.limit);
    let given = [
        ("assigned_to", &q.assigned_to),
        ("status", &q.status),
        ("priority", &q.priority),
        ("kind", &q.kind),
        ("q", &q.q),
        ("finished_after", &q.finished_after),
    ];
    for (k, v) in given {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            let v: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            url.push_str(&format!("&{k}={v}"));
        }
    }
    format!("<{url}>; rel=\"next\"")
}

/// `GET /api/tasks/pending?assigned_to=&limit=`: P0 first, oldest first within a priority.
pub(super) async fn pending(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<ListQuery>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref(), &state)?;
    let assignee = match parse_assignee(q.assigned_to.as_deref())? {
        Some(a) => {
            who.check(&a)?;
            Some(a)
        }
        None => match who.visible() {
            None => None,
            Some(set) if set.len() == 1 => set.into_iter().next(),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "assigned_to is required for a key scoped to several assignees".into(),
                ))
            }
        },
    };
    Ok(Json(state.tasks.pending(assignee.as_ref(), limit).await?))
}
