//! The delivery store's records (KV bucket `deliveries`): where they are stored, how they are
//! read and written, and the records one delivery loop writes.
//!
//! # Layout
//!
//! A record is stored under the key `<status>.<group>.<key>.<tail>`, subject
//! `$KV.deliveries.<status>.<group>.<key>.<tail>`:
//!
//! - `status`: `pending`, `delivered` or `dead`, so the records of one status are the messages
//!   on `…<status>.>` and a listing by status reads those only;
//! - `group`: `n_<name>` for a named destination (also when it is aimed at one chat session,
//!   whose queue key is `n_<name>_<hash>`), the queue key otherwise; a listing by name reads
//!   `…<status>.n_<name>.>`;
//! - `key`: the destination's queue key; a listing by key reads `…<status>.*.<key>.>`;
//! - `tail`: the delivery id without its `.<key>` suffix (the event id; a push's own id).
//!
//! A status change moves the record: a delete marker (`KV-Operation: DEL`) on the old key and
//! the record on the new one, in ONE atomic batch (ADR-50), the marker first. So each delivery
//! has exactly one live value, and it is the last message of the delivery under any status
//! (`…*.*.<key>.<tail>`): that is how a record is read by id. Every write is guarded on the
//! same subjects with the job's own group (`…*.<group>.<key>.<tail>`, which the server matches
//! far faster): a compare-and-set on the last sequence there. A lone write carries no
//! `Nats-Msg-Id` (the guard refuses a copy of it; the server would keep every id for its
//! duplicate window). A marker only has to outlive its copying (below): it expires after
//! [`MARKER_TTL_S`] (a per-message TTL).
//!
//! # Copies of the rare statuses
//!
//! Most records are delivered; pending and dead ones are few and spread over the whole bucket,
//! so reading a page of them from it would touch a block of the stream per record. The server
//! therefore also keeps each of those statuses in a stream of its own ([`status_stream`]),
//! sourced from the bucket with the status's subjects: the records there are in the order they
//! were written, and a record leaving the status leaves the copy too (its marker is copied).
//! The copies are for listings only and trail the bucket by the time the server takes to copy
//! (normally well under a millisecond); every write and every read by id uses the bucket.
//!
//! # One loop's writes
//!
//! Every attempt is appended with a compare-and-set, and the loop keeps the record it last
//! wrote (or read), so the usual cases cost one write and no read:
//!
//! - a first delivery has no record yet: it is created outright (one message);
//! - a retry of the job this loop tried last updates the record it kept, at its sequence (one
//!   message, or one batch of two when the status changes).
//!
//! A stale kept record (a replay, another relay replica) fails the check and is read again,
//! so nothing is ever overwritten blindly.

use super::StoreError;
use crate::bus::append::{append_batch, Append, AppendError};
use crate::bus::permissions::kv_stream;
use crate::bus::{decode, direct, encode, subjects, Bus};
use crate::relay::job::{Attempt, DeliveryJob, DeliveryRecord, DeliveryStatus};
use async_nats::jetstream::message::StreamMessage;

/// How many times a write is tried against a moving record before giving up.
const WRITE_TRIES: usize = 5;

/// The KV header naming a message's operation (`DEL`, `PURGE`; none for a value).
const KV_OPERATION: &str = "KV-Operation";

/// How long a delete marker stays, in seconds: long enough to be copied into the status
/// streams even when copying lags (it takes well under a millisecond normally; a copy that
/// fell further behind would keep a record that left its status), short enough that listings
/// of a status have few markers to step over (a minute of records leaving it).
pub const MARKER_TTL_S: u64 = 60;

/// The header of a per-message TTL (ADR-43), in seconds.
const MESSAGE_TTL: &str = "Nats-TTL";

/// The statuses whose records are also kept in a stream of their own (see the module docs).
pub const COPIED_STATUSES: [DeliveryStatus; 2] = [DeliveryStatus::Pending, DeliveryStatus::Dead];

/// The stream holding the records (`KV_deliveries`).
pub(super) fn record_stream() -> String {
    kv_stream(subjects::DELIVERY_BUCKET)
}

/// A record and the stream sequence it is stored at (its revision).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// The record.
    pub record: DeliveryRecord,
    /// Its stream sequence; writes replacing it are guarded on it.
    pub seq: u64,
}

