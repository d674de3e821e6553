//! The flood's guard, plan, packets, sources and pacing, without sending anything.

use std::collections::HashSet;

use super::*;
use crate::wire::{IpVersion, parse, tcp, verify_checksums};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn prefix(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn common(to: &str) -> Common {
    Common {
        to: ip(to),
        port: 9000,
        packets: 1000,
        seconds: 1.0,
        pps: None,
        rate: None,
        spoof: None,
        sources: None,
        from: None,
        on_ms: None,
        off_ms: None,
        batch: 64,
    }
}

/// A route lookup that answers like the testbed's attacker hosts would.
fn route(dst: IpAddr) -> Result<IpAddr> {
    Ok(if dst.is_ipv4() {
        ip("198.18.21.2")
    } else {
        ip("2001:2:0:21::2")
    })
}

fn plan(kind: Kind, c: &Common) -> Result<Plan> {
    Plan::new(kind, c, route)
}

fn err(r: Result<Plan>) -> String {
    format!("{:#}", r.expect_err("should be refused"))
}

#[test]
fn addresses_inside_the_benchmarking_ranges_pass_the_guard() {
    for a in [
        "198.18.0.0",
        "198.18.2.2",
        "198.19.255.255",
        "2001:2::",
        "2001:2::1",
        "2001:2:0:ffff:ffff:ffff:ffff:ffff",
    ] {
        check_address("destination", ip(a)).unwrap();
    }
}

#[test]
fn addresses_outside_the_benchmarking_ranges_are_refused() {
    for a in [
        "198.17.255.255",
        "198.20.0.0",
        "8.8.8.8",
        "10.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "2001:2:1::1",
        "2001:1:ffff::1",
        "2001:db8::1",
        "::1",
        "::ffff:198.18.2.2",
        "ff02::1",
    ] {
        let e = check_address("destination", ip(a)).unwrap_err().to_string();
        assert!(
            e.contains(&format!("destination {a} is outside"))
                && e.contains("198.18.0.0/15 and 2001:2::/48"),
            "{a}: {e}"
        );
    }
}

#[test]
fn prefixes_must_lie_wholly_inside_the_ranges() {
    for p in [
        "198.18.0.0/15",
        "198.19.0.0/16",
        "198.19.128.0/17",
        "198.18.2.2/32",
        "2001:2::/48",
        "2001:2:0:ff00::/56",
        "2001:2::1/128",
    ] {
        check_prefix("spoof prefix", &prefix(p)).unwrap();
    }
    for p in [
        "198.16.0.0/13",
        "0.0.0.0/0",
        "198.20.0.0/16",
        "10.0.0.0/8",
        "2001::/16",
        "2001:2::/47",
        "::/0",
        "2001:db8::/32",
    ] {
        let e = check_prefix("spoof prefix", &prefix(p))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("spoof prefix {p} is not inside")),
            "{e}"
        );
    }
}

#[test]
fn prefixes_parse_strictly() {
    assert_eq!(
        prefix("198.19.0.0/16"),
        Prefix {
            addr: ip("198.19.0.0"),
            len: 16
        }
    );
    for bad in [
        "198.19.0.0",
        "198.19.0.0/33",
        "198.19.1.0/16",
        "2001:2::/129",
        "2001:2::1/64",
        "x/8",
        "198.19.0.0/-1",
    ] {
        assert!(bad.parse::<Prefix>().is_err(), "{bad}");
    }
}

#[test]
fn bit_rates_take_the_usual_suffixes() {
    let r = |s: &str| s.parse::<BitRate>().unwrap().0;
    assert_eq!(r("100M"), 100e6);
    assert_eq!(r("100mbit"), 100e6);
    assert_eq!(r("1.5G"), 1.5e9);
    assert_eq!(r("50k"), 50e3);
    assert_eq!(r("2000000"), 2e6);
    for bad in ["0", "-5M", "fast", "M", "nan", "inf"] {
        assert!(bad.parse::<BitRate>().is_err(), "{bad}");
    }
}

#[test]
fn a_plan_refuses_destinations_and_spoof_prefixes_outside_the_ranges() {
    let e = err(plan(Kind::Syn, &common("8.8.8.8")));
    assert!(e.contains("destination 8.8.8.8 is outside"), "{e}");
    let e = err(plan(Kind::Udp(100), &common("2001:db8::1")));
    assert!(e.contains("destination 2001:db8::1 is outside"), "{e}");
    let mut c = common("198.18.2.2");
    c.spoof = Some(prefix("10.0.0.0/8"));
    let e = err(plan(Kind::Syn, &c));
    assert!(e.contains("spoof prefix 10.0.0.0/8 is not inside"), "{e}");
    let mut c = common("198.18.2.2");
    c.from = Some(ip("192.0.2.1"));
    let e = err(plan(Kind::Syn, &c));
    assert!(e.contains("source 192.0.2.1 is outside"), "{e}");
    // Families must agree.
    let mut c = common("198.18.2.2");
    c.spoof = Some(prefix("2001:2:0:ff00::/56"));
    assert!(err(plan(Kind::Syn, &c)).contains("differ in family"));
}

