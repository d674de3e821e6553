//! The queue loop: one thread per queue reads packets, runs the pipeline, returns verdicts.
//!
//! Unchanged packets are not answered one by one: their ids accumulate and one batch
//! verdict accepts them all when the socket runs dry or the batch is full. Every packet
//! gets a verdict of our choosing, on error paths too: one whose message could not be
//! read gets the role's verdict for what it cannot parse, by id; one whose drop could
//! not be sent is kept out of every batch verdict (which would accept it) until a drop
//! gets through. Counters are published at most every `PUBLISH_EVERY`, not per packet.
//!
//! Hybrid path: the queue takes GSO super-packets whole. One the pipeline must rewrite
//! is sent to the worker's precise queue, where the kernel cuts it into wire packets
//! before the verdict call returns; the worker answers those segments at once, in order,
//! before reading on (`route`).

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::board::Board;
use super::depth::{self, DepthBound};
use super::inject::Injector;
use super::nft::VerifiedSet;
use crate::config::MalformedVerdict;
use crate::driver::nfqueue::{
    Incoming, PacketMsg, Queue, QueueError, SKB_CSUMNOTREADY, SKB_GSO, Unreadable,
    Verdict as KernelVerdict,
};
use crate::pipeline::{self, Datagram, PacketMeta, Pipeline, Segments, Verdict};
use crate::ports::{Action, PortMeter};
use crate::stats::{Event, QueueCounters};
use crate::trace::{Stage, Trace, Tracer};

/// Unchanged packets answered by one batch verdict at most.
const BATCH_MAX: usize = 64;
/// Receive errors in a row after which a worker gives up (the engine then stops).
const MAX_RECV_FAILURES: u32 = 100;
/// Pause after a receive error, so a broken socket does not spin a CPU.
const RECV_BACKOFF: Duration = Duration::from_millis(10);
/// How often a worker publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often a worker runs its timer: closes due periods, merges the system view. An
/// idle worker runs it at least every receive timeout.
const TICK_EVERY: Duration = Duration::from_millis(20);
/// How often a worker posts its sender report, and how many senders it holds.
const REPORT_EVERY: Duration = Duration::from_secs(1);
pub const REPORT_LIMIT: usize = 1000;
/// Room for the largest packet plus what a role may append.
const BUF_CAPACITY: usize = 0x10000 + 256;

