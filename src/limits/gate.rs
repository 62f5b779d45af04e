//! The gate a worker passes before it claims a task that names a key: take a place of each key
//! (the cap, the lane, the concurrency key, then a start of the rate), or learn what the task
//! waits for and when to look again. Places taken are given back if a later one is refused.

use super::entry::{Hold, Holders, RateState, Refusal};
use super::{now_ms, store, Limits, LimitsError};
use crate::domain::FlowKeys;
use std::time::Duration;

/// The places one running task holds; renew them while it runs, release them when it ends.
#[derive(Debug, Clone, Default)]
pub struct Permit {
    task: String,
    worker: String,
    token: String,
    /// Entry keys held, with whether each is a lane.
    held: Vec<(String, bool)>,
}

impl Permit {
    /// True when the task holds nothing (it named no limited key): nothing to renew or release.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// What a task that may not start yet waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    /// What it waits for: `concurrency`, `lane`, `rate` or `max_running`.
    pub kind: &'static str,
    /// The key (or lane) it waits for (empty for `max_running`).
    pub key: String,
    /// For people: `rate channel:tg-123, next slot in 2.1 s`.
    pub reason: String,
    /// When to look again.
    pub retry_in: Duration,
    /// A lane whose turn belongs to a task nobody runs: `(lane, that task)`. The caller checks
    /// that task and, when it has finished or is gone, takes it out of the lane.
    pub idle_head: Option<(String, String)>,
}

/// The gate's answer.
#[derive(Debug)]
pub enum Gate {
    /// Claim and run the task; it holds these places.
    Go(Permit),
    /// Not now.
    Wait(Wait),
}

impl Limits {
    /// Takes the places `task` needs to start (nothing, at no cost, when it names no key and
    /// the assignee has no cap). Holds lapse `lease` from now unless renewed.
    pub async fn acquire(
        &self,
        assignee: &str,
        task: &str,
        flow: &FlowKeys,
        worker: &str,
        lease: Duration,
    ) -> Result<Gate, LimitsError> {
        let mut permit = Permit {
            task: task.to_string(),
            worker: worker.to_string(),
            token: ulid::Ulid::new().to_string(),
            held: Vec::new(),
        };
        let cap = self.declared(assignee).await?.max_running;
        if flow.is_empty() && cap.is_none() {
            return Ok(Gate::Go(permit));
        }
        let refused = self.take_all(assignee, flow, cap, &mut permit, lease).await;
        match refused {
            Ok(None) => Ok(Gate::Go(permit)),
            Ok(Some(wait)) => {
                self.release(&permit, false).await?;
                Ok(Gate::Wait(wait))
            }
            Err(e) => {
                let _ = self.release(&permit, false).await;
                Err(e)
            }
        }
    }

    /// Takes each place in turn; the first refusal ends it.
    async fn take_all(
        &self,
        assignee: &str,
        flow: &FlowKeys,
        cap: Option<u32>,
        permit: &mut Permit,
        lease: Duration,
    ) -> Result<Option<Wait>, LimitsError> {
        if let Some(limit) = cap {
            let entry = store::cap_key(assignee);
            let taking = Taking::Places(limit, None);
            if let Err(r) = self.take(&entry, "", permit, lease, taking).await? {
                let what = format!("max_running of {assignee}");
                return Ok(Some(refused(("max_running", ""), &what, r, None)));
            }
        }
        if let Some(lane) = &flow.lane {
            let entry = store::entry_key(assignee, "l", lane);
            if let Err(r) = self.take(&entry, lane, permit, lease, Taking::Turn).await? {
                let what = format!("lane {lane}");
                return Ok(Some(refused(("lane", lane), &what, r, Some(lane))));
            }
        }
        if let Some(key) = &flow.concurrency_key {
            // The limit and the entry are read at once: one round trip.
            let entry = store::entry_key(assignee, "c", key);
            let kv = self.kv().await?;
            let (limits, read) = tokio::join!(
                self.effective(assignee, key),
                store::read::<Holders>(kv, &entry)
            );
            if let Some(limit) = limits?.concurrency {
                let taking = Taking::Places(limit, Some(read?));
                if let Err(r) = self.take(&entry, key, permit, lease, taking).await? {
                    let what = format!("concurrency {key}");
                    return Ok(Some(refused(("concurrency", key), &what, r, None)));
                }
            }
        }
        match &flow.rate_key {
            Some(key) => self.take_rate(assignee, key).await,
            None => Ok(None),
        }
    }

    /// Takes a place of a key or its lane's turn.
    async fn take(
        &self,
        entry: &str,
        key: &str,
        permit: &mut Permit,
        lease: Duration,
        taking: Taking,
    ) -> Result<Result<(), Refusal>, LimitsError> {
        let (limit, first) = match taking {
            Taking::Places(limit, first) => (Some(limit), first),
            Taking::Turn => (None, None),
        };
        let now = now_ms();
        let hold = Hold {
            worker: permit.worker.clone(),
            token: permit.token.clone(),
            until_ms: now + lease.as_millis() as i64,
        };
        let task = permit.task.clone();
        let taken = store::change_from(
            self.kv().await?,
            entry,
            first,
            || Holders::new(key),
            |h| {
                let pruned = h.prune(now, limit.is_none());
                let before = h.clone();
                let taken = match limit {
                    Some(limit) => h.take(&task, hold.clone(), limit),
                    None => h.take_turn(&task, hold.clone(), now),
                };
                (pruned || *h != before, taken)
            },
        )
        .await?;
        if taken.is_ok() {
            permit.held.push((entry.to_string(), limit.is_none()));
        }
        Ok(taken)
    }

