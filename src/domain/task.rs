//! The task record, what a create request may say, and the state machine.

use super::flow::{FlowKeys, Share};
use super::names::{Assignee, Priority, TaskId, TaskKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Where a task is in its life. Seed 001's five statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for its `run_at` (a delayed task): the broker queues it then.
    Scheduled,
    /// Queued, waiting for a bot or worker to claim it.
    Pending,
    /// Claimed; an attempt is under way.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished unsuccessfully (may be retried).
    Failed,
    /// Stopped on request (may be retried).
    Cancelled,
}

impl TaskStatus {
    /// All statuses, in life order.
    pub const ALL: [TaskStatus; 6] = [
        Self::Scheduled,
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The status as text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether no further work happens without a retry.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The status an action leads to, or `None` when the action is illegal from here.
    ///
    /// pending → running → completed | failed | cancelled; scheduled | pending → cancelled;
    /// failed | cancelled → pending (retry). A scheduled task becomes pending when its time
    /// comes (the broker fires it; no action does that).
    pub fn after(self, action: Action) -> Option<TaskStatus> {
        use Action::*;
        use TaskStatus::*;
        match (self, action) {
            (Pending, Start) => Some(Running),
            (Running, Complete) => Some(Completed),
            (Running, Fail) => Some(Failed),
            (Scheduled | Pending | Running, Cancel) => Some(Cancelled),
            (Failed | Cancelled, Retry) => Some(Pending),
            _ => None,
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to change a task's status (seed 001's log actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Claim the task and begin an attempt.
    Start,
    /// Finish the running attempt successfully.
    Complete,
    /// Finish the running attempt unsuccessfully.
    Fail,
    /// Stop the task.
    Cancel,
    /// Queue a failed or cancelled task again, as a new attempt.
    Retry,
}

impl Action {
    /// The verb, as written in the task log's `action` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Complete => "complete",
            Self::Fail => "fail",
            Self::Cancel => "cancel",
            Self::Retry => "retry",
        }
    }
}

/// Who holds a running task, and the fencing token that proves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// `<attempt>.<random>`: complete/fail carrying another token are refused.
    pub token: String,
    /// Who claimed it (a worker id, or the API key's name for bots).
    pub holder: String,
    /// The attempt this lease belongs to.
    pub attempt: u32,
    /// When the claim happened.
    pub claimed_time: DateTime<Utc>,
}

impl Lease {
    /// A fresh lease for `attempt`.
    pub fn new(holder: &str, attempt: u32) -> Self {
        Self {
            token: format!("{attempt}.{:016x}", rand::random::<u64>()),
            holder: holder.to_string(),
            attempt,
            claimed_time: super::now(),
        }
    }
}

/// Step progress of a task (Live Task Pulse).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps finished so far.
    pub done: u32,
    /// Number of named steps (0 when the task has none).
    pub total: u32,
    /// The step being worked on now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Percent of the current step or task, when reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// The last one-line note reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
}

/// What a create request (HTTP body or a message published to NATS directly) may say.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NewTask {
    /// Only honoured for messages published to NATS directly; the API always generates ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<TaskId>,
    /// Short human name (required, not blank).
    pub task_name: String,
    /// The container that should run it.
    pub assigned_to: Assignee,
    /// P0, P1 (default) or P2.
    #[serde(default)]
    pub priority: Priority,
    /// Who asked for it.
    #[serde(default)]
    pub created_by: Option<String>,
    /// Longer free text.
    #[serde(default)]
    pub description: Option<String>,
    /// What runs it (default `manual`).
    #[serde(default)]
    pub kind: TaskKind,
    /// Kind-specific input (a JSON object).
    #[serde(default)]
    pub payload: Option<Value>,
    /// Named steps, for progress reporting.
    #[serde(default)]
    pub steps: Vec<String>,
    /// Where to send progress (relay destinations).
    #[serde(default)]
    pub notify: Vec<Value>,
    /// Per-attempt time limit in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// How many attempts before the task fails for good (default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Creates with the same key return the first task instead of a second one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Run no earlier than this (RFC 3339): the task is `scheduled` until then.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "run_at_field"
    )]
    pub run_at: Option<DateTime<Utc>>,
    /// Run this many seconds after the create (after the message's publish time for a task
    /// published to NATS directly). Give `run_at` or `delay_s`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_s: Option<u64>,
    /// Creates with the same key (per assignee) while its task still waits make one task,
    /// which runs once the key has been quiet for `debounce_s` (the last create's body wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_key: Option<String>,
    /// The quiet period of `debounce_key`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_s: Option<u64>,
    /// At most the key's limit of tasks with this key run at once, across every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Tasks with this key start no faster than the key's rate (they wait in the queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_key: Option<String>,
    /// Tasks of one lane (say, a chat session) run one at a time, in creation order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Whose share of the workers it runs in: within a priority, tenants take turns (default:
    /// `created_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The fair-share turn it queues on, given by the API at create (`None`: the tenant's
    /// hash decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fair_turn: Option<Share>,
}

