//! Task events: what happened to a task, in order. The event stream is the task log.

use super::names::{Assignee, TaskId};
use super::task::TaskStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A delayed task was created (or moved to another time): it runs at `run_at`.
    Scheduled,
    /// The task was created (a delayed one: its time came and it was queued).
    Created,
    /// An attempt began.
    Started,
    /// A named step finished.
    Step,
    /// A long step is still alive.
    Heartbeat,
    /// A percentage was reported.
    Progress,
    /// A chunk of command output.
    Output,
    /// The task finished successfully.
    Completed,
    /// The task failed.
    Failed,
    /// The task was cancelled.
    Cancelled,
    /// The task was queued again for a new attempt.
    Retried,
    /// A running task had no update for too long.
    Stalled,
}

impl EventKind {
    /// Every kind (the last token of an event subject is one of these).
    pub const ALL: [EventKind; 12] = [
        Self::Scheduled,
        Self::Created,
        Self::Started,
        Self::Step,
        Self::Heartbeat,
        Self::Progress,
        Self::Output,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Retried,
        Self::Stalled,
    ];

    /// Parses the kind's name (`started`, …).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind as text (also the last token of the event subject).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Created => "created",
            Self::Started => "started",
            Self::Step => "step",
            Self::Heartbeat => "heartbeat",
            Self::Progress => "progress",
            Self::Output => "output",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Retried => "retried",
            Self::Stalled => "stalled",
        }
    }

    /// The seed 001 log verb for this event (`start`, `complete`, …).
    pub fn action(self) -> &'static str {
        match self {
            Self::Created => "create",
            Self::Started => "start",
            Self::Completed => "complete",
            Self::Failed => "fail",
            Self::Cancelled => "cancel",
            Self::Retried => "retry",
            other => other.as_str(),
        }
    }

    /// Whether this event changes the task's status.
    pub fn is_transition(self) -> bool {
        matches!(
            self,
            Self::Scheduled
                | Self::Created
                | Self::Started
                | Self::Completed
                | Self::Failed
                | Self::Cancelled
                | Self::Retried
        )
    }
}

/// One event of one task, as stored in the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Unique event id (also the stream's de-duplication id and the webhook id).
    pub id: String,
    /// The task it belongs to.
    pub task_id: TaskId,
    /// The task's assignee.
    pub assigned_to: Assignee,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When.
    pub time: DateTime<Utc>,
    /// The attempt it happened in (0 before the first start).
    pub attempt: u32,
    /// Status before, for transitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_status: Option<TaskStatus>,
    /// Status after, for transitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_status: Option<TaskStatus>,
    /// A one-line human note (result, error, step info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who did it: an API key's name, a worker id, or `system`.
    pub operator: String,
    /// Kind-specific detail (step index, output chunk, exit code, …).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl TaskEvent {
    /// A new event with a fresh id and the current time.
    pub fn new(task_id: &TaskId, assignee: &Assignee, kind: EventKind, operator: &str) -> Self {
        Self {
            id: format!("evt_{}", ulid::Ulid::new()),
            task_id: task_id.clone(),
            assigned_to: assignee.clone(),
            kind,
            time: super::now(),
            attempt: 0,
            old_status: None,
            new_status: None,
            message: None,
            operator: operator.to_string(),
            data: Value::Null,
        }
    }
}

/// One row of the task log, in seed 001's `bot_task_log` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The task.
    pub task_id: TaskId,
    /// `create`, `start`, `complete`, `fail`, `retry`, `cancel`, `step`, …
    pub action: String,
    /// Status before (equal to `new_status` for non-transition events).
    pub old_status: Option<TaskStatus>,
    /// Status after.
    pub new_status: Option<TaskStatus>,
    /// The note that came with it.
    pub message: Option<String>,
    /// Who did it.
    pub operator: String,
    /// When.
    pub created_time: DateTime<Utc>,
}

impl From<&TaskEvent> for LogEntry {
    fn from(e: &TaskEvent) -> Self {
        Self {
            task_id: e.task_id.clone(),
            action: e.kind.action().to_string(),
            old_status: e.old_status,
            new_status: e.new_status,
            message: e.message.clone().or_else(|| output_line(e)),
            operator: e.operator.clone(),
            created_time: e.time,
        }
    }
}

/// Most characters of a command's output an `output` row of the task log shows.
const OUTPUT_LINE_CHARS: usize = 200;

/// The note of an `output` row (the event carries none of its own): the first line of the
/// chunk, `stderr: ` before one from stderr, cut at [`OUTPUT_LINE_CHARS`].
fn output_line(e: &TaskEvent) -> Option<String> {
    if e.kind != EventKind::Output {
        return None;
    }
    let line = e.data.get("text")?.as_str()?.lines().next()?;
    let mut shown: String = line.chars().take(OUTPUT_LINE_CHARS).collect();
    if shown.len() < line.len() {
        shown.push('…');
    }
    match e.data.get("stream").and_then(Value::as_str) {
        Some("stderr") => Some(format!("stderr: {shown}")),
        _ => Some(shown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(stream: &str, text: &str) -> LogEntry {
        let id = TaskId::parse("01M9899TQJD5XP7GCCXPCKCKEJ").unwrap();
        let who = Assignee::parse("anna").unwrap();
        let mut e = TaskEvent::new(&id, &who, EventKind::Output, "anna@w1");
        e.data = serde_json::json!({"stream": stream, "text": text});
        LogEntry::from(&e)
    }

    #[test]
    fn an_output_row_of_the_log_shows_the_chunks_first_line_cut_at_200_characters() {
        assert_eq!(
            output("stdout", "one\ntwo\n").message.as_deref(),
            Some("one")
        );
        assert_eq!(
            output("stderr", "bad\n").message.as_deref(),
            Some("stderr: bad")
        );
        let long = "é".repeat(300);
        let shown = output("stdout", &long).message.unwrap();
        assert_eq!(shown.chars().count(), 201, "200 characters and an ellipsis");
        assert!(shown.ends_with('…'));
    }
}
