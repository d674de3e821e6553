//! The per-packet core: one packet walks `Pipeline::process` from bytes to verdict.
//!
//! parse → classify → forward (a new connection's port) → role stages (mbox: stamp | strip and check feedback | scrub
//! capabilities from ICMP quotes; victim: bypass filter, strip, clamp MSS | clamp MSS,
//! return feedback) → verdict. Pure: no
//! sockets, no clock, no globals; the driver hands in the buffer and the time. An error
//! in any stage becomes a counted verdict here, in one place.

mod classify;
mod mbox;
mod quote;
mod segments;
mod verdict;
mod victim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use classify::{Direction, direction};
pub use mbox::Mbox;
use segments::TrailerSink;
pub use segments::{Segments, Trailer};
pub use verdict::{Reason, Verdict};
pub use victim::{Victim, mss_with_room};

use crate::capability::{CapError, KeyReader, Marker, tunnel};
use crate::config::MalformedVerdict;
use crate::driver::nft::Selection;
use crate::police::{Figures, PoliceReport, System};
use crate::ports::{
    Action, Admit, Forwarded, Forwarder, FtpCounts, FtpData, Groups, Policies, PortMeter,
    REFUSE_MARK, SpliceCounts, Splicer, Step,
};
use crate::stats::{CapCounters, QueueCounters};
use crate::trace::{NoTrace, Stage, Trace};
use crate::wire::{self, Parsed, tcp};

/// Whether a stage rewrote the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Unchanged,
    Changed,
}

impl Edit {
    /// Changed if either is.
    fn or(self, other: Edit) -> Edit {
        if self == Edit::Changed { self } else { other }
    }
}

/// A role's capability stages.
// One per worker, built once: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Stages {
    Mbox(Mbox),
    Victim(Victim),
}

/// Netfilter's number for the forward hook (`NF_INET_FORWARD`), as `PacketMeta::hook`.
pub const HOOK_FORWARD: u8 = 2;

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
    /// A GSO super-packet (hybrid path): it stands for several wire packets, and must
    /// not be rewritten here (see `segments`).
    pub gso: bool,
    /// Its checksum is not filled in yet (offloaded): a rewrite must compute it whole.
    pub csum_partial: bool,
    /// The packet's id in its queue, if the pipeline may hold it there (not for the
    /// hybrid path's segments).
    pub id: Option<u32>,
    /// Hybrid path: the kernel copied only this many bytes (its copy range), and the
    /// driver padded the buffer to the packet's length. Headers within the copy are
    /// read as usual; a packet to rewrite is routed, and one that needs its payload
    /// (a trailer to strip, a quote to scrub) is read whole from the precise queue.
    pub copied: Option<usize>,
}

/// A datagram a stage asks the driver to send: the victim's feedback in tunnel mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// One role's processing, owned by one queue worker.
pub struct Pipeline {
    selection: Selection,
    malformed: MalformedVerdict,
    /// None: pass protected traffic through unchanged (no capabilities configured).
    stages: Option<Stages>,
    caps: CapCounters,
    /// Datagrams the stages produced, for the driver to send after the verdict.
    outbox: Vec<Datagram>,
    /// The trailer of the last super-packet routed, for its first segment.
    deferred: Option<Trailer>,
    /// victim: the port forwarding rules (None: no rules).
    forward: Option<Forwarder>,
    /// The mark the last packet's verdict carries (a forwarded SYN's).
    mark: Option<u32>,
    /// Per-port statistics (None: off).
    meter: Option<PortMeter>,
    /// victim: the traffic groups' quotas, shared by every worker (None: no groups).
    groups: Option<Arc<Groups>>,
    /// victim: the content rules' connections (with port policies on).
    splicer: Option<Splicer>,
    /// victim: the FTP output groups' data connections (with port policies on).
    ftp: Option<FtpData>,
}

impl Pipeline {
    /// Build a pipeline; without `stages` it only parses, classifies and counts.
    pub fn new(selection: Selection, malformed: MalformedVerdict, stages: Option<Stages>) -> Self {
        Pipeline {
            selection,
            malformed,
            stages,
            caps: CapCounters::default(),
            outbox: Vec::new(),
            deferred: None,
            forward: None,
            mark: None,
            meter: None,
            groups: None,
            splicer: None,
            ftp: None,
        }
    }