#[test]
fn a_plan_needs_real_bounds_and_sane_options() {
    let bad = |f: &dyn Fn(&mut Common), what: &str| {
        let mut c = common("198.18.2.2");
        f(&mut c);
        let e = err(plan(Kind::Udp(1400), &c));
        assert!(e.contains(what), "{what}: {e}");
    };
    bad(&|c| c.packets = 0, "--packets");
    bad(&|c| c.seconds = 0.0, "--seconds");
    bad(&|c| c.seconds = f64::NAN, "--seconds");
    bad(&|c| c.seconds = f64::INFINITY, "--seconds");
    bad(&|c| c.batch = 0, "--batch");
    bad(&|c| c.batch = 5000, "--batch");
    bad(&|c| c.pps = Some(0.0), "--pps");
    bad(
        &|c| {
            c.on_ms = Some(0);
            c.off_ms = Some(10);
        },
        "--on-ms",
    );
    bad(
        &|c| {
            c.spoof = Some(prefix("198.19.0.0/24"));
            c.sources = Some(257);
        },
        "holds only 256",
    );
    let e = err(plan(Kind::Udp(70_000), &common("198.18.2.2")));
    assert!(e.contains("--size"), "{e}");
}

#[test]
fn a_bit_rate_becomes_a_packet_rate_of_whole_ip_packets() {
    let mut c = common("198.18.2.2");
    c.rate = Some(BitRate(100e6));
    let p = plan(Kind::Udp(1400), &c).unwrap();
    assert_eq!(p.packet_len(), 1428);
    let pps = p.pps.unwrap();
    assert!((pps - 100e6 / (1428.0 * 8.0)).abs() < 1e-6, "{pps}");
    let mut c = common("2001:2:0:2::2");
    c.pps = Some(150_000.0);
    let p = plan(Kind::Syn, &c).unwrap();
    assert_eq!((p.packet_len(), p.pps), (64, Some(150_000.0)));
    assert!(matches!(p.sources, Sources::Fixed(a) if a == ip("2001:2:0:21::2")));
}

#[test]
fn spoofed_sources_are_distinct_inside_the_prefix_and_used_in_turn() {
    let mut c = common("198.18.2.2");
    c.spoof = Some(prefix("198.19.0.0/16"));
    let p = plan(Kind::Syn, &c).unwrap();
    assert_eq!(p.sources.count(), 65_536);
    let pre = prefix("198.19.0.0/16");
    let seen: HashSet<IpAddr> = (0..65_536).map(|i| p.sources.nth(i)).collect();
    assert_eq!(seen.len(), 65_536);
    assert!(seen.iter().all(|&a| pre.contains(a)));
    // The next round repeats the same order.
    assert!((0..1000).all(|i| p.sources.nth(i) == p.sources.nth(i + 65_536)));
    // Consecutive packets come from scattered addresses, not one /24 after another.
    let nets: HashSet<[u8; 3]> = (0..256)
        .map(|i| match p.sources.nth(i) {
            IpAddr::V4(a) => [a.octets()[0], a.octets()[1], a.octets()[2]],
            IpAddr::V6(_) => unreachable!(),
        })
        .collect();
    assert!(nets.len() > 100, "{}", nets.len());

    // Fewer sources than the prefix holds; and IPv6, where the prefix is huge.
    c.sources = Some(1000);
    let p = plan(Kind::Syn, &c).unwrap();
    let seen: HashSet<IpAddr> = (0..5000).map(|i| p.sources.nth(i)).collect();
    assert_eq!(seen.len(), 1000);
    let mut c = common("2001:2:0:2::2");
    c.spoof = Some(prefix("2001:2:0:ff00::/56"));
    let p = plan(Kind::Syn, &c).unwrap();
    assert_eq!(p.sources.count(), 65_536);
    let pre = prefix("2001:2:0:ff00::/56");
    let seen: HashSet<IpAddr> = (0..65_536).map(|i| p.sources.nth(i)).collect();
    assert_eq!(seen.len(), 65_536);
    assert!(seen.iter().all(|&a| pre.contains(a)));
    // A /32 is one source.
    let mut c = common("198.18.2.2");
    c.spoof = Some(prefix("198.19.7.7/32"));
    let p = plan(Kind::Syn, &c).unwrap();
    assert_eq!(p.sources.count(), 1);
    assert_eq!(p.sources.nth(12345), ip("198.19.7.7"));
}

/// Build packet `i` of a plan the way `run` does.
fn packet(p: &Plan, i: u64, sport: u16, seq: u32) -> Vec<u8> {
    let m = PacketMaker::new(p);
    let mut buf = m.template();
    m.write(&mut buf, p.sources.nth(i), sport, seq);
    buf
}

