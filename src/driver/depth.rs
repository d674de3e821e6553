//! The queue's depth, bounded by the delay it adds.
//!
//! A fixed packet limit is the wrong bound: 262,144 packets are over a second of backlog
//! for a worker answering 230,000 a second, and many seconds for one slowed by a flood;
//! a packet that waited seconds reaches the victim with stale capabilities behind a
//! sender that already gave up on it. So each worker measures how many packets it answers
//! per second of work (its service rate, not the arrival rate: time blocked waiting for
//! packets is not work) and keeps the kernel's limit at the service rate times
//! `max_delay`, never under `FLOOR` packets nor over `max_len`. Beyond it the kernel drops
//! (or, with `fail_open`, accepts) and counts the packet (`k.qdrop`); a queued packet
//! waits about `max_delay` at most, or `FLOOR` packets' worth for a worker slower than
//! `FLOOR / max_delay` (81,920 packets a second at the defaults).

use std::time::Duration;

/// How long the worker measures between two estimates.
pub const ESTIMATE_EVERY: Duration = Duration::from_millis(200);
/// The service rate assumed before the first estimate (packets per second): about what
/// one worker answers on this class of machine with capabilities on, so a flood that
/// starts with the engine finds a limit of the right order, not the configured maximum.
const INITIAL_RATE: f64 = 100_000.0;
/// Fewest packets the kernel may hold: the full windows of two TCP flows at Linux's
/// default largest receive buffer (6 MiB, about 4,300 segments each) always fit, also
/// when a contended worker measures itself slow.
pub const FLOOR: u32 = 8192;
/// Least work in a window for its rate to count: a nearly idle worker's few packets
/// say little about its capacity.
const MIN_BUSY: Duration = Duration::from_millis(5);
/// A new limit is sent to the kernel only when it differs from the one there by more
/// than this fraction of it, so the limit does not chatter with measurement noise.
const HYSTERESIS: f64 = 0.125;

/// One worker's bound on its queue's depth, and its measured service rate.
#[derive(Debug, Clone)]
pub struct DepthBound {
    /// None: the limit stays at the ceiling, and only the rate is measured.
    max_delay: Option<Duration>,
    /// The configured `max_len`: the limit never exceeds it.
    ceiling: u32,
    /// The limit the kernel has now.
    limit: u32,
    /// Smoothed packets answered per second of work (assumed until `measured`).
    rate: f64,
    measured: bool,
    /// Packets answered and time spent working since the last estimate.
    packets: u64,
    busy: Duration,
}

impl DepthBound {
    /// Bound a queue whose configured limit is `ceiling` to `max_delay` of backlog (or
    /// keep it at `ceiling` with None).
    pub fn new(max_delay: Option<Duration>, ceiling: u32) -> DepthBound {
        let mut d = DepthBound {
            max_delay,
            ceiling,
            limit: ceiling,
            rate: INITIAL_RATE,
            measured: false,
            packets: 0,
            busy: Duration::ZERO,
        };
        d.limit = d.target();
        d
    }

    /// The limit to open the queue with.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The smoothed service rate, packets per second of work (0 until measured).
    pub fn rate(&self) -> u64 {
        if self.measured { self.rate as u64 } else { 0 }
    }

    /// Count `packets` answered in a window of which `busy` was work.
    pub fn served(&mut self, packets: u64, busy: Duration) {
        self.packets += packets;
        self.busy += busy;
    }

    /// Fold the window into the rate; return the new limit when the kernel's should
    /// change. The limit is the kernel's only once [`DepthBound::applied`] says so: a
    /// limit that could not be sent is proposed again at the next estimate.
    pub fn estimate(&mut self) -> Option<u32> {
        let (packets, busy) = (self.packets, self.busy);
        self.packets = 0;
        self.busy = Duration::ZERO;
        if busy < MIN_BUSY || packets == 0 {
            return None;
        }
        let measured = packets as f64 / busy.as_secs_f64();
        // The first measurement replaces the assumed rate; after it, half old, half new:
        // one odd window moves the limit, it does not set it.
        self.rate = if self.measured {
            0.5 * self.rate + 0.5 * measured
        } else {
            measured
        };
        self.measured = true;
        let target = self.target();
        let moved = f64::from(target.abs_diff(self.limit)) > HYSTERESIS * f64::from(self.limit);
        moved.then_some(target)
    }

    /// The kernel has `limit` now.
    pub fn applied(&mut self, limit: u32) {
        self.limit = limit;
    }

