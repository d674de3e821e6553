//! The victim's stages: drop traffic that bypassed the mbox, strip capabilities before
//! TCP sees them, return them on ACKs, and clamp the MSS so trailers fit the path MTU.
//!
//! Invariants: no packet leaves the inbound stage with a trailer or a marker; an ACK
//! gets feedback only if it then still fits the path MTU; the capabilities kept per
//! sender, and the senders, are bounded (overflow and evictions are counted).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::segments::{TrailerSink, largest_wire_len};
use super::{Datagram, Edit, LOOPBACK_IFINDEX, Reason, clear_marker, open_tunnel};
use crate::capability::{
    CapError, Capability, KeyReader, MAX_FEEDBACK, MAX_WIRE_LEN, Marker, SharedKeys, tunnel,
    wire_len,
};
use crate::config::{CapSettings, Tunnel};
use crate::driver::nft::Prefix;
use crate::police::{SenderTable, Worth};
use crate::stats::CapCounters;
use crate::trace::{Stage, Trace};
use crate::wire::tunnel::AUTH_LEN;
use crate::wire::{self, IpVersion, Parsed, proto, tcp};

/// A capability as it arrived, kept to be echoed back unchanged.
#[derive(Clone, Copy)]
struct Kept {
    len: usize,
    bytes: [u8; MAX_WIRE_LEN],
}

/// The capabilities kept for one (client, protected address), and in tunnel mode the
/// mbox whose tunnel they came through.
#[derive(Default)]
struct KeptFlow {
    caps: VecDeque<Kept>,
    via: Option<IpAddr>,
}

// The victim's table of kept capabilities evicts the least recently seen flow.
impl Worth for KeptFlow {}

/// The victim role's capability state, owned by one queue worker.
pub struct Victim {
    path_mtu: usize,
    per_ack: usize,
    kept_per_sender: usize,
    /// Ifindexes of the links to the mboxes: traffic to protect arrives only by them,
    /// feedback leaves only by them.
    mbox_ifindexes: Vec<u32>,
    /// Kept per (client, protected address): a capability's MAC binds the address it was
    /// stamped towards, so only an ACK from that address may carry it back.
    kept: SenderTable<KeptFlow, (IpAddr, IpAddr)>,
    /// Tunnel mode: the mboxes accepted, and the keys the tunnel's MACs are made with.
    tunnel: Option<(Tunnel, KeyReader)>,
    /// Senders whose capabilities are stripped and never returned: the mbox then counts
    /// all their stamped packets as lost, and polices them as losing senders.
    withheld: Vec<Prefix>,
}

impl Victim {
    /// The path MTU packets with feedback must fit.
    pub fn path_mtu(&self) -> usize {
        self.path_mtu
    }

    /// Return and keep capabilities as `s` says from now on (a reload); those kept stay.
    pub fn set_feedback(&mut self, s: &CapSettings) {
        self.per_ack = usize::from(s.feedback_per_ack);
        self.kept_per_sender = s.kept_per_sender;
    }

    /// Build the victim stages; `mbox_ifindexes` are the resolved `mbox_interfaces`.
    pub fn new(s: &CapSettings, mbox_ifindexes: Vec<u32>) -> Self {
        Victim {
            path_mtu: usize::from(s.path_mtu),
            per_ack: usize::from(s.feedback_per_ack),
            kept_per_sender: s.kept_per_sender,
            mbox_ifindexes,
            kept: SenderTable::new(s.max_senders),
            tunnel: None,
            withheld: s.withhold_feedback.clone(),
        }
    }

    /// Withhold feedback from the senders in `prefixes` from now on (and no longer from
    /// any other). Capabilities already kept for them are dropped (counted as withheld).
    pub fn set_withheld(&mut self, prefixes: Vec<Prefix>, c: &mut CapCounters) {
        self.withheld = prefixes;
        let flows: Vec<_> = self
            .kept
            .iter()
            .map(|(flow, _)| flow)
            .filter(|(client, _)| self.withholds(*client))
            .collect();
        for flow in flows {
            if let Some(f) = self.kept.remove(flow) {
                c.withheld += f.caps.len() as u64;
            }
        }
    }

