//! Counters: what each queue worker did with every packet, and the kernel's own view.
//!
//! A worker owns its `QueueCounters` as plain fields (no atomics on the per-packet path)
//! and publishes copies; `EngineStats` is the snapshot the control socket serves.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::capability::Rejected;
use crate::driver::nfqueue::Unreadable;
use crate::driver::sockdiag::Listener;
use crate::labels::{Joined, Tally, labelled_enum};
use crate::pipeline::Reason;
use crate::police::PoliceReport;
use crate::ports::{Forwarded, FtpCounts, GroupRow, PortStats, SpliceCounts};
use crate::trace::{KernelTraceCounters, TraceCounters};

labelled_enum! {
    /// What a worker counts besides the pipeline's reasons.
    pub enum Event {
        /// A super-packet to route, with no precise queue bound (dropped).
        RouteWithoutPreciseQueue => "route_without_precise_queue",
        /// A routed packet whose segments did not come within the precise queue's wait.
        RoutedPacketMissing => "routed_packet_missing",
        /// A verdict and its fallback drop both failed.
        VerdictFailed => "verdict_failed",
        /// A datagram the pipeline produced (tunnel feedback) that could not be sent.
        DatagramNotSent => "datagram_not_sent",
        /// A packet the pipeline made (a content rule's SYN-ACK or reset) that could not
        /// be sent.
        PacketNotSent => "packet_not_sent",
        /// Messages with no readable packet id (a running total of the receive path).
        NetlinkNoId => "netlink_no_id",
        /// A packet message that did not parse.
        NetlinkMalformed => "netlink_malformed",
        /// A packet message cut short by the receive buffer.
        NetlinkTruncated => "netlink_truncated",
    }
}

impl From<Unreadable> for Event {
    fn from(u: Unreadable) -> Self {
        match u {
            Unreadable::Malformed => Event::NetlinkMalformed,
            Unreadable::Truncated => Event::NetlinkTruncated,
        }
    }
}

/// Every reason a queue's counters tell apart: the pipeline's, then the worker's.
pub type Counted = Joined<Reason, Event>;

impl From<Reason> for Counted {
    fn from(r: Reason) -> Self {
        Counted::First(r)
    }
}

impl From<Event> for Counted {
    fn from(e: Event) -> Self {
        Counted::Second(e)
    }
}

/// What happened to the packets of one queue, counted by its worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounters {
    pub queue: u16,
    /// Packets read from the queue socket.
    pub received: u64,
    /// Packets accepted unchanged.
    pub accepted: u64,
    /// Packets accepted with a rewritten payload.
    pub modified: u64,
    /// Packets kept in the queue for a while (content rules), then counted as accepted
    /// modified or dropped when they are answered.
    #[serde(default)]
    pub held: u64,
    /// Hybrid path: super-packets sent to the precise queue to be rewritten there.
    #[serde(default)]
    pub routed: u64,
    /// Hybrid path: their segments, answered from the precise queue.
    #[serde(default)]
    pub segments: u64,
    /// The wire packets the queue's packets stood for (a GSO super-packet counts the
    /// segments it is cut into), and of those, dropped; and their IP bytes.
    #[serde(default)]
    pub wire_packets: u64,
    #[serde(default)]
    pub wire_dropped: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Hybrid path: the number of this worker's precise queue.
    #[serde(default)]
    pub precise_queue: Option<u16>,
    /// Packets dropped by the engine (any reason, malformed included).
    pub dropped: u64,
    /// Packets the parser refused (also counted in `accepted` or `dropped`).
    pub malformed: u64,
    /// Verdicts or reads that failed, and kernel error messages received.
    pub errors: u64,
    /// Times the socket overflowed (ENOBUFS): packets the kernel could not deliver to us.
    pub enobufs: u64,
    /// Drops and malformed packets by reason.
    pub reasons: Tally<Counted>,
    /// What the capability stages did.
    #[serde(default)]
    pub caps: CapCounters,
    /// The packets the kernel may hold for this queue now (`queue.max_len`, or less when
    /// bounded by `queue.max_delay_ms`).
    #[serde(default)]
    pub queue_limit: u32,
    /// Packets this worker answers per second of work (0: not measured).
    #[serde(default)]
    pub service_pps: u64,
    /// Tracing on: packets traced, and traces dropped for want of room (None: off).
    #[serde(default)]
    pub trace: Option<TraceCounters>,
    /// Port forwarding: new connections sent on, by incoming and outgoing port.
    #[serde(default)]
    pub forwarded: Vec<Forwarded>,
    /// Per-port statistics (None: off).
    #[serde(default)]
    pub ports: Option<PortStats>,
    /// Content rules: the connections the engine answered (None: port policies off).
    #[serde(default)]
    pub splice: Option<SpliceCounts>,
    /// FTP output groups: the data connections followed (None: port policies off).
    #[serde(default)]
    pub ftp: Option<FtpCounts>,
}

