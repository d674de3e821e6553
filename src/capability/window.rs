//! Freshness, period and replay checks for returned capabilities (the paper's WV).
//!
//! Times are `u32` milliseconds of the mbox's clock and wrap; differences are
//! taken with `wrapping_sub` and read as signed, so every age compared here
//! must be below 2³¹ ms.
//!
//! Invariant: a [`ReturnWindow`] counts each id below its `th_cap` at most
//! once between resets, so `returned() <= th_cap()`.

use super::CapError;

/// The largest `Th_cap` a [`ReturnWindow`] holds.
pub const MAX_TH_CAP: u32 = 1024;

/// How far in the future an issue time may be and still count as fresh.
///
/// The mbox's own clock issued it, so only skew between worker threads'
/// readings of that clock is tolerated.
pub const FUTURE_TOLERANCE_MS: u32 = 50;

/// Half the clock's range: differences at or above it count as negative.
const HALF: u32 = 1 << 31;

/// Bits per bitmap word.
const WORD_BITS: u32 = u64::BITS;

/// Capability ids returned by one sender in one period, each counted once.
///
/// One bit per id below `th_cap`: the mbox holds one per sender, so it is sized to
/// `th_cap` (16 bytes for the default 128), not to the largest `th_cap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnWindow {
    bits: Box<[u64]>,
    th_cap: u16,
    returned: u16,
}

impl ReturnWindow {
    /// Return an empty window for ids `0..th_cap`, if `th_cap` is 1..=1024.
    pub fn new(th_cap: u32) -> Option<ReturnWindow> {
        if th_cap == 0 || th_cap > MAX_TH_CAP {
            return None;
        }
        Some(ReturnWindow {
            bits: vec![0; th_cap.div_ceil(WORD_BITS) as usize].into_boxed_slice(),
            th_cap: th_cap as u16,
            returned: 0,
        })
    }

    /// Count `id` as returned, unless it was counted before or is out of range.
    pub fn accept(&mut self, id: u32) -> Result<(), CapError> {
        if id >= self.th_cap() {
            return Err(CapError::IdOutOfRange);
        }
        let bit = 1u64 << (id % WORD_BITS);
        let word = self
            .bits
            .get_mut((id / WORD_BITS) as usize)
            .ok_or(CapError::IdOutOfRange)?;
        if *word & bit != 0 {
            return Err(CapError::Replayed);
        }
        *word |= bit;
        self.returned += 1;
        Ok(())
    }

    /// Return whether `id` was counted since the last reset.
    pub fn contains(&self, id: u32) -> bool {
        id < self.th_cap()
            && self
                .bits
                .get((id / WORD_BITS) as usize)
                .is_some_and(|w| w & (1u64 << (id % WORD_BITS)) != 0)
    }

    /// Return how many distinct ids were counted since the last reset.
    pub const fn returned(&self) -> u32 {
        self.returned as u32
    }

    /// Return the id bound this window was made for.
    pub const fn th_cap(&self) -> u32 {
        self.th_cap as u32
    }

    /// Forget every id (at period rollover).
    pub fn reset(&mut self) {
        self.bits.fill(0);
        self.returned = 0;
    }
}

/// Check that a capability issued at `issued_ms` is fresh at `now_ms`.
///
/// Fresh: at most `th_rtt_ms` old, or at most [`FUTURE_TOLERANCE_MS`] in
/// the future. Anything else is [`CapError::Stale`].
pub const fn check_fresh(issued_ms: u32, now_ms: u32, th_rtt_ms: u32) -> Result<(), CapError> {
    let age = now_ms.wrapping_sub(issued_ms);
    let max_age = if th_rtt_ms < HALF {
        th_rtt_ms
    } else {
        HALF - 1
    };
    if age <= max_age {
        return Ok(());
    }
    if issued_ms.wrapping_sub(now_ms) <= FUTURE_TOLERANCE_MS {
        return Ok(());
    }
    Err(CapError::Stale)
}

