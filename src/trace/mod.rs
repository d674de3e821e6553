//! Packet-journey tracing: the stages each traced packet walks through, with nanosecond
//! timestamps, in the layout of the kernel-tracing thesis (`../shared/seeds/003`).
//!
//! The pipeline is handed a [`Trace`] and reports where each stage begins (B) and ends
//! (E). With tracing off it is [`NoTrace`], whose calls are empty and inlined, so the
//! compiler removes them. With tracing on it is the worker's [`Tracer`]: it keeps one
//! packet's edges in a fixed array and, once the packet's verdict has left, hands the
//! whole packet to the writer thread through a bounded channel. When the channel is
//! full, that packet's records are dropped and counted, never the packet; the packet
//! path never waits for I/O.
//!
//! Files: `record` (what one traced packet holds, and its line in the raw trace),
//! `tracer` (the worker's side), `writer` (the thread that writes the raw trace),
//! `filter` (which packets are traced), `format` (`mpolice trace format`), `pcap`
//! (the packets as received and as returned, for tcpdump), `compare` (`mpolice trace
//! compare`, against a capture), `kernel` (nftables' own trace events, the kernel's side
//! of the journey).

mod compare;
mod filter;
mod format;
mod journey;
mod kernel;
pub mod pcap;
mod record;
mod tracer;
mod writer;

pub use compare::{Comparison, Traced, compare};
pub use filter::Filter;
pub use format::{Output, Summary, format};
pub use kernel::{KernelEvent, KernelListener, KernelTally, KernelTraceCounters};
pub use record::{Edge, Head, PacketTrace, RawPacket};
pub use tracer::{Clock, TraceCounters, Tracer};
pub use writer::{Record, TraceWriter, pcap_paths};

use crate::labels::labelled_enum;
use crate::wire::Parsed;

labelled_enum! {
    /// A stage a packet walks through, from the queue to its verdict. `Packet` spans
    /// them all; `Process` spans the pipeline's.
    pub enum Stage {
        /// From the receive call's return to the verdict's departure.
        Packet => "packet",
        /// The packet is taken from the queue's message into the worker's buffer.
        Receive => "receive",
        /// The pipeline, from bytes to decision.
        Process => "process",
        Parse => "parse",
        Classify => "classify",
        /// A new connection's SYN meets its port's accept quotas and forwarding rule.
        Forward => "forward",
        /// Content rules: a connection the engine answered is held, opened or translated.
        Splice => "splice",
        /// The mbox's per-sender police.
        Police => "police",
        /// The mbox stamps a capability (or clears a client's marker).
        Stamp => "stamp",
        /// The victim or the mbox takes a capability trailer off.
        Strip => "strip",
        /// The victim appends feedback, or the mbox checks what came back.
        Feedback => "feedback",
        /// The victim lowers the MSS option of a SYN.
        Clamp => "clamp",
        /// Tunnel mode: wrapped or unwrapped.
        Tunnel => "tunnel",
        /// Checksums filled in whole (the kernel left them to be offloaded).
        Checksum => "checksum",
        /// One segment the kernel cut from a routed super-packet is rewritten.
        Segment => "segment",
        /// From the decision to the verdict call's return (for packets accepted in a
        /// batch, the batch verdict's).
        Verdict => "verdict",
    }
}

/// Where the pipeline reports its stages. Passed by value through every stage:
/// `NoTrace` is zero-sized, so with tracing off neither the calls nor the argument cost
/// anything (a `&mut NoTrace` would still be a pointer passed down each call, and cost
/// 3 to 4 % in instructions per packet). The worker's tracer is a `&RefCell<Tracer>`.
pub trait Trace: Copy {
    /// Stage `s` begins.
    fn begin(self, s: Stage);
    /// Stage `s` ends.
    fn end(self, s: Stage);
    /// The packet's headers as parsed: who it is (addresses, ports, flags, sequence),
    /// and whether the filter wants it.
    fn headers(self, buf: &[u8], p: &Parsed);
}

/// Tracing off: every call is empty.
#[derive(Debug, Clone, Copy)]
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn begin(self, _: Stage) {}
    #[inline(always)]
    fn end(self, _: Stage) {}
    #[inline(always)]
    fn headers(self, _: &[u8], _: &Parsed) {}
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