/// What the capability stages of one queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapCounters {
    /// mbox: capabilities stamped on packets to the protected service.
    pub issued: u64,
    /// mbox: returned capabilities that passed every check, counted as delivered.
    pub returned: u64,
    /// mbox: feedback trailers stripped from the victim's ACKs (valid or not).
    pub feedback_stripped: u64,
    /// mbox: packets not stamped because they would exceed the path MTU.
    pub too_big: u64,
    /// mbox: ICMP errors whose quote of a stamped packet lost the capability.
    pub quotes_scrubbed: u64,
    /// mbox, redirect mode: packets readdressed to a victim, or answered in the mbox's name.
    pub redirected: u64,
    /// Tunnel mode: packets wrapped in IP-in-UDP (mbox) or unwrapped (victim).
    pub tunneled: u64,
    /// victim: capabilities stripped from stamped packets.
    pub stripped: u64,
    /// victim: capabilities returned to the mbox on ACKs.
    pub fed_back: u64,
    /// victim: kept capabilities dropped because a sender's queue was full.
    pub overflow: u64,
    /// victim: protected traffic from this host itself (loopback), passed untouched.
    pub local: u64,
    /// victim: ACKs that could have carried feedback but left by a link that does not
    /// lead to an mbox (nothing there would strip it), so carried none.
    pub not_via_mbox: u64,
    /// victim: capabilities of senders it withholds feedback from, stripped and dropped.
    #[serde(default)]
    pub withheld: u64,
    /// Senders evicted from the bounded table to make room.
    pub evictions: u64,
    /// mbox: senders forgotten after idle periods.
    #[serde(default)]
    pub expired: u64,
    /// mbox: stamps skipped because the budget for unverified senders was spent.
    #[serde(default)]
    pub stamps_over_budget: u64,
    /// mbox: sender periods closed by the timer.
    #[serde(default)]
    pub periods_closed: u64,
    /// Senders tracked now.
    pub senders: u64,
    /// Capabilities and markers refused, by reason (bad_mac, stale, replayed, ...).
    pub rejected: Tally<Rejected>,
}

impl CapCounters {
    /// Count one refused capability or marker under a named reason.
    pub fn count_rejected(&mut self, reason: impl Into<Rejected>) {
        self.rejected.add(reason);
    }

    fn add(&mut self, o: &CapCounters) {
        self.issued += o.issued;
        self.returned += o.returned;
        self.feedback_stripped += o.feedback_stripped;
        self.too_big += o.too_big;
        self.quotes_scrubbed += o.quotes_scrubbed;
        self.redirected += o.redirected;
        self.tunneled += o.tunneled;
        self.stripped += o.stripped;
        self.fed_back += o.fed_back;
        self.overflow += o.overflow;
        self.local += o.local;
        self.not_via_mbox += o.not_via_mbox;
        self.withheld += o.withheld;
        self.evictions += o.evictions;
        self.expired += o.expired;
        self.stamps_over_budget += o.stamps_over_budget;
        self.periods_closed += o.periods_closed;
        self.senders += o.senders;
        self.rejected.merge(&o.rejected);
    }
}

impl QueueCounters {
    /// Start the counters of one queue.
    pub fn new(queue: u16) -> Self {
        QueueCounters {
            queue,
            ..Default::default()
        }
    }

    /// Count one packet (or event) under its reason.
    pub fn count_reason(&mut self, reason: impl Into<Counted>) {
        self.reasons.add(reason);
    }
}

/// The kernel's counters for one queue (`/proc/net/netfilter/nfnetlink_queue`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    /// Packets waiting for a verdict now.
    pub waiting: u64,
    /// Packets dropped because the queue was full (`max_len`).
    pub queue_dropped: u64,
    /// Packets dropped because our socket buffer overflowed.
    pub user_dropped: u64,
    /// Id of the last packet queued: packets ever queued, since ids start at 1.
    pub last_id: u64,
}

