//! UDP header validation.

use super::{WireError, be16};
use crate::wire::parse::UdpInfo;

/// Byte offsets of UDP header fields.
pub(super) mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Length of the UDP header.
pub(super) const HEADER_LEN: usize = 8;

/// Validate the UDP header at the start of `seg` (the whole UDP datagram).
#[inline]
pub(super) fn parse(seg: &[u8]) -> Result<UdpInfo, WireError> {
    if seg.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let len = be16(seg, field::LENGTH).ok_or(WireError::Truncated)?;
    // The kernel trims to the IP length, so any disagreement is malformed.
    if usize::from(len) != seg.len() {
        return Err(WireError::BadUdpLength);
    }
    Ok(UdpInfo {
        src_port: be16(seg, field::SRC_PORT).ok_or(WireError::Truncated)?,
        dst_port: be16(seg, field::DST_PORT).ok_or(WireError::Truncated)?,
    })
}