    fn withholds(&self, client: IpAddr) -> bool {
        self.withheld.iter().any(|p| p.contains(client))
    }

    /// Tunnel mode: accept IP-in-UDP on `t.port` from the mboxes in `t.addresses` only,
    /// sealed with the tunnel keys; return feedback to them in datagrams of its own.
    pub fn with_tunnel(mut self, t: Tunnel, keys: &Arc<SharedKeys>) -> Self {
        self.tunnel = Some((t, keys.reader(tunnel::TUNNEL_RUN)));
        self
    }

    /// Unwrap IP-in-UDP from a configured mbox; None if `p` is not tunnel traffic.
    ///
    /// Returns the packet it carried, now in `buf`. The inbound chain queues that packet
    /// again (it runs after the tunnel chain), and the inbound stages handle it then.
    pub fn tunnel_in(
        &mut self,
        buf: &mut Vec<u8>,
        p: &Parsed,
        (indev, now): (u32, Instant),
        c: &mut CapCounters,
    ) -> Option<Result<Parsed, Reason>> {
        let (t, keys) = self.tunnel.as_mut()?;
        if p.udp().is_none_or(|u| u.dst_port != t.port) {
            return None;
        }
        // A tunnel packet is still traffic to us: it must come over an mbox link, from
        // an mbox address, and (that address proving nothing) carry the tunnel's MAC.
        if !self.mbox_ifindexes.contains(&indev) {
            return Some(Err(Reason::Bypassed));
        }
        if !t.addresses.contains(&p.src) {
            return Some(Err(Reason::TunnelFromStranger));
        }
        if let Err(why) = open_tunnel(buf, p, keys, tunnel::Kind::Packet, c) {
            return Some(Err(why));
        }
        let inner = match wire::tunnel::decap_udp(buf, p) {
            Ok(inner) => inner,
            Err(e) => return Some(Err(Reason::Malformed(e))),
        };
        c.tunneled += 1;
        if inner.protocol == proto::TCP {
            // Where this flow's capabilities go back to.
            let flow = self
                .kept
                .get_or_insert_with((inner.src, inner.dst), now, KeptFlow::default);
            flow.via = Some(p.src);
        }
        Some(Ok(inner))
    }

    /// Handle a packet from a client, before conntrack and TCP see it.
    pub fn inbound(
        &mut self,
        buf: &mut Vec<u8>,
        p: Parsed,
        indev: u32,
        now: Instant,
        c: &mut CapCounters,
        t: impl Trace,
    ) -> Result<Edit, Reason> {
        // The host's own traffic (health checks, local clients) never crossed an mbox
        // and needs none. The rules do not queue it; queued anyway (an operator's own
        // rule), it passes as it is, trailers and markers untouched.
        if indev == LOOPBACK_IFINDEX {
            c.local += 1;
            return Ok(Edit::Unchanged);
        }
        // Every protocol: a UDP flood that skipped the mbox is as unpoliced as TCP.
        // Nothing arriving elsewhere is stripped or kept, so a spoofer cannot push a
        // client's real capabilities out of its queue.
        if !self.mbox_ifindexes.contains(&indev) {
            return Err(Reason::Bypassed);
        }
        if p.protocol != proto::TCP {
            return Ok(Edit::Unchanged);
        }
        let mut edit = Edit::Unchanged;
        if is_syn(&p, false) {
            // The client's MSS bounds our segments to it: leave room for feedback.
            let room = self.per_ack * wire_len(p.src.is_ipv6());
            t.begin(Stage::Clamp);
            edit = edit.or(clamp(buf, &p, self.path_mtu, room));
            t.end(Stage::Clamp);
        }
        let marker = Marker::from_reserved(wire::tcp_reserved(buf, &p));
        if marker == Ok(Marker::None) {
            return Ok(edit);
        }
        t.begin(Stage::Strip);
        let stripped = self.strip_stamp(buf, p, marker, now, c);
        t.end(Stage::Strip);
        Ok(edit.or(stripped?))
    }

