//! Turn a rule's match into nftnl expressions (all through register 1).
//!
//! Invariants: the family is checked (`meta nfproto`) before any network-header load, and
//! the transport protocol (`meta l4proto`) before any transport-header load, as nft does;
//! the client hash comes last, so it is computed only for packets the rest matched (after
//! the verified-set lookup, as `rules show` prints it).

use std::ffi::CString;
use std::net::IpAddr;

use nftnl::Rule;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Icmpv6HeaderField, Ipv4HeaderField, Ipv6HeaderField, Meta,
    NetworkHeaderField, Payload, TcpHeaderField, TransportHeaderField, UdpHeaderField, Verdict,
};

use super::expr::{JHash, MeterUpdate, NFT_OBJECT_COUNTER, NFT_OBJECT_LIMIT, ObjRef, SetLookup};
use super::plan::{COUNTER_OVER_SOURCE, COUNTER_OVER_TOTAL, LIMIT_TOTAL, meter_set, verified_set};
use super::spec::{ChannelStep, Field, L4Match, Prefix, Proto, RuleSpec};
use crate::pipeline::LOOPBACK_IFINDEX;

/// Append the loopback exclusion, `meta nfproto`, the address match, `meta l4proto` and
/// the port or type match (none for [`L4Match::Any`]), the lookup of the client's address
/// in the verified set for a [`ChannelStep::Verified`] rule, then the client hash if any.
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
    add_addr(rule, spec.addr_field, prefix);
    if let Some((field, also)) = spec.also {
        add_addr(rule, field, also);
    }
    if let Some(mark) = spec.mark {
        // The mark as the kernel keeps it: a u32 in host byte order.
        rule.add_expr(&Meta::Mark { set: false });
        rule.add_expr(&Cmp::new(CmpOp::Eq, mark));
    }
    match spec.l4 {
        L4Match::Any => {}
        L4Match::Protocol(number) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, number));
        }
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
    if spec.channel == Some(ChannelStep::Verified) {
        // The client's address, looked up in the engine's verified set of this family.
        rule.add_expr(&addr_payload(v4, spec.addr_field.other()));
        rule.add_expr(&SetLookup {
            set: c_string(verified_set(v4)),
        });
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

/// Append the match of the address on `field` in `prefix` (nothing for a zero-length
/// prefix, which matches the whole family).
fn add_addr(rule: &mut Rule, field: Field, prefix: Prefix) {
    if prefix.is_empty() {
        return;
    }
    rule.add_expr(&addr_payload(prefix.addr().is_ipv4(), field));
    if !prefix.is_host() {
        let mask = prefix.mask_bytes();
        let zero = vec![0u8; mask.len()];
        rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
    }
    rule.add_expr(&Cmp::new(CmpOp::Eq, prefix.addr_bytes().as_slice()));
}

/// Append the counted drop of a channel rule (`OverSource`, `OverTotal`) and return true;
/// return false for any other rule, which the caller ends with its queue statement.
pub(super) fn add_channel_drop(rule: &mut Rule, spec: &RuleSpec) -> bool {
    let v4 = spec.prefix.addr().is_ipv4();
    let counter = match spec.channel {
        Some(ChannelStep::OverSource {
            pps,
            burst,
            source_bits,
        }) => {
            rule.add_expr(&addr_payload(v4, spec.addr_field.other()));
            let mask = source_mask(v4, source_bits);
            if mask.iter().any(|&b| b != 0xff) {
                let zero = vec![0u8; mask.len()];
                rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
            }
            rule.add_expr(&MeterUpdate {
                set: c_string(meter_set(v4)),
                pps,
                burst,
            });
            COUNTER_OVER_SOURCE
        }
        Some(ChannelStep::OverTotal) => {
            rule.add_expr(&ObjRef {
                kind: NFT_OBJECT_LIMIT,
                name: c_string(LIMIT_TOTAL),
            });
            COUNTER_OVER_TOTAL
        }
        None | Some(ChannelStep::Verified) => return false,
    };
    rule.add_expr(&ObjRef {
        kind: NFT_OBJECT_COUNTER,
        name: c_string(counter),
    });
    rule.add_expr(&Verdict::Drop);
    true
}

/// The mask of an address's first `bits` bits (4 bytes for IPv4, 16 for IPv6).
pub(super) fn source_mask(v4: bool, bits: u8) -> Vec<u8> {
    let len = if v4 { 4 } else { 16 };
    let bits = u32::from(bits).min(len * 8);
    let full = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    full.to_be_bytes()[..len as usize].to_vec()
}

/// One of our constant set or object names as a C string (they hold no NUL).
fn c_string(name: &str) -> CString {
    CString::new(name).expect("set and object names hold no NUL")
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
