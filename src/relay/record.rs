//! Delivery records (KV `deliveries`) as one delivery loop writes them: every attempt is appended
//! with a compare-and-set, and the loop keeps the record it last wrote (or read), so the usual
//! cases cost one write and no read:
//!
//! - a first delivery has no record yet: it is created outright;
//! - a retry of the job this loop tried last updates the record it kept, at its revision.
//!
//! A stale kept record (a replay, another relay replica) fails the revision check and is read
//! again, so nothing is ever overwritten blindly.

use super::job::{Attempt, DeliveryJob, DeliveryRecord, DeliveryStatus};
use crate::bus::{decode, encode};
use async_nats::jetstream::kv;

/// How many times a write is tried against a moving record before giving up.
const WRITE_TRIES: usize = 5;

/// The records of one delivery loop.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    /// What this loop last knew of one delivery's record.
    kept: Option<Kept>,
}

/// One delivery's record as last written or read.
#[derive(Debug)]
struct Kept {
    /// The delivery (job) id.
    id: String,
    /// The record and its revision; `None` when there was none.
    record: Option<(DeliveryRecord, u64)>,
}

impl Recorder {
    /// The stored status of delivery `id`: the kept record's if it is that delivery's, read
    /// (and kept) otherwise. `None` when there is no record (or it cannot be read).
    pub(super) async fn status(&mut self, store: &kv::Store, id: &str) -> Option<DeliveryStatus> {
        if self.kept.as_ref().is_none_or(|k| k.id != id) {
            let record = read(store, id).await;
            self.kept = Some(Kept {
                id: id.to_string(),
                record,
            });
        }
        let kept = self.kept.as_ref()?;
        kept.record.as_ref().map(|(r, _)| r.status)
    }

    /// Appends `attempt` to the record of `job` and sets its status and reason. `first` says
    /// this is the job's first delivery, so that without a kept record it is created without
    /// reading (an existing one, e.g. of a replay, is then read and updated).
    pub(super) async fn write(
        &mut self,
        store: &kv::Store,
        job: &DeliveryJob,
        attempt: Option<Attempt>,
        status: DeliveryStatus,
        reason: Option<String>,
        first: bool,
    ) {
        let mut known = match self.kept.take() {
            Some(k) if k.id == job.id => Some(k.record),
            _ if first => Some(None),
            _ => None,
        };
        for _ in 0..WRITE_TRIES {
            let current = match known.take() {
                Some(current) => current,
                None => read(store, &job.id).await,
            };
            let (mut record, revision) = match current {
                Some((record, revision)) => (record, Some(revision)),
                None => (
                    DeliveryRecord {
                        job: job.clone(),
                        status,
                        attempts: Vec::new(),
                        reason: None,
                        updated_time: crate::domain::now(),
                    },
                    None,
                ),
            };
            record.attempts.extend(attempt.clone());
            record.status = status;
            record.reason = reason.clone();
            record.updated_time = crate::domain::now();
            let value = encode(&record);
            let written = match revision {
                Some(r) => store.update(&job.id, value, r).await.ok(),
                None => store.create(&job.id, value).await.ok(),
            };
            if let Some(revision) = written {
                self.kept = Some(Kept {
                    id: job.id.clone(),
                    record: Some((record, revision)),
                });
                return;
            }
        }
        tracing::warn!(delivery = job.id, "could not record the delivery attempt");
    }
}

/// The stored record of delivery `id` and its revision (`None`: none, deleted, or unreadable).
async fn read(store: &kv::Store, id: &str) -> Option<(DeliveryRecord, u64)> {
    let entry = store.entry(id).await.ok()??;
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let record = decode::<DeliveryRecord>("delivery record", &entry.value).ok()?;
    Some((record, entry.revision))
}