/// The stream keeping a copy of the records with `status` (`DELIVERY_RECORDS_PENDING`,
/// `DELIVERY_RECORDS_DEAD`), if that status has one.
pub(super) fn status_stream(status: DeliveryStatus) -> Option<String> {
    COPIED_STATUSES
        .contains(&status)
        .then(|| subjects::delivery_copy_stream(status.as_str()))
}

/// `[A-Za-z0-9_-]+`: safe as one subject token and in a KV key.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One or more tokens joined by dots.
fn is_tokens(s: &str) -> bool {
    s.split('.').all(is_token)
}

/// `$KV.deliveries.<rest>`: a subject (or filter) in the record bucket.
pub(super) fn record_subject(rest: &str) -> String {
    subjects::delivery_record_subject(rest)
}

/// The group token of a job: `n_<name>` for a named destination, its queue key otherwise.
fn record_group(job: &DeliveryJob) -> std::borrow::Cow<'_, str> {
    match &job.name {
        Some(name) => crate::outbound::destination::named_key(name, None).into(),
        None => job.key.as_str().into(),
    }
}

/// The tail of a job's key: its id without the `.<key>` suffix.
fn tail(job: &DeliveryJob) -> &str {
    job.id
        .strip_suffix(job.key.as_str())
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or(&job.id)
}

/// Where one delivery's records go (`<status>.<group>.<key>.<tail>`), its tokens checked once:
/// a write names its record's subject, the old one's when it moves, and its guard.
struct Place<'a> {
    group: std::borrow::Cow<'a, str>,
    key: &'a str,
    tail: &'a str,
}

impl<'a> Place<'a> {
    /// `job`'s place; [`StoreError::BadId`] when its key or id are not subject tokens.
    fn of(job: &'a DeliveryJob) -> Result<Self, StoreError> {
        let (group, key, tail) = (record_group(job), job.key.as_str(), tail(job));
        if !is_token(&group) || !is_token(key) || !is_tokens(tail) {
            return Err(StoreError::BadId(job.id.clone()));
        }
        Ok(Self { group, key, tail })
    }

    /// The record's key under `status` (`*`: any status).
    fn key(&self, status: &str) -> String {
        let parts = [status, &self.group, self.key, self.tail];
        parts.join(".")
    }

    /// The record's subject under `status` (`*`: any status). With `*` it is every subject the
    /// delivery's record may be on: the subject its writes are guarded on. Only the status is
    /// a wildcard there (every record of one delivery has its group): the server matches the
    /// guard of each write over the whole bucket's subjects, and with the group a wildcard too
    /// that match walked every group (~11 % of nats-server's time at 100 destinations and
    /// 15,000 deliveries/s).
    fn subject(&self, status: &str) -> String {
        record_subject(&self.key(status))
    }
}

/// The key of `job`'s record while it has `status`: `<status>.<group>.<key>.<tail>`.
pub fn record_key(status: DeliveryStatus, job: &DeliveryJob) -> Result<String, StoreError> {
    Ok(Place::of(job)?.key(status.as_str()))
}

/// Every subject `job`'s record may be on (any status): the subject its writes are guarded on.
fn job_pattern(job: &DeliveryJob) -> Result<String, StoreError> {
    Ok(Place::of(job)?.subject("*"))
}

/// Every subject the record of delivery `id` may be on: `…*.*.<key>.<event id>` for an id
/// `<event id>.<key>`, `…*.*.*.<id>` for an id without a dot (a push). `None` when `id`
/// cannot be a delivery id.
pub(super) fn id_pattern(id: &str) -> Option<String> {
    if !is_tokens(id) {
        return None;
    }
    Some(match id.rsplit_once('.') {
        Some((tail, key)) => record_subject(&format!("*.*.{key}.{tail}")),
        None => record_subject(&format!("*.*.*.{id}")),
    })
}

/// Whether a message of the bucket (or of a copy) is a delete marker.
pub(super) fn is_marker(m: &StreamMessage) -> bool {
    m.headers.get(KV_OPERATION).is_some()
}