    /// Port policies: per-port statistics, forwarding by `policies` (its dice started
    /// at `seed`), and the groups' quotas.
    pub fn with_port_policies(mut self, policies: &Policies, seed: u64) -> Self {
        self.meter = Some(PortMeter::default());
        self.forward = Some(Forwarder::new(Vec::new(), seed));
        // Its own stream of draws: sequence numbers must not follow the dice.
        self.splicer = Some(Splicer::new(seed.rotate_left(32) ^ 0x5350_4c49_4345));
        self.ftp = Some(FtpData::default());
        self.set_port_policies(policies);
        self
    }

    /// Take the port policies now in force (with port policies on only).
    pub fn set_port_policies(&mut self, policies: &Policies) {
        if let Some(f) = self.forward.as_mut() {
            f.set_rules(policies.forward.clone());
            self.groups = (!policies.groups.is_empty()).then(|| Arc::clone(&policies.groups));
        }
    }

    /// Take what changes live of the config a reload put in force: the protected
    /// selection, the police (mbox), the feedback limits (victim). Every sender's and
    /// connection's state stays.
    pub fn reconfigure(&mut self, cfg: &crate::config::Config) {
        self.selection.clone_from(&cfg.protect);
        match (self.stages.as_mut(), &cfg.capabilities) {
            (Some(Stages::Mbox(m)), _) => m.set_police(&cfg.police),
            (Some(Stages::Victim(v)), Some(caps)) => v.set_feedback(caps),
            _ => {}
        }
    }

    /// The per-port statistics (None: off).
    pub fn port_meter(&self) -> Option<&PortMeter> {
        self.meter.as_ref()
    }

    /// The mark the last packet's verdict must carry, if any (taken once).
    pub fn take_mark(&mut self) -> Option<u32> {
        self.mark.take()
    }

    /// What the content rules' connections need of the driver: packets to send, held
    /// packets to release (in order).
    pub fn take_splice_actions(&mut self) -> Vec<Action> {
        self.splicer
            .as_mut()
            .map_or_else(Vec::new, |s| s.take_actions().collect())
    }

    /// What the content rules' connections counted (None: port policies off).
    pub fn splice_counts(&self) -> Option<SpliceCounts> {
        self.splicer.as_ref().map(Splicer::counts)
    }

    /// What the FTP output groups' data connections counted (None: port policies off).
    pub fn ftp_counts(&self) -> Option<FtpCounts> {
        self.ftp.as_ref().map(FtpData::counts)
    }

    /// What the forwarding rules counted (empty without rules).
    pub fn forwarded(&self) -> &[Forwarded] {
        self.forward.as_ref().map_or(&[], |f| f.counts())
    }

    /// Close the periods due by `now` and report this worker's figures for the
    /// system-wide view (None: nothing here is policed).
    pub fn on_timer(&mut self, now: Instant) -> Option<Figures> {
        if let Some(m) = self.meter.as_mut() {
            m.expire(now);
        }
        if let (Some(s), Some(f)) = (self.splicer.as_mut(), self.forward.as_mut()) {
            s.expire(f, now);
        }
        if let Some(f) = self.ftp.as_mut() {
            f.expire(now);
        }
        match self.stages.as_mut()? {
            Stages::Mbox(m) => Some(m.on_timer(now, &mut self.caps)),
            Stages::Victim(_) => None,
        }
    }

    /// Police by the system-wide view merged from every worker's figures.
    pub fn set_system(&mut self, system: System) {
        if let Some(Stages::Mbox(m)) = self.stages.as_mut() {
            m.set_system(system);
        }
    }

    /// mbox: whether a sender became verified or left the table verified since the
    /// changes were last taken.
    pub fn verified_changed(&self) -> bool {
        matches!(&self.stages, Some(Stages::Mbox(m)) if m.verified_changed())
    }

    /// mbox: the senders that became verified (true) or left the table verified (false)
    /// since the last call, in order (empty for the victim).
    pub fn take_verified_changes(&mut self) -> Vec<(std::net::IpAddr, bool)> {
        match self.stages.as_mut() {
            Some(Stages::Mbox(m)) => m.take_verified_changes(),
            _ => Vec::new(),
        }
    }

