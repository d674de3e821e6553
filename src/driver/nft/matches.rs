//! Turn a rule's match into nftnl expressions (all through register 1).
//!
//! Invariants: the family is checked (`meta nfproto`) before any network-header load, and
//! the transport protocol (`meta l4proto`) before any transport-header load, as nft does;
//! the client hash comes last, so it is computed only for packets the rest matched.

use std::net::IpAddr;

use nftnl::Rule;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Icmpv6HeaderField, Ipv4HeaderField, Ipv6HeaderField, Meta,
    NetworkHeaderField, Payload, TcpHeaderField, TransportHeaderField, UdpHeaderField,
};

use super::expr::JHash;
use super::spec::{Field, L4Match, Proto, RuleSpec};
use crate::pipeline::LOOPBACK_IFINDEX;

/// Append the loopback exclusion, `meta nfproto`, the address match, `meta l4proto` and
/// the port or type match (none for [`L4Match::Any`]), then the client hash if any.
pub(super) fn add_match(rule: &mut Rule, spec: &RuleSpec) {
    if let Some(side) = spec.skip_loopback {
        rule.add_expr(match side {
            Field::Src => &Meta::Iif,
            Field::Dst => &Meta::Oif,
        });
        rule.add_expr(&Cmp::new(CmpOp::Neq, LOOPBACK_IFINDEX));
    }
    let prefix = spec.prefix;
    let v4 = matches!(prefix.addr(), IpAddr::V4(_));
    let nfproto = if v4 {
        libc::NFPROTO_IPV4
    } else {
        libc::NFPROTO_IPV6
    } as u8;
    rule.add_expr(&Meta::NfProto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, nfproto));
    // A zero-length prefix matches the whole family: nothing to load.
    if !prefix.is_empty() {
        rule.add_expr(&addr_payload(v4, spec.addr_field));
        let addr = prefix.addr_bytes();
        if !prefix.is_host() {
            let mask = prefix.mask_bytes();
            let zero = vec![0u8; mask.len()];
            rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
        }
        rule.add_expr(&Cmp::new(CmpOp::Eq, addr.as_slice()));
    }
    match spec.l4 {
        L4Match::Any => {}
        L4Match::Ports {
            proto,
            field,
            ports,
        } => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, proto.number()));
            rule.add_expr(&port_payload(proto, field));
            // Ports are compared as big-endian bytes, which memcmp orders numerically.
            let lo = ports.lo().to_be_bytes();
            let hi = ports.hi().to_be_bytes();
            if ports.is_single() {
                rule.add_expr(&Cmp::new(CmpOp::Eq, &lo[..]));
            } else {
                rule.add_expr(&Cmp::new(CmpOp::Gte, &lo[..]));
                rule.add_expr(&Cmp::new(CmpOp::Lte, &hi[..]));
            }
        }
        L4Match::IcmpType(kind) => {
            let icmp = if v4 {
                libc::IPPROTO_ICMP
            } else {
                libc::IPPROTO_ICMPV6
            } as u8;
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, icmp));
            // ICMP and ICMPv6 both keep the type in their first byte.
            let header = TransportHeaderField::Icmpv6(Icmpv6HeaderField::Type);
            rule.add_expr(&Payload::Transport(header));
            rule.add_expr(&Cmp::new(CmpOp::Eq, kind));
        }
    }
    if let Some(pick) = spec.pick {
        // Load the client's address into register 1, hash it there, compare the result
        // (a u32 in host byte order, as the kernel writes it).
        rule.add_expr(&addr_payload(v4, pick.client));
        rule.add_expr(&JHash {
            len: if v4 { 4 } else { 16 },
            modulus: pick.modulus,
            seed: pick.seed,
        });
        rule.add_expr(&Cmp::new(CmpOp::Eq, pick.value));
    }
}

/// Return the load of the source or destination address.
fn addr_payload(v4: bool, field: Field) -> Payload {
    let header = match (v4, field) {
        (true, Field::Src) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr),
        (true, Field::Dst) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr),
        (false, Field::Src) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr),
        (false, Field::Dst) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr),
    };
    Payload::Network(header)
}

/// Return the load of the source or destination port (same offsets in TCP and UDP).
fn port_payload(proto: Proto, field: Field) -> Payload {
    let header = match (proto, field) {
        (Proto::Tcp, Field::Src) => TransportHeaderField::Tcp(TcpHeaderField::Sport),
        (Proto::Tcp, Field::Dst) => TransportHeaderField::Tcp(TcpHeaderField::Dport),
        (Proto::Udp, Field::Src) => TransportHeaderField::Udp(UdpHeaderField::Sport),
        (Proto::Udp, Field::Dst) => TransportHeaderField::Udp(UdpHeaderField::Dport),
    };
    Payload::Transport(header)
}
