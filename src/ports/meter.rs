//! Per-port statistics, as the seed's netmeter kept them: for each protected port, the
//! bytes in and out, the connections established and how long their handshakes took,
//! and the connections half-open now. Counted from the packets the engine sees, in the
//! port the client connected to (the victim's chains run before destination NAT and
//! after source NAT). The kernel's accept queues are read apart, at stats time.
//!
//! A connection is established when the client acknowledges without SYN after its SYN:
//! the handshake's time runs from the first SYN to that ACK. Half-open connections are
//! bounded ([`MAX_HALF_OPEN`] per worker): past it, SYNs are counted `untracked`, and a
//! handshake not done in [`HANDSHAKE_TIMEOUT`] is counted `abandoned` and forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pipeline::Direction;
use crate::wire::{Parsed, proto, tcp};

/// Half-open connections each worker follows at most (a SYN flood fills it; the rest
/// of its SYNs are counted, not followed).
pub const MAX_HALF_OPEN: usize = 65_536;
/// Ports each worker keeps counts for at most; packets of further ports count in
/// `other_ports`.
pub const MAX_PORTS: usize = 4096;
/// A handshake not done in this long is abandoned (Linux gives up on a SYN-ACK after
/// about 63 s of retries, on a SYN after about 127 s; a client that waits this long is
/// gone for an operator's purposes).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// One port's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounts {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// TCP: handshakes completed.
    pub established: u64,
    /// TCP: their SYN-to-ACK times, summed, in microseconds.
    pub handshake_us: u64,
    /// TCP: handshakes begun and not done now.
    pub half_open: u64,
    /// TCP: handshakes given up after [`HANDSHAKE_TIMEOUT`], or reset by the client.
    pub abandoned: u64,
}

impl PortCounts {
    fn add(&mut self, o: &PortCounts) {
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.established += o.established;
        self.handshake_us += o.handshake_us;
        self.half_open += o.half_open;
        self.abandoned += o.abandoned;
    }
}

/// One row of `mpolice stats --ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRow {
    /// `tcp` or `udp`, as its IP protocol number.
    pub proto: u8,
    pub port: u16,
    pub counts: PortCounts,
}

/// What one worker's meter (or all of them) counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub rows: Vec<PortRow>,
    /// SYNs not followed: the half-open table was full.
    pub untracked: u64,
    /// Packets of ports past [`MAX_PORTS`].
    pub other_ports: u64,
}

impl PortStats {
    /// Add another worker's counts, row by row.
    pub fn add(&mut self, o: &PortStats) {
        for r in &o.rows {
            match self
                .rows
                .iter_mut()
                .find(|t| (t.proto, t.port) == (r.proto, r.port))
            {
                Some(t) => t.counts.add(&r.counts),
                None => self.rows.push(*r),
            }
        }
        self.rows.sort_by_key(|r| (r.proto, r.port));
        self.untracked += o.untracked;
        self.other_ports += o.other_ports;
    }
}

/// A client's connection being set up: its address and port, and the protected port.
type Handshake = (IpAddr, u16, u16);

/// One worker's meter.
#[derive(Debug, Default)]
pub struct PortMeter {
    ports: HashMap<(u8, u16), PortCounts>,
    half_open: HashMap<Handshake, Instant>,
    untracked: u64,
    other_ports: u64,
}

impl PortMeter {
    /// Count one packet of protected traffic (`len` bytes on the wire) at `now`.
    pub fn packet(&mut self, dir: Direction, p: &Parsed, len: usize, now: Instant) {
        let Some((sport, dport)) = p.ports() else {
            return;
        };
        let port = match dir {
            Direction::ToProtected => dport,
            Direction::FromProtected => sport,
        };
        let k = (p.protocol, port);
        if self.ports.len() >= MAX_PORTS && !self.ports.contains_key(&k) {
            self.other_ports += 1;
            return;
        }
        let counts = self.ports.entry(k).or_default();
        let len = len as u64;
        match dir {
            Direction::ToProtected => {
                counts.packets_in += 1;
                counts.bytes_in += len;
            }
            Direction::FromProtected => {
                counts.packets_out += 1;
                counts.bytes_out += len;
                return;
            }
        }
        let Some(t) = p.tcp().filter(|_| p.protocol == proto::TCP) else {
            return;
        };
        let key = (p.src, sport, dport);
        let (syn, ack, rst) = (t.flags & tcp::SYN, t.flags & tcp::ACK, t.flags & tcp::RST);
        if syn != 0 && ack == 0 {
            if self.half_open.contains_key(&key) {
                return; // A retransmitted SYN: the handshake began with the first.
            }
            if self.half_open.len() >= MAX_HALF_OPEN {
                self.untracked += 1;
                return;
            }
            self.half_open.insert(key, now);
            counts.half_open += 1;
        } else if let Some(began) = self.half_open.remove(&key) {
            counts.half_open -= 1;
            if rst != 0 {
                counts.abandoned += 1;
            } else if ack != 0 {
                counts.established += 1;
                counts.handshake_us += now.saturating_duration_since(began).as_micros() as u64;
            }
        }
    }

    /// Forget the handshakes begun more than [`HANDSHAKE_TIMEOUT`] before `now`.
    pub fn expire(&mut self, now: Instant) {
        let ports = &mut self.ports;
        self.half_open.retain(|&(_, _, port), began| {
            let alive = now.saturating_duration_since(*began) < HANDSHAKE_TIMEOUT;
            if !alive {
                if let Some(c) = ports.get_mut(&(proto::TCP, port)) {
                    c.half_open -= 1;
                    c.abandoned += 1;
                }
            }
            alive
        });
    }

    /// The counts, by protocol and port.
    pub fn stats(&self) -> PortStats {
        let mut rows: Vec<PortRow> = self
            .ports
            .iter()
            .map(|(&(proto, port), &counts)| PortRow {
                proto,
                port,
                counts,
            })
            .collect();
        rows.sort_by_key(|r| (r.proto, r.port));
        PortStats {
            rows,
            untracked: self.untracked,
            other_ports: self.other_ports,
        }
    }
}
