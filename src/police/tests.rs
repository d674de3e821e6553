//! The police on its own: gate, sample, timer, eviction, with the prototype's settings.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{CapSettings, PoliceSettings};

const P: u64 = 4_000;

/// Sender `i` (distinct for every i), in 2001:2::/48.
fn ip(i: u32) -> IpAddr {
    IpAddr::from(std::net::Ipv6Addr::from(
        0x2001_0002_0000_0000_0000_0000_0000_0000u128 | u128::from(i),
    ))
}

fn policer(policy: Policy) -> (Policer, Instant) {
    let t0 = Instant::now();
    let caps = CapSettings::default();
    (
        Policer::new(&caps, &PoliceSettings::with_policy(policy), t0),
        t0,
    )
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Send `n` TCP packets of `s` evenly over `from..to` ms, running the timer before each
/// as the worker does; return the ids stamped (with their issue time) and the drops.
fn send(
    p: &mut Policer,
    t0: Instant,
    s: IpAddr,
    n: u64,
    (from, to): (u64, u64),
) -> (Vec<(u32, u64)>, u64) {
    let (mut stamped, mut dropped) = (Vec::new(), 0);
    for i in 0..n {
        let ms = from + (to - from) * i / n;
        p.on_timer(at(t0, ms));
        match p.admit(s, true, 1, at(t0, ms)) {
            Ok(()) => {
                if let Stamp::Id(id) = p.stamp(s, 1, at(t0, ms), true) {
                    stamped.push((id, ms));
                }
            }
            Err(_) => dropped += 1,
        }
    }
    (stamped, dropped)
}

/// Return the capabilities in `ids` to the police `rtt_ms` after their issue.
fn give_back(p: &mut Policer, t0: Instant, s: IpAddr, ids: &[(u32, u64)]) {
    for &(id, ms) in ids {
        let issued_ms = (at(t0, ms) - t0).as_millis() as u32;
        p.returned(s, (id, issued_ms), true, at(t0, ms + 100))
            .unwrap();
    }
}

fn row(p: &Policer, s: IpAddr) -> SenderRow {
    p.report(usize::MAX)
        .into_iter()
        .find(|r| r.address == s)
        .expect("sender held")
}

#[test]
fn a_sender_that_delivers_everything_gets_its_delivery_as_window() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    let (ids, dropped) = send(&mut p, t0, ip(1), 1_000, (0, 3_900));
    give_back(&mut p, t0, ip(1), &ids);
    assert_eq!(dropped, 0);
    assert!(!ids.is_empty() && ids.len() <= 128, "{} stamps", ids.len());
    p.on_timer(at(t0, P));
    let r = row(&p, ip(1));
    assert_eq!((r.wr, r.delivered, r.llr), (1_000, 1_000, 0.0));
    assert!(r.verified);
}

/// Give sender 1 a window of 100 (it delivers 100 packets in the first period), then
/// put the system over its loss threshold.
fn window_of_100_while_the_system_loses(p: &mut Policer, t0: Instant) {
    let (ids, _) = send(p, t0, ip(1), 100, (0, 2_900));
    give_back(p, t0, ip(1), &ids);
    p.on_timer(at(t0, P));
    assert_eq!(row(p, ip(1)).wr, 100);
    p.set_system(System {
        slr: 0.5,
        totals: Totals::default(),
    });
}

/// A sender with a window of 100 that sends 150 packets in the first second of a
/// period, while the system loses: paced, it has the window's share of that second plus
/// a thirty-second (27 packets); per period, its whole window at once.
#[test]
fn a_window_is_spent_at_the_periods_pace_unless_configured_per_period() {
    for (paced, privileged) in [(true, 27), (false, 100)] {
        let t0 = Instant::now();
        let settings = PoliceSettings {
            paced,
            ..PoliceSettings::with_policy(Policy::NaturalShare)
        };
        let mut p = Policer::new(&CapSettings::default(), &settings, t0);
        window_of_100_while_the_system_loses(&mut p, t0);
        let (_, dropped) = send(&mut p, t0, ip(1), 150, (P, P + 1_000));
        assert_eq!(150 - dropped, privileged, "paced: {paced}");
        // Best-effort packets took nothing from it: the rest comes with the period.
        let (_, dropped) = send(&mut p, t0, ip(1), 100, (P + 1_000, P + 3_990));
        assert_eq!(100 - dropped, 100 - privileged, "paced: {paced}");
    }
}

