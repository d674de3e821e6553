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

#[cfg(test)]
mod tests {
    use super::Xorshift;

    /// Marsaglia's xorshift64 with shifts 13, 7, 17: the published sequence from seed 1.
    #[test]
    fn the_sequence_is_xorshift64() {
        let mut x = Xorshift(1);
        assert_eq!(
            [x.next_u64(), x.next_u64(), x.next_u64()],
            [
                1_082_269_761,
                1_152_992_998_833_853_505,
                11_177_516_664_432_764_457
            ]
        );
        let mut y = Xorshift(0x9E37_79B9_7F4A_7C15);
        assert_eq!(
            [y.next_u64(), y.next_u64()],
            [0xdc1b_77ae_0bf3_4dad, 0x64f0_eeb9_026e_6076]
        );
        let u = Xorshift(1).next_unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn a_seed_from_the_os_is_never_zero() {
        assert!((0..100).all(|_| Xorshift::from_os().0 & 1 == 1));
    }
}
