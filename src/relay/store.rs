//! The delivery store: the only code that reads or writes the DELIVERIES stream and the delivery
//! records. The relay queues jobs and records attempts through it, and the API's delivery routes
//! call it (list, inspect, replay, push, counts); neither names the stream, the bucket or a
//! record's key itself.
//!
//! - `record.rs`: where a record is stored (its key by status, destination and event), how one
//!   is read and written, and the [`Recorder`] a delivery loop writes its attempts with;
//! - `listing.rs`: reading records a page at a time (by status and destination, by a task's
//!   events) and a destination's dead records since a time;
//! - here: [`DeliveryStore`], what the API asks of the relay's records and queue.

mod listing;
mod record;

pub use listing::{ListQuery, Page};
pub(crate) use record::Recorder;
pub use record::{is_token, record_key, store_record, StoredRecord, COPIED_STATUSES, MARKER_TTL_S};

use super::job::{
    clip_response, DeliveryJob, DeliveryRecord, DeliveryStatus, Parcel, BUNDLE_HEADER, PUSH_KEY,
};
use crate::bus::append::{refused_for_good, AppendError, EXPECTED_LAST_MSG_ID};
use crate::bus::{
    delivery_consumer_config, direct, encode, message_headers, raw, subjects, Bus, BusError,
    NatsResultExt,
};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::PublishAckFuture;
use futures::StreamExt;
use std::collections::{BTreeSet, HashSet};

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No delivery has that id (or it cannot be one).
    #[error("delivery {0} not found")]
    NotFound(String),
    /// The delivery is still pending, so there is nothing to replay.
    #[error("delivery {0} is still pending")]
    StillPending(String),
    /// Somebody else wrote the record since it was read.
    #[error("delivery {0} changed concurrently")]
    Conflict(String),
    /// The id, key or name of the delivery cannot be part of a subject.
    #[error("delivery {0:?} cannot be stored: its id, key or name is not a subject token")]
    BadId(String),
    /// NATS failed, refused the write, or gave no answer.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A job handed to the DELIVERIES stream, or why the stream can never take it.
pub enum Queued {
    /// Sent; the future resolves once it is stored.
    Sent(PublishAckFuture),
    /// Refused for good (larger than the stream or the connection accepts).
    Refused(String),
}

/// The dead deliveries of one destination queued again by [`DeliveryStore::replay_dead`].
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// The delivery ids queued again, oldest first.
    pub ids: Vec<String>,
    /// Others remain dead (the call stopped at its limit).
    pub more: bool,
}

/// The delivery store over one NATS connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeliveryStore {
    /// The connection, streams and buckets.
    bus: Bus,
}

