//! The relay over HTTP: push ingest (`POST /api/push`, seed 000's endpoint), and deliveries —
//! list, inspect, replay one, or replay everything dead for a destination since a time.
//!
//! The handlers parse and check the request, call the relay's delivery store
//! ([`crate::relay::store`], which alone reads and writes the DELIVERIES stream and the
//! records, a read costing about what it returns), and shape the answer.

use super::auth::{Principal, Scope};
use super::error::{ApiError, IdPath, JsonBody, Params};
use super::state::AppState;
use crate::domain::TaskId;
use crate::relay::job::{DeliveryRecord, DeliveryStatus};
use crate::relay::store::{is_token, ListQuery, StoreError};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// Deliveries and pushes are for admin keys only (403 otherwise).
fn admin_only(who: &Principal) -> Result<(), ApiError> {
    match who.scope {
        Scope::All => Ok(()),
        _ => Err(ApiError::Forbidden(
            "deliveries and pushes need an admin key".into(),
        )),
    }
}

/// Seed 000's push body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PushBody {
    /// Optional: without it the push destination's own session is used.
    #[serde(default)]
    session_id: Option<String>,
    /// The text to deliver (not empty).
    content: String,
    /// `assistant` when given.
    #[serde(default)]
    role: Option<String>,
}

/// `POST /api/push` `{sessionId, content, role}`: queued for the relay, which delivers it to its
/// `relay.push_destination` with the session id replaced, retried like every delivery. Answers
/// 202 with the delivery id.
pub(super) async fn push(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<PushBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    if body.content.is_empty()
        || body
            .session_id
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
    {
        return Err(ApiError::Unprocessable(
            "content (and sessionId, when given) must not be empty".into(),
        ));
    }
    if body.role.as_deref().is_some_and(|r| r != "assistant") {
        return Err(ApiError::Unprocessable("role must be \"assistant\"".into()));
    }
    // Queued under the relay's push key; the relay delivers it to `relay.push_destination`.
    let id = state
        .deliveries
        .queue_push(body.content, body.session_id)
        .await
        .map_err(store_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": "queued"})),
    ))
}

/// Query of the delivery list; parsed by hand so bad values get clear 400s.
#[derive(Debug, Deserialize)]
pub(super) struct DeliveryQuery {
    status: Option<String>,
    destination: Option<String>,
    task_id: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// One listing, parsed: what the store reads, and the task whose deliveries are wanted.
#[derive(Debug)]
struct Listing {
    query: ListQuery,
    task: Option<TaskId>,
}

/// Most deliveries one destination replay queues again; the answer says when more remain.
const MAX_REPLAY: usize = 1000;

/// How the API answers a store error.
fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(id) => ApiError::Conflict {
            code: "contended",
            message: format!("delivery {id} changed meanwhile; try again"),
        },
        StoreError::StillPending(id) => ApiError::Conflict {
            code: "still_pending",
            message: format!("delivery {id} is still pending"),
        },
        StoreError::NotFound(id) | StoreError::BadId(id) => {
            ApiError::NotFound(format!("delivery {id} not found"))
        }
        StoreError::Bus(e) => ApiError::Unavailable(e.into()),
    }
}

/// The 400 for a `what` that is not a subject token.
fn bad_token(what: &str, raw: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "{what} must be made of letters, digits, '_' and '-', got {raw:?}"
    ))
}

/// The listing `q` asks for, or a 400 naming the bad parameter.
fn parse_query(q: &DeliveryQuery, state: &AppState) -> Result<Listing, ApiError> {
    let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let status = match given(&q.status) {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(&s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status must be pending, delivered or dead, got {s:?}"
            ))
        })?),
    };
    let destination = given(&q.destination);
    if let Some(d) = destination.as_deref().filter(|d| !is_token(d)) {
        return Err(bad_token("destination", d));
    }
    let task = given(&q.task_id)
        .map(|t| TaskId::parse(&t).map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()?;
    let before = match given(&q.before) {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "before must be a cursor from X-Next-Cursor, got {raw:?}"
            ))
        })?),
    };
    let limit = q
        .limit
        .unwrap_or(state.limits.default_page)
        .clamp(1, state.limits.max_page);
    let query = ListQuery {
        status,
        destination,
        limit,
        before,
    };
    Ok(Listing { query, task })
}

/// `GET /api/deliveries?status=pending|delivered|dead&destination=&task_id=&limit=&before=`:
/// records, most recently written (attempted, settled, replayed) first. `destination` is a
/// destination name or a queue key. A full page carries the next page's cursor in
/// `X-Next-Cursor` (and a `Link: <…>; rel="next"`); pass it as `before`.
///
/// The cost is that of the page: by status and destination, a walk back over the records on
/// those keys only; by task, the last record of each of the task's events.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<DeliveryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    admin_only(&who)?;
    let listing = parse_query(&q, &state)?;
    let page = match &listing.task {
        Some(task) => {
            let events: Vec<String> = state
                .tasks
                .events(task)
                .await?
                .into_iter()
                .map(|e| e.id)
                .collect();
            state
                .deliveries
                .list_for_events(&listing.query, &events)
                .await
        }
        None => state.deliveries.list(&listing.query).await,
    }
    .map_err(store_error)?;
    let mut headers = axum::http::HeaderMap::new();
    if let Some(next) = page.next {
        headers.insert("x-next-cursor", next.into());
        if let Ok(v) = axum::http::HeaderValue::from_str(&next_link(&listing, next)) {
            headers.insert(header::LINK, v);
        }
    }
    let records: Vec<DeliveryRecord> = page.records.into_iter().map(|s| s.record).collect();
    Ok((headers, Json(records)))
}

