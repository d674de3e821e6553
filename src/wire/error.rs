//! The single flat error type of the packet layer.

use crate::labels::labelled_enum;

labelled_enum! {
    /// Why a packet could not be parsed or edited.
    pub enum WireError {
        /// The buffer is shorter than a fixed header.
        Truncated => "truncated",
        /// The IP version nibble is neither 4 nor 6.
        BadVersion => "bad_version",
        /// IPv4 IHL is below 5 or larger than the packet.
        BadHeaderLength => "bad_header_length",
        /// IPv4 total length or IPv6 payload length disagrees with the buffer.
        LengthMismatch => "length_mismatch",
        /// IPv4 fragment (MF or offset set) or IPv6 fragment header.
        Fragment => "fragment",
        /// An IPv6 extension header runs past the packet or is misplaced.
        BadExtensionHeader => "bad_extension_header",
        /// More IPv6 extension headers than the walk allows.
        TooManyExtensionHeaders => "too_many_extension_headers",
        /// TCP data offset below 5 or beyond the segment.
        BadTcpDataOffset => "bad_tcp_data_offset",
        /// A TCP option has a bad length or runs past the header.
        BadTcpOptions => "bad_tcp_options",
        /// The UDP length field disagrees with the segment length.
        BadUdpLength => "bad_udp_length",
        /// An edit would make the IP packet longer than 65535 bytes.
        TooLong => "too_long",
        /// Asked to strip more bytes than the payload holds.
        PayloadTooShort => "payload_too_short",
        /// The edit does not apply to this packet's protocol.
        Unsupported => "unsupported",
        /// The new address is of the other IP family.
        FamilyMismatch => "family_mismatch",
        /// The `Parsed` does not describe this buffer (stale or foreign).
        StaleParsed => "stale_parsed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        crate::labels::assert_labels(WireError::ALL.iter().map(WireError::as_str));
        assert_eq!(WireError::Truncated.to_string(), "truncated");
    }
}
