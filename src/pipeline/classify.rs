//! Classify: which way a packet travels relative to the protected service.

use crate::driver::nft::Selection;
use crate::wire::{Parsed, proto};

/// The direction of a packet relative to the protected addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client to the protected service.
    ToProtected,
    /// From the protected service back to a client.
    FromProtected,
}

/// Find the packet's direction, or None if the selection does not cover it.
pub fn direction(sel: &Selection, p: &Parsed) -> Option<Direction> {
    let ports = match p.protocol {
        proto::TCP => &sel.tcp_ports,
        proto::UDP => &sel.udp_ports,
        _ => return None,
    };
    let (src_port, dst_port) = p.ports()?;
    let covers = |addr, port| {
        sel.addresses.iter().any(|a| a.contains(addr)) && ports.iter().any(|r| r.contains(port))
    };
    if covers(p.dst, dst_port) {
        Some(Direction::ToProtected)
    } else if covers(p.src, src_port) {
        Some(Direction::FromProtected)
    } else {
        None
    }
}

/// Whether `addr` is one of the protected addresses (any protocol, any port).
pub fn is_protected(sel: &Selection, addr: std::net::IpAddr) -> bool {
    sel.addresses.iter().any(|a| a.contains(addr))
}