/// One queue's line in the stats: our counters beside the kernel's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    #[serde(flatten)]
    pub engine: QueueCounters,
    /// None when the kernel has no entry for the queue (not bound).
    pub kernel: Option<KernelCounters>,
    /// The kernel's counters of the worker's precise queue (hybrid path).
    #[serde(default)]
    pub precise_kernel: Option<KernelCounters>,
}

/// A running engine's whole state, as served to `mpolice stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    pub role: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// Which queue rule the kernel took: "native" (nft queue) or "xt" (NFQUEUE via nft_compat).
    pub queue_rule: String,
    pub queues: Vec<QueueStats>,
    /// mbox: the policy, the system loss rate, and (asked for with `senders`) the most
    /// active senders.
    #[serde(default)]
    pub police: Option<PoliceReport>,
    /// mbox: packets of unverified senders the kernel dropped before the queue, over
    /// their source's limit and over the limit of all of them together.
    #[serde(default)]
    pub unverified_over_source: u64,
    #[serde(default)]
    pub unverified_over_total: u64,
    /// Tracing's kernel path on: the nftables trace events kept and lost (None: off).
    #[serde(default)]
    pub kernel_trace: Option<KernelTraceCounters>,
    /// Per-port statistics on: the kernel's listening sockets on the protected and
    /// forwarded ports, with their accept queues.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Traffic groups: what each member port passed, refused and held back.
    #[serde(default)]
    pub groups: Vec<GroupRow>,
}

impl EngineStats {
    /// Sum the counters of every queue.
    pub fn total(&self) -> QueueStats {
        let mut t = QueueStats::default();
        let mut k = KernelCounters::default();
        for q in &self.queues {
            let e = &q.engine;
            t.engine.received += e.received;
            t.engine.accepted += e.accepted;
            t.engine.modified += e.modified;
            t.engine.held += e.held;
            t.engine.routed += e.routed;
            t.engine.segments += e.segments;
            t.engine.wire_packets += e.wire_packets;
            t.engine.wire_dropped += e.wire_dropped;
            t.engine.bytes += e.bytes;
            t.engine.dropped += e.dropped;
            t.engine.malformed += e.malformed;
            t.engine.errors += e.errors;
            t.engine.enobufs += e.enobufs;
            t.engine.reasons.merge(&e.reasons);
            t.engine.caps.add(&e.caps);
            if let Some(p) = &e.ports {
                t.engine.ports.get_or_insert_with(PortStats::default).add(p);
            }
            if let Some(c) = e.splice {
                *t.engine.splice.get_or_insert_with(SpliceCounts::default) += c;
            }
            if let Some(c) = e.ftp {
                *t.engine.ftp.get_or_insert_with(FtpCounts::default) += c;
            }
            let sum = &mut t.engine.forwarded;
            for f in &e.forwarded {
                match sum.iter().position(|s| (s.port, s.to) == (f.port, f.to)) {
                    Some(i) => sum[i].connections += f.connections,
                    None => sum.push(*f),
                }
            }
            t.engine.trace = match (t.engine.trace, e.trace) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            if let Some(kq) = &q.kernel {
                k.waiting += kq.waiting;
                k.queue_dropped += kq.queue_dropped;
                k.user_dropped += kq.user_dropped;
                k.last_id += kq.last_id;
            }
        }
        t.kernel = Some(k);
        t
    }

