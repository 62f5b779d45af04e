//! The values kept per key in the `taskfleet_limits` bucket, and the pure rules that change them:
//! leases of a concurrency key (or a lane, or the assignee-wide cap) and a rate's schedule.
//! Every change is then written with a compare-and-set on the entry's revision (see `store.rs`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// One running task's hold on a key: a lease that lapses unless its worker renews it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The worker running the task.
    pub worker: String,
    /// Tells this hold from a later one of the same task (a takeover).
    pub token: String,
    /// Unix milliseconds after which the hold has lapsed.
    pub until_ms: i64,
}

/// A task of a lane that waits for its turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The task.
    pub id: String,
    /// Unix milliseconds when it joined the lane.
    pub since_ms: i64,
}

/// The holders of a concurrency key, of a lane (with its waiting line) or of the assignee-wide
/// cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    /// The key as the tasks name it (entry keys are encoded).
    pub key: String,
    /// Task id → its hold.
    #[serde(default)]
    pub holders: BTreeMap<String, Hold>,
    /// A lane's tasks that wait, in creation order (empty for other keys).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<Waiter>,
    /// A lane's tasks that finished last, oldest first (at most [`FINISHED_KEPT`]): the API puts
    /// a task in line just after creating it, and an idle worker may have run it by then, so
    /// [`join`](Self::join) passes these over instead of leaving them in line for good.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub finished: VecDeque<String>,
}

/// How many finished tasks a lane remembers (see [`Holders::finished`]). The API's join comes
/// milliseconds after its create, and a lane runs one task at a time.
const FINISHED_KEPT: usize = 8;

/// Why a task may not take a key now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key runs as many tasks as its limit allows.
    Full {
        /// Tasks holding the key.
        running: usize,
        /// The limit.
        limit: u32,
    },
    /// A lane's earlier task comes first.
    Behind {
        /// The task whose turn it is (running or next).
        head: String,
        /// How many tasks are ahead of this one (the running one included).
        ahead: usize,
        /// Whether the task whose turn it is runs now.
        running: bool,
    },
}

impl Holders {
    /// A new entry for `key`.
    pub fn new(key: &str) -> Self {
        Self {
            key: key.to_string(),
            ..Self::default()
        }
    }

    /// Drops lapsed holds. A lane's lapsed holder did not finish: it goes back to the front of
    /// the line, so a takeover keeps the lane's order. Returns whether anything changed.
    pub fn prune(&mut self, now_ms: i64, lane: bool) -> bool {
        let lapsed: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, h)| h.until_ms < now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed.iter().rev() {
            self.holders.remove(id);
            if lane && !self.queue.iter().any(|w| &w.id == id) {
                self.queue.push_front(Waiter {
                    id: id.clone(),
                    since_ms: now_ms,
                });
            }
        }
        !lapsed.is_empty()
    }

    /// Takes one of `limit` places for `id` (a task that holds one already renews it).
    pub fn take(&mut self, id: &str, hold: Hold, limit: u32) -> Result<(), Refusal> {
        if let Some(h) = self.holders.get_mut(id) {
            *h = hold;
            return Ok(());
        }
        if self.holders.len() >= limit as usize {
            return Err(Refusal::Full {
                running: self.holders.len(),
                limit,
            });
        }
        self.holders.insert(id.to_string(), hold);
        Ok(())
    }

    /// Puts `id` at the back of a lane's line unless it is in it, holds the lane already or
    /// finished lately. Returns whether it was added.
    pub fn join(&mut self, id: &str, now_ms: i64) -> bool {
        if self.holders.contains_key(id)
            || self.queue.iter().any(|w| w.id == id)
            || self.finished.iter().any(|f| f == id)
        {
            return false;
        }
        self.queue.push_back(Waiter {
            id: id.to_string(),
            since_ms: now_ms,
        });
        true
    }

    /// A lane's turn: `id` takes the lane when nobody holds it and `id` is first in line
    /// (joining the line first if it is not in it; a task that finished before runs again, a
    /// retry).
    pub fn take_turn(&mut self, id: &str, hold: Hold, now_ms: i64) -> Result<(), Refusal> {
        if let Some(h) = self.holders.get_mut(id) {
            *h = hold;
            return Ok(());
        }
        self.finished.retain(|f| f != id);
        self.join(id, now_ms);
        let position = self.queue.iter().position(|w| w.id == id).unwrap_or(0);
        if self.holders.is_empty() && position == 0 {
            self.queue.pop_front();
            self.holders.insert(id.to_string(), hold);
            return Ok(());
        }
        let (head, running) = match self.holders.keys().next() {
            Some(holder) => (holder.clone(), true),
            None => (self.queue[0].id.clone(), false),
        };
        Err(Refusal::Behind {
            head,
            ahead: self.holders.len() + position,
            running,
        })
    }

    /// Gives `id`'s place back if `token` is still its hold (a later hold of a takeover is
    /// left alone). Returns whether anything changed.
    pub fn release(&mut self, id: &str, token: &str) -> bool {
        match self.holders.get(id) {
            Some(h) if h.token == token => {
                self.holders.remove(id);
                true
            }
            _ => false,
        }
    }

    /// Takes `id` out of a lane entirely (its task finished or is gone).
    pub fn forget(&mut self, id: &str) -> bool {
        let before = self.queue.len() + self.holders.len();
        self.queue.retain(|w| w.id != id);
        self.holders.remove(id);
        before != self.queue.len() + self.holders.len()
    }

    /// Takes `id` out of a lane because its task finished: it leaves the line or its turn, and
    /// a late [`join`](Self::join) does not put it back. Returns whether anything changed.
    pub fn finish(&mut self, id: &str) -> bool {
        let left = self.forget(id);
        if self.finished.iter().any(|f| f == id) {
            return left;
        }
        self.finished.push_back(id.to_string());
        if self.finished.len() > FINISHED_KEPT {
            self.finished.pop_front();
        }
        true
    }

    /// Moves `id`'s hold to a later time (a renewal).
    pub fn renew(&mut self, id: &str, token: &str, until_ms: i64) -> bool {
        match self.holders.get_mut(id) {
            Some(h) if h.token == token => {
                h.until_ms = until_ms;
                true
            }
            _ => false,
        }
    }
}