#[test]
fn best_effort_packets_are_dropped_while_the_system_loses_and_privileged_ones_never() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    window_of_100_while_the_system_loses(&mut p, t0);
    // 100 privileged over the period, the rest best-effort and dropped; a new sender
    // has no window at all.
    let (_, dropped) = send(&mut p, t0, ip(1), 150, (P, P + 3_990));
    assert_eq!(dropped, 50);
    assert_eq!(
        p.admit(ip(2), true, 1, at(t0, P + 3_900)),
        Err(Drop::SystemLoss)
    );
    let r = row(&p, ip(1));
    assert_eq!((r.nr, r.nd), (150, 50));
    // No system loss: best-effort passes.
    p.set_system(System::default());
    assert_eq!(p.admit(ip(2), true, 1, at(t0, P + 3_901)), Ok(()));
}

#[test]
fn a_sender_whose_capabilities_never_return_loses_its_best_effort() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    // Three periods of stamps that never come back: LLR climbs past 5 %.
    for k in 0..3 {
        send(&mut p, t0, ip(1), 200, (k * P, k * P + 3_000));
    }
    p.on_timer(at(t0, 3 * P));
    let r = row(&p, ip(1));
    assert!(r.llr > 0.05, "llr {}", r.llr);
    assert_eq!(r.wr, 0, "it proved no delivery");
    assert_eq!(
        p.admit(ip(1), true, 1, at(t0, 3 * P + 1)),
        Err(Drop::SenderLoss)
    );
}

#[test]
fn periods_close_on_the_timer_and_idle_periods_decay_the_llr() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    send(&mut p, t0, ip(1), 200, (0, 3_000));
    // The timer alone closes the period: no packet of the sender is needed.
    p.on_timer(at(t0, P));
    let llr = row(&p, ip(1)).llr;
    assert!((llr - 0.2).abs() < 1e-9, "(1 - β) x all lost: {llr}");
    assert_eq!(p.counters().periods_closed, 1);
    // Two idle periods, the timer late for both: β twice.
    p.on_timer(at(t0, 3 * P + 10));
    assert!((row(&p, ip(1)).llr - 0.2 * 0.64).abs() < 1e-9);
    // Forgotten once idle for `idle_periods` (4).
    p.on_timer(at(t0, 5 * P));
    assert!(p.report(10).is_empty());
    assert_eq!(p.counters().expired, 1);
}

#[test]
fn non_tcp_traffic_is_capped_per_sender_and_dropped_while_the_system_loses() {
    let (mut p, t0) = policer(Policy::FairShare);
    let now = at(t0, 10);
    let passed = (0..1_500)
        .filter(|_| p.admit(ip(1), false, 1, now).is_ok())
        .count();
    assert_eq!(passed, 1_000, "non_tcp_per_period");
    assert_eq!(p.admit(ip(1), false, 1, now), Err(Drop::NonTcpCap));
    p.set_system(System {
        slr: 0.06,
        totals: Totals::default(),
    });
    assert_eq!(p.admit(ip(2), false, 1, now), Err(Drop::NonTcpSystemLoss));
    let r = row(&p, ip(1));
    assert_eq!((r.other, r.other_dropped, r.nr), (1_501, 501, 0));
}

#[test]
fn measuring_only_never_drops() {
    let (mut p, t0) = policer(Policy::Off);
    p.set_system(System {
        slr: 1.0,
        totals: Totals::default(),
    });
    for i in 0..2_000 {
        assert_eq!(p.admit(ip(1), i % 2 == 0, 1, at(t0, 1)), Ok(()));
    }
}

