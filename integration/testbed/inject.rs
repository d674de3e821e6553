//! Send hand-built IP packets from inside a testbed host, as if that host had sent them.
//!
//! The packet goes out through a raw socket with the IP header included (IPv4:
//! `IPPROTO_RAW`, which implies `IP_HDRINCL`; IPv6: `IPV6_HDRINCL`, Linux 4.5+), so the
//! kernel routes it by its destination and sends the bytes as they are: a forged marker,
//! a lying count or a stale capability reaches the engines exactly as built.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

use super::{Host, Testbed, in_netns};

/// `IPV6_HDRINCL` from linux/in6.h (not in every libc release).
const IPV6_HDRINCL: libc::c_int = 36;

/// Send one complete IPv4 or IPv6 packet from inside `host`'s namespace.
pub fn inject(tb: &Testbed, host: Host, packet: &[u8]) -> Result<()> {
    let dst = destination(packet)?;
    in_netns(tb, host, || {
        let (family, level, opt) = match dst {
            IpAddr::V4(_) => (libc::AF_INET, None, 0),
            IpAddr::V6(_) => (libc::AF_INET6, Some(libc::IPPROTO_IPV6), IPV6_HDRINCL),
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly opened socket that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Some(level) = level {
            let on: libc::c_int = 1;
            // SAFETY: `on` outlives the call and its length is passed exactly.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    level,
                    opt,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                bail!("IPV6_HDRINCL: {}", std::io::Error::last_os_error());
            }
        }
        // Port 0: on an IPv6 raw socket a port would be read as the protocol.
        let (addr, len) = sockaddr(dst);
        // SAFETY: the buffer and the address outlive the call and their lengths are exact.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                len,
            )
        };
        if sent < 0 {
            bail!("sendto {dst}: {}", std::io::Error::last_os_error());
        }
        if sent as usize != packet.len() {
            bail!("sendto {dst}: sent {sent} of {} bytes", packet.len());
        }
        Ok(())
    })
}

/// Read the destination address from an IP header.
fn destination(p: &[u8]) -> Result<IpAddr> {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => Ok(IpAddr::from(<[u8; 4]>::try_from(&p[16..20])?)),
        Some(6) if p.len() >= 40 => Ok(IpAddr::from(<[u8; 16]>::try_from(&p[24..40])?)),
        _ => bail!("not an IPv4 or IPv6 packet ({} bytes)", p.len()),
    }
}

/// A `sockaddr_storage` holding `dst` with port 0, and the length of the part in use.
fn sockaddr(dst: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in.
            let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut ss).cast(), s) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in6.
            let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_addr.s6_addr = a.octets();
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast(), s) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}
