//! Which outbox event is attempted next: events of one key go one at a time, in the
//! order they were appended (an incident's open before its resolve); events of different
//! keys go side by side; a failed event waits for its retry time. No I/O: the webhook's
//! sender loop drives it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use super::record::StoredEvent;

/// An event waiting for delivery, with what its delivery is timed and counted by.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The event as the outbox keeps it.
    pub stored: StoredEvent,
    /// Attempts made so far in this process.
    pub attempts: u32,
    /// When the hook handed it over ([`crate::clock::now_us`]; 0: from an earlier run).
    pub handed_us: u64,
    /// When its frame was received (0: unknown).
    pub received_us: u64,
}

/// The events not yet delivered nor given up on.
#[derive(Default)]
pub struct Schedule {
    events: HashMap<u64, Pending>,
    /// Per key, its events oldest first; only the first of each may be attempted.
    keys: HashMap<String, VecDeque<u64>>,
    /// Heads of keys waiting for their time, earliest first.
    due: BTreeSet<(Instant, u64)>,
}

impl Schedule {
    /// Adds an event; attempted at once if its key has nothing older waiting.
    pub fn push(&mut self, p: Pending, now: Instant) {
        let id = p.stored.id;
        let queue = self.keys.entry(p.stored.event.key.clone()).or_default();
        queue.push_back(id);
        if queue.len() == 1 {
            self.due.insert((now, id));
        }
        self.events.insert(id, p);
    }

    /// The next event whose time has come, taken out of the waiting set (it is in
    /// flight until [`Schedule::retry_at`] or [`Schedule::finish`]).
    pub fn next_due(&mut self, now: Instant) -> Option<&mut Pending> {
        let &(at, id) = self.due.first()?;
        if at > now {
            return None;
        }
        self.due.pop_first();
        self.events.get_mut(&id)
    }

    /// When the earliest waiting event is due.
    pub fn next_wake(&self) -> Option<Instant> {
        self.due.first().map(|&(at, _)| at)
    }

    /// The event `id`, waiting or in flight.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.events.get_mut(&id)
    }

    /// Event `id` (in flight) is attempted again at `at`.
    pub fn retry_at(&mut self, id: u64, at: Instant) {
        if self.events.contains_key(&id) {
            self.due.insert((at, id));
        }
    }

    /// Event `id` is done (delivered or given up on); the next of its key is due at once.
    pub fn finish(&mut self, id: u64, now: Instant) -> Option<Pending> {
        let p = self.events.remove(&id)?;
        let key = &p.stored.event.key;
        if let Some(queue) = self.keys.get_mut(key) {
            queue.retain(|&i| i != id);
            match queue.front() {
                Some(&next) => {
                    self.due.insert((now, next));
                }
                None => {
                    self.keys.remove(key);
                }
            }
        }
        Some(p)
    }

    /// Events not done.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether every event is done.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Takes every event not done, oldest first.
    pub fn drain(&mut self) -> Vec<Pending> {
        self.keys.clear();
        self.due.clear();
        let mut all: Vec<Pending> = self.events.drain().map(|(_, p)| p).collect();
        all.sort_by_key(|p| p.stored.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::event::AlertEvent;
    use std::time::Duration;

    fn pending(id: u64, key: &str) -> Pending {
        Pending {
            stored: StoredEvent {
                id,
                idempotency_key: id.to_string(),
                at_ms: 0,
                event: AlertEvent {
                    key: key.into(),
                    body: bytes::Bytes::new(),
                    seq: None,
                    incident: None,
                },
            },
            attempts: 0,
            handed_us: 0,
            received_us: 0,
        }
    }

    /// One key's events go one at a time in order, even while the first is retried;
    /// another key's go meanwhile.
    #[test]
    fn one_key_in_order_other_keys_side_by_side() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.push(pending(1, "inc-a"), t0);
        s.push(pending(2, "inc-a"), t0);
        s.push(pending(3, "inc-b"), t0);
        assert_eq!(s.next_due(t0).unwrap().stored.id, 1);
        assert_eq!(s.next_due(t0).unwrap().stored.id, 3);
        assert!(s.next_due(t0).is_none(), "2 waits behind 1");
        let later = t0 + Duration::from_secs(1);
        s.retry_at(1, later);
        assert!(s.next_due(t0).is_none());
        assert_eq!(s.next_wake(), Some(later));
        assert_eq!(s.next_due(later).unwrap().stored.id, 1);
        s.finish(3, later);
        s.finish(1, later);
        assert_eq!(s.next_due(later).unwrap().stored.id, 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.drain().len(), 1);
        assert!(s.is_empty());
    }
}
