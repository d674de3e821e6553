//! One bound NFQUEUE: receive packets, send verdicts.
//!
//! Invariants: the queue is bound only after the kernel acked the bind (and is
//! unbound on drop only then); verdicts are sent without NLM_F_ACK; a
//! `PacketMsg` payload is only meaningful until the next `recv`.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::config::QueueConfig;
use super::error::{ConfigStep, QueueError};
use super::inbox::{Inbox, Incoming, QueueCounters};
use super::netlink;
use super::packet::{PacketMsg, Verdict};
use super::socket::{NlSocket, Received};
use super::stats::kernel_queue_stats;

/// Room for a 64 KiB payload plus every metadata attribute the kernel adds.
const RECV_BUF_LEN: usize = 0x10000 + 8192;
/// How long `open` waits for the kernel to acknowledge its configuration.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest payload an attribute can carry (16-bit length including its header).
const MAX_PAYLOAD: usize = u16::MAX as usize - netlink::NLA_HDRLEN;

/// A bound queue owning its netlink socket and buffers.
pub struct Queue {
    sock: NlSocket,
    num: u16,
    inbox: Inbox,
    send_buf: Vec<u8>,
    bound: bool,
}

impl Queue {
    /// Open a socket in the calling thread's network namespace and bind queue `cfg.num`.
    pub fn open(cfg: &QueueConfig) -> Result<Queue, QueueError> {
        let sock = NlSocket::open()?;
        // Buffer first: packets may flood in the moment the bind is acked.
        sock.set_rcvbuf(cfg.rcvbuf_bytes)?;
        // Without CAP_NET_ADMIN the kernel silently caps the buffer at rmem_max.
        match sock.rcvbuf() {
            Ok(got) if got < cfg.rcvbuf_bytes => {
                tracing::warn!(
                    queue = cfg.num,
                    asked = cfg.rcvbuf_bytes,
                    got,
                    "NFQUEUE receive buffer capped"
                )
            }
            _ => {}
        }
        sock.set_recv_timeout(cfg.recv_timeout)?;
        let mut q = Queue {
            sock,
            num: cfg.num,
            inbox: Inbox::new(RECV_BUF_LEN),
            send_buf: Vec::with_capacity(256),
            bound: false,
        };
        q.configure(cfg)?;
        Ok(q)
    }

    /// Send bind, copy mode, max length and flags in one datagram (shortest window in
    /// which the kernel queues packets without copy mode), then collect one ack each.
    fn configure(&mut self, cfg: &QueueConfig) -> Result<(), QueueError> {
        let steps = [
            ConfigStep::Bind,
            ConfigStep::CopyMode,
            ConfigStep::MaxLen,
            ConfigStep::Flags,
        ];
        let mut flags = 0;
        if cfg.fail_open {
            flags |= netlink::NFQA_CFG_F_FAIL_OPEN;
        }
        if cfg.gso {
            flags |= netlink::NFQA_CFG_F_GSO;
        }
        let mask = netlink::NFQA_CFG_F_FAIL_OPEN | netlink::NFQA_CFG_F_GSO;
        let b = &mut self.send_buf;
        b.clear();
        netlink::config_cmd(b, 1, cfg.num, netlink::NFQNL_CFG_CMD_BIND, true);
        netlink::config_params(b, 2, cfg.num, cfg.copy_range);
        netlink::config_maxlen(b, 3, cfg.num, cfg.max_len, true);
        netlink::config_flags(b, 4, cfg.num, flags, mask);
        self.sock
            .send(&[IoSlice::new(&self.send_buf)])
            .map_err(|source| QueueError::Io {
                op: "send config",
                source,
            })?;
        self.await_acks(&steps)
    }