    /// The per-port statistics as a table (`mpolice stats --ports`): a row per port
    /// with traffic or a listener, the listener's accept queue beside its counts.
    pub fn ports_table(&self) -> String {
        let total = self.total().engine;
        let Some(p) = total.ports else {
            return "ports: per-port statistics are off (add a [ports] section)\n".into();
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>10} {:>10} {:>12} {:>10} {:>12} {:>11} {:>13} {:>9} {:>9} {:>12}",
            "port",
            "pkts.in",
            "bytes.in",
            "pkts.out",
            "bytes.out",
            "established",
            "handshake.ms",
            "half_open",
            "abandoned",
            "accept.queue"
        );
        let mut rows = p.rows.clone();
        for l in &self.listeners {
            if !rows
                .iter()
                .any(|r| (r.proto, r.port) == (crate::wire::proto::TCP, l.port))
            {
                rows.push(crate::ports::PortRow {
                    proto: crate::wire::proto::TCP,
                    port: l.port,
                    counts: Default::default(),
                });
            }
        }
        rows.sort_by_key(|r| (r.proto, r.port));
        for r in &rows {
            let c = &r.counts;
            let name = match r.proto {
                crate::wire::proto::TCP => "tcp",
                crate::wire::proto::UDP => "udp",
                _ => "ip",
            };
            let mean = if c.established == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", c.handshake_us as f64 / c.established as f64 / 1e3)
            };
            let queue = self
                .listeners
                .iter()
                .find(|l| r.proto == crate::wire::proto::TCP && l.port == r.port)
                .map_or("-".to_string(), |l| format!("{}/{}", l.waiting, l.backlog));
            let _ = writeln!(
                s,
                "{:>10} {:>10} {:>12} {:>10} {:>12} {:>11} {:>13} {:>9} {:>9} {:>12}",
                format!("{name}/{}", r.port),
                c.packets_in,
                c.bytes_in,
                c.packets_out,
                c.bytes_out,
                c.established,
                mean,
                c.half_open,
                c.abandoned,
                queue
            );
        }
        if p.untracked > 0 || p.other_ports > 0 {
            let _ = writeln!(
                s,
                "not followed: {} SYNs (half-open table full), {} packets of ports past the table",
                p.untracked, p.other_ports
            );
        }
        s
    }

    /// Render the stats as a table a person reads in a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} (pid {}, up {} s, queue rule: {})",
            self.role, self.pid, self.uptime_secs, self.queue_rule
        );
        let _ = writeln!(
            s,
            "{:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} | {:>8} {:>8} {:>8} | {:>7} {:>9}",
            "queue",
            "received",
            "accepted",
            "modified",
            "dropped",
            "malformed",
            "errors",
            "enobufs",
            "k.wait",
            "k.qdrop",
            "k.udrop",
            "limit",
            "svc.pps"
        );
        for q in &self.queues {
            let e = &q.engine;
            let (w, qd, ud) = q.kernel.as_ref().map_or(
                ("-".to_string(), "-".to_string(), "-".to_string()),
                |k| {
                    (
                        k.waiting.to_string(),
                        k.queue_dropped.to_string(),
                        k.user_dropped.to_string(),
                    )
                },
            );
            let _ = writeln!(
                s,
                "{:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} | {:>8} {:>8} {:>8} | {:>7} {:>9}",
                e.queue,
                e.received,
                e.accepted,
                e.modified,
                e.dropped,
                e.malformed,
                e.errors,
                e.enobufs,
                w,
                qd,
                ud,
                e.queue_limit,
                e.service_pps
            );
        }
        let total = self.total().engine;
        fn list<L: crate::labels::Labels>(m: &Tally<L>) -> String {
            m.iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
        if !total.reasons.is_empty() {
            let _ = writeln!(s, "reasons: {}", list(&total.reasons));
        }
        let precise: Vec<&KernelCounters> = self
            .queues
            .iter()
            .filter_map(|q| q.precise_kernel.as_ref())
            .collect();
        if !precise.is_empty() || total.routed > 0 {
            let sum = |f: fn(&KernelCounters) -> u64| precise.iter().map(|k| f(k)).sum::<u64>();
            let _ = writeln!(
                s,
                "hybrid: routed={} segments={} wire_packets={} wire_dropped={} bytes={} | precise queues: k.wait={} k.qdrop={} k.udrop={}",
                total.routed,
                total.segments,
                total.wire_packets,
                total.wire_dropped,
                total.bytes,
                sum(|k| k.waiting),
                sum(|k| k.queue_dropped),
                sum(|k| k.user_dropped)
            );
        }
        if let Some(t) = total.trace {
            let _ = writeln!(
                s,
                "trace: traced={} dropped={} lost_marks={}",
                t.traced, t.dropped, t.lost_marks
            );
        }
        if !total.forwarded.is_empty() {
            let each: Vec<String> = total
                .forwarded
                .iter()
                .map(|f| format!("{}->{}={}", f.port, f.to, f.connections))
                .collect();
            let _ = writeln!(s, "forwarded: {}", each.join(" "));
        }
        if let Some(c) = total.splice.filter(|c| c.answered + c.full > 0) {
            let _ = writeln!(
                s,
                "content: answered={} examined={} waited={} joined={} failed={} abandoned={} full={} expired={} opening={} open={} held_packets={}",
                c.answered,
                c.examined,
                c.waited,
                c.joined,
                c.failed,
                c.abandoned,
                c.full,
                c.expired,
                c.opening,
                c.open,
                total.held
            );
        }
        if !self.groups.is_empty() {
            let each: Vec<String> = self
                .groups
                .iter()
                .map(|g| {
                    let c = &g.counts;
                    format!(
                        "{}:{} passed={} refused={} held={}",
                        g.what, g.port, c.passed, c.refused, c.held
                    )
                })
                .collect();
            let _ = writeln!(s, "groups: {}", each.join(" | "));
        }
        if let Some(f) = total.ftp.filter(|f| *f != FtpCounts::default()) {
            let _ = writeln!(
                s,
                "ftp: data_connections={} unprotected={} untracked={}",
                f.announced, f.unprotected, f.untracked
            );
        }
        if let Some(k) = self.kernel_trace {
            let _ = writeln!(s, "kernel trace: events={} lost={}", k.events, k.lost);
        }
        let c = &total.caps;
        if *c != CapCounters::default() {
            let _ = writeln!(
                s,
                "capabilities: issued={} returned={} feedback_stripped={} too_big={} quotes_scrubbed={} redirected={} tunneled={} \
                 stripped={} fed_back={} overflow={} local={} not_via_mbox={} withheld={} senders={} evictions={} \
                 expired={} stamps_over_budget={} periods_closed={}",
                c.issued,
                c.returned,
                c.feedback_stripped,
                c.too_big,
                c.quotes_scrubbed,
                c.redirected,
                c.tunneled,
                c.stripped,
                c.fed_back,
                c.overflow,
                c.local,
                c.not_via_mbox,
                c.withheld,
                c.senders,
                c.evictions,
                c.expired,
                c.stamps_over_budget,
                c.periods_closed
            );
            if !c.rejected.is_empty() {
                let _ = writeln!(s, "rejected: {}", list(&c.rejected));
            }
        }
        if let Some(p) = &self.police {
            let _ = writeln!(
                s,
                "kernel: unverified_over_source={} unverified_over_total={}",
                self.unverified_over_source, self.unverified_over_total
            );
            police_table(&mut s, p);
        }
        s
    }
}

