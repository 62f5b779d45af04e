//! The `taskfleet_schedules` bucket (one record per name, written with compare-and-set) and the
//! broker-held tick of each schedule (`schedules.<name>.next` in `TASKS`).

use super::model::{Schedule, Tick};
use super::ScheduleError;
use crate::bus::{direct, subjects, Bus, BusError, NatsResultExt};
use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};

/// The largest number of schedules a listing returns.
pub(super) const MAX_LISTED: usize = 10_000;

/// A stored schedule and the revision it was read at.
pub(super) type Versioned = (Schedule, u64);

fn bucket(bus: &Bus) -> &kv::Store {
    &bus.topology.schedules
}

/// The record of `name`, if there is one.
pub(super) async fn load(bus: &Bus, name: &str) -> Result<Option<Versioned>, ScheduleError> {
    let entry = bucket(bus).entry(name).await.op("kv get schedule")?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(None);
    };
    let schedule = serde_json::from_slice(&entry.value).map_err(|source| BusError::Decode {
        what: "a schedule record",
        source,
    })?;
    Ok(Some((schedule, entry.revision)))
}

/// Stores a new record; `Exists` when the name is taken.
pub(super) async fn create(bus: &Bus, s: &Schedule) -> Result<u64, ScheduleError> {
    let bytes = serde_json::to_vec(s).expect("a schedule serializes");
    match bucket(bus).create(&s.name, bytes.into()).await {
        Ok(rev) => Ok(rev),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            Err(ScheduleError::Exists(s.name.clone()))
        }
        Err(e) => Err(BusError::from_op("kv create schedule", e).into()),
    }
}

/// Replaces the record read at `revision`; `Ok(None)` when someone wrote it since.
pub(super) async fn update(
    bus: &Bus,
    s: &Schedule,
    revision: u64,
) -> Result<Option<u64>, ScheduleError> {
    let bytes = serde_json::to_vec(s).expect("a schedule serializes");
    match bucket(bus).update(&s.name, bytes.into(), revision).await {
        Ok(rev) => Ok(Some(rev)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(BusError::from_op("kv update schedule", e).into()),
    }
}

/// Removes the record of `name`.
pub(super) async fn delete(bus: &Bus, name: &str) -> Result<(), ScheduleError> {
    bucket(bus).delete(name).await.op("kv delete schedule")?;
    Ok(())
}

/// Every stored schedule, by name.
pub(super) async fn list(bus: &Bus) -> Result<Vec<Schedule>, ScheduleError> {
    let mut out: Vec<Schedule> =
        direct::bucket_values(&bus.client, subjects::SCHEDULES_BUCKET, MAX_LISTED).await?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `2026-03-29T01:30:00Z`: how ticks are written in headers and message ids.
pub fn tick_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Arms `tick` for `s`: the one message on `schedules.<name>.next`, which the broker fires into
/// `schedules.<name>.tick` at the tick (at once when it is past). Publishing again replaces
/// the schedule's earlier tick; the same tick of the same generation twice (two replicas, a
/// redelivered tick) is stored once (`Nats-Msg-Id`).
pub(super) async fn arm(bus: &Bus, s: &Schedule, tick: DateTime<Utc>) -> Result<(), ScheduleError> {
    let body = Tick {
        schedule: s.name.clone(),
        tick,
        generation: s.generation,
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Schedule", format!("@at {}", tick_text(tick)).as_str());
    let target = subjects::schedule_tick(&s.name);
    headers.insert("Nats-Schedule-Target", target.as_str());
    // The creation time tells a schedule deleted and created again (generation 1 again)
    // within the duplicate window from the earlier one.
    let id = format!(
        "{}@{}@{}@{}",
        s.name,
        tick_text(tick),
        s.generation,
        s.created_time.timestamp_micros()
    );
    headers.insert("Nats-Msg-Id", id.as_str());
    let payload = serde_json::to_vec(&body).expect("a tick serializes");
    bus.js
        .publish_with_headers(subjects::schedule_next(&s.name), headers, payload.into())
        .await
        .op("publish schedule tick")?
        .await
        .op("publish schedule tick ack")?;
    Ok(())
}

/// Removes `name`'s armed tick, if any.
pub(super) async fn disarm(bus: &Bus, name: &str) -> Result<(), ScheduleError> {
    bus.topology
        .tasks
        .purge()
        .filter(subjects::schedule_next(name))
        .await
        .op("purge schedule tick")?;
    Ok(())
}

/// The tick armed for `name` now, if any.
pub(super) async fn armed(bus: &Bus, name: &str) -> Result<Option<Tick>, ScheduleError> {
    let next = subjects::schedule_next(name);
    let got = direct::last(&bus.client, subjects::TASKS_STREAM, &next).await?;
    Ok(got.and_then(|m| serde_json::from_slice(&m.payload).ok()))
}
