//! The mbox's stages: stamp capabilities on a sample of each sender's packets to the
//! protected service, and strip and check the feedback on the victim's ACKs.
//!
//! Invariants: every ACK from the victim leaves without its feedback trailer and marker,
//! whatever the trailer holds; a returned capability is counted only if its MAC
//! verifies, it names the sender it came back for, it was issued in the sender's current
//! period and within Th_rtt, and its id was not counted before.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Direction, Edit, PacketMeta, Reason, clear_marker, direction, ms_since, open_tunnel};
use crate::capability::{
    CapError, Capability, KeyReader, MAX_TH_CAP, MAX_WIRE_LEN, Marker, ReturnWindow, RunId,
    SharedKeys, check_fresh, check_period, feedback_len, split_feedback, tunnel, wire_len,
};
use crate::config::{CapSettings, RedirectPair, Tunnel};
use crate::driver::nft::Selection;
use crate::police::SenderTable;
use crate::stats::CapCounters;
use crate::wire::{self, Parsed, proto};

/// What the mbox knows of one sender in the current period.
struct Sender {
    period_start: Instant,
    issued: u32,
    window: ReturnWindow,
}

/// The mbox role's capability state, owned by one queue worker.
pub struct Mbox {
    keys: KeyReader,
    mbox_id: u16,
    period: Duration,
    rtt: Duration,
    per_period: u32,
    path_mtu: usize,
    epoch: Instant,
    /// An empty returned-capability bitmap, copied for each new sender.
    window: ReturnWindow,
    /// Redirect mode: client-facing addresses and the victims behind them.
    redirect: Vec<RedirectPair>,
    redirect_sel: Selection,
    /// Tunnel mode: where to, and the keys its MACs are made with.
    tunnel: Option<(Tunnel, KeyReader)>,
    /// Ifindexes of the links towards the protected servers: feedback counts only
    /// from them.
    victim_ifindexes: Vec<u32>,
    senders: SenderTable<Sender>,
}

impl Mbox {
    /// Build the mbox stages from the validated settings and the loaded keys.
    ///
    /// `epoch` is the zero of the capability clock and `run` this process's id: every
    /// worker of one engine shares both (a capability may come back on any queue).
    /// Feedback is counted only from `victim_ifindexes`, the links towards the victims.
    pub fn new(
        s: &CapSettings,
        keys: &Arc<SharedKeys>,
        epoch: Instant,
        run: RunId,
        victim_ifindexes: Vec<u32>,
    ) -> Self {
        // `CapSettings` keeps per_period within what a window holds.
        let window = ReturnWindow::new(s.per_period.clamp(1, MAX_TH_CAP))
            .expect("1..=MAX_TH_CAP always makes a window");
        Mbox {
            window,
            keys: keys.reader(run),
            mbox_id: s.mbox_id,
            period: s.period,
            rtt: s.rtt,
            per_period: s.per_period,
            path_mtu: usize::from(s.path_mtu),
            epoch,
            senders: SenderTable::new(s.max_senders),
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
            c.count_rejected("off_victim_link");
            return Some(Reason::Bypassed);
        }
        let body = match open_tunnel(buf, p, keys, tunnel::Kind::Feedback, c) {
            Ok(body) => body,
            Err(why) => return Some(why),
        };
        let fb = match tunnel::Returned::decode(body) {
            Ok(fb) => fb,
            Err(e) => {
                c.count_rejected(e.as_str());
                return Some(Reason::FeedbackDatagram);
            }
        };
        let now_ms = ms_since(self.epoch, now);
        if let Ok(caps) = split_feedback(fb.caps, fb.count, fb.server.is_ipv6()) {
            for bytes in caps {
                match self.count_returned(bytes, fb.server, fb.client, now, now_ms) {
                    Ok(()) => c.returned += 1,
                    Err(reason) => c.count_rejected(reason),
                }
            }
        }
        Some(Reason::FeedbackDatagram)
    }