/// The police's lines of the table: the system view, then one line per sender.
fn police_table(s: &mut String, p: &PoliceReport) {
    let t = &p.totals;
    let _ = writeln!(
        s,
        "police: policy={} slr={:.1}% active_senders={} delivered_last_period={}",
        p.policy,
        p.slr * 100.0,
        t.active,
        t.delivered
    );
    if p.senders.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "{:<39} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>9} {:>7} {:>7}  state",
        "sender", "nr", "nd", "wr", "llr%", "issued", "ret", "delivered", "other", "o.drop"
    );
    for r in &p.senders {
        let state = match (r.verified, r.premium) {
            (true, true) => "verified premium",
            (true, false) => "verified",
            (false, true) => "unverified premium",
            (false, false) => "unverified",
        };
        let _ = writeln!(
            s,
            "{:<39} {:>8} {:>8} {:>8} {:>6.1} {:>6} {:>6} {:>9} {:>7} {:>7}  {state}",
            r.address.to_string(),
            r.nr,
            r.nd,
            r.wr,
            r.llr * 100.0,
            r.issued,
            r.returned,
            r.delivered,
            r.other,
            r.other_dropped
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The content rules' and FTP groups' counts of every queue add up in the total,
    /// field by field, and show in the table.
    #[test]
    fn content_and_ftp_counts_add_up_across_queues() {
        let queue = |num: u16, n: u64| QueueStats {
            engine: QueueCounters {
                splice: Some(SpliceCounts {
                    answered: n,
                    examined: n,
                    waited: n,
                    joined: n,
                    failed: n,
                    abandoned: n,
                    full: n,
                    expired: n,
                    opening: n,
                    open: n,
                }),
                ftp: Some(FtpCounts {
                    announced: n,
                    unprotected: n,
                    untracked: n,
                }),
                ..QueueCounters::new(num)
            },
            ..Default::default()
        };
        let s = EngineStats {
            queues: vec![queue(0, 2), queue(1, 3)],
            ..Default::default()
        };
        let t = s.total().engine;
        let c = t.splice.unwrap();
        assert_eq!(
            [
                c.answered,
                c.examined,
                c.waited,
                c.joined,
                c.failed,
                c.abandoned,
                c.full,
                c.expired,
                c.opening,
                c.open
            ],
            [5; 10]
        );
        let f = t.ftp.unwrap();
        assert_eq!([f.announced, f.unprotected, f.untracked], [5; 3]);
        let table = s.table();
        assert!(table.contains("content: answered=5 examined=5"), "{table}");
        assert!(
            table.contains("ftp: data_connections=5 unprotected=5 untracked=5"),
            "{table}"
        );
    }

    fn sample() -> EngineStats {
        let mut a = QueueCounters::new(0);
        a.received = 10;
        a.accepted = 7;
        a.dropped = 3;
        a.malformed = 2;
        let fragment = Reason::Malformed(crate::wire::WireError::Fragment);
        a.count_reason(fragment);
        a.count_reason(fragment);
        let mut b = QueueCounters::new(1);
        b.received = 5;
        b.accepted = 5;
        EngineStats {
            role: "mbox".into(),
            pid: 42,
            uptime_secs: 3,
            queue_rule: "xt".into(),
            queues: vec![
                QueueStats {
                    engine: a,
                    kernel: Some(KernelCounters {
                        user_dropped: 1,
                        ..Default::default()
                    }),
                    precise_kernel: Some(KernelCounters {
                        queue_dropped: 2,
                        ..Default::default()
                    }),
                },
                QueueStats {
                    engine: b,
                    kernel: None,
                    precise_kernel: None,
                },
            ],
            police: Some(PoliceReport {
                policy: "fair_share".into(),
                slr: 0.125,
                totals: crate::police::Totals {
                    delivered: 900,
                    active: 2,
                    ..Default::default()
                },
                senders: vec![crate::police::SenderRow {
                    address: "198.18.1.2".parse().unwrap(),
                    nr: 120,
                    nd: 3,
                    wr: 450,
                    llr: 0.02,
                    issued: 40,
                    returned: 39,
                    delivered: 460,
                    other: 0,
                    other_dropped: 0,
                    verified: true,
                    premium: false,
                }],
            }),
            unverified_over_source: 5,
            unverified_over_total: 6,
            kernel_trace: Some(crate::trace::KernelTraceCounters {
                events: 70,
                lost: 1,
            }),
            listeners: Vec::new(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn the_table_shows_the_police_and_each_sender() {
        let t = sample().table();
        assert!(
            t.contains("police: policy=fair_share slr=12.5% active_senders=2"),
            "{t}"
        );
        let row = t.lines().find(|l| l.starts_with("198.18.1.2")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "198.18.1.2",
                "120",
                "3",
                "450",
                "2.0",
                "40",
                "39",
                "460",
                "0",
                "0",
                "verified"
            ]
        );
    }

    /// A value of `T` whose every number is distinct, counting up from `first`.
    fn numbered<T: Serialize + serde::de::DeserializeOwned + Default>(first: u64) -> T {
        fn walk(v: &mut serde_json::Value, n: &mut u64) {
            match v {
                serde_json::Value::Number(_) => {
                    *v = (*n).into();
                    *n += 1;
                }
                serde_json::Value::Object(m) => m.values_mut().for_each(|x| walk(x, n)),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(T::default()).unwrap();
        walk(&mut v, &mut first.clone());
        serde_json::from_value(v).unwrap()
    }

    /// Every counter of the total (capabilities and kernel ones included) is the sum of
    /// the queues' own, reasons and refusals too; the queue's number and its limit and
    /// rate are per queue, not summed.
    #[test]
    fn every_counter_of_the_total_is_the_sum_of_the_queues() {
        let queue = |first: u64| {
            let mut engine: QueueCounters = numbered(first);
            engine.count_reason(Reason::Unselected);
            engine
                .caps
                .count_rejected(crate::capability::CapError::BadMac);
            QueueStats {
                engine,
                kernel: Some(numbered(first)),
                precise_kernel: None,
            }
        };
        let (a, b) = (queue(1), queue(1000));
        let s = EngineStats {
            queues: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        let total = serde_json::to_value(s.total()).unwrap();
        let (a, b) = (
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap(),
        );
        fn check(path: &str, t: &serde_json::Value, a: &serde_json::Value, b: &serde_json::Value) {
            match (t, a.as_u64(), b.as_u64()) {
                (serde_json::Value::Object(m), ..) => {
                    for (k, v) in m {
                        check(&format!("{path}.{k}"), v, &a[k], &b[k]);
                    }
                }
                (t, Some(x), Some(y)) => assert_eq!(t.as_u64(), Some(x + y), "{path}"),
                _ => {}
            }
        }
        let mut summed = 0;
        for (k, v) in total.as_object().unwrap() {
            if ["queue", "queue_limit", "service_pps", "precise_queue"].contains(&k.as_str()) {
                continue;
            }
            check(k, v, &a[k], &b[k]);
            summed += 1;
        }
        assert!(summed > 15, "{total}");
        assert_eq!(total["reasons"]["unselected"], 2);
        assert_eq!(total["caps"]["rejected"]["bad_mac"], 2);
        assert_eq!(
            total["caps"]["issued"],
            a["caps"]["issued"].as_u64().unwrap() + b["caps"]["issued"].as_u64().unwrap()
        );
    }

    /// The hybrid line shows once a packet was routed, even before any precise queue
    /// reports; refusals show only once there are some.
    #[test]
    fn the_table_shows_routing_and_refusals_only_once_they_happen() {
        let mut q = QueueCounters::new(0);
        q.caps.issued = 1;
        let stats = |q: &QueueCounters| EngineStats {
            queues: vec![QueueStats {
                engine: q.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let quiet = stats(&q).table();
        assert!(
            !quiet.contains("hybrid:") && !quiet.contains("rejected:"),
            "{quiet}"
        );
        q.routed = 1;
        q.caps.count_rejected(crate::capability::CapError::Stale);
        let busy = stats(&q).table();
        assert!(busy.contains("hybrid: routed=1"), "{busy}");
        assert!(busy.contains("rejected: stale=1"), "{busy}");
    }

    #[test]
    fn totals_add_up_across_queues() {
        let t = sample().total();
        assert_eq!(t.engine.received, 15);
        assert_eq!(t.engine.accepted, 12);
        assert_eq!(t.engine.reasons["fragment"], 2);
        assert_eq!(t.kernel.unwrap().user_dropped, 1);
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"received\":10"), "{text}");
        assert_eq!(serde_json::from_str::<EngineStats>(&text).unwrap(), s);
    }

    #[test]
    fn the_ports_table_shows_each_ports_counts_beside_its_listeners_queue() {
        let mut s = sample();
        assert!(s.ports_table().contains("per-port statistics are off"));
        let row = |port, established, handshake_us| crate::ports::PortRow {
            proto: crate::wire::proto::TCP,
            port,
            counts: crate::ports::PortCounts {
                packets_in: 10,
                bytes_in: 1000,
                established,
                handshake_us,
                ..Default::default()
            },
        };
        for (q, est) in s.queues.iter_mut().zip([2, 1]) {
            q.engine.ports = Some(PortStats {
                rows: vec![row(8080, est, 1500 * est)],
                untracked: 4,
                other_ports: 0,
            });
        }
        s.listeners = vec![
            Listener {
                port: 8080,
                waiting: 0,
                backlog: 128,
            },
            Listener {
                port: 8081,
                waiting: 3,
                backlog: 5,
            },
        ];
        let t = s.ports_table();
        let line = |port: &str| {
            t.lines()
                .find(|l| l.trim_start().starts_with(port))
                .unwrap()
        };
        let cols: Vec<&str> = line("tcp/8080").split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "tcp/8080", "20", "2000", "0", "0", "3", "1.500", "0", "0", "0/128"
            ],
            "{t}"
        );
        assert!(line("tcp/8081").ends_with("3/5"), "{t}");
        assert!(t.contains("not followed: 8 SYNs"), "{t}");
    }

    #[test]
    fn table_shows_every_queue_and_reason() {
        let t = sample().table();
        assert!(t.contains("queue rule: xt"));
        assert_eq!(t.lines().count(), 11, "{t}");
        assert!(t.contains("unverified_over_source=5 unverified_over_total=6"));
        assert!(t.contains("kernel trace: events=70 lost=1"), "{t}");
        // The precise queues' own kernel drops are shown, not only the queues'.
        assert!(
            t.contains(
                "hybrid: routed=0 segments=0 wire_packets=0 wire_dropped=0 bytes=0 | precise queues: k.wait=0 k.qdrop=2 k.udrop=0"
            ),
            "{t}"
        );
        assert!(t.contains("fragment=2"));
    }
}
