//! `mpolice trace compare`: our traces against an independent capture (tcpdump on an
//! interface), packet by packet. Which captured packets each engine saw, what it did to
//! them (verdict, bytes added or removed, markers and MSS when the trace has its pcaps),
//! how long it held them; and which it never saw (bypassed, sampled out, or lost).
//!
//! Matching: a packet is known by its addresses, protocol, ports, IPv4 id and TCP flags,
//! sequence and acknowledgment, as the engine parsed it on arrival; packets alike in all
//! of these are matched in the order they came. A captured TCP segment that no traced
//! packet names may lie inside a GSO super-packet the engine took whole: matched by its
//! sequence number to the super-packet of its flow that covers it. Times are not used to
//! match, so a skewed clock only shows as a warning.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::pcap::{self, Captured};
use super::record::{Head, RawHeader, RawPacket, parse_cut};
use super::writer::pcap_paths;
use crate::wire::{self, proto};

/// Skews between capture and trace clocks above this are reported.
const SKEW_WARN_NS: u64 = 100_000_000;

/// What identifies a packet across the engine and the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    ip_id: Option<u16>,
    tcp: Option<(u8, u32, u32)>,
}

impl Key {
    fn of(h: &Head) -> Key {
        Key {
            proto: h.proto,
            src: h.src,
            dst: h.dst,
            ports: (h.sport, h.dport),
            ip_id: h.ip_id,
            tcp: h.flags.zip(h.seq).zip(h.ack).map(|((f, s), a)| (f, s, a)),
        }
    }

    fn flow(&self) -> Flow {
        (self.proto, self.src, self.dst, self.ports)
    }
}

/// A packet's flow: protocol, addresses and ports.
type Flow = (u8, IpAddr, IpAddr, (u16, u16));

/// A traced packet's bytes as received, and as returned (if it left).
type PacketBytes = (Vec<u8>, Option<Vec<u8>>);

/// One trace read for comparison, with its pcaps if they lie beside it.
pub struct Traced {
    pub file: PathBuf,
    pub role: String,
    packets: Vec<RawPacket>,
    /// From the pcaps: each packet's bytes as received, and as returned (if it left).
    bytes: Option<Vec<PacketBytes>>,
    /// Lines that could not be read.
    pub warnings: Vec<String>,
}

impl Traced {
    /// Read the trace `file` and, if both are there, its pcaps.
    pub fn read(file: &Path) -> Result<Traced> {
        let f = std::fs::File::open(file).with_context(|| format!("trace {}", file.display()))?;
        let mut lines = std::io::BufReader::new(f).split(b'\n');
        let first = lines.next().transpose()?.unwrap_or_default();
        let header: RawHeader = serde_json::from_slice(&first).with_context(|| {
            format!(
                "trace {}: line 1 is not an mpolice trace header",
                file.display()
            )
        })?;
        let (mut packets, mut warnings) = (Vec::new(), Vec::new());
        for (i, line) in lines.enumerate() {
            let line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<RawPacket>(&line) {
                Ok(p) => packets.push(p),
                // The kernel's events: not what the engine did to a packet.
                Err(_) if line.starts_with(b"{\"kernel\"") => {}
                Err(e) => warnings.push(format!("line {}: skipped: {e}", i + 2)),
            }
        }
        let bytes = pcap_bytes(file, &packets, &mut warnings);
        Ok(Traced {
            file: file.to_path_buf(),
            role: header.role,
            packets,
            bytes,
            warnings,
        })
    }
}

/// The pcaps beside a trace, matched to its packets (the received file has one record
/// per packet, the returned one per packet that left, both in the trace's order).
fn pcap_bytes(
    file: &Path,
    packets: &[RawPacket],
    warnings: &mut Vec<String>,
) -> Option<Vec<PacketBytes>> {
    let (received, returned) = pcap_paths(file);
    let read = |p: &Path| std::fs::read(p).ok().and_then(|b| pcap::read(&b).ok());
    let (Some(inp), Some(out)) = (read(&received), read(&returned)) else {
        return None;
    };
    let left = |p: &RawPacket| p.verdict.starts_with("accept") || p.verdict.starts_with("pass");
    if inp.packets.len() != packets.len()
        || out.packets.len() != packets.iter().filter(|p| left(p)).count()
    {
        warnings.push("its pcaps do not hold one record per traced packet: not used".into());
        return None;
    }
    let mut outs = out.packets.into_iter();
    Some(
        packets
            .iter()
            .zip(inp.packets)
            .map(|(p, i)| (i.ip, left(p).then(|| outs.next().map(|o| o.ip)).flatten()))
            .collect(),
    )
}

