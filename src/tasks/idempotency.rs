//! Idempotent actions: an `Idempotency-Key` on `start`, `complete`, `fail`, `cancel`, `retry`,
//! `step`, `heartbeat` or `progress` makes a retried call a no-op.
//!
//! The first call with a key reserves `(task, verb, key)` in the idempotency bucket (hashed, like
//! create keys), applies the action and marks the reservation done; a repeat finds it done and
//! gets the task's current state with nothing applied. A call that fails releases its
//! reservation, so retrying it applies. A repeat that arrives while the first call is still
//! applying waits for it; a reservation left behind by a process that died mid-call is taken
//! over once it is [`STALE`].

use super::create::idempotency_entry;
use super::{TaskError, TaskService};
use crate::bus::{BusError, NatsResultExt};
use crate::domain::{now, Task, TaskId};
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a repeat waits for the first call of its key to finish.
const WAIT: Duration = Duration::from_secs(10);
/// After this long, a reservation still `applying` belongs to a call that died.
const STALE: Duration = Duration::from_secs(30);
/// Longest idempotency key, in characters (as for create keys).
pub const MAX_KEY_CHARS: usize = crate::domain::limits::SHORT_TEXT;

/// The result of an idempotent action.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The task after the action, or its current state for a repeat.
    pub task: Task,
    /// True when an earlier call with the same key applied it and this one changed nothing.
    pub replayed: bool,
}

/// What the bucket holds for one `(task, verb, key)`.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    state: MarkState,
    time: DateTime<Utc>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MarkState {
    Applying,
    Done,
}

fn mark(state: MarkState) -> bytes::Bytes {
    serde_json::to_vec(&Mark { state, time: now() })
        .expect("marks serialize")
        .into()
}

enum Reservation {
    /// This call holds the key at this revision: apply.
    Mine(u64),
    /// An earlier call applied it.
    Done,
}

/// The bucket entry of an action key. `:` cannot occur in an assignee, so these never meet the
/// create keys (`<assignee>\n<key>`).
fn action_entry(id: &TaskId, verb: &str, key: &str) -> String {
    idempotency_entry(&format!("action:{id}\n{verb}\n{key}"))
}

impl TaskService {
    /// Runs `apply` unless an earlier call with the same `key` for this task and `verb` did.
    /// Without a key, `apply` simply runs.
    pub async fn once<F, Fut>(
        &self,
        id: &TaskId,
        verb: &str,
        key: Option<&str>,
        apply: F,
    ) -> Result<Applied, TaskError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Task, TaskError>>,
    {
        let Some(key) = key else {
            let task = apply().await?;
            return Ok(Applied {
                task,
                replayed: false,
            });
        };
        if key.trim().is_empty() || key.chars().count() > MAX_KEY_CHARS {
            return Err(TaskError::Invalid(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters"
            )));
        }
        let entry = action_entry(id, verb, key);
        let revision = match self.reserve_action(id, &entry).await? {
            Reservation::Done => {
                return Ok(Applied {
                    task: self.get(id).await?,
                    replayed: true,
                })
            }
            Reservation::Mine(revision) => revision,
        };
        let bucket = &self.bus.topology.idempotency;
        match apply().await {
            Ok(task) => {
                if let Err(e) = bucket.update(&entry, mark(MarkState::Done), revision).await {
                    tracing::warn!(task_id = %id, verb, error.message = %e,
                        "could not mark an idempotent action done; a retry after 30 s may repeat it");
                }
                Ok(Applied {
                    task,
                    replayed: false,
                })
            }
            Err(e) => {
                if let Err(release) = bucket.delete_expect_revision(&entry, Some(revision)).await {
                    tracing::warn!(task_id = %id, verb, error.message = %release,
                        "could not release the idempotency key of a failed action");
                }
                Err(e)
            }
        }
    }

    async fn reserve_action(&self, id: &TaskId, entry: &str) -> Result<Reservation, TaskError> {
        let bucket = &self.bus.topology.idempotency;
        let started = Instant::now();
        let mut round = 0u64;
        loop {
            if round > 0 {
                if started.elapsed() > WAIT {
                    return Err(TaskError::Contended(id.clone()));
                }
                tokio::time::sleep(Duration::from_millis(25 * round.min(8))).await;
            }
            round += 1;
            match bucket.create(entry, mark(MarkState::Applying)).await {
                Ok(rev) => return Ok(Reservation::Mine(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(BusError::from_op("kv create", e).into()),
            }
            let Some(current) = bucket.entry(entry).await.op("kv entry")? else {
                continue;
            };
            if current.operation != kv::Operation::Put {
                continue; // released in between: try to reserve again
            }
            match serde_json::from_slice::<Mark>(&current.value) {
                Ok(Mark {
                    state: MarkState::Done,
                    ..
                }) => return Ok(Reservation::Done),
                Ok(Mark { time, .. }) if (now() - time).to_std().unwrap_or_default() < STALE => {}
                // Left behind by a call that died (or unreadable): take it over.
                _ => match bucket
                    .update(entry, mark(MarkState::Applying), current.revision)
                    .await
                {
                    Ok(rev) => return Ok(Reservation::Mine(rev)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(BusError::from_op("kv update", e).into()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_keys_differ_by_task_verb_and_key_and_are_valid_kv_keys() {
        let a = TaskId::parse("task_a").unwrap();
        let b = TaskId::parse("task_b").unwrap();
        let k = action_entry(&a, "step", "k1");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(k, action_entry(&b, "step", "k1"));
        assert_ne!(k, action_entry(&a, "complete", "k1"));
        assert_ne!(k, action_entry(&a, "step", "k2"));
    }
}