/// A rate key's schedule (GCRA: the theoretical time of the next start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateState {
    /// The key as the tasks name it.
    pub key: String,
    /// Unix milliseconds of the next start if starts came exactly at the rate.
    #[serde(default)]
    pub tat_ms: i64,
}

/// How early a start may come: room for `burst` starts at once, plus a quarter interval. Waiters
/// are told to come back at the early edge, so one that arrives a little late (a redelivery, a
/// busy worker) still comes before its slot and keeps the schedule, instead of pushing every
/// later start back (which lost a tenth of the rate's capacity).
fn tolerance(interval_ms: i64, burst: u32) -> i64 {
    interval_ms * (i64::from(burst.max(1)) - 1) + interval_ms / 4
}

impl RateState {
    /// Takes one start at `now_ms` with `interval_ms` between starts and room for `burst`
    /// starts at once; `Err(wait_ms)` when the next start is allowed only that much later.
    pub fn take(&mut self, now_ms: i64, interval_ms: i64, burst: u32) -> Result<(), i64> {
        let allowed_at = self.tat_ms - tolerance(interval_ms, burst);
        if allowed_at > now_ms {
            return Err(allowed_at - now_ms);
        }
        // A start up to half an interval late keeps the schedule (a loaded machine answers
        // late); later than that (an idle key) it starts a new one from now.
        let late = now_ms - self.tat_ms;
        let base = if (0..=interval_ms / 2).contains(&late) {
            self.tat_ms
        } else {
            self.tat_ms.max(now_ms)
        };
        self.tat_ms = base + interval_ms;
        Ok(())
    }

