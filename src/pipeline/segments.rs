//! GSO super-packets: what they stand for on the wire, and how a trailer reaches one.
//!
//! With the hybrid path the kernel hands over a GSO super-packet (up to 64 KB, cut into
//! segments only after our verdict) whole. Counting it as one packet would let a sender
//! pass 40 times its window, so it counts as the segments it will become. A rewritten
//! super-packet loses its segmentation, so a stage never writes one: a trailer it would
//! append is kept as a [`Trailer`] for the packet's first segment, and the driver routes
//! the packet to its precise queue, where the kernel delivers it already cut and
//! [`rewrite_segment`] applies the trailer. Invariant: the only edits a super-packet
//! ever needs are a cleared marker on every segment (no super-packet carries a
//! capability: the segments the mbox stamps or the victim feeds back are never merged
//! again) and one trailer on the first.

use crate::capability::Marker;
use crate::wire::{self, Parsed};

use super::Reason;

/// What becomes of the segments of a routed super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segments {
    /// Each loses any marker, the first takes the kept trailer (`Pipeline::segment`).
    Trailer,
    /// Each runs through the whole pipeline, as a packet of its own: the super-packet
    /// could not be read whole.
    Process,
}

/// A trailer and the marker that announces it, for the first segment of a super-packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub marker: Marker,
    pub bytes: Vec<u8>,
    /// The mbox's stamp: its sender, id and time of issue, to take back should the
    /// segment not fit the path after all.
    pub stamp: Option<IssuedStamp>,
}

/// A stamp's sender, capability id and time of issue.
pub type IssuedStamp = (std::net::IpAddr, u32, std::time::Instant);

/// Where a stage's trailer goes: onto the packet, or, for a super-packet or a packet
/// copied only in part (`defer`), into `deferred` for its first segment.
pub struct TrailerSink<'a> {
    /// A GSO super-packet: it stands for several wire packets.
    pub gso: bool,
    /// The packet may not be written here (a super-packet, or a partial copy).
    pub defer: bool,
    pub deferred: &'a mut Option<Trailer>,
}

impl TrailerSink<'_> {
    /// Append `bytes` to the packet in `buf` and set `marker`, or keep both (and the
    /// `stamp` they carry) for the first segment of a super-packet.
    pub fn append(
        &mut self,
        buf: &mut Vec<u8>,
        p: &Parsed,
        (bytes, marker): (&[u8], Marker),
        stamp: Option<IssuedStamp>,
    ) -> Result<(), Reason> {
        if self.defer {
            *self.deferred = Some(Trailer {
                marker,
                bytes: bytes.to_vec(),
                stamp,
            });
            return Ok(());
        }
        append_marked(buf, p, bytes, marker)
    }
}

/// Append `bytes` and set `marker` in the reserved bits (keeping AE).
fn append_marked(
    buf: &mut Vec<u8>,
    p: &Parsed,
    bytes: &[u8],
    marker: Marker,
) -> Result<(), Reason> {
    let p = wire::append_trailer(buf, p, bytes).map_err(Reason::Malformed)?;
    let bits = marker.apply(wire::tcp_reserved(buf, &p));
    wire::set_tcp_reserved(buf, &p, bits)
        .map(|_| ())
        .map_err(Reason::Malformed)
}

/// The payload bytes of one segment under `mss`: TCP options come out of the MSS.
fn segment_payload(p: &Parsed, mss: u16) -> usize {
    let options = p
        .payload_offset
        .saturating_sub(p.l4_offset + BASE_TCP_HEADER);
    usize::from(mss).saturating_sub(options).max(1)
}

/// A TCP header without options.
const BASE_TCP_HEADER: usize = 20;

/// The wire packets `p` stands for: 1, or for a super-packet its payload cut into
/// segments under `mss`. An estimate where the flow's MSS is smaller than `mss`.
pub fn wire_packets(p: &Parsed, gso: bool, mss: u16) -> u32 {
    if !gso {
        return 1;
    }
    let segments = p.payload_len.div_ceil(segment_payload(p, mss)).max(1);
    u32::try_from(segments).unwrap_or(u32::MAX)
}

/// The length of `p`'s largest wire packet: the packet, or a super-packet's segment
/// under `mss`.
pub fn largest_wire_len(p: &Parsed, gso: bool, mss: u16) -> usize {
    if !gso {
        return p.total_len();
    }
    p.payload_offset + p.payload_len.min(segment_payload(p, mss))
}

