//! IP-in-UDP: wrap a packet in an outer IP and UDP header of its own family, and unwrap it.
//!
//! The outer header is plain (IPv4 without options, DF set; IPv6 without extension
//! headers), the UDP checksum covers the whole inner packet, and unwrapping accepts only
//! an inner packet of the outer's family, so the kernel's view of the packet's family
//! (`skb->protocol`) stays true when an NFQUEUE verdict swaps one for the other.
//!
//! ECN crosses the tunnel as RFC 6040 asks (normal mode): the outer header copies the
//! inner's traffic class, and a congestion mark (CE) set on the outer header on the way
//! is copied to an ECN-capable inner packet when it is unwrapped.

use std::net::IpAddr;

use super::{Parsed, WireError, fill_checksums, parse, proto};

/// Bytes of the authentication header between the UDP header and the body (its format
/// and MAC: `capability::tunnel`).
pub const AUTH_LEN: usize = 20;

/// Bytes the tunnel adds: IPv4 or IPv6, UDP, and the authentication header.
pub const fn overhead(v6: bool) -> usize {
    (if v6 { 40 + 8 } else { 20 + 8 }) + AUTH_LEN
}

/// Wrap the packet in `buf` in IP(`src` → `dst`) + UDP(`sport` → `dport`) + `auth`.
pub fn encap_udp(
    buf: &mut Vec<u8>,
    inner: &Parsed,
    (src, dst): (IpAddr, IpAddr),
    (sport, dport): (u16, u16),
    auth: &[u8; AUTH_LEN],
) -> Result<Parsed, WireError> {
    if buf.len() != inner.total_len() {
        return Err(WireError::StaleParsed);
    }
    let v6 = match (src, dst, inner.src) {
        (IpAddr::V4(_), IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(WireError::FamilyMismatch),
    };
    let udp_len = 8 + AUTH_LEN + buf.len();
    let total = overhead(v6) + buf.len();
    if total > usize::from(u16::MAX) {
        return Err(WireError::TooLong);
    }
    let tc = traffic_class(buf, v6);
    let mut head = Vec::with_capacity(overhead(v6));
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            head.extend_from_slice(&[0x45, tc]);
            head.extend_from_slice(&(total as u16).to_be_bytes());
            // Id 0 with DF: the outer packet is never fragmented.
            head.extend_from_slice(&[0, 0, 0x40, 0, 64, proto::UDP, 0, 0]);
            head.extend_from_slice(&s.octets());
            head.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            head.extend_from_slice(&[0x60 | (tc >> 4), (tc & 0x0f) << 4, 0, 0]);
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
    head.extend_from_slice(auth);
    buf.splice(0..0, head);
    let outer = parse(buf)?;
    fill_checksums(buf, &outer)?;
    Ok(outer)
}

/// The authentication header and the body of a tunnel packet.
pub fn auth_and_body<'a>(buf: &'a [u8], outer: &Parsed) -> Option<(&'a [u8], &'a [u8])> {
    let payload = buf.get(outer.payload_offset..)?;
    (payload.len() >= AUTH_LEN).then(|| payload.split_at(AUTH_LEN))
}

/// Replace an IP-in-UDP packet with the packet it carries, of the same family (the
/// authentication header goes with the outer headers; check it first).
pub fn decap_udp(buf: &mut Vec<u8>, outer: &Parsed) -> Result<Parsed, WireError> {
    if outer.protocol != proto::UDP || buf.len() != outer.total_len() {
        return Err(WireError::StaleParsed);
    }
    let body_at = outer.payload_offset + AUTH_LEN;
    let inner_bytes = buf.get(body_at..).ok_or(WireError::Truncated)?;
    let inner = parse(inner_bytes)?;
    if inner.version != outer.version {
        return Err(WireError::FamilyMismatch);
    }
    let v6 = outer.dst.is_ipv6();
    let congested = traffic_class(buf, v6) & ECN_MASK == ECN_CE;
    buf.drain(..body_at);
    let inner_ecn = traffic_class(buf, v6) & ECN_MASK;
    if congested && inner_ecn != 0 && inner_ecn != ECN_CE {
        mark_ce(buf, v6);
    }
    Ok(inner)
}

/// The ECN field of the traffic class / TOS byte, and its "congestion experienced" value.
const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;

/// The IPv4 TOS byte or the IPv6 traffic class of the packet at the start of `buf`.
fn traffic_class(buf: &[u8], v6: bool) -> u8 {
    match (v6, buf.first(), buf.get(1)) {
        (false, _, Some(tos)) => *tos,
        (true, Some(b0), Some(b1)) => (b0 << 4) | (b1 >> 4),
        _ => 0,
    }
}

