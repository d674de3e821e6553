//! The kernel's listening TCP sockets, read with sock_diag: each one's port, the
//! connections waiting in its accept queue, and the queue's limit. This is the seed's
//! "connections waiting to be accepted", from the kernel itself.

use std::io;

use serde::{Deserialize, Serialize};

use crate::driver::netlink::{MsgWriter, NLM_F_DUMP};
use crate::driver::nlsocket::{NlError, NlSocket};

/// One listening socket (IPv4 and IPv6 sockets of one port are summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub port: u16,
    /// Connections established and not yet accepted by the server.
    pub waiting: u32,
    /// The most the accept queue holds (the listen backlog).
    pub backlog: u32,
}

/// `SOCK_DIAG_BY_FAMILY`, the request and its answers.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` in the kernel's state numbering.
const TCP_LISTEN: u8 = 10;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte id.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`, through its inode.
const MSG_LEN: usize = 72;

/// The listening TCP sockets of this network namespace.
pub fn listeners() -> io::Result<Vec<Listener>> {
    let mut sock = NlSocket::open(libc::NETLINK_SOCK_DIAG).map_err(to_io)?;
    let mut found: Vec<Listener> = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let seq = sock.next_seq();
        let mut buf = Vec::new();
        request(&mut buf, seq, family as u8);
        sock.exchange(&buf, seq, |kind, body| {
            if kind != SOCK_DIAG_BY_FAMILY {
                return;
            }
            if let Some(l) = decode(body) {
                match found.iter_mut().find(|f| f.port == l.port) {
                    Some(f) => {
                        f.waiting += l.waiting;
                        f.backlog += l.backlog;
                    }
                    None => found.push(l),
                }
            }
        })
        .map_err(to_io)?;
    }
    found.sort_by_key(|l| l.port);
    Ok(found)
}

/// Append a dump request for the listening TCP sockets of `family`.
pub fn request(buf: &mut Vec<u8>, seq: u32, family: u8) {
    let mut req = [0u8; REQ_LEN];
    req[0] = family;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    let mut w = MsgWriter::new(buf, SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, seq);
    w.bytes(&req);
    w.finish();
}

/// A listening socket from an `inet_diag_msg` (None: short, or not listening). For a
/// listener the kernel puts the accept queue's length in `rqueue` and its limit in
/// `wqueue`.
pub fn decode(body: &[u8]) -> Option<Listener> {
    let m = body.get(..MSG_LEN)?;
    if m[1] != TCP_LISTEN {
        return None;
    }
    let ne = |at: usize| u32::from_ne_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
    Some(Listener {
        port: u16::from_be_bytes([m[4], m[5]]),
        waiting: ne(56),
        backlog: ne(60),
    })
}

fn to_io(e: NlError) -> io::Error {
    match e {
        NlError::Kernel(k) => io::Error::from_raw_os_error(k.errno),
        NlError::Io(op, e) => io::Error::new(e.kind(), format!("sock_diag {op}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::netlink::{NLM_F_REQUEST, next_msg};

    #[test]
    fn the_request_asks_for_listening_tcp_sockets_and_answers_decode() {
        let mut buf = Vec::new();
        request(&mut buf, 7, libc::AF_INET6 as u8);
        let (msg, _) = next_msg(&buf, 0).unwrap();
        assert_eq!(
            (msg.msg_type, msg.flags, msg.seq),
            (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 7)
        );
        let body = &buf[msg.body];
        assert_eq!((body.len(), body[0], body[1]), (REQ_LEN, 10, 6));
        assert_eq!(body[4..8], (1u32 << 10).to_ne_bytes());
        // An answer: port 8081, 3 waiting of 128.
        let mut m = vec![0u8; MSG_LEN];
        (m[0], m[1]) = (10, TCP_LISTEN);
        m[4..6].copy_from_slice(&8081u16.to_be_bytes());
        m[56..60].copy_from_slice(&3u32.to_ne_bytes());
        m[60..64].copy_from_slice(&128u32.to_ne_bytes());
        let l = decode(&m).unwrap();
        assert_eq!((l.port, l.waiting, l.backlog), (8081, 3, 128));
        m[1] = 1; // established: not a listener
        assert_eq!(decode(&m), None);
        for end in 0..MSG_LEN {
            assert_eq!(decode(&m[..end]), None);
        }
    }
}