/// A sender that keeps its rate from one period to the next has its Th_cap stamps
/// spread over the whole stamping stretch of the next, from its first packets on,
/// judged by the last period's rate.
#[test]
fn last_periods_rate_spreads_the_stamps_over_the_next() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    let s = ip(1);
    let (first, _) = send(&mut p, t0, s, 20_000, (0, P));
    give_back(&mut p, t0, s, &first);
    let (next, dropped) = send(&mut p, t0, s, 20_000, (P, 2 * P));
    assert_eq!(dropped, 0);
    let in_first_second = next.iter().filter(|(_, ms)| *ms < P + 1_000).count();
    // 128 over 3 s at 5,000 packets a second: about a third in the first second.
    assert!((100..=128).contains(&next.len()), "{} stamps", next.len());
    assert!(
        (25..=60).contains(&in_first_second),
        "{in_first_second} in the first second"
    );
}

/// A new sender has no last period to judge by: its rate so far (over at least a tenth
/// of Th_rtt) spreads the stamps, so a flood does not spend Th_cap in its first moments.
#[test]
fn a_new_senders_stamps_spread_by_its_rate_so_far() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    let (stamps, _) = send(&mut p, t0, ip(1), 15_000, (0, 3_000));
    let early = stamps.iter().filter(|(_, ms)| *ms < 500).count();
    assert!(stamps.len() >= 100, "{} stamps", stamps.len());
    assert!(
        early <= 64,
        "{early} of {} in the first 500 ms",
        stamps.len()
    );
}

#[test]
fn a_sender_that_paces_its_first_packets_and_floods_the_rest_shows_its_loss() {
    // Each period: 200 packets in the first two seconds, all delivered; then 20,000 in
    // the third, of which the path beyond the mbox loses half. Stamps on the first
    // Th_cap packets only would show no loss at all.
    let (mut p, t0) = policer(Policy::NaturalShare);
    let s = ip(1);
    let mut losses = Vec::new();
    for k in 0..3 {
        let base = k * P;
        let (paced, _) = send(&mut p, t0, s, 200, (base, base + 2_000));
        give_back(&mut p, t0, s, &paced);
        let (flood, _) = send(&mut p, t0, s, 20_000, (base + 2_000, base + 3_000));
        let kept: Vec<_> = flood.iter().copied().step_by(2).collect();
        give_back(&mut p, t0, s, &kept);
        let r = row(&p, s);
        losses.push(1.0 - f64::from(r.returned) / f64::from(r.issued));
        p.on_timer(at(t0, base + P));
    }
    // Once its rate is known (second period on), the stamps spread over the flood.
    for loss in &losses[1..] {
        assert!(*loss > 0.3, "measured loss {losses:?}");
    }
}

/// A verified client back from an idle stretch whose packets all come after its
/// period's stamping stretch: none is stamped, and that period costs it nothing; the
/// next period passes its packets (best-effort, no delivery proven). Taken as a total
/// loss, it had an LLR of 0.2 and the next period dropped them all.
#[test]
fn packets_after_the_stamping_stretch_cost_a_verified_sender_nothing() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    let s = ip(1);
    let (ids, _) = send(&mut p, t0, s, 100, (0, 2_000));
    give_back(&mut p, t0, s, &ids);
    // The second period's stretch ends at P + 3,000 ms (Th_rtt 1 s).
    let (late, dropped) = send(&mut p, t0, s, 300, (P + 3_100, 2 * P - 10));
    assert_eq!((late.len(), dropped), (0, 0));
    let (_, dropped) = send(&mut p, t0, s, 300, (2 * P + 10, 2 * P + 900));
    assert_eq!(dropped, 0);
    let row = &p.report(1)[0];
    assert!(row.llr < 0.05 && row.verified, "{row:?}");
}

