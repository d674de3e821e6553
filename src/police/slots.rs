//! Pairs of counts kept per time slot, for a bounded stretch of recent time.
//!
//! Invariant: a slot holds only counts of its own slot number; a count for a slot that
//! has left the ring (too old) or not yet entered it is ignored, never mixed into
//! another slot's.

/// Counts per slot of `slot_ms` milliseconds, for the last `len` slots.
#[derive(Debug, Clone)]
pub struct SlotRing {
    slot_ms: u64,
    /// (slot number, first count, second count); the slot number says whose counts.
    slots: Vec<(u64, u64, u64)>,
    /// The newest slot number seen.
    newest: u64,
}

impl SlotRing {
    /// A ring of `len` slots (at least 1) of `slot_ms` milliseconds (at least 1).
    pub fn new(slot_ms: u64, len: usize) -> Self {
        SlotRing {
            slot_ms: slot_ms.max(1),
            slots: vec![(u64::MAX, 0, 0); len.max(1)],
            newest: 0,
        }
    }

    /// The slot number of a time.
    pub fn slot_of(&self, ms: u64) -> u64 {
        ms / self.slot_ms
    }

    /// Add `(a, b)` to the slot of time `ms`, if that slot is still held.
    pub fn add(&mut self, ms: u64, a: u64, b: u64) {
        let n = self.slot_of(ms);
        let len = self.slots.len() as u64;
        if n + len <= self.newest {
            return; // older than the ring
        }
        self.newest = self.newest.max(n);
        let s = &mut self.slots[(n % len) as usize];
        if s.0 != n {
            *s = (n, 0, 0);
        }
        s.1 += a;
        s.2 += b;
    }

    /// Take `a` back from the first count of the slot of time `ms`, if still held.
    pub fn take_first(&mut self, ms: u64, a: u64) {
        let n = self.slot_of(ms);
        let len = self.slots.len() as u64;
        let s = &mut self.slots[(n % len) as usize];
        if s.0 == n {
            s.1 = s.1.saturating_sub(a);
        }
    }

    /// Sum the counts of the slots whose start lies in `from_ms..to_ms`.
    pub fn sum(&self, from_ms: u64, to_ms: u64) -> (u64, u64) {
        self.sum_slots(self.slot_of(from_ms), self.slot_of(to_ms))
    }

    /// Sum the counts of slots `lo..hi`.
    fn sum_slots(&self, lo: u64, hi: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| s.0 >= lo && s.0 < hi)
            .fold((0, 0), |(a, b), s| (a + s.1, b + s.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_slots_asked_for() {
        let mut r = SlotRing::new(100, 10);
        r.add(50, 1, 0);
        r.add(150, 2, 1);
        r.add(250, 4, 4);
        assert_eq!(r.sum(0, 300), (7, 5));
        assert_eq!(r.sum(100, 200), (2, 1));
        assert_eq!(r.sum(100, 300), (6, 5));
    }

    #[test]
    fn a_reused_slot_forgets_its_old_counts() {
        let mut r = SlotRing::new(100, 4);
        r.add(0, 5, 5);
        r.add(400, 1, 0); // same index, four slots later
        assert_eq!(r.sum(0, 100), (0, 0));
        assert_eq!(r.sum(400, 500), (1, 0));
        // A late count for the forgotten slot is ignored, not mixed into slot 4.
        r.add(10, 9, 9);
        assert_eq!(r.sum(0, 1000), (1, 0));
    }
}
