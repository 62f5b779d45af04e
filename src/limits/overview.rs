//! What `GET /api/limits` and `taskfleet limits` show: per assignee what the workers declared,
//! the overrides, and every key in use with its limit, its holders and its line.

use super::entry::{Holders, RateState};
use super::{now_ms, Limits, LimitsError, Stored};
use crate::bus::{direct, subjects};
use crate::domain::{DeclaredLimits, KeyLimits, Rate};
use serde::Serialize;
use std::collections::BTreeMap;

/// Most entries one overview reads.
const MAX_ENTRIES: usize = 10_000;

/// One key in use (or the assignee-wide cap) and how it stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyUsage {
    /// Whose tasks.
    pub assignee: String,
    /// `concurrency`, `lane`, `rate` or `max_running`.
    pub kind: &'static str,
    /// The key as tasks name it (empty for `max_running`).
    pub key: String,
    /// Its concurrency limit now (1 for a lane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Its rate now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Its burst now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Tasks holding it now.
    pub running: Vec<String>,
    /// Tasks waiting for it (a lane's line; for other keys, the pending tasks naming it).
    pub waiting: usize,
    /// A lane's waiting tasks, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub line: Vec<String>,
    /// A rate's wait before its next start, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_slot_in_s: Option<f64>,
}

/// An override as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Override {
    /// Whose tasks.
    pub assignee: String,
    /// The key.
    pub key: String,
    /// What it sets.
    #[serde(flatten)]
    pub limits: KeyLimits,
}

/// Everything flow control holds, for one assignee or all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    /// Assignee → what its workers declared (`[worker.limits]`).
    pub declared: BTreeMap<String, DeclaredLimits>,
    /// Overrides set through the API.
    pub overrides: Vec<Override>,
    /// Keys in use.
    pub keys: Vec<KeyUsage>,
}