/// `<…>; rel="next"` for the page after the one answered.
fn next_link(l: &Listing, next: u64) -> String {
    let q = &l.query;
    let mut url = format!("/api/deliveries?limit={}&before={next}", q.limit);
    let task = l.task.as_ref().map(|t| t.as_str().to_string());
    let status = q.status.map(|s| s.as_str().to_string());
    for (k, v) in [
        ("status", status),
        ("destination", q.destination.clone()),
        ("task_id", task),
    ] {
        if let Some(v) = v {
            url.push_str(&format!("&{k}={v}"));
        }
    }
    format!("<{url}>; rel=\"next\"")
}

/// `GET /api/deliveries/{id}`: the job and every attempt.
pub(super) async fn get_one(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<DeliveryRecord>, ApiError> {
    admin_only(&who)?;
    Ok(Json(state.deliveries.get(&id).await.map_err(store_error)?))
}

/// `POST /api/deliveries/{id}/replay`: queue it again (re-enables a disabled destination).
pub(super) async fn replay(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    state.deliveries.replay(&id).await.map_err(store_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"replayed": [id]}))))
}

/// Body of a destination-wide replay.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ReplaySince {
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Query of a destination-wide replay (`?since=`, the body's alternative).
#[derive(Debug, Deserialize)]
pub(super) struct ReplaySinceQuery {
    since: Option<String>,
}

/// The `since` of a destination replay, from the query or the body (not both): an RFC 3339
/// time, or none (every dead delivery).
fn replay_since(
    query: ReplaySinceQuery,
    body: Option<ReplaySince>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let from_body = body.unwrap_or_default().since;
    let Some(raw) = query.since.filter(|s| !s.is_empty()) else {
        return Ok(from_body);
    };
    if from_body.is_some() {
        return Err(ApiError::BadRequest(
            "since: give it in the query or in the body, not both".into(),
        ));
    }
    // As the body's `since` is read (serde), so both accept the same times.
    raw.parse::<chrono::DateTime<chrono::FixedOffset>>()
        .map(|t| Some(t.to_utc()))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "since must be an RFC 3339 time (2026-01-02T03:04:05Z), got {raw:?}"
            ))
        })
}

/// `POST /api/destinations/{key}/replay?since=` (or `{"since": RFC 3339}`): the dead deliveries
/// of that destination (key `n_<name>` or the name) created since then (all without it), queued
/// again oldest first, at most [`MAX_REPLAY`] a call. Answers the ids queued, their count, and
/// `more` when others remain (call again: the ones queued are no longer dead).
///
/// The store reads that destination's dead records only, from the first one written since
/// then on, and reads each again before it is replayed (one replayed meanwhile is left alone).
pub(super) async fn replay_destination(
    State(state): State<AppState>,
    who: Principal,
    IdPath(dest): IdPath,
    Params(query): Params<ReplaySinceQuery>,
    JsonBody(body): JsonBody<Option<ReplaySince>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    if !is_token(&dest) {
        return Err(bad_token("the destination", &dest));
    }
    let since = replay_since(query, body)?;
    if !destination_known(&state, &dest).await? {
        return Err(ApiError::NotFound(format!(
            "no destination {dest:?}: not in the relay's config here, and no delivery to it is recorded"
        )));
    }
    let replayed = state
        .deliveries
        .replay_dead(&dest, since, MAX_REPLAY)
        .await
        .map_err(store_error)?;
    let count = replayed.ids.len();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replayed": replayed.ids, "count": count, "more": replayed.more})),
    ))
}

/// Whether `dest` (a name or a queue key) is a destination this API can tell exists: configured
/// here, or with at least one delivery record (any status) in the bucket.
pub(super) async fn destination_known(state: &AppState, dest: &str) -> Result<bool, ApiError> {
    let name = dest.strip_prefix("n_").unwrap_or(dest);
    if state.destinations.contains(name) {
        return Ok(true);
    }
    state
        .deliveries
        .has_records(dest)
        .await
        .map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_answer_the_codes_the_delivery_routes_always_gave() {
        let id = || "evt_1.n_hook".to_string();
        assert!(matches!(
            store_error(StoreError::NotFound(id())),
            ApiError::NotFound(m) if m == "delivery evt_1.n_hook not found"
        ));
        assert!(matches!(
            store_error(StoreError::BadId(id())),
            ApiError::NotFound(_)
        ));
        assert!(matches!(
            store_error(StoreError::StillPending(id())),
            ApiError::Conflict {
                code: "still_pending",
                ..
            }
        ));
        assert!(matches!(
            store_error(StoreError::Conflict(id())),
            ApiError::Conflict {
                code: "contended",
                ..
            }
        ));
    }
}
