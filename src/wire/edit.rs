//! In-place editors that keep the IPv4 header and L4 checksums correct.
//!
//! Every editor takes the `Parsed` of the buffer's current contents, checks
//! that it still describes the buffer ([`WireError::StaleParsed`] otherwise),
//! validates everything before writing (an error leaves the buffer
//! untouched) and returns the updated `Parsed`.

use std::net::IpAddr;

use super::checksum::{self as cs, sum, sum_at};
use super::parse::{IpVersion, L4, Parsed};
use super::{WireError, array, be16, ipv4, ipv6, proto, put16, tcp, udp};

/// Largest IPv4 total length or IPv6 payload length.
const MAX_IP_LEN: usize = 0xFFFF;

/// Where an L4 checksum lives and what it covers.
#[derive(Clone, Copy)]
struct L4Sum {
    /// Offset of the checksum field in the packet.
    offset: usize,
    /// Whether the pseudo-header is covered (not for ICMPv4).
    pseudo: bool,
    /// UDP rules: 0 means "none" over IPv4, a computed 0 is sent as 0xFFFF.
    udp: bool,
}

/// Return the L4 checksum field of `p`, if it has one this module maintains.
fn l4_sum(p: &Parsed) -> Option<L4Sum> {
    let (field, pseudo, udp) = match (&p.l4, p.version, p.protocol) {
        (L4::Tcp(_), _, _) => (tcp::field::CHECKSUM, true, false),
        (L4::Udp(_), _, _) => (udp::field::CHECKSUM, true, true),
        (L4::Other, IpVersion::V4, proto::ICMP) => (2, false, false),
        (L4::Other, IpVersion::V6, proto::ICMPV6) => (2, true, false),
        _ => return None,
    };
    let offset = p.l4_offset + field;
    // ICMP is not validated by parse: its checksum field may be missing.
    (offset + 2 <= p.total_len()).then_some(L4Sum {
        offset,
        pseudo,
        udp,
    })
}

/// Check that `p` still describes `buf`.
#[inline]
fn fresh(buf: &[u8], p: &Parsed) -> Result<(), WireError> {
    let (version, min_header) = match p.version {
        IpVersion::V4 => (4, ipv4::MIN_HEADER_LEN),
        IpVersion::V6 => (6, ipv6::HEADER_LEN),
    };
    // Saturating: a hand-modified `Parsed` must not overflow, just fail.
    let ok = buf.len() == p.total_len()
        && p.l4_offset >= min_header
        && p.l4_offset.saturating_add(p.l4_header_len) == p.payload_offset
        && buf.first().map(|b| b >> 4) == Some(version);
    if ok {
        Ok(())
    } else {
        Err(WireError::StaleParsed)
    }
}

/// Return the pseudo-header partial sum for an L4 length of `len`.
fn pseudo(buf: &[u8], p: &Parsed, len: usize) -> Option<u64> {
    match p.version {
        IpVersion::V4 => Some(cs::pseudo_v4(
            array(buf, ipv4::field::SRC)?,
            array(buf, ipv4::field::DST)?,
            p.protocol,
            u16::try_from(len).ok()?,
        )),
        IpVersion::V6 => Some(cs::pseudo_v6(
            &array(buf, ipv6::field::SRC)?,
            &array(buf, p.pseudo_dst)?,
            p.protocol,
            u32::try_from(len).ok()?,
        )),
    }
}

/// Return the full partial sum the L4 checksum covers, including the field itself.
fn l4_full(buf: &[u8], p: &Parsed, s: L4Sum) -> Option<u64> {
    let seg = buf.get(p.l4_offset..)?;
    let ph = if s.pseudo {
        pseudo(buf, p, seg.len())?
    } else {
        0
    };
    Some(ph + sum(seg))
}

/// Apply an incremental change to the L4 checksum, honouring the UDP rules.
fn adjust_l4(buf: &mut [u8], p: &Parsed, s: L4Sum, removed: u64, added: u64) {
    let Some(old) = be16(buf, s.offset) else {
        return;
    };
    if s.udp && p.version == IpVersion::V4 && old == 0 {
        return;
    }
    let mut new = cs::adjust(old, removed, added);
    if s.udp && new == 0 {
        new = 0xFFFF;
    }
    put16(buf, s.offset, new);
}

/// Write a new packet length into the IP header (and IPv4 header checksum).
fn set_ip_len(buf: &mut [u8], p: &Parsed, total: usize) {
    match p.version {
        IpVersion::V4 => {
            let (Some(old), Some(check)) = (
                be16(buf, ipv4::field::TOTAL_LEN),
                be16(buf, ipv4::field::CHECKSUM),
            ) else {
                return;
            };
            let new = total as u16;
            put16(buf, ipv4::field::TOTAL_LEN, new);
            put16(buf, ipv4::field::CHECKSUM, cs::update_u16(check, old, new));
        }
        IpVersion::V6 => {
            put16(
                buf,
                ipv6::field::PAYLOAD_LEN,
                (total - ipv6::HEADER_LEN) as u16,
            );
        }
    }
}

