//! The receive buffer: hands out the messages of each datagram one at a time.
//!
//! Invariants: `pending` is the not yet parsed part of the datagram in `buf`, so
//! several messages in one datagram come out one per call; `backlog` holds
//! datagrams stashed while `Queue::open` waited for acks and is loaded before the
//! socket is read again; a `PacketMsg` payload range is only meaningful until
//! the next datagram is loaded.

use std::collections::VecDeque;
use std::ops::Range;

use super::netlink::{self, NlMsg};
use super::packet::{PacketMsg, parse_packet};

/// Things the receive path survived, for operators and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    /// Socket overruns (ENOBUFS): the kernel dropped messages for us.
    pub enobufs: u64,
    /// Datagrams larger than the receive buffer, discarded.
    pub truncated: u64,
    /// Messages or datagram tails that did not parse, skipped.
    pub malformed: u64,
    /// NLMSG_ERROR answers with a non-zero error (e.g. a rejected verdict).
    pub nl_errors: u64,
    /// Errno of the latest such answer (0 if none).
    pub last_nl_errno: i32,
}

/// Datagram buffer plus parse position.
pub struct Inbox {
    buf: Vec<u8>,
    pending: Range<usize>,
    backlog: VecDeque<Vec<u8>>,
    pub counters: QueueCounters,
}

impl Inbox {
    /// Create an inbox holding datagrams of up to `len` bytes.
    pub fn new(len: usize) -> Self {
        Inbox {
            buf: vec![0; len],
            pending: 0..0,
            backlog: VecDeque::new(),
            counters: QueueCounters::default(),
        }
    }

    /// Return the whole buffer for the socket to fill; follow with `loaded`.
    pub fn recv_buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Mark the first `len` bytes of the buffer as a fresh datagram.
    pub fn loaded(&mut self, len: usize) {
        self.pending = 0..len.min(self.buf.len());
    }

    /// Return the first `len` bytes of the buffer (a datagram just received).
    pub fn datagram(&self, len: usize) -> &[u8] {
        self.buf.get(..len).unwrap_or(&[])
    }

    /// Keep a copy of a datagram to hand out after the current one.
    pub fn stash(&mut self, datagram: Vec<u8>) {
        self.backlog.push_back(datagram);
    }

    /// Load the oldest stashed datagram; false when there is none.
    pub fn load_stashed(&mut self) -> bool {
        let Some(d) = self.backlog.pop_front() else {
            return false;
        };
        let n = d.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&d[..n]);
        self.loaded(n);
        true
    }

    /// Return the next packet of the current datagram, counting errors on the way.
    pub fn next_packet(&mut self, queue: u16) -> Option<PacketMsg> {
        let data = self.buf.get(..self.pending.end).unwrap_or(&[]);
        while let Some((msg, next)) = netlink::next_msg(data, self.pending.start) {
            self.pending.start = next;
            if let Some(p) = handle(data, msg, &mut self.counters, queue) {
                return Some(p);
            }
        }
        if self.pending.start < self.pending.end {
            self.counters.malformed += 1; // a tail too short or lying about its length
        }
        self.pending = 0..0;
        None
    }

    /// Return a packet's payload (empty if its range is outside the buffer).
    pub fn payload(&self, m: &PacketMsg) -> &[u8] {
        self.buf.get(m.payload.clone()).unwrap_or(&[])
    }
}

/// Interpret one message of `data`; return it if it is a packet.
fn handle(data: &[u8], msg: NlMsg, counters: &mut QueueCounters, queue: u16) -> Option<PacketMsg> {
    match msg.msg_type {
        netlink::NFQNL_MSG_PACKET => {
            let p = parse_packet(data, msg.body);
            if p.is_none() {
                counters.malformed += 1;
            }
            p
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