    /// victim: withhold feedback from the senders in `prefixes` (and no others).
    pub fn set_withheld(&mut self, prefixes: Vec<crate::driver::nft::Prefix>) {
        if let Some(Stages::Victim(v)) = self.stages.as_mut() {
            v.set_withheld(prefixes, &mut self.caps);
        }
    }

    /// The police's view and its `limit` most active senders (None: no policing here).
    pub fn police_report(&self, limit: usize) -> Option<PoliceReport> {
        match self.stages.as_ref()? {
            Stages::Mbox(m) => Some(m.police_report(limit)),
            Stages::Victim(_) => None,
        }
    }

    /// Take the datagrams the last packets produced (send them, in order).
    pub fn datagrams(&mut self) -> std::vec::Drain<'_, Datagram> {
        self.outbox.drain(..)
    }

    /// What to do with a packet that cannot be read: `Drop` when the role fails closed.
    pub fn malformed(&self) -> MalformedVerdict {
        self.malformed
    }

    /// What the capability stages counted so far.
    pub fn cap_counters(&self) -> &CapCounters {
        &self.caps
    }

    /// Decide the fate of the packet in `buf`, rewriting it in place if needed.
    ///
    /// `buf` is a `Vec` because a rewrite may grow the packet (a capability trailer).
    #[allow(clippy::ptr_arg)]
    pub fn process(&mut self, meta: &PacketMeta, buf: &mut Vec<u8>, now: Instant) -> Verdict {
        self.decide(meta, buf, now, NoTrace)
    }

    /// `process`, reporting its stages to `t`.
    #[allow(clippy::ptr_arg)]
    pub fn process_traced<T: Trace>(
        &mut self,
        meta: &PacketMeta,
        buf: &mut Vec<u8>,
        now: Instant,
        t: T,
    ) -> Verdict {
        t.begin(Stage::Process);
        let v = self.decide(meta, buf, now, t);
        t.end(Stage::Process);
        v
    }

    /// The port policies of a packet of protected traffic (`len` bytes): a new
    /// connection's SYN meets its port's accept quotas (past one: held back, or marked to
    /// be refused) and forwarding rule (marked with its port); a segment sent meets its
    /// port's output quotas (a data connection's, its FTP control port's). Some(reason):
    /// drop it.
    fn port_policies<T: Trace>(
        &mut self,
        dir: Option<Direction>,
        parsed: &Parsed,
        buf: &[u8],
        now: Instant,
        t: T,
    ) -> Option<Reason> {
        if self.forward.is_none() && self.groups.is_none() {
            return None;
        }
        let tcp = parsed.tcp()?;
        match dir? {
            Direction::ToProtected if tcp.flags & (tcp::SYN | tcp::ACK) == tcp::SYN => {
                t.begin(Stage::Forward);
                let admit = self.groups.as_ref().map(|g| g.syn(tcp.dst_port, now));
                let held = match admit {
                    Some(Admit::Hold) => Some(Reason::AcceptHeld),
                    Some(Admit::Refuse) => {
                        self.mark = Some(REFUSE_MARK);
                        None
                    }
                    _ => {
                        if let Some(f) = self.forward.as_mut() {
                            self.mark = f.syn(parsed.src, tcp.dst_port);
                        }
                        None
                    }
                };
                t.end(Stage::Forward);
                held
            }
            Direction::FromProtected => {
                let payload = buf.len().saturating_sub(parsed.payload_offset);
                let groups = self.groups.as_ref()?;
                let mut port = tcp.src_port;
                if let (true, Some(ftp)) = (groups.any_ftp(), self.ftp.as_mut()) {
                    if groups.ftp_control(port) {
                        let sel = &self.selection;
                        let seen = |p: u16| sel.tcp_ports.iter().any(|r| r.contains(p));
                        ftp.reply((parsed.dst, port), parsed.payload(buf), seen, now);
                    } else if let Some(control) =
                        ftp.control_of(parsed.dst, (port, tcp.dst_port), now)
                    {
                        port = control;
                    }
                }
                let admit = groups.sent(port, payload, now);
                (admit == Admit::Hold).then_some(Reason::OutputHeld)
            }
            Direction::ToProtected => {
                let groups = self.groups.as_ref()?;
                if groups.ftp_control(tcp.dst_port) && parsed.payload_len > 0 {
                    let ftp = self.ftp.as_mut()?;
                    ftp.command((parsed.src, tcp.dst_port), parsed.payload(buf), now);
                }
                None
            }
        }
    }

    #[allow(clippy::ptr_arg)]
    fn decide<T: Trace>(
        &mut self,
        meta: &PacketMeta,
        buf: &mut Vec<u8>,
        now: Instant,
        t: T,
    ) -> Verdict {
        self.deferred = None;
        self.mark = None;
        // A super-packet too long to copy whole (over 65,531 bytes) or with lengths only
        // its segments carry (BIG TCP): each of its segments is run through instead.
        if meta.gso && meta.truncated {
            return Verdict::Route(Segments::Process);
        }
        if meta.truncated {
            return self.unparsable(Reason::TruncatedCopy);
        }
        t.begin(Stage::Parse);
        let parsed = match wire::parse(buf) {
            Ok(p) => p,
            // Headers the copy range cut may look broken that are not: read it whole.
            Err(_) if meta.gso || meta.copied.is_some_and(|n| n < longest_headers(buf)) => {
                t.end(Stage::Parse);
                return Verdict::Route(Segments::Process);
            }
            Err(e) => {
                t.end(Stage::Parse);
                return self.unparsable(Reason::Malformed(e));
            }
        };
        t.end(Stage::Parse);
        t.headers(buf, &parsed);
        t.begin(Stage::Classify);
        let dir = direction(&self.selection, &parsed);
        t.end(Stage::Classify);
        if let (Some(m), Some(d)) = (self.meter.as_mut(), dir) {
            m.packet(d, &parsed, buf.len(), now);
        }
        if let Some(held) = self.port_policies(dir, &parsed, buf, now, t) {
            return Verdict::Drop(held);
        }
        let spliced = self
            .splicer
            .as_ref()
            .is_some_and(|s| !s.is_empty() && s.holds(&parsed));
        // A joined connection's packets are translated one by one, whole.
        if spliced && (meta.gso || meta.copied.is_some()) {
            return Verdict::Route(Segments::Process);
        }
        // The server's side is translated before the role's stages see it (its SYN-ACK
        // never reaches them).
        let mut splice_edit = Edit::Unchanged;
        if let (true, Some(Direction::FromProtected), Some(s)) =
            (spliced, dir, self.splicer.as_mut())
        {
            t.begin(Stage::Splice);
            let step = s.outbound(buf, &parsed, now);
            t.end(Stage::Splice);
            match step {
                Step::Drop(why) => return Verdict::Drop(why),
                Step::Edited => splice_edit = Edit::Changed,
                _ => {}
            }
        }
        let parsed = match splice_edit {
            Edit::Changed => match wire::parse(buf) {
                Ok(p) => p,
                Err(e) => return Verdict::Drop(Reason::Malformed(e)),
            },
            Edit::Unchanged => parsed,
        };
        if meta.gso && carries_trailer_to_strip(&self.stages, dir, buf, &parsed) {
            // Stamped and fed-back segments are never merged: only hardware LRO or a
            // sender that marks its own TSO packets makes one, and its trailer, if any,
            // lies in the last segment alone. Fail closed rather than strip blind.
            return Verdict::Drop(Reason::MarkedSuperPacket);
        }
        if let Some(n) = meta.copied {
            // Only TCP and UDP headers are read from a partial copy; anything past the
            // copy (long headers, an ICMP quote, a trailer to strip) is read whole.
            let readable = parsed.payload_offset <= n
                && matches!(parsed.protocol, wire::proto::TCP | wire::proto::UDP);
            if !readable || carries_trailer_to_strip(&self.stages, dir, buf, &parsed) {
                return Verdict::Route(Segments::Process);
            }
        }
        let edit = match self.role_stages(meta, buf, (parsed, dir), now, t) {
            Ok(e) if dir == Some(Direction::ToProtected) => {
                self.splice_inbound(meta, buf, (parsed, e), now, t)
            }
            Ok(e) => Ok(e),
            Err(v) => return v,
        };
        let edit = match edit {
            Ok(e) => Ok(e.or(splice_edit)),
            Err(v) => return v,
        };
        let defer = meta.gso || meta.copied.is_some();
        match edit {
            Ok(Edit::Unchanged) => Verdict::Accept,
            // Rewritten only once the kernel has cut it (a trailer, cleared markers).
            Ok(Edit::Changed) if defer => Verdict::Route(Segments::Trailer),
            Ok(Edit::Changed) if meta.csum_partial => {
                // The kernel takes a rewritten packet's checksums as they are.
                t.begin(Stage::Checksum);
                let filled = wire::parse(buf).and_then(|p| wire::fill_checksums(buf, &p));
                t.end(Stage::Checksum);
                match filled {
                    Ok(()) => Verdict::AcceptModified,
                    Err(e) => Verdict::Drop(Reason::Malformed(e)),
                }
            }
            Ok(Edit::Changed) => Verdict::AcceptModified,
            Err(v) => v,
        }
    }

    /// The role's capability stages for a packet (none configured: protected traffic
    /// passes unchanged). Err: the packet's verdict, decided here.
    #[allow(clippy::ptr_arg)]
    fn role_stages<T: Trace>(
        &mut self,
        meta: &PacketMeta,
        buf: &mut Vec<u8>,
        (parsed, dir): (Parsed, Option<Direction>),
        now: Instant,
        t: T,
    ) -> Result<Edit, Verdict> {
        let Some(stages) = self.stages.as_mut() else {
            return match dir {
                Some(_) => Ok(Edit::Unchanged),
                None => Err(Verdict::Pass(Reason::Unselected)),
            };
        };
        let c = &mut self.caps;
        let defer = meta.gso || meta.copied.is_some();
        let mut sink = TrailerSink {
            gso: meta.gso,
            defer,
            deferred: &mut self.deferred,
        };
        let edit = match (stages, dir) {
            (Stages::Mbox(m), Some(Direction::ToProtected)) => {
                m.to_victim(buf, parsed, (now, true), &mut sink, c, t)
            }
            (Stages::Mbox(m), Some(Direction::FromProtected)) => {
                m.from_victim(buf, parsed, meta, now, c, t)
            }
            (Stages::Victim(v), Some(Direction::ToProtected)) => {
                v.inbound(buf, parsed, meta.indev, now, c, t)
            }
            (Stages::Victim(v), Some(Direction::FromProtected)) => v.outbound(
                buf,
                parsed,
                (meta.outdev, now),
                (&mut sink, &mut self.outbox),
                c,
                t,
            ),
            (Stages::Mbox(m), None) => {
                if let Some(consumed) = m.feedback_in(buf, &parsed, meta, now, c) {
                    return Err(Verdict::Drop(consumed));
                }
                if meta.hook == HOOK_FORWARD && classify::is_protected(&self.selection, parsed.dst)
                {
                    // Any other protocol or port to a protected address: policed too.
                    m.to_victim(buf, parsed, (now, false), &mut sink, c, t)
                } else {
                    match quote::scrub(buf, &parsed, c).or_else(|| m.redirect_in(buf, &parsed, c)) {
                        Some(edit) => edit,
                        None => return Err(Verdict::Pass(Reason::Unselected)),
                    }
                }
            }
            (Stages::Victim(v), None) => {
                t.begin(Stage::Tunnel);
                let inner = v.tunnel_in(buf, &parsed, (meta.indev, now), c);
                t.end(Stage::Tunnel);
                match inner {
                    // Only protected traffic to the tunnel's own destination may come out of
                    // it: anything else would turn the victim into a relay for spoofed sources.
                    Some(Ok(inner))
                        if inner.dst == parsed.dst
                            && direction(&self.selection, &inner)
                                == Some(Direction::ToProtected) =>
                    {
                        Ok(Edit::Changed)
                    }
                    Some(Ok(_)) => Err(Reason::TunnelNotProtected),
                    Some(Err(reason)) => Err(reason),
                    None => return Err(Verdict::Pass(Reason::Unselected)),
                }
            }
        };
        edit.map_err(Verdict::Drop)
    }

    /// A packet to a protected port, past the role's stages (`edit`: what they did):
    /// the content rules' step. Err: the packet's verdict (held, or dropped).
    #[allow(clippy::ptr_arg)]
    fn splice_inbound<T: Trace>(
        &mut self,
        meta: &PacketMeta,
        buf: &mut Vec<u8>,
        (parsed, edit): (Parsed, Edit),
        now: Instant,
        t: T,
    ) -> Result<Edit, Verdict> {
        let (Some(s), Some(f)) = (self.splicer.as_mut(), self.forward.as_mut()) else {
            return Ok(edit);
        };
        // Without content rules or connections held, nothing here (no per-packet parse).
        if s.is_empty() && !f.examines_any() {
            return Ok(edit);
        }
        // Only a connection it holds, or a SYN to a content rule's port, is its concern;
        // `parsed` still describes the buffer unless a stage rewrote it.
        let parsed = match edit {
            Edit::Unchanged => parsed,
            Edit::Changed => match wire::parse(buf) {
                Ok(p) => p,
                Err(_) => return Ok(edit),
            },
        };
        let Some(tcp) = parsed.tcp() else {
            return Ok(edit);
        };
        // A SYN its group refused (marked) is the kernel's to reset, not ours to answer.
        let new_examined =
            tcp.flags & tcp::SYN != 0 && self.mark.is_none() && f.examines(tcp.dst_port);
        if !new_examined && !s.holds(&parsed) {
            return Ok(edit);
        }
        let v6 = parsed.src.is_ipv6();
        let mtu = match &self.stages {
            Some(Stages::Victim(v)) => v.path_mtu(),
            _ => ETHERNET_MTU,
        };
        let mss = mss_with_room(v6, mtu, 0);
        t.begin(Stage::Splice);
        let step = s.inbound(f, (meta.id, mss), buf, &parsed, now);
        t.end(Stage::Splice);
        match step {
            Step::Pass => Ok(edit),
            Step::Edited => Ok(Edit::Changed),
            Step::Hold => Err(Verdict::Hold),
            Step::Forward(mark) => {
                self.mark = mark;
                Ok(edit)
            }
            Step::Drop(why) => Err(Verdict::Drop(why)),
        }
    }

    /// The wire packets and IP bytes the packet in `buf`, as queued, stands for: a
    /// super-packet counts the segments it will be cut into (an estimate, as the
    /// police's: its payload over the MSS the victim advertises).
    pub fn wire_size(&self, meta: &PacketMeta, buf: &[u8]) -> (u64, u64) {
        let bytes = buf.len() as u64;
        // On the hot path: only a super-packet is parsed here (and again by `process`).
        if !meta.gso {
            return (1, bytes);
        }
        let packets = wire::parse(buf).map_or(1, |p| {
            let v6 = p.src.is_ipv6();
            let mtu = self.path_mtu().unwrap_or(ETHERNET_MTU);
            let mss = mss_with_room(v6, mtu, crate::capability::wire_len(v6));
            segments::wire_packets(&p, true, mss)
        });
        (u64::from(packets), bytes)
    }

    /// The path MTU the role's rewrites must fit (None without capabilities).
    fn path_mtu(&self) -> Option<usize> {
        match &self.stages {
            Some(Stages::Mbox(m)) => Some(m.path_mtu()),
            Some(Stages::Victim(v)) => Some(v.path_mtu()),
            None => None,
        }
    }

    /// Rewrite one segment of the super-packet routed last (the `first` one the kernel
    /// cut from it takes its trailer): cleared markers, the trailer, whole checksums.
    #[allow(clippy::ptr_arg)]
    pub fn segment(&mut self, buf: &mut Vec<u8>, first: bool) -> Verdict {
        let max_len = self.path_mtu().unwrap_or(usize::MAX);
        let trailer = if first { self.deferred.take() } else { None };
        match segments::rewrite_segment(buf, first, trailer.as_ref(), max_len) {
            Ok((changed, too_big)) => {
                self.caps.too_big += u64::from(too_big);
                // A stamp that never went out is no loss: take it back.
                if let (true, Some(stamp), Some(Stages::Mbox(m))) =
                    (too_big, trailer.and_then(|t| t.stamp), self.stages.as_mut())
                {
                    m.withdraw(stamp, &mut self.caps);
                }
                if changed {
                    Verdict::AcceptModified
                } else {
                    Verdict::Accept
                }
            }
            Err(reason) => self.unparsable(reason),
        }
    }
}

