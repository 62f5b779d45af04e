//! Creating tasks: idempotency keys, the queue message, then the `created` record (the first
//! message of the task's ledger, which is also its state).

use super::{transition_event, TaskError, TaskService};
use crate::bus::{encode, message_headers, subjects, BusError, NatsResultExt};
use crate::domain::{EventKind, NewTask, Task, TaskId};
use async_nats::jetstream::kv;
use sha2::{Digest, Sha256};

/// The outcome of a create: the task, and whether this call created it (201) or an earlier call
/// with the same idempotency key did (200).
#[derive(Debug, Clone)]
pub struct Created {
    /// The task.
    pub task: Task,
    /// False when an earlier create with the same idempotency key made it.
    pub created: bool,
    /// True when this create was folded into the waiting task of its debounce key.
    pub folded: bool,
}

enum Reserved {
    Fresh(TaskId),
    Existing(TaskId),
}

impl TaskService {
    /// Creates a task: validates it, queues it on `tasks.<assignee>.<priority>[.<kind>]` and
    /// records its state. With an idempotency key, repeated calls return the first task.
    #[tracing::instrument(name = "task.create", skip_all, fields(task_id = tracing::field::Empty, assignee = %new.assigned_to))]
    pub async fn create(&self, mut new: NewTask, operator: &str) -> Result<Created, TaskError> {
        new.validate().map_err(TaskError::Invalid)?;
        self.normalise_due(&mut new)?;
        new.id = None;
        if new.created_by.is_none() {
            new.created_by = Some(operator.to_string());
        }
        if new.debounce_key.is_some() {
            return self.create_debounced(new, operator).await;
        }
        let id = match new.idempotency_key.as_deref() {
            None => TaskId::generate(),
            // Keys are namespaced by assignee: a key scoped to anna can never reach trump's task.
            Some(key) => match self.reserve(&format!("{}\n{key}", new.assigned_to)).await? {
                Reserved::Fresh(id) => id,
                Reserved::Existing(id) => match self.load(&id).await? {
                    Some(task) => {
                        return Ok(Created {
                            task,
                            created: false,
                            folded: false,
                        })
                    }
                    // An earlier call reserved the id but died before finishing: finish it.
                    None => id,
                },
            },
        };
        tracing::Span::current().record("task_id", id.as_str());
        self.enqueue_new(id, new, operator).await
    }

    /// Creates a task under an id the caller derived (a cron schedule's tick), once: when a
    /// task with this id exists already, it is returned with `created: false` and nothing is
    /// written. The queue message is de-duplicated on the id, so two callers racing here
    /// queue it once and record it once.
    pub async fn create_with_id(
        &self,
        id: TaskId,
        mut new: NewTask,
        operator: &str,
    ) -> Result<Created, TaskError> {
        new.validate().map_err(TaskError::Invalid)?;
        self.normalise_due(&mut new)?;
        if new.created_by.is_none() {
            new.created_by = Some(operator.to_string());
        }
        if let Some(task) = self.load(&id).await? {
            return Ok(Created {
                task,
                created: false,
                folded: false,
            });
        }
        self.enqueue_new(id, new, operator).await
    }

    /// Turns `delay_s` into `run_at` (counted from now), refusing one too far ahead.
    fn normalise_due(&self, new: &mut NewTask) -> Result<(), TaskError> {
        new.run_at = new.due(crate::domain::now());
        new.delay_s = None;
        match new.run_at {
            Some(at) => self.check_delay(at),
            None => Ok(()),
        }
    }

    async fn reserve(&self, key: &str) -> Result<Reserved, TaskError> {
        let bucket = &self.bus.topology.idempotency;
        let hashed = idempotency_entry(key);
        let id = TaskId::generate();
        match bucket.create(&hashed, id.as_str().to_string().into()).await {
            Ok(_) => Ok(Reserved::Fresh(id)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let existing = bucket.get(&hashed).await.op("kv get")?.unwrap_or_default();
                let text = String::from_utf8_lossy(&existing);
                TaskId::parse(&text)
                    .map(Reserved::Existing)
                    .map_err(|_| TaskError::Contended(id))
            }
            Err(e) => Err(BusError::from_op("kv create", e).into()),
        }
    }

    /// Publishes the queue message (de-duplicated on the task id), then records `created`.
    /// Queue first: a crash in between leaves a queued message without a record, which readers
    /// and workers treat as a task published straight to NATS (never a record nobody can run).
    async fn enqueue_new(
        &self,
        id: TaskId,
        mut new: NewTask,
        operator: &str,
    ) -> Result<Created, TaskError> {
        if let Some(at) = new.run_at.filter(|at| *at > crate::domain::now()) {
            return self.enqueue_scheduled(id, new, at, operator).await;
        }
        new.id = Some(id.clone());
        let subject = subjects::task(&new.assigned_to, new.priority, new.kind, new.share());
        let mut headers = message_headers(id.as_str());
        headers.insert(crate::bus::RECORDED_HEADER, EventKind::Created.as_str());
        let ack = self
            .bus
            .js
            .publish_with_headers(subject, headers, encode(&new))
            .await
            .op("publish task")?
            .await
            .op("publish task ack")?;
        let mut task = Task::from_new(id.clone(), new);
        task.queue_seq = Some(ack.sequence);
        match self.record_new(&mut task, operator).await? {
            true => Ok(Created {
                task,
                created: true,
                folded: false,
            }),
            // A reader of the queue materialised it first (or a worker claimed it): it is
            // still this call's task.
            false => Ok(Created {
                task: self.get_written(&id).await?,
                created: true,
                folded: false,
            }),
        }
    }

    /// A task whose record the leader just refused to overwrite (so it exists): reads may go
    /// to a replica that has not applied it yet (a 3-node cluster), so a miss is read again for
    /// up to about a second before it counts.
    async fn get_written(&self, id: &TaskId) -> Result<Task, TaskError> {
        for wait_ms in [0, 5, 10, 20, 40, 80, 160, 320, 400] {
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            if let Some(task) = self.load(id).await? {
                return Ok(task);
            }
        }
        Err(TaskError::NotFound(id.clone()))
    }

    /// Records `created` for a queued task: the first message of its ledger. False when the
    /// task has a record already (someone recorded or claimed it first; nothing written).
    pub(crate) async fn record_new(
        &self,
        task: &mut Task,
        operator: &str,
    ) -> Result<bool, TaskError> {
        let event = created_event(task, operator);
        match self.append_first(task, &event).await? {
            Some(seq) => {
                task.revision = seq;
                self.metrics
                    .tasks_created
                    .get_or_create(&crate::metrics::task_labels(task))
                    .inc();
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// A task's `created` event. One per task even when two processes race to record it: it is
/// the task's first record, appended only where nothing exists yet.
pub(super) fn created_event(task: &Task, operator: &str) -> crate::domain::TaskEvent {
    let mut event = transition_event(None, task, EventKind::Created, operator, None);
    event.message = Some(task.task_name.clone());
    event
}

/// The idempotency bucket's key for a caller's idempotency key (hashed: any text is allowed).
pub(super) fn idempotency_entry(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn idempotency_keys_of_any_text_become_valid_kv_keys() {
        let k = super::idempotency_entry("order #42 / 发送");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(k, super::idempotency_entry("order #43 / 发送"));
    }
}
