//! The relay over HTTP: push ingest (`POST /api/push`, seed 000's endpoint), and deliveries —
//! list, inspect, replay one, or replay everything dead for a destination since a time.

use super::auth::{Principal, Scope};
use super::error::{ApiError, IdPath, JsonBody, Params};
use super::state::AppState;
use crate::bus::{decode, encode, message_headers, subjects, NatsResultExt};
use crate::relay::job::{DeliveryJob, DeliveryRecord, DeliveryStatus};
use async_nats::jetstream::kv;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

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
    content: String,
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
    let key = crate::relay::job::PUSH_KEY.to_string();
    let job = DeliveryJob {
        id: format!("push_{}", ulid::Ulid::new()),
        key,
        name: None,
        destination: None,
        event: None,
        task: None,
        text: body.content,
        session_id: body.session_id,
        created_time: crate::domain::now(),
    };
    queue(&state, &job, &job.id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": job.id, "status": "queued"})),
    ))
}

async fn queue(state: &AppState, job: &DeliveryJob, msg_id: &str) -> Result<(), ApiError> {
    let js = &state.tasks.bus().js;
    js.publish_with_headers(
        subjects::delivery(&job.key),
        message_headers(msg_id),
        encode(job),
    )
    .await
    .op("queue delivery")
    .map_err(|e| ApiError::Unavailable(e.into()))?
    .await
    .op("queue delivery ack")
    .map_err(|e| ApiError::Unavailable(e.into()))?;
    Ok(())
}

/// Query of the delivery list.
#[derive(Debug, Deserialize)]
pub(super) struct DeliveryQuery {
    status: Option<String>,
    destination: Option<String>,
    task_id: Option<String>,
    limit: Option<usize>,
}

async fn all_records(state: &AppState) -> Result<Vec<DeliveryRecord>, ApiError> {
    let bucket = &state.tasks.bus().topology.delivery_records;
    let stream = state
        .tasks
        .bus()
        .js
        .get_stream(format!("KV_{}", subjects::DELIVERY_BUCKET))
        .await
        .op("delivery bucket")
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let mut out = Vec::new();
    if stream.cached_info().state.messages == 0 {
        return Ok(out);
    }
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .op("watch deliveries")
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let read = async {
        while let Some(Ok(entry)) = watch.next().await {
            if entry.operation == kv::Operation::Put {
                if let Ok(r) = decode::<DeliveryRecord>("delivery record", &entry.value) {
                    out.push(r);
                }
            }
            if entry.delta == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), read).await;
    Ok(out)
}

/// `GET /api/deliveries?status=pending|delivered|dead&destination=&task_id=&limit=`, newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<DeliveryQuery>,
) -> Result<Json<Vec<DeliveryRecord>>, ApiError> {
    admin_only(&who)?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<DeliveryStatus>(Value::String(s.into())).map_err(|_| {
                ApiError::BadRequest("status must be pending, delivered or dead".into())
            })?,
        ),
    };
    let limit = q
        .limit
        .unwrap_or(state.limits.default_page)
        .clamp(1, state.limits.max_page);
    let mut records: Vec<DeliveryRecord> = all_records(&state)
        .await?
        .into_iter()
        .filter(|r| status.is_none_or(|s| r.status == s))
        .filter(|r| {
            q.destination
                .as_deref()
                .is_none_or(|d| r.job.key == d || r.job.name.as_deref() == Some(d))
        })
        .filter(|r| {
            q.task_id.as_deref().is_none_or(|t| {
                r.job
                    .event
                    .as_ref()
                    .is_some_and(|e| e.task_id.as_str() == t)
            })
        })
        .collect();
    records.sort_by_key(|r| std::cmp::Reverse(r.job.created_time));
    records.truncate(limit);
    Ok(Json(records))
}

async fn record(state: &AppState, id: &str) -> Result<(DeliveryRecord, u64), ApiError> {
    let not_found = || ApiError::NotFound(format!("delivery {id} not found"));
    let entry = state
        .tasks
        .bus()
        .topology
        .delivery_records
        .entry(id)
        .await
        .map_err(|_| not_found())?
        .filter(|e| e.operation == kv::Operation::Put)
        .ok_or_else(not_found)?;
    let r = decode::<DeliveryRecord>("delivery record", &entry.value)
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    Ok((r, entry.revision))
}

/// `GET /api/deliveries/{id}`: the job and every attempt.
pub(super) async fn get_one(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<DeliveryRecord>, ApiError> {
    admin_only(&who)?;
    Ok(Json(record(&state, &id).await?.0))
}

async fn replay_record(
    state: &AppState,
    mut rec: DeliveryRecord,
    revision: u64,
) -> Result<(), ApiError> {
    // Same delivery id (receivers de-duplicate on webhook-id), a new queue message.
    let msg_id = format!("{}:replay:{}", rec.job.id, ulid::Ulid::new());
    let _ = state
        .tasks
        .bus()
        .topology
        .destinations
        .delete(&rec.job.key)
        .await;
    rec.status = DeliveryStatus::Pending;
    rec.reason = Some("replayed".into());
    rec.updated_time = crate::domain::now();
    let _ = state
        .tasks
        .bus()
        .topology
        .delivery_records
        .update(&rec.job.id, encode(&rec), revision)
        .await;
    queue(state, &rec.job, &msg_id).await
}

/// `POST /api/deliveries/{id}/replay`: queue it again (re-enables a disabled destination).
pub(super) async fn replay(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    let (rec, revision) = record(&state, &id).await?;
    if rec.status == DeliveryStatus::Pending {
        return Err(ApiError::Conflict {
            code: "still_pending",
            message: format!("delivery {id} is still pending"),
        });
    }
    replay_record(&state, rec, revision).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"replayed": [id]}))))
}

/// Body of a destination-wide replay.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ReplaySince {
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/destinations/{key}/replay` `{"since": RFC 3339}`: every dead delivery of that
/// destination (key `n_<name>` or the name) created since then, queued again in order.
pub(super) async fn replay_destination(
    State(state): State<AppState>,
    who: Principal,
    IdPath(dest): IdPath,
    JsonBody(body): JsonBody<Option<ReplaySince>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin_only(&who)?;
    let since = body.unwrap_or_default().since;
    let mut dead: Vec<DeliveryRecord> = all_records(&state)
        .await?
        .into_iter()
        .filter(|r| r.status == DeliveryStatus::Dead)
        .filter(|r| r.job.key == dest || r.job.name.as_deref() == Some(dest.as_str()))
        .filter(|r| since.is_none_or(|s| r.job.created_time >= s))
        .collect();
    dead.sort_by_key(|r| r.job.created_time);
    let mut ids = Vec::new();
    for r in dead {
        let (rec, revision) = record(&state, &r.job.id).await?;
        ids.push(rec.job.id.clone());
        replay_record(&state, rec, revision).await?;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"replayed": ids}))))
}
