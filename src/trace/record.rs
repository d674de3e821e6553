//! What one traced packet holds: who it is, its stage edges with their times, and its
//! verdict; and its line in the raw trace (JSON, one packet per line).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Stage;
use crate::pipeline::{Segments, Verdict};
use crate::wire::{IpVersion, Parsed, proto};

/// Stage edges one packet keeps at most; later ones are counted in `lost_marks`.
pub const MAX_MARKS: usize = 32;

/// B: a stage begins; E: it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Edge {
    #[serde(rename = "B")]
    Begin,
    #[serde(rename = "E")]
    End,
}

impl Edge {
    pub fn letter(self) -> char {
        match self {
            Edge::Begin => 'B',
            Edge::End => 'E',
        }
    }
}

/// Who a packet is, as its headers said when it was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Head {
    /// IP protocol number (after IPv6 extension headers).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports of TCP and UDP, else 0.
    pub sport: u16,
    pub dport: u16,
    /// TCP only: the flags byte, sequence and acknowledgment numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u32>,
    /// IPv4 only: the identification field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_id: Option<u16>,
}

impl Head {
    /// Read a packet's identity from its parsed headers.
    pub fn of(buf: &[u8], p: &Parsed) -> Head {
        let (sport, dport) = p.ports().unwrap_or((0, 0));
        let tcp = p.tcp();
        let ip_id = (p.version == IpVersion::V4)
            .then(|| buf.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]])))
            .flatten();
        Head {
            proto: p.protocol,
            src: p.src,
            dst: p.dst,
            sport,
            dport,
            flags: tcp.map(|t| t.flags),
            seq: tcp.map(|t| t.seq),
            ack: tcp.map(|t| t.ack),
            ip_id,
        }
    }

    /// The protocol by name, as the thesis's last column: tcp, udp, icmp or the number.
    pub fn proto_name(&self) -> String {
        match self.proto {
            proto::TCP => "tcp".into(),
            proto::UDP => "udp".into(),
            proto::ICMP => "icmp".into(),
            proto::ICMPV6 => "icmp6".into(),
            n => format!("proto-{n}"),
        }
    }
}

/// Parse a packet that was cut short (a pcap record at its snap length, the headers a
/// kernel trace event carries): padded with zeros to the length its own IP header gives
/// (at most 64 KiB and an IPv6 header, never a length from elsewhere), so its headers
/// parse. None if even they do not.
pub fn parse_cut(mut ip: Vec<u8>) -> Option<(Vec<u8>, Parsed)> {
    let len = match ip.first()? >> 4 {
        4 => usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?])),
        6 => 40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?])),
        _ => return None,
    };
    if len > ip.len() {
        ip.resize(len, 0);
    }
    let p = crate::wire::parse(&ip).ok()?;
    Some((ip, p))
}

/// One stage edge at a time (nanoseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub t_ns: u64,
    pub stage: Stage,
    pub edge: Edge,
}

/// One traced packet, as the worker fills it: fixed size, so tracing allocates nothing.
#[derive(Debug, Clone)]
pub struct PacketTrace {
    /// The worker's count of the packets and segments it read, this one included.
    pub n: u64,
    pub queue: u16,
    /// The kernel's packet id in that queue.
    pub id: u32,
    /// Netfilter hook it was queued from.
    pub hook: u8,
    /// Its length as queued, and as the verdict returned it.
    pub len_in: u32,
    pub len_out: u32,
    pub verdict: Option<Verdict>,
    pub head: Option<Head>,
    marks: [Mark; MAX_MARKS],
    count: usize,
    /// Edges that did not fit in `marks`.
    pub lost_marks: u16,
    /// pcap on: the packet's first bytes as received, and as its verdict returned them
    /// (None: it did not leave, dropped or routed).
    pub bytes_in: Vec<u8>,
    pub bytes_out: Option<Vec<u8>>,
}

impl PacketTrace {
    /// An empty trace of the packet `id` of `queue`.
    pub fn new(n: u64, queue: u16, id: u32, hook: u8, len: u32) -> PacketTrace {
        const NONE: Mark = Mark {
            t_ns: 0,
            stage: Stage::Packet,
            edge: Edge::Begin,
        };
        PacketTrace {
            n,
            queue,
            id,
            hook,
            len_in: len,
            len_out: len,
            verdict: None,
            head: None,
            marks: [NONE; MAX_MARKS],
            count: 0,
            lost_marks: 0,
            bytes_in: Vec::new(),
            bytes_out: None,
        }
    }

    /// Keep one edge (or count it lost when the array is full).
    pub fn mark(&mut self, m: Mark) {
        match self.marks.get_mut(self.count) {
            Some(slot) => {
                *slot = m;
                self.count += 1;
            }
            None => self.lost_marks = self.lost_marks.saturating_add(1),
        }
    }

    /// Several edges at one time: `stages` in order, each beginning or ending.
    pub fn mark_at(&mut self, t_ns: u64, edge: Edge, stages: &[Stage]) {
        for &stage in stages {
            self.mark(Mark { t_ns, stage, edge });
        }
    }

    /// The edges kept, in order.
    pub fn marks(&self) -> &[Mark] {
        &self.marks[..self.count]
    }

    /// Its line in the raw trace.
    pub fn raw(&self) -> RawPacket {
        RawPacket {
            n: self.n,
            queue: self.queue,
            id: self.id,
            hook: self.hook,
            len_in: self.len_in,
            len_out: self.len_out,
            verdict: self
                .verdict
                .map_or_else(|| "none".into(), |v| verdict_label(&v)),
            head: self.head,
            marks: self
                .marks()
                .iter()
                .map(|m| (m.stage.as_str().to_string(), m.edge, m.t_ns))
                .collect(),
            lost_marks: self.lost_marks,
        }
    }
}

/// A verdict as the trace names it: `accept`, `accept_modified`, `route_trailer`,
/// `route_process`, `pass:REASON`, `drop:REASON` or `hold`.
pub fn verdict_label(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::AcceptModified => "accept_modified".into(),
        Verdict::Route(Segments::Trailer) => "route_trailer".into(),
        Verdict::Route(Segments::Process) => "route_process".into(),
        Verdict::Pass(r) => format!("pass:{}", r.as_str()),
        Verdict::Drop(r) => format!("drop:{}", r.as_str()),
        Verdict::Hold => "hold".into(),
    }
}

/// The first line of a raw trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawHeader {
    /// The format's version: 1.
    pub mpolice_trace: u32,
    pub role: String,
    pub started_unix_ns: u64,
    /// The kernel's events are in the trace too (`trace.kernel`).
    #[serde(default)]
    pub kernel: bool,
}

/// Version of the raw trace format this build writes and reads.
pub const RAW_VERSION: u32 = 1;

/// One packet's line in the raw trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPacket {
    pub n: u64,
    pub queue: u16,
    pub id: u32,
    pub hook: u8,
    pub len_in: u32,
    pub len_out: u32,
    pub verdict: String,
    #[serde(default)]
    pub head: Option<Head>,
    /// (stage, B or E, nanoseconds since the Unix epoch), in order.
    pub marks: Vec<(String, Edge, u64)>,
    #[serde(default)]
    pub lost_marks: u16,
}
