//! The forwarding rules' choices on addresses and draws.

use super::*;

fn by_source() -> ForwardRule {
    ForwardRule {
        port: 8080,
        default: 8082,
        branches: Branches::Source(vec![
            ("198.18.0.0/15".parse().unwrap(), 8081),
            ("198.18.1.0/24".parse().unwrap(), 8083),
            ("2001:2::/48".parse().unwrap(), 8084),
        ]),
    }
}

#[test]
fn a_source_rule_takes_the_longest_prefix_holding_the_client_else_the_default() {
    let r = by_source();
    let at = |a: &str| r.choose(a.parse().unwrap(), 0);
    assert_eq!(at("198.18.1.7"), 8083);
    assert_eq!(at("198.19.0.1"), 8081);
    assert_eq!(at("2001:2:0:1::2"), 8084);
    assert_eq!(at("203.0.113.1"), 8082);
    assert_eq!(r.outgoing(), [8082, 8081, 8083, 8084]);
}

#[test]
fn dice_split_connections_by_their_shares_and_leave_the_rest_to_the_default() {
    let r = ForwardRule {
        port: 9000,
        default: 9000,
        branches: Branches::Dice(vec![(30, 9001), (20, 9002)]),
    };
    let client: IpAddr = "198.18.1.2".parse().unwrap();
    assert_eq!(r.choose(client, 0), 9001);
    assert_eq!(r.choose(client, 29), 9001);
    assert_eq!(r.choose(client, 30), 9002);
    assert_eq!(r.choose(client, 49), 9002);
    assert_eq!(r.choose(client, 50), 9000);
    assert_eq!(r.choose(client, 99), 9000);
    // Over many SYNs the shares hold (each within 1.5 points of 100,000 draws), and a
    // connection kept on its own port leaves unmarked.
    let mut f = Forwarder::new(vec![r], 7);
    let mut unmarked = 0;
    for _ in 0..100_000 {
        unmarked += usize::from(f.syn(client, 9000).is_none());
    }
    let share =
        |to: u16| f.counts().iter().find(|c| c.to == to).unwrap().connections as f64 / 1000.0;
    for (to, want) in [(9001, 30.0), (9002, 20.0), (9000, 50.0)] {
        assert!((share(to) - want).abs() < 1.5, "{to}: {}", share(to));
    }
    assert_eq!(unmarked as f64 / 1000.0, share(9000));
}

#[test]
fn a_syn_to_a_rule_port_leaves_with_the_chosen_ports_mark_and_is_counted() {
    let mut f = Forwarder::new(vec![by_source()], 1);
    let client: IpAddr = "198.18.1.2".parse().unwrap();
    assert_eq!(f.syn(client, 8080), Some(0x4d50_0000 | 8083));
    assert_eq!(f.syn(client, 8081), None, "no rule for the port");
    let counted: Vec<(u16, u16, u64)> = f
        .counts()
        .iter()
        .map(|c| (c.port, c.to, c.connections))
        .collect();
    assert_eq!(
        counted,
        [
            (8080, 8082, 0),
            (8080, 8081, 0),
            (8080, 8083, 1),
            (8080, 8084, 0)
        ]
    );
}

mod meter {
    use std::time::{Duration, Instant};

    use crate::pipeline::Direction::{FromProtected, ToProtected};
    use crate::ports::meter::{HANDSHAKE_TIMEOUT, MAX_HALF_OPEN, MAX_PORTS, PortMeter};
    use crate::wire::build::Builder;
    use crate::wire::{self, tcp};

    const SERVER: &str = "198.18.2.2";

    fn segment(client: &str, cport: u16, port: u16, flags: u8, len: usize) -> Vec<u8> {
        Builder::tcp(
            client.parse().unwrap(),
            SERVER.parse().unwrap(),
            cport,
            port,
        )
        .flags(flags)
        .payload(&vec![0; len])
        .build()
    }

    fn count(m: &mut PortMeter, dir: crate::pipeline::Direction, pkt: &[u8], at: Instant) {
        let p = wire::parse(pkt).unwrap();
        m.packet(dir, &p, pkt.len(), at);
    }