/// What one engine did to one captured packet.
#[derive(Debug, Clone, Serialize)]
pub struct Sighting {
    pub role: String,
    pub queue: u16,
    pub id: u32,
    pub verdict: String,
    /// Bytes the engine added (positive) or removed (negative).
    pub bytes_changed: i64,
    pub held_ns: u64,
    /// It was a segment of a super-packet the engine took whole.
    pub in_super_packet: bool,
    /// From the pcaps: the TCP reserved bits (the capability marker) in and out, and the
    /// MSS option in and out, where they changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<(u8, u8)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mss: Option<(u16, u16)>,
}

/// One captured packet and who saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub n: usize,
    pub unix_ns: u64,
    pub src: String,
    pub dst: String,
    pub proto: u8,
    pub len: u32,
    pub seen: Vec<Sighting>,
}

/// One trace's summary against the capture.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TraceSummary {
    pub file: String,
    pub role: String,
    pub traced: usize,
    /// Captured packets this trace saw, and of those, changed; bytes added and removed.
    pub seen: usize,
    pub changed: usize,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    /// From the pcaps: markers set, markers cleared, MSS options lowered.
    pub markers_set: usize,
    pub markers_cleared: usize,
    pub mss_lowered: usize,
    /// How long the engine held the packets it saw: p50, p99, max.
    pub held_p50_ns: u64,
    pub held_p99_ns: u64,
    pub held_max_ns: u64,
    /// Median of capture time minus trace time over the matched packets.
    pub skew_ns: i64,
    /// Traced packets no captured packet matched (dropped here, or not on that link).
    pub unmatched: usize,
}

/// The whole comparison.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    pub captured: usize,
    pub not_ip: u64,
    pub traces: Vec<TraceSummary>,
    /// Captured packets no trace saw.
    pub unseen: usize,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<Row>,
}

