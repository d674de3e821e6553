//! Parser tests on byte fixtures, including every malformed case.

use super::build::Builder;
use super::testutil::*;
use super::{IpVersion, L4, WireError, parse, proto, tcp, verify_checksums};

#[test]
fn hand_built_syn_matches_builder_and_parses() {
    // 10.0.0.1:40000 -> 10.0.0.2:80 SYN, seq 1, window 64240, MSS 1460, id 0x1c46,
    // checksums hand-computed in checksum::tests (0x0a74 with total length 60;
    // here total length is 44, so the IP checksum is 0x0a84).
    let pkt: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x0a, 0x84, 10, 0, 0, 1, 10, 0,
        0, 2, 0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02,
        0xfa, 0xf0, 0xec, 0xa1, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    let built = Builder::tcp(ip("10.0.0.1"), ip("10.0.0.2"), 40000, 80)
        .seq(1)
        .flags(tcp::SYN)
        .window(64240)
        .mss(1460)
        .ip_id(0x1c46)
        .build();
    assert_eq!(built, pkt);
    let p = parse(&pkt).unwrap();
    assert!(verify_checksums(&pkt, &p));
    let t = p.tcp().unwrap();
    assert_eq!(
        (t.src_port, t.dst_port, t.seq, t.flags),
        (40000, 80, 1, tcp::SYN)
    );
    assert_eq!(t.mss_offset, Some(40));
}

#[test]
fn tcp4_fields() {
    let pkt = tcp4();
    let p = parse(&pkt).unwrap();
    assert_eq!(p.version, IpVersion::V4);
    assert_eq!((p.src, p.dst), (ip(V4_SRC), ip(V4_DST)));
    assert_eq!(p.protocol, proto::TCP);
    assert_eq!(
        (p.l4_offset, p.l4_header_len, p.payload_offset),
        (20, 32, 52)
    );
    assert_eq!(p.payload_len, 5);
    assert_eq!(p.total_len(), pkt.len());
    assert_eq!(p.payload(&pkt), b"hello");
    let t = p.tcp().unwrap();
    assert_eq!((t.src_port, t.dst_port), (40000, 443));
    assert_eq!((t.seq, t.ack, t.window), (0x0102_0304, 0x0506_0708, 501));
    assert_eq!(
        (t.flags, t.reserved, t.mss_offset),
        (tcp::ACK | tcp::PSH, 0, None)
    );
    assert_eq!(p.ports(), Some((40000, 443)));
    assert!(verify_checksums(&pkt, &p));
}

#[test]
fn every_fixture_parses_and_verifies() {
    for (name, pkt) in all_valid() {
        let p = parse(&pkt).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(verify_checksums(&pkt, &p), "{name}");
        assert_eq!(p.total_len(), pkt.len(), "{name}");
    }
}

#[test]
fn ipv6_with_extension_headers() {
    let pkt = tcp6_ext();
    let p = parse(&pkt).unwrap();
    assert_eq!(p.version, IpVersion::V6);
    assert_eq!((p.src, p.dst), (ip(V6_SRC), ip(V6_DST)));
    // 40 fixed + 8 hop-by-hop + 16 destination options.
    assert_eq!((p.l4_offset, p.payload_offset, p.payload_len), (64, 84, 3));
    assert_eq!(p.ports(), Some((1234, 80)));
}

#[test]
fn ipv6_ah_length_in_4_byte_units() {
    let pkt = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .ipv6_ext(proto::AH, &[0; 18])
        .build();
    let p = parse(&pkt).unwrap();
    assert_eq!(p.l4_offset, 40 + 20);
    assert_eq!(pkt[41], 3, "AH length (20 / 4) - 2");
    assert!(verify_checksums(&pkt, &p));
}

#[test]
fn udp_fields() {
    for pkt in [udp4(), udp6()] {
        let p = parse(&pkt).unwrap();
        assert_eq!(p.udp().unwrap().src_port, 5353);
        assert_eq!(p.l4_header_len, 8);
        assert_eq!(p.payload_offset + p.payload_len, pkt.len());
        assert!(p.tcp().is_none());
    }
}

