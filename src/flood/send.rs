//! A raw socket that sends whole IP packets, header included, in `sendmmsg` batches.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

/// IPv6 `IPV6_HDRINCL` from linux/in6.h (not in every libc release).
const IPV6_HDRINCL: libc::c_int = 36;

/// A raw socket that sends whole IP packets to one destination.
pub(super) struct RawSender {
    sock: OwnedFd,
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
}

impl RawSender {
    pub(super) fn open(dst: IpAddr) -> Result<RawSender> {
        let family = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                bail!("raw socket: {e} (mpolice flood needs root or CAP_NET_RAW)");
            }
            bail!("raw socket: {e}");
        }
        // SAFETY: fd is a freshly opened socket that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        if !dst.is_ipv4() {
            setsockopt_int(&sock, libc::IPPROTO_IPV6, IPV6_HDRINCL, 1).context("IPV6_HDRINCL")?;
        }
        // A larger send buffer, so a queueing qdisc on our own link does not stall each
        // batch; not fatal if refused.
        let _ = setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        let (addr, addr_len) = sockaddr(dst);
        Ok(RawSender {
            sock,
            addr,
            addr_len,
        })
    }

    /// Send `bufs` (each of `len` bytes) in one sendmmsg; return how many went, or
    /// None if the kernel had no buffer space for the first.
    pub(super) fn send(&mut self, bufs: &mut [Vec<u8>], len: usize) -> Result<Option<usize>> {
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        let name = (&raw mut self.addr).cast::<libc::c_void>();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero lengths).
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = name;
                h.msg_namelen = self.addr_len;
                h.msg_iov = iov;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: every msghdr points at a live iovec, buffer and address that outlive the
        // call; the count passed is the vector's length.
        let n = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => Ok(None),
            _ => bail!("sendmmsg: {e}"),
        }
    }
}

fn setsockopt_int(
    sock: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> Result<()> {
    // SAFETY: `v` outlives the call and its length is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A `sockaddr_storage` holding `dst` with port 0 (on an IPv6 raw socket a port would be
/// read as the protocol), and the length of the part in use.
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
