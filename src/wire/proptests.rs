//! Property tests: parsing never panics, edits keep packets valid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::build::Builder;
use super::*;

/// Any IPv4 or IPv6 address pair of one family.
fn addrs() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(a, b)| (Ipv4Addr::from(a).into(), Ipv4Addr::from(b).into())),
        (any::<u128>(), any::<u128>())
            .prop_map(|(a, b)| (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())),
    ]
}

/// A list of well-formed TCP options, at most 40 bytes.
fn tcp_options() -> impl Strategy<Value = Vec<u8>> {
    let one = prop_oneof![
        Just(vec![tcp::OPT_NOP]),
        any::<u16>().prop_map(|m| vec![tcp::OPT_MSS, 4, (m >> 8) as u8, m as u8]),
        (0u8..15).prop_map(|s| vec![3, 3, s]),
        Just(vec![4, 2]),
        any::<[u8; 8]>().prop_map(|t| [&[8u8, 10][..], &t[..]].concat()),
    ];
    proptest::collection::vec(one, 0..6).prop_map(|opts| {
        let mut out = Vec::new();
        let mut mss = false;
        for o in opts {
            // At most one MSS, and stay within 40 bytes.
            if (o[0] == tcp::OPT_MSS && mss) || out.len() + o.len() > 40 {
                continue;
            }
            mss |= o[0] == tcp::OPT_MSS;
            out.extend_from_slice(&o);
        }
        out
    })
}

/// A valid IPv4/IPv6 TCP or UDP packet with random headers, options and payload.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    let ext = proptest::collection::vec((any::<bool>(), 0usize..30), 0..4);
    (
        addrs(),
        any::<bool>(),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
        ),
        (any::<u8>(), any::<u16>(), tcp_options(), any::<bool>()),
        proptest::collection::vec(any::<u8>(), 0..300),
        ext,
    )
        .prop_map(
            |(
                (src, dst),
                is_tcp,
                (sp, dp, seq, ack, flags),
                (rsv, win, opts, csum),
                payload,
                ext,
            )| {
                let mut b = if is_tcp {
                    Builder::tcp(src, dst, sp, dp)
                        .seq(seq)
                        .ack(ack)
                        .flags(flags)
                        .reserved(rsv)
                        .window(win)
                        .raw_tcp_options(&opts)
                } else if csum {
                    Builder::udp(src, dst, sp, dp)
                } else {
                    Builder::udp(src, dst, sp, dp).no_udp_checksum()
                };
                for (i, (hbh, len)) in ext.into_iter().enumerate() {
                    let kind = if hbh && i == 0 {
                        proto::HOP_BY_HOP
                    } else {
                        proto::DEST_OPTS
                    };
                    b = b.ipv6_ext(kind, &vec![0; len]);
                }
                b.payload(&payload).build()
            },
        )
}

/// One editor call.
#[derive(Debug, Clone)]
enum Edit {
    Append(Vec<u8>),
    Strip(usize),
    Reserved(u8),
    Clamp(u16),
    SrcAddr(u128),
    DstAddr(u128),
    SrcPort(u16),
    DstPort(u16),
    Fill,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Edit::Append),
        (0usize..50).prop_map(Edit::Strip),
        any::<u8>().prop_map(Edit::Reserved),
        any::<u16>().prop_map(Edit::Clamp),
        any::<u128>().prop_map(Edit::SrcAddr),
        any::<u128>().prop_map(Edit::DstAddr),
        any::<u16>().prop_map(Edit::SrcPort),
        any::<u16>().prop_map(Edit::DstPort),
        Just(Edit::Fill),
    ]
}

/// Return an address of `p`'s family built from `bits`.
fn addr_like(p: &Parsed, bits: u128) -> IpAddr {
    match p.version {
        IpVersion::V4 => Ipv4Addr::from(bits as u32).into(),
        IpVersion::V6 => Ipv6Addr::from(bits).into(),
    }
}

