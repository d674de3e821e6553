//! One sender's state in its current detection period (the paper's iTable entry), and
//! the arithmetic that closes a period.
//!
//! Invariants: `nd <= nr`; `window.returned() <= issued`; a closed period leaves every
//! per-period count at zero. Counts are of TCP packets unless named `other`.

use std::time::{Duration, Instant};

use super::policy::{Policy, Totals};
use super::senders::Worth;
use crate::capability::ReturnWindow;

/// Below this many packets in a period, its loss is too noisy to move the LLR.
pub const MIN_PACKETS_FOR_LOSS: u32 = 5;

/// Below this many capabilities issued in a period, the share that never came back says
/// too little of the period's other packets to move the LLR: with fewer, one capability
/// lost alone (a SYN to a port that never answers) adds at least (1 − β)/4 to it, the
/// whole 5 % threshold at the defaults, and two put it over; the sender's next period
/// would drop all beyond a window it could not earn. What the mbox dropped itself
/// counts whatever the sample.
pub const MIN_CAPS_FOR_LOSS: u32 = 5;

/// What the mbox knows of one sender.
#[derive(Debug, Clone)]
pub struct Sender {
    /// Start of the current period.
    pub period_start: Instant,
    /// NR: TCP packets received this period.
    pub nr: u32,
    /// ND: TCP packets the mbox dropped this period.
    pub nd: u32,
    /// Capabilities issued this period (their ids are 0..issued).
    pub issued: u32,
    /// Stamps the sample chose this period but the budget for unverified senders refused.
    pub refused: u32,
    /// WV: ids returned this period, each counted once.
    pub window: ReturnWindow,
    /// WR: TCP packets per period that are privileged (never dropped by the mbox).
    pub wr: u32,
    /// Of this period's TCP packets, those let through as privileged.
    pub privileged: u32,
    /// LLR: long-term loss rate.
    pub llr: f64,
    /// Packets of any other protocol this period (best-effort only).
    pub other: u32,
    /// Of those, dropped by the mbox.
    pub other_dropped: u32,
    /// NR of the last closed period: the sender's rate, for spreading the stamps.
    pub last_nr: u32,
    /// Packets delivered in the last closed period (what its WR was made from).
    pub delivered: u32,
    /// Some capability of this sender came back verified since it was first seen.
    pub verified: bool,
    /// Named by the priority policy.
    pub premium: bool,
    /// Periods closed in a row without a packet.
    pub idle: u32,
}

/// Of its window, the share a sender may send at once beyond the period's pace: an
/// eighth of a second of a 4 s period. An eighth of the window let TCP attackers' bursts
/// overflow a 400-packet bottleneck queue (`attack_table`, TCP row).
const PACE_BURST: f64 = 0.03125;

/// What the close of one period found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closed {
    /// Packets delivered, estimated from the capabilities returned.
    pub delivered: u32,
    /// The period's loss, if the sender sent enough to tell.
    pub loss: Option<f64>,
}

impl Sender {
    /// A sender first seen at `now`, with no window and no loss.
    pub fn new(now: Instant, window: ReturnWindow, premium: bool) -> Self {
        Sender {
            period_start: now,
            nr: 0,
            nd: 0,
            issued: 0,
            refused: 0,
            window,
            wr: 0,
            privileged: 0,
            llr: 0.0,
            other: 0,
            other_dropped: 0,
            last_nr: 0,
            delivered: 0,
            verified: false,
            premium,
            idle: 0,
        }
    }