/// Whether `p` is a packet whose trailer a stage would strip: one with a marker, to the
/// victim's inbound stage or the mbox's feedback check.
fn carries_trailer_to_strip(
    stages: &Option<Stages>,
    dir: Option<Direction>,
    buf: &[u8],
    p: &Parsed,
) -> bool {
    let strips = matches!(
        (stages, dir),
        (Some(Stages::Victim(_)), Some(Direction::ToProtected))
            | (Some(Stages::Mbox(_)), Some(Direction::FromProtected))
    );
    strips
        && p.protocol == wire::proto::TCP
        && Marker::from_reserved(wire::tcp_reserved(buf, p)) != Ok(Marker::None)
}

/// Clear the capability marker, keeping the AE bit.
fn clear_marker(buf: &mut [u8], p: &Parsed) -> Result<Parsed, Reason> {
    let bits = Marker::None.apply(wire::tcp_reserved(buf, p));
    wire::set_tcp_reserved(buf, p, bits).map_err(Reason::Malformed)
}

/// The body of the tunnel payload in `buf` if its header is of `kind` and its MAC checks
/// under `keys`; otherwise why the packet is dropped (a MAC's cause counted as refused).
fn open_tunnel<'a>(
    buf: &'a [u8],
    p: &Parsed,
    keys: &mut KeyReader,
    kind: tunnel::Kind,
    c: &mut CapCounters,
) -> Result<&'a [u8], Reason> {
    let Some((auth, body)) = wire::tunnel::auth_and_body(buf, p) else {
        c.count_rejected(CapError::Truncated);
        return Err(Reason::TunnelUnauthenticated);
    };
    match tunnel::open(auth, body, keys.ring()) {
        Ok(k) if k == kind => Ok(body),
        // A well-sealed payload of the other direction is nothing we take here.
        Ok(_) => Err(Reason::TunnelNotProtected),
        Err(e) => {
            c.count_rejected(e);
            Err(Reason::TunnelUnauthenticated)
        }
    }
}