/// The record a message of the bucket holds: `None` for a delete marker, a message outside the
/// layout (a key from before it), or one that cannot be decoded.
pub(super) fn from_message(m: &StreamMessage) -> Option<StoredRecord> {
    if is_marker(m) {
        return None;
    }
    let key = m.subject.strip_prefix(record_subject("").as_str())?;
    let status = DeliveryStatus::parse(key.split('.').next()?)?;
    if key.split('.').count() < 4 {
        return None;
    }
    let record = decode::<DeliveryRecord>("delivery record", &m.payload).ok()?;
    (record.status == status).then_some(StoredRecord {
        record,
        seq: m.sequence,
    })
}

/// The record on the subjects of `pattern`, if its live value belongs to delivery `id`.
async fn read_pattern(
    client: &async_nats::Client,
    pattern: &str,
    id: &str,
) -> Result<Option<StoredRecord>, StoreError> {
    let last = direct::last(client, &record_stream(), pattern).await?;
    Ok(last
        .as_ref()
        .and_then(from_message)
        .filter(|s| s.record.job.id == id))
}

/// The stored record of delivery `id` (`None`: none, or `id` cannot be a delivery id). Read
/// from any replica: a write based on it is still checked by the server.
pub(super) async fn read_record(
    client: &async_nats::Client,
    id: &str,
) -> Result<Option<StoredRecord>, StoreError> {
    match id_pattern(id) {
        Some(pattern) => read_pattern(client, &pattern, id).await,
        None => Ok(None),
    }
}

/// The stored record of `job`.
async fn read_job(
    client: &async_nats::Client,
    job: &DeliveryJob,
) -> Result<Option<StoredRecord>, StoreError> {
    read_pattern(client, &job_pattern(job)?, &job.id).await
}

/// Stores `record` under its status's key, replacing `before` (the stored record it was made
/// from; `None` when there was none). Same status: one message; another status: a delete
/// marker on the old key and the record, in one atomic batch. Answers the new sequence, or
/// [`StoreError::Conflict`] when the record is no longer `before`.
pub async fn store_record(
    js: &async_nats::jetstream::Context,
    record: &DeliveryRecord,
    before: Option<&StoredRecord>,
) -> Result<u64, StoreError> {
    let job = &record.job;
    // No `Nats-Msg-Id` on a lone write: the guard already refuses a second copy, and the
    // server would keep every id for its duplicate window (two minutes of records, ~1.8
    // million ids at 15,000 deliveries/s). A batch needs an id.
    let place = Place::of(job)?;
    let mut put = Append {
        subject: place.subject(record.status.as_str()),
        guard: place.subject("*"),
        expected: before.map_or(0, |b| b.seq),
        msg_id: String::new(),
        extra: Vec::new(),
        payload: encode(record),
    };
    let stored = match before.map(|b| b.record.status) {
        Some(old) if old != record.status => {
            let write_id = ulid::Ulid::new();
            put.msg_id = format!("rec_{write_id}");
            let marker = Append {
                subject: place.subject(old.as_str()),
                msg_id: format!("rec_{write_id}_moved"),
                extra: vec![
                    (KV_OPERATION, "DEL".to_string()),
                    (MESSAGE_TTL, MARKER_TTL_S.to_string()),
                ],
                payload: bytes::Bytes::new(),
                ..put.clone()
            };
            append_batch(js, &[marker, put]).await
        }
        _ => match put.send(js).await {
            Ok(sent) => sent.stored().await,
            Err(e) => Err(e),
        },
    };
    stored.map_err(|e| match e {
        AppendError::Conflict { .. } => StoreError::Conflict(job.id.clone()),
        AppendError::Unknown(e) | AppendError::Refused(e) => StoreError::Bus(e),
    })
}

/// The records of one delivery loop.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// What this loop last knew of one delivery's record.
    kept: Option<Kept>,
}

/// One delivery's record as last written or read.
#[derive(Debug)]
struct Kept {
    /// The delivery (job) id.
    id: String,
    /// The record and its sequence; `None` when there was none.
    record: Option<StoredRecord>,
}

