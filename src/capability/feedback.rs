//! Feedback trailers: 1 to 3 capabilities at the end of a victim's ACK.
//!
//! The trailer is `count` capabilities back to back, all of the ACK's family
//! (the sender they name is the ACK's destination). The count comes from the
//! marker ([`super::Marker::Feedback`]); a trailer whose length disagrees with
//! it is rejected whole.

use std::slice::ChunksExact;

use super::{CapError, wire_len};

/// The most capabilities one ACK carries.
pub const MAX_FEEDBACK: u8 = 3;

/// Return the length of a trailer of `count` capabilities of one family.
pub const fn feedback_len(count: u8, v6: bool) -> usize {
    count as usize * wire_len(v6)
}

/// Split a trailer of exactly `count` (1..=3) capabilities into them.
///
/// Each item is one capability's bytes, for [`super::Capability::verify`].
pub fn split_feedback(
    trailer: &[u8],
    count: u8,
    v6: bool,
) -> Result<ChunksExact<'_, u8>, CapError> {
    if count == 0 || count > MAX_FEEDBACK {
        return Err(CapError::BadFeedbackCount);
    }
    let want = feedback_len(count, v6);
    if trailer.len() < want {
        return Err(CapError::Truncated);
    }
    if trailer.len() > want {
        return Err(CapError::BadLength);
    }
    Ok(trailer.chunks_exact(wire_len(v6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(feedback_len(1, false), 32);
        assert_eq!(feedback_len(3, false), 96);
        assert_eq!(feedback_len(1, true), 44);
        assert_eq!(feedback_len(3, true), 132);
        assert_eq!(feedback_len(255, true), 255 * 44);
    }

    #[test]
    fn splits_exact_trailers_in_order() {
        for v6 in [false, true] {
            let len = wire_len(v6);
            for count in 1..=MAX_FEEDBACK {
                let trailer: Vec<u8> = (0..feedback_len(count, v6))
                    .map(|i| u8::try_from(i / len).unwrap_or(0xFF))
                    .collect();
                let parts: Vec<&[u8]> = split_feedback(&trailer, count, v6)
                    .map(Iterator::collect)
                    .unwrap_or_default();
                assert_eq!(parts.len(), usize::from(count));
                for (i, part) in parts.iter().enumerate() {
                    assert_eq!(part.len(), len);
                    assert!(part.iter().all(|&b| usize::from(b) == i));
                }
            }
        }
    }

    #[test]
    fn lying_counts_and_lengths_are_rejected() {
        let buf = [0u8; 200];
        for v6 in [false, true] {
            for count in [0u8, 4, 255] {
                let r = split_feedback(&buf[..feedback_len(1, v6)], count, v6);
                assert_eq!(r.err(), Some(CapError::BadFeedbackCount));
            }
            for count in 1..=MAX_FEEDBACK {
                let want = feedback_len(count, v6);
                let short = split_feedback(&buf[..want - 1], count, v6);
                assert_eq!(short.err(), Some(CapError::Truncated));
                let long = split_feedback(&buf[..want + 1], count, v6);
                assert_eq!(long.err(), Some(CapError::BadLength));
                let empty = split_feedback(&[], count, v6);
                assert_eq!(empty.err(), Some(CapError::Truncated));
            }
        }
    }
}
