//! IP-in-UDP: wrap a packet in an outer IP and UDP header of its own family, and unwrap it.
//!
//! The outer header is plain (IPv4 without options, DF set; IPv6 without extension
//! headers), the UDP checksum covers the whole inner packet, and unwrapping accepts only
//! an inner packet of the outer's family, so the kernel's view of the packet's family
//! (`skb->protocol`) stays true when an NFQUEUE verdict swaps one for the other.

use std::net::IpAddr;

use super::{Parsed, WireError, fill_checksums, parse, proto};

/// Bytes the outer headers add: IPv4 + UDP, or IPv6 + UDP.
pub const fn overhead(v6: bool) -> usize {
    if v6 { 40 + 8 } else { 20 + 8 }
}

/// Wrap the packet in `buf` in IP(`src` → `dst`) + UDP(`sport` → `dport`).
pub fn encap_udp(
    buf: &mut Vec<u8>,
    inner: &Parsed,
    (src, dst): (IpAddr, IpAddr),
    (sport, dport): (u16, u16),
) -> Result<Parsed, WireError> {
    if buf.len() != inner.total_len() {
        return Err(WireError::StaleParsed);
    }
    let v6 = match (src, dst, inner.src) {
        (IpAddr::V4(_), IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(WireError::FamilyMismatch),
    };
    let udp_len = 8 + buf.len();
    let total = overhead(v6) + buf.len();
    if total > usize::from(u16::MAX) {
        return Err(WireError::TooLong);
    }
    let mut head = Vec::with_capacity(overhead(v6));
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            head.extend_from_slice(&[0x45, 0]);
            head.extend_from_slice(&(total as u16).to_be_bytes());
            // Id 0 with DF: the outer packet is never fragmented.
            head.extend_from_slice(&[0, 0, 0x40, 0, 64, proto::UDP, 0, 0]);
            head.extend_from_slice(&s.octets());
            head.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            head.extend_from_slice(&[0x60, 0, 0, 0]);
            head.extend_from_slice(&(udp_len as u16).to_be_bytes());
            head.extend_from_slice(&[proto::UDP, 64]);
            head.extend_from_slice(&s.octets());
            head.extend_from_slice(&d.octets());
        }
        _ => return Err(WireError::FamilyMismatch),
    }
    head.extend_from_slice(&sport.to_be_bytes());
    head.extend_from_slice(&dport.to_be_bytes());
    head.extend_from_slice(&(udp_len as u16).to_be_bytes());
    // Not zero, so IPv4 gets a computed checksum too rather than "none".
    head.extend_from_slice(&[0xff, 0xff]);
    buf.splice(0..0, head);
    let outer = parse(buf)?;
    fill_checksums(buf, &outer)?;
    Ok(outer)
}

/// Replace an IP-in-UDP packet with the packet it carries, of the same family.
pub fn decap_udp(buf: &mut Vec<u8>, outer: &Parsed) -> Result<Parsed, WireError> {
    if outer.protocol != proto::UDP || buf.len() != outer.total_len() {
        return Err(WireError::StaleParsed);
    }
    let inner_bytes = buf
        .get(outer.payload_offset..)
        .ok_or(WireError::Truncated)?;
    let inner = parse(inner_bytes)?;
    if inner.version != outer.version {
        return Err(WireError::FamilyMismatch);
    }
    buf.drain(..outer.payload_offset);
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::Builder;
    use crate::wire::verify_checksums;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn wrap_and_unwrap_is_identity_for_both_families() {
        for (c, v, m) in [
            ("198.18.1.2", "198.18.2.2", "198.18.2.1"),
            ("2001:2:0:1::2", "2001:2:0:2::2", "2001:2:0:2::1"),
        ] {
            let pkt = Builder::tcp(ip(c), ip(v), 40000, 8080)
                .payload(b"hello")
                .build();
            let mut buf = pkt.clone();
            let p = parse(&buf).unwrap();
            let outer = encap_udp(&mut buf, &p, (ip(m), ip(v)), (40000, 6081)).unwrap();
            assert_eq!(buf.len(), pkt.len() + overhead(c.contains(':')));
            assert!(verify_checksums(&buf, &outer));
            assert_eq!(
                (outer.src, outer.dst, outer.ports()),
                (ip(m), ip(v), Some((40000, 6081)))
            );
            let inner = decap_udp(&mut buf, &outer).unwrap();
            assert_eq!(buf, pkt);
            assert_eq!(inner, p);
        }
    }

    #[test]
    fn mixed_families_and_non_tunnels_are_refused() {
        let pkt = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 1, 2).build();
        let p = parse(&pkt).unwrap();
        let mut buf = pkt.clone();
        let six = (ip("2001:2::1"), ip("2001:2::2"));
        assert_eq!(
            encap_udp(&mut buf, &p, six, (1, 2)),
            Err(WireError::FamilyMismatch)
        );
        assert_eq!(buf, pkt, "untouched on error");
        // A UDP datagram whose payload is not an IP packet.
        let mut junk = Builder::udp(ip("198.18.2.1"), ip("198.18.2.2"), 1, 6081)
            .payload(b"not ip")
            .build();
        let p = parse(&junk).unwrap();
        assert!(decap_udp(&mut junk, &p).is_err());
        // An IPv6 packet inside IPv4.
        let v6 = Builder::tcp(ip("2001:2::1"), ip("2001:2::2"), 1, 2).build();
        let mut mixed = Builder::udp(ip("198.18.2.1"), ip("198.18.2.2"), 1, 6081)
            .payload(&v6)
            .build();
        let p = parse(&mixed).unwrap();
        assert_eq!(decap_udp(&mut mixed, &p), Err(WireError::FamilyMismatch));
    }
}
