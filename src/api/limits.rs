//! `/api/limits`: flow control across the fleet (see `limits/`). List what is declared, the
//! overrides and every key in use; set or remove a key's override at runtime.

use super::auth::Principal;
use super::error::{ApiError, JsonBody};
use super::{AppState, Params};
use crate::domain::{Assignee, KeyLimits, TaskStatus};
use crate::limits::{LimitsError, Overview};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Most pending tasks one listing reads to count the tasks waiting per key.
const WAITING_SCAN: usize = 10_000;

impl From<LimitsError> for ApiError {
    fn from(e: LimitsError) -> Self {
        match e {
            LimitsError::Invalid(why) => Self::Unprocessable(why),
            e @ LimitsError::Contended(_) => Self::Conflict {
                code: "contended",
                message: e.to_string(),
            },
            LimitsError::Bus(b) => Self::Unavailable(b.into()),
        }
    }
}

/// Query of `GET /api/limits`.
#[derive(Debug, Deserialize)]
pub(super) struct LimitsQuery {
    assignee: Option<String>,
}

/// `GET /api/limits?assignee=`: what the workers declared, the overrides, and each key in use
/// with its limit, the tasks holding it and the tasks waiting for it. A scoped key sees its
/// assignees only.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<LimitsQuery>,
) -> Result<Json<Overview>, ApiError> {
    let only = who.only(q.assignee)?;
    let mut view = state
        .flow
        .overview(only.as_ref().map(Assignee::as_str))
        .await?;
    if let Some(visible) = who.visible() {
        let shown = |a: &str| visible.iter().any(|v| v.as_str() == a);
        view.declared.retain(|a, _| shown(a));
        view.overrides.retain(|o| shown(&o.assignee));
        view.keys.retain(|k| shown(&k.assignee));
    }
    count_waiting(&state, &mut view).await?;
    Ok(Json(view))
}

/// Fills `waiting` of the concurrency and rate keys from the pending tasks that name them.
async fn count_waiting(state: &AppState, view: &mut Overview) -> Result<(), ApiError> {
    let mut assignees: Vec<String> = view
        .keys
        .iter()
        .filter(|k| k.kind == "concurrency" || k.kind == "rate")
        .map(|k| k.assignee.clone())
        .collect();
    assignees.dedup();
    let mut waiting: HashMap<(String, &str, String), usize> = HashMap::new();
    for a in assignees {
        let Ok(assignee) = Assignee::parse(&a) else {
            continue;
        };
        let pending = state.tasks.pending(Some(&assignee), WAITING_SCAN).await?;
        for t in pending.iter().filter(|t| t.status == TaskStatus::Pending) {
            if let Some(k) = &t.concurrency_key {
                *waiting
                    .entry((a.clone(), "concurrency", k.clone()))
                    .or_default() += 1;
            }
            if let Some(k) = &t.rate_key {
                *waiting.entry((a.clone(), "rate", k.clone())).or_default() += 1;
            }
        }
    }
    for k in view.keys.iter_mut().filter(|k| k.kind != "lane") {
        let id = (k.assignee.clone(), k.kind, k.key.clone());
        k.waiting = waiting.get(&id).copied().unwrap_or(0);
    }
    Ok(())
}

/// `PUT /api/limits/{assignee}/{key}`: sets the key's override (`concurrency`, `rate`,
/// `burst`); every replica's next claim uses it.
pub(super) async fn put(
    State(state): State<AppState>,
    who: Principal,
    Path((assignee, key)): Path<(String, String)>,
    JsonBody(limits): JsonBody<KeyLimits>,
) -> Result<Json<Value>, ApiError> {
    let assignee = checked(&who, &assignee)?;
    state
        .flow
        .set_override(assignee.as_str(), &key, limits.clone())
        .await?;
    let effective = state.flow.effective(assignee.as_str(), &key).await?;
    Ok(Json(json!({
        "assignee": assignee, "key": key, "override": limits, "effective": effective,
    })))
}

/// `DELETE /api/limits/{assignee}/{key}`: removes the key's override (the config's patterns
/// apply again). 404 when there is none.
pub(super) async fn remove(
    State(state): State<AppState>,
    who: Principal,
    Path((assignee, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let assignee = checked(&who, &assignee)?;
    if state.flow.remove_override(assignee.as_str(), &key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "no override for key {key:?} of {assignee}"
        )))
    }
}

/// The path's assignee, if valid and visible to `who`.
fn checked(who: &Principal, assignee: &str) -> Result<Assignee, ApiError> {
    let a =
        Assignee::parse(assignee).map_err(|e| ApiError::Unprocessable(format!("assignee: {e}")))?;
    who.check(&a)?;
    Ok(a)
}

/// Sets the flow-control gauges of `/metrics` from the overview (on every scrape).
pub(super) async fn count_usage(state: &AppState) {
    let view = match state.flow.overview(None).await {
        Ok(v) => v,
        Err(e) => return tracing::warn!(error.message = %e, "flow control unavailable"),
    };
    let flow = &state.tasks.metrics().flow;
    flow.running.clear();
    flow.waiting.clear();
    flow.next_slot.clear();
    for k in &view.keys {
        let labels = crate::metrics::FlowLabels {
            assignee: k.assignee.clone(),
            kind: k.kind.to_string(),
            key: k.key.clone(),
        };
        flow.running
            .get_or_create(&labels)
            .set(k.running.len() as i64);
        if k.kind == "lane" {
            flow.waiting.get_or_create(&labels).set(k.waiting as i64);
        }
        if let Some(s) = k.next_slot_in_s {
            flow.next_slot.get_or_create(&labels).set(s);
        }
    }
}
