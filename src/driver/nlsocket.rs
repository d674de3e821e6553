//! A netlink socket (routes, socket diagnostics) doing one request/reply exchange at a
//! time.
//!
//! Invariants: the socket lives in the network namespace of the thread that
//! opened it, wherever it is used later; every exchange waits for its own
//! terminating message (ack, error or end of dump), matched by sequence number,
//! so a kernel error is never missed and a stale message is never taken for an
//! answer; a silent kernel ends the wait after [`REPLY_TIMEOUT`]. Every `unsafe`
//! block passes pointers to live, correctly sized buffers.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::driver::netlink::{self, ErrorMsg, NLMSG_DONE, NLMSG_ERROR};

/// How long one reply may take before the exchange fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial receive buffer; grown when a datagram is larger.
const RECV_BUF: usize = 64 * 1024;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;

/// Why an exchange failed, before the caller names the prefix and step.
#[derive(Debug)]
pub enum NlError {
    /// The kernel answered with an error.
    Kernel(ErrorMsg),
    /// A system call failed (or timed out).
    Io(&'static str, io::Error),
}

/// An open netlink socket of one protocol.
#[derive(Debug)]
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Open a socket of `protocol` (`NETLINK_ROUTE`, ...) in the calling thread's
    /// network namespace.
    pub fn open(protocol: libc::c_int) -> Result<Self, NlError> {
        let fd = netlink::open_bound(protocol).map_err(|(op, e)| NlError::Io(op, e))?;
        let sock = NlSocket {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF],
        };
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
            .map_err(|e| NlError::Io("setsockopt SO_RCVTIMEO", e))?;
        // Both are optional (kernels before 4.12 / 4.20): error text, strict table filter.
        let one: libc::c_int = 1;
        let _ = sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, &one);
        let _ = sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one);
        Ok(sock)
    }

    /// Return a fresh sequence number for the next request.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send `msg` (built with sequence `seq`) and hand each message of the answer to
    /// `each` (its type and body) until its ack, error or end of dump.
    pub fn exchange(
        &mut self,
        msg: &[u8],
        seq: u32,
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<(), NlError> {
        self.send(msg).map_err(|e| NlError::Io("send", e))?;
        loop {
            let n = self.recv().map_err(|e| NlError::Io("recv", e))?;
            let data = self.buf.get(..n).unwrap_or_default();
            for m in netlink::messages(data) {
                if m.seq != seq {
                    continue; // an answer to an earlier, abandoned request
                }
                let body = data.get(m.body.clone()).unwrap_or_default();
                match m.msg_type {
                    NLMSG_ERROR => {
                        let err = netlink::error_body(body, m.flags).ok_or_else(|| {
                            NlError::Io("recv", io::Error::other("short NLMSG_ERROR"))
                        })?;
                        return if err.errno == 0 {
                            Ok(())
                        } else {
                            Err(NlError::Kernel(err))
                        };
                    }
                    NLMSG_DONE => {
                        // A dump can end with an error code in place of success.
                        let err = netlink::error_body(body, m.flags).filter(|e| e.errno != 0);
                        return match err {
                            Some(e) => Err(NlError::Kernel(e)),
                            None => Ok(()),
                        };
                    }
                    kind => each(kind, body),
                }
            }
        }
    }

    fn setsockopt<T>(&self, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
        netlink::setsockopt(&self.fd, level, name, v)
    }

    /// Send one datagram to the kernel.
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let addr = netlink::kernel_addr();
        loop {
            // SAFETY: msg and addr are alive and sized as passed.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&raw const addr).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Receive one whole datagram into `self.buf` (grown to fit); return its length.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // Peek with MSG_TRUNC to learn the datagram's real size first.
            let want = self.recv_flags(libc::MSG_PEEK | libc::MSG_TRUNC)?;
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
            let n = self.recv_flags(0)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn recv_flags(&mut self, flags: libc::c_int) -> io::Result<usize> {
        loop {
            // SAFETY: buf is a live, writable buffer of the given length.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    flags,
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel within {REPLY_TIMEOUT:?}"),
                    ));
                }
                _ => return Err(err),
            }
        }
    }
}
