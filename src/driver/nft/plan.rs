//! Map a role and a selection to the chains and rules that queue its traffic.
//!
//! Invariants: every chain is a filter base chain in table `mpolice`. The mbox's
//! `to_victim` holds one rule per prefix, for every protocol; the other chains one rule
//! per (prefix, protocol, port range), in selection order (TCP before UDP), or per ICMP
//! error type. With several queues (and no CPU fanout) each of those rules becomes one
//! rule per queue, in queue order, matching `jhash(client address) mod count` with the
//! same seed and modulus in every chain, so every packet of one sender, in either
//! direction and of any protocol, goes to the same queue.

use crate::trace::Filter;

use super::spec::{
    Action, ChainSpec, ChannelStep, ClientHash, Field, Hook, L4Match, PortRange, Prefix, Proto,
    QueueTarget, Role, RuleSpec, RulesetSpec, Selection, UnverifiedChannel, UnverifiedLimits,
};

/// Name of the table all our chains live in (family inet).
pub const TABLE: &str = "mpolice";

/// Seed of the client hash, the same in every rule (and every run, so `rules show` prints
/// what `install` installs).
pub const CLIENT_HASH_SEED: u32 = 0x6d70_6f6c;

/// Priority of the raw hook slot: ahead of conntrack (-200).
const PRIO_RAW: i32 = -300;
/// Priority of the filter slot: after conntrack has seen the packet.
const PRIO_FILTER: i32 = 0;
/// After source NAT (100): a reply of a forwarded connection has its port back.
const PRIO_AFTER_SRCNAT: i32 = 150;

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
            // Conntrack's output hook (-200) has run, so it never sees the appended feedback;
            // so has source NAT (100), so the replies of a forwarded connection carry the
            // port the client connected to again.
            skip_loopback(
                chain(
                    base(
                        "outbound",
                        Hook::Postrouting,
                        PRIO_AFTER_SRCNAT,
                        "victim: replies, feedback appended after conntrack and source NAT",
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
        channel: None,
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

/// Tracing's kernel path: mark every packet to or from a protected address that the
/// trace's filter selects (protocol, a host and a port at either end), as it arrives
/// (prerouting) or as this host sends it (output), before any other chain, so the
/// kernel reports each rule it meets (`meta nftrace`) to the trace's listener. The
/// filter's `sample` is the engine's own: the kernel marks every match.
pub fn add_trace_chains(
    spec: &mut RulesetSpec,
    protected: &Selection,
    filter: &Filter,
    q: &QueueTarget,
) {
    for (name, hook) in [("trace_in", Hook::Prerouting), ("trace_out", Hook::Output)] {
        let rules = trace_marks(protected, filter)
            .into_iter()
            .map(|m| RuleSpec {
                prefix: m.protected,
                addr_field: m.side,
                also: m.host,
                l4: m.l4,
                skip_loopback: None,
                pick: None,
                channel: None,
                mark: None,
                action: Action::Trace,
                queue: *q,
                comment: format!("mpolice {name}: trace packets {}", m.says),
            })
            .collect();
        spec.chains.push(ChainSpec {
            name: name.into(),
            nat: false,
            hook,
            priority: TRACE_PRIORITY,
            comment: format!(
                "{name}: mark protected traffic for the kernel's trace (mpolice trace, kernel = true)"
            ),
            rules,
        });
    }
}

/// Before every other chain (raw is -300, conntrack -200): the mark is set before the
/// rules the trace should show.
const TRACE_PRIORITY: i32 = -400;

/// Most marking rules a trace chain may hold: each (protected prefix, host, port range)
/// of the filter is one rule per end and protocol, and a broad filter multiplies them.
pub const MAX_TRACE_RULES: usize = 256;

/// One marking rule's match: a protected prefix on one side, the filter's host on either
/// side, and its protocol or port.
pub struct TraceMark {
    pub protected: Prefix,
    pub side: Field,
    pub host: Option<(Field, Prefix)>,
    pub l4: L4Match,
    /// The match in words, for the rule's comment.
    pub says: String,
}

/// The marking rules for `filter` over the protected addresses: the product of the
/// protected prefixes (to and from), the filter's hosts of the same family (either end)
/// and its ports (TCP, UDP or the filter's protocol; either end) or protocol.
pub fn trace_marks(protected: &Selection, filter: &Filter) -> Vec<TraceMark> {
    let ends = [(Field::Dst, "to"), (Field::Src, "from")];
    let protos: Vec<Proto> = [Proto::Tcp, Proto::Udp]
        .into_iter()
        .filter(|p| filter.protocol.is_none_or(|n| n == p.number()))
        .collect();
    let mut l4s = vec![(L4Match::Any, String::new())];
    if !filter.ports.is_empty() {
        l4s = filter
            .ports
            .iter()
            .flat_map(|&ports| protos.iter().map(move |&proto| (proto, ports)))
            .flat_map(|(proto, ports)| {
                ends.map(|(field, _)| {
                    let word = if field == Field::Src {
                        "sport"
                    } else {
                        "dport"
                    };
                    let says = format!(" {} {word} {ports}", proto.keyword());
                    (
                        L4Match::Ports {
                            proto,
                            field,
                            ports,
                        },
                        says,
                    )
                })
            })
            .collect();
    } else if let Some(n) = filter.protocol {
        l4s = vec![(L4Match::Protocol(n), format!(" protocol {n}"))];
    }
    let mut marks = Vec::new();
    for &protected_prefix in &protected.addresses {
        let v4 = protected_prefix.addr().is_ipv4();
        let mut hosts = vec![None];
        if !filter.hosts.is_empty() {
            hosts = filter
                .hosts
                .iter()
                .filter(|h| h.addr().is_ipv4() == v4)
                .flat_map(|&h| ends.map(|(field, dir)| Some((field, h, dir))))
                .collect();
        }
        for (side, dir) in ends {
            // A host on the protected side outside the protected prefix never matches.
            let apart = |&&h: &&Option<(Field, Prefix, &str)>| {
                h.is_none_or(|(f, h, _)| {
                    f != side
                        || h.contains(protected_prefix.addr())
                        || protected_prefix.contains(h.addr())
                })
            };
            for host in hosts.iter().filter(apart) {
                for (l4, l4_says) in &l4s {
                    let host_says = host.map_or(String::new(), |(_, h, d)| format!(", {d} {h}"));
                    marks.push(TraceMark {
                        protected: protected_prefix,
                        side,
                        host: host.map(|(f, h, _)| (f, h)),
                        l4: *l4,
                        says: format!("{dir} {protected_prefix}{host_says}{l4_says}"),
                    });
                }
            }
        }
    }
    marks
}

/// Add the mbox's chain for forwarded ICMP and ICMPv6 errors: they quote the packet at
/// fault, and the engine cuts a stamp's capability out of the quote before the client
/// gets it. Queued after routing, like the stamped packets they answer, and to the queue
/// of the client they are addressed to. Errors to the `protected` addresses pass first:
/// `to_victim` queues them already (every protocol), and the engine's accept would
/// otherwise bring them to this chain and the queue a second time.
pub fn add_icmp_error_chain(spec: &mut RulesetSpec, protected: &Selection, q: &QueueTarget) {
    let mut rules: Vec<RuleSpec> = protected
        .addresses
        .iter()
        .map(|&prefix| RuleSpec {
            prefix,
            addr_field: Field::Dst,
            also: None,
            l4: L4Match::Any,
            skip_loopback: None,
            pick: None,
            channel: None,
            mark: None,
            action: Action::Accept,
            queue: *q,
            comment: format!("mpolice icmp_errors: to {prefix}, queued in to_victim"),
        })
        .collect();
    for (family, any) in [("ip", "0.0.0.0/0"), ("ip6", "::/0")] {
        let v6 = family == "ip6";
        for &kind in crate::wire::icmp::error_types(v6) {
            let rule = RuleSpec {
                prefix: any.parse::<Prefix>().expect("a valid zero-length prefix"),
                addr_field: Field::Dst,
                also: None,
                l4: L4Match::IcmpType(kind),
                skip_loopback: None,
                pick: None,
                channel: None,
                mark: None,
                action: Action::Queue,
                queue: *q,
                comment: format!(
                    "mpolice icmp_errors: {} type {kind}",
                    if v6 { "icmpv6" } else { "icmp" }
                ),
            };
            // An error goes to the client whose packet it quotes.
            rules.extend(per_client(rule, Field::Dst));
        }
    }
    spec.chains.push(ChainSpec {
        name: "icmp_errors".to_owned(),
        nat: false,
        hook: Hook::Forward,
        priority: PRIO_FILTER,
        comment: "mbox: forwarded ICMP errors, capabilities cut out of what they quote".to_owned(),
        rules,
    });
}

/// Port forwarding: a nat chain that redirects each SYN the engine marked to the port
/// its mark names (`forward`: incoming port, outgoing ports). Conntrack takes the rest
/// of the connection there and back; the chain sees only connections' first packets.
pub fn add_forward_chain(spec: &mut RulesetSpec, forward: &[(u16, Vec<u16>)], q: &QueueTarget) {
    let mut rules = Vec::new();
    for (port, outgoing) in forward {
        for &to in outgoing.iter().filter(|&&to| to != *port) {
            for family in ["0.0.0.0/0", "::/0"] {
                rules.push(RuleSpec {
                    prefix: family.parse().expect("a zero-length prefix"),
                    addr_field: Field::Dst,
                    also: None,
                    l4: L4Match::Ports {
                        proto: Proto::Tcp,
                        field: Field::Dst,
                        ports: PortRange::new(*port, *port).expect("a port is not 0"),
                    },
                    skip_loopback: None,
                    pick: None,
                    channel: None,
                    mark: Some(crate::ports::mark(to)),
                    action: Action::Redirect(to),
                    queue: *q,
                    comment: format!(
                        "mpolice port_forward: connections to {port} the engine sent to {to}"
                    ),
                });
            }
        }
    }
    spec.chains.push(ChainSpec {
        name: "port_forward".to_owned(),
        nat: true,
        hook: Hook::Prerouting,
        priority: PRIO_DSTNAT,
        comment: "victim: new connections to a forwarded port, sent where the engine chose"
            .to_owned(),
        rules,
    });
}

/// Traffic groups that refuse: a chain that answers each SYN the engine marked to be
/// refused with a reset, after the victim's queue and before conntrack: the reset then
/// belongs to no connection. (After conntrack, on a port with a forwarding rule, the
/// reset carried the refused SYN's unconfirmed conntrack and never left the host.)
pub fn add_refuse_chain(spec: &mut RulesetSpec, q: &QueueTarget) {
    let rules = ["0.0.0.0/0", "::/0"]
        .into_iter()
        .map(|family| RuleSpec {
            prefix: family.parse().expect("a zero-length prefix"),
            addr_field: Field::Dst,
            also: None,
            l4: L4Match::Protocol(Proto::Tcp.number()),
            skip_loopback: None,
            pick: None,
            channel: None,
            mark: Some(crate::ports::REFUSE_MARK),
            action: Action::Reset,
            queue: *q,
            comment: "mpolice port_refuse: connections past their port's accept quota".to_owned(),
        })
        .collect();
    spec.chains.push(ChainSpec {
        name: "port_refuse".to_owned(),
        nat: false,
        hook: Hook::Prerouting,
        priority: PRIO_BEFORE_CONNTRACK,
        comment: "victim: new connections the engine refused, answered with a reset".to_owned(),
        rules,
    });
}

/// After the victim's queue (raw, -300), before conntrack (-200).
const PRIO_BEFORE_CONNTRACK: i32 = -250;

/// Where destination NAT runs: after the victim's queue (raw) and conntrack.
const PRIO_DSTNAT: i32 = -100;

/// The engine's verified senders, one set per family: their packets skip the limits.
pub const VERIFIED_V4: &str = "verified_v4";
pub const VERIFIED_V6: &str = "verified_v6";
/// The per-source meters of unverified senders (dynamic sets, one per family).
pub const METER_V4: &str = "unverified_rate_v4";
pub const METER_V6: &str = "unverified_rate_v6";
/// Named counters of the packets dropped over a source's own rate, and over the total.
pub const COUNTER_OVER_SOURCE: &str = "unverified_over_source";
pub const COUNTER_OVER_TOTAL: &str = "unverified_over_total";
/// The named limit object all unverified traffic to every protected prefix shares.
pub const LIMIT_TOTAL: &str = "unverified_total";
/// Most addresses a verified set holds (a bound, not an allocation: the set grows).
pub const VERIFIED_SIZE: u32 = 1 << 20;
/// Most sources a meter tracks at once; about 250 bytes of kernel memory each when full.
pub const METER_SIZE: u32 = 1 << 16;

/// The verified set of a family.
pub(super) fn verified_set(v4: bool) -> &'static str {
    if v4 { VERIFIED_V4 } else { VERIFIED_V6 }
}

/// The per-source meter of a family.
pub(super) fn meter_set(v4: bool) -> &'static str {
    if v4 { METER_V4 } else { METER_V6 }
}

/// Rewrite the mbox's `to_victim` chain so that senders the engine has not verified reach
/// the queue only within `limits` (a spoofed-source flood must not fill the queue that
/// verified senders use). Per protected prefix, in order:
/// 1. a source in the verified set of the prefix's family: queued as before (one rule per
///    queue with several queues);
/// 2. a source over its own rate (meter `unverified_rate_v4`/`_v6`): counted in
///    `unverified_over_source` and dropped;
/// 3. beyond the total rate (limit object `unverified_total`, shared by every prefix):
///    counted in `unverified_over_total` and dropped;
/// 4. the rest: queued as before.
///
/// A spec without a `to_victim` chain (the victim's) is left as it is. Calling it again
/// replaces the earlier limits. `install` refuses limits that fail
/// [`UnverifiedLimits::validate`].
pub fn add_unverified_channel(spec: &mut RulesetSpec, limits: &UnverifiedLimits) {
    let Some(chain) = spec.chains.iter_mut().find(|c| c.name == "to_victim") else {
        return;
    };
    let plain: Vec<RuleSpec> = chain
        .rules
        .drain(..)
        .filter(|r| r.channel.is_none())
        .collect();
    let name = chain.name.clone();
    // The rules one prefix became (one per queue) are consecutive and differ only in
    // their client hash, queue and comment.
    for group in plain.chunk_by(|a, b| {
        (a.prefix, a.addr_field, a.l4, a.skip_loopback)
            == (b.prefix, b.addr_field, b.l4, b.skip_loopback)
    }) {
        let first = &group[0];
        let prefix = first.prefix;
        for r in group {
            let hash = r
                .pick
                .map(|p| format!(", client hash {} of {}", p.value, p.modulus))
                .unwrap_or_default();
            chain.rules.push(RuleSpec {
                channel: Some(ChannelStep::Verified),
                comment: format!("mpolice {name}: verified senders to {prefix}{hash}"),
                ..r.clone()
            });
        }
        let drop = |step: ChannelStep, comment: String| RuleSpec {
            pick: None,
            channel: Some(step),
            comment,
            ..first.clone()
        };
        chain.rules.push(drop(
            ChannelStep::OverSource {
                pps: limits.per_source_pps,
                burst: limits.per_source_burst,
                source_bits: if prefix.addr().is_ipv4() {
                    32
                } else {
                    limits.v6_source_prefix
                },
            },
            format!(
                "mpolice {name}: unverified senders to {prefix} over {}/s each, dropped",
                limits.per_source_pps
            ),
        ));
        chain.rules.push(drop(
            ChannelStep::OverTotal,
            format!(
                "mpolice {name}: unverified senders to {prefix} over {}/s in all, dropped",
                limits.total_pps
            ),
        ));
        chain.rules.extend_from_slice(group);
    }
    spec.channel = Some(UnverifiedChannel {
        limits: *limits,
        verified_size: VERIFIED_SIZE,
        meter_size: METER_SIZE,
        meter_timeout_s: meter_timeout_s(limits),
    });
}

/// How long a meter entry outlives its source's last packet: as long as the source's
/// bucket takes to fill up again (burst / rate, 1 s to 1 h). An entry kept longer would
/// hold nothing a new one lacks (a full bucket); one dropped sooner would refill the
/// bucket early and let a source that pauses between bursts exceed its rate.
pub(super) fn meter_timeout_s(limits: &UnverifiedLimits) -> u32 {
    limits
        .per_source_burst
        .div_ceil(limits.per_source_pps.max(1))
        .clamp(1, MAX_METER_TIMEOUT_S)
}

/// Longest meter timeout: a source silent for an hour may start over with a full bucket.
const MAX_METER_TIMEOUT_S: u32 = 3600;

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
        nat: false,
        hook,
        priority,
        comment: comment.to_owned(),
        rules: Vec::new(),
    }
}