/// A running worker: its thread and its last published counters.
pub struct Worker {
    pub queue: u16,
    pub counters: Arc<Mutex<QueueCounters>>,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Start a worker thread that owns queue `num` and `pipeline` until `stop` is set;
    /// with `datagrams`, it opens the sockets to send what the pipeline produces. It
    /// shares the police's system-wide figures on `board` as worker `index`.
    /// With `verified`, it keeps the kernel's set of verified senders in step with its
    /// pipeline's. It measures its service rate into `depth`, which may move the queue's
    /// limit. With `precise` it runs the hybrid path: `queue` takes GSO super-packets.
    /// With `tracer`, it traces the packets the tracer selects. With `inject`, it opens
    /// the raw sockets for the packets the pipeline makes (content rules).
    pub fn spawn(
        (num, queue, precise, depth): (u16, Queue, Option<Queue>, DepthBound),
        (pipeline, tracer): (Pipeline, Option<Tracer>),
        (datagrams, verified, inject): (bool, Option<VerifiedSet>, bool),
        (board, index): (Arc<Board>, usize),
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Worker> {
        // The limit shows from the start, before the first publish.
        let initial = QueueCounters {
            queue_limit: depth.limit(),
            precise_queue: precise.as_ref().map(Queue::num),
            trace: tracer.as_ref().map(|t| t.counters),
            ..QueueCounters::new(num)
        };
        let counters = Arc::new(Mutex::new(initial.clone()));
        let published = Arc::clone(&counters);
        let sockets = if datagrams {
            Some(Sockets::open()?)
        } else {
            None
        };
        let injector = if inject {
            Some(Injector::open()?)
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name(format!("queue-{num}"))
            .spawn(move || {
                let mut l = Loop::new((initial, queue, depth), pipeline, published, sockets);
                l.verified = verified;
                l.precise = precise;
                l.tracer = tracer.map(RefCell::new);
                l.injector = injector;
                l.run(&stop, (&board, index))
            })?;
        Ok(Worker {
            queue: num,
            counters,
            thread,
        })
    }

    /// Tell whether the thread has ended (it only ends when told to, or by a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the thread; false if it panicked.
    pub fn join(self) -> bool {
        self.thread.join().is_ok()
    }

    /// Copy the last published counters.
    pub fn snapshot(&self) -> QueueCounters {
        match self.counters.lock() {
            Ok(c) => c.clone(),
            // A worker that panicked mid-publish still left whole numbers behind.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// One UDP socket per family for the datagrams a pipeline produces.
struct Sockets {
    v4: UdpSocket,
    v6: UdpSocket,
}

impl Sockets {
    fn open() -> std::io::Result<Sockets> {
        // Non-blocking: a full socket buffer costs a datagram (counted), never the queue.
        let open = |any: IpAddr| {
            let s = UdpSocket::bind((any, 0))?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        };
        Ok(Sockets {
            v4: open(Ipv4Addr::UNSPECIFIED.into())?,
            v6: open(Ipv6Addr::UNSPECIFIED.into())?,
        })
    }

    fn send(&self, d: &Datagram) -> std::io::Result<usize> {
        let socket = if d.to.is_ipv4() { &self.v4 } else { &self.v6 };
        socket.send_to(&d.payload, d.to)
    }
}

/// The packet in hand, in one of two buffers that take turns: one for whole copies, one
/// for partial copies padded to their packet's length (hybrid path). Past its copy a
/// padded buffer keeps what it held, zeros only where it grows, and the pipeline never
/// reads there: zeroing up to 64 KiB per super-packet, each time a small packet (an ACK)
/// had shortened the buffer between two of them, cost more than the short copy saved.
struct PacketBuf {
    current: Vec<u8>,
    other: Vec<u8>,
    /// Whether `current` is the padded one.
    padded: bool,
}

impl Default for PacketBuf {
    fn default() -> Self {
        PacketBuf {
            current: Vec::with_capacity(BUF_CAPACITY),
            other: Vec::with_capacity(BUF_CAPACITY),
            padded: false,
        }
    }
}

impl PacketBuf {
    /// Hold a whole packet.
    fn load_whole(&mut self, bytes: &[u8]) {
        self.take(false);
        self.current.clear();
        self.current.extend_from_slice(bytes);
    }

    /// Hold the first bytes of a `len`-byte packet, padded to `len`; return how many
    /// bytes are the packet's.
    fn load_padded(&mut self, copy: &[u8], len: usize) -> usize {
        self.take(true);
        let len = len.max(copy.len());
        self.current.resize(len, 0);
        self.current[..copy.len()].copy_from_slice(copy);
        copy.len()
    }

    fn take(&mut self, padded: bool) {
        if self.padded != padded {
            std::mem::swap(&mut self.current, &mut self.other);
            self.padded = padded;
        }
    }
}

impl std::ops::Deref for PacketBuf {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.current
    }
}

impl std::ops::DerefMut for PacketBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.current
    }
}

struct Loop {
    queue: Queue,
    /// Hybrid path: the queue that receives routed super-packets cut into segments.
    precise: Option<Queue>,
    pipeline: Pipeline,
    sockets: Option<Sockets>,
    counters: QueueCounters,
    published: Arc<Mutex<QueueCounters>>,
    buf: PacketBuf,
    /// Unchanged packets not yet answered, in id order (at most `BATCH_MAX`).
    pending: Vec<u32>,
    /// Packets whose drop could not be sent, even on a second try: no batch verdict may
    /// cover them until a retry gets through (`split_batch`). At most the kernel's queue
    /// length, since each is still queued there.
    stuck: Vec<u32>,
    /// Packets the pipeline holds unanswered (content rules): kept out of batch verdicts
    /// until it releases them. At most what the kernel's queue holds.
    held: Vec<u32>,
    /// Raw sockets for the packets the pipeline makes (content rules), if it may.
    injector: Option<Injector>,
    /// Reads and verdicts that failed here; the binding counts kernel-side errors.
    send_errors: u64,
    /// The version of the board's withheld list the pipeline has.
    withheld_seen: u64,
    /// The version of the board's port policies the pipeline has.
    policies_seen: u64,
    /// The version of the board's reloaded config the pipeline has.
    config_seen: u64,
    /// The kernel's sets of verified senders (the channel that bypasses the kernel's
    /// limits on unverified ones), if installed.
    verified: Option<VerifiedSet>,
    /// This worker's service rate, and the queue limit it may move with it.
    depth: DepthBound,
    /// Tracing on: the traced packets' stages go to the trace writer. In a cell, so the
    /// pipeline can be handed it by value (`Trace`); the worker itself uses `get_mut`.
    tracer: Option<RefCell<Tracer>>,
}

impl Loop {
    fn new(
        (counters, queue, depth): (QueueCounters, Queue, DepthBound),
        pipeline: Pipeline,
        published: Arc<Mutex<QueueCounters>>,
        sockets: Option<Sockets>,
    ) -> Self {
        Loop {
            queue,
            precise: None,
            pipeline,
            sockets,
            counters,
            published,
            buf: PacketBuf::default(),
            pending: Vec::with_capacity(BATCH_MAX),
            stuck: Vec::new(),
            held: Vec::new(),
            injector: None,
            send_errors: 0,
            withheld_seen: 0,
            policies_seen: 0,
            config_seen: 0,
            verified: None,
            depth,
            tracer: None,
        }
    }

    fn run(mut self, stop: &AtomicBool, board: (&Board, usize)) {
        let mut now = Instant::now();
        let (mut last_publish, mut last_tick, mut last_estimate) = (now, now, now);
        // Time spent blocked for want of packets since the last estimate: not work.
        let mut idle = Duration::ZERO;
        let mut received_then = 0;
        // None: report at the first tick, so the stats show the police from the start.
        let mut last_report: Option<Instant> = None;
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            // Block only when nothing awaits a verdict; otherwise drain, then flush.
            let wait = self.pending.is_empty();
            let blocked_from = wait.then(Instant::now);
            let got = self.queue.recv(wait);
            if let Some(t) = blocked_from {
                idle += t.elapsed();
            }
            match got {
                Ok(Some(incoming)) => {
                    // Per packet (a vDSO read): periods and freshness must not stand
                    // still while a burst keeps the worker from blocking.
                    now = Instant::now();
                    self.counters.received += 1;
                    // A change of the port policies holds from the next packet on, also
                    // the first after an idle spell (ticks come with packets).
                    if let Some(p) = board.0.policies().since(&mut self.policies_seen) {
                        self.pipeline.set_port_policies(&p);
                    }
                    // So does a reload's config: the rules that queue its selection are
                    // in force.
                    if let Some(Some(c)) = board.0.config().since(&mut self.config_seen) {
                        self.pipeline.reconfigure(&c);
                    }
                    match incoming {
                        Incoming::Packet(msg) => self.process(&msg, now),
                        Incoming::Unreadable { id, cause } => self.unreadable(id, cause),
                    }
                }
                Ok(None) => {
                    self.flush();
                    now = Instant::now();
                    self.sweep_precise(now);
                }
                Err(e) => {
                    self.send_errors += 1;
                    failures += 1;
                    tracing::warn!(queue = self.counters.queue, "receive: {e}");
                    self.flush();
                    if failures >= MAX_RECV_FAILURES {
                        // The engine sees this worker end, removes the rules and exits.
                        tracing::error!(
                            queue = self.counters.queue,
                            "{failures} receive errors in a row; giving up"
                        );
                        break;
                    }
                    std::thread::sleep(RECV_BACKOFF);
                    continue;
                }
            }
            failures = 0;
            if now.duration_since(last_tick) >= TICK_EVERY {
                let report = last_report.is_none_or(|t| now.duration_since(t) >= REPORT_EVERY);
                self.tick(now, board, report);
                last_tick = now;
                if report {
                    last_report = Some(now);
                }
            }
            if now.duration_since(last_estimate) >= depth::ESTIMATE_EVERY {
                let answered = self.counters.received - received_then;
                self.bound_depth(answered, now.duration_since(last_estimate), idle);
                (last_estimate, idle, received_then) =
                    (now, Duration::ZERO, self.counters.received);
            }
            if now.duration_since(last_publish) >= PUBLISH_EVERY {
                self.publish();
                last_publish = now;
            }
        }
        self.flush();
        self.publish();
    }

    /// Run the pipeline's timer and trade figures with the other workers on `board`;
    /// with `report`, post the police's sender report too. Pick up a new list of
    /// senders to withhold feedback from.
    fn tick(&mut self, now: Instant, (board, index): (&Board, usize), report: bool) {
        if let Some(list) = board.withheld_since(&mut self.withheld_seen) {
            self.pipeline.set_withheld(list);
        }
        let figures = self.pipeline.on_timer(now);
        self.splice_actions();
        let Some(figures) = figures else {
            return;
        };
        // Taken every tick, so they never pile up, also when no set is installed.
        self.update_verified();
        self.pipeline.set_system(board.post(index, figures));
        if report {
            if let Some(r) = self.pipeline.police_report(REPORT_LIMIT) {
                board.post_report(index, r);
            }
        }
    }

    /// Fold a window of `answered` packets in `window`, `idle` of it blocked, into the
    /// service rate, and move the kernel's queue limit when it changed enough.
    fn bound_depth(&mut self, answered: u64, window: Duration, idle: Duration) {
        self.depth.served(answered, window.saturating_sub(idle));
        let Some(limit) = self.depth.estimate() else {
            return;
        };
        match self.queue.set_max_len(limit) {
            Ok(()) => self.depth.applied(limit),
            Err(e) => {
                self.send_errors += 1;
                tracing::warn!(queue = self.counters.queue, limit, "queue limit: {e}");
            }
        }
    }

    /// Bring the kernel's set of verified senders in step with the pipeline's.
    fn update_verified(&mut self) {
        let changes = self.pipeline.take_verified_changes();
        if let (Some(set), false) = (self.verified.as_mut(), changes.is_empty()) {
            if let Err(e) = set.apply(&changes) {
                self.send_errors += 1;
                tracing::warn!(queue = self.counters.queue, "verified senders' set: {e}");
            }
        }
    }

    fn process(&mut self, msg: &PacketMsg, now: Instant) {
        let queue = self.counters.queue;
        self.trace_start(queue, msg, now);
        let copy = self.queue.payload(msg);
        // Hybrid path: the queue copies the headers only (its copy range); the buffer
        // takes the packet's length, so lengths read true, and the pipeline reads no
        // further than the copy (what needs more is read whole from the precise queue).
        let copied = match (msg.orig_len, &self.precise) {
            (Some(len), Some(_)) => Some(self.buf.load_padded(copy, len as usize)),
            _ => {
                self.buf.load_whole(copy);
                None
            }
        };
        let meta = PacketMeta {
            truncated: msg.orig_len.is_some() && copied.is_none(),
            id: Some(msg.id),
            copied,
            ..meta_of(msg)
        };
        let wire = self.pipeline.wire_size(&meta, &self.buf);
        let verdict = match self.tracer.as_mut() {
            Some(cell) => {
                // Past a partial copy the buffer holds padding, not the packet.
                let known = |b: &[u8]| b.len().min(copied.unwrap_or(usize::MAX));
                cell.get_mut().received(&self.buf[..known(&self.buf)]);
                let v = self
                    .pipeline
                    .process_traced(&meta, &mut self.buf, now, &*cell);
                let t = cell.get_mut();
                t.decided(&v, self.buf.len(), &self.buf[..known(&self.buf)]);
                v
            }
            None => self.pipeline.process(&meta, &mut self.buf, now),
        };
        pipeline::count(&mut self.counters, &verdict, wire);
        // A forwarded connection's SYN: its mark names the port the nat chain sends it to.
        let mark = self.pipeline.take_mark();
        // A sender just verified leaves the kernel's limits on unverified senders now,
        // not at the next tick: a new connection's first round trips run at full rate.
        // Once per sender, so the syscall is rare.
        if self.verified.is_some() && self.pipeline.verified_changed() {
            self.update_verified();
        }
        self.send_datagrams();
        match verdict {
            Verdict::Accept | Verdict::Pass(_) if mark.is_some() => {
                // Marked, it is answered alone: after the packets queued before it.
                self.flush();
                self.send(msg.id, (KernelVerdict::Accept, mark), false);
                self.trace_sent();
            }
            Verdict::Accept | Verdict::Pass(_) => {
                // Its trace ends with the batch verdict that answers it.
                if let Some(t) = self.tracer.as_mut() {
                    t.get_mut().hold();
                }
                self.accept_later(msg.id);
            }
            Verdict::AcceptModified => {
                // The unchanged packets queued before it leave first: answered alone, it
                // would overtake them, and TCP takes reordered segments for loss.
                self.flush();
                self.send(msg.id, (KernelVerdict::Accept, mark), true);
                self.trace_sent();
            }
            Verdict::Route(how) => self.route(msg.id, how, now),
            Verdict::Drop(_) => {
                self.send(msg.id, (KernelVerdict::Drop, None), false);
                self.trace_sent();
            }
            Verdict::Hold => {
                self.held.push(msg.id);
                self.trace_sent();
            }
        }
        self.splice_actions();
    }

    /// Do what the content rules' connections need: send the packets the pipeline
    /// made, answer the packets it releases.
    fn splice_actions(&mut self) {
        for action in self.pipeline.take_splice_actions() {
            match action {
                Action::Send(packet) => {
                    let sent = match &self.injector {
                        Some(i) => i.send(&packet),
                        None => Err(std::io::Error::other("no raw socket")),
                    };
                    if let Err(e) = sent {
                        self.send_errors += 1;
                        self.counters.count_reason(Event::PacketNotSent);
                        tracing::warn!(queue = self.counters.queue, "engine's packet: {e}");
                    }
                }
                Action::Release { id, verdict } => {
                    self.held.retain(|&h| h != id);
                    match verdict {
                        Ok((bytes, mark)) => {
                            self.counters.modified += 1;
                            self.buf.load_whole(&bytes);
                            self.send(id, (KernelVerdict::Accept, mark), true);
                        }
                        Err(why) => {
                            self.counters.dropped += 1;
                            self.counters.wire_dropped += 1;
                            self.counters.count_reason(why);
                            self.send(id, (KernelVerdict::Drop, None), false);
                        }
                    }
                }
            }
        }
    }

    /// Start the trace of a packet just received from `queue`, if it is traced.
    fn trace_start(&mut self, queue: u16, msg: &PacketMsg, at: Instant) {
        if let Some(t) = self.tracer.as_mut() {
            let len = msg.orig_len.unwrap_or(msg.payload.len() as u32);
            // Packets and segments read so far: each trace's number is its own.
            let n = self.counters.received + self.counters.segments;
            t.get_mut().start(n, (queue, msg.id, msg.hook), len, at);
        }
    }

    /// The verdict of the packet in hand has left: its trace is complete.
    fn trace_sent(&mut self) {
        if let Some(t) = self.tracer.as_mut() {
            t.get_mut().sent();
        }
    }

    /// Send super-packet `id` to the precise queue and answer its segments there, in
    /// order: each rewritten one alone, as soon as it is, the unchanged ones as they come.
    fn route(&mut self, id: u32, how: Segments, now: Instant) {
        let Some(mut precise) = self.precise.take() else {
            // Only the hybrid path receives super-packets: nothing else can route.
            self.counters.count_reason(Event::RouteWithoutPreciseQueue);
            self.send(id, (KernelVerdict::Drop, None), false);
            self.trace_sent();
            return;
        };
        // The trailer goes only to a segment of this packet's own flow.
        let flow = flow_of(&self.buf);
        // The unchanged packets queued before it leave first, as for a rewrite.
        self.flush();
        // No bypass: a packet whose marker must be cleared may not pass as it is.
        let to = KernelVerdict::Queue {
            num: precise.num(),
            bypass: false,
        };
        self.send(id, (to, None), false);
        self.trace_sent();
        // The kernel queued every segment before the verdict call returned.
        self.answer_segments(&mut precise, Some((how, flow)), now);
        self.precise = Some(precise);
    }

    /// Answer what waits on the precise queue: the segments of the packet just `routed`
    /// (with how, and its flow), or, with None, any left behind by an earlier route (a
    /// read that failed), which lose their markers and nothing else.
    fn answer_segments(
        &mut self,
        precise: &mut Queue,
        routed: Option<(Segments, Option<Flow>)>,
        now: Instant,
    ) {
        let mut trailer_due = matches!(routed, Some((Segments::Trailer, _)));
        // The first read for a routed packet may wait (briefly: the precise queue's
        // timeout): answered after the packets that follow it, it would arrive late.
        let mut wait = routed.is_some();
        loop {
            let got = precise.recv(wait);
            if wait && matches!(got, Ok(None)) {
                self.counters.count_reason(Event::RoutedPacketMissing);
            }
            wait = false;
            let msg = match got {
                Ok(Some(Incoming::Packet(msg))) => msg,
                Ok(Some(Incoming::Unreadable { id, cause })) => {
                    self.counters.count_reason(Event::from(cause));
                    let sent = precise.verdict(id, KernelVerdict::Drop, None);
                    self.check(id, "segment drop", sent);
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    self.send_errors += 1;
                    tracing::warn!(queue = precise.num(), "receive segments: {e}");
                    break;
                }
            };
            self.counters.segments += 1;
            self.trace_start(precise.num(), &msg, Instant::now());
            self.buf.load_whole(precise.payload(&msg));
            let ours = routed.is_some_and(|(_, flow)| flow.is_none() || flow == flow_of(&self.buf));
            let process = matches!(routed, Some((Segments::Process, _))) && ours;
            let first = !process && trailer_due && ours;
            trailer_due &= !first;
            let verdict = self.segment(&meta_of(&msg), process, first, now);
            self.send_datagrams();
            let (v, payload) = match verdict {
                Verdict::AcceptModified => (KernelVerdict::Accept, Some(self.buf.as_slice())),
                Verdict::Drop(r) => {
                    self.counters.count_reason(r);
                    self.counters.wire_dropped += 1;
                    (KernelVerdict::Drop, None)
                }
                Verdict::Pass(r) => {
                    self.counters.count_reason(r);
                    (KernelVerdict::Accept, None)
                }
                Verdict::Accept | Verdict::Route(_) => (KernelVerdict::Accept, None),
                // Segments are never held (they come without an id to hold).
                Verdict::Hold => (KernelVerdict::Drop, None),
            };
            let sent = precise.verdict(msg.id, v, payload);
            if !self.check(msg.id, "segment verdict", sent) {
                // No batch verdict sweeps this queue: drop it now, or it waits forever.
                let sent = precise.verdict(msg.id, KernelVerdict::Drop, None);
                if !self.check(msg.id, "segment fallback drop", sent) {
                    self.counters.count_reason(Event::VerdictFailed);
                }
            }
            self.trace_sent();
        }
    }

    /// Decide a segment of a routed packet: run it through the whole pipeline
    /// (`process`), or rewrite it as a segment (the `first` takes the trailer).
    fn segment(&mut self, meta: &PacketMeta, process: bool, first: bool, now: Instant) -> Verdict {
        let Some(cell) = self.tracer.as_mut() else {
            return if process {
                self.pipeline.process(meta, &mut self.buf, now)
            } else {
                self.pipeline.segment(&mut self.buf, first)
            };
        };
        cell.get_mut().received(&self.buf);
        let t = &*cell;
        let v = if process {
            self.pipeline.process_traced(meta, &mut self.buf, now, t)
        } else {
            // A segment is not parsed by the pipeline: name it here.
            if let Ok(p) = crate::wire::parse(&self.buf) {
                t.headers(&self.buf, &p);
            }
            t.begin(Stage::Segment);
            let v = self.pipeline.segment(&mut self.buf, first);
            t.end(Stage::Segment);
            v
        };
        cell.get_mut().decided(&v, self.buf.len(), &self.buf);
        v
    }

    /// Answer segments left on the precise queue, if any (called when the queue is idle).
    fn sweep_precise(&mut self, now: Instant) {
        if let Some(mut precise) = self.precise.take() {
            self.answer_segments(&mut precise, None, now);
            self.precise = Some(precise);
        }
    }

    /// Send what the pipeline produced for the last packet.
    fn send_datagrams(&mut self) {
        for d in self.pipeline.datagrams() {
            let sent = match &self.sockets {
                Some(sockets) => sockets.send(&d),
                None => Err(std::io::Error::other("no socket for datagrams")),
            };
            if let Err(e) = sent {
                self.send_errors += 1;
                self.counters.count_reason(Event::DatagramNotSent);
                tracing::warn!(queue = self.counters.queue, to = %d.to, "datagram: {e}");
            }
        }
    }

    /// Answer a packet whose message could not be read as the role answers a packet it
    /// cannot parse; left alone, the next batch verdict would accept it.
    fn unreadable(&mut self, id: u32, cause: Unreadable) {
        self.counters.malformed += 1;
        self.counters.count_reason(Event::from(cause));
        match self.pipeline.malformed() {
            MalformedVerdict::Drop => {
                self.counters.dropped += 1;
                self.send(id, (KernelVerdict::Drop, None), false);
            }
            MalformedVerdict::Accept => {
                self.counters.accepted += 1;
                self.accept_later(id);
            }
        }
    }

    /// Leave an unchanged packet to the next batch verdict.
    fn accept_later(&mut self, id: u32) {
        self.pending.push(id);
        if self.pending.len() >= BATCH_MAX {
            self.flush();
        }
    }

    /// Answer one packet now, with its new mark if any, and the rewritten buffer if
    /// `modified`.
    fn send(&mut self, id: u32, (v, mark): (KernelVerdict, Option<u32>), modified: bool) {
        // Ids are answered out of order here: the batch that follows only covers
        // packets still queued, so this one is not answered twice.
        let payload = modified.then_some(self.buf.as_slice());
        let sent = self.queue.verdict_marked(id, v, mark, payload);
        if self.check(id, "verdict", sent) {
            return;
        }
        // Unanswered, the packet would be accepted unchanged by the next batch
        // verdict: drop it instead, so a failed rewrite or drop never lets it pass.
        let sent = self.queue.verdict(id, KernelVerdict::Drop, None);
        if !self.check(
            id,
            "fallback drop; kept out of batch verdicts until a drop gets through",
            sent,
        ) {
            self.counters.count_reason(Event::VerdictFailed);
            self.stuck.push(id);
        }
    }

    fn flush(&mut self) {
        // Retry the drops that failed first: a batch covering one would accept it.
        let (queue, errors) = (&mut self.queue, &mut self.send_errors);
        self.stuck.retain(|&id| {
            let failed = queue.verdict(id, KernelVerdict::Drop, None).is_err();
            *errors += u64::from(failed);
            failed
        });
        // Taken out and put back, so answering can count errors and the Vec keeps its room.
        let mut pending = std::mem::take(&mut self.pending);
        // Held packets, like stuck ones, must not be swept by a batch.
        let kept_out = if self.held.is_empty() {
            std::borrow::Cow::Borrowed(&self.stuck)
        } else {
            std::borrow::Cow::Owned([&self.stuck[..], &self.held[..]].concat())
        };
        let (batch, one_by_one) = split_batch(&pending, &kept_out);
        if let Some(id) = batch {
            let sent = self.queue.verdict_batch(id, KernelVerdict::Accept);
            self.check(id, "batch verdict", sent);
        }
        for &id in one_by_one {
            let sent = self.queue.verdict(id, KernelVerdict::Accept, None);
            self.check(id, "accept verdict", sent);
        }
        pending.clear();
        self.pending = pending;
        if let Some(t) = self.tracer.as_mut() {
            t.get_mut().released();
        }
    }

    /// Count and log a verdict that could not be sent; true if it was sent.
    fn check(&mut self, id: u32, what: &str, sent: Result<(), QueueError>) -> bool {
        if let Err(e) = &sent {
            self.send_errors += 1;
            tracing::warn!(queue = self.counters.queue, id, "{what}: {e}");
        }
        sent.is_ok()
    }

    fn publish(&mut self) {
        self.counters.caps.clone_from(self.pipeline.cap_counters());
        self.counters.ports = self.pipeline.port_meter().map(PortMeter::stats);
        self.counters.splice = self.pipeline.splice_counts();
        self.counters.ftp = self.pipeline.ftp_counts();
        self.counters.forwarded.clear();
        (self.counters.forwarded).extend_from_slice(self.pipeline.forwarded());
        // Both sockets' receive paths: an overrun of the precise queue counts as well.
        let k = self.queue.counters()
            + self
                .precise
                .as_ref()
                .map(Queue::counters)
                .unwrap_or_default();
        self.counters.enobufs = k.enobufs;
        self.counters.errors =
            self.send_errors + k.nl_errors + k.truncated + k.malformed + k.foreign;
        // Not per packet: a running total the receive path keeps (`no_id` in nfqueue).
        self.counters.reasons.set(Event::NetlinkNoId, k.no_id);
        (self.counters.queue_limit, self.counters.service_pps) =
            (self.depth.limit(), self.depth.rate());
        self.counters.trace = self.tracer.as_mut().map(|t| t.get_mut().counters);
        if let Ok(mut p) = self.published.lock() {
            p.clone_from(&self.counters);
        }
    }
}

/// What the pipeline is told of a queued packet, copied whole: the precise queues carry
/// no GSO flag, so their segments come as single packets with checksums complete.
fn meta_of(msg: &PacketMsg) -> PacketMeta {
    PacketMeta {
        hook: msg.hook,
        indev: msg.indev,
        outdev: msg.outdev,
        truncated: msg.orig_len.is_some(),
        gso: msg.skb_info & SKB_GSO != 0,
        csum_partial: msg.skb_info & SKB_CSUMNOTREADY != 0,
        id: None,
        copied: None,
    }
}

/// A packet's addresses and ports: which flow a segment belongs to.
type Flow = (IpAddr, IpAddr, Option<(u16, u16)>);

/// The flow of the IP packet in `buf`, if it parses.
fn flow_of(buf: &[u8]) -> Option<Flow> {
    crate::wire::parse(buf)
        .ok()
        .map(|p| (p.src, p.dst, p.ports()))
}

/// Split the unchanged packets awaiting acceptance (`pending`, in id order) into the id
/// one batch verdict accepts up to, and the packets to accept one by one: those after
/// the first `stuck` id, since a batch verdict covers every queued id up to its own.
fn split_batch<'a>(pending: &'a [u32], stuck: &[u32]) -> (Option<u32>, &'a [u32]) {
    let n = pending.partition_point(|&p| stuck.iter().all(|&s| id_before(p, s)));
    let (batch, one_by_one) = pending.split_at(n);
    (batch.last().copied(), one_by_one)
}

