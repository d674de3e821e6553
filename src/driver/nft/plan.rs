//! Map a role and a selection to the chains and rules that queue its traffic.
//!
//! Invariants: every chain is a filter base chain in table `mpolice`; each chain holds one
//! rule per (prefix, protocol, port range), in selection order (TCP before UDP).

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
            // Client traffic is stamped after conntrack has tracked it.
            chain(
                "to_victim",
                Hook::Forward,
                PRIO_FILTER,
                "mbox: client traffic to the protected server, stamped here",
                Field::Dst,
                sel,
                q,
            ),
            // Feedback trailers are stripped before conntrack judges the longer segment.
            chain(
                "from_victim",
                Hook::Prerouting,
                PRIO_RAW,
                "mbox: protected server replies, feedback stripped before conntrack",
                Field::Src,
                sel,
                q,
            ),
        ],
        // The host's own traffic (health checks over loopback) never crossed an mbox.
        Role::Victim => vec![
            // Trailers are stripped before conntrack and TCP see the segment.
            skip_loopback(
                chain(
                    "inbound",
                    Hook::Prerouting,
                    PRIO_RAW,
                    "victim: stamped traffic, trailer stripped before conntrack",
                    Field::Dst,
                    sel,
                    q,
                ),
                Field::Src,
            ),
            // Conntrack's output hook (-200) has run, so it never sees the appended feedback.
            skip_loopback(
                chain(
                    "outbound",
                    Hook::Postrouting,
                    PRIO_FILTER,
                    "victim: replies, feedback appended after conntrack",
                    Field::Src,
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
        "redirect_in",
        Hook::Prerouting,
        PRIO_RAW,
        "mbox: clients' packets to a redirect address, readdressed to the victim before routing",
        Field::Dst,
        listen,
        q,
    ));
    spec.chains.push(chain(
        "redirect_out",
        Hook::Forward,
        PRIO_FILTER,
        "mbox: redirected victims' replies, answered in the redirect address's name",
        Field::Src,
        victims,
        q,
    ));
}

/// Add the victim's tunnel chain: IP-in-UDP to the protected addresses (`tunnel` holds
/// them with the tunnel port), queued ahead of the inbound chain, which then queues the
/// unwrapped packet like any other.
pub fn add_tunnel_chain(spec: &mut RulesetSpec, tunnel: &Selection, q: &QueueTarget) {
    spec.chains.push(chain(
        "tunnel_in",
        Hook::Prerouting,
        PRIO_RAW - 10,
        "victim: IP-in-UDP from the mbox, unwrapped before conntrack",
        Field::Dst,
        tunnel,
        q,
    ));
}

/// Add the mbox's chain for the victim's feedback datagrams in tunnel mode: UDP to the
/// mbox's tunnel addresses and port (`feedback` holds them), queued before conntrack;
/// the engine counts them and consumes them.
pub fn add_feedback_chain(spec: &mut RulesetSpec, feedback: &Selection, q: &QueueTarget) {
    spec.chains.push(chain(
        "tunnel_feedback",
        Hook::Prerouting,
        PRIO_RAW,
        "mbox: the victim's feedback datagrams to the tunnel port, counted and consumed",
        Field::Dst,
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

/// Build one chain matching the protected side on `side` (Dst: towards it, Src: from it).
fn chain(
    name: &str,
    hook: Hook,
    priority: i32,
    comment: &str,
    side: Field,
    sel: &Selection,
    q: &QueueTarget,
) -> ChainSpec {
    let ports = [(Proto::Tcp, &sel.tcp_ports), (Proto::Udp, &sel.udp_ports)];
    let mut rules = Vec::new();
    for prefix in &sel.addresses {
        for (proto, ranges) in ports {
            for range in ranges {
                let dir = match side {
                    Field::Dst => "to",
                    Field::Src => "from",
                };
                rules.push(RuleSpec {
                    prefix: *prefix,
                    addr_field: side,
                    l4: L4Match::Ports {
                        proto,
                        field: side,
                        ports: *range,
                    },
                    skip_loopback: None,
                    queue: *q,
                    comment: format!(
                        "mpolice {name}: {} {dir} {prefix} port {range}",
                        proto.keyword()
                    ),
                });
            }
        }
    }
    ChainSpec {
        name: name.to_owned(),
        hook,
        priority,
        comment: comment.to_owned(),
        rules,
    }
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
            L4Match::IcmpType(_) => None,
        }
    }

    const Q: QueueTarget = QueueTarget {
        first: 0,
        count: 2,
        bypass: true,
        fanout: false,
    };

    #[test]
    fn mbox_chains() {
        let spec = plan(Role::Mbox, &selection(), &Q);
        assert_eq!(spec.table, "mpolice");
        let shape: Vec<_> = spec
            .chains
            .iter()
            .map(|c| (c.name.as_str(), c.hook, c.priority, c.rules.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("to_victim", Hook::Forward, 0, 6),
                ("from_victim", Hook::Prerouting, -300, 6)
            ]
        );
        assert!(
            spec.chains[0]
                .rules
                .iter()
                .all(|r| r.addr_field == Field::Dst && port_field(r) == Some(Field::Dst))
        );
        assert!(
            spec.chains[1]
                .rules
                .iter()
                .all(|r| r.addr_field == Field::Src && port_field(r) == Some(Field::Src))
        );
    }

    #[test]
    fn victim_chains() {
        let spec = plan(Role::Victim, &selection(), &Q);
        let shape: Vec<_> = spec
            .chains
            .iter()
            .map(|c| (c.name.as_str(), c.hook, c.priority, c.rules.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("inbound", Hook::Prerouting, -300, 6),
                ("outbound", Hook::Postrouting, 0, 6)
            ]
        );
        assert!(
            spec.chains[0]
                .rules
                .iter()
                .all(|r| r.addr_field == Field::Dst)
        );
        assert!(
            spec.chains[1]
                .rules
                .iter()
                .all(|r| port_field(r) == Some(Field::Src))
        );
    }

    #[test]
    fn rule_order_and_queue() {
        let spec = plan(Role::Victim, &selection(), &Q);
        let rules = &spec.chains[0].rules;
        let order: Vec<_> = rules
            .iter()
            .map(|r| match r.l4 {
                L4Match::Ports { proto, ports, .. } => {
                    (r.prefix.to_string(), proto, ports.to_string())
                }
                L4Match::IcmpType(_) => unreachable!("no ICMP rule in these chains"),
            })
            .collect();
        assert_eq!(order[0], ("198.18.2.2".into(), Proto::Tcp, "80".into()));
        assert_eq!(order[2], ("198.18.2.2".into(), Proto::Udp, "5201".into()));
        assert_eq!(
            order[4],
            ("2001:2:0:2::/64".into(), Proto::Tcp, "8000-8100".into())
        );
        assert!(rules.iter().all(|r| r.queue == Q && !r.comment.is_empty()));
        assert_eq!(
            rules[0].comment,
            "mpolice inbound: tcp to 198.18.2.2 port 80"
        );
    }

    #[test]
    fn empty_selection_gives_empty_chains() {
        let spec = plan(Role::Mbox, &Selection::default(), &Q);
        assert_eq!(spec.chains.len(), 2);
        assert!(spec.chains.iter().all(|c| c.rules.is_empty()));
    }
}
