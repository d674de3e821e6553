//! The TCP reserved-bits marker: none, stamped, or a feedback count.
//!
//! Functions here take and return the 4-bit reserved value (low nibble of
//! TCP header byte 12). Bit `0x01` is AE (AccECN) and passes through
//! unchanged; only bits `0x0E` carry the marker (table in the module docs).
//! Bits above the nibble are ignored on input and zero on output.

use super::CapError;
use super::feedback::MAX_FEEDBACK;

/// The AccECN AE bit within the reserved nibble; never changed.
const AE: u8 = 0x01;

/// The marker's bits within the reserved nibble.
const MASK: u8 = 0x0E;

/// The marker value (before the shift) of a stamped packet.
const STAMPED: u8 = 4;

/// How many feedback capabilities an ACK carries: 1, 2 or 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedbackCount(u8);

impl FeedbackCount {
    /// One capability.
    pub const ONE: FeedbackCount = FeedbackCount(1);
    /// The most an ACK carries.
    pub const MAX: FeedbackCount = FeedbackCount(MAX_FEEDBACK);

    /// Return the count `n` if it is 1..=3.
    pub const fn new(n: u8) -> Result<FeedbackCount, CapError> {
        if n >= 1 && n <= MAX_FEEDBACK {
            Ok(FeedbackCount(n))
        } else {
            Err(CapError::BadFeedbackCount)
        }
    }

    /// Return the count as a number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// What a packet's TCP reserved bits say it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Marker {
    /// No capability.
    None,
    /// A stamped data packet carrying one capability (client → victim).
    Stamped,
    /// An ACK carrying this many feedback capabilities (victim → client).
    Feedback(FeedbackCount),
}

impl Marker {
    /// Read the marker from the reserved nibble, ignoring the AE bit.
    pub const fn from_reserved(bits: u8) -> Result<Marker, CapError> {
        match (bits & MASK) >> 1 {
            0 => Ok(Marker::None),
            STAMPED => Ok(Marker::Stamped),
            r => match FeedbackCount::new(r) {
                Ok(n) => Ok(Marker::Feedback(n)),
                Err(_) => Err(CapError::BadMarker),
            },
        }
    }

    /// Return the reserved nibble `bits` with this marker written and AE kept.
    pub const fn apply(self, bits: u8) -> u8 {
        let r = match self {
            Marker::None => 0,
            Marker::Stamped => STAMPED,
            Marker::Feedback(n) => n.get(),
        };
        (bits & AE) | (r << 1)
    }

    /// Return the marker for an ACK carrying `n` feedback capabilities.
    pub const fn feedback(n: u8) -> Result<Marker, CapError> {
        match FeedbackCount::new(n) {
            Ok(n) => Ok(Marker::Feedback(n)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nibble_reads_as_the_table_says() {
        for bits in 0u8..=0x0F {
            let got = Marker::from_reserved(bits);
            let want = match bits >> 1 {
                0 => Ok(Marker::None),
                n @ 1..=3 => Ok(Marker::Feedback(FeedbackCount(n))),
                4 => Ok(Marker::Stamped),
                _ => Err(CapError::BadMarker),
            };
            assert_eq!(got, want, "bits {bits:#x}");
        }
    }

    #[test]
    fn apply_keeps_ae_and_round_trips() {
        let markers = [
            Marker::None,
            Marker::Stamped,
            Marker::Feedback(FeedbackCount(1)),
            Marker::Feedback(FeedbackCount(2)),
            Marker::Feedback(FeedbackCount(3)),
        ];
        for m in markers {
            for bits in 0u8..=0x0F {
                let out = m.apply(bits);
                assert_eq!(out & AE, bits & AE, "{m:?} on {bits:#x}");
                assert_eq!(out & !0x0F, 0);
                assert_eq!(Marker::from_reserved(out), Ok(m));
            }
        }
        assert_eq!(Marker::Stamped.apply(0x01), 0x09);
        assert_eq!(Marker::Stamped.apply(0x0F), 0x09);
        assert_eq!(Marker::Feedback(FeedbackCount(3)).apply(0x00), 0x06);
        assert_eq!(Marker::None.apply(0x0F), 0x01);
        assert_eq!(Marker::None.apply(0x0E), 0x00);
    }

    #[test]
    fn ae_alone_is_no_marker_and_high_bits_are_ignored() {
        assert_eq!(Marker::from_reserved(0x01), Ok(Marker::None));
        assert_eq!(Marker::from_reserved(0xF0), Ok(Marker::None));
        assert_eq!(Marker::from_reserved(0xF9), Ok(Marker::Stamped));
    }

    #[test]
    fn markers_five_to_seven_are_rejected() {
        for r in 5u8..=7 {
            assert_eq!(Marker::from_reserved(r << 1), Err(CapError::BadMarker));
            assert_eq!(
                Marker::from_reserved((r << 1) | AE),
                Err(CapError::BadMarker)
            );
        }
    }

    #[test]
    fn feedback_count_is_one_to_three() {
        assert_eq!(Marker::feedback(0), Err(CapError::BadFeedbackCount));
        assert_eq!(Marker::feedback(4), Err(CapError::BadFeedbackCount));
        for n in 1..=3 {
            assert_eq!(FeedbackCount::new(n).map(FeedbackCount::get), Ok(n));
            assert_eq!(Marker::feedback(n).map(|m| m.apply(0)), Ok(n << 1),);
        }
        assert_eq!(FeedbackCount::ONE.get(), 1);
        assert_eq!(FeedbackCount::MAX.get(), 3);
    }
}