    /// Take the capability trailer off a client's packet the mbox stamped (its
    /// `marker`) and keep it to return; clear any other marker.
    fn strip_stamp(
        &mut self,
        buf: &mut Vec<u8>,
        mut p: Parsed,
        marker: Result<Marker, CapError>,
        now: Instant,
        c: &mut CapCounters,
    ) -> Result<Edit, Reason> {
        match marker {
            Ok(Marker::None) => Ok(Edit::Unchanged),
            Ok(Marker::Stamped) => {
                let len = wire_len(p.src.is_ipv6());
                if p.payload_len < len {
                    return Err(Reason::TrailerTooShort);
                }
                let mut kept = Kept {
                    len,
                    bytes: [0; MAX_WIRE_LEN],
                };
                kept.bytes[..len].copy_from_slice(&buf[p.total_len() - len..]);
                p = wire::strip_trailer(buf, &p, len).map_err(Reason::Malformed)?;
                clear_marker(buf, &p)?;
                c.stripped += 1;
                // We hold no key, but a trailer that is not even well formed is not kept.
                match Capability::decode(&kept.bytes[..len]) {
                    Ok(_) if self.withholds(p.src) => c.withheld += 1,
                    Ok(_) => self.keep((p.src, p.dst), kept, now, c),
                    Err(e) => c.count_rejected(e),
                }
                Ok(Edit::Changed)
            }
            // Only the mbox marks packets towards us, and only as stamped.
            Ok(Marker::Feedback(_)) | Err(_) => {
                clear_marker(buf, &p)?;
                c.count_rejected(CapError::BadMarker);
                Ok(Edit::Changed)
            }
        }
    }

    /// Handle a packet to a client leaving by `outdev`: clamp a SYN-ACK's MSS, return
    /// kept capabilities on ACKs that cross an mbox, or (tunnel mode) in a feedback
    /// datagram to the mbox pushed on `out` for each ACK.
    pub fn outbound(
        &mut self,
        buf: &mut Vec<u8>,
        p: Parsed,
        (outdev, now): (u32, Instant),
        (sink, out): (&mut TrailerSink, &mut Vec<Datagram>),
        c: &mut CapCounters,
        t: impl Trace,
    ) -> Result<Edit, Reason> {
        if p.protocol != proto::TCP {
            return Ok(Edit::Unchanged);
        }
        let mut edit = Edit::Unchanged;
        let len = wire_len(p.dst.is_ipv6());
        if is_syn(&p, true) {
            // Our MSS bounds the client's segments: leave room for a stamp (and the tunnel).
            let tunnel = self
                .tunnel
                .as_ref()
                .map_or(0, |_| wire::tunnel::overhead(p.dst.is_ipv6()));
            t.begin(Stage::Clamp);
            edit = edit.or(clamp(buf, &p, self.path_mtu, len + tunnel));
            t.end(Stage::Clamp);
        }
        t.begin(Stage::Feedback);
        let fed_back = self.feed_back(buf, p, (outdev, now), (sink, out), c);
        t.end(Stage::Feedback);
        Ok(edit.or(fed_back?))
    }

