//! The per-packet core: one packet walks `Pipeline::process` from bytes to verdict.
//!
//! parse → classify → (role stages) → verdict. Pure: no sockets, no clock, no globals;
//! the driver hands in the buffer and the time. An error in any stage becomes a counted
//! verdict here, in one place.

mod classify;
mod verdict;

use std::time::Instant;

pub use classify::{Direction, direction};
pub use verdict::{Reason, Verdict};

use crate::config::MalformedVerdict;
use crate::driver::nft::{Role, Selection};
use crate::stats::QueueCounters;
use crate::wire;

/// Queue metadata the driver passes with each packet.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacketMeta {
    /// Netfilter hook the packet was queued from.
    pub hook: u8,
    /// Ifindex of the input device, 0 if none.
    pub indev: u32,
    /// Ifindex of the output device, 0 if none.
    pub outdev: u32,
    /// The kernel copied only part of the packet (copy range), so it can be neither
    /// parsed whole nor rewritten.
    pub truncated: bool,
}

/// One role's processing, owned by one queue worker.
#[derive(Debug)]
pub struct Pipeline {
    role: Role,
    selection: Selection,
    malformed: MalformedVerdict,
}

impl Pipeline {
    /// Build the pipeline of a role.
    pub fn new(role: Role, selection: Selection, malformed: MalformedVerdict) -> Self {
        Pipeline {
            role,
            selection,
            malformed,
        }
    }

    /// The role this pipeline plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Decide the fate of the packet in `buf`, rewriting it in place if needed.
    ///
    /// `buf` is a `Vec` because a rewrite may grow the packet (a capability trailer).
    #[allow(clippy::ptr_arg)]
    pub fn process(&mut self, meta: &PacketMeta, buf: &mut Vec<u8>, _now: Instant) -> Verdict {
        if meta.truncated {
            return self.unparsable(Reason::TruncatedCopy);
        }
        let parsed = match wire::parse(buf) {
            Ok(p) => p,
            Err(e) => return self.unparsable(Reason::Malformed(e)),
        };
        match direction(&self.selection, &parsed) {
            // Both roles pass traffic through unchanged until capabilities land.
            Some(Direction::ToProtected | Direction::FromProtected) => Verdict::Accept,
            None => Verdict::Pass(Reason::Unselected),
        }
    }
}

impl Pipeline {
    /// Apply the configured verdict to a packet the pipeline cannot read.
    fn unparsable(&self, why: Reason) -> Verdict {
        match self.malformed {
            MalformedVerdict::Drop => Verdict::Drop(why),
            MalformedVerdict::Accept => Verdict::Pass(why),
        }
    }
}

/// Count a verdict in a queue's counters.
pub fn count(c: &mut QueueCounters, v: &Verdict) {
    match v {
        Verdict::Accept => c.accepted += 1,
        Verdict::AcceptModified => c.modified += 1,
        Verdict::Pass(r) => {
            c.accepted += 1;
            count_reason(c, r);
        }
        Verdict::Drop(r) => {
            c.dropped += 1;
            count_reason(c, r);
        }
    }
}

fn count_reason(c: &mut QueueCounters, r: &Reason) {
    if let Reason::Malformed(_) | Reason::TruncatedCopy = r {
        c.malformed += 1;
    }
    c.count_reason(r.as_str());
}

#[cfg(test)]
mod tests;
