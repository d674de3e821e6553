//! A bounded table of per-sender state.
//!
//! Invariant: it never holds more than its capacity. A spoofed-source flood fills it
//! with senders that are never seen again; when full, a new sender takes the place of
//! the least worth keeping of a few entries sampled at random (least [`Worth`], then
//! least recently seen: O(1), and a flood cannot steer which entries are sampled), and
//! every eviction is counted.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Instant;

use super::random::Xorshift;

/// Entries compared to choose one to evict.
const EVICTION_SAMPLE: usize = 8;

/// How much an entry is worth keeping when the table is full (0: nothing but its age).
pub trait Worth {
    fn worth(&self) -> u64 {
        0
    }
}

struct Entry<K, V> {
    sender: K,
    last_seen: Instant,
    value: V,
}

/// Per-sender values, at most `capacity` of them, keyed by the sender's address (or by
/// anything else that names a sender, such as a (client, server) pair).
pub struct SenderTable<V, K = IpAddr> {
    entries: Vec<Entry<K, V>>,
    index: HashMap<K, usize>,
    capacity: usize,
    evictions: u64,
    rng: Xorshift,
}

impl<V: Worth, K: Copy + Eq + Hash> SenderTable<V, K> {
    /// Make an empty table holding at most `capacity` senders (at least one).
    pub fn new(capacity: usize) -> Self {
        SenderTable {
            entries: Vec::new(),
            index: HashMap::new(),
            capacity: capacity.max(1),
            evictions: 0,
            // Nobody can predict which entries a flood will sample.
            rng: Xorshift::from_os(),
        }
    }

    /// Return the sender's value, if it is known, and mark it seen at `now`.
    pub fn get_mut(&mut self, sender: K, now: Instant) -> Option<&mut V> {
        let i = *self.index.get(&sender)?;
        let e = &mut self.entries[i];
        e.last_seen = now;
        Some(&mut e.value)
    }

    /// Return the sender's value, creating it with `make` (evicting if full).
    pub fn get_or_insert_with(
        &mut self,
        sender: K,
        now: Instant,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        self.insert_evicting(sender, now, make).0
    }

    /// Like [`Self::get_or_insert_with`], and hand back the sender evicted to make room.
    pub fn insert_evicting(
        &mut self,
        sender: K,
        now: Instant,
        make: impl FnOnce() -> V,
    ) -> (&mut V, Option<(K, V)>) {
        let mut evicted = None;
        let i = match self.index.get(&sender) {
            Some(&i) => i,
            None => {
                if self.entries.len() >= self.capacity {
                    evicted = self.evict_one();
                }
                self.entries.push(Entry {
                    sender,
                    last_seen: now,
                    value: make(),
                });
                let i = self.entries.len() - 1;
                self.index.insert(sender, i);
                i
            }
        };
        let e = &mut self.entries[i];
        e.last_seen = now;
        (&mut e.value, evicted)
    }

    /// Return the sender's value without marking it seen.
    pub fn peek_mut(&mut self, sender: K) -> Option<&mut V> {
        let i = *self.index.get(&sender)?;
        Some(&mut self.entries[i].value)
    }

    /// Forget a sender; its value if it was held.
    pub fn remove(&mut self, sender: K) -> Option<V> {
        let i = *self.index.get(&sender)?;
        Some(self.remove_at(i))
    }

    /// Every sender held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &V)> {
        self.entries.iter().map(|e| (e.sender, &e.value))
    }

    /// Senders held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no sender is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Senders evicted to make room since the table was made.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn evict_one(&mut self) -> Option<(K, V)> {
        let n = self.entries.len();
        let mut victim: Option<usize> = None;
        for _ in 0..EVICTION_SAMPLE.min(n) {
            let i = self.rng.next_u64() as usize % n;
            let key = |e: &Entry<K, V>| (e.value.worth(), e.last_seen);
            if victim.is_none_or(|v| key(&self.entries[i]) < key(&self.entries[v])) {
                victim = Some(i);
            }
        }
        let i = victim?;
        let sender = self.entries[i].sender;
        self.evictions += 1;
        Some((sender, self.remove_at(i)))
    }

    fn remove_at(&mut self, i: usize) -> V {
        let gone = self.entries.swap_remove(i);
        self.index.remove(&gone.sender);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.sender, i);
        }
        gone.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    impl Worth for u32 {}
    impl Worth for () {}

    /// A value worth its number.
    struct Valued(u64);
    impl Worth for Valued {
        fn worth(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn a_sender_worth_keeping_outlives_a_flood_of_fresher_ones() {
        // By default an entry is worth nothing but its age.
        assert_eq!(().worth(), 0);
        let t0 = Instant::now();
        let mut t = SenderTable::new(64);
        assert!(t.is_empty());
        let proven = addr(999_999);
        t.get_or_insert_with(proven, t0, || Valued(10));
        // Never seen again, yet never chosen while worthless senders are sampled beside it.
        for i in 0..100_000u32 {
            t.get_or_insert_with(
                addr(i),
                t0 + Duration::from_micros(u64::from(i) + 1),
                || Valued(0),
            );
        }
        assert!(t.peek_mut(proven).is_some());
        assert!(!t.is_empty());
        assert_eq!(t.evictions(), 100_000 - 63);
    }

    fn addr(i: u32) -> IpAddr {
        IpAddr::from((0xc612_0000u32 | i).to_be_bytes())
    }

    #[test]
    fn a_flood_of_new_senders_never_grows_it_past_capacity() {
        let t0 = Instant::now();
        let mut t = SenderTable::new(100);
        for i in 0..10_000 {
            *t.get_or_insert_with(addr(i), t0 + Duration::from_micros(u64::from(i)), || 0u32) += 1;
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.evictions(), 9_900);
        // Every index entry points at the entry of its sender.
        for (s, &i) in &t.index {
            assert_eq!(t.entries[i].sender, *s);
        }
    }

    #[test]
    fn a_busy_sender_survives_a_flood() {
        let t0 = Instant::now();
        let mut t = SenderTable::new(64);
        let busy = addr(999_999);
        for i in 0..5_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 2);
            *t.get_or_insert_with(busy, now, || 0u32) += 1;
            t.get_or_insert_with(addr(i), now + Duration::from_micros(1), || 0);
        }
        assert_eq!(t.get_mut(busy, t0).copied(), Some(5_000), "kept all along");
    }
}
