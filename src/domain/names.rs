//! Parsed newtypes for the names that travel in URLs, subjects and KV keys.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why a value could not be parsed into a domain type. The message is safe to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// An assignee name outside `[a-z0-9_-]{1,64}`.
    #[error("assigned_to must match [a-z0-9_-]{{1,64}}, got {0:?}")]
    BadAssignee(String),
    /// A priority other than P0, P1 or P2.
    #[error("priority must be one of P0, P1, P2, got {0:?}")]
    BadPriority(String),
    /// A task id that cannot name a task.
    #[error("task id must match [A-Za-z0-9_-]{{1,64}}, got {0:?}")]
    BadTaskId(String),
    /// A kind outside the known task kinds.
    #[error("kind must be one of manual, exec, agent, hook, noop, got {0:?}")]
    BadKind(String),
}

fn is_token(s: &str, max: usize, allow_upper: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_digit()
                || b.is_ascii_lowercase()
                || b == b'_'
                || b == b'-'
                || (allow_upper && b.is_ascii_uppercase())
        })
}

/// A task id: a ULID for tasks created by taskfleet, or any `[A-Za-z0-9_-]{1,64}` token chosen by
/// a producer that publishes to NATS directly. Safe to use as a KV key and a subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(ulid::Ulid::new().to_string())
    }

    /// Parses a user-supplied id.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if is_token(s, 64, true) {
            Ok(Self(s.to_string()))
        } else {
            Err(DomainError::BadTaskId(s.to_string()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The container (bot) a task is assigned to, e.g. `anna`: `[a-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Assignee(String);

impl Assignee {
    /// Parses an assignee name.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if is_token(s, 64, false) {
            Ok(Self(s.to_string()))
        } else {
            Err(DomainError::BadAssignee(s.to_string()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Assignee {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Assignee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Task priority; P0 is the most urgent. Serialized as `"P0"`, accepted as `P0`/`p0`/`0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
pub enum Priority {
    /// Urgent.
    P0,
    /// Normal (the default).
    #[default]
    P1,
    /// Background.
    P2,
}

impl Priority {
    /// All priorities, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::P0, Priority::P1, Priority::P2];

    /// Parses `P0`, `p0` or `0` (and likewise for 1 and 2).
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        match s.trim() {
            "P0" | "p0" | "0" => Ok(Self::P0),
            "P1" | "p1" | "1" => Ok(Self::P1),
            "P2" | "p2" | "2" => Ok(Self::P2),
            other => Err(DomainError::BadPriority(other.to_string())),
        }
    }

    /// The lowercase subject token: `p0`, `p1`, `p2`.
    pub fn token(self) -> &'static str {
        match self {
            Self::P0 => "p0",
            Self::P1 => "p1",
            Self::P2 => "p2",
        }
    }

    /// The display form: `P0`, `P1`, `P2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P0 => "P0",
            Self::P1 => "P1",
            Self::P2 => "P2",
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Self::parse(&s).map_err(serde::de::Error::custom),
            serde_json::Value::Number(n) => {
                Self::parse(&n.to_string()).map_err(serde::de::Error::custom)
            }
            other => Err(serde::de::Error::custom(DomainError::BadPriority(
                other.to_string(),
            ))),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What runs a task. `manual` tasks are claimed by bots over the API; the others by workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Claimed and finished by a bot over the API (seed 001's HEARTBEAT pattern).
    #[default]
    Manual,
    /// A command run by a worker (seed 003).
    Exec,
    /// An external coding agent run by a worker (seed 004).
    Agent,
    /// Handed by a worker to a local HTTP endpoint; the bot reports back over the API.
    Hook,
    /// Does nothing and completes at once (benchmarks, smoke tests).
    Noop,
}

impl TaskKind {
    /// Parses a kind name.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| DomainError::BadKind(s.to_string()))
    }

    /// The kind as text (also its subject token).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Exec => "exec",
            Self::Agent => "agent",
            Self::Hook => "hook",
            Self::Noop => "noop",
        }
    }

    /// Whether workers pull this kind (all but `manual`).
    pub fn is_worker_run(self) -> bool {
        self != Self::Manual
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignee_accepts_the_documented_alphabet_only() {
        assert!(Assignee::parse("session_agent").is_ok());
        assert!(Assignee::parse("cc-2").is_ok());
        assert!(Assignee::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "Anna", "an na", "anna.p0", "anna*", &"a".repeat(65)] {
            assert!(Assignee::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn priority_parses_opentask_spellings_and_orders_p0_first() {
        assert_eq!(Priority::parse("P0").unwrap(), Priority::P0);
        assert_eq!(Priority::parse("p2").unwrap(), Priority::P2);
        assert_eq!(serde_json::from_str::<Priority>("1").unwrap(), Priority::P1);
        assert!(Priority::parse("P3").is_err());
        assert!(serde_json::from_str::<Priority>("\"high\"").is_err());
        assert!(Priority::P0 < Priority::P1 && Priority::P1 < Priority::P2);
    }

    #[test]
    fn task_ids_are_safe_subject_tokens() {
        assert!(TaskId::parse(TaskId::generate().as_str()).is_ok());
        for bad in ["", "a.b", "a b", "a>", "*", &"x".repeat(65)] {
            assert!(TaskId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unknown_kinds_are_refused() {
        assert_eq!(TaskKind::parse("exec").unwrap(), TaskKind::Exec);
        assert!(TaskKind::parse("EXEC").is_err());
        assert!(TaskKind::parse("shell").is_err());
    }
}
