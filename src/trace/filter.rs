//! Which packets are traced: a share of them (one in N), and of those the ones that
//! match a protocol, an address and a port, as an operator narrows a tcpdump.

use super::Head;
use crate::driver::nft::{PortRange, Prefix};

/// What a packet must be to be traced. Empty lists match every packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Trace one packet in this many (1: every one), counted before the match.
    pub sample: u64,
    /// The IP protocol number (after IPv6 extension headers).
    pub protocol: Option<u8>,
    /// Source or destination in one of these prefixes.
    pub hosts: Vec<Prefix>,
    /// Source or destination port in one of these ranges (TCP and UDP only).
    pub ports: Vec<PortRange>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            sample: 1,
            protocol: None,
            hosts: Vec::new(),
            ports: Vec::new(),
        }
    }
}

impl Filter {
    /// Whether the match needs the packet's headers (a packet that cannot be parsed
    /// then goes untraced).
    pub fn needs_headers(&self) -> bool {
        self.protocol.is_some() || !self.hosts.is_empty() || !self.ports.is_empty()
    }

    /// Whether a packet with these headers is traced.
    pub fn matches(&self, h: &Head) -> bool {
        let has_ports = self.protocol_has_ports(h.proto);
        self.protocol.is_none_or(|p| p == h.proto)
            && (self.hosts.is_empty()
                || self
                    .hosts
                    .iter()
                    .any(|n| n.contains(h.src) || n.contains(h.dst)))
            && (self.ports.is_empty()
                || (has_ports
                    && self
                        .ports
                        .iter()
                        .any(|r| r.contains(h.sport) || r.contains(h.dport))))
    }

    fn protocol_has_ports(&self, proto: u8) -> bool {
        matches!(proto, crate::wire::proto::TCP | crate::wire::proto::UDP)
    }
}