/// Fill chain `c` with rules matching the protected side on `side` (Dst: towards it,
/// Src: from it); the client is on the other side.
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
        also: None,
        l4,
        skip_loopback: None,
        pick: None,
        channel: None,
        mark: None,
        action: Action::Queue,
        queue: *q,
        comment,
    };
    let rules = &mut c.rules;
    for prefix in &sel.addresses {
        if upper == Upper::Any {
            let comment = format!("mpolice {name}: any protocol {dir} {prefix}");
            rules.extend(per_client(
                rule(*prefix, L4Match::Any, comment),
                side.other(),
            ));
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
                rules.extend(per_client(rule(*prefix, l4, comment), side.other()));
            }
        }
    }
    c
}

/// Spread `rule` over its queues by the address on `client`: with one queue or CPU
/// fanout (or a queue range `install` will refuse), the rule as it is; else one rule per
/// queue `first + i`, matching the senders whose address hashes to `i`. The xt NFQUEUE
/// target takes no expression, hence a rule per queue rather than a computed number.
fn per_client(rule: RuleSpec, client: Field) -> Vec<RuleSpec> {
    let q = rule.queue;
    if q.count <= 1 || q.fanout || q.last().is_err() {
        return vec![rule];
    }
    (0..q.count)
        .map(|i| RuleSpec {
            pick: Some(ClientHash {
                client,
                modulus: u32::from(q.count),
                seed: CLIENT_HASH_SEED,
                value: u32::from(i),
            }),
            queue: QueueTarget {
                first: q.first + i,
                count: 1,
                ..q
            },
            comment: format!("{}, client hash {i} of {}", rule.comment, q.count),
            ..rule.clone()
        })
        .collect()
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
            L4Match::IcmpType(_) | L4Match::Protocol(_) | L4Match::Any => None,
        }
    }

    const Q1: QueueTarget = QueueTarget {
        first: 0,
        count: 1,
        bypass: true,
        fanout: false,
    };

    const Q: QueueTarget = QueueTarget {
        first: 0,
        count: 2,
        bypass: true,
        fanout: false,
    };

    /// The mbox with every optional chain: redirect and icmp_errors.
    fn full_mbox(q: &QueueTarget) -> RulesetSpec {
        let mut spec = plan(Role::Mbox, &selection(), q);
        let listen = Selection {
            addresses: vec!["198.18.1.1".parse().unwrap()],
            ..selection()
        };
        add_redirect_chains(&mut spec, &listen, &selection(), q);
        add_icmp_error_chain(&mut spec, &selection(), q);
        spec
    }

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
                .all(|r| r.pick.is_none() && r.queue == Q1 && r.skip_loopback.is_none())
        }));
    }

    /// ICMP errors to a protected address pass the error chain: `to_victim` queues them.
    #[test]
    fn icmp_errors_to_protected_addresses_pass_before_any_error_is_queued() {
        let spec = full_mbox(&Q1);
        let chain = spec
            .chains
            .iter()
            .find(|c| c.name == "icmp_errors")
            .unwrap();
        let (passes, queued) = chain.rules.split_at(2);
        assert!(
            passes
                .iter()
                .zip(&selection().addresses)
                .all(|(r, &prefix)| {
                    r.action == Action::Accept
                        && r.prefix == prefix
                        && r.addr_field == Field::Dst
                        && r.l4 == L4Match::Any
                })
        );
        assert_eq!(
            passes[0].comment,
            "mpolice icmp_errors: to 198.18.2.2, queued in to_victim"
        );
        assert_eq!(queued.len(), 7, "3 ICMP and 4 ICMPv6 error types");
        assert!(
            queued
                .iter()
                .all(|r| r.action != Action::Accept && r.prefix.is_empty())
        );
        assert!(
            plan(Role::Mbox, &selection(), &Q1)
                .chains
                .iter()
                .all(|c| { c.rules.iter().all(|r| r.action != Action::Accept) })
        );
    }

    #[test]
    fn victim_chains() {
        let spec = plan(Role::Victim, &selection(), &Q1);
        assert_eq!(
            shape(&spec),
            [
                ("inbound", Hook::Prerouting, -300, 6),
                ("outbound", Hook::Postrouting, 150, 6)
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
    fn several_queues_give_one_rule_per_queue_picked_by_the_clients_address() {
        let q = QueueTarget {
            first: 4,
            count: 3,
            bypass: false,
            fanout: false,
        };
        let single = full_mbox(&Q1);
        let spec = full_mbox(&q);
        for (one, many) in single.chains.iter().zip(&spec.chains) {
            // A pass rule queues nothing: it stays one rule, ahead of the queue rules.
            let passes = |rules: &[RuleSpec]| {
                rules
                    .iter()
                    .take_while(|r| r.action == Action::Accept)
                    .count()
            };
            let (one_passes, many_passes) = (passes(&one.rules), passes(&many.rules));
            assert_eq!(one_passes, many_passes, "{}", many.name);
            let (one_rules, many_rules) = (&one.rules[one_passes..], &many.rules[many_passes..]);
            assert_eq!(many_rules.len(), 3 * one_rules.len(), "{}", many.name);
            // Each rule of one queue becomes three in a row, the same but for the pick.
            for (base, group) in one_rules.iter().zip(many_rules.chunks(3)) {
                for (i, r) in (0u16..).zip(group) {
                    let pick = r.pick.expect("a client hash");
                    assert_eq!(
                        (pick.modulus, pick.seed, pick.value),
                        (3, CLIENT_HASH_SEED, u32::from(i))
                    );
                    assert_eq!(
                        r.queue,
                        QueueTarget {
                            first: 4 + i,
                            count: 1,
                            ..q
                        }
                    );
                    assert_eq!(
                        (r.prefix, r.addr_field, r.l4, r.skip_loopback),
                        (base.prefix, base.addr_field, base.l4, base.skip_loopback)
                    );
                    assert_eq!(r.comment, format!("{}, client hash {i} of 3", base.comment));
                }
            }
        }
    }

    /// Both directions of one sender hash the same address: the one not protected, and
    /// for ICMP errors (addressed to the client) the destination.
    #[test]
    fn every_chain_hashes_the_client_side() {
        let mut victim = plan(Role::Victim, &selection(), &Q);
        add_tunnel_chain(&mut victim, &selection(), &Q);
        let mut mbox = full_mbox(&Q);
        add_feedback_chain(&mut mbox, &selection(), &Q);
        let client_of: Vec<(&str, Field)> = [&mbox, &victim]
            .iter()
            .flat_map(|s| &s.chains)
            .map(|c| {
                let queued = || c.rules.iter().filter(|r| r.action != Action::Accept);
                let sides: Vec<Field> = queued()
                    .map(|r| r.pick.expect("a client hash").client)
                    .collect();
                assert!(sides.windows(2).all(|w| w[0] == w[1]), "{}", c.name);
                assert!(
                    queued()
                        .all(|r| c.name == "icmp_errors" || r.pick.unwrap().client != r.addr_field)
                );
                (c.name.as_str(), sides[0])
            })
            .collect();
        assert_eq!(
            client_of,
            [
                ("to_victim", Field::Src),
                ("from_victim", Field::Dst),
                ("redirect_in", Field::Src),
                ("redirect_out", Field::Dst),
                ("icmp_errors", Field::Dst),
                ("tunnel_feedback", Field::Src),
                ("inbound", Field::Src),
                ("outbound", Field::Dst),
                ("tunnel_in", Field::Src),
            ]
        );
    }

    #[test]
    fn fanout_and_bad_ranges_keep_one_balancing_rule() {
        for q in [
            QueueTarget { fanout: true, ..Q },
            QueueTarget {
                first: 65535,
                count: 2,
                ..Q
            },
            QueueTarget { count: 0, ..Q },
        ] {
            let spec = full_mbox(&q);
            assert_eq!(
                shape(&spec),
                shape(&full_mbox(&Q1)),
                "one rule per selection rule"
            );
            assert!(
                spec.chains
                    .iter()
                    .all(|c| c.rules.iter().all(|r| r.pick.is_none() && r.queue == q))
            );
        }
    }

    /// The longest comment (a long IPv6 prefix text, a wide port range, the most queues)
    /// still fits libnftnl's limit, past which `install` refuses the ruleset.
    #[test]
    fn comments_fit_however_many_queues() {
        let long = Selection {
            addresses: vec!["2001:2:0:ffff:ffff:ffff:ffff:fff0/124".parse().unwrap()],
            tcp_ports: vec!["10000-65535".parse().unwrap()],
            udp_ports: vec![],
        };
        let q = QueueTarget {
            first: 0,
            count: u16::MAX,
            ..Q
        };
        let mut spec = plan(Role::Victim, &long, &q);
        add_redirect_chains(&mut spec, &long, &long, &q);
        let longest = spec
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .map(|r| r.comment.len())
            .max();
        assert_eq!(longest, Some(113));
        // The longest IPv6 prefix text anywhere ("ffff:…:fff0/124") is 6 bytes longer.
        assert!(longest.unwrap() + 6 <= super::super::install::COMMENT_MAX);
    }

    const LIMITS: UnverifiedLimits = UnverifiedLimits {
        per_source_pps: 50,
        per_source_burst: 120,
        total_pps: 20_000,
        total_burst: 5_000,
        v6_source_prefix: 64,
    };

    #[test]
    fn unverified_channel_puts_verified_senders_first_and_limits_the_rest() {
        for q in [Q1, Q] {
            let count = usize::from(q.count);
            let before = plan(Role::Mbox, &selection(), &q);
            let mut spec = before.clone();
            add_unverified_channel(&mut spec, &LIMITS);
            assert_eq!(
                spec.channel,
                Some(UnverifiedChannel {
                    limits: LIMITS,
                    verified_size: VERIFIED_SIZE,
                    meter_size: METER_SIZE,
                    meter_timeout_s: 3,
                })
            );
            // Only to_victim changes: per prefix, verified rules, two drops, the old rules.
            assert_eq!(spec.chains[1], before.chains[1]);
            let rules = &spec.chains[0].rules;
            assert_eq!(rules.len(), 2 * (2 * count + 2));
            for (group, old) in rules
                .chunks(2 * count + 2)
                .zip(before.chains[0].rules.chunks(count))
            {
                let (verified, rest) = group.split_at(count);
                let (drops, plain) = rest.split_at(2);
                assert_eq!(plain, old);
                for (v, o) in verified.iter().zip(old) {
                    assert_eq!(v.channel, Some(ChannelStep::Verified));
                    assert_eq!((v.pick, v.queue, v.prefix), (o.pick, o.queue, o.prefix));
                }
                assert_eq!(
                    drops.iter().map(|r| r.channel).collect::<Vec<_>>(),
                    [
                        Some(ChannelStep::OverSource {
                            pps: 50,
                            burst: 120,
                            source_bits: if old[0].prefix.addr().is_ipv4() {
                                32
                            } else {
                                64
                            },
                        }),
                        Some(ChannelStep::OverTotal)
                    ]
                );
                assert!(drops.iter().all(|r| r.pick.is_none()
                    && r.prefix == old[0].prefix
                    && r.l4 == L4Match::Any));
            }
            assert_eq!(
                rules[count + 1].comment,
                "mpolice to_victim: unverified senders to 198.18.2.2 over 20000/s in all, dropped"
            );
            let last_verified = &rules[2 * count + 2 + count - 1].comment;
            if q.count > 1 {
                assert_eq!(
                    last_verified,
                    "mpolice to_victim: verified senders to 2001:2:0:2::/64, client hash 1 of 2"
                );
            } else {
                assert_eq!(
                    last_verified,
                    "mpolice to_victim: verified senders to 2001:2:0:2::/64"
                );
            }
            // Again with other limits: replaced, not added to.
            let other = UnverifiedLimits {
                per_source_pps: 7,
                ..LIMITS
            };
            let mut again = spec.clone();
            add_unverified_channel(&mut again, &other);
            let mut direct = before.clone();
            add_unverified_channel(&mut direct, &other);
            assert_eq!(again, direct);
        }
    }

    #[test]
    fn unverified_channel_leaves_the_victim_alone() {
        let before = plan(Role::Victim, &selection(), &Q);
        let mut spec = before.clone();
        add_unverified_channel(&mut spec, &LIMITS);
        assert_eq!(spec, before);
    }

    #[test]
    fn meter_entries_live_as_long_as_a_bucket_takes_to_refill() {
        let t = |pps, burst| {
            meter_timeout_s(&UnverifiedLimits {
                per_source_pps: pps,
                per_source_burst: burst,
                ..LIMITS
            })
        };
        assert_eq!(t(10, 20), 2);
        assert_eq!(t(10, 21), 3);
        assert_eq!(t(1000, 10), 1);
        assert_eq!(t(1, u32::MAX), 3600);
        assert_eq!(t(0, 5), 5, "an invalid zero rate is refused by install");
    }

    #[test]
    fn channel_limits_are_checked() {
        assert_eq!(LIMITS.validate(), Ok(()));
        for (bad, what) in [
            (
                UnverifiedLimits {
                    per_source_pps: 0,
                    ..LIMITS
                },
                "per_source_pps = 0",
            ),
            (
                UnverifiedLimits {
                    total_burst: 0,
                    ..LIMITS
                },
                "total_burst = 0",
            ),
            (
                UnverifiedLimits {
                    total_pps: 1_000_000_001,
                    ..LIMITS
                },
                "total_pps = 1000000001 must be 1 to 1000000000",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    /// The longest channel comments fit libnftnl's limit too.
    #[test]
    fn channel_comments_fit() {
        let long = Selection {
            addresses: vec!["2001:2:0:ffff:ffff:ffff:ffff:fff0/124".parse().unwrap()],
            ..Selection::default()
        };
        let q = QueueTarget { count: 64, ..Q };
        let mut spec = plan(Role::Mbox, &long, &q);
        let max = UnverifiedLimits {
            per_source_pps: u32::MAX,
            total_pps: u32::MAX,
            ..LIMITS
        };
        add_unverified_channel(&mut spec, &max);
        let longest = spec.chains[0].rules.iter().map(|r| r.comment.len()).max();
        assert_eq!(longest, Some(112));
        // As above, the longest IPv6 prefix text is 6 bytes longer than this one.
        assert!(longest.unwrap() + 6 <= super::super::install::COMMENT_MAX);
    }

    /// Each marking rule's match in nft's words (the render of the rule alone).
    fn trace_rules(filter: &Filter) -> Vec<String> {
        let mut spec = plan(Role::Victim, &Selection::default(), &Q1);
        add_trace_chains(&mut spec, &selection(), filter, &Q1);
        assert_eq!(spec.chains[2].rules.len(), spec.chains[3].rules.len());
        let text = crate::driver::nft::render(&spec);
        let chain = text.split("chain trace_in").nth(1).unwrap();
        let chain = chain.split("chain trace_out").next().unwrap();
        chain
            .lines()
            .filter(|l| l.contains("nftrace set 1"))
            .map(|l| l.split(" meta nftrace").next().unwrap().trim().to_owned())
            .collect()
    }

    #[test]
    fn the_kernel_trace_marks_what_the_filter_selects_of_the_protected_traffic() {
        // No filter: everything to and from each protected prefix.
        assert_eq!(
            trace_rules(&Filter::default()),
            [
                "ip daddr 198.18.2.2",
                "ip saddr 198.18.2.2",
                "ip6 daddr 2001:2:0:2::/64",
                "ip6 saddr 2001:2:0:2::/64"
            ]
        );
        // A host outside the protected prefix is its peer: the other end only. IPv6
        // protected traffic cannot match an IPv4 host, and is not marked.
        let peer = Filter {
            protocol: Some(6),
            hosts: vec!["198.18.0.0/24".parse().unwrap()],
            ports: vec!["8080".parse().unwrap()],
            ..Filter::default()
        };
        assert_eq!(
            trace_rules(&peer),
            [
                "ip daddr 198.18.2.2 ip saddr 198.18.0.0/24 tcp dport 8080",
                "ip daddr 198.18.2.2 ip saddr 198.18.0.0/24 tcp sport 8080",
                "ip saddr 198.18.2.2 ip daddr 198.18.0.0/24 tcp dport 8080",
                "ip saddr 198.18.2.2 ip daddr 198.18.0.0/24 tcp sport 8080",
            ]
        );
        // A protocol alone; ports without one are TCP's and UDP's.
        let icmp = Filter {
            protocol: Some(1),
            ..Filter::default()
        };
        assert!(
            trace_rules(&icmp)
                .iter()
                .all(|r| r.ends_with("meta l4proto 1"))
        );
        let ports = Filter {
            ports: vec!["53".parse().unwrap()],
            ..Filter::default()
        };
        let rules = trace_rules(&ports);
        assert_eq!(rules.len(), 2 * 2 * 2 * 2, "{rules:?}");
        assert_eq!(
            rules.iter().filter(|r| r.contains("udp sport 53")).count(),
            4
        );
    }

    #[test]
    fn empty_selection_gives_empty_chains() {
        let spec = plan(Role::Mbox, &Selection::default(), &Q);
        assert_eq!(spec.chains.len(), 2);
        assert!(spec.chains.iter().all(|c| c.rules.is_empty()));
    }
}
