//! A bounded memory shared by the clones of its owner: what a process learned (a task's
//! assignee, a published task known to be recorded, a source's reach, a warning given, a
//! tenant's turn, an assignee's declared limits, a URL that passed the SSRF check), kept until
//! it holds its cap and then started over, so a process's memory never grows with the tasks
//! stored or the inputs met.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Up to `cap` entries; inserting into a full memory forgets everything first.
#[derive(Debug)]
pub(crate) struct Memory<K, V = ()> {
    entries: Arc<Mutex<HashMap<K, V>>>,
    cap: usize,
}

impl<K, V> Clone for Memory<K, V> {
    fn clone(&self) -> Self {
        Self {
            entries: Arc::clone(&self.entries),
            cap: self.cap,
        }
    }
}

impl<K: Eq + Hash, V: Clone> Memory<K, V> {
    /// An empty memory of at most `cap` entries.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            entries: Arc::default(),
            cap,
        }
    }

    /// The value remembered for `key` (or a borrowed form of it: a `&str` for a `String`).
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().get(key).cloned()
    }

    /// Remembers `value` for `key`; whether `key` was new.
    pub(crate) fn insert(&self, key: K, value: V) -> bool {
        let mut entries = self.lock();
        if entries.len() >= self.cap {
            entries.clear();
        }
        entries.insert(key, value).is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().expect("memory lock")
    }
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn a_full_memory_starts_over_before_it_takes_one_more() {
        let m: Memory<u32, u32> = Memory::new(2);
        assert!(m.insert(1, 10));
        assert!(!m.insert(1, 11));
        assert!(m.insert(2, 20));
        assert!(m.insert(3, 30));
        assert_eq!((m.get(&1), m.get(&2), m.get(&3)), (None, None, Some(30)));
    }
}