#[test]
fn syn_packets_parse_with_correct_checksums_over_ipv4_and_ipv6() {
    for (dst, spoof) in [
        ("198.18.2.2", "198.19.0.0/16"),
        ("2001:2:0:2::2", "2001:2:0:ff00::/56"),
    ] {
        let mut c = common(dst);
        c.port = 5201;
        c.spoof = Some(prefix(spoof));
        let p = plan(Kind::Syn, &c).unwrap();
        for (i, sport, seq) in [
            (0, 1024, 0),
            (1, 65535, u32::MAX),
            (777, 40_000, 0x1234_5678),
        ] {
            let buf = packet(&p, i, sport, seq);
            assert_eq!(buf.len(), p.packet_len());
            let parsed = parse(&buf).unwrap();
            assert_eq!(
                parsed.version,
                if dst.contains(':') {
                    IpVersion::V6
                } else {
                    IpVersion::V4
                }
            );
            assert_eq!(parsed.src, p.sources.nth(i));
            assert_eq!(parsed.dst, ip(dst));
            let t = parsed.tcp().unwrap();
            assert_eq!((t.src_port, t.dst_port, t.seq), (sport, 5201, seq));
            assert_eq!(t.flags, tcp::SYN);
            assert_eq!(crate::wire::tcp_mss(&buf, &parsed), Some(1460));
            assert!(verify_checksums(&buf, &parsed), "{dst} packet {i}");
        }
    }
}

#[test]
fn udp_packets_parse_with_correct_checksums_fixed_or_spoofed() {
    for dst in ["198.18.2.2", "2001:2:0:2::2"] {
        let c = common(dst);
        let p = plan(Kind::Udp(1400), &c).unwrap();
        let buf = packet(&p, 5, 0, 0);
        let parsed = parse(&buf).unwrap();
        assert_eq!(parsed.src, route(ip(dst)).unwrap());
        assert_eq!(parsed.udp().unwrap().dst_port, 9000);
        assert_eq!(parsed.payload_len, 1400);
        assert!(verify_checksums(&buf, &parsed));

        let mut c = common(dst);
        c.spoof = Some(prefix(if dst.contains(':') {
            "2001:2:0:ff00::/56"
        } else {
            "198.19.0.0/16"
        }));
        let p = plan(Kind::Udp(33), &c).unwrap();
        for i in [0, 1, 2, 65_535] {
            let buf = packet(&p, i, 0, 0);
            let parsed = parse(&buf).unwrap();
            assert_eq!(parsed.src, p.sources.nth(i));
            assert_eq!(parsed.payload_len, 33);
            assert!(verify_checksums(&buf, &parsed), "{dst} {i}");
        }
    }
}

#[test]
fn the_token_bucket_grants_its_rate_and_no_more_than_its_depth() {
    let t0 = Instant::now();
    let mut p = Pacer::new(1000.0, 20.0, 1.0, t0);
    assert_eq!(p.refill(t0), 1);
    p.take(1);
    assert_eq!(p.refill(t0 + Duration::from_millis(5)), 5);
    assert_eq!(p.wait_for(10), Duration::from_millis(5));
    p.take(5);
    // A long pause saves up no more than the depth.
    assert_eq!(p.refill(t0 + Duration::from_secs(10)), 20);
    p.take(20);
    assert_eq!(p.refill(t0 + Duration::from_secs(10)), 0);
    assert_eq!(p.wait_for(1), Duration::from_millis(1));
    // Over a simulated second it grants the rate.
    let mut p = Pacer::new(1000.0, 20.0, 0.0, t0);
    let mut granted = 0;
    for ms in 1..=1000 {
        let n = p.refill(t0 + Duration::from_micros(ms * 1000 + 1));
        p.take(n);
        granted += n;
    }
    assert!((999..=1001).contains(&granted), "{granted}");
    p.restart(t0, 3.0);
    assert_eq!(p.refill(t0), 3);
}

#[test]
fn an_on_off_flood_is_on_then_off_in_turn() {
    let (on, off) = (Duration::from_millis(1000), Duration::from_millis(1000));
    let ms = Duration::from_millis;
    assert_eq!(off_for(ms(0), on, off), None);
    assert_eq!(off_for(ms(999), on, off), None);
    assert_eq!(off_for(ms(1000), on, off), Some(ms(1000)));
    assert_eq!(off_for(ms(1500), on, off), Some(ms(500)));
    assert_eq!(off_for(ms(2000), on, off), None);
    assert_eq!(off_for(ms(3999), on, off), Some(ms(1)));
    assert_eq!(off_for(ms(5000), on, Duration::ZERO), None);
}

#[test]
fn the_summary_is_one_line_with_rate() {
    let s = Summary {
        kind: Kind::Syn,
        dst: ip("2001:2:0:2::2"),
        port: 5201,
        sources: 65_536,
        sent: 150_000,
        packet_len: 64,
        elapsed: Duration::from_secs(1),
        stopped_by: StoppedBy::Packets,
        blocked: 0,
    };
    assert_eq!(
        s.to_string(),
        "flood syn to [2001:2:0:2::2]:5201: sent 150000 packets of 64 bytes from 65536 sources \
         in 1.00 s (stopped by --packets): 150000 packets/s, 76.8 Mbit/s"
    );
}
