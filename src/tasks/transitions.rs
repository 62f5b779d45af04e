//! Status changes: start (claim), complete, fail, cancel, retry. Each is one compare-and-set;
//! illegal ones are refused with nothing written.

use super::{claimed_by, transition_event, TaskError, TaskService};
use crate::bus::{encode, message_headers, subjects, NatsResultExt};
use crate::domain::{now, Action, EventKind, NewTask, Task, TaskStatus};
use crate::metrics::{task_labels, FinishedLabels};
use serde_json::Value;

fn illegal(t: &Task, action: Action) -> TaskError {
    let hint = match action {
        Action::Start => "only pending tasks can be started",
        Action::Complete | Action::Fail => "only running tasks can be finished",
        Action::Cancel => "only pending or running tasks can be cancelled",
        Action::Retry => "only failed or cancelled tasks can be retried",
    };
    TaskError::IllegalTransition(format!(
        "cannot {} task {}: it is {} ({hint})",
        action.as_str(),
        t.id,
        t.status
    ))
}

fn next_status(t: &Task, action: Action) -> Result<TaskStatus, TaskError> {
    t.status.after(action).ok_or_else(|| illegal(t, action))
}

/// Refuses a finishing call whose fencing token is not the current lease's.
fn check_fence(t: &Task, fence: Option<&str>) -> Result<(), TaskError> {
    let Some(fence) = fence else { return Ok(()) };
    match &t.lease {
        Some(lease) if lease.token == fence => Ok(()),
        _ => Err(TaskError::StaleLease(format!(
            "fencing token {fence} no longer holds task {}: attempt {} holds it now",
            t.id, t.attempt
        ))),
    }
}

/// A one-line rendering of a result for the event's message.
fn summary(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut line: String = s.chars().take(300).collect();
    if s.chars().count() > 300 {
        line.push('…');
    }
    line
}

impl TaskService {
    /// Claims a pending task for `holder`: it becomes `running` with a new attempt and fencing
    /// token, and leaves the queue so no worker or other caller can claim it too.
    #[tracing::instrument(skip(self), fields(task_id = %id))]
    pub async fn start(&self, id: &crate::domain::TaskId, holder: &str) -> Result<Task, TaskError> {
        let (before, after) = self
            .change(id, |t| {
                next_status(t, Action::Start)?;
                Ok(claimed_by(t, holder))
            })
            .await?;
        self.dequeue(before.queue_seq).await;
        let mut event = transition_event(Some(&before), &after, EventKind::Started, holder, None);
        event.data = serde_json::json!({ "holder": holder });
        self.emit(&event).await;
        self.metrics
            .tasks_started
            .get_or_create(&task_labels(&after))
            .inc();
        Ok(after)
    }

    /// Finishes a running task successfully. With `fence`, only the current lease may do it.
    #[tracing::instrument(skip(self, result), fields(task_id = %id))]
    pub async fn complete(
        &self,
        id: &crate::domain::TaskId,
        result: Option<Value>,
        fence: Option<&str>,
        operator: &str,
        detail: Value,
    ) -> Result<Task, TaskError> {
        let (before, after) = self
            .change(id, |t| {
                let status = next_status(t, Action::Complete)?;
                check_fence(t, fence)?;
                let mut n = t.clone();
                n.status = status;
                n.result = result.clone();
                n.finished_time = Some(now());
                n.lease = None;
                if n.progress.total > 0 {
                    n.progress.done = n.progress.total;
                    n.progress.current = None;
                }
                Ok(n)
            })
            .await?;
        let message = after.result.as_ref().map(summary);
        self.finished(
            &before,
            &after,
            EventKind::Completed,
            operator,
            message,
            detail,
        )
        .await;
        Ok(after)
    }

    /// Finishes a running task unsuccessfully. With `fence`, only the current lease may do it.
    #[tracing::instrument(skip(self, error), fields(task_id = %id))]
    pub async fn fail(
        &self,
        id: &crate::domain::TaskId,
        error: String,
        fence: Option<&str>,
        operator: &str,
        detail: Value,
    ) -> Result<Task, TaskError> {
        let (before, after) = self
            .change(id, |t| {
                let status = next_status(t, Action::Fail)?;
                check_fence(t, fence)?;
                let mut n = t.clone();
                n.status = status;
                n.error = Some(error.clone());
                n.finished_time = Some(now());
                n.lease = None;
                Ok(n)
            })
            .await?;
        self.finished(
            &before,
            &after,
            EventKind::Failed,
            operator,
            Some(error),
            detail,
        )
        .await;
        Ok(after)
    }

