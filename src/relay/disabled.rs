//! Destinations the relay stopped delivering to: KV bucket `relay_destinations`, one entry per
//! queue key (`n_<name>`, `n_<name>_<session hash>`, `h_<hash>`, `push`). A 410 Gone disables a
//! destination (`deliver.rs` writes the entry); a replay of one of its deliveries or
//! `POST /api/destinations/{name}/enable` deletes it. An enabled destination has no entry.

use crate::bus::{direct, subjects, Bus, BusError, NatsResultExt};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most disabled destinations a listing reads.
pub const MAX_LISTED: usize = 1000;

/// The stored state of a disabled destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disabled {
    /// Always `true` in a stored entry (kept for readers of the bucket).
    #[serde(default)]
    pub disabled: bool,
    /// Why it was disabled (the 410 that did it).
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was disabled.
    #[serde(default)]
    pub time: Option<DateTime<Utc>>,
}

/// Why `key` is disabled, if it is (`None` when enabled, or when its entry cannot be read: a
/// destination is never held back on a read error).
pub async fn read(bus: &Bus, key: &str) -> Option<Disabled> {
    let v = bus.topology.destinations.get(key).await.ok()??;
    serde_json::from_slice::<Disabled>(&v)
        .ok()
        .filter(|d| d.disabled)
}

/// Disables `key` because of `reason`, noted at `time`.
pub async fn disable(
    bus: &Bus,
    key: &str,
    reason: &str,
    time: DateTime<Utc>,
) -> Result<(), BusError> {
    let state = Disabled {
        disabled: true,
        reason: Some(reason.to_string()),
        time: Some(time),
    };
    let body = serde_json::to_vec(&state).expect("a destination state serializes");
    bus.topology
        .destinations
        .put(key, body.into())
        .await
        .op("disable destination")?;
    Ok(())
}

/// Every disabled destination (at most [`MAX_LISTED`]), by queue key, read with direct gets
/// (no consumer: the API's NATS user may read the bucket, not follow it).
pub async fn list(bus: &Bus) -> Result<Vec<(String, Disabled)>, BusError> {
    let entries =
        direct::bucket_entries(&bus.client, subjects::DESTINATION_BUCKET, ">", MAX_LISTED).await?;
    let mut out: Vec<(String, Disabled)> = entries
        .into_iter()
        .filter_map(|(key, v)| Some((key, serde_json::from_slice::<Disabled>(&v).ok()?)))
        .filter(|(_, d)| d.disabled)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.truncate(MAX_LISTED);
    Ok(out)
}

/// Enables `key` again (deletes its entry); `true` when it was disabled.
pub async fn enable(bus: &Bus, key: &str) -> Result<bool, BusError> {
    if read(bus, key).await.is_none() {
        return Ok(false);
    }
    bus.topology
        .destinations
        .delete(key)
        .await
        .op("enable destination")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_written_before_this_module_still_reads() {
        let old = br#"{"disabled": true, "reason": "410", "time": "2026-01-02T03:04:05Z"}"#;
        let d: Disabled = serde_json::from_slice(old).unwrap();
        assert!(d.disabled);
        assert_eq!(d.reason.as_deref(), Some("410"));
        let bare: Disabled = serde_json::from_slice(b"{}").unwrap();
        assert!(!bare.disabled && bare.time.is_none());
    }
}
