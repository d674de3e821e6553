//! Packet builder for tests and benchmarks: IPv4/IPv6 TCP/UDP packets with correct checksums.
//!
//! Independent of the parser (it only shares the [`checksum`](super::checksum)
//! primitives), so tests can check one against the other. It builds what it
//! is told and never panics: oversized inputs give malformed packets.
//!
//! ```
//! use mpolice::wire::{build::Builder, parse, tcp};
//! let pkt = Builder::tcp("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 1234, 80)
//!     .flags(tcp::SYN)
//!     .mss(1460)
//!     .build();
//! assert_eq!(parse(&pkt).unwrap().payload_len, 0);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum as cs;
use super::proto;

/// Transport part of a packet being built.
#[derive(Debug, Clone)]
enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        reserved: u8,
        window: u16,
        options: Vec<u8>,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        checksum: bool,
    },
    Raw(u8),
}

/// Builder for one IP packet; the IP version follows the source address.
#[derive(Debug, Clone)]
pub struct Builder {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    ip_id: u16,
    ipv4_options: Vec<u8>,
    ipv6_ext: Vec<(u8, Vec<u8>)>,
    transport: Transport,
    payload: Vec<u8>,
}

impl Builder {
    fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Self {
        Builder {
            src,
            dst,
            ttl: 64,
            ip_id: 0,
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            transport,
            payload: Vec::new(),
        }
    }

