//! The mbox's stages: police each sender's packets to the protected addresses, stamp
//! capabilities on a sample of its TCP packets to the protected ports, and strip and
//! check the feedback on the victim's ACKs.
//!
//! Invariants: every ACK from the victim leaves without its feedback trailer and marker,
//! whatever the trailer holds; a returned capability is counted only if its MAC
//! verifies, it names the sender it came back for, it was issued in the sender's current
//! period and within Th_rtt, and its id was not counted before.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::segments::{IssuedStamp, TrailerSink, largest_wire_len, wire_packets};
use super::{
    Direction, Edit, PacketMeta, Reason, clear_marker, direction, ms_since, mss_with_room,
    open_tunnel,
};
use crate::capability::{
    CapError, Capability, KeyReader, MAX_WIRE_LEN, Marker, Refusal, Rejected, RunId, SharedKeys,
    feedback_len, split_feedback, tunnel, wire_len,
};
use crate::config::{CapSettings, PoliceSettings, RedirectPair, Tunnel};
use crate::driver::nft::Selection;
use crate::police::{Figures, PoliceReport, Policer, Stamp, System};
use crate::stats::CapCounters;
use crate::trace::{Stage, Trace};
use crate::wire::{self, Parsed, proto, tcp};

/// The mbox role's capability state, owned by one queue worker.
pub struct Mbox {
    keys: KeyReader,
    mbox_id: u16,
    path_mtu: usize,
    epoch: Instant,
    /// Redirect mode: client-facing addresses and the victims behind them.
    redirect: Vec<RedirectPair>,
    redirect_sel: Selection,
    /// Tunnel mode: where to, and the keys its MACs are made with.
    tunnel: Option<(Tunnel, KeyReader)>,
    /// Ifindexes of the links towards the protected servers: feedback counts only
    /// from them.
    victim_ifindexes: Vec<u32>,
    /// The senders: their windows, stamps and returned capabilities.
    police: Policer,
}

impl Mbox {
    /// Build the mbox stages from the validated settings and the loaded keys.
    ///
    /// `epoch` is the zero of the capability clock and `run` this process's id: every
    /// worker of one engine shares both (a capability may come back on any queue).
    /// Feedback is counted only from `victim_ifindexes`, the links towards the victims.
    /// Senders are policed by `police`.
    pub fn new(
        s: &CapSettings,
        police: &PoliceSettings,
        keys: &Arc<SharedKeys>,
        (epoch, run): (Instant, RunId),
        victim_ifindexes: Vec<u32>,
    ) -> Self {
        Mbox {
            keys: keys.reader(run),
            mbox_id: s.mbox_id,
            path_mtu: usize::from(s.path_mtu),
            epoch,
            police: Policer::new(s, police, epoch),
            redirect: Vec::new(),
            redirect_sel: Selection::default(),
            tunnel: None,
            victim_ifindexes,
        }
    }

    /// Redirect mode: clients address `listen`, and the mbox hands their packets to
    /// `to` and answers in `listen`'s name; `sel` holds the listen addresses and the
    /// protected ports.
    pub fn with_redirect(mut self, pairs: Vec<RedirectPair>, sel: Selection) -> Self {
        self.redirect = pairs;
        self.redirect_sel = sel;
        self
    }

    /// Rewrite a client's packet to a redirect address towards the victim behind it;
    /// None if the packet is not addressed to one.
    pub fn redirect_in(
        &mut self,
        buf: &mut [u8],
        p: &Parsed,
        c: &mut CapCounters,
    ) -> Option<Result<Edit, Reason>> {
        if direction(&self.redirect_sel, p) != Some(Direction::ToProtected) {
            return None;
        }
        let to = self.redirect.iter().find(|r| r.listen == p.dst)?.to;
        c.redirected += 1;
        // The route towards `to` is chosen after this hook (prerouting), so the packet
        // leaves for the victim; the forward hook then queues it again for stamping.
        Some(
            wire::set_dst_addr(buf, p, to)
                .map(|_| Edit::Changed)
                .map_err(Reason::Malformed),
        )
    }

    /// Tunnel mode: send every packet to the victim inside IP-in-UDP from `t`'s
    /// addresses, sealed with the tunnel keys, and count the feedback datagrams that
    /// come back to them.
    pub fn with_tunnel(mut self, t: Tunnel, keys: &Arc<SharedKeys>) -> Self {
        self.tunnel = Some((t, keys.reader(tunnel::TUNNEL_RUN)));
        self
    }

