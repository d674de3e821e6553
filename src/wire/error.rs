//! The single flat error type of the packet layer.

use std::fmt;

/// Why a packet could not be parsed or edited.
///
/// Flat and `Copy` so it can index counter arrays ([`WireError::to_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer is shorter than a fixed header.
    Truncated,
    /// The IP version nibble is neither 4 nor 6.
    BadVersion,
    /// IPv4 IHL is below 5 or larger than the packet.
    BadHeaderLength,
    /// IPv4 total length or IPv6 payload length disagrees with the buffer.
    LengthMismatch,
    /// IPv4 fragment (MF or offset set) or IPv6 fragment header.
    Fragment,
    /// An IPv6 extension header runs past the packet or is misplaced.
    BadExtensionHeader,
    /// More IPv6 extension headers than the walk allows.
    TooManyExtensionHeaders,
    /// TCP data offset below 5 or beyond the segment.
    BadTcpDataOffset,
    /// A TCP option has a bad length or runs past the header.
    BadTcpOptions,
    /// The UDP length field disagrees with the segment length.
    BadUdpLength,
    /// An edit would make the IP packet longer than 65535 bytes.
    TooLong,
    /// Asked to strip more bytes than the payload holds.
    PayloadTooShort,
    /// The edit does not apply to this packet's protocol.
    Unsupported,
    /// The new address is of the other IP family.
    FamilyMismatch,
    /// The `Parsed` does not describe this buffer (stale or foreign).
    StaleParsed,
}

impl WireError {
    /// Number of variants.
    pub const COUNT: usize = 15;

    /// Every variant, in `to_index` order.
    pub const ALL: [WireError; Self::COUNT] = [
        WireError::Truncated,
        WireError::BadVersion,
        WireError::BadHeaderLength,
        WireError::LengthMismatch,
        WireError::Fragment,
        WireError::BadExtensionHeader,
        WireError::TooManyExtensionHeaders,
        WireError::BadTcpDataOffset,
        WireError::BadTcpOptions,
        WireError::BadUdpLength,
        WireError::TooLong,
        WireError::PayloadTooShort,
        WireError::Unsupported,
        WireError::FamilyMismatch,
        WireError::StaleParsed,
    ];

    /// Return the stable snake_case name, usable as a counter label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadVersion => "bad_version",
            WireError::BadHeaderLength => "bad_header_length",
            WireError::LengthMismatch => "length_mismatch",
            WireError::Fragment => "fragment",
            WireError::BadExtensionHeader => "bad_extension_header",
            WireError::TooManyExtensionHeaders => "too_many_extension_headers",
            WireError::BadTcpDataOffset => "bad_tcp_data_offset",
            WireError::BadTcpOptions => "bad_tcp_options",
            WireError::BadUdpLength => "bad_udp_length",
            WireError::TooLong => "too_long",
            WireError::PayloadTooShort => "payload_too_short",
            WireError::Unsupported => "unsupported",
            WireError::FamilyMismatch => "family_mismatch",
            WireError::StaleParsed => "stale_parsed",
        }
    }

    /// Return the position of this variant in [`WireError::ALL`].
    pub const fn to_index(self) -> usize {
        self as usize
    }

    /// Return the variant at `index` in [`WireError::ALL`], if any.
    pub const fn from_index(index: usize) -> Option<WireError> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn all_is_in_index_order_and_names_unique() {
        let mut names = HashSet::new();
        for (i, e) in WireError::ALL.iter().enumerate() {
            assert_eq!(e.to_index(), i);
            assert_eq!(WireError::from_index(i), Some(*e));
            assert!(names.insert(e.as_str()));
            assert!(
                e.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert_eq!(e.to_string(), e.as_str());
        }
        assert_eq!(WireError::from_index(WireError::COUNT), None);
    }
}
