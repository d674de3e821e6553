//! What the victim chooses: how a sender's privileged window WR follows from what it and
//! everyone else delivered last period.
//!
//! Invariant: a sender that proved no delivery in its last period gets WR = 0, whatever
//! the policy; otherwise a spoofed source would be handed a share of the bottleneck.

use std::net::IpAddr;

use crate::driver::nft::Prefix;

/// The policy that sets each sender's window.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Measure only: stamp and count, never drop.
    Off,
    /// WR = what the sender delivered last period.
    NaturalShare,
    /// WR = what all senders delivered last period / senders that delivered anything.
    FairShare,
    /// Senders in `premium` share `share` of what was delivered first (each at least its
    /// natural share); the others share the rest fairly.
    Priority { premium: Vec<Prefix>, share: f64 },
}

impl Policy {
    /// The name used in the config and in stats.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::NaturalShare => "natural_share",
            Policy::FairShare => "fair_share",
            Policy::Priority { .. } => "priority",
        }
    }

    /// Whether `sender` is named premium by the priority policy.
    pub fn is_premium(&self, sender: IpAddr) -> bool {
        match self {
            Policy::Priority { premium, .. } => premium.iter().any(|p| p.contains(sender)),
            _ => false,
        }
    }

    /// The window for a sender that delivered `delivered` packets last period, given
    /// what all senders delivered (`sys`).
    pub fn window(&self, delivered: u32, premium: bool, sys: &Totals) -> u32 {
        if delivered == 0 {
            return 0;
        }
        let share = |total: f64, senders: u64| -> u32 {
            if senders == 0 {
                return delivered;
            }
            clamp_u32(total / senders as f64)
        };
        match self {
            Policy::Off | Policy::NaturalShare => delivered,
            Policy::FairShare => share(sys.delivered as f64, sys.active),
            Policy::Priority {
                share: reserved, ..
            } => {
                let reserved_total = sys.delivered as f64 * reserved;
                if premium {
                    share(reserved_total, sys.premium_active).max(delivered)
                } else {
                    // What the premium senders did not take of their reservation is the
                    // others' to share.
                    let taken = (sys.premium_delivered as f64).max(reserved_total);
                    let rest = (sys.delivered as f64 - taken).max(0.0);
                    share(rest, sys.active.saturating_sub(sys.premium_active))
                }
            }
        }
    }
}

fn clamp_u32(x: f64) -> u32 {
    // `as` saturates and maps NaN to 0: exactly the clamp wanted.
    x.round() as u32
}

/// What every sender delivered in its last closed period, summed across workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Packets delivered by all senders.
    pub delivered: u64,
    /// Senders that delivered at least one packet.
    pub active: u64,
    /// Packets delivered by premium senders.
    pub premium_delivered: u64,
    /// Premium senders that delivered at least one packet.
    pub premium_active: u64,
}

impl Totals {
    /// One sender's last delivery changed from `old` to `new` packets.
    pub fn replace(&mut self, old: u32, new: u32, premium: bool) {
        let (old, new) = (u64::from(old), u64::from(new));
        let was = u64::from(old > 0);
        let is = u64::from(new > 0);
        self.delivered = (self.delivered + new).saturating_sub(old);
        self.active = (self.active + is).saturating_sub(was);
        if premium {
            self.premium_delivered = (self.premium_delivered + new).saturating_sub(old);
            self.premium_active = (self.premium_active + is).saturating_sub(was);
        }
    }

    /// Add another worker's totals.
    pub fn add(&mut self, o: &Totals) {
        self.delivered += o.delivered;
        self.active += o.active;
        self.premium_delivered += o.premium_delivered;
        self.premium_active += o.premium_active;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(delivered: u64, active: u64) -> Totals {
        Totals {
            delivered,
            active,
            ..Totals::default()
        }
    }

    #[test]
    fn no_delivery_no_window_under_every_policy() {
        let t = totals(10_000, 4);
        for p in [
            Policy::Off,
            Policy::NaturalShare,
            Policy::FairShare,
            Policy::Priority {
                premium: vec![],
                share: 0.5,
            },
        ] {
            assert_eq!(p.window(0, false, &t), 0, "{}", p.name());
            assert_eq!(p.window(0, true, &t), 0, "{}", p.name());
        }
    }

    /// Each close moves the totals by the change in one sender's delivery, and the
    /// premium figures only for a premium sender; workers' totals add up.
    #[test]
    fn totals_follow_each_senders_last_delivery() {
        let mut t = Totals::default();
        t.replace(0, 300, true);
        t.replace(0, 200, false);
        let premium_only = |d, a| Totals {
            delivered: d,
            active: a,
            premium_delivered: d,
            premium_active: a,
        };
        assert_eq!(
            t,
            Totals {
                delivered: 500,
                active: 2,
                premium_delivered: 300,
                premium_active: 1,
            }
        );
        t.replace(300, 100, true);
        t.replace(200, 0, false);
        assert_eq!(t, premium_only(100, 1));
        t.replace(100, 0, true);
        assert_eq!(t, Totals::default());
        let mut sum = premium_only(7, 1);
        sum.add(&premium_only(5, 2));
        sum.add(&totals(4, 1));
        assert_eq!(
            sum,
            Totals {
                delivered: 16,
                active: 4,
                premium_delivered: 12,
                premium_active: 3,
            }
        );
    }

    #[test]
    fn natural_share_is_what_was_delivered() {
        assert_eq!(
            Policy::NaturalShare.window(700, false, &totals(10_000, 4)),
            700
        );
    }

    #[test]
    fn fair_share_splits_the_total_among_active_senders() {
        let t = totals(10_000, 4);
        assert_eq!(Policy::FairShare.window(100, false, &t), 2_500);
        assert_eq!(Policy::FairShare.window(9_000, false, &t), 2_500);
        // Totals not merged yet: the sender's own delivery.
        assert_eq!(
            Policy::FairShare.window(300, false, &Totals::default()),
            300
        );
    }

    #[test]
    fn priority_reserves_a_share_for_premium_senders() {
        let p = Policy::Priority {
            premium: vec!["198.18.1.0/24".parse().unwrap()],
            share: 0.5,
        };
        assert!(p.is_premium("198.18.1.7".parse().unwrap()));
        assert!(!p.is_premium("198.18.3.7".parse().unwrap()));
        let t = Totals {
            delivered: 10_000,
            active: 6,
            premium_delivered: 1_000,
            premium_active: 2,
        };
        // Premium: half of 10,000 between 2 senders, or more if one delivered more.
        assert_eq!(p.window(100, true, &t), 2_500);
        assert_eq!(p.window(4_000, true, &t), 4_000);
        // Others: the 5,000 left between 4.
        assert_eq!(p.window(100, false, &t), 1_250);
    }
}