#[test]
fn other_protocols_are_reported_not_rejected() {
    for (pkt, protocol) in [
        (icmp4(), proto::ICMP),
        (icmp6(), proto::ICMPV6),
        (
            Builder::raw(ip(V6_SRC), ip(V6_DST), proto::ESP)
                .payload(&[1; 16])
                .build(),
            proto::ESP,
        ),
        (
            Builder::raw(ip(V6_SRC), ip(V6_DST), proto::NO_NEXT_HEADER).build(),
            proto::NO_NEXT_HEADER,
        ),
        (
            Builder::raw(ip(V4_SRC), ip(V4_DST), 132)
                .payload(&[0; 3])
                .build(),
            132,
        ),
    ] {
        let p = parse(&pkt).unwrap();
        assert_eq!(p.protocol, protocol);
        assert_eq!(p.l4, L4::Other);
        assert_eq!(p.l4_header_len, 0);
        assert_eq!(p.payload_offset, p.l4_offset);
        assert_eq!(p.ports(), None);
    }
}

#[test]
fn every_prefix_is_an_error() {
    let mut all = all_valid();
    all.push(("icmp4", icmp4()));
    all.push(("icmp6", icmp6()));
    for (name, pkt) in all {
        for len in 0..pkt.len() {
            assert!(parse(&pkt[..len]).is_err(), "{name} prefix {len}");
        }
    }
}

#[test]
fn l4_truncation_with_consistent_ip_length() {
    // Cut inside the L4 header and fix the IP length: the L4 checks must catch it.
    for (name, pkt) in all_valid() {
        let p = parse(&pkt).unwrap();
        for len in p.l4_offset..p.payload_offset {
            let mut cut = pkt[..len].to_vec();
            match p.version {
                IpVersion::V4 => set16(&mut cut, 2, len as u16),
                IpVersion::V6 => set16(&mut cut, 4, (len - 40) as u16),
            }
            let e = parse(&cut).unwrap_err();
            assert!(
                matches!(
                    e,
                    WireError::Truncated | WireError::BadTcpDataOffset | WireError::BadUdpLength
                ),
                "{name} cut at {len}: {e:?}"
            );
        }
    }
}

#[test]
fn bad_version() {
    for v in [0u8, 5, 7, 15] {
        let mut pkt = tcp4();
        pkt[0] = (v << 4) | 5;
        assert_eq!(parse(&pkt), Err(WireError::BadVersion));
    }
    assert_eq!(parse(&[]), Err(WireError::Truncated));
}

#[test]
fn ipv4_total_length_lies() {
    let mut pkt = tcp4();
    let len = pkt.len() as u16;
    set16(&mut pkt, 2, len + 1);
    assert_eq!(parse(&pkt), Err(WireError::LengthMismatch));
    set16(&mut pkt, 2, len - 1);
    assert_eq!(parse(&pkt), Err(WireError::LengthMismatch));
    // Trailing bytes beyond the IP length are malformed too.
    let mut pkt = tcp4();
    pkt.push(0);
    assert_eq!(parse(&pkt), Err(WireError::LengthMismatch));
}

#[test]
fn ipv4_ihl() {
    for ihl in 0..5 {
        let mut pkt = tcp4();
        pkt[0] = 0x40 | ihl;
        assert_eq!(parse(&pkt), Err(WireError::BadHeaderLength), "ihl {ihl}");
    }
    // IHL 15 (60 bytes) in a 28-byte packet.
    let mut pkt = Builder::raw(ip(V4_SRC), ip(V4_DST), proto::ICMP)
        .payload(&[0; 8])
        .build();
    pkt[0] = 0x4F;
    assert_eq!(parse(&pkt), Err(WireError::BadHeaderLength));
    // IHL with options is honoured.
    let pkt = Builder::tcp(ip(V4_SRC), ip(V4_DST), 1, 2)
        .ipv4_options(&[1, 1, 1, 1, 1, 1, 1, 0])
        .build();
    let p = parse(&pkt).unwrap();
    assert_eq!(p.l4_offset, 28);
    assert!(verify_checksums(&pkt, &p));
}