    /// Wait for acks with seq 1..=steps.len(); map the first error to its step.
    fn await_acks(&mut self, steps: &[ConfigStep]) -> Result<(), QueueError> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut acked = 0;
        while acked < steps.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let step = steps.get(acked).copied().unwrap_or(ConfigStep::Bind);
            if left.is_zero() {
                return Err(QueueError::NoAck {
                    queue: self.num,
                    step,
                });
            }
            let readable = self
                .sock
                .poll_readable(left)
                .map_err(|source| QueueError::Io { op: "poll", source })?;
            if !readable {
                continue;
            }
            let d = match self.sock.recv(self.inbox.recv_buf(), false) {
                // Not the kernel's: a forged ack must not pass for one.
                Ok(Received::Data(d)) if self.inbox.accept_sender(&d) => d,
                Ok(Received::Data(_) | Received::Empty) => continue,
                Ok(Received::Overrun) => {
                    self.inbox.counters.enobufs += 1;
                    continue;
                }
                Err(source) => return Err(QueueError::Io { op: "recv", source }),
            };
            let data = self.inbox.datagram(d.len);
            let mut off = 0;
            let mut other = false;
            while let Some((msg, next)) = netlink::next_msg(data, off) {
                off = next;
                let ack = (msg.msg_type == netlink::NLMSG_ERROR)
                    .then(|| netlink::error_of(data, &msg))
                    .flatten();
                match ack {
                    Some((errno, seq)) if (1..=steps.len() as u32).contains(&seq) => {
                        let step = steps
                            .get(seq as usize - 1)
                            .copied()
                            .unwrap_or(ConfigStep::Bind);
                        if errno != 0 {
                            return Err(self.config_error(step, errno));
                        }
                        if step == ConfigStep::Bind {
                            self.bound = true;
                        }
                        acked += 1;
                    }
                    _ => other = true,
                }
            }
            if other || d.cut {
                // A packet overtook an ack: keep it for the first recv, which also
                // answers one cut short.
                let copy = data.to_vec();
                self.inbox.stash(copy, d.cut);
            }
        }
        Ok(())
    }

    /// Map a config errno to an operator-facing error.
    fn config_error(&self, step: ConfigStep, errno: i32) -> QueueError {
        let queue = self.num;
        // The kernel answers EPERM both to the unprivileged and when another
        // socket owns the queue (EBUSY only when this socket bound it already):
        // the per-namespace queue table tells the two apart.
        let owner = || {
            kernel_queue_stats()
                .ok()
                .and_then(|v| {
                    v.into_iter()
                        .find(|s| s.queue == queue && s.portid != self.sock.portid())
                })
                .map(|s| s.portid)
        };
        match errno {
            libc::EBUSY => QueueError::QueueBusy {
                queue,
                portid: owner(),
            },
            libc::EPERM => match owner() {
                Some(portid) => QueueError::QueueBusy {
                    queue,
                    portid: Some(portid),
                },
                None => QueueError::PermissionDenied { queue },
            },
            _ => QueueError::Rejected {
                queue,
                step,
                source: io::Error::from_raw_os_error(errno),
            },
        }
    }

    /// Return the next packet; `None` on timeout, EAGAIN or EINTR. With `wait`
    /// false the socket is not blocked on, so a caller can drain a burst and
    /// then send one batch verdict. An [`Incoming::Unreadable`] packet still needs
    /// a verdict: answer it by id.
    pub fn recv(&mut self, wait: bool) -> Result<Option<Incoming>, QueueError> {
        loop {
            if let Some(p) = self.inbox.next(self.num) {
                return Ok(Some(p));
            }
            if self.inbox.load_stashed() {
                continue;
            }
            match self.sock.recv(self.inbox.recv_buf(), wait) {
                Ok(Received::Data(d)) => self.inbox.loaded(d),
                Ok(Received::Overrun) => self.inbox.counters.enobufs += 1,
                Ok(Received::Empty) => return Ok(None),
                Err(source) => return Err(QueueError::Io { op: "recv", source }),
            }
        }
    }

    /// Return a packet's payload (empty if `m` came from an earlier `recv`'s buffer
    /// that no longer covers its range).
    pub fn payload(&self, m: &PacketMsg) -> &[u8] {
        self.inbox.payload(m)
    }

    /// Send a verdict for packet `id`, replacing its content with `new_payload` if given.
    pub fn verdict(
        &mut self,
        id: u32,
        v: Verdict,
        new_payload: Option<&[u8]>,
    ) -> Result<(), QueueError> {
        self.verdict_marked(id, v, None, new_payload)
    }

    /// `verdict`, setting the packet's mark to `mark` if given.
    pub fn verdict_marked(
        &mut self,
        id: u32,
        v: Verdict,
        mark: Option<u32>,
        new_payload: Option<&[u8]>,
    ) -> Result<(), QueueError> {
        if new_payload.is_some_and(|p| p.len() > MAX_PAYLOAD) {
            return Err(payload_too_large());
        }
        self.send_buf.clear();
        netlink::verdict(
            &mut self.send_buf,
            (false, self.num),
            id,
            v.code(),
            mark,
            new_payload.map(<[u8]>::len),
        );
        send_with_payload(&self.sock, &self.send_buf, new_payload.unwrap_or(&[]))
    }

    /// Change how many packets the kernel holds for us. Not acknowledged, so no answer
    /// interleaves with packets; a refusal arrives as an error message (`nl_errors`).
    pub fn set_max_len(&mut self, max_len: u32) -> Result<(), QueueError> {
        self.send_buf.clear();
        netlink::config_maxlen(&mut self.send_buf, 0, self.num, max_len, false);
        send_with_payload(&self.sock, &self.send_buf, &[])
    }

    /// Apply `v` to every queued packet with id <= `max_id` (NFQNL_MSG_VERDICT_BATCH).
    pub fn verdict_batch(&mut self, max_id: u32, v: Verdict) -> Result<(), QueueError> {
        self.send_buf.clear();
        let header = (true, self.num);
        netlink::verdict(&mut self.send_buf, header, max_id, v.code(), None, None);
        send_with_payload(&self.sock, &self.send_buf, &[])
    }

    /// Return how often the socket overflowed (ENOBUFS) so far.
    pub fn enobufs(&self) -> u64 {
        self.inbox.counters.enobufs
    }

    /// Return every receive-path counter.
    pub fn counters(&self) -> QueueCounters {
        self.inbox.counters
    }

    /// Return the queue number.
    pub fn num(&self) -> u16 {
        self.num
    }

    /// Return our netlink portid (the `portid` column of the kernel queue table).
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Return the receive buffer the kernel granted, in bytes.
    pub fn rcvbuf_bytes(&self) -> io::Result<usize> {
        self.sock.rcvbuf()
    }

    /// Set the socket's receive buffer once bound (tests: a socket that overflows; the
    /// binding's own acks need room while it is set up).
    #[cfg(test)]
    pub fn set_rcvbuf_bytes(&self, bytes: usize) -> Result<(), QueueError> {
        self.sock.set_rcvbuf(bytes)
    }

    /// Return the socket descriptor for epoll; it stays owned by the queue.
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.raw_fd()
    }
}

impl Drop for Queue {
    /// Unbind the queue (best effort: closing the socket unbinds it as well).
    fn drop(&mut self) {
        if self.bound {
            self.send_buf.clear();
            netlink::config_cmd(
                &mut self.send_buf,
                0,
                self.num,
                netlink::NFQNL_CFG_CMD_UNBIND,
                false,
            );
            let _ = self.sock.send(&[IoSlice::new(&self.send_buf)]);
        }
    }
}

/// Send `head` followed by `payload` and its alignment padding as one datagram.
fn send_with_payload(sock: &NlSocket, head: &[u8], payload: &[u8]) -> Result<(), QueueError> {
    const PAD: [u8; 3] = [0; 3];
    let pad = netlink::align4(payload.len()) - payload.len();
    let parts = [
        IoSlice::new(head),
        IoSlice::new(payload),
        IoSlice::new(&PAD[..pad]),
    ];
    let n = if payload.is_empty() { 1 } else { 3 };
    sock.send(&parts[..n]).map_err(|source| QueueError::Io {
        op: "send verdict",
        source,
    })
}

fn payload_too_large() -> QueueError {
    QueueError::Io {
        op: "verdict",
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "payload longer than 65531 bytes",
        ),
    }
}