/// Return the checksum field of a TCP or UDP packet, or `Unsupported`.
fn tcp_or_udp_sum(p: &Parsed) -> Result<L4Sum, WireError> {
    match p.l4 {
        L4::Tcp(_) | L4::Udp(_) => l4_sum(p).ok_or(WireError::Unsupported),
        L4::Other => Err(WireError::Unsupported),
    }
}

/// Check a new packet length against the IP length field limits.
fn check_len(p: &Parsed, total: usize) -> Result<(), WireError> {
    let ip_len = match p.version {
        IpVersion::V4 => total,
        IpVersion::V6 => total - ipv6::HEADER_LEN,
    };
    if ip_len > MAX_IP_LEN {
        Err(WireError::TooLong)
    } else {
        Ok(())
    }
}

/// Append `bytes` after the L4 payload, fixing lengths and checksums (TCP and UDP only).
pub fn append_trailer(buf: &mut Vec<u8>, p: &Parsed, bytes: &[u8]) -> Result<Parsed, WireError> {
    fresh(buf, p)?;
    let s = tcp_or_udp_sum(p)?;
    if bytes.is_empty() {
        return Ok(*p);
    }
    let new_total = buf
        .len()
        .checked_add(bytes.len())
        .ok_or(WireError::TooLong)?;
    check_len(p, new_total)?;
    let old_seg = buf.len() - p.l4_offset;
    let new_seg = new_total - p.l4_offset;
    // Pseudo-header length (and UDP length) change, plus the new bytes.
    let mut removed = old_seg as u64;
    let mut added = new_seg as u64 + sum_at(bytes, old_seg);
    if s.udp {
        removed += old_seg as u64;
        added += new_seg as u64;
        put16(buf, p.l4_offset + udp::field::LENGTH, new_seg as u16);
    }
    set_ip_len(buf, p, new_total);
    adjust_l4(buf, p, s, removed, added);
    buf.extend_from_slice(bytes);
    Ok(Parsed {
        payload_len: p.payload_len + bytes.len(),
        ..*p
    })
}

/// Remove the last `n` bytes of the L4 payload, fixing lengths and checksums (TCP and UDP only).
pub fn strip_trailer(buf: &mut Vec<u8>, p: &Parsed, n: usize) -> Result<Parsed, WireError> {
    fresh(buf, p)?;
    let s = tcp_or_udp_sum(p)?;
    if n > p.payload_len {
        return Err(WireError::PayloadTooShort);
    }
    if n == 0 {
        return Ok(*p);
    }
    let new_total = buf.len() - n;
    let old_seg = buf.len() - p.l4_offset;
    let new_seg = new_total - p.l4_offset;
    let tail = buf.get(new_total..).ok_or(WireError::StaleParsed)?;
    let mut removed = old_seg as u64 + sum_at(tail, new_seg);
    let mut added = new_seg as u64;
    if s.udp {
        removed += old_seg as u64;
        added += new_seg as u64;
        put16(buf, p.l4_offset + udp::field::LENGTH, new_seg as u16);
    }
    set_ip_len(buf, p, new_total);
    adjust_l4(buf, p, s, removed, added);
    buf.truncate(new_total);
    Ok(Parsed {
        payload_len: p.payload_len - n,
        ..*p
    })
}

/// Return the 4 TCP reserved bits from the buffer (0 if not TCP or `p` is stale).
pub fn tcp_reserved(buf: &[u8], p: &Parsed) -> u8 {
    if fresh(buf, p).is_err() || p.tcp().is_none() {
        return 0;
    }
    buf.get(p.l4_offset + tcp::field::DATA_OFF)
        .map_or(0, |b| b & tcp::RESERVED_MASK)
}

/// Set the 4 TCP reserved bits to the low nibble of `bits`, fixing the TCP checksum.
pub fn set_tcp_reserved(buf: &mut [u8], p: &Parsed, bits: u8) -> Result<Parsed, WireError> {
    fresh(buf, p)?;
    let L4::Tcp(mut t) = p.l4 else {
        return Err(WireError::Unsupported);
    };
    let s = l4_sum(p).ok_or(WireError::Unsupported)?;
    // Data offset and flags form one 16-bit word at an even offset.
    let off = p.l4_offset + tcp::field::DATA_OFF;
    let old = be16(buf, off).ok_or(WireError::StaleParsed)?;
    let bits = bits & tcp::RESERVED_MASK;
    let new = (old & !(u16::from(tcp::RESERVED_MASK) << 8)) | (u16::from(bits) << 8);
    if new != old {
        put16(buf, off, new);
        adjust_l4(buf, p, s, u64::from(old), u64::from(new));
    }
    t.reserved = bits;
    Ok(Parsed {
        l4: L4::Tcp(t),
        ..*p
    })
}