/// Reads `run_at` (serde `deserialize_with`), naming the field and the expected form when it is no RFC 3339 time.
pub fn run_at_field<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "run_at must be an RFC 3339 time such as 2026-12-24T09:00:00+01:00 ({e}): {text:?}"
            ))
        })
}

/// Limits on create requests; beyond them a create is refused with 422.
pub mod limits {
    /// Longest task name, in characters.
    pub const TASK_NAME: usize = 500;
    /// Longest description, in characters.
    pub const DESCRIPTION: usize = 64 * 1024;
    /// Most named steps.
    pub const STEPS: usize = 100;
    /// Longest step name, in characters.
    pub const STEP_NAME: usize = 200;
    /// Most notify destinations.
    pub const NOTIFY: usize = 20;
    /// Longest idempotency key or created_by, in characters.
    pub const SHORT_TEXT: usize = 255;
    /// Most attempts a task may ask for.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// Longest timeout a task may ask for (30 days).
    pub const TIMEOUT_S: u64 = 30 * 24 * 3600;
    /// Default of how far ahead a task may be scheduled (`scheduling.max_delay_days`).
    pub const MAX_DELAY_DAYS: u64 = 365;
    /// Longest debounce quiet period (a day), in seconds.
    pub const DEBOUNCE_S: u64 = 24 * 3600;
}

impl NewTask {
    /// Checks what serde cannot: blank names, sizes, ranges. The message is shown to the caller.
    pub fn validate(&self) -> Result<(), String> {
        let chars = |s: &str| s.chars().count();
        if self.task_name.trim().is_empty() {
            return Err("task_name must not be empty".into());
        }
        if chars(&self.task_name) > limits::TASK_NAME {
            return Err(format!(
                "task_name is longer than {} characters",
                limits::TASK_NAME
            ));
        }
        if self
            .description
            .as_deref()
            .is_some_and(|d| chars(d) > limits::DESCRIPTION)
        {
            return Err("description is longer than 64 KiB".into());
        }
        for (field, v) in [
            ("created_by", &self.created_by),
            ("idempotency_key", &self.idempotency_key),
        ] {
            if let Some(v) = v {
                if v.trim().is_empty() || chars(v) > limits::SHORT_TEXT {
                    return Err(format!("{field} must be 1 to 255 characters"));
                }
            }
        }
        if let Some(p) = &self.payload {
            if !p.is_object() {
                return Err("payload must be a JSON object".into());
            }
        }
        let empty = Value::Object(Default::default());
        super::payload::validate(self.kind, self.payload.as_ref().unwrap_or(&empty))?;
        if self.steps.len() > limits::STEPS {
            return Err(format!("at most {} steps", limits::STEPS));
        }
        if self
            .steps
            .iter()
            .any(|s| s.trim().is_empty() || chars(s) > limits::STEP_NAME)
        {
            return Err("every step needs a name of 1 to 200 characters".into());
        }
        if self.notify.len() > limits::NOTIFY {
            return Err(format!("at most {} notify destinations", limits::NOTIFY));
        }
        if let Some(t) = self.timeout_s {
            if t == 0 || t > limits::TIMEOUT_S {
                return Err("timeout_s must be between 1 and 2592000".into());
            }
        }
        if let Some(m) = self.max_attempts {
            if m == 0 || m > limits::MAX_ATTEMPTS {
                return Err("max_attempts must be between 1 and 100".into());
            }
        }
        if self.run_at.is_some() && self.delay_s.is_some() {
            return Err("give run_at or delay_s, not both".into());
        }
        self.flow().validate()?;
        if let Some(t) = &self.tenant {
            super::flow::check_key("tenant", t)?;
        }
        self.validate_debounce()
    }

    /// Its fair-share turn: the one given at create, else the hash of `tenant`, else of
    /// `created_by`; `None` when it names neither.
    pub fn share(&self) -> Option<Share> {
        (self.fair_turn).or_else(|| fair_share(self.tenant.as_deref(), self.created_by.as_deref()))
    }

