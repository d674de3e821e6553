//! Capabilities: the mbox's proof that a packet reached the victim.
//!
//! The mbox appends one capability after the TCP payload of a sample of each
//! sender's data packets (client → victim). The victim strips it before its
//! TCP stack sees the packet and later echoes it back, unchanged, at the end
//! of its ACKs (victim → client), 1 to 3 per ACK. The mbox strips that
//! feedback from every ACK and counts a capability as returned only if its MAC
//! verifies, it names the ACK's destination as sender, it belongs to the
//! current period, it is fresh, and its id was not counted before.
//!
//! # Wire format (version 1)
//!
//! All integers big-endian. 32 bytes for an IPv4 sender, 44 for IPv6
//! ([`wire_len`]).
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +-------+-------+-------------+-+-------------------------------+
//! |version| key id|  reserved=0 |6|            mbox id            |  0
//! +-------+-------+-------------+-+-------------------------------+
//! |               issue time (ms, mbox clock, wrapping)           |  4
//! +---------------------------------------------------------------+
//! |                        capability id                          |  8
//! +---------------------------------------------------------------+
//! |        sender (client) address: 4 bytes, or 16 if bit 6       | 12
//! +---------------------------------------------------------------+
//! |        MAC: HMAC-SHA256(key[key id], header ‖ sender ‖ dst)   | 16 or 28
//! |             truncated to its first 16 bytes                   |
//! +---------------------------------------------------------------+
//! ```
//!
//! - byte 0: version in the high nibble (= [`VERSION`]), key id (0..=15) in
//!   the low nibble, so keys can rotate.
//! - byte 1: flags. Bit 0 (the "6" above, value `0x01`) means the sender
//!   address is IPv6. Bits 1..7 must be 0; a capability with any of them set
//!   is rejected.
//! - `dst` is the protected server's address, of the sender's family. It is
//!   bound by the MAC but not carried: the mbox knows it from the packet.
//!
//! The MAC binds every field and the destination, so a capability can't be
//! moved to another sender, server, mbox, time or id. Only the mbox holds
//! the keys ([`KeyRing`]); the victim never needs them. MACs are compared in
//! constant time.
//!
//! # TCP marker
//!
//! A packet carrying capabilities says so in the TCP reserved bits (the low
//! nibble of TCP header byte 12). Bit `0x01` there is AE (AccECN, RFC 9768)
//! and is never read or changed here; ECN's CWR and ECE live in byte 13 and
//! are not touched either. The three bits `0x0E` hold `r << 1`:
//!
//! | r | meaning | direction |
//! |---|---|---|
//! | 0 | no capability | any |
//! | 1..=3 | an ACK carrying `r` feedback capabilities | victim → client |
//! | 4 | a stamped packet carrying one capability | client → victim |
//! | 5..=7 | invalid: rejected | |
//!
//! The marker only crosses the mbox ⇄ victim link: the victim clears it
//! before its stack sees the packet, the mbox before the client does.
//!
//! # On the wire
//!
//! ```text
//! stamped data packet, mbox → victim (r = 4):
//! +-----------+----------------------+-------------------+------------+
//! | IP header | TCP header, res=100x | payload (n bytes) | capability |
//! +-----------+----------------------+-------------------+------------+
//!                                                        32 or 44 bytes
//!
//! ACK with feedback, victim → mbox (r = k, 1..=3):
//! +-----------+----------------------+---------+-------+-----+-------+
//! | IP header | TCP header, res=kkkx | payload | cap 1 | ... | cap k |
//! +-----------+----------------------+---------+-------+-----+-------+
//!                                               k × 32 or k × 44 bytes
//! ```
//!
//! (`x` is the AE bit, kept as it was.) The IP length and the TCP checksum
//! cover the trailer; the `wire` module's editors keep them right.
//!
//! # Invariants
//!
//! - Nothing here panics on packet data or does I/O, except
//!   [`generate_key_line`] and [`Key::random`], which read `/dev/urandom`.
//! - [`Capability::decode`] checks structure only; only
//!   [`Capability::verify`] establishes that the mbox issued the bytes.
//! - Key bytes never appear in `Debug` output or errors, and key material is
//!   zeroed when a [`Key`] is dropped.
//! - Time is passed in: `u32` milliseconds of the mbox's clock, compared with
//!   `wrapping_sub`, so ages must stay below 2³¹ ms (24 days).

mod codec;
mod error;
mod feedback;
mod key;
mod marker;
mod shared;
pub mod tunnel;
mod window;

pub use codec::Capability;
pub use error::{CapError, Refusal, Rejected};
pub use feedback::{MAX_FEEDBACK, feedback_len, split_feedback};
pub use key::{KEY_LEN, Key, KeyFileError, KeyRing, MAX_KEY_ID, RunId, generate_key_line};
pub use marker::{FeedbackCount, Marker};
pub use shared::{KeyReader, SharedKeys};
pub use window::{FUTURE_TOLERANCE_MS, MAX_TH_CAP, ReturnWindow, check_fresh, check_period};

/// The wire format version this module reads and writes.
pub const VERSION: u8 = 1;

/// Bytes before the sender address: version/key id, flags, mbox id, time, id.
pub const HEADER_LEN: usize = 12;

/// Bytes of the truncated MAC.
pub const MAC_LEN: usize = 16;

/// Flag bit: the sender address is IPv6.
pub const FLAG_V6: u8 = 0x01;

/// Length of the longest capability (IPv6 sender).
pub const MAX_WIRE_LEN: usize = wire_len(true);

/// Return the length of a capability on the wire for a sender of that family.
pub const fn wire_len(v6: bool) -> usize {
    HEADER_LEN + if v6 { 16 } else { 4 } + MAC_LEN
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests_codec;
#[cfg(test)]
mod tests_key;
