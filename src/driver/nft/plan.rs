//! Map a role and a selection to the chains and rules that queue its traffic.
//!
//! Invariants: every chain is a filter base chain in table `mpolice`. The mbox's
//! `to_victim` holds one rule per prefix, for every protocol; the other chains one rule
//! per (prefix, protocol, port range), in selection order (TCP before UDP), or per ICMP
//! error type.

use super::spec::{
    ChainSpec, Field, Hook, L4Match, Prefix, Proto, QueueTarget, Role, RuleSpec, RulesetSpec,
    Selection,
};

/// Name of the table all our chains live in (family inet).
pub const TABLE: &str = "mpolice";

/// Priority of the raw hook slot: ahead of conntrack (-200).
const PRIO_RAW: i32 = -300;
/// Priority of the filter slot: after conntrack has seen the packet.
const PRIO_FILTER: i32 = 0;

/// Return the ruleset that queues `role`'s traffic for the protected selection.
pub fn plan(role: Role, sel: &Selection, q: &QueueTarget) -> RulesetSpec {
    let chains = match role {
        Role::Mbox => vec![
            // Client traffic is stamped after conntrack has tracked it; policing sees all
            // of it, whatever the protocol or port.
            chain(
                base(
                    "to_victim",
                    Hook::Forward,
                    PRIO_FILTER,
                    "mbox: all client traffic to the protected server, policed and stamped here",
                ),
                Field::Dst,
                Upper::Any,
                sel,
                q,
            ),
            // Feedback trailers are stripped before conntrack judges the longer segment.
            chain(
                base(
                    "from_victim",
                    Hook::Prerouting,
                    PRIO_RAW,
                    "mbox: protected server replies, feedback stripped before conntrack",
                ),
                Field::Src,
                Upper::Ports,
                sel,
                q,
            ),
        ],
        // The host's own traffic (health checks over loopback) never crossed an mbox.
        Role::Victim => vec![
            // Trailers are stripped before conntrack and TCP see the segment.
            skip_loopback(
                chain(
                    base(
                        "inbound",
                        Hook::Prerouting,
                        PRIO_RAW,
                        "victim: stamped traffic, trailer stripped before conntrack",
                    ),
                    Field::Dst,
                    Upper::Ports,
                    sel,
                    q,
                ),
                Field::Src,
            ),
            // Conntrack's output hook (-200) has run, so it never sees the appended feedback.
            skip_loopback(
                chain(
                    base(
                        "outbound",
                        Hook::Postrouting,
                        PRIO_FILTER,
                        "victim: replies, feedback appended after conntrack",
                    ),
                    Field::Src,
                    Upper::Ports,
                    sel,
                    q,
                ),
                Field::Dst,
            ),
        ],
    };
    RulesetSpec {
        table: TABLE.to_owned(),
        role,
        chains,
    }
}

/// Add the mbox's redirect chains: clients' packets to the addresses in `listen`,
/// queued before routing so the engine can readdress them to the victim; and the
/// victims' replies, queued after routing (a local source address before routing would
/// be a martian) so the engine can answer in the listen address's name.
pub fn add_redirect_chains(
    spec: &mut RulesetSpec,
    listen: &Selection,
    victims: &Selection,
    q: &QueueTarget,
) {
    spec.chains.push(chain(
        base(
            "redirect_in",
            Hook::Prerouting,
            PRIO_RAW,
            "mbox: clients' packets to a redirect address, readdressed to the victim before routing",
        ),
        Field::Dst,
        Upper::Ports,
        listen,
        q,
    ));
    spec.chains.push(chain(
        base(
            "redirect_out",
            Hook::Forward,
            PRIO_FILTER,
            "mbox: redirected victims' replies, answered in the redirect address's name",
        ),
        Field::Src,
        Upper::Ports,
        victims,
        q,
    ));
}

/// Add the victim's tunnel chain: IP-in-UDP to the protected addresses (`tunnel` holds
/// them with the tunnel port), queued ahead of the inbound chain, which then queues the
/// unwrapped packet like any other.
pub fn add_tunnel_chain(spec: &mut RulesetSpec, tunnel: &Selection, q: &QueueTarget) {
    spec.chains.push(chain(
        base(
            "tunnel_in",
            Hook::Prerouting,
            PRIO_RAW - 10,
            "victim: IP-in-UDP from the mbox, unwrapped before conntrack",
        ),
        Field::Dst,
        Upper::Ports,
        tunnel,
        q,
    ));
}

