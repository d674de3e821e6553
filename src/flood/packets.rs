//! The packets of a flood: their sources, one template, and the fields that change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::guard::{Prefix, low_mask, to_u128};
use super::{Kind, Plan};
use crate::wire::build::Builder;
use crate::wire::checksum as cs;
use crate::wire::{proto, tcp};

/// The source addresses of a flood.
#[derive(Debug, Clone)]
pub enum Sources {
    /// One address.
    Fixed(IpAddr),
    /// `count` distinct addresses of `prefix`, used in turn.
    Spoofed { prefix: Prefix, count: u128 },
}

/// An odd multiplier: multiplying an index by it is a bijection modulo any power of
/// two, so consecutive packets come from scattered addresses yet no two of the first
/// 2^host_bits indices share one.
const SCATTER: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835;

impl Sources {
    /// The source of packet number `i`.
    pub fn nth(&self, i: u64) -> IpAddr {
        match *self {
            Sources::Fixed(a) => a,
            Sources::Spoofed { prefix, count } => {
                let j = u128::from(i) % count;
                let offset = j.wrapping_mul(SCATTER) & low_mask(prefix.host_bits());
                let v = to_u128(prefix.addr) | offset;
                if prefix.addr.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::from(v as u32))
                } else {
                    IpAddr::V6(Ipv6Addr::from(v))
                }
            }
        }
    }

    /// How many distinct sources.
    pub fn count(&self) -> u128 {
        match self {
            Sources::Fixed(_) => 1,
            Sources::Spoofed { count, .. } => *count,
        }
    }
}

/// Builds the packets of a flood: one template, then per packet only the fields that
/// change (source address; for SYNs source port and sequence number) and the checksums.
#[derive(Debug, Clone)]
pub struct PacketMaker {
    template: Vec<u8>,
    v4: bool,
    l4: usize,
    l4_header: usize,
    protocol: u8,
    /// Partial checksum sum of the bytes after the L4 header (constant).
    payload_sum: u64,
    /// Whether packets differ from one another at all.
    varies: bool,
}

impl PacketMaker {
    /// The template of `plan`'s packets, from its first source.
    pub fn new(plan: &Plan) -> PacketMaker {
        let src = plan.sources.nth(0);
        let (builder, l4_header, protocol) = match plan.kind {
            Kind::Udp(size) => (
                Builder::udp(src, plan.dst, 40_000, plan.port).payload(&vec![0x5a; size]),
                8,
                proto::UDP,
            ),
            Kind::Syn => (
                Builder::tcp(src, plan.dst, 40_000, plan.port)
                    .flags(tcp::SYN)
                    .window(64_240)
                    .mss(1460),
                24,
                proto::TCP,
            ),
        };
        let template = builder.ttl(64).build();
        let l4 = if plan.dst.is_ipv4() { 20 } else { 40 };
        let payload_sum = cs::sum(&template[l4 + l4_header..]);
        PacketMaker {
            v4: plan.dst.is_ipv4(),
            l4,
            l4_header,
            protocol,
            payload_sum,
            varies: plan.kind == Kind::Syn || plan.sources.count() > 1,
            template,
        }
    }

    /// The length of every packet.
    pub fn len(&self) -> usize {
        self.template.len()
    }

    /// Whether packets are empty (never: there is always an IP header).
    pub fn is_empty(&self) -> bool {
        self.template.is_empty()
    }

    /// Write a packet from `src` with `sport` and `seq` (SYN only) into `buf`, which
    /// must already hold a copy of the template.
    pub fn write(&self, buf: &mut [u8], src: IpAddr, sport: u16, seq: u32) {
        if !self.varies {
            return;
        }
        let l4 = self.l4;
        let l4_len = buf.len() - l4;
        let pseudo = match src {
            IpAddr::V4(a) => {
                buf[12..16].copy_from_slice(&a.octets());
                buf[10..12].fill(0);
                let c = cs::checksum(&buf[..20]);
                buf[10..12].copy_from_slice(&c.to_be_bytes());
                let dst: [u8; 4] = buf[16..20].try_into().unwrap_or_default();
                cs::pseudo_v4(a.octets(), dst, self.protocol, l4_len as u16)
            }
            IpAddr::V6(a) => {
                buf[8..24].copy_from_slice(&a.octets());
                let dst: [u8; 16] = buf[24..40].try_into().unwrap_or_default();
                cs::pseudo_v6(&a.octets(), &dst, self.protocol, l4_len as u32)
            }
        };
        let field = if self.protocol == proto::TCP {
            buf[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
            buf[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            l4 + 16
        } else {
            l4 + 6
        };
        buf[field..field + 2].fill(0);
        let mut c = cs::finish(pseudo + cs::sum(&buf[l4..l4 + self.l4_header]) + self.payload_sum);
        if self.protocol == proto::UDP && c == 0 {
            c = 0xFFFF;
        }
        buf[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// A fresh copy of the template.
    pub fn template(&self) -> Vec<u8> {
        self.template.clone()
    }

    /// Whether it builds IPv4 packets.
    pub fn is_v4(&self) -> bool {
        self.v4
    }
}

/// A small fast random generator (xorshift64*), seeded from the kernel.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: the buffer outlives the call and its length is passed exactly.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let s = if n == 8 {
            u64::from_ne_bytes(seed)
        } else {
            u64::from(std::process::id()) ^ 0x2545_F491_4F6C_DD1D
        };
        Rng(s | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
