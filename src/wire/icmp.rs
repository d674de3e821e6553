//! ICMP and ICMPv6 errors: find the TCP segment they quote, and cut or fix that quote.
//!
//! An error quotes the start of the packet that caused it (RFC 792: the IP header and
//! 8 bytes; Linux: as much as fits in 576 bytes for IPv4, 1280 for IPv6). The quote's
//! own length field still says how long the whole packet was.
//!
//! Invariants: nothing here trusts the quote's length fields to index the buffer, and
//! [`set_quote`] leaves the outer packet's lengths and checksums correct.

use super::checksum as cs;
use super::parse::{IpVersion, Parsed};
use super::{WireError, be16, ipv4, ipv6, parse, proto, put16};

/// ICMP types that quote the packet at fault: unreachable, time exceeded, parameter problem.
const V4_ERRORS: [u8; 3] = [3, 11, 12];
/// ICMPv6 ones: unreachable, packet too big, time exceeded, parameter problem.
const V6_ERRORS: [u8; 4] = [1, 2, 3, 4];
/// ICMP header bytes before the quote (type, code, checksum, 4 type-specific).
const ICMP_HEADER_LEN: usize = 8;
/// Offset of the data-offset/reserved byte in a TCP header.
const TCP_RESERVED: usize = 12;

/// The ICMP and ICMPv6 error types the mbox looks into, per family.
pub fn error_types(v6: bool) -> &'static [u8] {
    if v6 { &V6_ERRORS } else { &V4_ERRORS }
}

/// A TCP segment quoted by an ICMP error, located in the outer packet's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    /// Offset of the quoted IP header.
    pub ip: usize,
    /// Length of the quoted IP header.
    pub ip_header_len: usize,
    /// Whether the quoted packet is IPv6.
    pub v6: bool,
    /// The quoted packet's whole length, as its own header says.
    pub total_len: usize,
}

impl Quote {
    /// Offset of the quoted TCP header's reserved nibble (always inside the buffer).
    pub fn tcp_reserved(&self) -> usize {
        self.ip + self.ip_header_len + TCP_RESERVED
    }
}

/// The TCP segment `p` quotes, if `p` is an ICMP error of its family whose quote reaches
/// the TCP reserved bits; None for anything else (IPv6 extension headers in the quote
/// included: they are not walked).
pub fn quoted_tcp(buf: &[u8], p: &Parsed) -> Option<Quote> {
    let v6 = p.version == IpVersion::V6;
    let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
    if p.protocol != icmp || !error_types(v6).contains(buf.get(p.l4_offset)?) {
        return None;
    }
    let ip = p.l4_offset + ICMP_HEADER_LEN;
    let first = *buf.get(ip)?;
    let (ip_header_len, protocol, total_len) = match first >> 4 {
        4 if !v6 => (
            usize::from(first & 0x0F) * 4,
            *buf.get(ip + ipv4::field::PROTOCOL)?,
            usize::from(be16(buf, ip + ipv4::field::TOTAL_LEN)?),
        ),
        6 if v6 => (
            ipv6::HEADER_LEN,
            *buf.get(ip + ipv6::field::NEXT_HEADER)?,
            usize::from(be16(buf, ip + ipv6::field::PAYLOAD_LEN)?) + ipv6::HEADER_LEN,
        ),
        _ => return None,
    };
    let quote = Quote {
        ip,
        ip_header_len,
        v6,
        total_len,
    };
    let whole_header = ip_header_len >= ipv4::MIN_HEADER_LEN && quote.tcp_reserved() < buf.len();
    (protocol == proto::TCP && whole_header).then_some(quote)
}

/// Replace the quote with `quoted` (the quoted packet, whole or cut short, whose own
/// header says `total_len` bytes), then fix the quoted IPv4 header checksum, the outer
/// packet's length and its IPv4 and ICMP checksums.
pub fn set_quote(
    buf: &mut Vec<u8>,
    q: &Quote,
    quoted: &[u8],
    total_len: usize,
) -> Result<Parsed, WireError> {
    let len = u16::try_from(total_len).map_err(|_| WireError::TooLong)?;
    buf.truncate(q.ip);
    buf.extend_from_slice(quoted);
    if q.v6 {
        let payload = len.checked_sub(ipv6::HEADER_LEN as u16);
        put16(
            buf,
            q.ip + ipv6::field::PAYLOAD_LEN,
            payload.ok_or(WireError::Truncated)?,
        );
    } else {
        put16(buf, q.ip + ipv4::field::TOTAL_LEN, len);
        let header = q.ip..q.ip + q.ip_header_len;
        put16(buf, q.ip + ipv4::field::CHECKSUM, 0);
        let sum = cs::checksum(buf.get(header).ok_or(WireError::Truncated)?);
        put16(buf, q.ip + ipv4::field::CHECKSUM, sum);
    }
    let outer = u16::try_from(buf.len()).map_err(|_| WireError::TooLong)?;
    if q.v6 {
        put16(
            buf,
            ipv6::field::PAYLOAD_LEN,
            outer - ipv6::HEADER_LEN as u16,
        );
    } else {
        put16(buf, ipv4::field::TOTAL_LEN, outer);
    }
    let p = parse(buf)?;
    super::fill_checksums(buf, &p)?;
    Ok(p)
}