/// Rewrite one segment of a routed super-packet in `buf`: clear any marker, and on the
/// `first` give it `trailer` unless that would take it past `max_len` bytes. Checksums
/// are recomputed whole. Returns whether the segment changed, and whether the trailer
/// had to be left off (too big).
pub fn rewrite_segment(
    buf: &mut Vec<u8>,
    first: bool,
    trailer: Option<&Trailer>,
    max_len: usize,
) -> Result<(bool, bool), Reason> {
    let p = wire::parse(buf).map_err(Reason::Malformed)?;
    let reserved = wire::tcp_reserved(buf, &p);
    let mut changed = false;
    if Marker::from_reserved(reserved) != Ok(Marker::None) {
        wire::set_tcp_reserved(buf, &p, Marker::None.apply(reserved)).map_err(Reason::Malformed)?;
        changed = true;
    }
    let mut too_big = false;
    if let (true, Some(t)) = (first, trailer) {
        if p.total_len() + t.bytes.len() <= max_len {
            append_marked(buf, &p, &t.bytes, t.marker)?;
            changed = true;
        } else {
            too_big = true;
        }
    }
    if changed {
        let p = wire::parse(buf).map_err(Reason::Malformed)?;
        wire::fill_checksums(buf, &p).map_err(Reason::Malformed)?;
    }
    Ok((changed, too_big))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::Builder;
    use crate::wire::tcp;

    fn segment(payload: usize, reserved_marker: Option<Marker>) -> Vec<u8> {
        let mut b = Builder::tcp(
            "198.18.1.2".parse().unwrap(),
            "198.18.2.2".parse().unwrap(),
            40000,
            8080,
        )
        .flags(tcp::ACK)
        .payload(&vec![7u8; payload])
        .build();
        if let Some(m) = reserved_marker {
            let p = wire::parse(&b).unwrap();
            let bits = m.apply(wire::tcp_reserved(&b, &p));
            wire::set_tcp_reserved(&mut b, &p, bits).unwrap();
            wire::fill_checksums(&mut b, &p).unwrap();
        }
        b
    }

    fn stamp() -> Trailer {
        Trailer {
            marker: Marker::Stamped,
            bytes: vec![0xAB; 32],
            stamp: None,
        }
    }

    #[test]
    fn a_super_packet_counts_as_its_segments() {
        let p = wire::parse(&segment(10_000, None)).unwrap();
        assert_eq!(wire_packets(&p, false, 1400), 1);
        assert_eq!(wire_packets(&p, true, 1400), 8);
        assert_eq!(wire_packets(&p, true, 1000), 10);
        assert_eq!(largest_wire_len(&p, true, 1400), 40 + 1400);
        assert_eq!(largest_wire_len(&p, false, 1400), 40 + 10_000);
        let bare = wire::parse(&segment(0, None)).unwrap();
        assert_eq!(wire_packets(&bare, true, 1400), 1, "never 0");
        assert_eq!(
            wire_packets(&p, true, 0),
            10_000,
            "an MSS of 0 counts bytes"
        );
        // Options take their room out of the MSS: 1400 - 12 bytes of timestamps.
        let ts = Builder::tcp(
            "198.18.1.2".parse().unwrap(),
            "198.18.2.2".parse().unwrap(),
            40000,
            8080,
        )
        .raw_tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
        .payload(&[7u8; 2_776])
        .build();
        let p = wire::parse(&ts).unwrap();
        assert_eq!(wire_packets(&p, true, 1400), 2);
        assert_eq!(largest_wire_len(&p, true, 1400), 20 + 20 + 1400);
    }

    #[test]
    fn a_super_packets_trailer_waits_for_its_first_segment() {
        let mut deferred = None;
        let mut buf = segment(10_000, None);
        let before = buf.clone();
        let p = wire::parse(&buf).unwrap();
        let mut sink = TrailerSink {
            gso: true,
            defer: true,
            deferred: &mut deferred,
        };
        sink.append(&mut buf, &p, (&[0xAB; 32], Marker::Stamped), None)
            .unwrap();
        assert_eq!(buf, before, "the super-packet is left as it is");
        assert_eq!(deferred, Some(stamp()));
        // A single packet takes it at once.
        let mut none = None;
        let mut sink = TrailerSink {
            gso: false,
            defer: false,
            deferred: &mut none,
        };
        sink.append(&mut buf, &p, (&[0xAB; 32], Marker::Stamped), None)
            .unwrap();
        assert_eq!((buf.len(), none), (before.len() + 32, None));
    }

    #[test]
    fn the_first_segment_gets_the_trailer_and_the_rest_stay_as_they_are() {
        let t = stamp();
        let mut first = segment(1400, None);
        assert_eq!(
            rewrite_segment(&mut first, true, Some(&t), 1500),
            Ok((true, false))
        );
        let p = wire::parse(&first).unwrap();
        assert_eq!(p.total_len(), 40 + 1400 + 32);
        assert!(first.ends_with(&[0xAB; 32]));
        assert_eq!(
            Marker::from_reserved(wire::tcp_reserved(&first, &p)),
            Ok(Marker::Stamped)
        );
        assert!(wire::verify_checksums(&first, &p));
        let mut rest = segment(1400, None);
        let before = rest.clone();
        assert_eq!(
            rewrite_segment(&mut rest, false, Some(&t), 1500),
            Ok((false, false))
        );
        assert_eq!(rest, before);
    }

    #[test]
    fn markers_are_cleared_on_every_segment_and_a_trailer_that_does_not_fit_is_left_off() {
        let t = stamp();
        for first in [true, false] {
            let mut s = segment(1460, Some(Marker::Stamped));
            // 1500 bytes already: the trailer would not fit.
            let (changed, too_big) = rewrite_segment(&mut s, first, Some(&t), 1500).unwrap();
            assert_eq!((changed, too_big), (true, first));
            let p = wire::parse(&s).unwrap();
            assert_eq!(p.total_len(), 1500);
            assert_eq!(
                Marker::from_reserved(wire::tcp_reserved(&s, &p)),
                Ok(Marker::None)
            );
            assert!(wire::verify_checksums(&s, &p));
        }
    }

    #[test]
    fn a_segment_that_does_not_parse_is_refused() {
        let mut junk = vec![0x45, 0, 0];
        assert!(rewrite_segment(&mut junk, true, None, 1500).is_err());
    }
}
