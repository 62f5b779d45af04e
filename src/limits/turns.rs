//! Which fair-share turn each tenant of an assignee queues on (issue 13, fair shares). A tenant
//! seen for the first time takes the turn the fewest recently seen tenants hold, starting from
//! its hash's turn, so up to [`SHARES`] tenants active at once never share a turn (a hash alone
//! would put two tenants on one turn one time in 16). The seating is the entry `<a>.turns`,
//! changed by compare-and-set; a tenant unseen for a day gives its turn up. The API seats the
//! tenant of each create (cached in the process); a body published to NATS without a turn takes
//! its tenant's hash turn.

use crate::domain::{Share, SHARES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A tenant unseen for this long gives its turn up.
const FORGET_MS: i64 = 24 * 3600 * 1000;

/// How stale a tenant's last-seen time may get before a create records it again.
const SEEN_EVERY_MS: i64 = 3600 * 1000;

/// The entry `<a>.turns`: each tenant's turn and when it was last seen.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Seating {
    tenants: BTreeMap<String, Seat>,
}

/// One tenant's turn.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seat {
    turn: Share,
    seen_ms: i64,
}

impl Seating {
    /// The turn of `tenant` at `now_ms`, seating it if it has none; true when the entry changed
    /// (a new seat, a last-seen time refreshed, or tenants gone for a day dropped).
    pub(crate) fn seat(&mut self, tenant: &str, now_ms: i64) -> (bool, Share) {
        let before = self.tenants.len();
        self.tenants
            .retain(|name, s| name == tenant || now_ms - s.seen_ms < FORGET_MS);
        let dropped = self.tenants.len() != before;
        if let Some(seat) = self.tenants.get_mut(tenant) {
            let stale = now_ms - seat.seen_ms >= SEEN_EVERY_MS;
            if stale {
                seat.seen_ms = now_ms;
            }
            return (stale || dropped, seat.turn);
        }
        let mut load = [0usize; SHARES as usize];
        for seat in self.tenants.values() {
            load[seat.turn.index()] += 1;
        }
        let start = Share::of(tenant).index();
        let n = usize::from(SHARES);
        let least = (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&t| load[t])
            .and_then(Share::from_index)
            .expect("there is a turn");
        let seat = Seat {
            turn: least,
            seen_ms: now_ms,
        };
        self.tenants.insert(tenant.to_string(), seat);
        (true, least)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_tenants_take_sixteen_different_turns_and_the_seventeenth_shares_one() {
        let mut s = Seating::default();
        let mut turns: Vec<Share> = (0..16).map(|i| s.seat(&format!("t{i}"), 0).1).collect();
        turns.sort();
        turns.dedup();
        assert_eq!(turns.len(), 16);
        let (changed, _) = s.seat("t16", 0);
        assert!(changed);
    }

    #[test]
    fn a_seated_tenant_keeps_its_turn_and_writes_only_when_its_last_seen_is_an_hour_old() {
        let mut s = Seating::default();
        let (_, turn) = s.seat("a", 0);
        assert_eq!(s.seat("a", 1_000), (false, turn));
        assert_eq!(s.seat("a", SEEN_EVERY_MS), (true, turn));
    }

    #[test]
    fn a_tenant_unseen_for_a_day_gives_its_turn_to_a_new_one() {
        let mut s = Seating::default();
        let (_, old) = s.seat("old", 0);
        let (changed, new) = s.seat("new", FORGET_MS + 1);
        assert!(changed);
        assert!(!s.tenants.contains_key("old"));
        // With every turn free again, the new tenant starts from its own hash's turn.
        assert_eq!(new, Share::of("new"));
        let _ = old;
    }
}