/// A sender the stamp budget refused (a spoofed flood's source: never verified, stamped
/// with none) is losing them all; one stamped once, the stamp never back, proves too
/// little to judge by.
#[test]
fn a_sender_the_stamp_budget_refused_has_a_period_of_total_loss() {
    let t0 = Instant::now();
    let settings = PoliceSettings {
        unverified_stamps_per_sec: 1,
        ..PoliceSettings::with_policy(Policy::NaturalShare)
    };
    let mut p = Policer::new(&CapSettings::default(), &settings, t0);
    // The one token banked goes to the first sender's first packet.
    let (once, _) = send(&mut p, t0, ip(1), 10, (0, 10));
    let (none, _) = send(&mut p, t0, ip(2), 10, (20, 30));
    assert_eq!((once.len(), none.len()), (1, 0));
    p.on_timer(at(t0, P + 50));
    let rows = p.report(10);
    let llr = |s: IpAddr| rows.iter().find(|r| r.address == s).unwrap().llr;
    assert_eq!(llr(ip(1)), 0.0);
    assert!(llr(ip(2)) > 0.05, "{rows:?}");
}

#[test]
fn stamps_on_unverified_senders_are_held_to_their_budget() {
    // A spoofed-source flood: 100,000 new sources in one second, one SYN each.
    let (mut p, t0) = policer(Policy::NaturalShare);
    let mut stamped = 0;
    for i in 0..100_000u32 {
        let now = at(t0, u64::from(i) / 100);
        p.admit(ip(i), true, 1, now).unwrap();
        stamped += u32::from(matches!(p.stamp(ip(i), 1, now, true), Stamp::Id(_)));
    }
    // One second's budget banked at start, one more earned over the second (999 ms).
    assert!((1_990..=2_000).contains(&stamped), "{stamped} stamps");
    assert_eq!(
        u64::from(stamped) + p.counters().stamps_over_budget,
        100_000
    );
}

#[test]
fn verified_senders_keep_their_state_through_a_spoofed_flood() {
    let t0 = Instant::now();
    let caps = CapSettings {
        max_senders: 1_000,
        ..CapSettings::default()
    };
    let mut p = Policer::new(
        &caps,
        &PoliceSettings::with_policy(Policy::NaturalShare),
        t0,
    );
    let real: Vec<IpAddr> = (0..10).map(|i| ip(1 << 30 | i)).collect();
    for &s in &real {
        let (ids, _) = send(&mut p, t0, s, 50, (0, 2_000));
        give_back(&mut p, t0, s, &ids);
    }
    // 200,000 spoofed sources, 100 times the table, none of them seen twice.
    for i in 0..200_000u32 {
        let now = at(t0, 2_000 + u64::from(i) / 100);
        let _ = p.admit(ip(i), true, 1, now);
    }
    for &s in &real {
        let r = row(&p, s);
        assert!(
            r.verified && r.returned > 0,
            "{s} kept its returned capabilities"
        );
    }
    assert_eq!(p.senders_held(), (1_000, 200_000 + 10 - 1_000));
}

#[test]
fn fair_share_caps_a_heavy_sender_at_the_average() {
    let (mut p, t0) = policer(Policy::FairShare);
    for (s, n) in [(ip(1), 300), (ip(2), 3_000)] {
        let (ids, _) = send(&mut p, t0, s, n, (0, 2_900));
        give_back(&mut p, t0, s, &ids);
    }
    // The worker merges its own figures (one worker here) before the periods close.
    p.on_timer(at(t0, P - 1));
    let f = p.on_timer(at(t0, P));
    p.set_system(System::merge([&f], 1));
    assert_eq!((f.totals.delivered, f.totals.active), (3_300, 2));
    // The next close splits 3,300 two ways.
    for s in [ip(1), ip(2)] {
        let (ids, _) = send(&mut p, t0, s, 100, (P, P + 2_900));
        give_back(&mut p, t0, s, &ids);
    }
    p.on_timer(at(t0, 2 * P));
    assert_eq!(row(&p, ip(2)).wr, 1_650);
    assert_eq!(row(&p, ip(1)).wr, 1_650);
}

