//! The single flat error type of the capability layer.

use crate::labels::labelled_enum;

labelled_enum! {
    /// Why a capability, marker or feedback trailer was rejected.
    ///
    /// `BufferTooSmall`, `BadKeyId` and `DuplicateKeyId` come from the caller's
    /// own mistakes (stamping, key rotation), never from received packet data.
    pub enum CapError {
        /// Fewer bytes than the capability or feedback trailer needs.
        Truncated => "truncated",
        /// More bytes than the capability or feedback trailer holds.
        BadLength => "bad_length",
        /// The version nibble is not [`super::VERSION`].
        BadVersion => "bad_version",
        /// A reserved flag bit is set.
        BadFlags => "bad_flags",
        /// The sender and the destination are of different IP families.
        FamilyMismatch => "family_mismatch",
        /// A key id above 15.
        BadKeyId => "bad_key_id",
        /// The key id names no key in the ring (never issued, or expired).
        UnknownKey => "unknown_key",
        /// The MAC does not verify.
        BadMac => "bad_mac",
        /// Older than `Th_rtt`, or issued in the future.
        Stale => "stale",
        /// Issued before the current detection period began.
        WrongPeriod => "wrong_period",
        /// This capability id was already counted in this period.
        Replayed => "replayed",
        /// The capability id is not below `Th_cap`.
        IdOutOfRange => "id_out_of_range",
        /// The capability names another sender than the one it came back for.
        WrongSender => "wrong_sender",
        /// The TCP reserved bits hold an invalid marker (5..=7).
        BadMarker => "bad_marker",
        /// A feedback count outside 1..=3.
        BadFeedbackCount => "bad_feedback_count",
        /// The output buffer is shorter than the capability.
        BufferTooSmall => "buffer_too_small",
        /// Rotating to the key id already in use.
        DuplicateKeyId => "duplicate_key_id",
    }
}

labelled_enum! {
    /// Why a capability, marker or feedback trailer was refused for a reason the
    /// capability itself cannot show: where it came from, or whom it names.
    pub enum Refusal {
        /// Feedback or a feedback datagram that did not come from the victim's side.
        OffVictimLink => "off_victim_link",
        /// A client's packet carried one of our markers; cleared.
        ClientMarker => "client_marker",
        /// A feedback count promising more bytes than the packet holds.
        FeedbackTooShort => "feedback_too_short",
        /// A returned capability issued by another mbox.
        WrongMbox => "wrong_mbox",
        /// A returned capability of a sender the police no longer holds.
        UnknownSender => "unknown_sender",
    }
}

/// Every refusal the capability counters tell apart.
pub type Rejected = crate::labels::Joined<CapError, Refusal>;

impl From<CapError> for Rejected {
    fn from(e: CapError) -> Self {
        Rejected::First(e)
    }
}

impl From<Refusal> for Rejected {
    fn from(r: Refusal) -> Self {
        Rejected::Second(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_count_under_distinct_labels() {
        let all: Vec<Rejected> = CapError::ALL
            .iter()
            .map(|&e| e.into())
            .chain(Refusal::ALL.iter().map(|&r| r.into()))
            .collect();
        crate::labels::assert_label_set(&all);
    }

    #[test]
    fn labels_are_unique_snake_case() {
        crate::labels::assert_labels(CapError::ALL.iter().map(CapError::as_str));
        assert_eq!(CapError::Truncated.to_string(), "truncated");
    }
}