/// Return the offset of the MSS value if `p` has a well-formed MSS option in `buf`.
fn mss_value_offset(buf: &[u8], p: &Parsed) -> Option<usize> {
    fresh(buf, p).ok()?;
    let opt = p.tcp()?.mss_offset?;
    // A forged `Parsed` may point anywhere: the option must lie within the TCP header.
    if opt < p.l4_offset || opt.saturating_add(4) > p.payload_offset {
        return None;
    }
    let head: [u8; 2] = array(buf, opt)?;
    (head == [tcp::OPT_MSS, 4]).then_some(opt + 2)
}

/// Return the TCP MSS option value, if present.
pub fn tcp_mss(buf: &[u8], p: &Parsed) -> Option<u16> {
    be16(buf, mss_value_offset(buf, p)?)
}

/// Lower the TCP MSS option to `max` if it is larger; return whether the packet changed.
pub fn clamp_tcp_mss(buf: &mut [u8], p: &Parsed, max: u16) -> bool {
    let Some(off) = mss_value_offset(buf, p) else {
        return false;
    };
    let (Some(old), Some(s)) = (be16(buf, off), l4_sum(p)) else {
        return false;
    };
    if old <= max {
        return false;
    }
    put16(buf, off, max);
    // Options need not be 16-bit aligned within the segment.
    let rel = off - p.l4_offset;
    let (removed, added) = (
        sum_at(&old.to_be_bytes(), rel),
        sum_at(&max.to_be_bytes(), rel),
    );
    adjust_l4(buf, p, s, removed, added);
    true
}

/// A change to a TCP header that keeps its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEdit {
    Seq(u32),
    Ack(u32),
    /// Clear these flag bits.
    ClearFlags(u8),
    /// Turn the options of these kinds into no-ops.
    BlankOptions(&'static [u8]),
}

/// Apply `edits` to the TCP header of `p`, fixing the checksum.
pub fn edit_tcp(buf: &mut [u8], p: &Parsed, edits: &[TcpEdit]) -> Result<Parsed, WireError> {
    fresh(buf, p)?;
    let s = tcp_or_udp_sum(p)?;
    if !matches!(p.l4, L4::Tcp(_)) {
        return Err(WireError::Unsupported);
    }
    let range = p.l4_offset..p.payload_offset;
    let old = buf.get(range.clone()).ok_or(WireError::StaleParsed)?;
    let mut new = [0u8; 60];
    let header = new.get_mut(..old.len()).ok_or(WireError::StaleParsed)?;
    header.copy_from_slice(old);
    for e in edits {
        match *e {
            TcpEdit::Seq(v) => header[tcp::field::SEQ..][..4].copy_from_slice(&v.to_be_bytes()),
            TcpEdit::Ack(v) => header[tcp::field::ACK..][..4].copy_from_slice(&v.to_be_bytes()),
            TcpEdit::ClearFlags(bits) => header[tcp::field::FLAGS] &= !bits,
            TcpEdit::BlankOptions(kinds) => {
                tcp::blank_options(&mut header[tcp::MIN_HEADER_LEN..], kinds)
            }
        }
    }
    let (info, _) = tcp::parse(header, p.l4_offset)?;
    let (removed, added) = (sum(old), sum(header));
    let header = header.to_vec();
    buf[range].copy_from_slice(&header);
    adjust_l4(buf, p, s, removed, added);
    Ok(Parsed {
        l4: L4::Tcp(info),
        ..*p
    })
}

/// Rewrite the source address (same family only), fixing the IPv4 header and L4 checksums.
pub fn set_src_addr(buf: &mut [u8], p: &Parsed, addr: IpAddr) -> Result<Parsed, WireError> {
    set_addr(buf, p, addr, true)
}

/// Rewrite the destination address (same family only), fixing the IPv4 header and L4 checksums.
pub fn set_dst_addr(buf: &mut [u8], p: &Parsed, addr: IpAddr) -> Result<Parsed, WireError> {
    set_addr(buf, p, addr, false)
}