    /// Start a TCP packet (flags ACK, window 65535, seq/ack 0).
    pub fn tcp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(
            src,
            dst,
            Transport::Tcp {
                src_port,
                dst_port,
                seq: 0,
                ack: 0,
                flags: super::tcp::ACK,
                reserved: 0,
                window: 65535,
                options: Vec::new(),
            },
        )
    }

    /// Start a UDP packet.
    pub fn udp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(
            src,
            dst,
            Transport::Udp {
                src_port,
                dst_port,
                checksum: true,
            },
        )
    }

    /// Start a packet of another protocol whose L4 bytes are the payload, unchecksummed.
    pub fn raw(src: IpAddr, dst: IpAddr, protocol: u8) -> Self {
        Self::new(src, dst, Transport::Raw(protocol))
    }

    /// Set the TCP sequence number.
    pub fn seq(mut self, v: u32) -> Self {
        if let Transport::Tcp { seq, .. } = &mut self.transport {
            *seq = v;
        }
        self
    }

    /// Set the TCP acknowledgment number.
    pub fn ack(mut self, v: u32) -> Self {
        if let Transport::Tcp { ack, .. } = &mut self.transport {
            *ack = v;
        }
        self
    }

    /// Set the TCP flags byte.
    pub fn flags(mut self, v: u8) -> Self {
        if let Transport::Tcp { flags, .. } = &mut self.transport {
            *flags = v;
        }
        self
    }

    /// Set the 4 TCP reserved bits.
    pub fn reserved(mut self, v: u8) -> Self {
        if let Transport::Tcp { reserved, .. } = &mut self.transport {
            *reserved = v & super::tcp::RESERVED_MASK;
        }
        self
    }

    /// Set the TCP window.
    pub fn window(mut self, v: u16) -> Self {
        if let Transport::Tcp { window, .. } = &mut self.transport {
            *window = v;
        }
        self
    }

    /// Append an MSS option.
    pub fn mss(self, v: u16) -> Self {
        let [hi, lo] = v.to_be_bytes();
        self.raw_tcp_options(&[super::tcp::OPT_MSS, 4, hi, lo])
    }

    /// Append a TCP option `kind` with `data` (length byte computed).
    pub fn tcp_option(self, kind: u8, data: &[u8]) -> Self {
        let mut opt = vec![kind, (data.len() + 2) as u8];
        opt.extend_from_slice(data);
        self.raw_tcp_options(&opt)
    }

    /// Append raw bytes to the TCP options (padded with zeros to 4 bytes at build).
    pub fn raw_tcp_options(mut self, bytes: &[u8]) -> Self {
        if let Transport::Tcp { options, .. } = &mut self.transport {
            options.extend_from_slice(bytes);
        }
        self
    }

    /// Send UDP over IPv4 without checksum (field 0).
    pub fn no_udp_checksum(mut self) -> Self {
        if let Transport::Udp { checksum, .. } = &mut self.transport {
            *checksum = false;
        }
        self
    }

    /// Set the L4 payload.
    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    /// Set the IPv4 TTL / IPv6 hop limit.
    pub fn ttl(mut self, v: u8) -> Self {
        self.ttl = v;
        self
    }

    /// Set the IPv4 identification.
    pub fn ip_id(mut self, v: u16) -> Self {
        self.ip_id = v;
        self
    }

    /// Set IPv4 options (padded with zeros to 4 bytes).
    pub fn ipv4_options(mut self, bytes: &[u8]) -> Self {
        self.ipv4_options = bytes.to_vec();
        self
    }

    /// Append an IPv6 extension header of type `kind`; `body` follows the next-header and length bytes.
    ///
    /// The body is zero-padded to 8 bytes (4 for AH); zeros are Pad1 options in hop-by-hop and
    /// destination options, and for a routing header the body starts with type and segments left.
    pub fn ipv6_ext(mut self, kind: u8, body: &[u8]) -> Self {
        self.ipv6_ext.push((kind, body.to_vec()));
        self
    }

    /// Return the packet bytes with correct lengths and checksums.
    pub fn build(&self) -> Vec<u8> {
        let v4 = self.src.is_ipv4();
        let protocol = match self.transport {
            Transport::Tcp { .. } => proto::TCP,
            Transport::Udp { .. } => proto::UDP,
            Transport::Raw(p) => p,
        };
        let mut l4 = self.l4_bytes();
        let (src, dst) = (self.src, self.dst);
        let pseudo = if v4 {
            cs::pseudo_v4(
                v4_of(src).octets(),
                v4_of(dst).octets(),
                protocol,
                l4.len() as u16,
            )
        } else {
            let final_dst = self.final_dst().unwrap_or(v6_of(dst).octets());
            cs::pseudo_v6(&v6_of(src).octets(), &final_dst, protocol, l4.len() as u32)
        };
        let field = match self.transport {
            Transport::Tcp { .. } => Some(16),
            Transport::Udp { checksum, .. } if checksum || !v4 => Some(6),
            _ => None,
        };
        if let Some(f) = field {
            let mut c = cs::finish(pseudo + cs::sum(&l4));
            if protocol == proto::UDP && c == 0 {
                c = 0xFFFF;
            }
            l4[f..f + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut pkt = if v4 {
            self.ipv4_header(protocol, l4.len())
        } else {
            self.ipv6_header(protocol, l4.len())
        };
        pkt.extend_from_slice(&l4);
        pkt
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                seq,
                ack,
                flags,
                reserved,
                window,
                options,
            } => {
                let hlen = 20 + options.len().div_ceil(4) * 4;
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ack.to_be_bytes());
                out.push((((hlen / 4) as u8) << 4) | reserved);
                out.push(*flags);
                out.extend_from_slice(&window.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(options);
                out.resize(hlen, 0);
            }
            Transport::Udp {
                src_port, dst_port, ..
            } => {
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Transport::Raw(_) => {}
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn ipv4_header(&self, protocol: u8, l4_len: usize) -> Vec<u8> {
        let hlen = 20 + self.ipv4_options.len().div_ceil(4) * 4;
        let mut h = Vec::with_capacity(hlen + l4_len);
        h.push(0x40 | ((hlen / 4) as u8 & 0x0F));
        h.push(0);
        h.extend_from_slice(&((hlen + l4_len) as u16).to_be_bytes());
        h.extend_from_slice(&self.ip_id.to_be_bytes());
        h.extend_from_slice(&[0x40, 0]); // DF
        h.push(self.ttl);
        h.push(protocol);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&v4_of(self.src).octets());
        h.extend_from_slice(&v4_of(self.dst).octets());
        h.extend_from_slice(&self.ipv4_options);
        h.resize(hlen, 0);
        let c = cs::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn ipv6_header(&self, protocol: u8, l4_len: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, (kind, body)) in self.ipv6_ext.iter().enumerate() {
            let next = self.ipv6_ext.get(i + 1).map_or(protocol, |e| e.0);
            exts.extend_from_slice(&ext_bytes(*kind, next, body));
        }
        let first = self.ipv6_ext.first().map_or(protocol, |e| e.0);
        let mut h = Vec::with_capacity(40 + exts.len() + l4_len);
        h.extend_from_slice(&[0x60, 0, 0, 0]);
        h.extend_from_slice(&((exts.len() + l4_len) as u16).to_be_bytes());
        h.push(first);
        h.push(self.ttl);
        h.extend_from_slice(&v6_of(self.src).octets());
        h.extend_from_slice(&v6_of(self.dst).octets());
        h.extend_from_slice(&exts);
        h
    }

    /// Return the final destination from a routing header with segments left (types 2 and 4).
    fn final_dst(&self) -> Option<[u8; 16]> {
        self.ipv6_ext
            .iter()
            .filter(|(k, b)| *k == proto::ROUTING && b.len() >= 22 && b[1] != 0)
            .find_map(|(_, b)| b[6..22].try_into().ok())
    }
}

/// Return the bytes of one extension header.
fn ext_bytes(kind: u8, next: u8, body: &[u8]) -> Vec<u8> {
    let unit = if kind == proto::AH { 4 } else { 8 };
    let len = ((body.len() + 2).div_ceil(unit) * unit).max(8);
    let mut out = vec![next, 0];
    out.extend_from_slice(body);
    out.resize(len, 0);
    out[1] = if kind == proto::AH {
        (len / 4 - 2) as u8
    } else {
        (len / 8 - 1) as u8
    };
    out
}

fn v4_of(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => a.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

fn v6_of(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}
