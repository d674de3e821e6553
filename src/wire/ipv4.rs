//! IPv4 header validation.

use std::net::Ipv4Addr;

use super::{WireError, array, be16};

/// Byte offsets of IPv4 header fields.
pub(super) mod field {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const FLAGS_FRAG: usize = 6;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Length of an IPv4 header without options.
pub(super) const MIN_HEADER_LEN: usize = 20;

/// More-fragments flag and fragment offset bits of `FLAGS_FRAG`.
const MF_AND_OFFSET: u16 = 0x3FFF;

/// What the IPv4 header says, once validated.
pub(super) struct Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub header_len: usize,
}

/// Validate the IPv4 header at the start of `buf` (the version nibble is already known to be 4).
#[inline]
pub(super) fn parse(buf: &[u8]) -> Result<Header, WireError> {
    let hdr: [u8; MIN_HEADER_LEN] = array(buf, 0).ok_or(WireError::Truncated)?;
    let header_len = usize::from(hdr[field::VER_IHL] & 0x0F) * 4;
    if header_len < MIN_HEADER_LEN {
        return Err(WireError::BadHeaderLength);
    }
    let total = be16(&hdr, field::TOTAL_LEN).ok_or(WireError::Truncated)?;
    if usize::from(total) != buf.len() {
        return Err(WireError::LengthMismatch);
    }
    if header_len > buf.len() {
        return Err(WireError::BadHeaderLength);
    }
    let frag = be16(&hdr, field::FLAGS_FRAG).ok_or(WireError::Truncated)?;
    if frag & MF_AND_OFFSET != 0 {
        return Err(WireError::Fragment);
    }
    let src: [u8; 4] = array(&hdr, field::SRC).ok_or(WireError::Truncated)?;
    let dst: [u8; 4] = array(&hdr, field::DST).ok_or(WireError::Truncated)?;
    Ok(Header {
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
        protocol: hdr[field::PROTOCOL],
        header_len,
    })
}
