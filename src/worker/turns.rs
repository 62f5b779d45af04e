//! The fair-share turns of one priority: the worker consumer of the tasks of no tenant and one
//! consumer per fair-share turn (see [`Share`]), opened when a task of that turn is first seen,
//! and which of them may have work. A pull takes the turns with work round robin, so a tenant
//! with thousands of tasks queued delays another tenant's task by at most one task per free
//! slot; with one tenant (or none) a pull is one request, as without turns.

use crate::domain::{Share, SHARES};

/// Where a turn sits: 0 for the tasks of no tenant, `1 + n` for share `n`.
pub(super) fn slot(share: Option<Share>) -> usize {
    share.map_or(0, |s| 1 + s.index())
}

/// The consumers of one priority and the round-robin state over them.
pub(super) struct Turns {
    /// Consumer names by slot; `None`: not opened (no task of that turn seen yet).
    consumers: Vec<Option<String>>,
    /// Which opened consumers may have work.
    has: Vec<bool>,
    /// The slot the next round starts at.
    next: usize,
    /// The slot that last gave a task: the one an idle worker leaves a request waiting at.
    home: usize,
}

impl Turns {
    /// The turns of one priority, with only the consumer of the tasks of no tenant open.
    pub(super) fn new(untenanted: String) -> Self {
        let mut consumers = vec![None; 1 + usize::from(SHARES)];
        consumers[0] = Some(untenanted);
        let mut has = vec![false; consumers.len()];
        has[0] = true;
        Self {
            consumers,
            has,
            next: 0,
            home: 0,
        }
    }

    /// The consumer of `slot`, if it is open.
    pub(super) fn name(&self, slot: usize) -> Option<&str> {
        self.consumers.get(slot)?.as_deref()
    }

    /// Records the consumer opened for `slot`; it may have work.
    pub(super) fn open(&mut self, slot: usize, name: String) {
        self.consumers[slot] = Some(name);
        self.has[slot] = true;
    }

    /// `slot` may have work (when it is open).
    pub(super) fn mark(&mut self, slot: usize) {
        self.has[slot] = self.consumers[slot].is_some();
    }

    /// Every open turn may have work.
    pub(super) fn mark_all(&mut self) {
        for slot in 0..self.consumers.len() {
            self.mark(slot);
        }
    }

    /// `slot` came back short: it has no work now.
    pub(super) fn clear(&mut self, slot: usize) {
        self.has[slot] = false;
    }

    /// `slot` gave tasks: the next round starts after it.
    pub(super) fn served(&mut self, slot: usize) {
        self.next = (slot + 1) % self.consumers.len();
        self.home = slot;
    }

    /// The consumer an idle worker leaves a request waiting at: the one that last gave a task.
    pub(super) fn home(&self) -> &str {
        self.name(self.home)
            .or(self.name(0))
            .expect("the consumer of no tenant is always open")
    }

    /// The open consumers, slot order.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.consumers.iter().flatten().map(String::as_str)
    }

    /// The open slots that may have work, round robin from where the last round stopped.
    pub(super) fn round(&self) -> Vec<usize> {
        let n = self.consumers.len();
        (0..n)
            .map(|k| (self.next + k) % n)
            .filter(|&slot| self.has[slot])
            .collect()
    }

    /// Whether any open slot may have work.
    pub(super) fn any(&self) -> bool {
        self.has.iter().any(|&h| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns_with(shares: &[&str]) -> Turns {
        let mut t = Turns::new("none".into());
        for s in shares {
            let share = Share::of(s);
            t.open(slot(Some(share)), format!("c_{s}"));
        }
        t
    }

    #[test]
    fn a_round_starts_after_the_turn_that_was_served_last() {
        let mut t = turns_with(&["tenant-a", "tenant-b"]);
        t.clear(0);
        let first = t.round();
        assert_eq!(first.len(), 2);
        t.served(first[0]);
        assert_eq!(t.round()[0], first[1], "the other tenant goes next");
        t.served(first[1]);
        assert_eq!(t.round()[0], first[0]);
    }

    #[test]
    fn turns_not_opened_or_cleared_are_left_out_of_a_round() {
        let mut t = turns_with(&["tenant-a"]);
        let a = slot(Some(Share::of("tenant-a")));
        assert_eq!(t.round(), vec![0, a]);
        t.clear(0);
        t.mark(slot(Some(Share::of("tenant-b"))));
        assert_eq!(t.round(), vec![a]);
        t.clear(a);
        assert!(!t.any());
        t.mark_all();
        assert_eq!(t.round(), vec![0, a]);
    }

    #[test]
    fn an_idle_worker_waits_at_the_turn_that_last_gave_a_task() {
        let mut t = turns_with(&["tenant-a"]);
        assert_eq!(t.home(), "none");
        t.served(slot(Some(Share::of("tenant-a"))));
        assert_eq!(t.home(), "c_tenant-a");
    }
}
