//! `GET /api/workers`: the worker registry (see `registry.rs`), and the `workers_online` gauge.

use super::auth::Principal;
use super::{ApiError, AppState, Params};
use crate::domain::Assignee;
use crate::registry::{self, Announcement};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

/// Query of `/api/workers`.
#[derive(Debug, Deserialize)]
pub(super) struct WorkersQuery {
    assignee: Option<String>,
}

/// `GET /api/workers?assignee=`: the workers (and relays) alive now, oldest first. A key scoped
/// to some assignees sees their workers only (and no relay).
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<WorkersQuery>,
) -> Result<Json<Vec<Announcement>>, ApiError> {
    let only = who.only(q.assignee)?;
    let visible = who.visible();
    let all = registry::list(state.tasks.bus())
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let shown = all.into_iter().filter(|w| {
        let assignee = w.assignee.as_deref().and_then(|a| Assignee::parse(a).ok());
        let wanted = only.as_ref().is_none_or(|o| assignee.as_ref() == Some(o));
        let allowed = visible
            .as_ref()
            .is_none_or(|v| assignee.as_ref().is_some_and(|a| v.contains(a)));
        wanted && allowed
    });
    Ok(Json(shown.collect()))
}

/// Sets `workers_online{assignee}` from the registry (on every scrape of `/metrics`).
pub(super) async fn count_online(state: &AppState) {
    match registry::list(state.tasks.bus()).await {
        Ok(all) => {
            let gauge = &state.tasks.metrics().workers_online;
            gauge.clear();
            for w in all.iter().filter(|w| w.kind == "worker") {
                let labels = crate::metrics::AssigneeLabel {
                    assignee: w.assignee.clone().unwrap_or_default(),
                };
                gauge.get_or_create(&labels).inc();
            }
        }
        Err(e) => tracing::warn!(error.message = %e, "worker registry unavailable"),
    }
}
