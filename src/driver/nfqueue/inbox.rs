//! The receive buffer: hands out the messages of each datagram one at a time.
//!
//! Invariants: `pending` is the not yet parsed part of the datagram in `buf`, so
//! several messages in one datagram come out one per call; `backlog` holds
//! datagrams stashed while `Queue::open` waited for acks and is loaded before the
//! socket is read again; a `PacketMsg` payload range is only meaningful until
//! the next datagram is loaded. Only datagrams from the kernel (port id 0) are
//! read. A packet message that cannot be read whole still yields its id whenever
//! that can be read, so the packet gets a verdict of our choosing: unanswered, the
//! next batch verdict would accept it.

use std::collections::VecDeque;
use std::ops::Range;

use super::netlink::{self, NLMSG_HDRLEN, NlMsg};
use super::packet::{PacketMsg, packet_id, parse_packet};
use super::socket::Datagram;

/// Things the receive path survived, for operators and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    /// Socket overruns (ENOBUFS): the kernel dropped messages for us.
    pub enobufs: u64,
    /// Datagrams larger than the receive buffer: their first message is read as far as
    /// it arrived, the rest is lost.
    pub truncated: u64,
    /// Messages or datagram tails that did not parse.
    pub malformed: u64,
    /// Truncated or malformed messages from which no packet id could be read: were one
    /// a packet, only a later batch verdict would answer it (see `unreadable`).
    pub no_id: u64,
    /// Datagrams from a sender other than the kernel, ignored.
    pub foreign: u64,
    /// NLMSG_ERROR answers with a non-zero error (e.g. a rejected verdict).
    pub nl_errors: u64,
    /// Errno of the latest such answer (0 if none).
    pub last_nl_errno: i32,
}

impl std::ops::Add for QueueCounters {
    type Output = QueueCounters;

    /// Two receive paths' counters together (a worker's fast and precise queues).
    fn add(self, o: QueueCounters) -> QueueCounters {
        QueueCounters {
            enobufs: self.enobufs + o.enobufs,
            truncated: self.truncated + o.truncated,
            malformed: self.malformed + o.malformed,
            no_id: self.no_id + o.no_id,
            foreign: self.foreign + o.foreign,
            nl_errors: self.nl_errors + o.nl_errors,
            last_nl_errno: if o.last_nl_errno != 0 {
                o.last_nl_errno
            } else {
                self.last_nl_errno
            },
        }
    }
}

/// What the queue hands out: a packet, or just the id of one that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Packet(PacketMsg),
    /// The packet still needs a verdict; only its id is known.
    Unreadable {
        id: u32,
        cause: Unreadable,
    },
}

/// Why a packet message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// It did not parse.
    Malformed,
    /// Its datagram was longer than our receive buffer.
    Truncated,
}

/// Datagram buffer plus parse position.
pub struct Inbox {
    buf: Vec<u8>,
    pending: Range<usize>,
    /// The datagram in `buf` was cut short by the buffer's size.
    cut: bool,
    backlog: VecDeque<(Vec<u8>, bool)>,
    pub counters: QueueCounters,
}

impl Inbox {
    /// Create an inbox holding datagrams of up to `len` bytes.
    pub fn new(len: usize) -> Self {
        Inbox {
            buf: vec![0; len],
            pending: 0..0,
            cut: false,
            backlog: VecDeque::new(),
            counters: QueueCounters::default(),
        }
    }

    /// Return the whole buffer for the socket to fill; follow with `loaded`.
    pub fn recv_buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Tell whether a datagram came from the kernel, the only sender we read; count it if not.
    pub fn accept_sender(&mut self, d: &Datagram) -> bool {
        if d.from != 0 {
            self.counters.foreign += 1;
            tracing::debug!(portid = d.from, "ignored a datagram not from the kernel");
        }
        d.from == 0
    }

    /// Take the datagram just received into the buffer, unless it is not the kernel's.
    pub fn loaded(&mut self, d: Datagram) {
        let ours = self.accept_sender(&d);
        self.pending = 0..if ours { d.len.min(self.buf.len()) } else { 0 };
        self.cut = ours && d.cut;
    }

    /// Return the first `len` bytes of the buffer (a datagram just received).
    pub fn datagram(&self, len: usize) -> &[u8] {
        self.buf.get(..len).unwrap_or(&[])
    }