    /// Stamp a client's packet to the protected service if its sample calls for it, and
    /// in tunnel mode wrap it for the victim.
    pub fn to_victim(
        &mut self,
        buf: &mut Vec<u8>,
        p: Parsed,
        now: Instant,
        c: &mut CapCounters,
    ) -> Result<Edit, Reason> {
        // Only TCP carries capabilities (its reserved bits hold the marker).
        let edit = if p.protocol == proto::TCP {
            let edit = self.stamp(buf, p, now, c);
            c.senders = self.senders.len() as u64;
            c.evictions = self.senders.evictions();
            edit?
        } else {
            Edit::Unchanged
        };
        let Some((t, keys)) = self.tunnel.as_mut() else {
            return Ok(edit);
        };
        let inner = wire::parse(buf).map_err(Reason::Malformed)?;
        // No tunnel address of this family: that family goes unwrapped.
        let Some(src) = t.address_for(inner.dst) else {
            return Ok(edit);
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

    /// Bytes the tunnel adds to a packet of this family (0 without a tunnel).
    fn tunnel_overhead(&self, v6: bool) -> usize {
        self.tunnel
            .as_ref()
            .map_or(0, |_| wire::tunnel::overhead(v6))
    }

    /// Stamp a capability on a client's TCP packet if its sample calls for it.
    fn stamp(
        &mut self,
        buf: &mut Vec<u8>,
        mut p: Parsed,
        now: Instant,
        c: &mut CapCounters,
    ) -> Result<Edit, Reason> {
        let mut edit = Edit::Unchanged;
        // Only we may mark packets: a client's marker would make the victim strip data.
        if Marker::from_reserved(wire::tcp_reserved(buf, &p)) != Ok(Marker::None) {
            p = clear_marker(buf, &p)?;
            c.count_rejected("client_marker");
            edit = Edit::Changed;
        }
        let (period, per_period) = (self.period, self.per_period);
        let v6 = p.src.is_ipv6();
        let room = wire_len(v6) + self.tunnel_overhead(v6);
        let window = &self.window;
        let sender = self.senders.get_or_insert_with(p.src, now, || Sender {
            period_start: now,
            issued: 0,
            window: window.clone(),
        });
        roll_period(sender, now, period);
        // No stamp in a period's last Th_rtt: it could not come back within the period.
        if sender.issued >= per_period || now >= sender.period_start + period - self.rtt {
            return Ok(edit);
        }
        if p.total_len() + room > self.path_mtu {
            c.too_big += 1;
            return Ok(edit);
        }
        let (key_id, key) = self.keys.ring().current();
        let cap = Capability::new(
            key_id,
            self.mbox_id,
            ms_since(self.epoch, now),
            sender.issued,
            p.src,
        );
        let mut bytes = [0u8; MAX_WIRE_LEN];
        let n = cap
            .encode(p.dst, key, &mut bytes)
            .map_err(|_| Reason::Malformed(wire::WireError::FamilyMismatch))?;
        let stamped = wire::append_trailer(buf, &p, &bytes[..n]).map_err(Reason::Malformed)?;
        let bits = Marker::Stamped.apply(wire::tcp_reserved(buf, &stamped));
        wire::set_tcp_reserved(buf, &stamped, bits).map_err(Reason::Malformed)?;
        sender.issued += 1;
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
        self.strip_feedback(buf, p, from_victim_side, now, c)
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
                c.count_rejected("bad_marker");
                return Ok(Edit::Changed);
            }
        };
        let v6 = p.dst.is_ipv6();
        let len = feedback_len(n, v6);
        if p.payload_len < len {
            // A count that promises more than the packet holds: never forward it.
            c.count_rejected("feedback_too_short");
            return Err(Reason::FeedbackTooShort);
        }
        let mut trailer = [0u8; 3 * MAX_WIRE_LEN];
        let start = p.total_len() - len;
        trailer[..len].copy_from_slice(&buf[start..]);
        let stripped = wire::strip_trailer(buf, &p, len).map_err(Reason::Malformed)?;
        clear_marker(buf, &stripped)?;
        c.feedback_stripped += 1;
        if !from_victim_side {
            c.count_rejected("off_victim_link");
            return Ok(Edit::Changed);
        }
        let now_ms = ms_since(self.epoch, now);
        if let Ok(caps) = split_feedback(&trailer[..len], n, v6) {
            for bytes in caps {
                match self.count_returned(bytes, p.src, p.dst, now, now_ms) {
                    Ok(()) => c.returned += 1,
                    Err(reason) => c.count_rejected(reason),
                }
            }
        }
        Ok(Edit::Changed)
    }

    /// Check one returned capability (the ACK went from `victim` to `client`).
    fn count_returned(
        &mut self,
        bytes: &[u8],
        victim: IpAddr,
        client: IpAddr,
        now: Instant,
        now_ms: u32,
    ) -> Result<(), &'static str> {
        let name = |e: CapError| e.as_str();
        let cap = Capability::verify(bytes, victim, self.keys.ring()).map_err(name)?;
        cap.check_sender(client).map_err(name)?;
        if cap.mbox_id != self.mbox_id {
            return Err("wrong_mbox");
        }
        let period = self.period;
        // A sender evicted since: its period and bitmap are gone, so nothing can count.
        let sender = self.senders.get_mut(client, now).ok_or("unknown_sender")?;
        roll_period(sender, now, period);
        check_period(cap.issued_ms, ms_since(self.epoch, sender.period_start)).map_err(name)?;
        let rtt_ms = u32::try_from(self.rtt.as_millis()).unwrap_or(u32::MAX);
        check_fresh(cap.issued_ms, now_ms, rtt_ms).map_err(name)?;
        sender.window.accept(cap.id).map_err(name)
    }
}

/// Start a new period for `s` if the current one is over (periods stay aligned).
fn roll_period(s: &mut Sender, now: Instant, period: Duration) {
    if now >= s.period_start + period {
        let periods = (now - s.period_start).as_nanos() / period.as_nanos().max(1);
        s.period_start += period * u32::try_from(periods).unwrap_or(u32::MAX);
        s.issued = 0;
        s.window.reset();
    }
}