    /// Return kept capabilities to the mbox on a server's ACK: appended as a trailer
    /// when it leaves through an mbox, or in a datagram of their own in tunnel mode.
    /// Inlined: it runs for every outbound TCP packet, mostly only to find nothing kept.
    #[inline]
    fn feed_back(
        &mut self,
        buf: &mut Vec<u8>,
        p: Parsed,
        (outdev, now): (u32, Instant),
        (sink, out): (&mut TrailerSink, &mut Vec<Datagram>),
        c: &mut CapCounters,
    ) -> Result<Edit, Reason> {
        let len = wire_len(p.dst.is_ipv6());
        let ack = p.tcp().is_some_and(|t| t.flags & tcp::ACK != 0);
        let Some(flow) = self.kept.get_mut((p.dst, p.src), now).filter(|_| ack) else {
            return Ok(Edit::Unchanged);
        };
        if let (Some(via), Some((t, keys))) = (flow.via, self.tunnel.as_mut()) {
            // Tunnel mode: replies need not cross the mbox, so the feedback travels in
            // a datagram of its own, sealed like the tunnel, whatever way the ACK leaves.
            let (trailer, n) = take(&mut flow.caps, self.per_ack, len);
            if n == 0 {
                return Ok(Edit::Unchanged);
            }
            let returned = tunnel::Returned {
                server: p.src,
                client: p.dst,
                count: n as u8,
                caps: &trailer[..n * len],
            };
            let mut payload = vec![0; AUTH_LEN];
            returned
                .encode(&mut payload)
                .map_err(|_| Reason::TrailerTooShort)?;
            let (key_id, key) = keys.ring().current();
            let auth = tunnel::seal(tunnel::Kind::Feedback, key_id, key, &payload[AUTH_LEN..]);
            payload[..AUTH_LEN].copy_from_slice(&auth);
            out.push(Datagram {
                to: SocketAddr::new(via, t.port),
                payload,
            });
            c.fed_back += n as u64;
            return Ok(Edit::Unchanged);
        }
        // Only an mbox strips feedback: by any other way (an asymmetric route) the
        // client's TCP would take the trailer for data. The capabilities wait.
        if !self.mbox_ifindexes.contains(&outdev) {
            c.not_via_mbox += 1;
            return Ok(Edit::Unchanged);
        }
        // A super-packet's segments: at most the MSS the victim clamped the client to.
        let mss = mss_with_room(p.dst.is_ipv6(), self.path_mtu, self.per_ack * len);
        let fits = self
            .path_mtu
            .saturating_sub(largest_wire_len(&p, sink.gso, mss))
            / len;
        let (trailer, n) = take(&mut flow.caps, self.per_ack.min(fits), len);
        if n == 0 {
            return Ok(Edit::Unchanged);
        }
        let marker = Marker::feedback(n as u8).map_err(|_| Reason::TrailerTooShort)?;
        sink.append(buf, &p, (&trailer[..n * len], marker), None)?;
        c.fed_back += n as u64;
        Ok(Edit::Changed)
    }

    fn keep(&mut self, flow: (IpAddr, IpAddr), k: Kept, now: Instant, c: &mut CapCounters) {
        let limit = self.kept_per_sender;
        let queue = &mut self
            .kept
            .get_or_insert_with(flow, now, KeptFlow::default)
            .caps;
        if queue.len() >= limit {
            queue.pop_front();
            c.overflow += 1;
        }
        queue.push_back(k);
        c.senders = self.kept.len() as u64;
        c.evictions = self.kept.evictions();
    }
}

/// Take up to `max` (and at most 3) kept capabilities of `len` bytes, in the order kept,
/// as a trailer; return it and how many it holds.
fn take(queue: &mut VecDeque<Kept>, max: usize, len: usize) -> ([u8; 3 * MAX_WIRE_LEN], usize) {
    let n = queue.len().min(max).min(usize::from(MAX_FEEDBACK));
    let mut trailer = [0u8; 3 * MAX_WIRE_LEN];
    for (i, k) in queue.drain(..n).enumerate() {
        trailer[i * len..(i + 1) * len].copy_from_slice(&k.bytes[..k.len]);
    }
    (trailer, n)
}

/// True for a SYN (`with_ack` false) or a SYN-ACK (`with_ack` true).
fn is_syn(p: &Parsed, with_ack: bool) -> bool {
    p.tcp()
        .is_some_and(|t| t.flags & tcp::SYN != 0 && (t.flags & tcp::ACK != 0) == with_ack)
}

/// Clamp the MSS so a full segment plus `room` trailer bytes fits `mtu`.
fn clamp(buf: &mut [u8], p: &Parsed, mtu: usize, room: usize) -> Edit {
    let max = mss_with_room(p.version == IpVersion::V6, mtu, room);
    if wire::clamp_tcp_mss(buf, p, max) {
        Edit::Changed
    } else {
        Edit::Unchanged
    }
}

/// The largest MSS under which a full segment plus `room` trailer bytes fits `mtu`
/// (TCP options come out of the MSS, so they need no room of their own).
pub fn mss_with_room(v6: bool, mtu: usize, room: usize) -> u16 {
    let headers = if v6 { 40 + 20 } else { 20 + 20 };
    u16::try_from(mtu.saturating_sub(headers + room)).unwrap_or(u16::MAX)
}
