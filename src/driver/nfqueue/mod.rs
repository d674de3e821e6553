//! Our own NFQUEUE binding: nfnetlink_queue over a raw `NETLINK_NETFILTER` socket.
//!
//! A [`Queue`] binds one queue number in the network namespace of the thread that
//! opens it, receives one [`Incoming`] packet per `recv`, and answers with per-packet
//! or batch verdicts. Invariants: nothing here panics on kernel data (every
//! length is checked), only the kernel's datagrams are read, a packet message
//! that cannot be read whole is still handed out by id when its id can be read (a
//! batch verdict would otherwise accept it), the hot path sends verdicts without
//! acks (a rejected verdict comes back as an NLMSG_ERROR and is counted in
//! [`QueueCounters`]), and the queue is unbound when the `Queue` is dropped.

mod config;
mod error;
mod inbox;
mod netlink;
mod packet;
mod queue;
mod socket;
mod stats;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
pub(crate) mod testns;
#[cfg(test)]
mod unit_tests;

pub use config::{COPY_FULL, DEFAULT_MAX_LEN, DEFAULT_RCVBUF_BYTES, QueueConfig};
pub use error::{ConfigStep, QueueError};
pub use inbox::{Incoming, QueueCounters, Unreadable};
pub use packet::{PacketMsg, SKB_CSUM_NOTVERIFIED, SKB_CSUMNOTREADY, SKB_GSO, Verdict};
pub use queue::Queue;
pub use stats::{KernelQueueStats, kernel_queue_stats, parse_kernel_queue_stats};