/// Apply `e`; return the new summary (unchanged on an expected refusal).
fn apply(buf: &mut Vec<u8>, p: &Parsed, e: &Edit) -> Parsed {
    let r = match e {
        Edit::Append(t) => append_trailer(buf, p, t),
        Edit::Strip(n) => strip_trailer(buf, p, (*n).min(p.payload_len)),
        Edit::Reserved(b) => set_tcp_reserved(buf, p, *b),
        Edit::Clamp(m) => {
            clamp_tcp_mss(buf, p, *m);
            Ok(*p)
        }
        Edit::SrcAddr(a) => set_src_addr(buf, p, addr_like(p, *a)),
        Edit::DstAddr(a) => set_dst_addr(buf, p, addr_like(p, *a)),
        Edit::SrcPort(v) => set_src_port(buf, p, *v),
        Edit::DstPort(v) => set_dst_port(buf, p, *v),
        Edit::Fill => fill_checksums(buf, p).map(|()| *p),
    };
    match r {
        Ok(q) => q,
        Err(WireError::Unsupported) if p.tcp().is_none() => *p,
        Err(e) => panic!("unexpected {e:?}"),
    }
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn parse_never_panics_on_plausible_headers(
        v6 in any::<bool>(),
        mut bytes in proptest::collection::vec(any::<u8>(), 40..200),
    ) {
        // Fix version and length so the parser gets past the IP header.
        let len = bytes.len();
        if v6 {
            bytes[0] = 0x60;
            bytes[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            bytes[0] = 0x40 | (bytes[0] & 0x0F);
            bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            bytes[6] &= 0xC0;
            bytes[7] = 0;
        }
        if let Ok(p) = parse(&bytes) {
            let mut buf = bytes.clone();
            let _ = verify_checksums(&buf, &p);
            let q = fill_checksums(&mut buf, &p).map(|()| p).unwrap();
            prop_assert!(verify_checksums(&buf, &q));
        }
    }

    #[test]
    fn mutated_packets_never_panic(pkt in packet(), idx in any::<usize>(), val in any::<u8>()) {
        let mut buf = pkt;
        let i = idx % buf.len();
        buf[i] = val;
        if let Ok(p) = parse(&buf) {
            let _ = tcp_mss(&buf, &p);
            let _ = clamp_tcp_mss(&mut buf, &p, 500);
            let _ = set_tcp_reserved(&mut buf, &p, 5);
            let _ = append_trailer(&mut buf, &p, b"trailer");
        }
    }

    #[test]
    fn edits_keep_packets_valid(pkt in packet(), edits in proptest::collection::vec(edit(), 1..12)) {
        let mut buf = pkt;
        let mut p = parse(&buf).unwrap();
        prop_assert!(verify_checksums(&buf, &p));
        for e in &edits {
            p = apply(&mut buf, &p, e);
            prop_assert!(verify_checksums(&buf, &p), "after {:?}", e);
            prop_assert_eq!(parse(&buf), Ok(p), "after {:?}", e);
        }
    }

    #[test]
    fn append_strip_is_identity(pkt in packet(), trailer in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut buf = pkt.clone();
        let p = parse(&buf).unwrap();
        let q = append_trailer(&mut buf, &p, &trailer).unwrap();
        prop_assert!(verify_checksums(&buf, &q));
        let r = strip_trailer(&mut buf, &q, trailer.len()).unwrap();
        prop_assert_eq!(&buf, &pkt);
        prop_assert_eq!(r, p);
    }

    #[test]
    fn incremental_matches_full_recompute(pkt in packet(), edits in proptest::collection::vec(edit(), 1..8)) {
        let mut buf = pkt;
        let mut p = parse(&buf).unwrap();
        for e in &edits {
            p = apply(&mut buf, &p, e);
        }
        let mut full = buf.clone();
        fill_checksums(&mut full, &p).unwrap();
        // Equal up to the two zero representations (0x0000 / 0xFFFF) of a TCP checksum.
        for (a, b) in buf.chunks(2).zip(full.chunks(2)) {
            prop_assert!(a == b || (a == [0, 0] && b == [0xFF, 0xFF]) || (a == [0xFF, 0xFF] && b == [0, 0]));
        }
    }

    #[test]
    fn forged_parsed_never_panics(
        pkt in packet(),
        other in packet(),
        fields in any::<[usize; 4]>(),
        which in 0usize..5,
    ) {
        // Hand-modified or foreign summaries must fail cleanly, never panic.
        let mut buf = pkt;
        let mut p = parse(&other).unwrap();
        match which {
            0 => p.l4_offset = fields[0],
            1 => p.payload_len = fields[1],
            2 => p.payload_offset = fields[2],
            3 => p.l4_header_len = fields[3],
            _ => {
                p.l4_offset = fields[0] % 128;
                p.l4_header_len = fields[3] % 64;
                p.payload_offset = p.l4_offset + p.l4_header_len;
                p.payload_len = buf.len().saturating_sub(p.payload_offset);
            }
        }
        let _ = verify_checksums(&buf, &p);
        let _ = tcp_mss(&buf, &p);
        let _ = tcp_reserved(&buf, &p);
        let _ = clamp_tcp_mss(&mut buf, &p, 1);
        let _ = set_tcp_reserved(&mut buf, &p, 3);
        let _ = set_src_port(&mut buf, &p, 3);
        let _ = set_dst_addr(&mut buf, &p, p.src);
        let _ = fill_checksums(&mut buf, &p);
        let _ = append_trailer(&mut buf, &p, b"abc");
        let _ = strip_trailer(&mut buf, &p, 2);
        let _ = p.payload(&buf);
    }
}