impl DeliveryStore {
    /// A store over `bus`.
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }

    /// Queues `job` on its destination's subject of DELIVERIES, de-duplicated on `msg_id`, and
    /// waits until it is stored.
    pub async fn queue(&self, job: &DeliveryJob, msg_id: &str) -> Result<(), StoreError> {
        let subject = subjects::delivery(&job.key);
        let headers = message_headers(msg_id);
        let why = match self.publish(subject, headers, encode(job)).await? {
            Queued::Sent(ack) => return Ok(ack.await.map(drop).op("queue delivery ack")?),
            Queued::Refused(why) => why,
        };
        Err(StoreError::Bus(BusError::TooLarge(why)))
    }

    /// Sends `parcel` to its destination's subject, de-duplicated on its id, without waiting
    /// for the stream's answer (awaiting [`Queued::Sent`] gives it). A parcel larger than the
    /// connection takes is [`Queued::Refused`] at once.
    pub async fn send(&self, parcel: &Parcel) -> Result<Queued, BusError> {
        let (subject, _, headers, body) = outgoing(parcel);
        self.publish(subject, headers, body).await
    }

    /// Queues `jobs` (parcels of any destinations) in order, together, and waits until they are stored:
    /// as a chain ([`queue_chained`](Self::queue_chained)) where DELIVERIES has one replica, as
    /// one atomic batch ([`queue_batch`](Self::queue_batch)) where it has more. On a replicated
    /// stream nats-server (2.15.1) checks `Nats-Expected-Last-Msg-Id` only where each replica
    /// applies the message, and one failed check there left the stream unanswering for 9 s (a
    /// test on a 3-node cluster, 2026-12-04); the batch is checked before it is proposed. An
    /// error leaves the jobs to be queued one at a time, in order (see either).
    pub async fn queue_together(&self, jobs: &[(Parcel, tracing::Span)]) -> Result<(), BusError> {
        let replicas = (self.bus.topology.deliveries.cached_info().config).num_replicas;
        if replicas > 1 {
            self.queue_batch(jobs).await
        } else {
            self.queue_chained(jobs).await
        }
    }

    /// Queues `jobs` (of any destinations) as one atomic batch, in order, and waits until they
    /// are stored: all of them or none. Each job carries the trace of its span (its event's).
    /// An error says none was stored, or that the batch could not be told apart from one stored
    /// before (a job id stored already makes the stream refuse the whole batch): then queueing
    /// the jobs one at a time, in order, settles it (each is de-duplicated on its id).
    pub async fn queue_batch(&self, jobs: &[(Parcel, tracing::Span)]) -> Result<(), BusError> {
        let messages = jobs
            .iter()
            .map(|(parcel, span)| {
                let (subject, _, headers, body) = span.in_scope(|| outgoing(parcel));
                (subject, headers, body)
            })
            .collect();
        let id = jobs.first().map(|(p, _)| p.msg_id()).unwrap_or_default();
        let sent = crate::bus::append::publish_batch(&self.bus.js, &id, messages).await;
        let stored = match sent {
            Ok(sent) => sent.stored().await,
            Err(e) => Err(e),
        };
        stored.map(drop).map_err(|e| match e {
            AppendError::Unknown(e) | AppendError::Refused(e) => e,
            AppendError::Conflict { .. } => BusError::Op {
                op: "queue deliveries",
                source: "the batch holds a job queued before".into(),
            },
        })
    }

    /// Queues `jobs` (of any destinations) in order, pipelined, and waits until they are
    /// stored. Each job after the first is stored only if the job before it is the stream's
    /// last message (`Nats-Expected-Last-Msg-Id`), so no job is ever stored after one that was
    /// not: a failure leaves the jobs before it stored and none after, and queueing the jobs
    /// one at a time, in order, then settles it (each is de-duplicated on its id; a job
    /// written by anyone else in between also ends the chain there). Each job carries the trace
    /// of its span (its event's). Unlike an atomic batch, for which the server creates and
    /// removes a file store each time (docs/benchmarks.md), this costs no more than the
    /// publishes themselves. For a stream of one replica only: see
    /// [`queue_together`](Self::queue_together).
    pub async fn queue_chained(&self, jobs: &[(Parcel, tracing::Span)]) -> Result<(), BusError> {
        let mut acks = Vec::with_capacity(jobs.len());
        let mut previous: Option<String> = None;
        for (parcel, span) in jobs {
            let (subject, id, mut headers, body) = span.in_scope(|| outgoing(parcel));
            if let Some(previous) = previous {
                headers.insert(EXPECTED_LAST_MSG_ID, previous);
            }
            let sent = self.bus.js.publish_with_headers(subject, headers, body);
            acks.push(sent.await.op("queue deliveries")?);
            previous = Some(id);
        }
        for ack in acks {
            ack.await.op("queue deliveries ack")?;
        }
        Ok(())
    }

    /// Sends `body` to `subject` with `headers`; refused for good when larger than the
    /// connection takes.
    async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<Queued, BusError> {
        let sent = self
            .bus
            .js
            .publish_with_headers(subject, headers, body)
            .await;
        match sent {
            Ok(ack) => Ok(Queued::Sent(ack)),
            Err(e) if refused_for_good(&e) => Ok(Queued::Refused(e.to_string())),
            Err(e) => Err(e).op("queue delivery"),
        }
    }

    /// Records `job` as a dead delivery that was never queued: the queue refused it (`why`).
    /// The record keeps the event without its data and the text cut to 4 KiB, and no task, so
    /// it fits where the job did not.
    pub async fn dead_letter(&self, job: &DeliveryJob, why: &str) {
        let reason = format!("the delivery queue refused the job: {why}");
        tracing::warn!(
            delivery = job.id,
            reason,
            "dead-lettering a delivery that cannot be queued"
        );
        self.bury(job, reason).await;
    }

    /// Records `job` as a dead delivery that was never queued: its task's `notify` names `name`,
    /// which this relay has no destination for, so there is nowhere to deliver it. Replaying it
    /// once the relay has the destination delivers it.
    pub async fn dead_unknown(&self, job: &DeliveryJob, name: &str) {
        let reason =
            format!("the relay has no destination named {name:?} (see relay.destinations)");
        self.bury(job, reason).await;
    }

    /// Records `job`, read as JSON from queue `key` because no client can parse its headers
    /// (`problem`), as a dead delivery of that queue: it was ended without an attempt.
    pub(crate) async fn dead_unreadable(&self, key: &str, job: &DeliveryJob, problem: &str) {
        let reason = format!("no client can read the queued job: {problem}");
        tracing::warn!(
            destination = key,
            delivery = job.id,
            reason,
            "dead-lettering a delivery no client can read"
        );
        let job = DeliveryJob {
            key: key.to_string(),
            ..job.clone()
        };
        self.bury(&job, reason).await;
    }

    /// Records `job` as dead with `reason`, without an attempt (an existing record, e.g. of a
    /// replay, is updated). The record keeps the event without its data and the text cut to
    /// 4 KiB, and no task, so it fits where the job may not.
    async fn bury(&self, job: &DeliveryJob, reason: String) {
        let mut kept = job.clone();
        kept.task = None;
        kept.text = clip_response(&kept.text).0;
        kept.event = kept.event.as_ref().map(|e| e.clipped());
        let status = DeliveryStatus::Dead;
        Recorder::default()
            .write(&self.bus, &kept, None, status, Some(reason), true)
            .await;
    }

    /// The durable consumer of destination `key`'s queue (`relay_<key>`), created or brought up
    /// to date: up to `window` messages in flight, all to one relay replica at a time (the
    /// pinned client of priority group [`subjects::RELAY_GROUP`]), so the destination gets its
    /// deliveries in order whichever replica holds it. A replica that stops pulling loses the
    /// pin after `ack_wait`, and a message not settled within `ack_wait` is handed out again.
    ///
    /// The handle reads over `reader` (the bus's [`Reader`](crate::bus::Reader)): a job no
    /// client can parse drops that connection only, and [`end_unreadable`](Self::end_unreadable)
    /// then ends it.
    pub(crate) async fn consumer(
        &self,
        key: &str,
        ack_wait: std::time::Duration,
        window: usize,
        reader: &crate::bus::Reader,
    ) -> Result<PullConsumer, BusError> {
        let name = subjects::delivery_consumer(key);
        let config = delivery_consumer_config(&name, &subjects::delivery(key), ack_wait, window);
        let js = reader.jetstream();
        let stream = subjects::DELIVERIES_STREAM;
        let created = js.create_consumer_on_stream(config.clone(), stream).await;
        if created.is_err() && self.drop_stored_on_disk(&name).await {
            let again = js.create_consumer_on_stream(config, stream).await;
            return again.op("create delivery consumer");
        }
        created.op("create delivery consumer")
    }

    /// Deletes delivery consumer `name` if it keeps its state on disk (a relay before 2026-12
    /// made it so, and the server cannot change that in place): the jobs it held stay queued
    /// and the consumer made next hands them out again. Whether it was deleted.
    async fn drop_stored_on_disk(&self, name: &str) -> bool {
        let deliveries = &self.bus.topology.deliveries;
        match deliveries.consumer_info(name).await {
            Ok(info) if !info.config.memory_storage => {
                tracing::info!(
                    consumer = name,
                    "replacing a delivery consumer kept on disk"
                );
                deliveries.delete_consumer(name).await.is_ok()
            }
            _ => false,
        }
    }

    /// Ends every job destination `key`'s consumer handed out and that is not acknowledged
    /// yet whose headers no client can parse (read as JSON once `reader`, the connection that
    /// dropped, is back; see [`raw::term_unreadable`]), with the problem as the reason; the jobs
    /// lost with the connection (past `received`, the last one the loop got) are handed out
    /// again. Which were ended (they stay in the stream until it removes acknowledged jobs).
    pub(crate) async fn end_unreadable(
        &self,
        key: &str,
        reader: &async_nats::Client,
        received: Option<u64>,
    ) -> Result<Vec<(raw::RawStored, String)>, BusError> {
        let consumer = subjects::delivery_consumer(key);
        let (stream, filter) = (subjects::DELIVERIES_STREAM, subjects::delivery(key));
        let clients = (reader, &self.bus.client);
        raw::term_unreadable(clients, (stream, &consumer), &filter, received).await
    }

    /// Ends the pin of destination `key`'s consumer, so the next replica that pulls holds it:
    /// a loop takes the destination over when it starts (a replica killed or restarted would
    /// otherwise hold it until its pin times out) and hands it back at shutdown.
    pub(crate) async fn unpin(&self, key: &str) -> Result<(), BusError> {
        let name = subjects::delivery_consumer(key);
        let deliveries = &self.bus.topology.deliveries;
        deliveries
            .unpin_consumer(&name, subjects::RELAY_GROUP)
            .await
            .op("unpin delivery consumer")
    }

    /// The destination keys that have a queue consumer or a job queued: the loops to resume
    /// after a restart. Consumers keep their state in memory, so after the server restarts
    /// only the queued jobs say which destinations have work.
    pub(crate) async fn queued_keys(&self) -> Result<BTreeSet<String>, BusError> {
        let deliveries = &self.bus.topology.deliveries;
        let mut keys = BTreeSet::new();
        let mut names = deliveries.consumer_names();
        while let Some(name) = names.next().await {
            let name = name.op("list delivery consumers")?;
            if let Some(key) = name.strip_prefix("relay_") {
                keys.insert(key.to_string());
            }
        }
        let mut queued = deliveries
            .info_with_subjects(subjects::ALL_DELIVERIES)
            .await
            .op("list queued deliveries")?;
        while let Some(subject) = queued.next().await {
            let (subject, _) = subject.op("list queued deliveries")?;
            if let Some(key) = subject.strip_prefix("deliveries.") {
                keys.insert(key.to_string());
            }
        }
        Ok(keys)
    }

    /// Queues a push of `text` under the relay's push key (the relay delivers it to its
    /// `relay.push_destination`, to `session_id` when given); answers the delivery id.
    pub async fn queue_push(
        &self,
        text: String,
        session_id: Option<String>,
    ) -> Result<String, StoreError> {
        let job = DeliveryJob {
            id: format!("push_{}", ulid::Ulid::new()),
            key: PUSH_KEY.to_string(),
            name: None,
            destination: None,
            event: None,
            task: None,
            text,
            session_id,
            created_time: crate::domain::now(),
        };
        self.queue(&job, &job.id).await?;
        Ok(job.id)
    }

    /// One page of records by status and destination, most recently written first.
    pub async fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        listing::walk(&self.bus, q).await
    }

    /// One page of the records of the deliveries of `events` (a task's event ids), most
    /// recently written first, filtered by `q`'s status and destination.
    pub async fn list_for_events(
        &self,
        q: &ListQuery,
        events: &[String],
    ) -> Result<Page, StoreError> {
        listing::by_events(&self.bus, q, events).await
    }

    /// The record of delivery `id`: its job and every attempt.
    pub async fn get(&self, id: &str) -> Result<DeliveryRecord, StoreError> {
        Ok(self.stored(id).await?.record)
    }

    /// The stored record of delivery `id`, [`StoreError::NotFound`] without one.
    async fn stored(&self, id: &str) -> Result<StoredRecord, StoreError> {
        record::read_record(&self.bus.client, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// Queues delivery `id` again (same delivery id, a new queue message) and enables its
    /// destination. [`StoreError::StillPending`] when it has not settled yet,
    /// [`StoreError::Conflict`] when its record changed meanwhile.
    pub async fn replay(&self, id: &str) -> Result<(), StoreError> {
        let stored = self.stored(id).await?;
        if stored.record.status == DeliveryStatus::Pending {
            return Err(StoreError::StillPending(id.to_string()));
        }
        match self.replay_record(&stored, &mut HashSet::new()).await? {
            true => Ok(()),
            false => Err(StoreError::Conflict(id.to_string())),
        }
    }

    /// Marks `stored` pending again and queues its job anew, re-enabling its destination unless
    /// its queue key is in `enabled` already (a destination-wide replay enables each key once).
    /// `false` when the record changed since it was read (nothing is queued then).
    async fn replay_record(
        &self,
        stored: &StoredRecord,
        enabled: &mut HashSet<String>,
    ) -> Result<bool, StoreError> {
        let mut rec = stored.record.clone();
        // Same delivery id (receivers de-duplicate on webhook-id), a new queue message.
        let msg_id = format!("{}:replay:{}", rec.job.id, ulid::Ulid::new());
        if enabled.insert(rec.job.key.clone()) {
            let _ = super::disabled::enable(&self.bus, &rec.job.key).await;
        }
        rec.status = DeliveryStatus::Pending;
        rec.reason = Some("replayed".into());
        rec.updated_time = crate::domain::now();
        match store_record(&self.bus.js, &rec, Some(stored)).await {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.queue(&rec.job, &msg_id).await?;
        Ok(true)
    }

    /// Queues again the dead deliveries of destination `dest` (a name or a queue key) created
    /// since `since` (all without it), oldest first, at most `max`; `more` when others remain.
    ///
    /// Reads the copy of the dead records from the first one written since then (less a clock
    /// skew) on, the destination's only; each is read again from the bucket before it is
    /// replayed (one replayed meanwhile is left alone).
    pub async fn replay_dead(
        &self,
        dest: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
        max: usize,
    ) -> Result<Replayed, StoreError> {
        let found = listing::dead_since(&self.bus, dest, since, 2 * max).await?;
        let mut dead: Vec<StoredRecord> = found
            .iter()
            .filter_map(record::from_message)
            .filter(|s| since.is_none_or(|t| s.record.job.created_time >= t))
            .collect();
        dead.sort_by_key(|s| (s.record.job.created_time, s.seq));
        let more = dead.len() > max;
        dead.truncate(max);
        let (mut ids, mut enabled) = (Vec::new(), HashSet::new());
        for listed in &dead {
            let id = &listed.record.job.id;
            let current = record::read_record(&self.bus.client, id).await?;
            let Some(current) = current.filter(|c| c.record.status == DeliveryStatus::Dead) else {
                continue;
            };
            if self.replay_record(&current, &mut enabled).await? {
                ids.push(id.clone());
            }
        }
        Ok(Replayed { ids, more })
    }

    /// Whether destination `dest` (a name or a queue key) has at least one delivery record.
    pub async fn has_records(&self, dest: &str) -> Result<bool, StoreError> {
        listing::has_records(&self.bus, dest).await
    }

    /// How many records have `status` (pending and dead ones counted in their copies; the
    /// count includes records that left the status in the last [`MARKER_TTL_S`] seconds only
    /// as their delete markers, as the copies hold them).
    pub async fn count(&self, status: DeliveryStatus) -> Result<u64, StoreError> {
        let stream = record::status_stream(status).unwrap_or_else(record::record_stream);
        let filter = record::record_subject(&format!("{}.>", status.as_str()));
        Ok(direct::count_after(&self.bus.client, &stream, &filter, 0).await?)
    }

    /// The jobs waiting in DELIVERIES, per destination queue key (keys with none left out).
    pub async fn backlog(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut info = self
            .bus
            .topology
            .deliveries
            .info_with_subjects(subjects::ALL_DELIVERIES)
            .await
            .op("delivery backlog")?;
        let mut out: Vec<(String, u64)> = Vec::new();
        while let Some(item) = info.next().await {
            let (subject, n) = item.op("delivery backlog")?;
            out.push((queue_key(&subject).to_string(), n as u64));
        }
        Ok(out)
    }
}

/// The queue message of `parcel`: its subject, de-duplication id, headers (the id, the current
/// trace, and [`BUNDLE_HEADER`] with the number of jobs when it holds a bundle) and body.
fn outgoing(parcel: &Parcel) -> (String, String, async_nats::HeaderMap, bytes::Bytes) {
    let id = parcel.msg_id();
    let (body, bundle) = parcel.encoded();
    let mut headers = message_headers(&id);
    if let Some(count) = bundle {
        headers.insert(BUNDLE_HEADER, count.as_str());
    }
    (subjects::delivery(parcel.key()), id, headers, body.into())
}

/// The queue key of a DELIVERIES subject (`deliveries.<key>`).
fn queue_key(subject: &str) -> &str {
    subject.strip_prefix("deliveries.").unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_key_is_the_delivery_subject_without_its_prefix() {
        let key = "n_hook";
        assert_eq!(queue_key(&subjects::delivery(key)), key);
        assert_eq!(queue_key("elsewhere"), "elsewhere");
    }
}
