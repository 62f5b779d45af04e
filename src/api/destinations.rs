//! The relay's destinations over HTTP: `GET /api/destinations` (the configured ones and every
//! one a 410 Gone disabled, with why and when) and `POST /api/destinations/{name}/enable`
//! (enabled again without a replay). Admin keys only, like every delivery route; the state
//! itself is the relay's (`relay/disabled.rs`). A destination-wide replay is in `deliveries.rs`.

use super::auth::{Principal, Scope};
use super::error::{ApiError, IdPath};
use super::state::AppState;
use crate::relay::disabled::{self, Disabled};
use crate::relay::store::is_token;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;

/// One destination as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct DestinationState {
    /// Its queue key (`n_<name>`, `n_<name>_<session hash>`, `h_<hash>`, `push`).
    key: String,
    /// The configured destination it belongs to, if any.
    name: Option<String>,
    /// Named in this API process's config (`[relay.destinations.*]`).
    configured: bool,
    /// Deliveries to it are refused (dead at once) until it is enabled or replayed.
    disabled: bool,
    /// Why it was disabled.
    reason: Option<String>,
    /// When it was disabled.
    time: Option<chrono::DateTime<chrono::Utc>>,
}

fn admin_only(who: &Principal) -> Result<(), ApiError> {
    match who.scope {
        Scope::All => Ok(()),
        _ => Err(ApiError::Forbidden(
            "destinations need an admin key (they are shared by every assignee)".into(),
        )),
    }
}

/// The configured name whose queue `key` is: `n_<name>` or a chat session of it
/// (`n_<name>_<hash>`, the longest such name when several fit).
fn configured_name(state: &AppState, key: &str) -> Option<String> {
    let rest = key.strip_prefix("n_")?;
    if state.destinations.contains(rest) {
        return Some(rest.to_string());
    }
    state
        .destinations
        .iter()
        .filter(|n| {
            rest.strip_prefix(n.as_str())
                .is_some_and(|t| t.starts_with('_'))
        })
        .max_by_key(|n| n.len())
        .cloned()
}

/// `GET /api/destinations`: every destination configured here and every disabled one (at most
/// [`disabled::MAX_LISTED`]), by queue key.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<DestinationState>>, ApiError> {
    admin_only(&who)?;
    let stored = disabled::list(state.tasks.bus())
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let mut by_key: BTreeMap<String, Option<Disabled>> = state
        .destinations
        .iter()
        .map(|n| (format!("n_{n}"), None))
        .collect();
    by_key.extend(stored.into_iter().map(|(k, d)| (k, Some(d))));
    let listed = by_key
        .into_iter()
        .map(|(key, d)| {
            let name = configured_name(&state, &key);
            DestinationState {
                configured: name.as_ref().is_some_and(|n| key == format!("n_{n}")),
                name,
                disabled: d.is_some(),
                reason: d.as_ref().and_then(|d| d.reason.clone()),
                time: d.and_then(|d| d.time),
                key,
            }
        })
        .collect();
    Ok(Json(listed))
}

/// The queue keys `dest` (a name or a queue key) stands for among the disabled ones: the key
/// itself, `n_<dest>`, and the chat sessions of `dest` (`n_<dest>_<hash>`, unless that is
/// another configured name's).
fn keys_of(state: &AppState, dest: &str, disabled: &[(String, Disabled)]) -> Vec<String> {
    let named = format!("n_{dest}");
    disabled
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            *k == dest
                || **k == named
                || (k.starts_with(&format!("{named}_"))
                    && configured_name(state, k).is_none_or(|n| n == dest))
        })
        .cloned()
        .collect()
}

/// `POST /api/destinations/{name}/enable`: delivers to a destination a 410 disabled again,
/// without replaying anything (deliveries that died meanwhile stay dead; replay them to send
/// them). `name` is a destination name or a queue key. Answers the keys enabled (none when it
/// was not disabled); 404 for a destination nobody configured or delivered to.
pub(super) async fn enable(
    State(state): State<AppState>,
    who: Principal,
    IdPath(dest): IdPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin_only(&who)?;
    if !is_token(&dest) {
        return Err(ApiError::BadRequest(format!(
            "the destination must be made of letters, digits, '_' and '-', got {dest:?}"
        )));
    }
    let bus = state.tasks.bus();
    let unavailable = |e: crate::bus::BusError| ApiError::Unavailable(e.into());
    let stored = disabled::list(bus).await.map_err(unavailable)?;
    let keys = keys_of(&state, &dest, &stored);
    if keys.is_empty() && !super::deliveries::destination_known(&state, &dest).await? {
        return Err(ApiError::NotFound(format!(
            "no destination {dest:?}: not in the relay's config here, and no delivery to it is recorded"
        )));
    }
    let mut enabled = Vec::new();
    for key in keys {
        if disabled::enable(bus, &key).await.map_err(unavailable)? {
            enabled.push(key);
        }
    }
    Ok(Json(serde_json::json!({ "enabled": enabled })))
}
