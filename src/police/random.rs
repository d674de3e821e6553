//! A cheap random sequence for the police's sampling and eviction choices.
//!
//! Not cryptographic: what matters is that nobody outside can predict or steer it, so
//! every sequence starts from a seed the OS drew for this process.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// xorshift64.
#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A sequence from a seed the OS drew (std's hasher keys come from it).
    pub fn from_os() -> Self {
        Xorshift(RandomState::new().hash_one(0x006d_706f_6c69_6365_u64) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
