//! Live Task Pulse (seed 002) on a running task: finish a step and move to the next, report a
//! heartbeat on a long step, report a percentage. Each is one ledger append: the task's new
//! progress with a `step`, `heartbeat` or `progress` event carrying the data the relay's
//! messages expect (see `text::message`). A worker's reports are pipelined (`write.rs`).

use super::write::Step;
use super::{TaskError, TaskService};
use crate::domain::{EventKind, Progress, Task, TaskEvent, TaskId, TaskStatus};
use serde_json::{json, Value};

/// Longest `info` note, in characters.
pub const MAX_INFO_CHARS: usize = 2000;

/// The step a `step` call finished.
#[derive(Debug, Clone)]
struct Finished {
    index: u32,
    name: String,
}

fn check_info(info: Option<&str>) -> Result<(), TaskError> {
    match info {
        Some(i) if i.chars().count() > MAX_INFO_CHARS => Err(TaskError::Invalid(format!(
            "info is longer than {MAX_INFO_CHARS} characters"
        ))),
        _ => Ok(()),
    }
}

fn require_running(t: &Task, verb: &str) -> Result<(), TaskError> {
    if t.status == TaskStatus::Running {
        return Ok(());
    }
    Err(TaskError::IllegalTransition(format!(
        "cannot {verb} task {}: it is {} (only running tasks report progress)",
        t.id, t.status
    )))
}

/// Finishes the current step of `t`: the next state, and which step was finished.
fn advance(
    t: &Task,
    info: Option<&str>,
    name: Option<&str>,
) -> Result<(Task, Finished), TaskError> {
    require_running(t, "step")?;
    let index = t.progress.done;
    let name = if t.steps.is_empty() {
        name.map(str::to_string)
            .unwrap_or_else(|| format!("step {}", index + 1))
    } else {
        match t.steps.get(index as usize) {
            Some(s) => s.clone(),
            None => {
                return Err(TaskError::IllegalTransition(format!(
                    "cannot step task {}: all {} of its steps are done (complete it instead)",
                    t.id,
                    t.steps.len()
                )))
            }
        }
    };
    let mut n = t.clone();
    n.progress.done = index + 1;
    n.progress.current = t.steps.get(index as usize + 1).cloned();
    n.progress.info = info.map(str::to_string);
    n.progress.percent = None;
    Ok((n, Finished { index, name }))
}

/// The data of a heartbeat or progress event.
fn pulse_data(p: &Progress) -> Value {
    json!({
        "done": p.done,
        "total": p.total,
        "current": p.current,
        "step": p.current,
        "percent": p.percent,
    })
}

impl TaskService {
    /// Finishes the current step of a running task and moves to the next one (none after the
    /// last). A task without named steps counts steps without a total; `name` (else `step <n>`)
    /// names the finished one. Records a `step` event.
    #[tracing::instrument(skip(self, info), fields(task_id = %id))]
    pub async fn step(
        &self,
        id: &TaskId,
        info: Option<String>,
        name: Option<String>,
        operator: &str,
    ) -> Result<Task, TaskError> {
        check_info(info.as_deref())?;
        if let Some(n) = &name {
            let chars = n.chars().count();
            if n.trim().is_empty() || chars > crate::domain::limits::STEP_NAME {
                return Err(TaskError::Invalid(
                    "step must be a name of 1 to 200 characters".into(),
                ));
            }
        }
        let operator = operator.to_string();
        self.change_pipelined(id, move |t| {
            let (n, Finished { index, name }) = advance(t, info.as_deref(), name.as_deref())?;
            let p = &n.progress;
            let data = json!({
                "index": index,
                "step": name,
                "next": p.current,
                "done": p.done,
                "total": p.total,
            });
            Ok(report(t, n, EventKind::Step, &operator, info.clone(), data))
        })
        .await
    }