    /// Milliseconds until the next start is allowed (0: now).
    pub fn wait_ms(&self, now_ms: i64, interval_ms: i64, burst: u32) -> i64 {
        (self.tat_ms - tolerance(interval_ms, burst) - now_ms).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(until_ms: i64) -> Hold {
        Hold {
            worker: "w".into(),
            token: format!("t{until_ms}"),
            until_ms,
        }
    }

    #[test]
    fn a_key_at_its_limit_refuses_until_a_holder_releases_or_lapses() {
        let mut h = Holders::new("repo:a");
        assert!(h.take("t1", hold(100), 1).is_ok());
        assert_eq!(
            h.take("t2", hold(100), 1),
            Err(Refusal::Full {
                running: 1,
                limit: 1
            })
        );
        assert!(!h.release("t1", "wrong token"));
        assert!(h.release("t1", "t100"));
        assert!(h.take("t2", hold(100), 1).is_ok());
        assert!(h.prune(101, false));
        assert!(h.take("t3", hold(200), 1).is_ok());
    }

    #[test]
    fn a_lane_runs_its_tasks_in_the_order_they_joined() {
        let mut lane = Holders::new("chat:1");
        for id in ["a", "b", "c"] {
            lane.join(id, 0);
        }
        assert!(matches!(
            lane.take_turn("b", hold(100), 1),
            Err(Refusal::Behind { ref head, ahead: 1, running: false }) if head == "a"
        ));
        assert!(lane.take_turn("a", hold(100), 1).is_ok());
        assert!(matches!(
            lane.take_turn("c", hold(100), 1),
            Err(Refusal::Behind { ref head, ahead: 2, running: true }) if head == "a"
        ));
        assert!(lane.release("a", "t100"));
        assert!(lane.take_turn("b", hold(100), 1).is_ok());
    }

    #[test]
    fn a_task_that_finished_before_it_was_put_in_line_is_not_put_back() {
        let mut lane = Holders::new("chat:1");
        assert!(lane.take_turn("a", hold(100), 1).is_ok());
        assert!(lane.release("a", "t100"));
        assert!(lane.finish("a"));
        assert!(!lane.join("a", 2), "the API's late join of a finished task");
        lane.join("b", 3);
        assert!(lane.take_turn("b", hold(100), 4).is_ok());
    }

    #[test]
    fn a_finished_lane_task_that_is_retried_takes_its_turn_after_the_tasks_before_it() {
        let mut lane = Holders::new("chat:1");
        assert!(lane.finish("a"));
        lane.join("b", 1);
        assert!(matches!(
            lane.take_turn("a", hold(100), 2),
            Err(Refusal::Behind { ref head, ahead: 1, running: false }) if head == "b"
        ));
        assert!(lane.take_turn("b", hold(100), 3).is_ok());
        assert!(lane.release("b", "t100"));
        assert!(lane.take_turn("a", hold(100), 4).is_ok());
    }

    #[test]
    fn a_lane_remembers_only_its_last_finished_tasks() {
        let mut lane = Holders::new("chat:1");
        for i in 0..=FINISHED_KEPT {
            lane.finish(&format!("t{i}"));
        }
        assert_eq!(lane.finished.len(), FINISHED_KEPT);
        assert!(lane.join("t0", 1), "the oldest is forgotten");
        assert!(!lane.join(&format!("t{FINISHED_KEPT}"), 1));
    }

    #[test]
    fn a_lapsed_lane_holder_goes_back_to_the_front_of_the_line() {
        let mut lane = Holders::new("chat:1");
        lane.join("a", 0);
        lane.join("b", 0);
        assert!(lane.take_turn("a", hold(100), 1).is_ok());
        assert!(lane.prune(101, true));
        assert!(lane.take_turn("b", hold(300), 101).is_err());
        assert!(lane.take_turn("a", hold(300), 101).is_ok());
    }

    #[test]
    fn a_rate_spreads_starts_evenly_after_its_burst() {
        let mut r = RateState::default();
        assert!(r.take(1_000, 100, 2).is_ok());
        assert!(r.take(1_000, 100, 2).is_ok());
        assert_eq!(r.take(1_000, 100, 2), Err(75));
        assert!(r.take(1_080, 100, 2).is_ok());
        assert_eq!(r.take(1_150, 100, 2), Err(25));
        assert_eq!(r.wait_ms(1_150, 100, 2), 25);
        // A waiter told to come back at 75 ms that arrives 20 ms late still keeps the
        // schedule: the next start is due at 200 ms, not 100 ms after its arrival.
        let mut late = RateState::default();
        assert!(late.take(0, 100, 1).is_ok());
        assert_eq!(late.take(0, 100, 1), Err(75));
        assert!(late.take(95, 100, 1).is_ok());
        assert_eq!(late.take(95, 100, 1), Err(80));
        // One 30 ms past its slot (due at 200) keeps it too: the next is due at 300.
        assert!(late.take(230, 100, 1).is_ok());
        assert_eq!(late.take(230, 100, 1), Err(45));
        // After a quiet spell the schedule starts again from now.
        assert!(late.take(10_000, 100, 1).is_ok());
        assert_eq!(late.take(10_000, 100, 1), Err(75));
    }
}
