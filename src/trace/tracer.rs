//! A worker's side of the trace: it fills one [`PacketTrace`] per traced packet and
//! hands it to the writer once the packet's verdict has left.
//!
//! Invariants: a packet accepted in a batch keeps its trace in `held` until the batch
//! verdict leaves (at most the worker's batch, `HELD_MAX` as a bound); a trace the
//! writer's channel has no room for is counted in `dropped`, and the worker goes on.

use std::cell::RefCell;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::record::{Edge, Head, Mark, PacketTrace};
use super::writer::Record;
use super::{Filter, Stage, Trace};
use crate::pipeline::Verdict;
use crate::wire::Parsed;

/// Traces held for a batch verdict at most; past it the oldest leave unfinished.
const HELD_MAX: usize = 256;

/// What a worker's tracing did, for the stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceCounters {
    /// Packets whose trace went to the writer.
    pub traced: u64,
    /// Packets whose trace was dropped: the writer's channel was full (or gone).
    pub dropped: u64,
    /// Stage edges that did not fit in their packet's trace.
    pub lost_marks: u64,
}

impl std::ops::Add for TraceCounters {
    type Output = TraceCounters;

    fn add(self, o: TraceCounters) -> TraceCounters {
        TraceCounters {
            traced: self.traced + o.traced,
            dropped: self.dropped + o.dropped,
            lost_marks: self.lost_marks + o.lost_marks,
        }
    }
}

/// Nanoseconds since the Unix epoch from the monotonic clock: the wall clock read once,
/// so a step of the wall clock never reorders a trace.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

impl Clock {
    /// Read both clocks now.
    pub fn start() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Clock {
            base: Instant::now(),
            base_unix_ns: u64::try_from(unix).unwrap_or(u64::MAX),
        }
    }

    pub fn unix_ns(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.base).as_nanos();
        self.base_unix_ns
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// One worker's tracer.
pub struct Tracer {
    out: SyncSender<Record>,
    clock: Clock,
    filter: Filter,
    /// Packets offered to the sample so far.
    seen: u64,
    /// The packet in hand, if it is traced.
    current: Option<PacketTrace>,
    /// Traced packets waiting for their batch verdict, in arrival order.
    held: Vec<PacketTrace>,
    /// pcap on: the most bytes of each packet kept.
    snap: Option<usize>,
    pub counters: TraceCounters,
}

impl Tracer {
    /// A tracer that sends traces of the packets `filter` selects to `out`.
    pub fn new(out: SyncSender<Record>, clock: Clock, filter: Filter) -> Tracer {
        Tracer {
            out,
            clock,
            filter,
            seen: 0,
            current: None,
            held: Vec::new(),
            snap: None,
            counters: TraceCounters::default(),
        }
    }

    /// Also keep up to `snap` bytes of each traced packet as received and as returned,
    /// for the pcap files.
    pub fn with_pcap(mut self, snap: usize) -> Tracer {
        self.snap = Some(snap);
        self
    }

    /// The packet is in the worker's buffer: `bytes`, as far as the kernel copied it.
    pub fn received(&mut self, bytes: &[u8]) {
        self.mark(Stage::Receive, Edge::End);
        if let (Some(t), Some(snap)) = (self.current.as_mut(), self.snap) {
            t.bytes_in
                .extend_from_slice(&bytes[..bytes.len().min(snap)]);
        }
    }

    /// A packet was received at `at`: start its trace if the sample takes it.
    pub fn start(&mut self, n: u64, (queue, id, hook): (u16, u32, u8), len: u32, at: Instant) {
        self.seen += 1;
        self.current = None;
        if self.seen % self.filter.sample.max(1) != 0 {
            return;
        }
        let mut t = PacketTrace::new(n, queue, id, hook, len);
        t.mark_at(
            self.clock.unix_ns(at),
            Edge::Begin,
            &[Stage::Packet, Stage::Receive],
        );
        // A filter on headers decides once they are parsed (`headers`).
        self.current = Some(t);
    }

    /// The pipeline decided `v`, leaving a packet of `len` bytes, of which `bytes` are
    /// known (a partial copy knows only its first bytes).
    pub fn decided(&mut self, v: &Verdict, len: usize, bytes: &[u8]) {
        if let Some(t) = self.current.as_mut() {
            // A filter that never saw the headers (the packet did not parse) says no.
            if t.head.is_none() && self.filter.needs_headers() {
                self.current = None;
                return;
            }
            t.verdict = Some(*v);
            t.len_out = u32::try_from(len).unwrap_or(u32::MAX);
            let leaves = matches!(
                v,
                Verdict::Accept | Verdict::AcceptModified | Verdict::Pass(_)
            );
            if let (Some(snap), true) = (self.snap, leaves) {
                t.bytes_out = Some(bytes[..bytes.len().min(snap)].to_vec());
            }
        }
        self.mark(Stage::Verdict, Edge::Begin);
    }

    /// The packet's verdict left: its trace is complete.
    pub fn sent(&mut self) {
        if let Some(t) = self.current.take() {
            self.finish(t, Instant::now());
        }
    }

    /// The packet waits for a batch verdict: keep its trace until `released`.
    pub fn hold(&mut self) {
        if let Some(t) = self.current.take() {
            if self.held.len() >= HELD_MAX {
                let oldest = self.held.remove(0);
                self.finish(oldest, Instant::now());
            }
            self.held.push(t);
        }
    }

    /// A batch verdict left: the traces it completes go to the writer.
    pub fn released(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let at = Instant::now();
        for t in std::mem::take(&mut self.held) {
            self.finish(t, at);
        }
    }

    fn finish(&mut self, mut t: PacketTrace, at: Instant) {
        t.mark_at(
            self.clock.unix_ns(at),
            Edge::End,
            &[Stage::Verdict, Stage::Packet],
        );
        self.counters.lost_marks += u64::from(t.lost_marks);
        match self.out.try_send(Record::Packet(t)) {
            Ok(()) => self.counters.traced += 1,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped += 1;
            }
        }
    }

    /// Stage `stage` begins or ends now.
    pub fn mark(&mut self, stage: Stage, edge: Edge) {
        if let Some(t) = self.current.as_mut() {
            t.mark(Mark {
                t_ns: self.clock.unix_ns(Instant::now()),
                stage,
                edge,
            });
        }
    }
}

impl Trace for &RefCell<Tracer> {
    fn begin(self, s: Stage) {
        self.borrow_mut().mark(s, Edge::Begin);
    }

    fn end(self, s: Stage) {
        self.borrow_mut().mark(s, Edge::End);
    }

    fn headers(self, buf: &[u8], p: &Parsed) {
        self.borrow_mut().name(buf, p);
    }
}

impl Tracer {
    /// Name the packet in hand by its headers, or stop tracing it if the filter says no.
    fn name(&mut self, buf: &[u8], p: &Parsed) {
        let Some(t) = self.current.as_mut() else {
            return;
        };
        if t.head.is_some() {
            return; // the first parse names the packet; later ones see our rewrites
        }
        let head = Head::of(buf, p);
        if self.filter.matches(&head) {
            t.head = Some(head);
        } else {
            self.current = None;
        }
    }
}
