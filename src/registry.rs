//! The worker registry: every `taskfleet worker` and relay announces itself in the KV bucket
//! `taskfleet_workers` and renews the announcement; each write carries a per-message TTL
//! (`Nats-TTL`), so the server removes the entry of a process that died within its `ttl`, and a
//! process that stops removes its own at once. Nobody sweeps: the broker does the expiry.
//!
//! Keys are `<kind>.<assignee>.<id>` (`worker.anna.anna_host-12-ab3f`, `relay._.relay_host-7`),
//! so a worker's NATS user may write under its assignee's prefix only.

use crate::bus::{direct, subjects, Bus, BusError, NatsResultExt};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one process announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The worker id (lease holder name) or the relay's id.
    pub id: String,
    /// `worker` or `relay`.
    pub kind: String,
    /// The assignee whose tasks it runs (workers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// The host (container) name.
    pub host: String,
    /// Tasks it runs at once.
    pub concurrency: usize,
    /// Ids of the tasks it runs now.
    pub running: Vec<String>,
    /// taskfleet version.
    pub version: String,
    /// When the process started.
    pub started: DateTime<Utc>,
    /// When it last renewed the announcement.
    pub last_seen: DateTime<Utc>,
    /// How long the announcement lives without a renewal, in seconds.
    pub ttl_s: u64,
}

impl Announcement {
    /// A new announcement of this process (host from `/etc/hostname`, version of this build).
    pub fn new(
        id: &str,
        kind: &str,
        assignee: Option<&str>,
        concurrency: usize,
        ttl: Duration,
    ) -> Self {
        let now = Utc::now();
        Self {
            id: id.into(),
            kind: kind.into(),
            assignee: assignee.map(str::to_string),
            host: host_name(),
            concurrency,
            running: Vec::new(),
            version: env!("CARGO_PKG_VERSION").into(),
            started: now,
            last_seen: now,
            ttl_s: ttl.as_secs().max(1),
        }
    }

    /// Its key in the bucket: `<kind>.<assignee or _>.<id with other characters as _>`.
    pub fn key(&self) -> String {
        let id: String = self
            .id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_=".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{}.{}.{id}",
            self.kind,
            self.assignee.as_deref().unwrap_or("_")
        )
    }
}

/// This machine's host name (a container's id in Docker), or `unknown`.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Writes `me` with its TTL (a renewal is the same write).
pub async fn announce(bus: &Bus, me: &Announcement) -> Result<(), BusError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", format!("{}s", me.ttl_s).as_str());
    let subject = format!("$KV.{}.{}", subjects::WORKER_BUCKET, me.key());
    bus.js
        .publish_with_headers(subject, headers, crate::bus::encode(me))
        .await
        .op("announce")?
        .await
        .op("announce ack")?;
    Ok(())
}

/// Removes `me` (a process that stops).
pub async fn withdraw(bus: &Bus, me: &Announcement) -> Result<(), BusError> {
    let kv = bus
        .js
        .get_key_value(subjects::WORKER_BUCKET)
        .await
        .op("open worker registry")?;
    // The purge marker goes too, after a second: every process start is a new key.
    kv.purge_with_ttl(me.key(), Duration::from_secs(1))
        .await
        .op("withdraw announcement")?;
    Ok(())
}

/// How often [`keep_announced`] looks whether the running tasks changed since its last write.
const CHANGE_CHECK: Duration = Duration::from_secs(1);

/// Announces `me` every third of its TTL until `shutdown`, and within [`CHANGE_CHECK`] of a
/// change of the running task ids `running` gives (a task started or finished shows in
/// `taskfleet workers` within about a second, at most one write a second however busy); then
/// withdraws it. A failed write is logged and tried at the next check (the entry may lapse
/// meanwhile: it comes back with the next write).
pub async fn keep_announced(
    bus: Bus,
    mut me: Announcement,
    running: impl Fn() -> Vec<String>,
    shutdown: CancellationToken,
) {
    let every = Duration::from_secs(me.ttl_s).div_f64(3.0);
    let mut tick = tokio::time::interval(every.min(CHANGE_CHECK));
    // The tick of the last write that landed (ticks are exact multiples of the period, so a
    // renewal comes at the first tick at least `every` after it).
    let mut written: Option<tokio::time::Instant> = None;
    loop {
        let at = tokio::select! {
            at = tick.tick() => at,
            _ = shutdown.cancelled() => break,
        };
        let mut now_running = running();
        now_running.sort_unstable();
        let due = written.is_none_or(|w| at - w >= every);
        if !due && now_running == me.running {
            continue;
        }
        me.running = now_running;
        me.last_seen = Utc::now();
        match announce(&bus, &me).await {
            Ok(()) => written = Some(at),
            Err(e) => {
                tracing::warn!(error.message = %e, "cannot renew this process's announcement");
            }
        }
    }
    if let Err(e) = withdraw(&bus, &me).await {
        tracing::debug!(error.message = %e, "announcement not withdrawn; it lapses after its ttl");
    }
}

/// Most announcements one listing reads.
const MAX_LISTED: usize = 10_000;

/// Every live announcement (workers and relays), oldest first.
pub async fn list(bus: &Bus) -> Result<Vec<Announcement>, BusError> {
    // Delete and purge markers (a withdrawal, an expiry) have no body: left out.
    direct::bucket_values(&bus.client, subjects::WORKER_BUCKET, MAX_LISTED).await
}
