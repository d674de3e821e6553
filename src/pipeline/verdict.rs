//! What the pipeline decides for a packet, and why.

use crate::labels::Labels;
use crate::police::Drop;
use crate::wire::WireError;

/// The fate of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through as it arrived.
    Accept,
    /// Let it through with the rewritten buffer.
    AcceptModified,
    /// A GSO super-packet to rewrite or to read segment by segment: send it to the
    /// precise queue, where the kernel delivers its segments.
    Route(crate::pipeline::Segments),
    /// Let it through unchanged, counted under a reason (e.g. malformed, fail-open).
    Pass(Reason),
    /// Drop it, for a counted reason.
    Drop(Reason),
    /// Keep it in the queue unanswered: the pipeline releases it later (content rules,
    /// see `ports::splice`).
    Hold,
}

/// Why a packet was dropped, or let through without being handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The parser refused the packet.
    Malformed(WireError),
    /// The kernel copied only part of the packet to us.
    TruncatedCopy,
    /// victim: protected traffic that did not arrive through an mbox.
    Bypassed,
    /// A packet marked as stamped, too short to hold a capability.
    TrailerTooShort,
    /// An ACK whose feedback count promises more bytes than it carries.
    FeedbackTooShort,
    /// mbox, tunnel mode: the packet would exceed the path MTU once wrapped.
    TooBigForTunnel,
    /// victim: tunnel traffic from an address that is not a configured mbox.
    TunnelFromStranger,
    /// victim: a tunnel carrying anything but protected traffic to the tunnel's destination.
    TunnelNotProtected,
    /// Tunnel mode: a tunnel payload whose MAC (or header) does not check.
    TunnelUnauthenticated,
    /// mbox, tunnel mode: a feedback datagram of the victim, counted and consumed.
    FeedbackDatagram,
    /// mbox: the police dropped it (best-effort while a loss rate is over its
    /// threshold, or non-TCP beyond its cap).
    Policed(crate::police::Drop),
    /// The packet matched our rules but not the configured selection (rules and
    /// config disagree, e.g. after a manual `nft` edit); passed unchanged.
    Unselected,
    /// A GSO super-packet with a capability marker where a trailer would be stripped.
    MarkedSuperPacket,
    /// victim: a new connection's SYN past its port's accept quota, held back (the
    /// client sends it again).
    AcceptHeld,
    /// victim: a segment past its port's output quota, held back (TCP sends it again).
    OutputHeld,
    /// victim, content rules: a client's segment while the engine holds its connection's
    /// first (a retransmission, or data past the first segment: TCP sends it again), or
    /// held packets of a connection the client left.
    SpliceWaiting,
    /// victim, content rules: the server's SYN-ACK, taken by the engine (the client has
    /// the engine's).
    SpliceServerHandshake,
    /// victim, content rules: held packets of a connection the server refused or never
    /// answered (the client got a reset).
    SpliceFailed,
}

impl Reason {
    /// The reasons without an inner cause, in their counters' order (after every
    /// `Malformed` and every `Policed` one).
    const PLAIN: [Reason; 16] = [
        Reason::TruncatedCopy,
        Reason::Bypassed,
        Reason::TrailerTooShort,
        Reason::FeedbackTooShort,
        Reason::TooBigForTunnel,
        Reason::TunnelFromStranger,
        Reason::TunnelNotProtected,
        Reason::TunnelUnauthenticated,
        Reason::FeedbackDatagram,
        Reason::Unselected,
        Reason::MarkedSuperPacket,
        Reason::AcceptHeld,
        Reason::OutputHeld,
        Reason::SpliceWaiting,
        Reason::SpliceServerHandshake,
        Reason::SpliceFailed,
    ];

    /// Name the reason as a stable counter label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Malformed(e) => e.as_str(),
            Reason::TruncatedCopy => "truncated_copy",
            Reason::Bypassed => "bypassed_mbox",
            Reason::TrailerTooShort => "trailer_too_short",
            Reason::FeedbackTooShort => "feedback_too_short",
            Reason::TooBigForTunnel => "too_big_for_tunnel",
            Reason::TunnelFromStranger => "tunnel_from_stranger",
            Reason::TunnelNotProtected => "tunnel_not_protected",
            Reason::TunnelUnauthenticated => "tunnel_unauthenticated",
            Reason::FeedbackDatagram => "feedback_datagram",
            Reason::Policed(d) => d.as_str(),
            Reason::Unselected => "unselected",
            Reason::MarkedSuperPacket => "marked_super_packet",
            Reason::AcceptHeld => "accept_held",
            Reason::OutputHeld => "output_held",
            Reason::SpliceWaiting => "splice_waiting",
            Reason::SpliceServerHandshake => "splice_server_handshake",
            Reason::SpliceFailed => "splice_failed",
        }
    }
}

impl Labels for Reason {
    const COUNT: usize = WireError::COUNT + Drop::COUNT + Reason::PLAIN.len();

    fn index(self) -> usize {
        match self {
            Reason::Malformed(e) => e.index(),
            Reason::Policed(d) => WireError::COUNT + d.index(),
            // A drop or pass, not a packet's every verdict: a scan of 16 is cheap here.
            // One missing from the list is counted as "unlabelled" (see `Tally`).
            plain => {
                let at = Reason::PLAIN.iter().position(|&r| r == plain);
                WireError::COUNT + Drop::COUNT + at.unwrap_or(Reason::PLAIN.len())
            }
        }
    }

    fn label(self) -> &'static str {
        self.as_str()
    }

    fn label_at(i: usize) -> Option<&'static str> {
        match (
            i.checked_sub(WireError::COUNT),
            i.checked_sub(WireError::COUNT + Drop::COUNT),
        ) {
            (None, _) => WireError::label_at(i),
            (Some(j), None) => Drop::label_at(j),
            (_, Some(k)) => Reason::PLAIN.get(k).map(Reason::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_counts_under_its_own_label() {
        let all: Vec<Reason> = WireError::ALL
            .iter()
            .map(|&e| Reason::Malformed(e))
            .chain(Drop::ALL.iter().map(|&d| Reason::Policed(d)))
            .chain(Reason::PLAIN)
            .collect();
        assert_eq!(all.len(), Reason::COUNT);
        crate::labels::assert_label_set(&all);
    }
}