    /// Whose turn it takes: `tenant`, else `created_by`.
    pub fn tenant_or_creator(&self) -> Option<&str> {
        self.tenant.as_deref().or(self.created_by.as_deref())
    }

    /// Its flow control keys.
    pub fn flow(&self) -> FlowKeys {
        FlowKeys {
            concurrency_key: self.concurrency_key.clone(),
            rate_key: self.rate_key.clone(),
            lane: self.lane.clone(),
        }
    }

    /// `debounce_key` and `debounce_s` go together, alone: the quiet period decides when the
    /// task runs, and a repeated create is folded, not replayed.
    fn validate_debounce(&self) -> Result<(), String> {
        match (&self.debounce_key, self.debounce_s) {
            (None, None) => Ok(()),
            (Some(k), Some(s)) => {
                if k.trim().is_empty() || k.chars().count() > limits::SHORT_TEXT {
                    return Err("debounce_key must be 1 to 255 characters".into());
                }
                if s == 0 || s > limits::DEBOUNCE_S {
                    return Err("debounce_s must be between 1 and 86400".into());
                }
                if self.run_at.is_some() || self.delay_s.is_some() {
                    return Err("debounce_s decides when a debounced task runs: \
                        drop run_at and delay_s"
                        .into());
                }
                if self.idempotency_key.is_some() {
                    return Err("give idempotency_key or debounce_key, not both".into());
                }
                Ok(())
            }
            (Some(_), None) => Err("debounce_key needs debounce_s (the quiet period)".into()),
            (None, Some(_)) => Err("debounce_s needs debounce_key".into()),
        }
    }

    /// When the task should run, `delay_s` counted from `created`: `None` for at once.
    pub fn due(&self, created: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.run_at
            .or_else(|| self.delay_s.map(|s| after_seconds(created, s)))
    }
}

/// `from` plus `seconds`; a sum past the last representable time is that time (so a huge
/// delay is refused as too far ahead, never an overflow).
pub fn after_seconds(from: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    i64::try_from(seconds)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| from.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A task as stored in the state bucket and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id (a string).
    pub id: TaskId,
    /// Short human name.
    pub task_name: String,
    /// Longer free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The container that runs it.
    pub assigned_to: Assignee,
    /// P0, P1 or P2.
    pub priority: Priority,
    /// Who asked for it.
    #[serde(default)]
    pub created_by: Option<String>,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// What runs it.
    pub kind: TaskKind,
    /// Kind-specific input.
    #[serde(default)]
    pub payload: Value,
    /// Named steps.
    #[serde(default)]
    pub steps: Vec<String>,
    /// Step progress.
    #[serde(default)]
    pub progress: Progress,
    /// Relay destinations chosen at create time.
    #[serde(default)]
    pub notify: Vec<Value>,
    /// Per-attempt time limit, in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Attempts allowed before the task fails for good.
    pub max_attempts: u32,
    /// Attempts started so far (0 while never started).
    pub attempt: u32,
    /// What `complete` reported.
    #[serde(default)]
    pub result: Option<Value>,
    /// What `fail` (or cancel) reported.
    #[serde(default)]
    pub error: Option<String>,
    /// The create request's idempotency key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The current holder while running.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Sequence of the task's message in the queue stream while it is queued.
    #[serde(default)]
    pub queue_seq: Option<u64>,
    /// When it was created.
    pub created_time: DateTime<Utc>,
    /// When it last changed.
    pub updated_time: DateTime<Utc>,
    /// When the current attempt started.
    #[serde(default)]
    pub started_time: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    #[serde(default)]
    pub finished_time: Option<DateTime<Utc>>,
    /// When a delayed task is (or was) due to run.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// The debounce key creates of this task were folded under.
    #[serde(default)]
    pub debounce_key: Option<String>,
    /// Its concurrency key (flow control, see `limits/`).
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// Its rate key.
    #[serde(default)]
    pub rate_key: Option<String>,
    /// Its lane.
    #[serde(default)]
    pub lane: Option<String>,
    /// The tenant it was created for (fair shares; `created_by` stands in when null).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The fair-share turn its tenant's tasks queue on (`s00`–`s15`), given at create.
    #[serde(default)]
    pub fair_turn: Option<Share>,
    /// Why a pending task waits (a key at its limit, a rate, its lane), worked out when the
    /// API shows one task; null everywhere else (never stored).
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// Revision of the state entry this was read at (compare-and-set token).
    #[serde(default)]
    pub revision: u64,
}

