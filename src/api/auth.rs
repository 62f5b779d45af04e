//! API keys: `X-Bot-Key: KEY` or `Authorization: Bearer KEY`. Keys are kept as SHA-256 digests and
//! compared in constant time; a key is either admin (every assignee) or scoped to assignees.

use super::error::ApiError;
use super::state::AppState;
use crate::config::ApiConfig;
use crate::domain::{Assignee, Task, TaskId};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use subtle::ConstantTimeEq;

/// What a key may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every assignee.
    All,
    /// These assignees only.
    Assignees(HashSet<Assignee>),
    /// One attempt of one task (a task-scoped token from a worker).
    Task(TaskId, u32),
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's name (recorded as the operator in the task log).
    pub name: String,
    /// What it may touch.
    pub scope: Scope,
}

impl Principal {
    /// Refuses with 403 unless this caller may touch `assignee`'s tasks.
    pub fn check(&self, assignee: &Assignee) -> Result<(), ApiError> {
        match &self.scope {
            Scope::All => Ok(()),
            Scope::Assignees(set) if set.contains(assignee) => Ok(()),
            Scope::Task(..) => Err(ApiError::Forbidden(
                "a task-scoped token may only report on its own task".into(),
            )),
            Scope::Assignees(_) => Err(ApiError::Forbidden(format!(
                "key `{}` may not access tasks assigned to {assignee}",
                self.name
            ))),
        }
    }

    /// Refuses with 403 unless this caller may touch `task`.
    pub fn check_task(&self, task: &Task) -> Result<(), ApiError> {
        match &self.scope {
            Scope::Task(id, attempt) if *id == task.id && *attempt == task.attempt => Ok(()),
            Scope::Task(..) => Err(ApiError::Forbidden(
                "this task-scoped token does not hold that task (other task, or an old attempt)"
                    .into(),
            )),
            _ => self.check(&task.assigned_to),
        }
    }

    /// A listing's `?assignee=` filter: `None` for none (or empty), 400 if it is no assignee
    /// name, 403 if this caller may not see it.
    pub fn only(&self, assignee: Option<String>) -> Result<Option<Assignee>, ApiError> {
        let only = assignee
            .filter(|s| !s.is_empty())
            .map(|s| Assignee::parse(&s).map_err(|e| ApiError::BadRequest(e.to_string())))
            .transpose()?;
        if let Some(a) = &only {
            self.check(a)?;
        }
        Ok(only)
    }

    /// The assignees a listing is limited to, `None` for all.
    pub fn visible(&self) -> Option<HashSet<Assignee>> {
        match &self.scope {
            Scope::All => None,
            Scope::Assignees(s) => Some(s.clone()),
            Scope::Task(..) => Some(HashSet::new()),
        }
    }
}

/// The keys this API accepts.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<([u8; 32], Principal)>,
    task_token_secret: Option<SecretString>,
}

/// A configured key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("API key `{name}`: {reason}")]
pub struct KeyError {
    name: String,
    reason: String,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    /// The admin key plus every scoped key of the config (reading `key_env` variables).
    pub fn from_config(
        cfg: &ApiConfig,
        admin: Option<&SecretString>,
        task_token_secret: Option<&SecretString>,
    ) -> Result<Self, KeyError> {
        let mut keys = Self {
            task_token_secret: task_token_secret.cloned(),
            ..Self::default()
        };
        if let Some(k) = admin {
            keys.add(k.expose_secret(), "admin", Scope::All);
        }
        for k in &cfg.keys {
            let secret = match (&k.key, &k.key_env) {
                (Some(s), _) => s.expose_secret().to_string(),
                (None, Some(var)) => std::env::var(var).map_err(|_| KeyError {
                    name: k.name.clone(),
                    reason: format!("environment variable {var} is not set"),
                })?,
                (None, None) => unreachable!("validated by Config::validate"),
            };
            if secret.len() < 16 {
                return Err(KeyError {
                    name: k.name.clone(),
                    reason: "keys must be at least 16 characters".into(),
                });
            }
            let scope = if k.assignees.iter().any(|a| a == "*") {
                Scope::All
            } else {
                Scope::Assignees(
                    k.assignees
                        .iter()
                        .filter_map(|a| Assignee::parse(a).ok())
                        .collect(),
                )
            };
            keys.add(&secret, &k.name, scope);
        }
        Ok(keys)
    }

    /// Adds one key.
    pub fn add(&mut self, key: &str, name: &str, scope: Scope) {
        self.entries.push((
            digest(key),
            Principal {
                name: name.to_string(),
                scope,
            },
        ));
    }

    /// The caller a presented key belongs to.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        if crate::token::is_task_token(presented) {
            let secret = self.task_token_secret.as_ref()?;
            let (task, attempt) =
                crate::token::verify(secret.expose_secret().as_bytes(), presented)?;
            return Some(Principal {
                name: format!("task:{task}"),
                scope: Scope::Task(task, attempt),
            });
        }
        let d = digest(presented);
        let mut found = None;
        for (known, principal) in &self.entries {
            if bool::from(known.ct_eq(&d)) && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// The key a request presents, from `X-Bot-Key` or `Authorization: Bearer`.
pub fn presented_key(parts: &Parts) -> Option<&str> {
    if let Some(v) = parts.headers.get("x-bot-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = parts.headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        presented_key(parts)
            .and_then(|k| state.keys.authenticate(k))
            .ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_keys_authenticate_and_scopes_hold() {
        let mut keys = Keys::default();
        keys.add("admin-key-0123456789", "admin", Scope::All);
        let anna: HashSet<_> = [Assignee::parse("anna").unwrap()].into();
        keys.add("anna-key-0123456789", "anna-bot", Scope::Assignees(anna));
        assert!(keys.authenticate("nope").is_none());
        let p = keys.authenticate("anna-key-0123456789").unwrap();
        assert!(p.check(&Assignee::parse("anna").unwrap()).is_ok());
        assert!(p.check(&Assignee::parse("trump").unwrap()).is_err());
        assert_eq!(
            keys.authenticate("admin-key-0123456789").unwrap().scope,
            Scope::All
        );
    }
}
