//! The mbox's policing of one worker's senders: the gate each packet passes, the choice
//! of packets to stamp, the count of capabilities that come back, and the timer that
//! closes periods.
//!
//! Invariants: a sender's period closes on the timer (`on_timer`), never on a packet;
//! every sender held has exactly one live entry in the deadline queue; privileged
//! packets (within WR) are never dropped; nothing here locks or reads a clock.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::policy::{Policy, Totals};
use super::random::Xorshift;
use super::sender::Sender;
use super::senders::SenderTable;
use super::slots::SlotRing;
use crate::capability::{MAX_TH_CAP, Refusal, Rejected, ReturnWindow, check_fresh, check_period};
use crate::config::{CapSettings, PoliceSettings};

/// Slots per Th_rtt in the ring of issued capabilities (the SLR's resolution).
const SLR_SLOTS_PER_RTT: u64 = 10;

crate::labels::labelled_enum! {
    /// Why the police dropped a packet.
    pub enum Drop {
        /// A TCP packet beyond the sender's window while its own loss rate is over
        /// threshold.
        SenderLoss => "police_sender_loss",
        /// A TCP packet beyond the sender's window while the system loss rate is over
        /// threshold.
        SystemLoss => "police_system_loss",
        /// A non-TCP packet beyond the per-sender cap of its period.
        NonTcpCap => "police_non_tcp_cap",
        /// A non-TCP packet while the system loss rate is over threshold.
        NonTcpSystemLoss => "police_non_tcp_system_loss",
    }
}

/// The sample's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    No,
    /// Picked, but it would not fit the path once stamped.
    TooBig,
    /// Stamp it with this capability id.
    Id(u32),
}

/// What one worker reports at its timer, for the engine to sum over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Capabilities issued in the SLR's window (old enough to have come back).
    pub slr_issued: u64,
    /// Of those, returned.
    pub slr_returned: u64,
    /// What senders delivered in their last closed period.
    pub totals: Totals,
}

/// The system-wide view every worker polices by.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct System {
    /// Short-term loss rate over every worker's recent capabilities.
    pub slr: f64,
    pub totals: Totals,
}

impl System {
    /// Sum what the workers reported; the SLR counts only from `min_sample` capabilities.
    pub fn merge<'a>(figures: impl IntoIterator<Item = &'a Figures>, min_sample: u32) -> System {
        let (mut issued, mut returned, mut totals) = (0u64, 0u64, Totals::default());
        for f in figures {
            issued += f.slr_issued;
            returned += f.slr_returned;
            totals.add(&f.totals);
        }
        let slr = if issued == 0 || issued < u64::from(min_sample) {
            0.0
        } else {
            1.0 - returned.min(issued) as f64 / issued as f64
        };
        System { slr, totals }
    }
}

/// What the police counted, beside the drops (counted by the pipeline by reason).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoliceCounters {
    /// Senders removed by the timer after `idle_periods` empty periods.
    pub expired: u64,
    /// Stamps not made because the budget for unverified senders was spent.
    pub stamps_over_budget: u64,
    /// Periods closed.
    pub periods_closed: u64,
}

/// One sender as `mpolice stats --senders` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SenderRow {
    pub address: IpAddr,
    pub nr: u32,
    pub nd: u32,
    pub wr: u32,
    pub llr: f64,
    pub issued: u32,
    pub returned: u32,
    /// Packets delivered in the last closed period.
    pub delivered: u32,
    /// Non-TCP packets this period, and of those dropped.
    pub other: u32,
    pub other_dropped: u32,
    pub verified: bool,
    pub premium: bool,
}

/// The police's state as `mpolice stats --senders` shows it, for one worker.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoliceReport {
    pub policy: String,
    /// The system loss rate in force.
    pub slr: f64,
    /// What all senders delivered in their last period, across workers.
    pub totals: Totals,
    /// The most active senders.
    pub senders: Vec<SenderRow>,
}