    fn row(m: &PortMeter, port: u16) -> crate::ports::PortCounts {
        m.stats()
            .rows
            .iter()
            .find(|r| r.port == port)
            .unwrap()
            .counts
    }

    #[test]
    fn a_handshake_counts_from_the_first_syn_to_the_clients_ack() {
        let (mut m, t0) = (PortMeter::default(), Instant::now());
        let ms = |n| t0 + Duration::from_millis(n);
        count(
            &mut m,
            ToProtected,
            &segment("198.18.1.2", 4000, 80, tcp::SYN, 0),
            ms(0),
        );
        // A retransmitted SYN: the handshake began with the first.
        count(
            &mut m,
            ToProtected,
            &segment("198.18.1.2", 4000, 80, tcp::SYN, 0),
            ms(1000),
        );
        assert_eq!(row(&m, 80).half_open, 1);
        let reply = Builder::tcp(
            SERVER.parse().unwrap(),
            "198.18.1.2".parse().unwrap(),
            80,
            4000,
        )
        .flags(tcp::SYN | tcp::ACK)
        .build();
        count(&mut m, FromProtected, &reply, ms(1001));
        count(
            &mut m,
            ToProtected,
            &segment("198.18.1.2", 4000, 80, tcp::ACK, 0),
            ms(1003),
        );
        count(
            &mut m,
            ToProtected,
            &segment("198.18.1.2", 4000, 80, tcp::ACK | tcp::PSH, 100),
            ms(1004),
        );
        let c = row(&m, 80);
        assert_eq!(
            (c.established, c.handshake_us, c.half_open),
            (1, 1_003_000, 0)
        );
        assert_eq!((c.packets_in, c.packets_out), (4, 1));
        assert_eq!(c.bytes_in, 3 * 40 + 140);
        assert_eq!(c.bytes_out, reply.len() as u64);
    }

    #[test]
    fn reset_and_timed_out_handshakes_are_abandoned() {
        let (mut m, t0) = (PortMeter::default(), Instant::now());
        count(
            &mut m,
            ToProtected,
            &segment("198.18.1.2", 1, 80, tcp::SYN, 0),
            t0,
        );
        count(
            &mut m,
            ToProtected,
            &segment("198.18.1.2", 1, 80, tcp::RST, 0),
            t0,
        );
        count(
            &mut m,
            ToProtected,
            &segment("198.18.1.3", 2, 80, tcp::SYN, 0),
            t0,
        );
        m.expire(t0 + HANDSHAKE_TIMEOUT - Duration::from_millis(1));
        assert_eq!(row(&m, 80).half_open, 1);
        m.expire(t0 + HANDSHAKE_TIMEOUT);
        let c = row(&m, 80);
        assert_eq!((c.established, c.half_open, c.abandoned), (0, 0, 2));
    }

    #[test]
    fn the_meter_is_bounded_and_counts_what_it_does_not_follow() {
        let (mut m, t0) = (PortMeter::default(), Instant::now());
        for i in 0..MAX_HALF_OPEN + 3 {
            let client = format!("198.18.{}.{}", i / 250 % 250, i % 250 + 1);
            let pkt = segment(&client, (i / 62_500) as u16 + 1, 80, tcp::SYN, 0);
            count(&mut m, ToProtected, &pkt, t0);
        }
        let s = m.stats();
        assert_eq!(s.rows[0].counts.half_open, MAX_HALF_OPEN as u64);
        assert_eq!(s.untracked, 3);
        for port in 1..=MAX_PORTS as u16 + 2 {
            count(
                &mut m,
                ToProtected,
                &segment("198.18.1.2", 9, port, tcp::ACK, 0),
                t0,
            );
        }
        let s = m.stats();
        assert_eq!((s.rows.len(), s.other_ports), (MAX_PORTS, 2));
    }
}

mod groups {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::ports::{Admit, GroupKind, GroupSpec, Groups, Over};

    fn one(kind: GroupKind, over: Over) -> (Groups, Instant) {
        let t0 = Instant::now();
        (Groups::new(&[GroupSpec { kind, over }], t0), t0)
    }

