//! What the pipeline decides for a packet, and why.

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
}

impl Reason {
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
        }
    }
}
