//! `path_to`: which interface the kernel sends a destination by, and that path's MTU.
//!
//! The mbox accepts feedback only on the interfaces towards the protected servers, and
//! both roles check their configured `path_mtu` against the routes' MTU: the answer of
//! `ip route get ADDR` (RTA_OIF, and RTAX_MTU when the route or a learned path MTU sets
//! one), else the output device's own MTU.

use std::net::IpAddr;

use super::apply::map_err;
use super::error::{RouteError, Step};
use super::wire::{self, RTA_OIF, RTN_UNICAST};
use crate::driver::netlink::ne_u32;
use crate::driver::nlsocket::NlSocket;

/// Route metric: the path MTU.
const RTAX_MTU: u16 = 2;

/// How the kernel reaches one address now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTo {
    /// Output interface index.
    pub oif: u32,
    /// Largest IP packet on that path.
    pub mtu: u32,
}

/// Ask the kernel (calling thread's network namespace) how it reaches `addr`.
pub fn path_to(addr: IpAddr) -> Result<PathTo, RouteError> {
    let name = addr.to_string();
    let mut sock =
        NlSocket::open(libc::NETLINK_ROUTE).map_err(|e| map_err(&name, Step::Lookup, e))?;
    let (family, bytes) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let seq = sock.next_seq();
    let mut buf = Vec::new();
    wire::lookup_request(&mut buf, seq, family, &bytes);
    let reply = wire::routes(&mut sock, &buf, seq).map_err(|e| map_err(&name, Step::Lookup, e))?;
    let bad = |what| RouteError::BadReply {
        prefix: name.clone(),
        step: Step::Lookup,
        what,
    };
    let route = reply.first().ok_or_else(|| bad("no route in the reply"))?;
    if route.hdr.rtype != RTN_UNICAST {
        return Err(bad("not a unicast route through an interface"));
    }
    let oif = route
        .attr(RTA_OIF)
        .and_then(ne_u32)
        .ok_or_else(|| bad("no output interface"))?;
    let mtu = match route.metric(RTAX_MTU) {
        Some(mtu) => mtu,
        None => interface_mtu(oif).ok_or_else(|| bad("cannot read the interface's MTU"))?,
    };
    Ok(PathTo { oif, mtu })
}

/// The MTU of interface `ifindex` (SIOCGIFMTU), None if there is no such interface.
pub fn interface_mtu(ifindex: u32) -> Option<u32> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return None;
    }
    // SAFETY: a plain datagram socket, closed below; every pointer passed is live.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name = name;
        let ok = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) == 0;
        libc::close(fd);
        ok.then(|| u32::try_from(req.ifr_ifru.ifru_mtu).ok())
            .flatten()
    }
}