    #[test]
    fn an_accept_rate_passes_its_burst_then_one_connection_per_interval() {
        let (g, t0) = one(
            GroupKind::AcceptRate {
                port: 80,
                rate: 10.0,
                burst: 2.0,
            },
            Over::Refuse,
        );
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!([g.syn(80, ms(0)), g.syn(80, ms(0))], [Admit::Pass; 2]);
        assert_eq!(g.syn(80, ms(1)), Admit::Refuse);
        assert_eq!(
            g.syn(81, ms(1)),
            Admit::Pass,
            "another port is not in the group"
        );
        assert_eq!(g.syn(80, ms(100)), Admit::Pass);
        assert_eq!(g.syn(80, ms(101)), Admit::Refuse);
        let r = &g.rows()[0];
        assert_eq!((r.what.as_str(), r.port), ("accept", 80));
        assert_eq!(
            (r.counts.passed, r.counts.refused, r.counts.held),
            (3, 2, 0)
        );
    }

    #[test]
    fn a_ratio_gives_each_port_its_share_of_the_rate() {
        let kind = GroupKind::AcceptRatio {
            ports: vec![(80, 2), (81, 1)],
            rate: 30.0,
            burst: 3.0,
        };
        let (g, t0) = one(kind, Over::Hold);
        let mut passed = [0u32; 2];
        // Both ports flooded with a SYN a millisecond for 10 s.
        for i in 0..10_000 {
            let at = t0 + Duration::from_millis(i);
            for (n, port) in [80, 81].into_iter().enumerate() {
                passed[n] += u32::from(g.syn(port, at) == Admit::Pass);
            }
        }
        // Each its part of the burst (2 and 1) at once, then 20 and 10 a second over
        // the 9.999 s that follow.
        assert_eq!(passed, [2 + 199, 1 + 99]);
        assert_eq!(g.rows()[1].counts.held, 10_000 - 100);
    }

    #[test]
    fn an_output_rate_meters_payload_bytes_and_holds_what_is_over() {
        let kind = GroupKind::OutputRate {
            port: 80,
            rate: 1_000_000.0,
            burst: 100_000.0,
            ftp: false,
        };
        let (g, t0) = one(kind, Over::Hold);
        assert_eq!(g.sent(80, 0, t0), Admit::Pass, "an ACK without payload");
        assert_eq!(g.sent(80, 64_000, t0), Admit::Pass);
        assert_eq!(g.sent(80, 64_000, t0), Admit::Hold);
        assert_eq!(g.sent(80, 30_000, t0), Admit::Pass);
        // 64 ms later, 64,000 bytes more have come due.
        assert_eq!(
            g.sent(80, 64_000, t0 + Duration::from_millis(64)),
            Admit::Pass
        );
        assert_eq!(
            g.syn(80, t0),
            Admit::Pass,
            "new connections are not its business"
        );
        let r = &g.rows()[0];
        assert_eq!(
            (r.what.as_str(), r.counts.passed, r.counts.held),
            ("output", 3, 1)
        );
    }

    #[test]
    fn workers_share_one_quota() {
        let (g, t0) = one(
            GroupKind::AcceptRate {
                port: 80,
                rate: 1000.0,
                burst: 50.0,
            },
            Over::Hold,
        );
        let g = Arc::new(g);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    (0..10_000).filter(|_| g.syn(80, t0) == Admit::Pass).count()
                })
            })
            .collect();
        let passed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(passed, 50, "the burst, once, whichever worker took it");
    }
}

mod changes {
    use std::net::IpAddr;
    use std::time::Instant;

    use crate::ports::{
        Admit, Branches, ForwardRule, Forwarder, GroupKind, GroupSpec, Groups, Over,
    };

