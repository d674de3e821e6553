//! Queued-packet metadata and verdict codes.
//!
//! Invariant: `parse_packet` only returns a `PacketMsg` whose payload range lies
//! inside the buffer it parsed, and only when the mandatory packet header was
//! present and well-formed.

use std::ops::Range;

use super::netlink::{self, Attrs};

/// NFQA_SKB_INFO: checksum not yet filled in (offloaded; fine to accept as is).
pub const SKB_CSUMNOTREADY: u32 = 1 << 0;
/// NFQA_SKB_INFO: GSO super-packet larger than the device MTU.
pub const SKB_GSO: u32 = 1 << 1;
/// NFQA_SKB_INFO: checksum not verified by the receiving device.
pub const SKB_CSUM_NOTVERIFIED: u32 = 1 << 2;

/// One queued packet; its payload stays in the `Queue` buffer until the next `recv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketMsg {
    /// Packet id to pass to a verdict (counts up per queue).
    pub id: u32,
    /// Link-layer protocol in host order (0x0800 IPv4, 0x86dd IPv6).
    pub hw_protocol: u16,
    /// Netfilter hook number (NF_INET_PRE_ROUTING = 0 … POST_ROUTING = 4).
    pub hook: u8,
    /// Packet mark (0 when absent).
    pub mark: u32,
    /// Input interface index (0 when absent).
    pub indev: u32,
    /// Output interface index (0 when absent).
    pub outdev: u32,
    /// NFQA_SKB_INFO flags (`SKB_*`).
    pub skb_info: u32,
    /// Original packet length when `copy_range` truncated the payload.
    pub orig_len: Option<u32>,
    /// Byte range of the payload (the IP packet) in the receive buffer.
    pub payload: Range<usize>,
}

/// What the kernel does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    /// Send to queue `num`; with `bypass`, accept if nobody listens there.
    Queue {
        num: u16,
        bypass: bool,
    },
}

impl Verdict {
    /// Return the kernel's verdict word.
    pub fn code(self) -> u32 {
        const NF_DROP: u32 = 0;
        const NF_ACCEPT: u32 = 1;
        const NF_QUEUE: u32 = 3;
        const NF_VERDICT_FLAG_QUEUE_BYPASS: u32 = 0x8000;
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
            Verdict::Queue { num, bypass } => {
                let flag = if bypass {
                    NF_VERDICT_FLAG_QUEUE_BYPASS
                } else {
                    0
                };
                NF_QUEUE | (u32::from(num) << 16) | flag
            }
        }
    }
}

/// Parse an NFQNL_MSG_PACKET body (`buf[body]`, starting with nfgenmsg).
pub fn parse_packet(buf: &[u8], body: Range<usize>) -> Option<PacketMsg> {
    let attrs_start = body.start.checked_add(netlink::NFGEN_HDRLEN)?;
    if attrs_start > body.end || body.end > buf.len() {
        return None;
    }
    let mut header = None;
    let mut m = PacketMsg {
        id: 0,
        hw_protocol: 0,
        hook: 0,
        mark: 0,
        indev: 0,
        outdev: 0,
        skb_info: 0,
        orig_len: None,
        payload: 0..0,
    };
    for (attr_type, range) in Attrs::new(buf, attrs_start..body.end) {
        let data = buf.get(range.clone())?;
        match attr_type {
            netlink::NFQA_PACKET_HDR => header = Some(packet_hdr(data)?),
            netlink::NFQA_MARK => m.mark = netlink::be_u32(data)?,
            netlink::NFQA_IFINDEX_INDEV => m.indev = netlink::be_u32(data)?,
            netlink::NFQA_IFINDEX_OUTDEV => m.outdev = netlink::be_u32(data)?,
            netlink::NFQA_SKB_INFO => m.skb_info = netlink::be_u32(data)?,
            netlink::NFQA_CAP_LEN => m.orig_len = Some(netlink::be_u32(data)?),
            netlink::NFQA_PAYLOAD => m.payload = range,
            _ => {}
        }
    }
    (m.id, m.hw_protocol, m.hook) = header?;
    Some(m)
}

/// Decode NFQA_PACKET_HDR: (id, hw_protocol, hook).
fn packet_hdr(data: &[u8]) -> Option<(u32, u16, u8)> {
    // struct nfqnl_msg_packet_hdr { be32 id; be16 hw_protocol; u8 hook } (packed)
    let h = data.get(0..7)?;
    Some((
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        u16::from_be_bytes([h[4], h[5]]),
        h[6],
    ))
}

/// Read just the packet id of an NFQNL_MSG_PACKET body (`buf[body]`) that did not
/// parse, or was cut short: the kernel puts NFQA_PACKET_HDR first, so it is readable
/// unless the attributes before it (none, from the kernel) or the header itself are bad.
pub fn packet_id(buf: &[u8], body: Range<usize>) -> Option<u32> {
    let attrs_start = body.start.checked_add(netlink::NFGEN_HDRLEN)?;
    Attrs::new(buf, attrs_start..body.end)
        .find(|(attr_type, _)| *attr_type == netlink::NFQA_PACKET_HDR)
        .and_then(|(_, range)| packet_hdr(buf.get(range)?))
        .map(|(id, _, _)| id)
}
