//! A `NETLINK_NETFILTER` socket: the thin unsafe layer over `libc`.
//!
//! Invariants: the socket is bound to a kernel-assigned portid, always sends to
//! the kernel (portid 0) and reports the sender of every datagram it receives;
//! every `unsafe` block passes pointers to live, correctly sized buffers owned by
//! the caller.

use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::error::QueueError;
use crate::driver::netlink;

/// Outcome of one `recv` call.
pub enum Received {
    /// A datagram is in the buffer.
    Data(Datagram),
    /// The kernel dropped messages because the socket buffer was full.
    Overrun,
    /// Nothing arrived (timeout, EAGAIN, EINTR).
    Empty,
}

/// One datagram received into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes in the buffer.
    pub len: usize,
    /// The sender's netlink port id, set by the kernel (unforgeable): 0 is the kernel.
    pub from: u32,
    /// The datagram was longer than the buffer (MSG_TRUNC): only its first `len` bytes
    /// arrived, the rest is lost.
    pub cut: bool,
}

/// An open, bound netfilter netlink socket.
pub struct NlSocket {
    fd: OwnedFd,
    portid: u32,
}

impl NlSocket {
    /// Open and bind a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, QueueError> {
        let fd = netlink::open_bound(libc::NETLINK_NETFILTER)
            .map_err(|(op, source)| QueueError::Io { op, source })?;
        let mut addr = netlink::kernel_addr();
        let mut got = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: addr/got describe a writable sockaddr_nl.
        if unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut got) } < 0 {
            return Err(QueueError::last_os("getsockname"));
        }
        Ok(NlSocket {
            fd,
            portid: addr.nl_pid,
        })
    }

    /// Return the portid the kernel assigned (shown in /proc/net/netfilter/nfnetlink_queue).
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Set the receive buffer, forcing past `rmem_max` when privileged.
    pub fn set_rcvbuf(&self, bytes: usize) -> Result<(), QueueError> {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        netlink::force_rcvbuf(&self.fd, v).map_err(|source| QueueError::Io {
            op: "setsockopt SO_RCVBUF",
            source,
        })
    }

    /// Return the receive buffer the kernel granted (about twice what was asked).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        let mut v: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v/len describe a writable c_int.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut v).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(v).unwrap_or(0))
    }

    /// Bound blocking receives by `timeout` (zero = block forever).
    pub fn set_recv_timeout(&self, timeout: Duration) -> Result<(), QueueError> {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
        };
        self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
            .map_err(|source| QueueError::Io {
                op: "setsockopt SO_RCVTIMEO",
                source,
            })
    }

    fn setsockopt<T>(&self, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
        netlink::setsockopt(&self.fd, level, name, v)
    }

    /// Send one datagram made of `parts` to the kernel.
    pub fn send(&self, parts: &[IoSlice<'_>]) -> io::Result<()> {
        let addr = netlink::kernel_addr();
        // SAFETY: msghdr is plain data; zeroed is a valid empty value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&raw const addr).cast_mut().cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // IoSlice is ABI-compatible with iovec (documented guarantee).
        msg.msg_iov = parts.as_ptr().cast_mut().cast();
        msg.msg_iovlen = parts.len() as _;
        loop {
            // SAFETY: msg points to addr and parts, both alive for the call.
            let rc = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Receive one datagram into `buf`.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<Received> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // The sender's address: port id 0 is the kernel; a datagram from another
        // process (only root can send one) is not to be trusted.
        let mut from = netlink::kernel_addr();
        from.nl_pid = u32::MAX; // refused unless the kernel fills in the sender
        // SAFETY: msghdr is plain data; zeroed is a valid empty value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&raw mut from).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: msg points to `from` and to iov, which points to `buf`, all alive
        // for the call.
        let rc = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, flags) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOBUFS) => Ok(Received::Overrun),
                Some(libc::EAGAIN | libc::EINTR) => Ok(Received::Empty),
                _ => Err(err),
            };
        }
        // Without MSG_TRUNC in `flags`, rc is what was copied, at most `buf.len()`.
        Ok(Received::Data(Datagram {
            len: rc as usize,
            from: from.nl_pid,
            cut: msg.msg_flags & libc::MSG_TRUNC != 0,
        }))
    }

    /// Wait until readable or `timeout` passes; true when readable.
    pub fn poll_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: pfd is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            r if r > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Return the raw descriptor (for epoll); ownership stays here.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
