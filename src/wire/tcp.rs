//! TCP header validation, option walk and flag constants.

use super::{WireError, be16, be32};
use crate::wire::parse::TcpInfo;

/// FIN flag (byte 13 of the TCP header).
pub const FIN: u8 = 0x01;
/// SYN flag.
pub const SYN: u8 = 0x02;
/// RST flag.
pub const RST: u8 = 0x04;
/// PSH flag.
pub const PSH: u8 = 0x08;
/// ACK flag.
pub const ACK: u8 = 0x10;
/// URG flag.
pub const URG: u8 = 0x20;
/// ECE flag.
pub const ECE: u8 = 0x40;
/// CWR flag.
pub const CWR: u8 = 0x80;

/// The 4 reserved bits in the low nibble of byte 12 (0x01 is AccECN's AE, RFC 9768).
pub const RESERVED_MASK: u8 = 0x0F;

/// Option kind: end of option list.
pub const OPT_END: u8 = 0;
/// Option kind: no-operation (padding).
pub const OPT_NOP: u8 = 1;
/// Option kind: maximum segment size (length 4).
pub const OPT_MSS: u8 = 2;
/// Option kinds a SYN offers: window scale, SACK permitted, timestamps.
pub const OPT_WINDOW_SCALE: u8 = 3;
pub const OPT_SACK_PERMITTED: u8 = 4;
pub const OPT_TIMESTAMPS: u8 = 8;

/// Byte offsets of TCP header fields.
pub(super) mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
}

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Validate the TCP header at the start of `seg` (the whole segment, which sits at `seg_offset` in the packet).
///
/// Return the summary and the header length.
#[inline]
pub(super) fn parse(seg: &[u8], seg_offset: usize) -> Result<(TcpInfo, usize), WireError> {
    if seg.len() < MIN_HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let off_byte = *seg.get(field::DATA_OFF).ok_or(WireError::Truncated)?;
    let header_len = usize::from(off_byte >> 4) * 4;
    if header_len < MIN_HEADER_LEN || header_len > seg.len() {
        return Err(WireError::BadTcpDataOffset);
    }
    let options = seg
        .get(MIN_HEADER_LEN..header_len)
        .ok_or(WireError::BadTcpDataOffset)?;
    let mss_offset = walk_options(options)?.map(|o| seg_offset + MIN_HEADER_LEN + o);
    let info = TcpInfo {
        src_port: be16(seg, field::SRC_PORT).ok_or(WireError::Truncated)?,
        dst_port: be16(seg, field::DST_PORT).ok_or(WireError::Truncated)?,
        seq: be32(seg, field::SEQ).ok_or(WireError::Truncated)?,
        ack: be32(seg, field::ACK).ok_or(WireError::Truncated)?,
        flags: *seg.get(field::FLAGS).ok_or(WireError::Truncated)?,
        reserved: off_byte & RESERVED_MASK,
        window: be16(seg, field::WINDOW).ok_or(WireError::Truncated)?,
        mss_offset,
    };
    Ok((info, header_len))
}

/// Turn the options of `kinds` in `options` into no-ops (up to a broken one).
pub(super) fn blank_options(options: &mut [u8], kinds: &[u8]) {
    let blanked: Vec<std::ops::Range<usize>> = each_option(options)
        .map_while(Result::ok)
        .filter(|(kind, _)| kinds.contains(kind))
        .map(|(_, at)| at)
        .collect();
    for at in blanked {
        options[at].fill(OPT_NOP);
    }
}

/// The options in `options`, in order: each kind and where it lies; an error for one
/// whose length is broken, after which there are no more. The end-of-list option ends
/// them.
fn each_option(
    options: &[u8],
) -> impl Iterator<Item = Result<(u8, std::ops::Range<usize>), WireError>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let at = i;
        let kind = *options.get(at)?;
        let len = match kind {
            OPT_END => return None,
            OPT_NOP => 1,
            _ => match options.get(at + 1).map(|&l| usize::from(l)) {
                Some(len) if len >= 2 && at + len <= options.len() => len,
                _ => {
                    i = options.len();
                    return Some(Err(WireError::BadTcpOptions));
                }
            },
        };
        i += len;
        Some(Ok((kind, at..at + len)))
    })
}

/// Check every option's length and return the offset of the MSS option within `options`.
///
/// A second MSS option is rejected so that clamping cannot miss one.
#[inline]
fn walk_options(options: &[u8]) -> Result<Option<usize>, WireError> {
    let mut mss = None;
    // Each option is at least one byte, so this ends within 40 steps.
    for option in each_option(options) {
        let (kind, at) = option?;
        if kind == OPT_MSS {
            if at.len() != 4 || mss.is_some() {
                return Err(WireError::BadTcpOptions);
            }
            mss = Some(at.start);
        }
    }
    Ok(mss)
}
