//! IPv6 header validation and extension header walk.

use std::net::Ipv6Addr;

use super::{WireError, array, be16, proto};

/// Byte offsets of IPv6 header fields.
pub(super) mod field {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// Length of the fixed IPv6 header.
pub(super) const HEADER_LEN: usize = 40;

/// Most extension headers walked before giving up (bounds per-packet work).
pub const MAX_EXT_HEADERS: usize = 8;

/// What the IPv6 header chain says, once validated.
pub(super) struct Header {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Upper-layer protocol, or ESP / no-next-header where the walk stops.
    pub protocol: u8,
    pub l4_offset: usize,
    /// Offset of the address the L4 pseudo-header uses as destination.
    pub pseudo_dst: usize,
}

/// Validate the IPv6 header at the start of `buf` and walk its extension headers.
#[inline]
pub(super) fn parse(buf: &[u8]) -> Result<Header, WireError> {
    let hdr: [u8; HEADER_LEN] = array(buf, 0).ok_or(WireError::Truncated)?;
    let payload_len = be16(&hdr, field::PAYLOAD_LEN).ok_or(WireError::Truncated)?;
    // Also rejects jumbograms (payload length 0 with a larger buffer).
    if usize::from(payload_len) != buf.len() - HEADER_LEN {
        return Err(WireError::LengthMismatch);
    }
    let src: [u8; 16] = array(&hdr, field::SRC).ok_or(WireError::Truncated)?;
    let dst: [u8; 16] = array(&hdr, field::DST).ok_or(WireError::Truncated)?;
    let mut next = hdr[field::NEXT_HEADER];
    let mut off = HEADER_LEN;
    let mut pseudo_dst = field::DST;
    let mut count = 0;
    loop {
        let len = match next {
            proto::HOP_BY_HOP | proto::DEST_OPTS | proto::ROUTING => ext_len(buf, off, 8, 1)?,
            proto::AH => ext_len(buf, off, 4, 2)?,
            proto::FRAGMENT => return Err(WireError::Fragment),
            // Upper layer, ESP or no-next-header: the walk ends here.
            _ => {
                return Ok(Header {
                    src: Ipv6Addr::from(src),
                    dst: Ipv6Addr::from(dst),
                    protocol: next,
                    l4_offset: off,
                    pseudo_dst,
                });
            }
        };
        // Hop-by-hop is only valid directly after the fixed header (RFC 8200).
        if next == proto::HOP_BY_HOP && count != 0 {
            return Err(WireError::BadExtensionHeader);
        }
        count += 1;
        if count > MAX_EXT_HEADERS {
            return Err(WireError::TooManyExtensionHeaders);
        }
        let ext = off
            .checked_add(len)
            .and_then(|end| buf.get(off..end))
            .ok_or(WireError::BadExtensionHeader)?;
        if next == proto::ROUTING {
            if let Some(addr) = routing_final_dst(ext)? {
                pseudo_dst = off + addr;
            }
        }
        next = *ext.first().ok_or(WireError::BadExtensionHeader)?;
        off += len;
    }
}

/// Return the length of the extension header at `off`: `(buf[off+1] + add) * unit`.
#[inline]
fn ext_len(buf: &[u8], off: usize, unit: usize, add: usize) -> Result<usize, WireError> {
    let prefix: [u8; 2] = array(buf, off).ok_or(WireError::BadExtensionHeader)?;
    Ok((usize::from(prefix[1]) + add) * unit)
}

/// Return where, inside routing header `rh`, the final destination sits if not in the IPv6 header.
///
/// RFC 8200 8.1: the pseudo-header uses the final destination. With segments
/// left 0 that is the header's destination; type 2 (Mobile IPv6) and type 4
/// (SRH, Segment List[0]) carry it at byte 8. Other types with segments left
/// must be discarded per RFC 8200 4.4 (type 0 is deprecated by RFC 5095).
#[inline]
fn routing_final_dst(rh: &[u8]) -> Result<Option<usize>, WireError> {
    let fixed: [u8; 4] = array(rh, 0).ok_or(WireError::BadExtensionHeader)?;
    let (routing_type, segments_left) = (fixed[2], fixed[3]);
    if segments_left == 0 {
        return Ok(None);
    }
    match routing_type {
        2 | 4 if rh.len() >= 24 => Ok(Some(8)),
        _ => Err(WireError::BadExtensionHeader),
    }
}