/// The loopback device's ifindex, the same in every network namespace (the kernel's
/// `LOOPBACK_IFINDEX`).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Milliseconds from `epoch` to `t`, on the wrapping u32 clock capabilities carry.
fn ms_since(epoch: Instant, t: Instant) -> u32 {
    // Truncation is the point: capability times wrap every ~49 days.
    t.saturating_duration_since(epoch).as_millis() as u32
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

/// The most bytes a packet's IP and transport headers can take (unbounded over IPv6).
fn longest_headers(buf: &[u8]) -> usize {
    match buf.first().map(|b| b >> 4) {
        Some(4) => wire::LONGEST_V4_HEADERS,
        _ => usize::MAX,
    }
}

/// The MTU a super-packet is cut to without capabilities (no path MTU configured).
const ETHERNET_MTU: usize = 1500;

/// Count a verdict in a queue's counters, with the wire packets and bytes the packet
/// stood for (`Pipeline::wire_size`).
pub fn count(c: &mut QueueCounters, v: &Verdict, (packets, bytes): (u64, u64)) {
    c.wire_packets += packets;
    c.bytes += bytes;
    if let Verdict::Drop(_) = v {
        c.wire_dropped += packets;
    }
    match v {
        Verdict::Accept => c.accepted += 1,
        Verdict::Route(_) => c.routed += 1,
        Verdict::AcceptModified => c.modified += 1,
        Verdict::Pass(r) => {
            c.accepted += 1;
            count_reason(c, r);
        }
        Verdict::Drop(r) => {
            c.dropped += 1;
            count_reason(c, r);
        }
        // Counted when it is released.
        Verdict::Hold => c.held += 1,
    }
}

fn count_reason(c: &mut QueueCounters, r: &Reason) {
    if let Reason::Malformed(_) | Reason::TruncatedCopy = r {
        c.malformed += 1;
    }
    c.count_reason(*r);
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_caps;