/// Compare `traces` with the capture in `capture` (pcap bytes); keep every row if `rows`.
pub fn compare(traces: &[Traced], capture: &[u8], rows: bool) -> Result<Comparison> {
    let cap = pcap::read(capture).map_err(anyhow::Error::msg)?;
    let mut c = Comparison {
        captured: cap.packets.len(),
        not_ip: cap.not_ip,
        ..Comparison::default()
    };
    if cap.cut_short {
        c.warnings
            .push("the capture ends inside a record: compared up to there".into());
    }
    let mut indexes: Vec<Index> = traces.iter().map(Index::of).collect();
    let mut held: Vec<Vec<u64>> = vec![Vec::new(); traces.len()];
    let mut skews: Vec<Vec<i64>> = vec![Vec::new(); traces.len()];
    let mut sums: Vec<TraceSummary> = traces
        .iter()
        .map(|t| TraceSummary {
            file: t.file.display().to_string(),
            role: t.role.clone(),
            traced: t.packets.len(),
            ..TraceSummary::default()
        })
        .collect();
    for (n, pkt) in cap.packets.iter().enumerate() {
        let Some(key) = key_of(pkt) else {
            c.warnings
                .push(format!("captured packet {}: headers do not parse", n + 1));
            continue;
        };
        let mut seen = Vec::new();
        for (t, trace) in traces.iter().enumerate() {
            let Some((i, inside)) = indexes[t].take(&key) else {
                continue;
            };
            let p = &trace.packets[i];
            let s = sighting(trace, i, inside);
            let sum = &mut sums[t];
            sum.seen += 1;
            if s.bytes_changed != 0 || s.reserved.is_some() || s.mss.is_some() {
                sum.changed += 1;
            }
            if !inside {
                sum.bytes_added += s.bytes_changed.max(0) as u64;
                sum.bytes_removed += (-s.bytes_changed).max(0) as u64;
            }
            if let Some((a, b)) = s.reserved {
                sum.markers_set += usize::from(a == 0 && b != 0);
                sum.markers_cleared += usize::from(a != 0 && b == 0);
            }
            sum.mss_lowered += usize::from(s.mss.is_some_and(|(a, b)| b < a));
            held[t].push(s.held_ns);
            if let Some(first) = p.marks.first() {
                skews[t].push(signed_ns(pkt.unix_ns, first.2));
            }
            seen.push(s);
        }
        if seen.is_empty() {
            c.unseen += 1;
        }
        if rows {
            c.rows.push(row(n + 1, pkt, key, seen));
        }
    }
    for (t, sum) in sums.iter_mut().enumerate() {
        let h = &mut held[t];
        h.sort_unstable();
        let at = |q: f64| {
            h.get(((h.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        (sum.held_p50_ns, sum.held_p99_ns, sum.held_max_ns) = (at(0.5), at(0.99), at(1.0));
        skews[t].sort_unstable();
        sum.skew_ns = skews[t].get(skews[t].len() / 2).copied().unwrap_or(0);
        if sum.skew_ns.unsigned_abs() > SKEW_WARN_NS {
            c.warnings.push(format!(
                "{}: the capture's clock is {:.3} s {} the trace's; times are compared as they are",
                sum.file,
                sum.skew_ns.unsigned_abs() as f64 / 1e9,
                if sum.skew_ns > 0 {
                    "ahead of"
                } else {
                    "behind"
                }
            ));
        }
        sum.unmatched = indexes[t].unmatched();
    }
    for t in traces {
        c.warnings.extend(
            t.warnings
                .iter()
                .map(|w| format!("{}: {w}", t.file.display())),
        );
    }
    c.traces = sums;
    Ok(c)
}

/// `a - b` in nanoseconds, clamped to what an i64 holds (times in a broken file may be
/// anything).
fn signed_ns(a: u64, b: u64) -> i64 {
    let d = i128::from(a) - i128::from(b);
    i64::try_from(d.clamp(i128::from(i64::MIN + 1), i128::from(i64::MAX))).unwrap_or(0)
}

/// A captured packet's key, its headers read even where the capture cut it short.
fn key_of(pkt: &Captured) -> Option<Key> {
    // Padded by its own IP header, never by the record's length, which a broken file
    // may put at 4 GiB.
    let (ip, p) = parse_cut(pkt.ip.clone())?;
    Some(Key::of(&Head::of(&ip, &p)))
}

fn row(n: usize, pkt: &Captured, key: Key, seen: Vec<Sighting>) -> Row {
    let end = |a: IpAddr, port: u16| match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    Row {
        n,
        unix_ns: pkt.unix_ns,
        src: end(key.src, key.ports.0),
        dst: end(key.dst, key.ports.1),
        proto: key.proto,
        len: pkt.ip_len,
        seen,
    }
}

/// What trace packet `i` says the engine did.
fn sighting(t: &Traced, i: usize, inside: bool) -> Sighting {
    let p = &t.packets[i];
    let held_ns = match (p.marks.first(), p.marks.last()) {
        (Some(a), Some(b)) => b.2.saturating_sub(a.2),
        _ => 0,
    };
    let e = t
        .bytes
        .as_ref()
        .and_then(|b| b.get(i))
        .map_or_else(Edits::default, |(a, b)| edits(a, b.as_deref()));
    Sighting {
        role: t.role.clone(),
        queue: p.queue,
        id: p.id,
        verdict: p.verdict.clone(),
        bytes_changed: i64::from(p.len_out) - i64::from(p.len_in),
        held_ns,
        in_super_packet: inside,
        reserved: e.reserved,
        mss: e.mss,
    }
}

/// What the pcaps show the engine changed in a TCP header: the reserved bits and the
/// MSS option, in and out, where they differ.
#[derive(Debug, Default)]
struct Edits {
    reserved: Option<(u8, u8)>,
    mss: Option<(u16, u16)>,
}

fn edits(inp: &[u8], out: Option<&[u8]>) -> Edits {
    let read = |b: &[u8]| {
        // A pcap record may be cut at its snap length: the headers come first.
        let (ip, p) = parse_cut(b.to_vec()).filter(|(_, p)| p.protocol == proto::TCP)?;
        Some((wire::tcp_reserved(&ip, &p), wire::tcp_mss(&ip, &p)))
    };
    let (Some((r_in, m_in)), Some((r_out, m_out))) = (read(inp), out.and_then(read)) else {
        return Edits::default();
    };
    Edits {
        reserved: (r_in != r_out).then_some((r_in, r_out)),
        mss: match (m_in, m_out) {
            (Some(a), Some(b)) if a != b => Some((a, b)),
            _ => None,
        },
    }
}

/// One trace's packets by key, and its TCP super-packets by flow, each in order.
struct Index {
    by_key: HashMap<Key, VecDeque<usize>>,
    /// (first sequence number, bytes it may cover, packet) per flow.
    supers: HashMap<Flow, Vec<(u32, u32, usize)>>,
    taken: Vec<bool>,
    /// Which packets are super-packets.
    is_super: Vec<bool>,
}

/// Larger than any single packet an MTU of ours allows: a GSO super-packet.
const SUPER_PACKET_LEN: u32 = 9216;

impl Index {
    fn of(t: &Traced) -> Index {
        let mut ix = Index {
            by_key: HashMap::new(),
            supers: HashMap::new(),
            taken: vec![false; t.packets.len()],
            is_super: t
                .packets
                .iter()
                .map(|p| p.len_in > SUPER_PACKET_LEN)
                .collect(),
        };
        for (i, p) in t.packets.iter().enumerate() {
            // A routed packet's segments are traced on the precise queue, each with
            // what was done to it: they, not the packet, stand for it on the wire.
            if p.verdict.starts_with("route") {
                ix.taken[i] = true;
                continue;
            }
            let Some(h) = &p.head else { continue };
            let key = Key::of(h);
            ix.by_key.entry(key).or_default().push_back(i);
            if let (Some(seq), true) = (h.seq, ix.is_super[i]) {
                ix.supers
                    .entry(key.flow())
                    .or_default()
                    .push((seq, p.len_in, i));
            }
        }
        ix
    }

    /// The first untaken packet with this key, or the super-packet holding the segment;
    /// and whether it is a super-packet (the capture saw one of its segments).
    fn take(&mut self, key: &Key) -> Option<(usize, bool)> {
        if let Some(q) = self.by_key.get_mut(key) {
            while let Some(i) = q.pop_front() {
                if !self.taken[i] {
                    self.taken[i] = true;
                    return Some((i, self.is_super[i]));
                }
            }
        }
        let (_, seq, _) = key.tcp?;
        let supers = self.supers.get(&key.flow())?;
        supers
            .iter()
            .find(|(first, len, _)| seq.wrapping_sub(*first) < *len)
            .map(|&(_, _, i)| {
                self.taken[i] = true;
                (i, true)
            })
    }

    fn unmatched(&self) -> usize {
        self.taken.iter().filter(|t| !**t).count()
    }
}

impl Comparison {
    /// The comparison as lines a person reads: each row if kept, then the summaries.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        for r in &self.rows {
            let _ = write!(
                s,
                "{} {} {} > {} proto {} {} B:",
                r.n,
                super::format::clock_time(r.unix_ns),
                r.src,
                r.dst,
                r.proto,
                r.len
            );
            if r.seen.is_empty() {
                s.push_str(" not seen");
            }
            for (k, x) in r.seen.iter().enumerate() {
                let sep = if k == 0 { " " } else { "; " };
                let _ = write!(
                    s,
                    "{sep}{} q{}#{} {}{} {:+} B",
                    x.role,
                    x.queue,
                    x.id,
                    x.verdict,
                    if x.in_super_packet {
                        " (in a super-packet)"
                    } else {
                        ""
                    },
                    x.bytes_changed
                );
                if let Some((a, b)) = x.reserved {
                    let _ = write!(s, " marker {a:#x}->{b:#x}");
                }
                if let Some((a, b)) = x.mss {
                    let _ = write!(s, " mss {a}->{b}");
                }
                let _ = write!(s, " held {:.1} µs", x.held_ns as f64 / 1e3);
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "capture: {} IP packets ({} not IP)",
            self.captured, self.not_ip
        );
        for t in &self.traces {
            let share = if self.captured > 0 {
                100.0 * t.seen as f64 / self.captured as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "{} ({}): {} traced; saw {} of the captured ({share:.1} %), changed {} \
                 (+{} B, -{} B; markers set {}, cleared {}; MSS lowered {}); held p50 {:.1} µs, \
                 p99 {:.1} µs, max {:.1} µs; {} traced packets not in the capture",
                t.file,
                t.role,
                t.traced,
                t.seen,
                t.changed,
                t.bytes_added,
                t.bytes_removed,
                t.markers_set,
                t.markers_cleared,
                t.mss_lowered,
                t.held_p50_ns as f64 / 1e3,
                t.held_p99_ns as f64 / 1e3,
                t.held_max_ns as f64 / 1e3,
                t.unmatched
            );
        }
        let _ = writeln!(
            s,
            "not seen by any trace: {} captured packets (bypassed, sampled out, or lost)",
            self.unseen
        );
        s
    }
}