    /// Reports that a running task's long step is still alive, with an optional note (kept as
    /// `progress.info`). Records a `heartbeat` event.
    #[tracing::instrument(skip(self, info), fields(task_id = %id))]
    pub async fn heartbeat(
        &self,
        id: &TaskId,
        info: Option<String>,
        operator: &str,
    ) -> Result<Task, TaskError> {
        check_info(info.as_deref())?;
        let operator = operator.to_string();
        self.change_pipelined(id, move |t| {
            require_running(t, "report a heartbeat on")?;
            let mut n = t.clone();
            if info.is_some() {
                n.progress.info = info.clone();
            }
            let data = pulse_data(&n.progress);
            Ok(report(
                t,
                n,
                EventKind::Heartbeat,
                &operator,
                info.clone(),
                data,
            ))
        })
        .await
    }

    /// Reports a running task's percentage (0 to 100) with an optional note. Records a
    /// `progress` event.
    #[tracing::instrument(skip(self, info), fields(task_id = %id))]
    pub async fn progress(
        &self,
        id: &TaskId,
        percent: u8,
        info: Option<String>,
        operator: &str,
    ) -> Result<Task, TaskError> {
        check_info(info.as_deref())?;
        if percent > 100 {
            return Err(TaskError::Invalid(format!(
                "percent must be between 0 and 100, got {percent}"
            )));
        }
        let operator = operator.to_string();
        self.change_pipelined(id, move |t| {
            require_running(t, "report progress on")?;
            let mut n = t.clone();
            n.progress.percent = Some(percent);
            if info.is_some() {
                n.progress.info = info.clone();
            }
            let data = pulse_data(&n.progress);
            Ok(report(
                t,
                n,
                EventKind::Progress,
                &operator,
                info.clone(),
                data,
            ))
        })
        .await
    }
}

/// A progress report's step: `after` with its event (no status change).
fn report(
    before: &Task,
    after: Task,
    kind: EventKind,
    operator: &str,
    info: Option<String>,
    data: Value,
) -> Step {
    let mut e = TaskEvent::new(&before.id, &before.assigned_to, kind, operator);
    e.attempt = after.attempt;
    e.message = info;
    e.data = data;
    Step::new(after, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewTask;

    fn running(steps: &[&str]) -> Task {
        let new: NewTask = serde_json::from_value(json!({
            "task_name": "report", "assigned_to": "anna", "steps": steps
        }))
        .unwrap();
        let mut t = Task::from_new(TaskId::generate(), new);
        t.status = TaskStatus::Running;
        t
    }

    #[test]
    fn stepping_walks_the_named_steps_and_refuses_to_pass_the_last() {
        let mut t = running(&["fetch", "summarise", "publish"]);
        t.progress.percent = Some(40);
        let (t1, f) = advance(&t, Some("25 rows"), None).unwrap();
        assert_eq!((f.index, f.name.as_str()), (0, "fetch"));
        assert_eq!(t1.progress.done, 1);
        assert_eq!(t1.progress.current.as_deref(), Some("summarise"));
        assert_eq!(t1.progress.info.as_deref(), Some("25 rows"));
        assert_eq!(t1.progress.percent, None);
        let (t2, _) = advance(&t1, None, Some("ignored")).unwrap();
        let (t3, f) = advance(&t2, None, None).unwrap();
        assert_eq!((f.index, f.name.as_str()), (2, "publish"));
        assert_eq!((t3.progress.done, t3.progress.current.clone()), (3, None));
        let e = advance(&t3, None, None).unwrap_err();
        assert!(matches!(e, TaskError::IllegalTransition(m) if m.contains("all 3")));
    }

    #[test]
    fn tasks_without_steps_count_steps_named_by_the_caller_or_by_number() {
        let t = running(&[]);
        let (t1, f) = advance(&t, None, Some("login")).unwrap();
        assert_eq!(f.name, "login");
        let (t2, f) = advance(&t1, None, None).unwrap();
        assert_eq!(f.name, "step 2");
        assert_eq!((t2.progress.done, t2.progress.total), (2, 0));
        assert_eq!(t2.progress.current, None);
    }

    #[test]
    fn only_running_tasks_step() {
        let mut t = running(&["a"]);
        t.status = TaskStatus::Pending;
        assert!(matches!(
            advance(&t, None, None),
            Err(TaskError::IllegalTransition(_))
        ));
    }
}