#[test]
fn ipv4_fragments() {
    for flags_frag in [0x2000u16, 0x0001, 0x1FFF, 0x6000, 0x2001] {
        let mut pkt = tcp4();
        set16(&mut pkt, 6, flags_frag);
        assert_eq!(parse(&pkt), Err(WireError::Fragment), "{flags_frag:#x}");
    }
    // DF alone (the builder's default) and reserved-bit-free 0 are fine.
    let mut pkt = tcp4();
    set16(&mut pkt, 6, 0);
    assert!(parse(&pkt).is_ok());
}

#[test]
fn ipv6_payload_length_lies() {
    let mut pkt = tcp6();
    let len = (pkt.len() - 40) as u16;
    set16(&mut pkt, 4, len + 1);
    assert_eq!(parse(&pkt), Err(WireError::LengthMismatch));
    set16(&mut pkt, 4, len - 1);
    assert_eq!(parse(&pkt), Err(WireError::LengthMismatch));
    set16(&mut pkt, 4, 0);
    assert_eq!(parse(&pkt), Err(WireError::LengthMismatch), "jumbogram");
}

#[test]
fn ipv6_fragment_header() {
    let pkt = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .ipv6_ext(proto::FRAGMENT, &[0; 6])
        .build();
    assert_eq!(parse(&pkt), Err(WireError::Fragment));
    let pkt = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .ipv6_ext(proto::HOP_BY_HOP, &[])
        .ipv6_ext(proto::FRAGMENT, &[0; 6])
        .build();
    assert_eq!(parse(&pkt), Err(WireError::Fragment));
}

#[test]
fn ipv6_extension_header_count() {
    let mut b = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2);
    for _ in 0..super::ipv6::MAX_EXT_HEADERS {
        b = b.ipv6_ext(proto::DEST_OPTS, &[]);
    }
    assert!(parse(&b.build()).is_ok());
    let pkt = b.ipv6_ext(proto::DEST_OPTS, &[]).build();
    assert_eq!(parse(&pkt), Err(WireError::TooManyExtensionHeaders));
}

#[test]
fn ipv6_extension_header_beyond_buffer() {
    let mut pkt = Builder::raw(ip(V6_SRC), ip(V6_DST), proto::NO_NEXT_HEADER)
        .ipv6_ext(proto::DEST_OPTS, &[])
        .build();
    assert!(parse(&pkt).is_ok());
    pkt[41] = 1; // claims 16 bytes, 8 present
    assert_eq!(parse(&pkt), Err(WireError::BadExtensionHeader));
    // Next header says "destination options" but no bytes follow.
    let mut pkt = Builder::raw(ip(V6_SRC), ip(V6_DST), proto::NO_NEXT_HEADER).build();
    pkt[6] = proto::DEST_OPTS;
    assert_eq!(parse(&pkt), Err(WireError::BadExtensionHeader));
    // One byte of it only.
    let mut pkt = Builder::raw(ip(V6_SRC), ip(V6_DST), proto::DEST_OPTS)
        .payload(&[59])
        .build();
    pkt[6] = proto::DEST_OPTS;
    assert_eq!(parse(&pkt), Err(WireError::BadExtensionHeader));
}

#[test]
fn ipv6_hop_by_hop_must_be_first() {
    let pkt = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .ipv6_ext(proto::DEST_OPTS, &[])
        .ipv6_ext(proto::HOP_BY_HOP, &[])
        .build();
    assert_eq!(parse(&pkt), Err(WireError::BadExtensionHeader));
}

