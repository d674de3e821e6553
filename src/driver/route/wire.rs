//! Encode and decode NETLINK_ROUTE route messages (`struct rtmsg` + `rtattr`s).
//!
//! Invariants: decoders take untrusted bytes and never index without a bounds
//! check, so no input can panic; a request built from a kernel-reported route
//! carries only what a request may carry (no kernel-state flags, no output-only
//! attributes). Payloads are in host byte order except addresses (raw bytes).

use crate::driver::netlink::{Attrs, MsgWriter, NLM_F_ACK, NLM_F_DUMP, align4, ne_u32, push_attr};
use crate::driver::nlsocket::{NlError, NlSocket};

/// Length of `struct rtmsg`.
pub const RTMSG_LEN: usize = 12;
/// Length of `struct rtnexthop`.
pub const RTNH_LEN: usize = 8;

pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;

pub const RTA_DST: u16 = 1;
pub const RTA_SRC: u16 = 2;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PRIORITY: u16 = 6;
pub const RTA_PREFSRC: u16 = 7;
pub const RTA_METRICS: u16 = 8;
pub const RTA_MULTIPATH: u16 = 9;
pub const RTA_CACHEINFO: u16 = 12;
pub const RTA_TABLE: u16 = 15;
pub const RTA_VIA: u16 = 18;
pub const RTA_ENCAP_TYPE: u16 = 21;
pub const RTA_ENCAP: u16 = 22;
pub const RTA_EXPIRES: u16 = 23;
pub const RTA_NH_ID: u16 = 30;

/// Route metric: the MSS advertised in SYN and SYN-ACK segments.
pub const RTAX_ADVMSS: u16 = 8;

pub const RT_TABLE_MAIN: u8 = 254;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RTN_UNICAST: u8 = 1;
/// The only nexthop flag a request may carry; the others are kernel state.
pub const RTNH_F_ONLINK: u32 = 4;
/// Header flag of v6 cache clones (never in a FIB dump, skipped if seen).
pub const RTM_F_CLONED: u32 = 0x200;

/// Protocol of routes this module adds (`proto 109` in `ip route`): not in the
/// kernel's or iproute2's reserved list, so operators can tell our routes apart.
pub const RTPROT_MPOLICE: u8 = 0x6d;

/// Attribute types a new route must not carry: kernel-only output or rebuilt by us.
const NOT_RESENT: [u16; 3] = [RTA_CACHEINFO, RTA_METRICS, RTA_TABLE];
/// Nexthop attributes a dump repeats beside RTA_NH_ID (nexthop_compat_mode) and
/// a request must not combine with it ("mutually exclusive", EINVAL).
const NEXTHOP_SPEC: [u16; 6] = [
    RTA_OIF,
    RTA_GATEWAY,
    RTA_MULTIPATH,
    RTA_VIA,
    RTA_ENCAP_TYPE,
    RTA_ENCAP,
];
/// USER_HZ: the unit of `rta_cacheinfo.rta_expires`.
const USER_HZ: u32 = 100;

/// The fixed `struct rtmsg` header of a route message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtHdr {
    pub family: u8,
    pub dst_len: u8,
    pub src_len: u8,
    pub tos: u8,
    pub table: u8,
    pub protocol: u8,
    pub scope: u8,
    pub rtype: u8,
    pub flags: u32,
}

impl RtHdr {
    /// Decode the header at the start of `body`.
    pub fn decode(body: &[u8]) -> Option<Self> {
        let b = body.get(..RTMSG_LEN)?;
        Some(RtHdr {
            family: b[0],
            dst_len: b[1],
            src_len: b[2],
            tos: b[3],
            table: b[4],
            protocol: b[5],
            scope: b[6],
            rtype: b[7],
            flags: u32::from_ne_bytes(b[8..12].try_into().ok()?),
        })
    }

    /// Return the 12 header bytes.
    pub fn to_bytes(self) -> [u8; RTMSG_LEN] {
        let f = self.flags.to_ne_bytes();
        [
            self.family,
            self.dst_len,
            self.src_len,
            self.tos,
            self.table,
            self.protocol,
            self.scope,
            self.rtype,
            f[0],
            f[1],
            f[2],
            f[3],
        ]
    }
}

