//! Netfilter netlink transport: send one request (or batch) and collect every reply.
//!
//! Invariants: a socket lives in the network namespace of the thread that opened it
//! (`talk` opens one per request, in the caller's); a request is sent with a single sendmsg
//! (a batch must reach the kernel in one skb); every message carries NLM_F_ACK, and a
//! request returns once each expected sequence number has an ack or an error, once an
//! error arrived and nothing more is queued (nfnetlink replies before sendmsg returns), or
//! after `REPLY_TIMEOUT`. On a socket kept open, replies left from an earlier request (one
//! that timed out) are drained before sending and never taken for this one's.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::driver::netlink;

/// How long to wait for missing acks; nfnetlink answers synchronously, so normally 0.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Receive buffer: large enough for any nf_tables reply (an error echoes the request).
const RECV_BUF: usize = 1 << 17;

/// Receive queue we ask for, so acks of a large batch do not overflow (ENOBUFS).
const SOCK_RCVBUF: libc::c_int = 1 << 22;

const NLMSG_HDRLEN: usize = 16;

/// One message received from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// An ack (errno 0) or error (positive errno) for the request with this sequence number.
    Ack { seq: u32, errno: i32 },
    /// A data message (e.g. NEWTABLE answering GETTABLE).
    Data { seq: u32 },
}

/// A data message's type and body (after nlmsghdr), kept for callers that read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DataMsg {
    pub seq: u32,
    pub kind: u16,
    pub body: Vec<u8>,
}

/// Send `pages` as one message on a new socket and return all replies for the sequence
/// numbers `expect`.
pub(super) fn talk(pages: &[&[u8]], expect: Range<u32>) -> io::Result<Vec<Reply>> {
    Ok(NlSocket::open()?.talk(pages, expect)?.0)
}

/// A NETLINK_NETFILTER socket, bound to a port the kernel picks.
#[derive(Debug)]
pub(super) struct NlSocket {
    fd: OwnedFd,
}

impl NlSocket {
    /// Open and bind a socket in the calling thread's network namespace.
    pub(super) fn open() -> io::Result<NlSocket> {
        let fd = netlink::open_bound(libc::NETLINK_NETFILTER).map_err(|(_, e)| e)?;
        set_rcvbuf(fd.as_raw_fd());
        Ok(NlSocket { fd })
    }

