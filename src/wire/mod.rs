//! Packet layer: parse and edit IPv4/IPv6 packets carrying TCP or UDP.
//!
//! Buffers start at the IP header and hold exactly one IP packet, as NFQUEUE
//! delivers them. Nothing here allocates on the parse path or does I/O.
//!
//! Invariants:
//! - [`parse`] validates every length it later relies on: after it succeeds
//!   on a buffer, every accessor and editor on that buffer with that
//!   [`Parsed`] stays in bounds. Editors still bounds-check (a mismatched
//!   `Parsed` yields [`WireError::StaleParsed`], `None`, `0` or `false`),
//!   so no function here panics on packet data.
//! - Editors return the updated `Parsed`; use the returned value for the next
//!   edit. After each successful edit the IPv4 header checksum and the
//!   TCP/UDP checksum are correct if they were correct before (edits are
//!   incremental per RFC 1624, so a packet that arrived corrupt stays corrupt).
//! - The IP length field equals the buffer length (the kernel trims skbs to
//!   the IP length), and edits keep it so.
//! - UDP over IPv4 with checksum 0 ("no checksum") keeps checksum 0.
//! - Checksums are not verified by `parse`; use [`verify_checksums`].

pub mod build;
pub mod checksum;
mod edit;
mod error;
pub mod icmp;
mod ipv4;
mod ipv6;
mod parse;
pub mod tcp;
pub mod tunnel;
mod udp;

pub use edit::{
    TcpEdit, append_trailer, clamp_tcp_mss, edit_tcp, fill_checksums, set_dst_addr, set_dst_port,
    set_src_addr, set_src_port, set_tcp_reserved, strip_trailer, tcp_mss, tcp_reserved,
    verify_checksums,
};
pub use error::WireError;
pub use parse::{IpVersion, L4, Parsed, TcpInfo, UdpInfo, parse};

/// The most bytes an IPv4 packet's headers can take: a 60-byte IP header (IHL 15) and
/// a 60-byte TCP header (data offset 15). IPv6 extension headers have no such bound.
pub const LONGEST_V4_HEADERS: usize = 120;

/// IP protocol numbers used by this module.
pub mod proto {
    /// IPv6 hop-by-hop options extension header.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing extension header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment extension header.
    pub const FRAGMENT: u8 = 44;
    /// IPsec Encapsulating Security Payload.
    pub const ESP: u8 = 50;
    /// IPsec Authentication Header.
    pub const AH: u8 = 51;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NO_NEXT_HEADER: u8 = 59;
    /// IPv6 destination options extension header.
    pub const DEST_OPTS: u8 = 60;
}

/// Read a big-endian u16 at `off`, or `None` if out of bounds.
#[inline]
fn be16(buf: &[u8], off: usize) -> Option<u16> {
    let b: [u8; 2] = array(buf, off)?;
    Some(u16::from_be_bytes(b))
}

/// Read a big-endian u32 at `off`, or `None` if out of bounds.
#[inline]
fn be32(buf: &[u8], off: usize) -> Option<u32> {
    let b: [u8; 4] = array(buf, off)?;
    Some(u32::from_be_bytes(b))
}

/// Copy `N` bytes at `off` into an array, or `None` if out of bounds.
#[inline]
fn array<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Write a big-endian u16 at `off`; return false if out of bounds.
#[inline]
fn put16(buf: &mut [u8], off: usize, v: u16) -> bool {
    match off.checked_add(2).and_then(|end| buf.get_mut(off..end)) {
        Some(b) => {
            b.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests_edit;
#[cfg(test)]
mod tests_parse;
#[cfg(test)]
mod testutil;
