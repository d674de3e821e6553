//! Encode and decode nfnetlink_queue messages.
//!
//! Invariants: every decoder takes untrusted bytes and returns `None` (or stops
//! iterating) on any length that does not fit; nothing here indexes without a
//! bounds check, so no input can panic. Netlink headers and attribute headers
//! are in host byte order; nfnetlink payloads (queue number, ids, verdicts,
//! marks, ifindexes) are big-endian.

pub use crate::driver::netlink::{
    Attrs, MsgWriter, NLA_HDRLEN, NLM_F_ACK, NLMSG_ERROR, NLMSG_HDRLEN, NlMsg, align4, next_msg,
};

/// Length of `struct nfgenmsg`.
pub const NFGEN_HDRLEN: usize = 4;

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

/// Start an nfnetlink message (nlmsghdr + nfgenmsg for `queue`) appended to `buf`.
fn nfnl<'a>(
    buf: &'a mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    queue: u16,
) -> MsgWriter<'a> {
    let mut w = MsgWriter::new(buf, msg_type, flags, seq);
    let q = queue.to_be_bytes();
    w.bytes(&[libc::AF_UNSPEC as u8, NFNETLINK_V0, q[0], q[1]]);
    w
}

/// Append a config command message (bind / unbind).
pub fn config_cmd(buf: &mut Vec<u8>, seq: u32, queue: u16, cmd: u8, ack: bool) {
    let flags = if ack { NLM_F_ACK } else { 0 };
    // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf }: pf unused for BIND.
    nfnl(buf, NFQNL_MSG_CONFIG, flags, seq, queue)
        .attr(NFQA_CFG_CMD, &[cmd, 0, 0, 0])
        .finish();
}

/// Append a copy-mode message (always NFQNL_COPY_PACKET).
pub fn config_params(buf: &mut Vec<u8>, seq: u32, queue: u16, copy_range: u32) {
    let mut p = [0u8; 5]; // packed struct nfqnl_msg_config_params
    p[..4].copy_from_slice(&copy_range.to_be_bytes());
    p[4] = NFQNL_COPY_PACKET;
    nfnl(buf, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_PARAMS, &p)
        .finish();
}

/// Append a queue-length message; without `ack` the kernel answers only an error.
pub fn config_maxlen(buf: &mut Vec<u8>, seq: u32, queue: u16, max_len: u32, ack: bool) {
    let flags = if ack { NLM_F_ACK } else { 0 };
    nfnl(buf, NFQNL_MSG_CONFIG, flags, seq, queue)
        .attr(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
        .finish();
}

/// Append a flags message; `mask` names the flags it sets or clears.
pub fn config_flags(buf: &mut Vec<u8>, seq: u32, queue: u16, flags: u32, mask: u32) {
    nfnl(buf, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_FLAGS, &flags.to_be_bytes())
        .attr(NFQA_CFG_MASK, &mask.to_be_bytes())
        .finish();
}

/// Append a verdict header, and the packet's new mark if any; with `payload_len` the
/// NFQA_PAYLOAD header follows and the caller sends the payload bytes plus `align4`
/// padding after this buffer.
pub fn verdict(
    buf: &mut Vec<u8>,
    (batch, queue): (bool, u16),
    id: u32,
    verdict: u32,
    mark: Option<u32>,
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
    let mut w = nfnl(buf, msg_type, 0, 0, queue);
    w.attr(NFQA_VERDICT_HDR, &hdr);
    if let Some(m) = mark {
        w.attr(NFQA_MARK, &m.to_be_bytes());
    }
    match payload_len {
        Some(len) => {
            w.attr_header(NFQA_PAYLOAD, len);
            w.finish_with(align4(len));
        }
        None => w.finish(),
    }
}

/// Decode an NLMSG_ERROR message of `data`: its errno (0 = ack) and the sequence
/// number of the request it answers.
pub fn error_of(data: &[u8], msg: &NlMsg) -> Option<(i32, u32)> {
    let e = crate::driver::netlink::error_body(data.get(msg.body.clone())?, 0)?;
    Some((e.errno, msg.seq))
}

/// Read a big-endian u32 attribute payload.
pub fn be_u32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?))
}