/// Add the mbox's chain for the victim's feedback datagrams in tunnel mode: UDP to the
/// mbox's tunnel addresses and port (`feedback` holds them), queued before conntrack;
/// the engine counts them and consumes them.
pub fn add_feedback_chain(spec: &mut RulesetSpec, feedback: &Selection, q: &QueueTarget) {
    spec.chains.push(chain(
        base(
            "tunnel_feedback",
            Hook::Prerouting,
            PRIO_RAW,
            "mbox: the victim's feedback datagrams to the tunnel port, counted and consumed",
        ),
        Field::Dst,
        Upper::Ports,
        feedback,
        q,
    ));
}

/// Add the mbox's chain for forwarded ICMP and ICMPv6 errors: they quote the packet at
/// fault, and the engine cuts a stamp's capability out of the quote before the client
/// gets it. Queued after routing, like the stamped packets they answer.
pub fn add_icmp_error_chain(spec: &mut RulesetSpec, q: &QueueTarget) {
    let mut rules = Vec::new();
    for (family, any) in [("ip", "0.0.0.0/0"), ("ip6", "::/0")] {
        let v6 = family == "ip6";
        for &kind in crate::wire::icmp::error_types(v6) {
            rules.push(RuleSpec {
                prefix: any.parse::<Prefix>().expect("a valid zero-length prefix"),
                addr_field: Field::Dst,
                l4: L4Match::IcmpType(kind),
                skip_loopback: None,
                queue: *q,
                comment: format!(
                    "mpolice icmp_errors: {} type {kind}",
                    if v6 { "icmpv6" } else { "icmp" }
                ),
            });
        }
    }
    spec.chains.push(ChainSpec {
        name: "icmp_errors".to_owned(),
        hook: Hook::Forward,
        priority: PRIO_FILTER,
        comment: "mbox: forwarded ICMP errors, capabilities cut out of what they quote".to_owned(),
        rules,
    });
}

/// Make every rule of `c` leave alone what arrives on loopback (`Src`) or leaves by it
/// (`Dst`).
fn skip_loopback(mut c: ChainSpec, side: Field) -> ChainSpec {
    for r in &mut c.rules {
        r.skip_loopback = Some(side);
    }
    c
}

/// What a chain matches above IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upper {
    /// The selection's TCP and UDP port ranges (on the protected side).
    Ports,
    /// Every protocol: one rule per prefix.
    Any,
}

/// Return an empty base chain.
fn base(name: &str, hook: Hook, priority: i32, comment: &str) -> ChainSpec {
    ChainSpec {
        name: name.to_owned(),
        hook,
        priority,
        comment: comment.to_owned(),
        rules: Vec::new(),
    }
}

