//! Encode and decode nfnetlink_queue messages.
//!
//! Invariants: every decoder takes untrusted bytes and returns `None` (or stops
//! iterating) on any length that does not fit; nothing here indexes without a
//! bounds check, so no input can panic. Netlink headers and attribute headers
//! are in host byte order; nfnetlink payloads (queue number, ids, verdicts,
//! marks, ifindexes) are big-endian.

use std::ops::Range;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nfgenmsg`.
pub const NFGEN_HDRLEN: usize = 4;
/// Length of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;

pub const NLMSG_ERROR: u16 = 2;

pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFNETLINK_V0: u8 = 0;

pub const NFQNL_MSG_PACKET: u16 = NFNL_SUBSYS_QUEUE << 8;
pub const NFQNL_MSG_VERDICT: u16 = (NFNL_SUBSYS_QUEUE << 8) | 1;
pub const NFQNL_MSG_CONFIG: u16 = (NFNL_SUBSYS_QUEUE << 8) | 2;
pub const NFQNL_MSG_VERDICT_BATCH: u16 = (NFNL_SUBSYS_QUEUE << 8) | 3;

pub const NFQA_PACKET_HDR: u16 = 1;
pub const NFQA_VERDICT_HDR: u16 = 2;
pub const NFQA_MARK: u16 = 3;
pub const NFQA_IFINDEX_INDEV: u16 = 5;
pub const NFQA_IFINDEX_OUTDEV: u16 = 6;
pub const NFQA_PAYLOAD: u16 = 10;
pub const NFQA_CAP_LEN: u16 = 13;
pub const NFQA_SKB_INFO: u16 = 14;

pub const NFQA_CFG_CMD: u16 = 1;
pub const NFQA_CFG_PARAMS: u16 = 2;
pub const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
pub const NFQA_CFG_MASK: u16 = 4;
pub const NFQA_CFG_FLAGS: u16 = 5;

pub const NFQNL_CFG_CMD_BIND: u8 = 1;
pub const NFQNL_CFG_CMD_UNBIND: u8 = 2;
pub const NFQNL_COPY_PACKET: u8 = 2;

pub const NFQA_CFG_F_FAIL_OPEN: u32 = 1 << 0;
pub const NFQA_CFG_F_GSO: u32 = 1 << 2;

/// Attribute type bits without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Round `len` up to the 4-byte netlink alignment.
pub const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Builds netlink messages into a caller-owned buffer (reused on the hot path).
pub struct MsgWriter<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> MsgWriter<'a> {
    /// Start an nfnetlink message (nlmsghdr + nfgenmsg) appended to `buf`.
    pub fn new(buf: &'a mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, queue: u16) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // portid 0: the kernel fills in ours
        buf.push(libc::AF_UNSPEC as u8);
        buf.push(NFNETLINK_V0);
        buf.extend_from_slice(&queue.to_be_bytes());
        MsgWriter { buf, start }
    }

    /// Append one attribute with its padding.
    pub fn attr(&mut self, attr_type: u16, payload: &[u8]) -> &mut Self {
        self.attr_header(attr_type, payload.len());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// Append an attribute header whose payload the caller sends separately
    /// (scatter-gather); `payload_len` must be what follows, padding included by caller.
    pub fn attr_header(&mut self, attr_type: u16, payload_len: usize) -> &mut Self {
        let len = u16::try_from(NLA_HDRLEN + payload_len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self
    }

    /// Zero-pad the buffer to 4-byte alignment.
    fn pad(&mut self) {
        let len = self.buf.len() - self.start;
        self.buf.resize(self.start + align4(len), 0);
    }

    /// Patch the total length, adding `trailing` bytes the caller sends separately.
    pub fn finish(&mut self, trailing: usize) {
        let total = u32::try_from(self.buf.len() - self.start + trailing).unwrap_or(u32::MAX);
        self.buf[self.start..self.start + 4].copy_from_slice(&total.to_ne_bytes());
    }
}

/// Append a config command message (bind / unbind).
pub fn config_cmd(buf: &mut Vec<u8>, seq: u32, queue: u16, cmd: u8, ack: bool) {
    let flags = if ack { NLM_F_ACK } else { 0 };
    // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf }: pf unused for BIND.
    MsgWriter::new(buf, NFQNL_MSG_CONFIG, flags, seq, queue)
        .attr(NFQA_CFG_CMD, &[cmd, 0, 0, 0])
        .finish(0);
}

/// Append a copy-mode message (always NFQNL_COPY_PACKET).
pub fn config_params(buf: &mut Vec<u8>, seq: u32, queue: u16, copy_range: u32) {
    let mut p = [0u8; 5]; // packed struct nfqnl_msg_config_params
    p[..4].copy_from_slice(&copy_range.to_be_bytes());
    p[4] = NFQNL_COPY_PACKET;
    MsgWriter::new(buf, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_PARAMS, &p)
        .finish(0);
}

/// Append a queue-length message.
pub fn config_maxlen(buf: &mut Vec<u8>, seq: u32, queue: u16, max_len: u32) {
    MsgWriter::new(buf, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
        .finish(0);
}

/// Append a flags message; `mask` names the flags it sets or clears.
pub fn config_flags(buf: &mut Vec<u8>, seq: u32, queue: u16, flags: u32, mask: u32) {
    MsgWriter::new(buf, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_FLAGS, &flags.to_be_bytes())
        .attr(NFQA_CFG_MASK, &mask.to_be_bytes())
        .finish(0);
}

/// Append a verdict header; with `payload_len` the NFQA_PAYLOAD header follows and
/// the caller sends the payload bytes plus `align4` padding after this buffer.
pub fn verdict(
    buf: &mut Vec<u8>,
    batch: bool,
    queue: u16,
    id: u32,
    verdict: u32,
    payload_len: Option<usize>,
) {
    let msg_type = if batch {
        NFQNL_MSG_VERDICT_BATCH
    } else {
        NFQNL_MSG_VERDICT
    };
    let mut hdr = [0u8; 8]; // struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id }
    hdr[..4].copy_from_slice(&verdict.to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    let mut w = MsgWriter::new(buf, msg_type, 0, 0, queue);
    w.attr(NFQA_VERDICT_HDR, &hdr);
    match payload_len {
        Some(len) => {
            w.attr_header(NFQA_PAYLOAD, len);
            w.finish(align4(len));
        }
        None => w.finish(0),
    }
}

/// A netlink message header decoded from a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlMsg {
    pub msg_type: u16,
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
        body: off + NLMSG_HDRLEN..end,
    };
    Some((msg, off.checked_add(align4(len))?.min(buf.len())))
}

/// Decode the errno of an NLMSG_ERROR body (0 = ack) and the sequence number of
/// the request it answers.
pub fn error_body(body: &[u8]) -> Option<(i32, u32)> {
    let err = i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
    // The echoed request header follows; its seq is at bytes 8..12 of it.
    let seq = u32::from_ne_bytes(body.get(12..16)?.try_into().ok()?);
    Some((-err, seq))
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
        let len = u16::from_ne_bytes([hdr[0], hdr[1]]) as usize;
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

/// Read a big-endian u32 attribute payload.
pub fn be_u32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?))
}