impl Recorder {
    /// The stored record of `job`: the kept one if it is that delivery's, read (and kept)
    /// otherwise. `None` when there is no record (or it cannot be read).
    pub(crate) async fn current(
        &mut self,
        bus: &Bus,
        job: &DeliveryJob,
    ) -> Option<&DeliveryRecord> {
        if self.kept.as_ref().is_none_or(|k| k.id != job.id) {
            let record = read_job(&bus.client, job).await.ok().flatten();
            self.kept = Some(Kept {
                id: job.id.clone(),
                record,
            });
        }
        let kept = self.kept.as_ref()?;
        kept.record.as_ref().map(|s| &s.record)
    }

    /// Appends `attempt` to the record of `job` and sets its status and reason. `first` says
    /// this is the job's first delivery, so that without a kept record it is created without
    /// reading (an existing one, e.g. of a replay, is then read and updated).
    pub(crate) async fn write(
        &mut self,
        bus: &Bus,
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
                None => read_job(&bus.client, job).await.ok().flatten(),
            };
            let mut record = current.as_ref().map_or_else(
                || DeliveryRecord {
                    job: job.clone(),
                    status,
                    attempts: Vec::new(),
                    reason: None,
                    updated_time: crate::domain::now(),
                },
                |s| s.record.clone(),
            );
            record.attempts.extend(attempt.clone());
            record.status = status;
            record.reason = reason.clone();
            record.updated_time = crate::domain::now();
            let written = match store_record(&bus.js, &record, current.as_ref()).await {
                Ok(seq) => Some(StoredRecord { record, seq }),
                // No answer: stored after all if the record now is the one sent.
                Err(StoreError::Bus(_)) => read_job(&bus.client, job)
                    .await
                    .ok()
                    .flatten()
                    .filter(|s| s.record == record),
                Err(_) => None,
            };
            if let Some(stored) = written {
                self.kept = Some(Kept {
                    id: job.id.clone(),
                    record: Some(stored),
                });
                return;
            }
        }
        tracing::warn!(delivery = job.id, "could not record the delivery attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copied_statuses_are_the_ones_the_topology_makes_copy_streams_for() {
        let here: Vec<&str> = COPIED_STATUSES.iter().map(|s| s.as_str()).collect();
        assert_eq!(here, subjects::COPIED_DELIVERY_STATUSES);
        assert_eq!(
            status_stream(DeliveryStatus::Dead).as_deref(),
            Some("DELIVERY_RECORDS_DEAD")
        );
        assert_eq!(status_stream(DeliveryStatus::Delivered), None);
    }

    fn job(id: &str, key: &str, name: Option<&str>) -> DeliveryJob {
        DeliveryJob {
            id: id.into(),
            key: key.into(),
            name: name.map(str::to_string),
            destination: None,
            event: None,
            task: None,
            text: String::new(),
            session_id: None,
            created_time: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_record_key_names_status_group_key_and_event() {
        let named = job("evt_1.n_hook_ab12", "n_hook_ab12", Some("hook"));
        let key = record_key(DeliveryStatus::Dead, &named).unwrap();
        assert_eq!(key, "dead.n_hook.n_hook_ab12.evt_1");
        let push = job("push_9", "push", None);
        let key = record_key(DeliveryStatus::Pending, &push).unwrap();
        assert_eq!(key, "pending.push.push.push_9");
        // A job knows its group; an id alone does not.
        assert_eq!(
            job_pattern(&named).unwrap(),
            "$KV.deliveries.*.n_hook.n_hook_ab12.evt_1"
        );
        assert_eq!(
            id_pattern("evt_1.n_hook_ab12").unwrap(),
            "$KV.deliveries.*.*.n_hook_ab12.evt_1"
        );
        assert_eq!(id_pattern("push_9").unwrap(), "$KV.deliveries.*.*.*.push_9");
    }

    #[test]
    fn ids_and_keys_that_are_not_subject_tokens_are_refused() {
        assert!(id_pattern("evt_1.>").is_none());
        assert!(id_pattern("a..b").is_none());
        assert!(id_pattern("").is_none());
        assert!(id_pattern("evt 1").is_none());
        let bad = job("evt_1.h_*", "h_*", None);
        assert!(matches!(
            record_key(DeliveryStatus::Dead, &bad),
            Err(StoreError::BadId(_))
        ));
    }

    #[test]
    fn statuses_parse_from_their_own_names_only() {
        for s in [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Dead,
        ] {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(DeliveryStatus::parse("Dead"), None);
    }
}