    fn target(&self) -> u32 {
        let Some(delay) = self.max_delay else {
            return self.ceiling;
        };
        let packets = self.rate * delay.as_secs_f64();
        (packets.min(f64::from(u32::MAX)) as u32).clamp(FLOOR.min(self.ceiling), self.ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bound(max_delay: Duration, ceiling: u32) -> DepthBound {
        DepthBound::new(Some(max_delay), ceiling)
    }

    /// Estimate, and apply what the estimate proposes, as a worker whose sends succeed.
    fn estimate_and_apply(d: &mut DepthBound) -> Option<u32> {
        let limit = d.estimate();
        if let Some(l) = limit {
            d.applied(l);
        }
        limit
    }

    #[test]
    fn the_first_limit_is_the_assumed_rate_times_the_delay_within_the_ceiling() {
        assert_eq!(bound(200 * MS, 262_144).limit(), 20_000);
        assert_eq!(bound(200 * MS, 1_000).limit(), 1_000);
        assert_eq!(bound(MS, 262_144).limit(), FLOOR);
        assert_eq!(bound(MS, 10).limit(), 10, "never above the ceiling");
    }

    #[test]
    fn a_slow_worker_gets_a_short_queue_and_a_fast_one_a_long_one() {
        let mut d = bound(1000 * MS, 1 << 20);
        // 10,000 packets per 200 ms of work: 50,000 pps, so 50,000 packets in 1 s.
        d.served(10_000, 200 * MS);
        assert_eq!(
            estimate_and_apply(&mut d),
            Some(50_000),
            "the first measurement sets the rate"
        );
        for _ in 0..10 {
            d.served(10_000, 200 * MS);
            assert_eq!(
                estimate_and_apply(&mut d),
                None,
                "a steady rate leaves the limit alone"
            );
        }
        assert_eq!(d.rate(), 50_000);
        // Twenty times faster: the limit follows in steps, never above 1 M pps x 1 s.
        let mut last = d.limit();
        for _ in 0..10 {
            d.served(100_000, 100 * MS);
            if let Some(l) = estimate_and_apply(&mut d) {
                assert!(l > last && l <= 1_000_000, "{l} after {last}");
                last = l;
            }
        }
        assert!((900_000..=1_000_000).contains(&d.limit()), "{}", d.limit());
        // And back: a flood that slows the worker shortens its queue.
        for _ in 0..10 {
            d.served(2_000, 200 * MS);
            estimate_and_apply(&mut d);
        }
        assert!(d.limit() < 20_000, "{}", d.limit());
    }

    #[test]
    fn a_limit_the_kernel_did_not_take_is_proposed_again() {
        let mut d = bound(1000 * MS, 1 << 20);
        d.served(10_000, 200 * MS);
        assert_eq!(d.estimate(), Some(50_000));
        // The send failed: the kernel keeps the first limit, and so do the stats.
        assert_eq!(d.limit(), 100_000);
        d.served(10_000, 200 * MS);
        assert_eq!(d.estimate(), Some(50_000), "proposed again");
        d.applied(50_000);
        d.served(10_000, 200 * MS);
        assert_eq!((d.estimate(), d.limit()), (None, 50_000));
    }

    #[test]
    fn idle_time_is_not_work_and_a_nearly_idle_window_changes_nothing() {
        let mut d = bound(200 * MS, 262_144);
        d.served(3, MS);
        assert_eq!(d.estimate(), None);
        assert_eq!(d.rate(), 0, "not measured yet");
        assert_eq!(d.estimate(), None, "an empty window");
    }

    #[test]
    fn a_window_of_exactly_the_least_work_counts() {
        let mut d = bound(200 * MS, 262_144);
        d.served(1_000, MIN_BUSY);
        assert_eq!(d.estimate(), Some(40_000), "200,000 pps x 200 ms");
    }

    #[test]
    fn a_move_of_exactly_the_hysteresis_stays_out_of_the_kernel() {
        // 112,500 pps x 200 ms = 22,500: 1/8 above the 20,000 the kernel has.
        let mut d = bound(200 * MS, 262_144);
        d.served(22_500, 200 * MS);
        assert_eq!(d.estimate(), None);
        let mut e = bound(200 * MS, 262_144);
        e.served(22_510, 200 * MS);
        assert_eq!(e.estimate(), Some(22_510));
    }

    #[test]
    fn small_moves_do_not_reach_the_kernel() {
        let mut d = bound(200 * MS, 262_144);
        // 105,000 pps: the target moves by 5 %, under the hysteresis.
        d.served(21_000, 200 * MS);
        assert_eq!(d.estimate(), None);
        assert_eq!(d.limit(), 20_000);
    }

    #[test]
    fn without_a_delay_the_limit_stays_and_the_rate_is_still_measured() {
        let mut d = DepthBound::new(None, 262_144);
        assert_eq!(d.limit(), 262_144);
        d.served(10_000, 200 * MS);
        assert_eq!(d.estimate(), None);
        assert_eq!((d.limit(), d.rate()), (262_144, 50_000));
    }
}