    /// Count the capabilities a feedback datagram of the victim returns; None if `p` is
    /// not addressed to our end of the tunnel. It is consumed either way (dropped).
    pub fn feedback_in(
        &mut self,
        buf: &[u8],
        p: &Parsed,
        meta: &PacketMeta,
        now: Instant,
        c: &mut CapCounters,
    ) -> Option<Reason> {
        let (t, keys) = self.tunnel.as_mut()?;
        if p.udp().is_none_or(|u| u.dst_port != t.port) || !t.addresses.contains(&p.dst) {
            return None;
        }
        if !self.victim_ifindexes.contains(&meta.indev) {
            c.count_rejected(Refusal::OffVictimLink);
            return Some(Reason::Bypassed);
        }
        let body = match open_tunnel(buf, p, keys, tunnel::Kind::Feedback, c) {
            Ok(body) => body,
            Err(why) => return Some(why),
        };
        let fb = match tunnel::Returned::decode(body) {
            Ok(fb) => fb,
            Err(e) => {
                c.count_rejected(e);
                return Some(Reason::FeedbackDatagram);
            }
        };
        if let Ok(caps) = split_feedback(fb.caps, fb.count, fb.server.is_ipv6()) {
            for bytes in caps {
                // The datagram does not say which segment it answered: taken as proof.
                match self.count_returned(bytes, (fb.server, fb.client), true, now) {
                    Ok(()) => c.returned += 1,
                    Err(reason) => c.count_rejected(reason),
                }
            }
        }
        Some(Reason::FeedbackDatagram)
    }

    /// Police a client's packet to a protected address and, if it passes, stamp it if
    /// its sample calls for it and in tunnel mode wrap it for the victim. `on_port`: it
    /// is for a protected port (only TCP there can carry a capability; the rest is
    /// best-effort, and in tunnel mode goes unwrapped, since the victim unwraps only
    /// protected ports).
    pub fn to_victim(
        &mut self,
        buf: &mut Vec<u8>,
        mut p: Parsed,
        (now, on_port): (Instant, bool),
        sink: &mut TrailerSink,
        c: &mut CapCounters,
        t: impl Trace,
    ) -> Result<Edit, Reason> {
        let mut edit = Edit::Unchanged;
        // Only we may mark packets: a client's marker would make the victim strip data.
        if p.protocol == proto::TCP
            && Marker::from_reserved(wire::tcp_reserved(buf, &p)) != Ok(Marker::None)
        {
            p = clear_marker(buf, &p)?;
            c.count_rejected(Refusal::ClientMarker);
            edit = Edit::Changed;
        }
        let tcp = on_port && p.protocol == proto::TCP;
        let segments = wire_packets(&p, sink.gso, self.segment_mss(p.src.is_ipv6()));
        t.begin(Stage::Police);
        let admitted = self.police.admit(p.src, tcp, segments, now);
        t.end(Stage::Police);
        (c.senders, c.evictions) = {
            let (held, evicted) = self.police.senders_held();
            (held as u64, evicted)
        };
        admitted.map_err(Reason::Policed)?;
        if tcp {
            t.begin(Stage::Stamp);
            let stamped = self.stamp(buf, (p, segments), now, sink, c);
            t.end(Stage::Stamp);
            edit = edit.or(stamped?);
        }
        if !on_port || self.tunnel.is_none() {
            return Ok(edit);
        }
        t.begin(Stage::Tunnel);
        let wrapped = self.wrap(buf, c);
        t.end(Stage::Tunnel);
        Ok(edit.or(wrapped?))
    }

    /// Tunnel mode: wrap a packet for the victim, sealed with the tunnel keys (unless
    /// the tunnel has no address of its family).
    fn wrap(&mut self, buf: &mut Vec<u8>, c: &mut CapCounters) -> Result<Edit, Reason> {
        let Some((t, keys)) = self.tunnel.as_mut() else {
            return Ok(Edit::Unchanged);
        };
        let inner = wire::parse(buf).map_err(Reason::Malformed)?;
        // No tunnel address of this family: that family goes unwrapped.
        let Some(src) = t.address_for(inner.dst) else {
            return Ok(Edit::Unchanged);
        };
        if inner.total_len() + wire::tunnel::overhead(inner.dst.is_ipv6()) > self.path_mtu {
            return Err(Reason::TooBigForTunnel);
        }
        let (key_id, key) = keys.ring().current();
        let auth = tunnel::seal(tunnel::Kind::Packet, key_id, key, buf);
        // The inner source port spreads flows over the victim's receive queues.
        let sport = inner.ports().map_or(t.port, |(s, _)| s);
        wire::tunnel::encap_udp(buf, &inner, (src, inner.dst), (sport, t.port), &auth)
            .map_err(Reason::Malformed)?;
        c.tunneled += 1;
        Ok(Edit::Changed)
    }

