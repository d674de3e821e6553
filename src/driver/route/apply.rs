//! `set_advmss`: find each prefix's route, replace or add it with RTAX_ADVMSS.
//!
//! Invariants: every change is recorded in the guard as soon as the kernel
//! acknowledged it, so an error part-way undoes the earlier changes; a route
//! carrying our protocol ([`RTPROT_MPOLICE`]) is ours (left by an earlier call
//! or a killed process) and is deleted, not restored, by the guard.

use tracing::info;

use super::error::{RouteError, Step};
use super::guard::{AdvmssGuard, Undo};
use super::prefix::AdvmssRoute;
use super::wire::{
    self, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTA_DST, RTA_GATEWAY, RTA_OIF,
    RTA_TABLE, RTA_VIA, RTAX_ADVMSS, RTM_F_CLONED, RTM_NEWROUTE, RTN_UNICAST, RTNH_F_ONLINK,
    RTPROT_MPOLICE, Route, RtHdr,
};
use crate::driver::netlink::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use crate::driver::nlsocket::{NlError, NlSocket};

/// Install advmss for each prefix in the calling thread's network namespace;
/// return a guard that restores the previous state on drop (best effort, errors logged).
///
/// A prefix with a route of exactly that prefix in the main table gets that
/// route replaced with every attribute kept plus advmss; otherwise a route is
/// added with the gateway and interface the kernel uses for the prefix now,
/// protocol [`RTPROT_MPOLICE`]. Calling it again with the same input changes
/// nothing further (one route per prefix).
pub fn set_advmss(routes: &[AdvmssRoute]) -> Result<AdvmssGuard, RouteError> {
    for r in routes {
        r.validate()?;
    }
    let all = routes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let sock = NlSocket::open(libc::NETLINK_ROUTE).map_err(|e| map_err(&all, Step::Dump, e))?;
    let mut guard = AdvmssGuard::new(sock);
    for r in routes {
        let undo = install(guard.socket(), r)?; // dropping the guard undoes earlier ones
        guard.push(undo);
    }
    Ok(guard)
}

/// Install advmss for one prefix; return how to undo it.
fn install(sock: &mut NlSocket, r: &AdvmssRoute) -> Result<Undo, RouteError> {
    let prefix = r.to_string();
    let table = exchange(sock, &prefix, Step::Dump, |buf, seq| {
        wire::dump_request(buf, seq, r.family());
    })?;
    if let Some(found) = exact_route(&table, r) {
        let undo = if found.hdr.protocol == RTPROT_MPOLICE {
            Undo::Delete {
                prefix: prefix.clone(),
                route: found.delete_request(),
            }
        } else {
            Undo::Restore {
                prefix: prefix.clone(),
                route: found.new_request(None),
            }
        };
        let req = found.new_request(Some(r.advmss));
        exchange(sock, &prefix, Step::Replace, |buf, seq| {
            req.encode(
                buf,
                RTM_NEWROUTE,
                NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
                seq,
            );
        })?;
        info!(
            prefix = %prefix,
            advmss = r.advmss,
            previous = ?found.metric(RTAX_ADVMSS),
            protocol = found.hdr.protocol,
            "advmss set on the existing route"
        );
        return Ok(undo);
    }
    let dst = r.dst_bytes();
    let reply = exchange(sock, &prefix, Step::Lookup, |buf, seq| {
        wire::lookup_request(buf, seq, r.family(), &dst);
    })?;
    let via = reply.first().ok_or_else(|| RouteError::BadReply {
        prefix: prefix.clone(),
        step: Step::Lookup,
        what: "no route in the reply",
    })?;
    if via.hdr.rtype != RTN_UNICAST {
        return Err(RouteError::NotUnicast {
            prefix,
            kind: route_type_name(via.hdr.rtype),
        });
    }
    let add = added_route(r, via);
    // NLM_F_EXCL: fail rather than touch a route that appeared since the dump.
    exchange(sock, &prefix, Step::Add, |buf, seq| {
        add.encode(
            buf,
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_ACK | NLM_F_EXCL,
            seq,
        );
    })?;
    info!(prefix = %prefix, advmss = r.advmss, "advmss route added");
    Ok(Undo::Delete {
        prefix,
        route: add.delete_request(),
    })
}

