//! Raw IP sockets for the packets the engine makes itself: the content rules' SYN-ACKs
//! and resets (`ports::splice`). Each packet is sent whole, headers included, as this
//! host sends any packet: through the output hooks, so the role's outbound chain sees
//! it like the server's own.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One raw socket per family (IPPROTO_RAW: the packet brings its own IP header).
pub struct Injector {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl Injector {
    /// Open both sockets (needs CAP_NET_RAW).
    pub fn open() -> io::Result<Injector> {
        Ok(Injector {
            v4: raw_socket(libc::AF_INET)?,
            v6: raw_socket(libc::AF_INET6)?,
        })
    }

    /// Send one IP packet to its destination address.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        // SAFETY (both arms): the address structs are plain data; zeroed is valid.
        let sent = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                to.sin_family = libc::AF_INET as libc::sa_family_t;
                to.sin_addr.s_addr =
                    u32::from_ne_bytes([packet[16], packet[17], packet[18], packet[19]]);
                send_to(&self.v4, packet, &to)
            }
            Some(6) if packet.len() >= 40 => {
                let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                to.sin6_addr.s6_addr.copy_from_slice(&packet[24..40]);
                send_to(&self.v6, packet, &to)
            }
            _ => return Err(io::Error::other("not an IP packet")),
        };
        match sent {
            Ok(n) if n == packet.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                packet.len()
            ))),
            Err(e) => Err(e),
        }
    }
}

/// A non-blocking raw socket of `family` for whole IP packets.
fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// sendto(2) of `packet` to the address `to`.
fn send_to<A>(fd: &OwnedFd, packet: &[u8], to: &A) -> io::Result<usize> {
    // SAFETY: `packet` and `to` are valid for the lengths given; `A` is a sockaddr type.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (to as *const A).cast(),
            size_of::<A>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