/// Fill chain `c` with rules matching the protected side on `side` (Dst: towards it,
/// Src: from it).
fn chain(
    mut c: ChainSpec,
    side: Field,
    upper: Upper,
    sel: &Selection,
    q: &QueueTarget,
) -> ChainSpec {
    let name = c.name.clone();
    let dir = match side {
        Field::Dst => "to",
        Field::Src => "from",
    };
    let rule = |prefix: Prefix, l4: L4Match, comment: String| RuleSpec {
        prefix,
        addr_field: side,
        l4,
        skip_loopback: None,
        queue: *q,
        comment,
    };
    let rules = &mut c.rules;
    for prefix in &sel.addresses {
        if upper == Upper::Any {
            let comment = format!("mpolice {name}: any protocol {dir} {prefix}");
            rules.push(rule(*prefix, L4Match::Any, comment));
            continue;
        }
        for (proto, ranges) in [(Proto::Tcp, &sel.tcp_ports), (Proto::Udp, &sel.udp_ports)] {
            for range in ranges {
                let l4 = L4Match::Ports {
                    proto,
                    field: side,
                    ports: *range,
                };
                let comment = format!(
                    "mpolice {name}: {} {dir} {prefix} port {range}",
                    proto.keyword()
                );
                rules.push(rule(*prefix, l4, comment));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection() -> Selection {
        Selection {
            addresses: vec![
                "198.18.2.2".parse().unwrap(),
                "2001:2:0:2::/64".parse().unwrap(),
            ],
            tcp_ports: vec!["80".parse().unwrap(), "8000-8100".parse().unwrap()],
            udp_ports: vec!["5201".parse().unwrap()],
        }
    }

    fn port_field(r: &RuleSpec) -> Option<Field> {
        match r.l4 {
            L4Match::Ports { field, .. } => Some(field),
            L4Match::IcmpType(_) | L4Match::Any => None,
        }
    }

    const Q1: QueueTarget = QueueTarget {
        first: 0,
        count: 1,
        bypass: true,
        fanout: false,
    };

    fn shape(spec: &RulesetSpec) -> Vec<(&str, Hook, i32, usize)> {
        spec.chains
            .iter()
            .map(|c| (c.name.as_str(), c.hook, c.priority, c.rules.len()))
            .collect()
    }

    #[test]
    fn mbox_chains() {
        let spec = plan(Role::Mbox, &selection(), &Q1);
        assert_eq!(spec.table, "mpolice");
        assert_eq!(
            shape(&spec),
            [
                ("to_victim", Hook::Forward, 0, 2),
                ("from_victim", Hook::Prerouting, -300, 6)
            ]
        );
        // Everything to a protected prefix, whatever the protocol and port.
        assert!(
            spec.chains[0]
                .rules
                .iter()
                .all(|r| r.addr_field == Field::Dst && r.l4 == L4Match::Any)
        );
        assert_eq!(
            spec.chains[0].rules[1].comment,
            "mpolice to_victim: any protocol to 2001:2:0:2::/64"
        );
        assert!(
            spec.chains[1]
                .rules
                .iter()
                .all(|r| r.addr_field == Field::Src && port_field(r) == Some(Field::Src))
        );
        assert!(spec.chains.iter().all(|c| {
            c.rules
                .iter()
                .all(|r| r.queue == Q1 && r.skip_loopback.is_none())
        }));
    }

    #[test]
    fn victim_chains() {
        let spec = plan(Role::Victim, &selection(), &Q1);
        assert_eq!(
            shape(&spec),
            [
                ("inbound", Hook::Prerouting, -300, 6),
                ("outbound", Hook::Postrouting, 0, 6)
            ]
        );
        assert!(spec.chains[0].rules.iter().all(|r| {
            r.addr_field == Field::Dst
                && port_field(r) == Some(Field::Dst)
                && r.skip_loopback == Some(Field::Src)
        }));
        assert!(spec.chains[1].rules.iter().all(|r| {
            r.addr_field == Field::Src
                && port_field(r) == Some(Field::Src)
                && r.skip_loopback == Some(Field::Dst)
        }));
    }

    #[test]
    fn rule_order_and_queue() {
        let spec = plan(Role::Victim, &selection(), &Q1);
        let rules = &spec.chains[0].rules;
        let order: Vec<_> = rules
            .iter()
            .map(|r| match r.l4 {
                L4Match::Ports { proto, ports, .. } => {
                    (r.prefix.to_string(), proto, ports.to_string())
                }
                _ => unreachable!("only port rules in these chains"),
            })
            .collect();
        assert_eq!(order[0], ("198.18.2.2".into(), Proto::Tcp, "80".into()));
        assert_eq!(order[2], ("198.18.2.2".into(), Proto::Udp, "5201".into()));
        assert_eq!(
            order[4],
            ("2001:2:0:2::/64".into(), Proto::Tcp, "8000-8100".into())
        );
        assert!(rules.iter().all(|r| r.queue == Q1 && !r.comment.is_empty()));
        assert_eq!(
            rules[0].comment,
            "mpolice inbound: tcp to 198.18.2.2 port 80"
        );
    }

    #[test]
    fn empty_selection_gives_empty_chains() {
        let spec = plan(Role::Mbox, &Selection::default(), &Q1);
        assert_eq!(spec.chains.len(), 2);
        assert!(spec.chains.iter().all(|c| c.rules.is_empty()));
    }
}