#[test]
fn ipv6_routing_headers() {
    // SRH with segments left: pseudo-header uses Segment List[0].
    let pkt = tcp6_srh();
    let p = parse(&pkt).unwrap();
    assert_eq!(p.pseudo_dst, 48);
    assert!(verify_checksums(&pkt, &p));
    // Segments left 0: the header's destination is final, whatever the type.
    let pkt = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .ipv6_ext(proto::ROUTING, &[0, 0, 0, 0, 0, 0])
        .build();
    assert_eq!(parse(&pkt).unwrap().pseudo_dst, 24);
    // Type 0 with segments left is deprecated and dropped; so are unknown types.
    for rt in [0u8, 3, 200] {
        let pkt = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
            .ipv6_ext(proto::ROUTING, &[rt, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .build();
        assert_eq!(parse(&pkt), Err(WireError::BadExtensionHeader), "type {rt}");
    }
    // SRH with segments left but no room for an address.
    let pkt = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .ipv6_ext(proto::ROUTING, &[4, 1])
        .build();
    assert_eq!(parse(&pkt), Err(WireError::BadExtensionHeader));
}

#[test]
fn tcp_data_offset() {
    let p = parse(&tcp4()).unwrap();
    for doff in 0..5u8 {
        let mut pkt = tcp4();
        pkt[p.l4_offset + 12] = doff << 4;
        assert_eq!(parse(&pkt), Err(WireError::BadTcpDataOffset), "doff {doff}");
    }
    // 15 words = 60 bytes > 37-byte segment.
    let mut pkt = tcp4();
    pkt[p.l4_offset + 12] = 0xF0;
    assert_eq!(parse(&pkt), Err(WireError::BadTcpDataOffset));
    // Growing the header into the payload is fine if the bytes are valid options (NOPs).
    let mut pkt = Builder::tcp(ip(V4_SRC), ip(V4_DST), 1, 2)
        .raw_tcp_options(&[1; 12])
        .payload(&[1, 1, 1, 1, 0xAA])
        .build();
    pkt[p.l4_offset + 12] = 0x90;
    let q = parse(&pkt).unwrap();
    assert_eq!((q.l4_header_len, q.payload_len), (36, 1));
}

/// Build a TCP/IPv4 packet with raw option bytes (must be a multiple of 4).
fn with_options(opts: &[u8]) -> Result<super::Parsed, WireError> {
    let pkt = Builder::tcp(ip(V4_SRC), ip(V4_DST), 1, 2)
        .raw_tcp_options(opts)
        .payload(b"data")
        .build();
    parse(&pkt)
}

#[test]
fn tcp_options() {
    let bad: &[&[u8]] = &[
        &[8, 0, 1, 1],             // length 0
        &[8, 1, 1, 1],             // length 1
        &[1, 1, 1, 8],             // kind without length byte
        &[1, 1, 8, 10],            // runs past the header
        &[2, 3, 5, 0],             // MSS length 3
        &[2, 5, 5, 0, 0, 1, 1, 1], // MSS length 5
        &[2, 4, 5, 0, 2, 4, 5, 0], // duplicate MSS
        &[2, 2, 1, 1],             // MSS length 2
    ];
    for opts in bad {
        assert_eq!(
            with_options(opts),
            Err(WireError::BadTcpOptions),
            "{opts:?}"
        );
    }
    let good: &[&[u8]] = &[
        &[1, 1, 1, 1],
        &[0, 8, 0, 77],              // after end-of-list anything is padding
        &[3, 3, 7, 0],               // window scale then EOL
        &[4, 2, 2, 4, 5, 180, 1, 0], // SACK-permitted, MSS, NOP, EOL
    ];
    for opts in good {
        assert!(with_options(opts).is_ok(), "{opts:?}");
    }
    let p = with_options(&[1, 2, 4, 5, 180, 0, 0, 0]).unwrap();
    assert_eq!(p.tcp().unwrap().mss_offset, Some(20 + 20 + 1));
}

#[test]
fn udp_length_lies() {
    for pkt in [udp4(), udp6()] {
        let p = parse(&pkt).unwrap();
        let len = (pkt.len() - p.l4_offset) as u16;
        for lie in [len + 1, len - 1, 0, 7, 8, 0xFFFF] {
            let mut bad = pkt.clone();
            set16(&mut bad, p.l4_offset + 4, lie);
            assert_eq!(parse(&bad), Err(WireError::BadUdpLength), "lie {lie}");
        }
    }
}

#[test]
fn truncated_l4_headers() {
    // IPv4 header claiming TCP with only 10 bytes of L4.
    let pkt = Builder::raw(ip(V4_SRC), ip(V4_DST), proto::TCP)
        .payload(&[0; 10])
        .build();
    assert_eq!(parse(&pkt), Err(WireError::Truncated));
    let pkt = Builder::raw(ip(V6_SRC), ip(V6_DST), proto::UDP)
        .payload(&[0; 7])
        .build();
    assert_eq!(parse(&pkt), Err(WireError::Truncated));
}