/// One route as the kernel reported it: header plus attributes in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    pub hdr: RtHdr,
    /// `(type, payload)` with the type's flag bits masked off.
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl Route {
    /// Decode an RTM_NEWROUTE body; `None` when the header is short.
    pub fn decode(body: &[u8]) -> Option<Self> {
        let hdr = RtHdr::decode(body)?;
        let attrs = Attrs::new(body, RTMSG_LEN..body.len())
            .map(|(t, r)| (t, body.get(r).unwrap_or_default().to_vec()))
            .collect();
        Some(Route { hdr, attrs })
    }

    /// Return the payload of the first attribute of `attr_type`.
    pub fn attr(&self, attr_type: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(t, _)| *t == attr_type)
            .map(|(_, p)| p.as_slice())
    }

    /// Return the routing table: RTA_TABLE when present, else the header's.
    pub fn table(&self) -> u32 {
        self.attr(RTA_TABLE)
            .and_then(ne_u32)
            .unwrap_or(u32::from(self.hdr.table))
    }

    /// Return the route's metric (RTA_PRIORITY, 0 when absent).
    pub fn priority(&self) -> u32 {
        self.attr(RTA_PRIORITY).and_then(ne_u32).unwrap_or(0)
    }

    /// Return the value of metric `rtax` inside RTA_METRICS, if set.
    pub fn metric(&self, rtax: u16) -> Option<u32> {
        let m = self.attr(RTA_METRICS)?;
        Attrs::new(m, 0..m.len())
            .find(|(t, _)| *t == rtax)
            .and_then(|(_, r)| ne_u32(m.get(r)?))
    }

    /// Return the attributes that identify this route for RTM_DELROUTE.
    pub fn delete_request(&self) -> Route {
        const KEYS: [u16; 9] = [
            RTA_DST,
            RTA_SRC,
            RTA_OIF,
            RTA_GATEWAY,
            RTA_PRIORITY,
            RTA_PREFSRC,
            RTA_MULTIPATH,
            RTA_VIA,
            RTA_NH_ID,
        ];
        let mut out = Route {
            hdr: self.sanitized_hdr(),
            attrs: Vec::new(),
        };
        out.attrs
            .push((RTA_TABLE, self.table().to_ne_bytes().to_vec()));
        out.attrs.extend(
            self.attrs
                .iter()
                .filter(|(t, _)| KEYS.contains(t) && self.resendable(*t))
                .cloned(),
        );
        out
    }

    /// Return a request recreating this route exactly, with `advmss` set
    /// (replacing any earlier one) or, with `None`, its metrics resent unchanged.
    pub fn new_request(&self, advmss: Option<u16>) -> Route {
        let mut out = Route {
            hdr: self.sanitized_hdr(),
            attrs: Vec::new(),
        };
        out.attrs
            .push((RTA_TABLE, self.table().to_ne_bytes().to_vec()));
        for (t, p) in &self.attrs {
            if NOT_RESENT.contains(t) || !self.resendable(*t) {
                continue;
            }
            let p = if *t == RTA_MULTIPATH {
                sanitize_multipath(p)
            } else {
                p.clone()
            };
            out.attrs.push((*t, p));
        }
        if let Some(secs) = self.v6_expires_secs() {
            if self.attr(RTA_EXPIRES).is_none() {
                out.attrs.push((RTA_EXPIRES, secs.to_ne_bytes().to_vec()));
            }
        }
        let old = self.attr(RTA_METRICS);
        let metrics = match advmss {
            Some(mss) => Some(rebuild_metrics(old.unwrap_or_default(), mss)),
            None => old.map(<[u8]>::to_vec),
        };
        if let Some(m) = metrics.filter(|m| !m.is_empty()) {
            out.attrs.push((RTA_METRICS, m));
        }
        out
    }

    /// Return false for nexthop attributes a route using a nexthop object only echoes.
    fn resendable(&self, attr_type: u16) -> bool {
        self.attr(RTA_NH_ID).is_none() || !NEXTHOP_SPEC.contains(&attr_type)
    }

    /// Return the header with kernel-state flags cleared (a request may only say onlink).
    fn sanitized_hdr(&self) -> RtHdr {
        RtHdr {
            flags: self.hdr.flags & RTNH_F_ONLINK,
            ..self.hdr
        }
    }

    /// Return the remaining lifetime of an expiring IPv6 route in seconds (rounded up).
    fn v6_expires_secs(&self) -> Option<u32> {
        if self.hdr.family != libc::AF_INET6 as u8 {
            return None;
        }
        // struct rta_cacheinfo { u32 clntref, lastuse; s32 expires; u32 error, used, ... }
        let ci = self.attr(RTA_CACHEINFO)?;
        let expires = i32::from_ne_bytes(ci.get(8..12)?.try_into().ok()?);
        let ticks = u32::try_from(expires).ok().filter(|t| *t > 0)?;
        Some(ticks.div_ceil(USER_HZ))
    }

    /// Append this route as a complete netlink message to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32) {
        let mut w = MsgWriter::new(buf, msg_type, flags, seq);
        w.bytes(&self.hdr.to_bytes());
        for (t, p) in &self.attrs {
            w.attr(*t, p);
        }
        w.finish();
    }
}