/// Rewrite one address; the L4 checksum changes only if the address is in the pseudo-header.
fn set_addr(buf: &mut [u8], p: &Parsed, addr: IpAddr, is_src: bool) -> Result<Parsed, WireError> {
    fresh(buf, p)?;
    let mut out = *p;
    if is_src {
        out.src = addr;
    } else {
        out.dst = addr;
    }
    let (old, new, in_pseudo) = match (p.version, addr) {
        (IpVersion::V4, IpAddr::V4(a)) => {
            let off = if is_src {
                ipv4::field::SRC
            } else {
                ipv4::field::DST
            };
            let old: [u8; 4] = array(buf, off).ok_or(WireError::StaleParsed)?;
            let new = a.octets();
            let check = be16(buf, ipv4::field::CHECKSUM).ok_or(WireError::StaleParsed)?;
            put16(
                buf,
                ipv4::field::CHECKSUM,
                cs::update_bytes(check, &old, &new),
            );
            write(buf, off, &new);
            (sum(&old), sum(&new), true)
        }
        (IpVersion::V6, IpAddr::V6(a)) => {
            let off = if is_src {
                ipv6::field::SRC
            } else {
                ipv6::field::DST
            };
            let old: [u8; 16] = array(buf, off).ok_or(WireError::StaleParsed)?;
            let new = a.octets();
            write(buf, off, &new);
            (
                sum(&old),
                sum(&new),
                off == ipv6::field::SRC || off == p.pseudo_dst,
            )
        }
        _ => return Err(WireError::FamilyMismatch),
    };
    if let Some(s) = l4_sum(p).filter(|s| s.pseudo && in_pseudo) {
        adjust_l4(buf, p, s, old, new);
    }
    Ok(out)
}

/// Copy `bytes` into `buf` at `off` if in bounds.
fn write(buf: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Rewrite the TCP/UDP source port, fixing the L4 checksum.
pub fn set_src_port(buf: &mut [u8], p: &Parsed, port: u16) -> Result<Parsed, WireError> {
    set_port(buf, p, port, true)
}

/// Rewrite the TCP/UDP destination port, fixing the L4 checksum.
pub fn set_dst_port(buf: &mut [u8], p: &Parsed, port: u16) -> Result<Parsed, WireError> {
    set_port(buf, p, port, false)
}

/// Rewrite one port (both TCP and UDP keep ports at offsets 0 and 2).
fn set_port(buf: &mut [u8], p: &Parsed, port: u16, is_src: bool) -> Result<Parsed, WireError> {
    fresh(buf, p)?;
    let s = tcp_or_udp_sum(p)?;
    let off = p.l4_offset + if is_src { 0 } else { 2 };
    let old = be16(buf, off).ok_or(WireError::StaleParsed)?;
    put16(buf, off, port);
    adjust_l4(buf, p, s, u64::from(old), u64::from(port));
    let mut out = *p;
    match &mut out.l4 {
        L4::Tcp(t) if is_src => t.src_port = port,
        L4::Tcp(t) => t.dst_port = port,
        L4::Udp(u) if is_src => u.src_port = port,
        L4::Udp(u) => u.dst_port = port,
        L4::Other => {}
    }
    Ok(out)
}

/// Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum from scratch.
///
/// UDP over IPv4 with checksum 0 ("none") is left at 0.
pub fn fill_checksums(buf: &mut [u8], p: &Parsed) -> Result<(), WireError> {
    fresh(buf, p)?;
    if p.version == IpVersion::V4 {
        put16(buf, ipv4::field::CHECKSUM, 0);
        let hdr = buf.get(..p.l4_offset).ok_or(WireError::StaleParsed)?;
        put16(buf, ipv4::field::CHECKSUM, cs::checksum(hdr));
    }
    let Some(s) = l4_sum(p) else {
        return Ok(());
    };
    if s.udp && p.version == IpVersion::V4 && be16(buf, s.offset) == Some(0) {
        return Ok(());
    }
    put16(buf, s.offset, 0);
    let total = l4_full(buf, p, s).ok_or(WireError::StaleParsed)?;
    let mut c = cs::finish(total);
    if s.udp && c == 0 {
        c = 0xFFFF;
    }
    put16(buf, s.offset, c);
    Ok(())
}

/// Return whether the IPv4 header checksum and the TCP/UDP/ICMP checksum are correct.
pub fn verify_checksums(buf: &[u8], p: &Parsed) -> bool {
    if fresh(buf, p).is_err() {
        return false;
    }
    if p.version == IpVersion::V4 {
        match buf.get(..p.l4_offset) {
            Some(hdr) if cs::fold(sum(hdr)) == 0xFFFF => {}
            _ => return false,
        }
    }
    let Some(s) = l4_sum(p) else {
        return true;
    };
    match be16(buf, s.offset) {
        Some(0) if s.udp => return p.version == IpVersion::V4,
        None => return false,
        _ => {}
    }
    l4_full(buf, p, s).is_some_and(|t| cs::fold(t) == 0xFFFF)
}
