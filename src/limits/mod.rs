//! Flow control across the fleet (issue 13): concurrency keys, rate keys, lanes and an
//! assignee-wide cap, held by every replica of an assignee alike.
//!
//! State lives in the KV bucket `taskfleet_limits`, one entry per key, changed only by
//! compare-and-set on the entry's revision:
//! - `<a>.c.<key>` (concurrency key), `<a>.l.<lane>` (lane, with its waiting line), `<a>.all`
//!   (the `max_running` cap): the running tasks' holds, each a lease that lapses `ack_wait`
//!   after its worker last renewed it, so a worker killed with `kill -9` frees its places
//!   within `ack_wait` (nothing counts up that could leak);
//! - `<a>.r.<key>`: a rate's schedule (GCRA);
//! - `<a>.o.<key>`: an override set through the API; `<a>.declared`: `[worker.limits]` as the
//!   assignee's workers declared it.
//!
//! A worker asks [`Limits::acquire`] before it claims a task that names a key; a refusal says
//! what the task waits for and when to look again, and the worker puts the message back for
//! that long (other keys' tasks keep flowing). Keys are encoded in entry keys, so any text
//! is a key.

mod entry;
mod gate;
mod overview;
mod store;
mod turns;

pub use entry::{Hold, Holders, RateState, Refusal, Waiter};
pub use gate::{Gate, Permit, Wait};
pub use overview::{KeyUsage, Overview};

use crate::bus::{subjects, Bus, BusError, NatsResultExt};
use crate::domain::{DeclaredLimits, KeyLimits, Share};
use crate::memory::Memory;
use async_nats::jetstream::kv;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What can go wrong with flow control.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// NATS refused or did not answer.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Too many concurrent writers on one entry; the caller tries again later.
    #[error("the limits entry {0} kept changing under concurrent writers")]
    Contended(String),
    /// Input that breaks a rule (shown to the caller as a 422).
    #[error("{0}")]
    Invalid(String),
}

/// How long a tenant's turn is taken from the process cache before the entry is read again.
const TURN_CACHED: Duration = Duration::from_secs(300);

/// Most tenants' turns one process keeps cached.
const TURNS_CACHED_MAX: usize = 10_000;

/// How long what the workers declared is trusted before it is read again.
const DECLARED_FRESH: Duration = Duration::from_secs(2);

/// Assignees whose declared limits are remembered before that memory starts over.
const DECLARED_CACHED_MAX: usize = 1_024;