#[test]
fn the_verified_set_follows_senders_in_and_out_of_the_table() {
    let t0 = Instant::now();
    let caps = CapSettings {
        max_senders: 1,
        ..CapSettings::default()
    };
    let mut p = Policer::new(
        &caps,
        &PoliceSettings::with_policy(Policy::NaturalShare),
        t0,
    );
    let (ids, _) = send(&mut p, t0, ip(1), 5, (0, 100));
    give_back(&mut p, t0, ip(1), &ids);
    let changes: Vec<_> = p.take_verified_changes().collect();
    assert_eq!(
        changes,
        [(ip(1), true)],
        "once, on its first returned capability"
    );
    // Evicted to make room: out of the set; an unverified sender evicted: no change.
    send(&mut p, t0, ip(2), 1, (200, 201));
    send(&mut p, t0, ip(3), 1, (300, 301));
    let changes: Vec<_> = p.take_verified_changes().collect();
    assert_eq!(changes, [(ip(1), false)]);
    // Verified, then expired after idle periods: leaves the set.
    let (ids, _) = send(&mut p, t0, ip(4), 5, (400, 500));
    give_back(&mut p, t0, ip(4), &ids);
    p.on_timer(at(t0, 10 * P));
    let changes: Vec<_> = p.take_verified_changes().collect();
    assert_eq!(changes, [(ip(4), true), (ip(4), false)]);
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Memory a tracked sender costs: `cargo test --release --lib -- --ignored
/// bytes_per_tracked_sender --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn bytes_per_tracked_sender() {
    const N: u32 = 1_000_000;
    let t0 = Instant::now();
    let caps = CapSettings {
        max_senders: N as usize,
        ..CapSettings::default()
    };
    let before = resident_bytes();
    let mut p = Policer::new(
        &caps,
        &PoliceSettings::with_policy(Policy::NaturalShare),
        t0,
    );
    for i in 0..N {
        let now = at(t0, u64::from(i) / 1_000);
        let _ = p.admit(ip(i), true, 1, now);
        let _ = p.stamp(ip(i), 1, now, true);
    }
    let after = resident_bytes();
    assert_eq!(p.senders_held().0, N as usize);
    eprintln!(
        "{N} senders: {} MB resident more, {} bytes per sender",
        (after - before) >> 20,
        (after - before) / u64::from(N)
    );
}

/// Eight senders whose periods close in the same tick, four sending 600 packets a
/// period and four 1,400, everything delivered: from the second close on, fair share
/// gives each the average, 1,000 (the totals count every sender's last period, also
/// those that closed a moment earlier or later in the same round).
#[test]
fn fair_share_gives_everyone_the_average_when_periods_close_together() {
    let (mut p, t0) = policer(Policy::FairShare);
    let mut windows = Vec::new();
    for tick in 0..(3 * P / 20) {
        let ms = tick * 20;
        let f = p.on_timer(at(t0, ms));
        p.set_system(System::merge([&f], 1));
        for s in 1..=8u32 {
            for k in 0..(if s <= 4 { 3 } else { 7 }) {
                let now = at(t0, ms + k * 2);
                if p.admit(ip(s), true, 1, now).is_ok()
                    && let Stamp::Id(id) = p.stamp(ip(s), 1, now, true)
                {
                    let issued_ms = (now - t0).as_millis() as u32;
                    let back = now + Duration::from_millis(10);
                    p.returned(ip(s), (id, issued_ms), true, back).unwrap();
                }
            }
        }
        if ms == 2 * P + 100 {
            windows = (1..=8).map(|s| row(&p, ip(s)).wr).collect();
        }
    }
    assert_eq!(windows, vec![1_000; 8]);
    let t = p.on_timer(at(t0, 3 * P - 1)).totals;
    assert_eq!((t.delivered, t.active), (8_000, 8));
}

/// A sender that delivered, evicted by a newcomer, takes its delivery out of the totals
/// the policies share.
#[test]
fn an_evicted_sender_leaves_the_totals() {
    let t0 = Instant::now();
    let caps = CapSettings {
        max_senders: 1,
        ..CapSettings::default()
    };
    let settings = PoliceSettings::with_policy(Policy::FairShare);
    let mut p = Policer::new(&caps, &settings, t0);
    let (ids, _) = send(&mut p, t0, ip(1), 100, (0, 2_900));
    give_back(&mut p, t0, ip(1), &ids);
    let t = p.on_timer(at(t0, P)).totals;
    assert_eq!((t.delivered, t.active), (100, 1));
    send(&mut p, t0, ip(2), 1, (P + 10, P + 11));
    let t = p.on_timer(at(t0, P + 20)).totals;
    assert_eq!((t.delivered, t.active), (0, 0));
}

/// The SLR counts from exactly `slr_sample` capabilities, summed over the workers.
#[test]
fn the_system_loss_rate_counts_from_its_sample_size() {
    let worker = |issued, returned| Figures {
        slr_issued: issued,
        slr_returned: returned,
        totals: Totals::default(),
    };
    let (a, b) = (worker(100, 60), worker(28, 4));
    assert_eq!(System::merge([&a, &b], 128).slr, 0.5);
    assert_eq!(System::merge([&a, &b], 129).slr, 0.0, "too few to tell");
    assert_eq!(System::merge([&worker(0, 0)], 0).slr, 0.0);
}

/// Each police drop has its own counter label.
#[test]
fn police_drops_have_distinct_labels() {
    let labels = [
        Drop::SenderLoss,
        Drop::SystemLoss,
        Drop::NonTcpCap,
        Drop::NonTcpSystemLoss,
    ]
    .map(|d| d.as_str());
    assert_eq!(
        labels,
        [
            "police_sender_loss",
            "police_system_loss",
            "police_non_tcp_cap",
            "police_non_tcp_system_loss"
        ]
    );
}

/// Best-effort packets are dropped while the sender's LLR is over its threshold, not
/// at it.
#[test]
fn a_sender_loss_rate_at_its_threshold_is_not_over_it() {
    let t0 = Instant::now();
    let beta = 0.8;
    // One period that lost every capability leaves an LLR of exactly (1 - beta) x 1.
    let llr_after_total_loss = (1.0 - beta) * 1.0;
    for (threshold, expect_drops) in [
        (llr_after_total_loss, false),
        (llr_after_total_loss * 0.99, true),
    ] {
        let settings = PoliceSettings {
            beta,
            llr_threshold: threshold,
            ..PoliceSettings::with_policy(Policy::NaturalShare)
        };
        let mut p = Policer::new(&CapSettings::default(), &settings, t0);
        let s = ip(1);
        send(&mut p, t0, s, 200, (0, P));
        // No capability came back: a window of 0, every packet best-effort.
        let (_, dropped) = send(&mut p, t0, s, 100, (P, P + 100));
        assert_eq!(
            dropped > 0,
            expect_drops,
            "threshold {threshold}: {dropped} dropped"
        );
    }
    // The same for the system's: at its threshold, best-effort still passes.
    let (mut p, t0) = policer(Policy::NaturalShare);
    p.set_system(System {
        slr: 0.05,
        totals: Totals::default(),
    });
    assert_eq!(p.admit(ip(2), false, 1, at(t0, 1)), Ok(()));
}

/// A GSO super-packet counts as the wire packets it stands for, and is privileged if
/// its first fits the window.
#[test]
fn a_super_packet_counts_as_its_segments() {
    let (mut p, t0) = policer(Policy::NaturalShare);
    let s = ip(1);
    let (first, _) = send(&mut p, t0, s, 400, (0, P));
    give_back(&mut p, t0, s, &first);
    p.on_timer(at(t0, P));
    // A window of 400 for the next period, all of it usable by its last moment.
    p.set_system(System {
        slr: 1.0,
        totals: Totals::default(),
    });
    let now = at(t0, 2 * P - 1);
    for _ in 0..39 {
        assert_eq!(p.admit(s, true, 10, now), Ok(()));
    }
    // 390 privileged: a super-packet of 20 starts within the window and overdraws it;
    // after it, nothing is privileged, and the system is losing.
    assert_eq!(p.admit(s, true, 20, now), Ok(()));
    assert_eq!(p.admit(s, true, 10, now), Err(Drop::SystemLoss));
    let r = row(&p, s);
    assert_eq!((r.nr, r.nd, r.wr), (420, 10, 400));
    assert_eq!(p.admit(s, false, 7, now), Err(Drop::NonTcpSystemLoss));
    let r = row(&p, s);
    assert_eq!((r.other, r.other_dropped), (7, 7));
}