    /// Keep a copy of a kernel datagram (`cut` if truncated) to hand out after the current one.
    pub fn stash(&mut self, datagram: Vec<u8>, cut: bool) {
        self.backlog.push_back((datagram, cut));
    }

    /// Load the oldest stashed datagram; false when there is none.
    pub fn load_stashed(&mut self) -> bool {
        let Some((d, cut)) = self.backlog.pop_front() else {
            return false;
        };
        let len = d.len().min(self.buf.len());
        self.buf[..len].copy_from_slice(&d[..len]);
        self.loaded(Datagram { len, from: 0, cut });
        true
    }

    /// Return the next packet of the current datagram, counting errors on the way.
    pub fn next(&mut self, queue: u16) -> Option<Incoming> {
        let data = self.buf.get(..self.pending.end).unwrap_or(&[]);
        while let Some((msg, next)) = netlink::next_msg(data, self.pending.start) {
            self.pending.start = next;
            if let Some(p) = handle(data, msg, &mut self.counters, queue) {
                return Some(p);
            }
        }
        // What is left is no whole message: the start of one our buffer cut short (the
        // kernel sends one packet per datagram, so it is the only one), or a length
        // field that lies.
        let tail = std::mem::replace(&mut self.pending, 0..0);
        let cause = if std::mem::take(&mut self.cut) {
            Unreadable::Truncated
        } else if tail.is_empty() {
            return None;
        } else {
            Unreadable::Malformed
        };
        unreadable(&mut self.counters, cause, tail_packet_id(data, tail.start))
    }

    /// Return a packet's payload (empty if its range is outside the buffer).
    pub fn payload(&self, m: &PacketMsg) -> &[u8] {
        self.buf.get(m.payload.clone()).unwrap_or(&[])
    }
}

/// Interpret one message of `data`; return it if it is a packet.
fn handle(data: &[u8], msg: NlMsg, counters: &mut QueueCounters, queue: u16) -> Option<Incoming> {
    match msg.msg_type {
        netlink::NFQNL_MSG_PACKET => {
            if let Some(p) = parse_packet(data, msg.body.clone()) {
                return Some(Incoming::Packet(p));
            }
            let id = packet_id(data, msg.body);
            unreadable(counters, Unreadable::Malformed, id)
        }
        netlink::NLMSG_ERROR => {
            match netlink::error_of(data, &msg) {
                Some((0, _)) => {} // a late ack
                Some((errno, seq)) => {
                    counters.nl_errors += 1;
                    counters.last_nl_errno = errno;
                    tracing::debug!(queue, errno, seq, "kernel rejected a request");
                }
                None => counters.malformed += 1,
            }
            None
        }
        _ => None, // NLMSG_NOOP, NLMSG_DONE, anything newer
    }
}

/// Count a message (or datagram tail) that cannot be read whole; hand out its packet
/// id if there is one.
fn unreadable(
    counters: &mut QueueCounters,
    cause: Unreadable,
    id: Option<u32>,
) -> Option<Incoming> {
    match cause {
        Unreadable::Truncated => counters.truncated += 1,
        Unreadable::Malformed => counters.malformed += 1,
    }
    // A packet message starts with its nlmsghdr, nfgenmsg and NFQA_PACKET_HDR (32
    // bytes), so with a receive buffer of 64 KiB and more only a message the kernel got
    // wrong has no readable id. Were one a packet, it would wait in the queue until a
    // later batch verdict covers its id and accepts it: with the id unknown, nothing can
    // keep it out of that batch. Counted, so it shows if it ever happens.
    if id.is_none() {
        counters.no_id += 1;
    }
    id.map(|id| Incoming::Unreadable { id, cause })
}

/// Read the packet id of a packet message at `off` that is not whole: its length field
/// promises more than `data` holds, so its body is read as far as it goes.
fn tail_packet_id(data: &[u8], off: usize) -> Option<u32> {
    let hdr = data.get(off..off.checked_add(NLMSG_HDRLEN)?)?;
    let msg_type = u16::from_ne_bytes([hdr[4], hdr[5]]);
    (msg_type == netlink::NFQNL_MSG_PACKET).then_some(())?;
    packet_id(data, off + NLMSG_HDRLEN..data.len())
}
