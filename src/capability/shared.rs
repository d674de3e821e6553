//! The mbox's keys, shared by every queue worker and swapped when the key file changes.
//!
//! Workers read their own cached `Arc<KeyRing>` per packet and look at one atomic
//! generation number to learn that a new ring was published; the lock is taken only
//! when that number moved, so the packet path never waits on it. A reader holds the
//! ring bound to the engine's run ([`RunId`]), derived once per published ring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{KeyRing, RunId};

/// The current key ring, replaceable while workers run.
pub struct SharedKeys {
    generation: AtomicU64,
    ring: Mutex<Arc<KeyRing>>,
}

impl SharedKeys {
    /// Share `ring`.
    pub fn new(ring: KeyRing) -> Arc<SharedKeys> {
        Arc::new(SharedKeys {
            generation: AtomicU64::new(0),
            ring: Mutex::new(Arc::new(ring)),
        })
    }

    /// Publish a new ring; workers pick it up at their next packet.
    pub fn replace(&self, ring: KeyRing) {
        let mut slot = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(ring);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A worker's view of the shared ring, its keys bound to `run`.
    pub fn reader(self: &Arc<Self>, run: RunId) -> KeyReader {
        let (generation, ring) = self.load(&run);
        KeyReader {
            shared: Arc::clone(self),
            run,
            generation,
            ring,
        }
    }

    fn load(&self, run: &RunId) -> (u64, KeyRing) {
        let slot = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock, so the number never runs ahead of the ring it names.
        (self.generation.load(Ordering::Acquire), slot.for_run(run))
    }
}

/// One worker's copy of the shared ring, bound to the engine's run.
pub struct KeyReader {
    shared: Arc<SharedKeys>,
    run: RunId,
    generation: u64,
    ring: KeyRing,
}

impl KeyReader {
    /// Return the newest ring (one atomic load unless it changed).
    pub fn ring(&mut self) -> &KeyRing {
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            (self.generation, self.ring) = self.shared.load(&self.run);
        }
        &self.ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Key;

    #[test]
    fn readers_see_a_replaced_ring() {
        let shared = SharedKeys::new(KeyRing::new(1, Key::from_bytes([1; 32])).unwrap());
        let run = RunId::from_bytes([0; 16]);
        let mut a = shared.reader(run);
        let mut b = shared.reader(run);
        assert_eq!(a.ring().current().0, 1);
        shared.replace(KeyRing::new(2, Key::from_bytes([2; 32])).unwrap());
        assert_eq!(a.ring().current().0, 2);
        assert_eq!(b.ring().current().0, 2);
    }
}
