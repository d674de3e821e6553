//! Netlink framing shared by our NETLINK_NETFILTER (NFQUEUE) and NETLINK_ROUTE clients:
//! message headers, attributes, acks and errors.
//!
//! Invariants: every decoder takes untrusted bytes and returns `None` (or stops
//! iterating) on any length that does not fit; nothing here indexes without a
//! bounds check, so no input can panic. Headers and attribute headers are in
//! host byte order.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nlattr` (same layout as `struct rtattr`).
pub const NLA_HDRLEN: usize = 4;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an NLMSG_ERROR: the echoed request was cut to its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR: extended-ack attributes follow the echoed request.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// Extended-ack attribute carrying the kernel's error text.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

/// Attribute type bits without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Round `len` up to the 4-byte netlink alignment.
pub const fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// Append one attribute (header, payload, padding) to `buf`.
pub fn push_attr(buf: &mut Vec<u8>, attr_type: u16, payload: &[u8]) {
    let len = u16::try_from(NLA_HDRLEN + payload.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&attr_type.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Builds one netlink message into a caller-owned buffer.
pub struct MsgWriter<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> MsgWriter<'a> {
    /// Start a message (nlmsghdr) appended to `buf`; `buf` must be 4-byte aligned in length.
    pub fn new(buf: &'a mut Vec<u8>, msg_type: u16, flags: u16, seq: u32) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // portid 0: the kernel fills in ours
        MsgWriter { buf, start }
    }

    /// Append raw bytes (the family header; a multiple of 4 bytes long).
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Append one attribute with its padding.
    pub fn attr(&mut self, attr_type: u16, payload: &[u8]) -> &mut Self {
        push_attr(self.buf, attr_type, payload);
        self
    }

    /// Append an attribute header whose payload (and padding) the caller sends
    /// separately, scatter-gather; `payload_len` is the payload's length.
    pub fn attr_header(&mut self, attr_type: u16, payload_len: usize) -> &mut Self {
        let len = u16::try_from(NLA_HDRLEN + payload_len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self
    }

    /// Patch the total length.
    pub fn finish(&mut self) {
        self.finish_with(0);
    }

    /// Patch the total length, counting `trailing` bytes the caller sends separately.
    pub fn finish_with(&mut self, trailing: usize) {
        let total = u32::try_from(self.buf.len() - self.start + trailing).unwrap_or(u32::MAX);
        if let Some(len) = self.buf.get_mut(self.start..self.start + 4) {
            len.copy_from_slice(&total.to_ne_bytes());
        }
    }
}

/// A netlink message header decoded from a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlMsg {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Byte range of the message body (after nlmsghdr) in the datagram.
    pub body: Range<usize>,
}

/// Decode the message at `off` in `buf`; returns it and the offset of the next
/// one, or `None` when the rest is too short or the length field lies.
pub fn next_msg(buf: &[u8], off: usize) -> Option<(NlMsg, usize)> {
    let hdr = buf.get(off..off.checked_add(NLMSG_HDRLEN)?)?;
    let len = u32::from_ne_bytes(hdr[0..4].try_into().ok()?) as usize;
    if len < NLMSG_HDRLEN {
        return None;
    }
    let end = off.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    let msg = NlMsg {
        msg_type: u16::from_ne_bytes(hdr[4..6].try_into().ok()?),
        flags: u16::from_ne_bytes(hdr[6..8].try_into().ok()?),
        seq: u32::from_ne_bytes(hdr[8..12].try_into().ok()?),
        body: off + NLMSG_HDRLEN..end,
    };
    Some((msg, off.checked_add(align4(len))?.min(buf.len())))
}

/// Iterate every well-formed message in a datagram.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = NlMsg> + '_ {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let (msg, next) = next_msg(buf, off)?;
        off = next;
        Some(msg)
    })
}

/// An NLMSG_ERROR body: errno (0 = ack) and the kernel's extended-ack text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    pub errno: i32,
    pub text: Option<String>,
}

/// Decode an NLMSG_ERROR body; `flags` are the error message's header flags.
pub fn error_body(body: &[u8], flags: u16) -> Option<ErrorMsg> {
    let err = i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
    Some(ErrorMsg {
        errno: err.checked_neg()?,
        text: extack_text(body, flags),
    })
}

/// Return the extended-ack error text of an NLMSG_ERROR body, if it fits.
fn extack_text(body: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The echoed request follows the errno: only its header when capped, else all of it.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?) as usize
    };
    let tlv_start = 4usize.checked_add(align4(echoed))?;
    if tlv_start > body.len() {
        return None;
    }
    let (_, r) = Attrs::new(body, tlv_start..body.len()).find(|(t, _)| *t == NLMSGERR_ATTR_MSG)?;
    let text = body.get(r)?.split(|c| *c == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(text).into_owned()).filter(|s| !s.is_empty())
}

/// Iterates `(type, payload range)` over attributes in `buf[range]`; stops at the
/// first attribute whose length does not fit.
pub struct Attrs<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Attrs<'a> {
    /// Iterate attributes inside `range` of `buf` (a range outside `buf` yields nothing).
    pub fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        let end = range.end.min(buf.len());
        Attrs {
            buf,
            pos: range.start,
            end,
        }
    }
}

impl Iterator for Attrs<'_> {
    type Item = (u16, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let hdr_end = self.pos.checked_add(NLA_HDRLEN)?;
        if hdr_end > self.end {
            return None;
        }
        let hdr = self.buf.get(self.pos..hdr_end)?;
        let len = usize::from(u16::from_ne_bytes([hdr[0], hdr[1]]));
        let attr_type = u16::from_ne_bytes([hdr[2], hdr[3]]) & NLA_TYPE_MASK;
        let payload_end = self.pos.checked_add(len)?;
        if len < NLA_HDRLEN || payload_end > self.end {
            self.pos = self.end; // a lying length ends the walk
            return None;
        }
        let item = (attr_type, hdr_end..payload_end);
        self.pos = self.pos.checked_add(align4(len))?.min(self.end);
        Some(item)
    }
}

/// Read a host-order u32 attribute payload.
pub fn ne_u32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}
/// Set a socket option from a plain value.
pub fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    let len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` points to a live T of `len` bytes for the duration of the call.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (v as *const T).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's netlink address (portid 0, no groups); also the address we bind to.
pub fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; zeroed is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

/// Open a netlink socket of `protocol` in the calling thread's network namespace, bound
/// to a port the kernel assigns. An error names the call that failed.
pub fn open_bound(protocol: libc::c_int) -> Result<OwnedFd, (&'static str, io::Error)> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if raw < 0 {
        return Err(("socket", io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let addr = kernel_addr();
    // SAFETY: `addr` is a valid sockaddr_nl of the size given (port 0: the kernel
    // assigns one).
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(("bind", io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Set a socket's receive buffer, past `net.core.rmem_max` when privileged
/// (SO_RCVBUFFORCE), else as far as it allows (SO_RCVBUF).
pub fn force_rcvbuf(fd: &impl AsRawFd, bytes: libc::c_int) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes))
}