impl Limits {
    /// The overview of `assignee` (`None`: every assignee).
    pub async fn overview(&self, assignee: Option<&str>) -> Result<Overview, LimitsError> {
        let keys = assignee.map_or(">".to_string(), |a| format!("{a}.>"));
        let entries =
            direct::bucket_entries(&self.client, subjects::LIMITS_BUCKET, &keys, MAX_ENTRIES)
                .await?;
        let mut out = Overview::default();
        let mut used = Vec::new();
        for (key, value) in entries {
            let mut parts = key.splitn(3, '.');
            let (Some(a), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match (kind, parts.next()) {
                ("declared", None) => {
                    if let Ok(d) = serde_json::from_slice(&value) {
                        out.declared.insert(a.to_string(), d);
                    }
                }
                ("o", Some(_)) => {
                    if let Ok(s) = serde_json::from_slice::<Stored<KeyLimits>>(&value) {
                        out.overrides.push(Override {
                            assignee: a.to_string(),
                            key: s.key,
                            limits: s.limits,
                        });
                    }
                }
                (kind, _) => used.push((a.to_string(), kind.to_string(), value)),
            }
        }
        for (a, kind, value) in used {
            if let Some(u) = usage(&out, &a, &kind, &value) {
                out.keys.push(u);
            }
        }
        Ok(out)
    }
}

/// `key`'s limits from what the overview read (its one scan holds the declared limits and the
/// overrides; no read per key).
fn limits_of(view: &Overview, assignee: &str, key: &str) -> KeyLimits {
    let declared = view.declared.get(assignee).cloned().unwrap_or_default();
    let over = view
        .overrides
        .iter()
        .find(|o| o.assignee == assignee && o.key == key);
    super::merged(&declared, over.map(|o| &o.limits), key)
}

/// How one key entry stands, with the limits in force for it.
fn usage(view: &Overview, assignee: &str, kind: &str, value: &[u8]) -> Option<KeyUsage> {
    let now = now_ms();
    let mut u = KeyUsage {
        assignee: assignee.to_string(),
        kind: "",
        key: String::new(),
        limit: None,
        rate: None,
        burst: None,
        running: Vec::new(),
        waiting: 0,
        line: Vec::new(),
        next_slot_in_s: None,
    };
    if kind == "r" {
        let r = serde_json::from_slice::<RateState>(value).ok()?;
        let limits = limits_of(view, assignee, &r.key);
        let rate = limits.rate?;
        let interval = rate.interval().as_millis().max(1) as i64;
        let wait = r.wait_ms(now, interval, limits.burst.unwrap_or(1));
        u.next_slot_in_s = Some(wait as f64 / 1000.0);
        (u.kind, u.key, u.rate, u.burst) = ("rate", r.key, Some(rate), limits.burst);
        return Some(u);
    }
    let mut h = serde_json::from_slice::<Holders>(value).ok()?;
    h.prune(now, kind == "l");
    u.running = h.holders.keys().cloned().collect();
    u.line = h.queue.iter().map(|w| w.id.clone()).collect();
    u.waiting = u.line.len();
    u.kind = match kind {
        "c" => "concurrency",
        "l" => "lane",
        _ => "max_running",
    };
    u.limit = match kind {
        "c" => limits_of(view, assignee, &h.key).concurrency,
        "l" => Some(1),
        _ => view.declared.get(assignee).and_then(|d| d.max_running),
    };
    u.key = h.key;
    Some(u)
}

impl Limits {
    /// Why pending `task` waits, if one of its keys (or the assignee's cap) holds it back now;
    /// read only, nothing is written.
    pub async fn waiting_for(
        &self,
        task: &crate::domain::Task,
    ) -> Result<Option<String>, LimitsError> {
        let a = task.assigned_to.as_str();
        let (now, id) = (now_ms(), task.id.as_str());
        if let Some(max) = self.declared(a).await?.max_running {
            let h = self.holders(&super::store::cap_key(a)).await?;
            if h.holders.len() >= max as usize {
                return Ok(Some(format!(
                    "max_running of {a}: {} of {max} running",
                    h.holders.len()
                )));
            }
        }
        if let Some(lane) = &task.lane {
            let mut h = self.holders(&super::store::entry_key(a, "l", lane)).await?;
            h.prune(now, true);
            let before = h
                .queue
                .iter()
                .position(|w| w.id == id)
                .unwrap_or(h.queue.len());
            let ahead = h.holders.len() + before;
            if ahead > 0 {
                return Ok(Some(format!("lane {lane}: {ahead} ahead")));
            }
        }
        if let Some(key) = &task.concurrency_key {
            if let Some(limit) = self.effective(a, key).await?.concurrency {
                let mut h = self.holders(&super::store::entry_key(a, "c", key)).await?;
                h.prune(now, false);
                if h.holders.len() >= limit as usize {
                    let n = h.holders.len();
                    return Ok(Some(format!("concurrency {key}: {n} of {limit} running")));
                }
            }
        }
        match &task.rate_key {
            Some(key) => self.rate_wait(a, key, now).await,
            None => Ok(None),
        }
    }

    /// The holders entry at `entry` (empty when absent).
    async fn holders(&self, entry: &str) -> Result<Holders, LimitsError> {
        let (h, _) = super::store::read::<Holders>(self.kv().await?, entry).await?;
        Ok(h.unwrap_or_default())
    }

    /// `rate <key>, next slot in 2.1 s` when `key`'s rate allows no start now.
    async fn rate_wait(&self, a: &str, key: &str, now: i64) -> Result<Option<String>, LimitsError> {
        let limits = self.effective(a, key).await?;
        let Some(rate) = limits.rate else {
            return Ok(None);
        };
        let entry = super::store::entry_key(a, "r", key);
        let (r, _) = super::store::read::<RateState>(self.kv().await?, &entry).await?;
        let interval = rate.interval().as_millis().max(1) as i64;
        let wait = r
            .unwrap_or_default()
            .wait_ms(now, interval, limits.burst.unwrap_or(1));
        Ok((wait > 0).then(|| format!("rate {key}, next slot in {:.1} s", wait as f64 / 1000.0)))
    }
}
