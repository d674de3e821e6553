//! Pacing: a token bucket in packets, and the on-off cycle of a shrew flood.

use std::time::{Duration, Instant};

/// A token bucket in packets: `pps` a second, at most `depth` saved up.
#[derive(Debug, Clone)]
pub struct Pacer {
    pps: f64,
    depth: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// Start with `start` tokens at `now`.
    pub fn new(pps: f64, depth: f64, start: f64, now: Instant) -> Pacer {
        Pacer {
            pps,
            depth,
            tokens: start.min(depth),
            last: now,
        }
    }

    /// Add the tokens earned since the last call; return the whole packets available.
    pub fn refill(&mut self, now: Instant) -> u64 {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.pps).min(self.depth);
        self.last = now;
        self.tokens.max(0.0).floor() as u64
    }

    /// Spend `n` packets' tokens.
    pub fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// How long until `n` packets' tokens are there.
    pub fn wait_for(&self, n: u64) -> Duration {
        let missing = (n as f64 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.pps)
    }

    /// Start again at `now` with `start` tokens (after an off period).
    pub fn restart(&mut self, now: Instant, start: f64) {
        self.tokens = start.min(self.depth);
        self.last = now;
    }
}

/// In an on-off flood, `elapsed` since the start: None while on, or how long until the
/// next on period starts.
pub fn off_for(elapsed: Duration, on: Duration, off: Duration) -> Option<Duration> {
    let period = (on + off).as_nanos();
    if off.is_zero() || period == 0 {
        return None;
    }
    let phase = elapsed.as_nanos() % period;
    let on_ns = on.as_nanos();
    (phase >= on_ns).then(|| Duration::from_nanos((period - phase) as u64))
}