    #[test]
    fn a_groups_change_keeps_the_state_of_the_groups_it_leaves_alone() {
        let spec = |rate: f64| GroupSpec {
            kind: GroupKind::AcceptRate {
                port: 80,
                rate,
                burst: 1.0,
            },
            over: Over::Hold,
        };
        let t0 = Instant::now();
        let g = Groups::new(&[spec(1.0), spec(2.0)], t0);
        assert_eq!([g.syn(80, t0), g.syn(80, t0)], [Admit::Pass, Admit::Hold]);
        // Group 1 kept (its quota spent, its counts), group 2 replaced, group 7 added.
        let changed = g.changed(vec![(1, spec(1.0)), (2, spec(3.0)), (7, spec(9.0))]);
        let rows: Vec<(u32, u64, u64)> = changed
            .rows()
            .iter()
            .map(|r| (r.id, r.counts.passed, r.counts.held))
            .collect();
        assert_eq!(rows, [(1, 1, 1), (2, 0, 0), (7, 0, 0)]);
        assert_eq!(
            changed.syn(80, t0),
            Admit::Hold,
            "group 1's quota is still spent"
        );
        assert_eq!(changed.specs()[1], (2, spec(3.0)));
    }

    #[test]
    fn new_forwarding_rules_keep_the_counts_of_the_ports_they_still_send_to() {
        let rule = |default| ForwardRule {
            port: 80,
            default,
            branches: Branches::Source(Vec::new()),
        };
        let mut f = Forwarder::new(vec![rule(81)], 1);
        let client: IpAddr = "198.18.1.2".parse().unwrap();
        f.syn(client, 80);
        f.set_rules(vec![
            rule(82),
            ForwardRule {
                port: 90,
                ..rule(81)
            },
        ]);
        let counts: Vec<(u16, u16, u64)> = f
            .counts()
            .iter()
            .map(|c| (c.port, c.to, c.connections))
            .collect();
        assert_eq!(counts, [(80, 82, 0), (90, 81, 0)]);
        f.set_rules(vec![rule(81)]);
        assert_eq!(f.syn(client, 80), Some(crate::ports::mark(81)));
        assert_eq!(
            f.counts()[0].connections,
            1,
            "counted afresh: the pair was dropped between"
        );
    }

    #[test]
    fn rules_and_groups_read_back_from_their_inline_tables() {
        let protected = ["8080".parse().unwrap(), "9000-9100".parse().unwrap()];
        for t in [
            "{ port = 8080, default = 8082 }",
            "{ port = 8080, default = 8082, source = [{ from = \"198.18.1.0/24\", to = 8081 }] }",
            "{ port = 9000, default = 9001, dice = [{ percent = 30, to = 9002 }] }",
            "{ port = 8080, default = 8082, content = [{ pattern = 'GET /\"api\"', to = 8081 }, { hex = \"160301\", to = 8443 }] }",
        ] {
            let r = crate::config::parse_forward(t, &protected, true).unwrap();
            assert_eq!(r.inline(), t);
        }
        for t in [
            "{ accept_rate = 5, port = 8080, burst = 2, over = \"refuse\" }",
            "{ accept_ratio = 30, ports = [{ port = 8080, share = 2 }, { port = 9000, share = 1 }], burst = 30, over = \"hold\" }",
            "{ output_rate = 1000000, port = 9050, burst = 100000, over = \"hold\" }",
            "{ output_rate = 400000, port = 9021, burst = 65536, ftp = true, over = \"hold\" }",
        ] {
            let g = crate::config::parse_group(t, &protected).unwrap();
            assert_eq!(g.inline(), t);
        }
        let e = crate::config::parse_forward("{ port = 7, default = 8 }", &protected, true)
            .unwrap_err();
        assert!(
            e.to_string().contains("7 is not in protect.tcp_ports"),
            "{e}"
        );
        let e = crate::config::parse_group("port = 8080", &protected).unwrap_err();
        assert!(e.to_string().contains("not a TOML inline table"), "{e}");
    }
}

/// The dice are SplitMix64: the reference generator's outputs (its first for seed 0 is
/// 0xe220a8397b1dcdaf), taken mod 100.
#[test]
fn the_dice_draw_splitmix64() {
    let mut state = 0u64;
    assert_eq!(
        super::roll(&mut state),
        (0xe220_a839_7b1d_cdaf_u64 % 100) as u8
    );
    let mut state = 1_234_567u64;
    let draws: Vec<u8> = (0..5).map(|_| super::roll(&mut state)).collect();
    assert_eq!(draws, [17, 73, 23, 31, 21]);
}