/// Copy the metrics in `old` (an RTA_METRICS payload) except RTAX_ADVMSS, then
/// append `advmss`; a lying length ends the copy.
pub fn rebuild_metrics(old: &[u8], advmss: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (t, r) in Attrs::new(old, 0..old.len()) {
        if t == RTAX_ADVMSS {
            continue;
        }
        push_attr(&mut out, t, old.get(r).unwrap_or_default());
    }
    push_attr(&mut out, RTAX_ADVMSS, &u32::from(advmss).to_ne_bytes());
    out
}

/// Return an RTA_MULTIPATH payload with each nexthop's flags cut to onlink;
/// stops at the first nexthop whose length does not fit.
pub fn sanitize_multipath(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut pos = 0usize;
    while let Some(hdr) = payload.get(pos..pos.saturating_add(RTNH_LEN)) {
        let len = usize::from(u16::from_ne_bytes([hdr[0], hdr[1]]));
        let Some(nh) = payload.get(pos..pos.saturating_add(len)) else {
            break;
        };
        if len < RTNH_LEN {
            break;
        }
        let start = out.len();
        out.extend_from_slice(nh);
        // rtnh_flags is a u8 at offset 2; only RTNH_F_ONLINK (< 256) survives.
        if let Some(f) = out.get_mut(start + 2) {
            *f &= RTNH_F_ONLINK as u8;
        }
        out.resize(start + align4(len), 0);
        pos = pos.saturating_add(align4(len));
    }
    out
}

/// Append a request for the kernel's route to `addr` (`ip route get`), acked.
pub fn lookup_request(buf: &mut Vec<u8>, seq: u32, family: u8, addr: &[u8]) {
    let hdr = RtHdr {
        family,
        dst_len: u8::try_from(addr.len() * 8).unwrap_or(u8::MAX),
        ..RtHdr::default()
    };
    let mut w = MsgWriter::new(buf, RTM_GETROUTE, NLM_F_ACK, seq);
    w.bytes(&hdr.to_bytes());
    w.attr(RTA_DST, addr);
    w.finish();
}

/// Send `msg` (sequence `seq`) on `sock` and collect the routes of the answer.
pub fn routes(sock: &mut NlSocket, msg: &[u8], seq: u32) -> Result<Vec<Route>, NlError> {
    let mut routes = Vec::new();
    sock.exchange(msg, seq, |kind, body| {
        if kind == RTM_NEWROUTE {
            routes.extend(Route::decode(body));
        }
    })?;
    Ok(routes)
}

/// Append a request to dump the main table of `family` (ends with NLMSG_DONE).
pub fn dump_request(buf: &mut Vec<u8>, seq: u32, family: u8) {
    let hdr = RtHdr {
        family,
        table: RT_TABLE_MAIN,
        ..RtHdr::default()
    };
    let mut w = MsgWriter::new(buf, RTM_GETROUTE, NLM_F_DUMP, seq);
    w.bytes(&hdr.to_bytes());
    w.finish();
}