    /// Send `pages` as one message; return the acks and errors for the sequence numbers
    /// `expect`, and their data messages.
    pub(super) fn talk(
        &self,
        pages: &[&[u8]],
        expect: Range<u32>,
    ) -> io::Result<(Vec<Reply>, Vec<DataMsg>)> {
        let fd = self.fd.as_raw_fd();
        let mut buf = vec![0u8; RECV_BUF];
        // Whatever is queued now answers an earlier request (and a receive queue that
        // overflowed then reports it once, here).
        while readable(fd, Duration::ZERO)? {
            match recv(fd, &mut buf) {
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                r => {
                    r?;
                }
            }
        }
        send(fd, pages)?;
        let mut replies = Vec::new();
        let mut data = Vec::new();
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while !all_acked(&replies, &expect) {
            // After a refused batch the kernel acks no batch end: take what is queued and stop.
            let failed = replies
                .iter()
                .any(|r| matches!(r, Reply::Ack { errno, .. } if *errno != 0));
            let wait = if failed {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            if (wait.is_zero() && !failed) || !readable(fd, wait)? {
                break;
            }
            let n = recv(fd, &mut buf)?;
            parse(&buf[..n], &mut replies, &mut data)?;
            replies.retain(|r| match r {
                Reply::Ack { seq, .. } | Reply::Data { seq } => expect.contains(seq),
            });
            data.retain(|d| expect.contains(&d.seq));
        }
        Ok((replies, data))
    }
}

/// Return true if every seq in `expect` has an ack or an error.
pub(super) fn all_acked(replies: &[Reply], expect: &Range<u32>) -> bool {
    expect.clone().all(|s| {
        replies
            .iter()
            .any(|r| matches!(r, Reply::Ack { seq, .. } if *seq == s))
    })
}

/// Make room for one ack per message of a large batch: acks carry only their header
/// (NETLINK_CAP_ACK), and the receive queue is forced past rmem_max where we may
/// (SO_RCVBUFFORCE, CAP_NET_ADMIN), else raised as far as rmem_max allows.
fn set_rcvbuf(fd: libc::c_int) {
    let set = |level, name, value: libc::c_int| netlink::setsockopt(&fd, level, name, &value);
    if let Err(e) = set(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1) {
        tracing::debug!("NETLINK_CAP_ACK on nfnetlink socket: {e}");
    }
    if let Err(e) = netlink::force_rcvbuf(&fd, SOCK_RCVBUF) {
        tracing::debug!("SO_RCVBUF on nfnetlink socket: {e}");
    }
}

/// Send all pages in one sendmsg to the kernel (port 0).
fn send(fd: libc::c_int, pages: &[&[u8]]) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = pages
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut kernel).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    let total: usize = pages.iter().map(|p| p.len()).sum();
    // SAFETY: msg points at `kernel` and `iov`, which point at `pages`; all outlive the call
    // and the kernel only reads from them.
    let sent = unsafe { libc::sendmsg(fd, &msg, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != total {
        return Err(io::Error::other("netlink sendmsg sent a partial message"));
    }
    Ok(())
}

/// Wait up to `wait` for the socket to become readable.
fn readable(fd: libc::c_int, wait: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

/// Receive one datagram.
fn recv(fd: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Append the messages in one datagram to `out`, and data messages' bodies to `msgs`.
fn parse(mut data: &[u8], out: &mut Vec<Reply>, msgs: &mut Vec<DataMsg>) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply");
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32_at(data, 8);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(bad());
        }
        match i32::from(kind) {
            libc::NLMSG_ERROR => {
                if len < NLMSG_HDRLEN + 4 {
                    return Err(bad());
                }
                let errno = -(u32_at(data, NLMSG_HDRLEN) as i32);
                out.push(Reply::Ack { seq, errno });
            }
            libc::NLMSG_NOOP | libc::NLMSG_DONE => {}
            _ => {
                out.push(Reply::Data { seq });
                msgs.push(DataMsg {
                    seq,
                    kind,
                    body: data[NLMSG_HDRLEN..len].to_vec(),
                });
            }
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Ok(())
}

/// Read a native-endian u32 at `at` (callers check bounds).
fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn parses_acks_errors_and_data() {
        let mut data = msg(0x0a00, 5, &[1, 2, 3, 4]);
        data.extend(msg(libc::NLMSG_ERROR as u16, 5, &0i32.to_ne_bytes()));
        data.extend(msg(
            libc::NLMSG_ERROR as u16,
            6,
            &(-libc::ENOENT).to_ne_bytes(),
        ));
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        parse(&data, &mut out, &mut msgs).unwrap();
        assert_eq!(
            msgs,
            [DataMsg {
                seq: 5,
                kind: 0x0a00,
                body: vec![1, 2, 3, 4]
            }]
        );
        assert_eq!(
            out,
            [
                Reply::Data { seq: 5 },
                Reply::Ack { seq: 5, errno: 0 },
                Reply::Ack {
                    seq: 6,
                    errno: libc::ENOENT
                }
            ]
        );
        assert!(all_acked(&out, &(5..7)));
        assert!(!all_acked(&out, &(5..8)));
    }

    #[test]
    fn rejects_truncated_reply() {
        let mut data = msg(libc::NLMSG_ERROR as u16, 1, &0i32.to_ne_bytes());
        data[0] = 200;
        assert!(parse(&data, &mut Vec::new(), &mut Vec::new()).is_err());
    }
}
