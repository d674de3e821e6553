//! The single flat error type of the capability layer.

use std::fmt;

/// Why a capability, marker or feedback trailer was rejected.
///
/// Flat and `Copy` so it can index counter arrays ([`CapError::to_index`]).
/// `BufferTooSmall`, `BadKeyId` and `DuplicateKeyId` come from the caller's
/// own mistakes (stamping, key rotation), never from received packet data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapError {
    /// Fewer bytes than the capability or feedback trailer needs.
    Truncated,
    /// More bytes than the capability or feedback trailer holds.
    BadLength,
    /// The version nibble is not [`super::VERSION`].
    BadVersion,
    /// A reserved flag bit is set.
    BadFlags,
    /// The sender and the destination are of different IP families.
    FamilyMismatch,
    /// A key id above 15.
    BadKeyId,
    /// The key id names no key in the ring (never issued, or expired).
    UnknownKey,
    /// The MAC does not verify.
    BadMac,
    /// Older than `Th_rtt`, or issued in the future.
    Stale,
    /// Issued before the current detection period began.
    WrongPeriod,
    /// This capability id was already counted in this period.
    Replayed,
    /// The capability id is not below `Th_cap`.
    IdOutOfRange,
    /// The capability names another sender than the one it came back for.
    WrongSender,
    /// The TCP reserved bits hold an invalid marker (5..=7).
    BadMarker,
    /// A feedback count outside 1..=3.
    BadFeedbackCount,
    /// The output buffer is shorter than the capability.
    BufferTooSmall,
    /// Rotating to the key id already in use.
    DuplicateKeyId,
}

impl CapError {
    /// Number of variants.
    pub const COUNT: usize = 17;

    /// Every variant, in `to_index` order.
    pub const ALL: [CapError; Self::COUNT] = [
        CapError::Truncated,
        CapError::BadLength,
        CapError::BadVersion,
        CapError::BadFlags,
        CapError::FamilyMismatch,
        CapError::BadKeyId,
        CapError::UnknownKey,
        CapError::BadMac,
        CapError::Stale,
        CapError::WrongPeriod,
        CapError::Replayed,
        CapError::IdOutOfRange,
        CapError::WrongSender,
        CapError::BadMarker,
        CapError::BadFeedbackCount,
        CapError::BufferTooSmall,
        CapError::DuplicateKeyId,
    ];

    /// Return the stable snake_case name, usable as a counter label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            CapError::Truncated => "truncated",
            CapError::BadLength => "bad_length",
            CapError::BadVersion => "bad_version",
            CapError::BadFlags => "bad_flags",
            CapError::FamilyMismatch => "family_mismatch",
            CapError::BadKeyId => "bad_key_id",
            CapError::UnknownKey => "unknown_key",
            CapError::BadMac => "bad_mac",
            CapError::Stale => "stale",
            CapError::WrongPeriod => "wrong_period",
            CapError::Replayed => "replayed",
            CapError::IdOutOfRange => "id_out_of_range",
            CapError::WrongSender => "wrong_sender",
            CapError::BadMarker => "bad_marker",
            CapError::BadFeedbackCount => "bad_feedback_count",
            CapError::BufferTooSmall => "buffer_too_small",
            CapError::DuplicateKeyId => "duplicate_key_id",
        }
    }

    /// Return the position of this variant in [`CapError::ALL`].
    pub const fn to_index(self) -> usize {
        self as usize
    }

    /// Return the variant at `index` in [`CapError::ALL`], if any.
    pub const fn from_index(index: usize) -> Option<CapError> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for CapError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn all_is_in_index_order_and_names_unique() {
        let mut names = HashSet::new();
        for (i, e) in CapError::ALL.iter().enumerate() {
            assert_eq!(e.to_index(), i);
            assert_eq!(CapError::from_index(i), Some(*e));
            assert!(names.insert(e.as_str()));
            assert!(
                e.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert_eq!(e.to_string(), e.as_str());
        }
        assert_eq!(CapError::from_index(CapError::COUNT), None);
    }
}