    /// Cancels a pending or running task. A pending one leaves the queue at once; a running one
    /// is stopped by the worker holding it, which watches for this event.
    #[tracing::instrument(skip(self), fields(task_id = %id))]
    pub async fn cancel(
        &self,
        id: &crate::domain::TaskId,
        reason: Option<String>,
        operator: &str,
    ) -> Result<Task, TaskError> {
        let (before, after) = self
            .change(id, |t| {
                let mut n = t.clone();
                n.status = next_status(t, Action::Cancel)?;
                n.error = reason.clone();
                n.finished_time = Some(now());
                n.lease = None;
                n.queue_seq = None;
                Ok(n)
            })
            .await?;
        self.dequeue(before.queue_seq).await;
        self.finished(
            &before,
            &after,
            EventKind::Cancelled,
            operator,
            reason,
            Value::Null,
        )
        .await;
        Ok(after)
    }

    /// Queues a failed or cancelled task again; the next start is a new attempt.
    #[tracing::instrument(skip(self), fields(task_id = %id))]
    pub async fn retry(
        &self,
        id: &crate::domain::TaskId,
        operator: &str,
    ) -> Result<Task, TaskError> {
        let current = self.get(id).await?;
        next_status(&current, Action::Retry)?;
        // Queue first, then flip the state: a crash in between leaves a message whose task is
        // not pending, which readers skip, rather than a pending task that nobody can see.
        let spec = NewTask {
            id: Some(current.id.clone()),
            task_name: current.task_name.clone(),
            assigned_to: current.assigned_to.clone(),
            priority: current.priority,
            created_by: current.created_by.clone(),
            description: current.description.clone(),
            kind: current.kind,
            payload: Some(current.payload.clone()),
            steps: current.steps.clone(),
            notify: current.notify.clone(),
            timeout_s: current.timeout_s,
            max_attempts: Some(current.max_attempts),
            idempotency_key: current.idempotency_key.clone(),
        };
        let subject = subjects::task(&spec.assigned_to, spec.priority, spec.kind);
        let msg_id = format!("{}-retry-{}", current.id, ulid::Ulid::new());
        let seq = self
            .bus
            .js
            .publish_with_headers(subject, message_headers(&msg_id), encode(&spec))
            .await
            .op("publish task")?
            .await
            .op("publish task ack")?
            .sequence;
        let changed = self
            .change(id, |t| {
                let mut n = t.clone();
                n.status = next_status(t, Action::Retry)?;
                n.queue_seq = Some(seq);
                n.lease = None;
                n.finished_time = None;
                n.started_time = None;
                n.result = None;
                n.error = None;
                n.progress.done = 0;
                n.progress.current = n.steps.first().cloned();
                n.progress.percent = None;
                Ok(n)
            })
            .await;
        let (before, after) = match changed {
            Ok(pair) => pair,
            Err(e) => {
                self.dequeue(Some(seq)).await;
                return Err(e);
            }
        };
        let event = transition_event(Some(&before), &after, EventKind::Retried, operator, None);
        self.emit(&event).await;
        Ok(after)
    }

    async fn finished(
        &self,
        before: &Task,
        after: &Task,
        kind: EventKind,
        operator: &str,
        message: Option<String>,
        detail: Value,
    ) {
        let mut event = transition_event(Some(before), after, kind, operator, message);
        let mut data = match detail {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        if let (Some(start), Some(end)) = (before.started_time, after.finished_time) {
            data.insert(
                "duration_ms".into(),
                (end - start).num_milliseconds().into(),
            );
        }
        if !data.is_empty() {
            event.data = Value::Object(data);
        }
        self.emit_transition(&event).await;
        self.metrics
            .tasks_finished
            .get_or_create(&FinishedLabels {
                assignee: after.assigned_to.to_string(),
                priority: after.priority.to_string(),
                status: after.status.to_string(),
            })
            .inc();
    }
}