    /// Whether a TCP packet arriving `now` is within the window WR, so privileged (and
    /// counted as such). `paced`: by `now` the sender may have had the share of WR the
    /// period has run so far, plus `PACE_BURST` of WR at once, and never more than WR; a
    /// sender spending its window in a burst at the period's start would fill the
    /// bottleneck's queue for everyone. Otherwise WR counts for the whole period.
    /// Best-effort packets, passed or dropped, take nothing from the window. A GSO
    /// super-packet of `segments` wire packets is privileged if its first does, and
    /// takes them all (so it may overdraw the window by one super-packet at most, as a
    /// packet-by-packet sender would see its burst cut at the window, not refused whole).
    pub fn take_window(
        &mut self,
        segments: u32,
        now: Instant,
        period: Duration,
        paced: bool,
    ) -> bool {
        let allowance = if paced {
            let ran = now
                .saturating_duration_since(self.period_start)
                .as_secs_f64()
                / period.as_secs_f64().max(f64::MIN_POSITIVE);
            f64::from(self.wr) * (ran + PACE_BURST).min(1.0)
        } else {
            f64::from(self.wr)
        };
        let within = f64::from(self.privileged) + 1.0 <= allowance;
        if within {
            self.privileged = self.privileged.saturating_add(segments);
        }
        within
    }

    /// Close the current period: loss, LLR (β applied once, and once more for each of
    /// `idle_after` empty periods that followed), delivery and the next WR.
    pub fn close(&mut self, beta: f64, idle_after: u32, policy: &Policy, sys: &Totals) -> Closed {
        let (nr, nd) = (f64::from(self.nr), f64::from(self.nd));
        // Capabilities that never came back are packets lost beyond the mbox; a sender
        // stamped with none cannot prove any delivery.
        let cap_loss = if self.issued == 0 {
            1.0
        } else {
            f64::from(self.issued - self.window.returned()) / f64::from(self.issued)
        };
        // A sender stamped with none because the budget for unverified senders was
        // spent (a spoofed flood's sources) is a source losing them all (SPEC.md). One
        // whose packets all came after the stamping stretch, or that the sample passed
        // over, proves nothing either way. (An attacker gains nothing by it: one early
        // packet, stamped and returned, always gave it a clean period.)
        let starved = self.issued == 0 && self.refused > 0;
        let sampled = self.issued >= MIN_CAPS_FOR_LOSS || starved;
        let lost_beyond = if sampled { cap_loss } else { 0.0 };
        let loss = (self.nr > 0).then(|| nd / nr + ((nr - nd) / nr) * lost_beyond);
        let delivered = ((nr - nd) * (1.0 - cap_loss)).round() as u32;
        self.llr *= beta;
        if let (Some(l), true) = (loss, self.nr >= MIN_PACKETS_FOR_LOSS) {
            self.llr += (1.0 - beta) * l;
        }
        self.llr *= beta.powi(i32::try_from(idle_after).unwrap_or(i32::MAX));
        let empty = self.nr == 0 && self.other == 0;
        self.idle = if empty { self.idle + 1 } else { 0 } + idle_after;
        self.wr = policy.window(delivered, self.premium, sys);
        self.delivered = delivered;
        // The rate to spread the next stamps by: nothing if periods passed empty since.
        self.last_nr = if idle_after == 0 { self.nr } else { 0 };
        self.nr = 0;
        self.nd = 0;
        self.privileged = 0;
        self.issued = 0;
        self.refused = 0;
        self.other = 0;
        self.other_dropped = 0;
        self.window.reset();
        Closed { delivered, loss }
    }
}