    /// The path MTU stamped packets must fit.
    pub fn path_mtu(&self) -> usize {
        self.path_mtu
    }

    /// Take back a stamp whose segment turned out too big to carry it.
    pub fn withdraw(&mut self, (sender, id, at): IssuedStamp, c: &mut CapCounters) {
        self.police.withdraw(sender, id, at);
        c.issued = c.issued.saturating_sub(1);
    }

    /// The segment size a client's super-packet is cut into: the MSS the victim
    /// advertises, which leaves room for a stamp (the client's own may be smaller).
    fn segment_mss(&self, v6: bool) -> u16 {
        mss_with_room(v6, self.path_mtu, wire_len(v6) + self.tunnel_overhead(v6))
    }

    /// Bytes the tunnel adds to a packet of this family (0 without a tunnel).
    fn tunnel_overhead(&self, v6: bool) -> usize {
        self.tunnel
            .as_ref()
            .map_or(0, |_| wire::tunnel::overhead(v6))
    }

    /// Stamp a capability on a client's TCP packet if its sample calls for it.
    /// Inlined, as it was before the trace's stage edges were put around it: called,
    /// it cost about 50 instructions a packet in moving its arguments. Its only caller.
    #[inline(always)]
    fn stamp(
        &mut self,
        buf: &mut Vec<u8>,
        (p, segments): (Parsed, u32),
        now: Instant,
        sink: &mut TrailerSink,
        c: &mut CapCounters,
    ) -> Result<Edit, Reason> {
        let v6 = p.src.is_ipv6();
        let len = largest_wire_len(&p, sink.gso, self.segment_mss(v6));
        let fits = len + wire_len(v6) + self.tunnel_overhead(v6) <= self.path_mtu;
        let id = match self.police.stamp(p.src, segments, now, fits) {
            Stamp::No => return Ok(Edit::Unchanged),
            Stamp::TooBig => {
                c.too_big += 1;
                return Ok(Edit::Unchanged);
            }
            Stamp::Id(id) => id,
        };
        let (key_id, key) = self.keys.ring().current();
        let cap = Capability::new(key_id, self.mbox_id, ms_since(self.epoch, now), id, p.src);
        let mut bytes = [0u8; MAX_WIRE_LEN];
        let n = cap
            .encode(p.dst, key, &mut bytes)
            .map_err(|_| Reason::Malformed(wire::WireError::FamilyMismatch))?;
        sink.append(
            buf,
            &p,
            (&bytes[..n], Marker::Stamped),
            Some((p.src, id, now)),
        )?;
        c.issued += 1;
        Ok(Edit::Changed)
    }

    /// Strip the feedback from a packet of the victim, count what verifies, and in
    /// redirect mode answer in the redirect address's name.
    ///
    /// A reply is queued twice in redirect mode: before routing (`meta.hook` prerouting),
    /// where its feedback is stripped ahead of conntrack, and after (forward), where it
    /// is readdressed: before routing, the mbox's own source address would be a martian.
    pub fn from_victim(
        &mut self,
        buf: &mut Vec<u8>,
        p: Parsed,
        meta: &PacketMeta,
        now: Instant,
        c: &mut CapCounters,
        t: impl Trace,
    ) -> Result<Edit, Reason> {
        if meta.hook == super::HOOK_FORWARD {
            let Some(r) = self.redirect.iter().find(|r| r.to == p.src) else {
                return Ok(Edit::Unchanged);
            };
            wire::set_src_addr(buf, &p, r.listen).map_err(Reason::Malformed)?;
            c.redirected += 1;
            return Ok(Edit::Changed);
        }
        if p.protocol != proto::TCP {
            return Ok(Edit::Unchanged);
        }
        // Anyone can claim the victim's address; only its side of the mbox can be it.
        let from_victim_side = self.victim_ifindexes.contains(&meta.indev);
        t.begin(Stage::Feedback);
        let stripped = self.strip_feedback(buf, p, from_victim_side, now, c);
        t.end(Stage::Feedback);
        stripped
    }

