//! Debounced creates (`debounce_key` + `debounce_s`): creates with the same key while its task
//! is still waiting make one task, which runs once the key has been quiet for `debounce_s`.
//!
//! The key (namespaced by assignee, hashed) names its current task in the idempotency bucket.
//! A create finds that task still `scheduled` and folds into it: the task takes the create's
//! body (the last create wins) and moves to now + `debounce_s` — a `scheduled` event, and the
//! schedule message replaced first, exactly like a reschedule. When the task has fired (or was
//! cancelled) the key is free: the create makes a new delayed task and points the key at it
//! with a compare-and-set on the entry's revision, so two racing creates make one task and the
//! loser folds into it.

use super::create::{idempotency_entry, Created};
use super::write::Step;
use super::{TaskError, TaskService};
use crate::bus::{BusError, NatsResultExt};
use crate::domain::{now, EventKind, NewTask, Task, TaskId, TaskStatus};
use async_nats::jetstream::kv;

/// Attempts at pointing a key at a task before the create gives up as contended.
const KEY_ATTEMPTS: usize = 16;

/// The idempotency bucket's entry of a debounce key for `new`'s assignee.
fn key_entry(new: &NewTask, key: &str) -> String {
    idempotency_entry(&format!("debounce\n{}\n{key}", new.assigned_to))
}

/// `t` (scheduled) with `new`'s body folded in, due `debounce_s` from now.
fn folded(t: &Task, new: &NewTask, operator: &str) -> Result<Step, TaskError> {
    if t.status != TaskStatus::Scheduled {
        return Err(TaskError::IllegalTransition(format!(
            "task {} is {}, no longer waiting",
            t.id, t.status
        )));
    }
    let mut fresh = Task::from_new(t.id.clone(), new.clone());
    fresh.status = TaskStatus::Scheduled;
    fresh.created_time = t.created_time;
    fresh.revision = t.revision;
    let mut e =
        crate::tasks::transition_event(Some(t), &fresh, EventKind::Scheduled, operator, None);
    let at = fresh
        .run_at
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    e.message = Some(format!(
        "{} (a create folded in; runs at {})",
        fresh.task_name,
        at.unwrap_or_default()
    ));
    e.data = serde_json::json!({ "run_at": fresh.run_at, "folded": true });
    Ok(Step::new(fresh, e))
}

impl TaskService {
    /// A create with a debounce key: folded into the key's waiting task, or a new delayed task.
    pub(super) async fn create_debounced(
        &self,
        mut new: NewTask,
        operator: &str,
    ) -> Result<Created, TaskError> {
        let key = new.debounce_key.clone().expect("a debounce key");
        let quiet = new
            .debounce_s
            .expect("validated: debounce_s with debounce_key");
        new.run_at = Some(crate::domain::after_seconds(now(), quiet));
        let entry = key_entry(&new, &key);
        let bucket = &self.bus.topology.idempotency;
        for _ in 0..KEY_ATTEMPTS {
            let current = bucket.entry(&entry).await.op("kv get")?;
            if let Some(e) = current
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
            {
                let text = String::from_utf8_lossy(&e.value).to_string();
                if let Ok(id) = TaskId::parse(&text) {
                    if let Some(task) = self.fold(&id, &new, operator).await? {
                        return Ok(Created {
                            task,
                            created: false,
                            folded: true,
                        });
                    }
                }
            }
            let id = TaskId::generate();
            let revision = current.map(|e| e.revision);
            if self.point_key(&entry, revision, &id).await? {
                let at = new.run_at.expect("set above");
                return self.enqueue_scheduled(id, new, at, operator).await;
            }
        }
        Err(TaskError::Contended(TaskId::generate()))
    }

    /// Folds `new` into task `id` if it is still waiting; `None` when it is not (or is gone).
    async fn fold(
        &self,
        id: &TaskId,
        new: &NewTask,
        operator: &str,
    ) -> Result<Option<Task>, TaskError> {
        let Some(current) = self.load(id).await? else {
            return Ok(None);
        };
        let Ok(step) = folded(&current, new, operator) else {
            return Ok(None);
        };
        let spec = super::transitions::spec_of(&step.after);
        self.arm(
            &spec,
            step.after.run_at.expect("a folded task has a run_at"),
        )
        .await?;
        match self
            .change_from(id, Some(current), |t| folded(t, new, operator))
            .await
        {
            Ok(changed) => Ok(Some(changed.after)),
            // It fired meanwhile: the key is free for a new task.
            Err(TaskError::IllegalTransition(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Points the key's entry at `id`: created when there was none (`revision` `None`), else
    /// replaced only at `revision`. False when another create got there first.
    async fn point_key(
        &self,
        entry: &str,
        revision: Option<u64>,
        id: &TaskId,
    ) -> Result<bool, TaskError> {
        let bucket = &self.bus.topology.idempotency;
        let value = id.as_str().to_string().into();
        let outcome = match revision {
            None => bucket.create(entry, value).await.map_err(|e| {
                let lost = e.kind() == kv::CreateErrorKind::AlreadyExists;
                (lost, BusError::from_op("kv create", e))
            }),
            Some(r) => bucket.update(entry, value, r).await.map_err(|e| {
                let lost = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                (lost, BusError::from_op("kv update", e))
            }),
        };
        match outcome {
            Ok(_) => Ok(true),
            Err((true, _)) => Ok(false),
            Err((false, e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str) -> NewTask {
        serde_json::from_value(serde_json::json!({
            "task_name": name, "assigned_to": "anna", "debounce_key": "k", "debounce_s": 5,
            "run_at": now() + chrono::Duration::seconds(5),
        }))
        .unwrap()
    }

    #[test]
    fn a_fold_takes_the_last_body_and_keeps_the_first_creation_time() {
        let mut t = Task::from_new(TaskId::parse("T1").unwrap(), new("first"));
        t.status = TaskStatus::Scheduled;
        t.revision = 7;
        let step = folded(&t, &new("second"), "op").unwrap();
        assert_eq!(step.after.task_name, "second");
        assert_eq!(step.after.created_time, t.created_time);
        assert_eq!(step.after.status, TaskStatus::Scheduled);
        assert_eq!(step.event.kind, EventKind::Scheduled);
    }

    #[test]
    fn a_task_that_fired_takes_no_more_folds() {
        let mut t = Task::from_new(TaskId::parse("T1").unwrap(), new("first"));
        t.status = TaskStatus::Pending;
        assert!(folded(&t, &new("second"), "op").is_err());
    }

    #[test]
    fn keys_are_namespaced_by_assignee() {
        let mut other = new("x");
        other.assigned_to = crate::domain::Assignee::parse("trump").unwrap();
        assert_ne!(key_entry(&new("x"), "k"), key_entry(&other, "k"));
    }
}