/// Build one request with a fresh sequence number and exchange it.
fn exchange(
    sock: &mut NlSocket,
    prefix: &str,
    step: Step,
    build: impl FnOnce(&mut Vec<u8>, u32),
) -> Result<Vec<Route>, RouteError> {
    let seq = sock.next_seq();
    let mut buf = Vec::new();
    build(&mut buf, seq);
    super::wire::routes(sock, &buf, seq).map_err(|e| map_err(prefix, step, e))
}

/// Name the prefix and step of a failed exchange.
pub(crate) fn map_err(prefix: &str, step: Step, e: NlError) -> RouteError {
    match e {
        NlError::Kernel(k) => RouteError::from_kernel(prefix, step, k.errno, k.text),
        NlError::Io(_, source) if source.raw_os_error() == Some(libc::EPERM) => {
            RouteError::PermissionDenied {
                prefix: prefix.to_owned(),
                step,
            }
        }
        NlError::Io(op, source) => RouteError::Io {
            prefix: prefix.to_owned(),
            op,
            source,
        },
    }
}

/// Return the main-table route for exactly `r`'s prefix that the kernel uses
/// (lowest metric), ignoring TOS- and source-specific routes.
pub fn exact_route<'a>(table: &'a [Route], r: &AdvmssRoute) -> Option<&'a Route> {
    let dst = r.dst_bytes();
    table
        .iter()
        .filter(|t| {
            t.hdr.family == r.family()
                && t.table() == u32::from(RT_TABLE_MAIN)
                && t.hdr.dst_len == r.prefix_len
                && t.hdr.src_len == 0
                && t.hdr.tos == 0
                && t.hdr.flags & RTM_F_CLONED == 0
                && match t.attr(RTA_DST) {
                    Some(d) => d == dst.as_slice(),
                    None => r.prefix_len == 0,
                }
        })
        .min_by_key(|t| t.priority())
}

/// Return the route to add for `r`, through the nexthop of the kernel's answer `via`.
pub fn added_route(r: &AdvmssRoute, via: &Route) -> Route {
    let gateway = via.attr(RTA_GATEWAY).or_else(|| via.attr(RTA_VIA));
    let scope = if gateway.is_some() || r.family() != libc::AF_INET as u8 {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let mut route = Route {
        hdr: RtHdr {
            family: r.family(),
            dst_len: r.prefix_len,
            table: RT_TABLE_MAIN,
            protocol: RTPROT_MPOLICE,
            scope,
            rtype: RTN_UNICAST,
            flags: via.hdr.flags & RTNH_F_ONLINK,
            ..RtHdr::default()
        },
        attrs: vec![(RTA_TABLE, u32::from(RT_TABLE_MAIN).to_ne_bytes().to_vec())],
    };
    if r.prefix_len > 0 {
        route.attrs.push((RTA_DST, r.dst_bytes()));
    }
    for t in [RTA_GATEWAY, RTA_VIA, RTA_OIF] {
        if let Some(p) = via.attr(t) {
            route.attrs.push((t, p.to_vec()));
        }
    }
    // An empty metrics set plus advmss: the same bytes the replace path produces.
    route
        .attrs
        .push((wire::RTA_METRICS, wire::rebuild_metrics(&[], r.advmss)));
    route
}

/// Name a route type (`rtm_type`) as `ip route` does.
fn route_type_name(rtype: u8) -> &'static str {
    match rtype {
        2 => "local",
        3 => "broadcast",
        4 => "anycast",
        5 => "multicast",
        6 => "blackhole",
        7 => "unreachable",
        8 => "prohibit",
        9 => "throw",
        _ => "a non-unicast route",
    }
}
