//! The kernel's events joined to the packets they belong to, so a packet's journey
//! reads whole: the rules it met before the engine held it, the engine's stages, and
//! the rules after its verdict (`trace format` of a trace with `trace.kernel`).
//!
//! An event belongs to the packet with the same headers (addresses, protocol, ports,
//! TCP flags, sequence and acknowledgment, IPv4 id) whose time it falls nearest, within
//! [`WINDOW_NS`] of the engine's first or last edge. An event of TCP data belongs to
//! each packet of its flow and acknowledgment whose sequence lies in its bytes: before
//! the queue a super-packet is whole, and the queue cuts it into the segments the
//! engine sees. Events the kernel sent without headers were named by their trace id
//! before they come here. Events that belong to no traced packet (one the engine did
//! not trace, or never saw) stay on their own.
//!
//! Events are timed as they reach the trace's listener, which may be after the engine
//! took the packet; their order is the kernel's. So a packet's events up to its queue
//! verdict are the path before the engine, and the rest the path after it
//! ([`before_engine`]).
//!
//! The trace is read as a stream, in the order the writer wrote it (packets when their
//! verdict left, events as they came): a packet is given out once both streams have
//! passed its last edge by a window, so memory holds a window of traffic, not the file,
//! and at most [`MAX_PENDING`] packets.

use std::collections::{BTreeMap, HashMap};

use super::Head;
use super::kernel::KernelEvent;
use super::record::RawPacket;

/// How far from a packet's edges one of its kernel events may be.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// Packets held for their events at most; past this, the oldest goes out as it is.
pub const MAX_PENDING: usize = 65_536;

/// What the join gives out, in time order as far as the window allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A traced packet and its kernel events, in time order.
    Packet(RawPacket, Vec<KernelEvent>),
    /// A kernel event of no traced packet.
    Loose(KernelEvent),
}

/// The join in progress.
#[derive(Debug, Default)]
pub struct Journeys {
    /// Held packets by the order they came in, with the events joined so far.
    packets: HashMap<u64, (RawPacket, Vec<KernelEvent>)>,
    /// The held packets of each flow and TCP acknowledgment number, by sequence number
    /// (0 for other protocols): a download's ACKs share one sequence number.
    by_flow: HashMap<Flow, BTreeMap<u32, Vec<u64>>>,
    serial: u64,
    /// Events not yet joined: some packet they belong to may still come.
    events: Vec<KernelEvent>,
    /// The latest time each stream has reached, and where the last sweep cut.
    packets_at: u64,
    events_at: u64,
    swept: u64,
}

/// A sweep runs when the cut has moved on this far (sweeping at every line would scan
/// the held packets once per line).
const SWEEP_NS: u64 = 10_000_000;

impl Journeys {
    /// Take one packet; return what is ready.
    pub fn packet(&mut self, p: RawPacket) -> Vec<Item> {
        self.packets_at = self.packets_at.max(last(&p));
        self.serial += 1;
        if let Some(h) = &p.head {
            let at = self.by_flow.entry(flow(h)).or_default();
            at.entry(h.seq.unwrap_or(0)).or_default().push(self.serial);
        }
        self.packets.insert(self.serial, (p, Vec::new()));
        self.ready(false)
    }

    /// Take one kernel event; return what is ready.
    pub fn kernel(&mut self, e: KernelEvent) -> Vec<Item> {
        self.events_at = self.events_at.max(e.t_ns);
        self.events.push(e);
        self.ready(false)
    }

    /// The end of the trace: everything left.
    pub fn finish(mut self) -> Vec<Item> {
        self.ready(true)
    }

    /// Join the events both streams have passed by a window, then give out the packets
    /// no later event can join (and the oldest, past [`MAX_PENDING`]).
    fn ready(&mut self, all: bool) -> Vec<Item> {
        let cut = if all {
            u64::MAX
        } else {
            self.packets_at
                .min(self.events_at)
                .saturating_sub(WINDOW_NS)
        };
        let crowded = self.packets.len() > MAX_PENDING;
        if !all && !crowded && cut < self.swept.saturating_add(SWEEP_NS) {
            return Vec::new();
        }
        self.swept = cut;
        let (settled, waiting): (Vec<KernelEvent>, Vec<KernelEvent>) =
            std::mem::take(&mut self.events)
                .into_iter()
                .partition(|e| e.t_ns < cut);
        self.events = waiting;
        let mut out = Vec::new();
        for e in settled {
            let owners = self.owners(&e);
            for s in &owners {
                if let Some((_, events)) = self.packets.get_mut(s) {
                    events.push(e.clone());
                }
            }
            if owners.is_empty() {
                out.push(Item::Loose(e));
            }
        }
        let mut done: Vec<(u64, u64)> = self
            .packets
            .iter()
            .map(|(&serial, (p, _))| (first(p), serial))
            .collect();
        done.sort_unstable();
        let over = self.packets.len().saturating_sub(MAX_PENDING);
        for (i, (_, serial)) in done.into_iter().enumerate() {
            let ends = self.packets.get(&serial).map_or(0, |(p, _)| last(p));
            if i >= over && ends.saturating_add(WINDOW_NS) >= cut {
                continue;
            }
            let Some((p, mut events)) = self.packets.remove(&serial) else {
                continue;
            };
            if let Some(h) = &p.head {
                self.forget(h, serial);
            }
            // Stable: events of one arrival keep the kernel's order.
            events.sort_by_key(|e| e.t_ns);
            out.push(Item::Packet(p, events));
        }
        out.sort_by_key(|item| match item {
            Item::Packet(p, _) => first(p),
            Item::Loose(e) => e.t_ns,
        });
        out
    }