    /// Strip the feedback from an ACK of the victim; if it came from the victim's
    /// side, count what verifies.
    fn strip_feedback(
        &mut self,
        buf: &mut Vec<u8>,
        p: Parsed,
        from_victim_side: bool,
        now: Instant,
        c: &mut CapCounters,
    ) -> Result<Edit, Reason> {
        let n = match Marker::from_reserved(wire::tcp_reserved(buf, &p)) {
            Ok(Marker::None) => return Ok(Edit::Unchanged),
            Ok(Marker::Feedback(n)) => n.get(),
            // The victim never sends these: clear them, so the client sees none.
            Ok(Marker::Stamped) | Err(_) => {
                clear_marker(buf, &p)?;
                c.count_rejected(CapError::BadMarker);
                return Ok(Edit::Changed);
            }
        };
        let v6 = p.dst.is_ipv6();
        let len = feedback_len(n, v6);
        if p.payload_len < len {
            // A count that promises more than the packet holds: never forward it.
            c.count_rejected(Refusal::FeedbackTooShort);
            return Err(Reason::FeedbackTooShort);
        }
        let mut trailer = [0u8; 3 * MAX_WIRE_LEN];
        let start = p.total_len() - len;
        trailer[..len].copy_from_slice(&buf[start..]);
        let stripped = wire::strip_trailer(buf, &p, len).map_err(Reason::Malformed)?;
        clear_marker(buf, &stripped)?;
        c.feedback_stripped += 1;
        if !from_victim_side {
            c.count_rejected(Refusal::OffVictimLink);
            return Ok(Edit::Changed);
        }
        // Only a segment of an established connection proves the client is real: a
        // SYN-ACK or a RST also goes to a spoofed source, which can never answer it.
        let proves = p
            .tcp()
            .is_some_and(|t| t.flags & (tcp::SYN | tcp::RST) == 0);
        if let Ok(caps) = split_feedback(&trailer[..len], n, v6) {
            for bytes in caps {
                match self.count_returned(bytes, (p.src, p.dst), proves, now) {
                    Ok(()) => c.returned += 1,
                    Err(reason) => c.count_rejected(reason),
                }
            }
        }
        Ok(Edit::Changed)
    }

    /// Check one returned capability (the ACK went from `victim` to `client`); if it
    /// `proves` the client real, the client becomes a verified sender.
    fn count_returned(
        &mut self,
        bytes: &[u8],
        (victim, client): (IpAddr, IpAddr),
        proves: bool,
        now: Instant,
    ) -> Result<(), Rejected> {
        let cap = Capability::verify(bytes, victim, self.keys.ring())?;
        cap.check_sender(client)?;
        if cap.mbox_id != self.mbox_id {
            return Err(Refusal::WrongMbox.into());
        }
        self.police
            .returned(client, (cap.id, cap.issued_ms), proves, now)
    }

    /// Close the periods due by `now`; this worker's figures for the system-wide view.
    pub fn on_timer(&mut self, now: Instant, c: &mut CapCounters) -> Figures {
        let figures = self.police.on_timer(now);
        let k = self.police.counters();
        (c.expired, c.stamps_over_budget, c.periods_closed) =
            (k.expired, k.stamps_over_budget, k.periods_closed);
        (c.senders, c.evictions) = {
            let (held, evicted) = self.police.senders_held();
            (held as u64, evicted)
        };
        figures
    }

    /// Whether the set of verified senders changed since the changes were last taken.
    pub fn verified_changed(&self) -> bool {
        self.police.verified_changed()
    }

    /// The changes to the set of verified senders since the last call.
    pub fn take_verified_changes(&mut self) -> Vec<(IpAddr, bool)> {
        self.police.take_verified_changes().collect()
    }

    /// Police by the system-wide view merged from every worker's figures.
    pub fn set_system(&mut self, system: System) {
        self.police.set_system(system);
    }

    /// Police by `p` from now on (a reload); every sender's state stays.
    pub fn set_police(&mut self, p: &PoliceSettings) {
        self.police.set_settings(p);
    }

    /// The policy, the system-wide view, and up to `limit` of the most active senders.
    pub fn police_report(&self, limit: usize) -> PoliceReport {
        PoliceReport {
            policy: self.police.policy().name().to_owned(),
            slr: self.police.system().slr,
            totals: self.police.system().totals,
            senders: self.police.report(limit),
        }
    }
}