/// Whether packet id `a` was queued before `b`: ids wrap, and the kernel compares them
/// as serial numbers (`nfq_id_after`).
fn id_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tests {
    use super::{PacketBuf, split_batch};

    /// A super-packet's padding is written once: a small packet between two of them
    /// takes the other buffer, and the next super-packet finds its padding as it was.
    #[test]
    fn a_small_packet_between_two_super_packets_leaves_the_padding_alone() {
        let mut b = PacketBuf::default();
        b.load_padded(&[1; 4], 10);
        assert_eq!(&b[..], &[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]);
        b[9] = 7; // what a packet's bytes past the copy would leave behind
        b.load_whole(&[9, 9, 9]);
        assert_eq!(&b[..], &[9, 9, 9]);
        assert_eq!(b.load_padded(&[2; 4], 12), 4);
        assert_eq!(&b[..], &[2, 2, 2, 2, 0, 0, 0, 0, 0, 7, 0, 0]);
        // A copy longer than the packet it claims to be keeps every copied byte.
        assert_eq!(b.load_padded(&[3; 5], 2), 5);
        assert_eq!(&b[..], &[3; 5]);
    }

    #[test]
    fn without_stuck_ids_one_batch_accepts_everything() {
        assert_eq!(split_batch(&[1, 2, 5], &[]), (Some(5), &[][..]));
        assert_eq!(split_batch(&[], &[3]), (None, &[][..]));
    }

    #[test]
    fn the_batch_stops_below_the_first_stuck_id() {
        assert_eq!(split_batch(&[1, 2, 5, 6], &[4]), (Some(2), &[5, 6][..]));
        assert_eq!(split_batch(&[1, 3, 5], &[4, 2]), (Some(1), &[3, 5][..]));
        assert_eq!(split_batch(&[5, 6], &[3]), (None, &[5, 6][..]));
        assert_eq!(split_batch(&[1, 2], &[9]), (Some(2), &[][..]));
    }

    #[test]
    fn ids_compare_across_the_wrap() {
        let pending = [u32::MAX - 1, u32::MAX, 1, 2];
        assert_eq!(split_batch(&pending, &[0]), (Some(u32::MAX), &[1, 2][..]));
        assert_eq!(split_batch(&pending, &[u32::MAX - 5]), (None, &pending[..]));
        assert_eq!(split_batch(&pending, &[3]), (Some(2), &[][..]));
    }
}