    /// Takes one start of `key`'s rate, when it has one.
    async fn take_rate(&self, assignee: &str, key: &str) -> Result<Option<Wait>, LimitsError> {
        let entry = store::entry_key(assignee, "r", key);
        let kv = self.kv().await?;
        let (limits, read) = tokio::join!(
            self.effective(assignee, key),
            store::read::<RateState>(kv, &entry)
        );
        let limits = limits?;
        let Some(rate) = limits.rate else {
            return Ok(None);
        };
        let interval = rate.interval().as_millis().max(1) as i64;
        let burst = limits.burst.unwrap_or(1);
        let now = now_ms();
        let init = || RateState {
            key: key.to_string(),
            tat_ms: 0,
        };
        let taken = store::change_from(kv, &entry, Some(read?), init, |r| {
            let taken = r.take(now, interval, burst);
            (taken.is_ok(), taken)
        })
        .await?;
        Ok(taken.err().map(|wait_ms| {
            // Waiters come back spread over a few milliseconds: one takes the slot, the rest
            // learn the next one from the same entry.
            let jitter = rand::random::<u64>() % (interval as u64 / 20 + 5);
            Wait {
                kind: "rate",
                key: key.to_string(),
                reason: format!("rate {key}, next slot in {:.1} s", wait_ms as f64 / 1000.0),
                retry_in: Duration::from_millis(wait_ms as u64 + jitter),
                idle_head: None,
            }
        }))
    }

    /// Moves the holds of `permit` to `lease` from now.
    pub async fn renew(&self, permit: &Permit, lease: Duration) -> Result<(), LimitsError> {
        let until = now_ms() + lease.as_millis() as i64;
        for (entry, _) in &permit.held {
            let (task, token) = (&permit.task, &permit.token);
            store::change(self.kv().await?, entry, Holders::default, |h| {
                (h.renew(task, token, until), ())
            })
            .await?;
        }
        Ok(())
    }

    /// Gives the places back. `finished`: the task will not run again, so it leaves its lane;
    /// otherwise (handed back, put back) it goes to the front of its lane's line.
    pub async fn release(&self, permit: &Permit, finished: bool) -> Result<(), LimitsError> {
        for (entry, lane) in &permit.held {
            let (task, token) = (&permit.task, &permit.token);
            store::change(self.kv().await?, entry, Holders::default, |h| {
                let released = h.release(task, token);
                if released && *lane && finished {
                    h.finish(task);
                } else if released && *lane {
                    h.queue.push_front(super::Waiter {
                        id: task.clone(),
                        since_ms: now_ms(),
                    });
                }
                (released, ())
            })
            .await?;
        }
        Ok(())
    }
}

impl Limits {
    /// Takes a finished (or cancelled) `task` out of every key it may hold or wait for,
    /// whoever holds it: the API calls this when a task ends through it (a bot's `complete`, a
    /// `cancel`), so the next task of its keys need not wait for the hold to lapse.
    pub async fn forget_task(&self, task: &crate::domain::Task) -> Result<(), LimitsError> {
        let (a, id) = (task.assigned_to.as_str(), task.id.as_str());
        let mut entries = vec![(store::cap_key(a), String::new())];
        if let Some(key) = &task.concurrency_key {
            entries.push((store::entry_key(a, "c", key), key.clone()));
        }
        for (entry, key) in entries {
            let kv = self.kv().await?;
            store::change(kv, &entry, || Holders::new(&key), |h| (h.forget(id), ())).await?;
        }
        match &task.lane {
            Some(lane) => self.leave_lane(a, lane, id).await,
            None => Ok(()),
        }
    }
}

/// What [`Limits::take`] takes: one of a key's places (with the entry if read already), or a
/// lane's turn.
enum Taking {
    Places(u32, Option<(Option<Holders>, u64)>),
    Turn,
}

/// The wait of a refusal by `what`.
fn refused(
    (kind, key): (&'static str, &str),
    what: &str,
    r: Refusal,
    lane: Option<&String>,
) -> Wait {
    let jitter = rand::random::<u64>() % 200;
    match r {
        Refusal::Full { running, limit } => Wait {
            kind,
            key: key.to_string(),
            reason: format!("{what}: {running} of {limit} running"),
            retry_in: Duration::from_millis(100 + jitter),
            idle_head: None,
        },
        Refusal::Behind {
            head,
            ahead,
            running,
        } => Wait {
            kind,
            key: key.to_string(),
            reason: format!("{what}: {ahead} ahead (task {head} first)"),
            // The next in line looks often, the rest less.
            retry_in: Duration::from_millis((100 * ahead as u64).min(3000) + jitter),
            // A head nobody runs may have finished without leaving (a lost release).
            idle_head: lane.filter(|_| !running).map(|l| (l.clone(), head)),
        },
    }
}