impl Worth for Sender {
    /// Senders with verified deliveries are worth keeping, the more the better; the
    /// rest (spoofed sources among them) are the first to go.
    fn worth(&self) -> u64 {
        if !self.verified {
            return 0;
        }
        1 + u64::from(self.delivered) + u64::from(self.window.returned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender::new(Instant::now(), ReturnWindow::new(128).unwrap(), false)
    }

    fn returned(s: &mut Sender, n: u32) {
        for id in 0..n {
            s.window.accept(id).unwrap();
        }
    }

    #[test]
    fn loss_counts_mbox_drops_and_capabilities_that_never_came_back() {
        let mut s = sender();
        (s.nr, s.nd, s.issued) = (100, 20, 10);
        returned(&mut s, 5);
        let c = s.close(0.8, 0, &Policy::NaturalShare, &Totals::default());
        // 20 % dropped here, half of the rest lost beyond: 0.2 + 0.8 x 0.5 = 0.6.
        assert!((c.loss.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(c.delivered, 40);
        assert!((s.llr - 0.2 * 0.6).abs() < 1e-9);
        assert_eq!(s.wr, 40, "natural share: what it delivered");
        assert_eq!((s.nr, s.nd, s.issued, s.window.returned()), (0, 0, 0, 0));
        assert_eq!(s.last_nr, 100);
    }

    /// The trap a lone download fell into: four SYNs to a port that never answered, then
    /// a download begun after the period's stamping stretch. Four unreturned
    /// capabilities do not put the sender over the threshold for all its other packets;
    /// five do, and what the mbox dropped counts whatever the sample.
    #[test]
    fn a_few_capabilities_lost_alone_do_not_move_the_llr() {
        let mut s = sender();
        (s.nr, s.issued) = (300, MIN_CAPS_FOR_LOSS - 1);
        let c = s.close(0.8, 0, &Policy::NaturalShare, &Totals::default());
        assert_eq!(c.loss, Some(0.0));
        assert_eq!(s.llr, 0.0);
        assert_eq!(c.delivered, 0, "delivery is still only what came back");
        (s.nr, s.nd, s.issued) = (300, 150, MIN_CAPS_FOR_LOSS - 1);
        let c = s.close(0.8, 0, &Policy::NaturalShare, &Totals::default());
        assert_eq!(c.loss, Some(0.5), "the mbox's own drops");
        (s.nr, s.nd, s.issued) = (300, 0, MIN_CAPS_FOR_LOSS);
        s.llr = 0.0;
        let c = s.close(0.8, 0, &Policy::NaturalShare, &Totals::default());
        assert_eq!(c.loss, Some(1.0));
        assert!(s.llr > 0.05);
    }

    /// A period with no stamp is a total loss only for a sender the budget for
    /// unverified senders refused; one whose packets all came after the stamping
    /// stretch, or that the sample passed over, proves nothing either way, and
    /// delivers nothing either.
    #[test]
    fn unstamped_periods_are_a_loss_only_for_senders_the_budget_refused() {
        let mut s = sender();
        for (refused, loss) in [(0, 0.0), (3, 1.0)] {
            (s.nr, s.refused) = (300, refused);
            let c = s.close(0.8, 0, &Policy::NaturalShare, &Totals::default());
            assert_eq!((c.loss, c.delivered), (Some(loss), 0), "{refused}");
            assert_eq!(s.refused, 0);
        }
    }

    #[test]
    fn a_sender_never_stamped_proves_nothing() {
        let mut s = sender();
        (s.nr, s.refused) = (50, 1);
        let c = s.close(0.8, 0, &Policy::FairShare, &Totals::default());
        assert_eq!((c.delivered, s.wr), (0, 0));
        assert!((c.loss.unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn few_packets_and_idle_periods_only_decay_the_llr() {
        let mut s = sender();
        s.llr = 0.5;
        (s.nr, s.issued) = (4, 4); // below MIN_PACKETS_FOR_LOSS, all lost
        s.close(0.8, 0, &Policy::NaturalShare, &Totals::default());
        assert!((s.llr - 0.4).abs() < 1e-9);
        // Three periods passed unseen: β three more times, and no loss to report.
        let c = s.close(0.8, 3, &Policy::NaturalShare, &Totals::default());
        assert_eq!(c.loss, None);
        assert!((s.llr - 0.4 * 0.8f64.powi(4)).abs() < 1e-9);
        assert_eq!(s.idle, 4);
    }

    #[test]
    fn only_verified_senders_are_worth_keeping() {
        let mut s = sender();
        s.delivered = 1000;
        assert_eq!(s.worth(), 0);
        s.verified = true;
        assert_eq!(s.worth(), 1001);
    }
}
