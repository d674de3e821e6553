//! The parsed packet summary and the top-level parser.

use std::net::IpAddr;

use super::{WireError, ipv4, ipv6, proto, tcp, udp};

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// TCP header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags byte (byte 13; see the constants in [`tcp`](super::tcp)).
    pub flags: u8,
    /// The 4 reserved bits (low nibble of byte 12).
    pub reserved: u8,
    /// Receive window (unscaled).
    pub window: u16,
    /// Offset in the packet of the (single, length-4) MSS option, if present.
    pub mss_offset: Option<usize>,
}

/// UDP header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// Transport-layer summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP segment.
    Tcp(TcpInfo),
    /// UDP datagram.
    Udp(UdpInfo),
    /// Any other protocol (ICMP, ESP, no-next-header, ...): not looked into.
    Other,
}

/// Summary of a validated packet; offsets index the buffer it was parsed from.
///
/// Only [`parse`] and the editors create one, so its offsets are consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parsed {
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address (the IP header field).
    pub dst: IpAddr,
    /// L4 protocol number (after IPv6 extension headers).
    pub protocol: u8,
    /// Offset of the L4 header.
    pub l4_offset: usize,
    /// L4 header length (TCP incl. options, 8 for UDP, 0 for other).
    pub l4_header_len: usize,
    /// Offset of the L4 payload.
    pub payload_offset: usize,
    /// L4 payload length; the payload runs to the end of the packet.
    pub payload_len: usize,
    /// Transport-layer fields.
    pub l4: L4,
    /// Offset of the address used as pseudo-header destination (IPv6 routing headers move it).
    pub(super) pseudo_dst: usize,
}

impl Parsed {
    /// Return the IP packet length (= the buffer length).
    #[inline]
    pub fn total_len(&self) -> usize {
        self.payload_offset.saturating_add(self.payload_len)
    }

    /// Return the TCP fields if this is TCP.
    #[inline]
    pub fn tcp(&self) -> Option<&TcpInfo> {
        match &self.l4 {
            L4::Tcp(t) => Some(t),
            _ => None,
        }
    }

    /// Return the UDP fields if this is UDP.
    #[inline]
    pub fn udp(&self) -> Option<&UdpInfo> {
        match &self.l4 {
            L4::Udp(u) => Some(u),
            _ => None,
        }
    }

    /// Return (source, destination) ports for TCP or UDP.
    #[inline]
    pub fn ports(&self) -> Option<(u16, u16)> {
        match &self.l4 {
            L4::Tcp(t) => Some((t.src_port, t.dst_port)),
            L4::Udp(u) => Some((u.src_port, u.dst_port)),
            L4::Other => None,
        }
    }

    /// Return the payload slice of `buf` (empty if `buf` does not match).
    #[inline]
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.payload_offset..self.total_len())
            .unwrap_or_default()
    }
}

/// Parse and validate an IP packet; `buf` must hold exactly the packet, starting at the IP header.
///
/// No allocation; work is bounded by the header sizes.
#[inline]
pub fn parse(buf: &[u8]) -> Result<Parsed, WireError> {
    let first = *buf.first().ok_or(WireError::Truncated)?;
    let (version, src, dst, protocol, l4_offset, pseudo_dst) = match first >> 4 {
        4 => {
            let h = ipv4::parse(buf)?;
            let (src, dst) = (IpAddr::V4(h.src), IpAddr::V4(h.dst));
            (
                IpVersion::V4,
                src,
                dst,
                h.protocol,
                h.header_len,
                ipv4::field::DST,
            )
        }
        6 => {
            let h = ipv6::parse(buf)?;
            let (src, dst) = (IpAddr::V6(h.src), IpAddr::V6(h.dst));
            (
                IpVersion::V6,
                src,
                dst,
                h.protocol,
                h.l4_offset,
                h.pseudo_dst,
            )
        }
        _ => return Err(WireError::BadVersion),
    };
    let seg = buf.get(l4_offset..).ok_or(WireError::Truncated)?;
    let (l4, l4_header_len) = match protocol {
        proto::TCP => {
            let (t, len) = tcp::parse(seg, l4_offset)?;
            (L4::Tcp(t), len)
        }
        proto::UDP => (L4::Udp(udp::parse(seg)?), udp::HEADER_LEN),
        _ => (L4::Other, 0),
    };
    Ok(Parsed {
        version,
        src,
        dst,
        protocol,
        l4_offset,
        l4_header_len,
        payload_offset: l4_offset + l4_header_len,
        payload_len: seg.len() - l4_header_len,
        l4,
        pseudo_dst,
    })
}