/// A token bucket for stamps on senders no capability has come back from.
#[derive(Debug, Clone)]
struct StampBudget {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl StampBudget {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        // At most one second's worth banked: a burst of new sources spends no more.
        self.tokens = (self.tokens + refill).min(self.per_sec.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One worker's senders and the state that polices them.
pub struct Policer {
    policy: Policy,
    period: Duration,
    rtt: Duration,
    per_period: u32,
    beta: f64,
    llr_threshold: f64,
    slr_threshold: f64,
    /// WR is spent at the period's pace.
    paced: bool,
    non_tcp_per_period: u32,
    idle_periods: u32,
    epoch: Instant,
    senders: SenderTable<Sender>,
    /// Period ends, in the order they were set: every period has the same length, so
    /// deadlines enter in the order they fall due (out of order only by as much as the
    /// timer ran late), and a FIFO serves as the timer wheel: O(1) per sender.
    deadlines: VecDeque<(Instant, IpAddr)>,
    /// An empty returned-capability bitmap, copied for each new sender.
    window: ReturnWindow,
    /// Capabilities issued and returned, by issue time.
    issued: SlotRing,
    /// What the senders held delivered in their last closed period, and how many
    /// delivered anything; kept exact at every close and every departure (a sliding
    /// window over close times would miss senders whose periods close together).
    totals: Totals,
    system: System,
    budget: StampBudget,
    rng: Xorshift,
    counters: PoliceCounters,
    /// Senders that became verified (true) or that a verified sender left the table
    /// (false) since the driver last took them: it keeps the kernel's set in step.
    verified_changes: Vec<(IpAddr, bool)>,
}

impl Policer {
    /// Police by `p`, with the capability settings `c` (period, Th_rtt, Th_cap, table
    /// size); `epoch` is the zero of the capability clock.
    pub fn new(c: &CapSettings, p: &PoliceSettings, epoch: Instant) -> Self {
        let rtt_ms = (c.rtt.as_millis() as u64).max(1);
        let slot = (rtt_ms / SLR_SLOTS_PER_RTT).max(1);
        Policer {
            policy: p.policy.clone(),
            period: c.period,
            rtt: c.rtt,
            per_period: c.per_period,
            beta: p.beta,
            llr_threshold: p.llr_threshold,
            slr_threshold: p.slr_threshold,
            paced: p.paced,
            non_tcp_per_period: p.non_tcp_per_period,
            idle_periods: p.idle_periods,
            epoch,
            senders: SenderTable::new(c.max_senders),
            deadlines: VecDeque::new(),
            // `CapSettings` keeps per_period within what a window holds.
            window: ReturnWindow::new(c.per_period.clamp(1, MAX_TH_CAP))
                .expect("1..=MAX_TH_CAP always makes a window"),
            // Two Th_rtt and some: the SLR window is the Th_rtt before the last Th_rtt.
            issued: SlotRing::new(slot, (3 * SLR_SLOTS_PER_RTT) as usize),
            totals: Totals::default(),
            system: System::default(),
            budget: StampBudget {
                per_sec: f64::from(p.unverified_stamps_per_sec),
                tokens: f64::from(p.unverified_stamps_per_sec),
                last: epoch,
            },
            // Nobody can predict which packets are stamped.
            rng: Xorshift::from_os(),
            counters: PoliceCounters::default(),
            verified_changes: Vec::new(),
        }
    }

    /// Decide whether a packet of `sender` passes; `tcp` says whether it can carry a
    /// capability (anything else is best-effort only). It stands for `segments` packets
    /// on the wire (more than 1 for a GSO super-packet), each counted.
    pub fn admit(
        &mut self,
        sender: IpAddr,
        tcp: bool,
        segments: u32,
        now: Instant,
    ) -> Result<(), Drop> {
        let off = matches!(self.policy, Policy::Off);
        let (llr_threshold, cap) = (self.llr_threshold, self.non_tcp_per_period);
        let (period, paced) = (self.period, self.paced);
        let slr_over = self.system.slr > self.slr_threshold;
        let s = self.sender(sender, now);
        let llr_over = s.llr > llr_threshold;
        if !tcp {
            s.other = s.other.saturating_add(segments);
            let verdict = if off {
                Ok(())
            } else if s.other > cap {
                Err(Drop::NonTcpCap)
            } else if slr_over {
                Err(Drop::NonTcpSystemLoss)
            } else {
                Ok(())
            };
            if verdict.is_err() {
                s.other_dropped = s.other_dropped.saturating_add(segments);
            }
            return verdict;
        }
        s.nr = s.nr.saturating_add(segments);
        // Within WR the packet is privileged; beyond it, best-effort.
        let verdict = if off || s.take_window(segments, now, period, paced) {
            Ok(())
        } else if llr_over {
            Err(Drop::SenderLoss)
        } else if slr_over {
            Err(Drop::SystemLoss)
        } else {
            Ok(())
        };
        if verdict.is_err() {
            s.nd = s.nd.saturating_add(segments);
        }
        verdict
    }

    /// Whether to stamp this TCP packet of `sender` (admitted just before), and with
    /// which id: a random share of its packets in the period's first P − Th_rtt, spread
    /// to make Th_cap last the whole stretch at the rate it is sending. A packet the
    /// sample picks that would not `fit` the path once stamped is counted, not stamped.
    /// A super-packet of `segments` wire packets is picked as often as its segments
    /// together would be (and carries one stamp).
    pub fn stamp(&mut self, sender: IpAddr, segments: u32, now: Instant, fits: bool) -> Stamp {
        let (period, rtt, per_period) = (self.period, self.rtt, self.per_period);
        let draw = self.rng.next_unit();
        let Some(s) = self.senders.peek_mut(sender) else {
            return Stamp::No;
        };
        let stamp_end = s.period_start + period - rtt;
        if s.issued >= per_period || now >= stamp_end {
            return Stamp::No;
        }
        // Packets per second: at least last period's, more if it sends faster now.
        let elapsed = now.saturating_duration_since(s.period_start).max(rtt / 10);
        let rate = (f64::from(s.last_nr) / period.as_secs_f64())
            .max(f64::from(s.nr) / elapsed.as_secs_f64());
        let expected = rate * (stamp_end - now).as_secs_f64();
        let share = f64::from(segments) * f64::from(per_period - s.issued) / expected.max(1.0);
        if share < 1.0 && draw >= share {
            return Stamp::No;
        }
        if !fits {
            return Stamp::TooBig;
        }
        if !s.verified && !self.budget.take(now) {
            self.counters.stamps_over_budget += 1;
            s.refused = s.refused.saturating_add(1);
            return Stamp::No;
        }
        let id = s.issued;
        s.issued += 1;
        self.issued.add(self.ms(now), 1, 0);
        Stamp::Id(id)
    }

    /// Take back capability `id` of `sender`, issued at `at` but never sent (the segment
    /// it was for did not fit the path): it is not a loss. Only the last one issued can
    /// be taken back, as it is at once.
    pub fn withdraw(&mut self, sender: IpAddr, id: u32, at: Instant) {
        let ms = self.ms(at);
        let Some(s) = self.senders.peek_mut(sender) else {
            return;
        };
        if s.issued == id + 1 {
            s.issued = id;
            self.issued.take_first(ms, 1);
        }
    }

    /// Count capability `id` of `sender`, issued at `issued_ms` on the capability clock,
    /// as returned; the error names why it does not count. If it came back on a segment
    /// that `proves` the sender real (not a SYN-ACK, which a spoofed source also gets),
    /// the sender becomes verified: worth keeping, and let past the kernel's limits.
    pub fn returned(
        &mut self,
        sender: IpAddr,
        (id, issued_ms): (u32, u32),
        proves: bool,
        now: Instant,
    ) -> Result<(), Rejected> {
        let now_ms = self.ms(now);
        let rtt_ms = u32::try_from(self.rtt.as_millis()).unwrap_or(u32::MAX);
        // A sender evicted since: its period and bitmap are gone, so nothing can count.
        let start = self
            .senders
            .peek_mut(sender)
            .ok_or(Refusal::UnknownSender)?
            .period_start;
        let start_ms = self.ms(start);
        let s = self
            .senders
            .get_mut(sender, now)
            .ok_or(Refusal::UnknownSender)?;
        check_period(issued_ms, start_ms as u32)?;
        check_fresh(issued_ms, now_ms as u32, rtt_ms)?;
        s.window.accept(id)?;
        if proves && !s.verified {
            s.verified = true;
            self.verified_changes.push((sender, true));
        }
        let age = u64::from((now_ms as u32).wrapping_sub(issued_ms));
        self.issued.add(now_ms.saturating_sub(age), 0, 1);
        Ok(())
    }

    /// Close every period due by `now`, expire idle senders, and report this worker's
    /// figures for the system-wide view.
    pub fn on_timer(&mut self, now: Instant) -> Figures {
        while let Some(&(due, sender)) = self.deadlines.front() {
            if due > now {
                break;
            }
            self.deadlines.pop_front();
            self.close_due(sender, due, now);
        }
        let now_ms = self.ms(now);
        let rtt_ms = self.rtt.as_millis() as u64;
        let mature = now_ms.saturating_sub(rtt_ms);
        let (slr_issued, slr_returned) = self.issued.sum(mature.saturating_sub(rtt_ms), mature);
        Figures {
            slr_issued,
            slr_returned,
            totals: self.totals,
        }
    }

    /// Police by the system-wide view the engine merged from every worker's figures.
    pub fn set_system(&mut self, system: System) {
        self.system = system;
    }

    /// Police by `p` from now on (a reload): the senders, their periods and their
    /// returned capabilities stay; the policy and its thresholds apply from each
    /// sender's next decision, the stamp budget's rate from its next refill.
    pub fn set_settings(&mut self, p: &PoliceSettings) {
        self.policy = p.policy.clone();
        self.beta = p.beta;
        self.llr_threshold = p.llr_threshold;
        self.slr_threshold = p.slr_threshold;
        self.paced = p.paced;
        self.non_tcp_per_period = p.non_tcp_per_period;
        self.idle_periods = p.idle_periods;
        self.budget.per_sec = f64::from(p.unverified_stamps_per_sec);
    }

    /// The system-wide view in force.
    pub fn system(&self) -> System {
        self.system
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Senders held, and evicted to make room.
    pub fn senders_held(&self) -> (usize, u64) {
        (self.senders.len(), self.senders.evictions())
    }

    /// What the police counted.
    pub fn counters(&self) -> PoliceCounters {
        self.counters
    }

    /// Up to `limit` senders, the most active first.
    pub fn report(&self, limit: usize) -> Vec<SenderRow> {
        let mut rows: Vec<SenderRow> = self
            .senders
            .iter()
            .map(|(address, s)| SenderRow {
                address,
                nr: s.nr,
                nd: s.nd,
                wr: s.wr,
                llr: s.llr,
                issued: s.issued,
                returned: s.window.returned(),
                delivered: s.delivered,
                other: s.other,
                other_dropped: s.other_dropped,
                verified: s.verified,
                premium: s.premium,
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse((r.delivered, r.nr + r.other)));
        rows.truncate(limit);
        rows
    }

    /// The sender's state, created (with its first deadline) if it is new.
    fn sender(&mut self, sender: IpAddr, now: Instant) -> &mut Sender {
        let (window, policy) = (&self.window, &self.policy);
        let mut created = false;
        // One lookup per packet: the fields a departure touches are borrowed apart.
        let (s, evicted) = self.senders.insert_evicting(sender, now, || {
            created = true;
            Sender::new(now, window.clone(), policy.is_premium(sender))
        });
        if let Some((gone, g)) = evicted {
            forget((&mut self.totals, &mut self.verified_changes), gone, &g);
        }
        if created {
            self.deadlines.push_back((now + self.period, sender));
        }
        s
    }

    /// Close the period of `sender` that ended at `due` (and any that ended since, idle).
    fn close_due(&mut self, sender: IpAddr, due: Instant, now: Instant) {
        let (period, beta) = (self.period, self.beta);
        let Some(s) = self.senders.peek_mut(sender) else {
            return; // evicted or expired: its deadline goes with it
        };
        if s.period_start + period != due {
            return; // a deadline of an earlier life of this address
        }
        // Periods that ended while the worker could not run the timer passed unseen.
        let late = (now - due).as_nanos() / period.as_nanos().max(1);
        let idle_after = u32::try_from(late).unwrap_or(u32::MAX);
        let before = s.delivered;
        let closed = s.close(beta, idle_after, &self.policy, &self.system.totals);
        s.period_start = due + period * idle_after;
        let (premium, idle, next) = (s.premium, s.idle, s.period_start + period);
        self.counters.periods_closed += 1;
        self.totals.replace(before, closed.delivered, premium);
        if idle >= self.idle_periods {
            if let Some(s) = self.senders.remove(sender) {
                forget((&mut self.totals, &mut self.verified_changes), sender, &s);
            }
            self.counters.expired += 1;
        } else {
            self.deadlines.push_back((next, sender));
        }
    }

    /// Whether the set of verified senders changed since the changes were last taken.
    pub fn verified_changed(&self) -> bool {
        !self.verified_changes.is_empty()
    }

    /// Take the changes to the set of verified senders since the last call, in order.
    pub fn take_verified_changes(&mut self) -> std::vec::Drain<'_, (IpAddr, bool)> {
        self.verified_changes.drain(..)
    }

    /// Milliseconds since the capability clock's epoch.
    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// A sender left the table: its last delivery leaves the totals, and if it was verified,
/// it leaves the verified set too.
fn forget(
    (totals, verified_changes): (&mut Totals, &mut Vec<(IpAddr, bool)>),
    sender: IpAddr,
    s: &Sender,
) {
    totals.replace(s.delivered, 0, s.premium);
    if s.verified {
        verified_changes.push((sender, false));
    }
}
