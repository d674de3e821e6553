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