/// Flow control over the `taskfleet_limits` bucket; cheap to clone.
#[derive(Clone)]
pub struct Limits {
    /// The bucket, opened on first use.
    bucket: Arc<tokio::sync::OnceCell<kv::Store>>,
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    /// What each assignee's workers declared, and when it was read.
    declared: Memory<String, (Instant, DeclaredLimits)>,
    /// Tenants' fair-share turns seated lately: (assignee, tenant) → when its turn was read,
    /// and the turn.
    turns: Memory<(String, String), (Instant, Share)>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Limits {
    /// Flow control over the fleet's bucket (created with the rest of the topology; opened on
    /// first use).
    pub fn new(bus: &Bus) -> Self {
        Self {
            bucket: Arc::default(),
            js: bus.js.clone(),
            client: bus.client.clone(),
            declared: Memory::new(DECLARED_CACHED_MAX),
            turns: Memory::new(TURNS_CACHED_MAX),
        }
    }

    /// The fair-share turn of `tenant`'s tasks for `assignee` (see `turns.rs`): seated on first
    /// sight, then read from a process cache for [`TURN_CACHED`].
    pub async fn turn_of(&self, assignee: &str, tenant: &str) -> Result<Share, LimitsError> {
        let key = (assignee.to_string(), tenant.to_string());
        if let Some((at, turn)) = self.turns.get(&key) {
            if at.elapsed() < TURN_CACHED {
                return Ok(turn);
            }
        }
        let now = now_ms();
        let entry = format!("{assignee}.turns");
        let turn = store::change(self.kv().await?, &entry, turns::Seating::default, |s| {
            s.seat(tenant, now)
        })
        .await?;
        self.turns.insert(key, (Instant::now(), turn));
        Ok(turn)
    }

    /// The bucket.
    async fn kv(&self) -> Result<&kv::Store, LimitsError> {
        let open = || async {
            let kv = self.js.get_key_value(subjects::LIMITS_BUCKET).await;
            kv.op("open the limits bucket")
        };
        Ok(self.bucket.get_or_try_init(open).await?)
    }

    /// Records what `[worker.limits]` declares for `assignee` (a worker does this at start;
    /// the last worker started wins).
    pub async fn declare(
        &self,
        assignee: &str,
        declared: &DeclaredLimits,
    ) -> Result<(), LimitsError> {
        store::put(self.kv().await?, &store::declared_key(assignee), declared).await?;
        self.remember(assignee, declared.clone());
        Ok(())
    }

    /// What the assignee's workers declared, read at most every 2 s.
    pub async fn declared(&self, assignee: &str) -> Result<DeclaredLimits, LimitsError> {
        if let Some((at, d)) = self.declared.get(assignee) {
            if at.elapsed() < DECLARED_FRESH {
                return Ok(d);
            }
        }
        let (d, _) =
            store::read::<DeclaredLimits>(self.kv().await?, &store::declared_key(assignee)).await?;
        let d = d.unwrap_or_default();
        self.remember(assignee, d.clone());
        Ok(d)
    }

    fn remember(&self, assignee: &str, d: DeclaredLimits) {
        self.declared
            .insert(assignee.to_string(), (Instant::now(), d));
    }

    /// The override of `key`, if one was set.
    pub async fn override_of(
        &self,
        assignee: &str,
        key: &str,
    ) -> Result<Option<KeyLimits>, LimitsError> {
        let entry = store::entry_key(assignee, "o", key);
        Ok(store::read::<Stored<KeyLimits>>(self.kv().await?, &entry)
            .await?
            .0
            .map(|s| s.limits))
    }

    /// Sets (replaces) the override of `key`; the next claim of any replica uses it.
    pub async fn set_override(
        &self,
        assignee: &str,
        key: &str,
        limits: KeyLimits,
    ) -> Result<(), LimitsError> {
        crate::domain::flow::check_key("key", key).map_err(LimitsError::Invalid)?;
        limits.validate().map_err(LimitsError::Invalid)?;
        let entry = store::entry_key(assignee, "o", key);
        let stored = Stored {
            key: key.to_string(),
            limits,
        };
        store::put(self.kv().await?, &entry, &stored).await
    }

    /// Removes the override of `key` (its limit falls back to the config's patterns); false
    /// when there was none.
    pub async fn remove_override(&self, assignee: &str, key: &str) -> Result<bool, LimitsError> {
        if self.override_of(assignee, key).await?.is_none() {
            return Ok(false);
        }
        let entry = store::entry_key(assignee, "o", key);
        self.kv()
            .await?
            .delete(&entry)
            .await
            .op("remove an override")?;
        Ok(true)
    }

    /// `key`'s limits: the override's fields where set, the config's patterns for the rest.
    pub async fn effective(&self, assignee: &str, key: &str) -> Result<KeyLimits, LimitsError> {
        let declared = self.declared(assignee).await?;
        let over = self.override_of(assignee, key).await?;
        Ok(merged(&declared, over.as_ref(), key))
    }

    /// Puts `task` in `lane`'s line (the API does this right after a create, so tasks created
    /// one after another run in that order).
    pub async fn join_lane(
        &self,
        assignee: &str,
        lane: &str,
        task: &str,
    ) -> Result<(), LimitsError> {
        let now = now_ms();
        self.change_lane(assignee, lane, |h| h.join(task, now))
            .await
    }

    /// Takes `task` out of `lane` (it finished, or is gone): the next one's turn. A later
    /// [`join_lane`](Self::join_lane) of it does not put it back.
    pub async fn leave_lane(
        &self,
        assignee: &str,
        lane: &str,
        task: &str,
    ) -> Result<(), LimitsError> {
        self.change_lane(assignee, lane, |h| h.finish(task)).await
    }

    /// Applies `f` to `lane`'s entry (stored when `f` says it changed it).
    async fn change_lane(
        &self,
        assignee: &str,
        lane: &str,
        mut f: impl FnMut(&mut Holders) -> bool,
    ) -> Result<(), LimitsError> {
        let entry = store::entry_key(assignee, "l", lane);
        let kv = self.kv().await?;
        store::change(kv, &entry, || Holders::new(lane), |h| (f(h), ())).await
    }
}

/// An override as stored: the key in clear beside its limits.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stored<T> {
    /// The key as given.
    pub key: String,
    /// Its limits.
    pub limits: T,
}

/// `key`'s limits: `over`'s fields where set, `declared`'s patterns for the rest (a rate set by
/// the override brings its own burst).
pub(crate) fn merged(declared: &DeclaredLimits, over: Option<&KeyLimits>, key: &str) -> KeyLimits {
    let declared = declared.for_key(key);
    match over {
        Some(o) => KeyLimits {
            concurrency: o.concurrency.or(declared.concurrency),
            burst: o.rate.map_or(declared.burst, |_| o.burst),
            rate: o.rate.or(declared.rate),
        },
        None => declared,
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