/// Set CE on the packet at the start of `buf`, keeping the IPv4 header checksum right.
fn mark_ce(buf: &mut [u8], v6: bool) {
    if v6 {
        if let Some(b1) = buf.get_mut(1) {
            *b1 |= ECN_CE << 4;
        }
    } else if buf.len() >= 12 {
        let old = u16::from_be_bytes([buf[0], buf[1]]);
        buf[1] |= ECN_CE;
        let new = u16::from_be_bytes([buf[0], buf[1]]);
        let check = u16::from_be_bytes([buf[10], buf[11]]);
        let check = super::checksum::update_u16(check, old, new);
        buf[10..12].copy_from_slice(&check.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::Builder;
    use crate::wire::verify_checksums;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// An authentication header (its contents are not this module's business).
    const AUTH: [u8; AUTH_LEN] = [0x5A; AUTH_LEN];

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
            let outer = encap_udp(&mut buf, &p, (ip(m), ip(v)), (40000, 6081), &AUTH).unwrap();
            assert_eq!(buf.len(), pkt.len() + overhead(c.contains(':')));
            assert!(verify_checksums(&buf, &outer));
            assert_eq!(
                (outer.src, outer.dst, outer.ports()),
                (ip(m), ip(v), Some((40000, 6081)))
            );
            let (auth, body) = auth_and_body(&buf, &outer).unwrap();
            assert_eq!((auth, body), (&AUTH[..], &pkt[..]));
            let inner = decap_udp(&mut buf, &outer).unwrap();
            assert_eq!(buf, pkt);
            assert_eq!(inner, p);
        }
    }

    #[test]
    fn ecn_crosses_the_tunnel() {
        for (c, v, m) in [
            ("198.18.1.2", "198.18.2.2", "198.18.2.1"),
            ("2001:2:0:1::2", "2001:2:0:2::2", "2001:2:0:2::1"),
        ] {
            let v6 = c.contains(':');
            let mut pkt = Builder::tcp(ip(c), ip(v), 40000, 8080)
                .payload(b"hi")
                .build();
            // ECT(0) on the inner packet.
            if v6 {
                pkt[1] |= 0x02 << 4
            } else {
                pkt[1] |= 0x02
            }
            let p = parse(&pkt).unwrap();
            fill_checksums(&mut pkt, &p).unwrap();
            let mut buf = pkt.clone();
            let outer = encap_udp(&mut buf, &p, (ip(m), ip(v)), (1, 6081), &AUTH).unwrap();
            assert_eq!(traffic_class(&buf, v6) & ECN_MASK, 0x02, "outer copies ECT");
            // A router on the way marks the outer header CE.
            mark_ce(&mut buf, v6);
            let inner = decap_udp(&mut buf, &outer).unwrap();
            assert_eq!(
                traffic_class(&buf, v6) & ECN_MASK,
                ECN_CE,
                "CE reaches the inner packet"
            );
            assert!(verify_checksums(&buf, &inner));
        }
    }

    #[test]
    fn the_outer_header_carries_the_inner_traffic_class() {
        for (c, v, m) in [
            ("198.18.1.2", "198.18.2.2", "198.18.2.1"),
            ("2001:2:0:1::2", "2001:2:0:2::2", "2001:2:0:2::1"),
        ] {
            let v6 = c.contains(':');
            let mut pkt = Builder::tcp(ip(c), ip(v), 40000, 8080).build();
            // DSCP EF (46) with ECT(0): every bit of the byte must cross.
            let tc = (46 << 2) | 0x02;
            if v6 {
                pkt[0] = 0x60 | (tc >> 4);
                pkt[1] = (pkt[1] & 0x0f) | ((tc & 0x0f) << 4);
            } else {
                pkt[1] = tc;
            }
            let p = parse(&pkt).unwrap();
            fill_checksums(&mut pkt, &p).unwrap();
            let mut buf = pkt.clone();
            let outer = encap_udp(&mut buf, &p, (ip(m), ip(v)), (1, 6081), &AUTH).unwrap();
            assert_eq!(traffic_class(&buf, v6), tc, "v6 {v6}");
            assert!(verify_checksums(&buf, &outer));
        }
    }

    #[test]
    fn mixed_families_and_non_tunnels_are_refused() {
        let pkt = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 1, 2).build();
        let p = parse(&pkt).unwrap();
        let mut buf = pkt.clone();
        let six = (ip("2001:2::1"), ip("2001:2::2"));
        assert_eq!(
            encap_udp(&mut buf, &p, six, (1, 2), &AUTH),
            Err(WireError::FamilyMismatch)
        );
        assert_eq!(buf, pkt, "untouched on error");
        // A UDP datagram whose payload is not an IP packet.
        let mut junk = Builder::udp(ip("198.18.2.1"), ip("198.18.2.2"), 1, 6081)
            .payload(&[AUTH.as_slice(), b"not ip"].concat())
            .build();
        let p = parse(&junk).unwrap();
        assert!(decap_udp(&mut junk, &p).is_err());
        // An IPv6 packet inside IPv4.
        let v6 = Builder::tcp(ip("2001:2::1"), ip("2001:2::2"), 1, 2).build();
        let mut mixed = Builder::udp(ip("198.18.2.1"), ip("198.18.2.2"), 1, 6081)
            .payload(&[AUTH.as_slice(), &v6].concat())
            .build();
        let p = parse(&mixed).unwrap();
        assert_eq!(decap_udp(&mut mixed, &p), Err(WireError::FamilyMismatch));
    }
}