    /// The held packets `e` belongs to, within the window: for TCP data, for each
    /// sequence number and length in its bytes the packet nearest in time (a
    /// super-packet, and the segments it was cut into); else the packet with the same
    /// headers nearest in time.
    fn owners(&self, e: &KernelEvent) -> Vec<u64> {
        let Some(h) = e.head.as_ref() else {
            return Vec::new();
        };
        let Some(held) = self.by_flow.get(&flow(h)) else {
            return Vec::new();
        };
        let seq = h.seq.unwrap_or(0);
        let len = e.payload.filter(|&l| l > 0 && h.seq.is_some());
        // The sequence numbers in the event's bytes, in two pieces where they wrap.
        let end = seq.wrapping_add(len.unwrap_or(1));
        let pieces = if end > seq || end == 0 {
            [held.range(seq..=end.wrapping_sub(1)), held.range(1..1)]
        } else {
            [held.range(seq..), held.range(..end)]
        };
        let near = pieces
            .into_iter()
            .flatten()
            .flat_map(|(_, s)| s)
            .filter_map(|s| {
                let (p, _) = self.packets.get(s)?;
                let d = distance(e.t_ns, first(p), last(p));
                Some((*s, p.head.as_ref()?, d)).filter(|_| d <= WINDOW_NS)
            });
        if len.is_none() {
            let same = near.filter(|(_, ph, _)| *ph == h).min_by_key(|n| n.2);
            return same.map(|(s, ..)| s).into_iter().collect();
        }
        let mut nearest: HashMap<(u32, u32), (u64, u64)> = HashMap::new();
        for (s, ph, d) in near {
            let Some(at) = ph.seq else {
                continue;
            };
            let size = self.packets.get(&s).map_or(0, |(p, _)| p.len_in);
            let best = nearest.entry((at, size)).or_insert((s, d));
            if d < best.1 {
                *best = (s, d);
            }
        }
        let mut owners: Vec<u64> = nearest.into_values().map(|(s, _)| s).collect();
        owners.sort_unstable();
        owners
    }

    /// Drop a packet that went out from the index.
    fn forget(&mut self, h: &Head, serial: u64) {
        let f = flow(h);
        let Some(by_seq) = self.by_flow.get_mut(&f) else {
            return;
        };
        let seq = h.seq.unwrap_or(0);
        if let Some(list) = by_seq.get_mut(&seq) {
            list.retain(|&s| s != serial);
            if list.is_empty() {
                by_seq.remove(&seq);
            }
        }
        if by_seq.is_empty() {
            self.by_flow.remove(&f);
        }
    }
}

/// How many of a packet's events (in the kernel's order) came before the engine held
/// it: those up to its last queue verdict, and at least those timed before its first
/// edge.
pub fn before_engine(p: &RawPacket, events: &[KernelEvent]) -> usize {
    let queued = events
        .iter()
        .rposition(|e| e.verdict.as_deref().is_some_and(|v| v.starts_with("queue")))
        .map_or(0, |i| i + 1);
    let earlier = events.iter().take_while(|e| e.t_ns < first(p)).count();
    queued.max(earlier)
}

/// A packet's addresses, protocol, ports and TCP acknowledgment number.
type Flow = (
    u8,
    std::net::IpAddr,
    std::net::IpAddr,
    u16,
    u16,
    Option<u32>,
);

fn flow(h: &Head) -> Flow {
    (h.proto, h.src, h.dst, h.sport, h.dport, h.ack)
}

/// The packet's first and last edge (0 for a trace without edges).
fn first(p: &RawPacket) -> u64 {
    p.marks.first().map_or(0, |m| m.2)
}

fn last(p: &RawPacket) -> u64 {
    p.marks.last().map_or(0, |m| m.2)
}

/// How far `t` is from `start..=end`: 0 inside.
fn distance(t: u64, start: u64, end: u64) -> u64 {
    start.saturating_sub(t).max(t.saturating_sub(end))
}