/// Check that `issued_ms` is not before the period that began at `period_start_ms`.
///
/// Use with [`check_fresh`], which bounds the other side.
pub const fn check_period(issued_ms: u32, period_start_ms: u32) -> Result<(), CapError> {
    if issued_ms.wrapping_sub(period_start_ms) < HALF {
        Ok(())
    } else {
        Err(CapError::WrongPeriod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn th_cap_bounds() {
        assert!(ReturnWindow::new(0).is_none());
        assert!(ReturnWindow::new(MAX_TH_CAP + 1).is_none());
        assert_eq!(ReturnWindow::new(1).map(|w| w.th_cap()), Some(1));
        assert_eq!(ReturnWindow::new(1024).map(|w| w.th_cap()), Some(1024));
    }

    #[test]
    fn second_accept_is_replayed() {
        let Some(mut w) = ReturnWindow::new(128) else {
            panic!("128 is a valid th_cap");
        };
        assert_eq!(w.accept(5), Ok(()));
        assert_eq!(w.accept(5), Err(CapError::Replayed));
        assert_eq!(w.returned(), 1);
        assert!(w.contains(5));
        assert!(!w.contains(6));
    }

    #[test]
    fn every_id_once_then_reset() {
        for th_cap in [1, 63, 64, 65, 128, 1000, 1024] {
            let Some(mut w) = ReturnWindow::new(th_cap) else {
                panic!("valid th_cap {th_cap}");
            };
            for id in 0..th_cap {
                assert_eq!(w.accept(id), Ok(()), "id {id} of {th_cap}");
            }
            assert_eq!(w.returned(), th_cap);
            for id in 0..th_cap {
                assert_eq!(w.accept(id), Err(CapError::Replayed));
            }
            assert_eq!(w.returned(), th_cap);
            for id in [th_cap, th_cap + 1, 1024, 4096, u32::MAX] {
                assert_eq!(w.accept(id), Err(CapError::IdOutOfRange));
                assert!(!w.contains(id));
            }
            w.reset();
            assert_eq!(w.returned(), 0);
            assert!(!w.contains(0));
            assert_eq!(w.accept(th_cap - 1), Ok(()));
        }
    }

    #[test]
    fn fresh_within_th_rtt() {
        assert_eq!(check_fresh(1000, 1000, 1000), Ok(()));
        assert_eq!(check_fresh(1000, 2000, 1000), Ok(()));
        assert_eq!(check_fresh(1000, 2001, 1000), Err(CapError::Stale));
        assert_eq!(check_fresh(0, 100_000, 1000), Err(CapError::Stale));
        assert_eq!(check_fresh(0, u32::MAX, 1000), Ok(()), "1 ms ahead");
    }

    #[test]
    fn fresh_across_the_wrap() {
        assert_eq!(check_fresh(u32::MAX - 100, 200, 1000), Ok(()));
        assert_eq!(
            check_fresh(u32::MAX - 1000, 200, 1000),
            Err(CapError::Stale)
        );
    }

    #[test]
    fn future_beyond_tolerance_is_stale() {
        let t = FUTURE_TOLERANCE_MS;
        assert_eq!(check_fresh(1000 + t, 1000, 1000), Ok(()));
        assert_eq!(check_fresh(1001 + t, 1000, 1000), Err(CapError::Stale));
        assert_eq!(check_fresh(t - 1, u32::MAX, 1000), Ok(()));
        assert_eq!(check_fresh(5000, 1000, 1000), Err(CapError::Stale));
    }

    #[test]
    fn huge_th_rtt_does_not_accept_the_future() {
        assert_eq!(check_fresh(5000, 1000, u32::MAX), Err(CapError::Stale));
        assert_eq!(check_fresh(1000, 5000, u32::MAX), Ok(()));
    }

    #[test]
    fn an_age_of_half_the_clock_is_never_fresh() {
        // Ages read as signed: 2^31 ms or more is the future, whatever Th_rtt allows.
        for th_rtt in [HALF - 1, HALF, u32::MAX] {
            assert_eq!(check_fresh(0, HALF - 1, th_rtt), Ok(()), "{th_rtt}");
            assert_eq!(
                check_fresh(0, HALF, th_rtt),
                Err(CapError::Stale),
                "{th_rtt}"
            );
        }
    }

    #[test]
    fn period_start_bounds_issue_time() {
        assert_eq!(check_period(4000, 4000), Ok(()));
        assert_eq!(check_period(4001, 4000), Ok(()));
        assert_eq!(check_period(3999, 4000), Err(CapError::WrongPeriod));
        assert_eq!(check_period(HALF - 1, 0), Ok(()));
        assert_eq!(check_period(HALF, 0), Err(CapError::WrongPeriod));
        assert_eq!(check_period(10, u32::MAX - 10), Ok(()));
        assert_eq!(check_period(u32::MAX - 10, 10), Err(CapError::WrongPeriod));
    }
}