/// Default number of attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The share of `tenant`, else of `created_by`.
fn fair_share(tenant: Option<&str>, created_by: Option<&str>) -> Option<Share> {
    tenant.or(created_by).map(Share::of)
}

impl Task {
    /// Its fair-share turn (see [`NewTask::share`]).
    pub fn share(&self) -> Option<Share> {
        (self.fair_turn).or_else(|| fair_share(self.tenant.as_deref(), self.created_by.as_deref()))
    }

    /// Its flow control keys.
    pub fn flow(&self) -> FlowKeys {
        FlowKeys {
            concurrency_key: self.concurrency_key.clone(),
            rate_key: self.rate_key.clone(),
            lane: self.lane.clone(),
        }
    }

    /// A pending task built from a validated create request.
    pub fn from_new(id: TaskId, new: NewTask) -> Self {
        let now = super::now();
        let total = new.steps.len() as u32;
        let run_at = new.due(now);
        Self {
            id,
            task_name: new.task_name,
            description: new.description,
            assigned_to: new.assigned_to,
            priority: new.priority,
            created_by: new.created_by,
            status: TaskStatus::Pending,
            kind: new.kind,
            payload: new
                .payload
                .unwrap_or_else(|| Value::Object(Default::default())),
            progress: Progress {
                total,
                current: new.steps.first().cloned(),
                ..Progress::default()
            },
            steps: new.steps,
            notify: new.notify,
            timeout_s: new.timeout_s,
            max_attempts: new.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            attempt: 0,
            result: None,
            error: None,
            idempotency_key: new.idempotency_key,
            lease: None,
            queue_seq: None,
            created_time: now,
            updated_time: now,
            started_time: None,
            finished_time: None,
            run_at,
            debounce_key: new.debounce_key,
            concurrency_key: new.concurrency_key,
            rate_key: new.rate_key,
            lane: new.lane,
            tenant: new.tenant,
            fair_turn: new.fair_turn,
            waiting_for: None,
            revision: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use TaskStatus::*;

    #[test]
    fn the_state_machine_allows_exactly_the_documented_transitions() {
        let allowed = [
            (Pending, Start, Running),
            (Running, Complete, Completed),
            (Running, Fail, Failed),
            (Running, Cancel, Cancelled),
            (Pending, Cancel, Cancelled),
            (Scheduled, Cancel, Cancelled),
            (Failed, Retry, Pending),
            (Cancelled, Retry, Pending),
        ];
        for from in TaskStatus::ALL {
            for action in [Start, Complete, Fail, Cancel, Retry] {
                let expected = allowed
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                assert_eq!(from.after(action), expected, "{from} + {action:?}");
            }
        }
    }

    fn new_task(json: serde_json::Value) -> Result<NewTask, String> {
        let t: NewTask = serde_json::from_value(json).map_err(|e| e.to_string())?;
        t.validate().map(|_| t)
    }

    #[test]
    fn a_seed_001_create_body_is_accepted_with_defaults() {
        let t = new_task(serde_json::json!({
            "task_name": "发送消息", "assigned_to": "anna", "priority": "P1", "created_by": "hope"
        }))
        .unwrap();
        let task = Task::from_new(TaskId::generate(), t);
        assert_eq!(task.status, Pending);
        assert_eq!(task.kind, TaskKind::Manual);
        assert_eq!(task.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(task.payload.is_object());
    }

    #[test]
    fn a_delay_too_large_for_any_clock_is_the_last_time_not_an_overflow() {
        let now = super::super::now();
        assert_eq!(after_seconds(now, u64::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            after_seconds(now, 5_382_810_902_744_406_016),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(after_seconds(now, 60), now + chrono::Duration::seconds(60));
    }

    #[test]
    fn blank_names_bad_payloads_and_out_of_range_numbers_are_refused() {
        for body in [
            serde_json::json!({"task_name": "  ", "assigned_to": "anna"}),
            serde_json::json!({"task_name": "x", "assigned_to": "anna", "payload": [1]}),
            serde_json::json!({"task_name": "x", "assigned_to": "anna", "max_attempts": 0}),
            serde_json::json!({"task_name": "x", "assigned_to": "anna", "timeout_s": 0}),
            serde_json::json!({"task_name": "x", "assigned_to": "anna", "steps": [""]}),
            serde_json::json!({"task_name": "x", "assigned_to": "Anna"}),
            serde_json::json!({"task_name": "x", "assigned_to": "anna", "priority": "P9"}),
            serde_json::json!({"assigned_to": "anna"}),
        ] {
            assert!(new_task(body.clone()).is_err(), "{body} accepted");
        }
    }
}
