//! Editor tests: round trips, checksums after every edit, refusals.

use std::net::IpAddr;

use super::build::Builder;
use super::testutil::*;
use super::*;

/// Assert the buffer verifies and re-parses to exactly `p`.
fn assert_consistent(buf: &[u8], p: &Parsed, what: &str) {
    assert!(verify_checksums(buf, p), "{what}: checksums");
    assert_eq!(parse(buf).as_ref(), Ok(p), "{what}: reparse");
}

#[test]
fn append_then_strip_is_identity() {
    for (name, orig) in all_valid() {
        for trailer in [&b""[..], b"x", b"MP", b"odd", &[0xA5; 17], &[0xFF; 64]] {
            let mut buf = orig.clone();
            let p = parse(&buf).unwrap();
            let p2 = append_trailer(&mut buf, &p, trailer).unwrap();
            assert_eq!(buf.len(), orig.len() + trailer.len());
            assert_eq!(&buf[orig.len()..], trailer);
            assert_consistent(&buf, &p2, name);
            let p3 = strip_trailer(&mut buf, &p2, trailer.len()).unwrap();
            assert_eq!(buf, orig, "{name} trailer {}", trailer.len());
            assert_eq!(p3, p);
        }
    }
}

#[test]
fn strip_part_of_payload() {
    let mut buf = tcp4();
    let p = parse(&buf).unwrap();
    let p = strip_trailer(&mut buf, &p, 3).unwrap();
    assert_eq!(p.payload(&buf), b"he");
    assert_consistent(&buf, &p, "strip 3");
    let p = strip_trailer(&mut buf, &p, 2).unwrap();
    assert_eq!(p.payload_len, 0);
    assert_consistent(&buf, &p, "strip all");
    let before = buf.clone();
    assert_eq!(
        strip_trailer(&mut buf, &p, 1),
        Err(WireError::PayloadTooShort)
    );
    assert_eq!(buf, before, "error leaves buffer untouched");
}

#[test]
fn append_refuses_oversize() {
    // IPv4: 65535 total is the limit.
    let mut buf = Builder::udp(ip(V4_SRC), ip(V4_DST), 1, 2)
        .payload(&vec![7; 65535 - 28 - 4])
        .build();
    let p = parse(&buf).unwrap();
    let before = buf.clone();
    assert_eq!(
        append_trailer(&mut buf, &p, &[0; 5]),
        Err(WireError::TooLong)
    );
    assert_eq!(buf, before);
    let p = append_trailer(&mut buf, &p, &[0; 4]).unwrap();
    assert_eq!(buf.len(), 65535);
    assert_consistent(&buf, &p, "max v4");
    // IPv6: the payload length (excluding the fixed header) is the limit.
    let mut buf = Builder::tcp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .payload(&vec![7; 65535 - 20 - 1])
        .build();
    let p = parse(&buf).unwrap();
    assert_eq!(
        append_trailer(&mut buf, &p, &[0; 2]),
        Err(WireError::TooLong)
    );
    let p = append_trailer(&mut buf, &p, &[9]).unwrap();
    assert_eq!(buf.len(), 40 + 65535);
    assert_consistent(&buf, &p, "max v6");
}

#[test]
fn trailers_need_tcp_or_udp() {
    let mut buf = icmp4();
    let p = parse(&buf).unwrap();
    assert_eq!(
        append_trailer(&mut buf, &p, b"x"),
        Err(WireError::Unsupported)
    );
    assert_eq!(strip_trailer(&mut buf, &p, 1), Err(WireError::Unsupported));
    assert_eq!(set_src_port(&mut buf, &p, 1), Err(WireError::Unsupported));
    assert_eq!(
        set_tcp_reserved(&mut buf, &p, 1),
        Err(WireError::Unsupported)
    );
    let mut buf = udp4();
    let p = parse(&buf).unwrap();
    assert_eq!(
        set_tcp_reserved(&mut buf, &p, 1),
        Err(WireError::Unsupported)
    );
    assert_eq!(tcp_reserved(&buf, &p), 0);
    assert_eq!(tcp_mss(&buf, &p), None);
    assert!(!clamp_tcp_mss(&mut buf, &p, 1));
}

#[test]
fn reserved_bits_round_trip() {
    for (name, orig) in all_valid() {
        let mut buf = orig.clone();
        let p = parse(&buf).unwrap();
        if p.tcp().is_none() {
            continue;
        }
        for bits in [0x01, 0x02, 0x04, 0x08, 0x0F, 0x0A] {
            let p2 = set_tcp_reserved(&mut buf, &p, bits).unwrap();
            assert_eq!(tcp_reserved(&buf, &p2), bits);
            assert_eq!(p2.tcp().unwrap().reserved, bits);
            assert_eq!(
                buf[p.l4_offset + 12] >> 4,
                orig[p.l4_offset + 12] >> 4,
                "data offset kept"
            );
            assert_eq!(buf[p.l4_offset + 13], orig[p.l4_offset + 13], "flags kept");
            assert_consistent(&buf, &p2, name);
            let p3 = set_tcp_reserved(&mut buf, &p2, 0).unwrap();
            assert_eq!(buf, orig, "{name} bits {bits:#x}");
            assert_eq!(p3, p);
        }
        // Only the low nibble is used.
        let p2 = set_tcp_reserved(&mut buf, &p, 0xF3).unwrap();
        assert_eq!(tcp_reserved(&buf, &p2), 0x03);
        assert_consistent(&buf, &p2, name);
    }
}

#[test]
fn clamp_mss() {
    for (orig, mss) in [(syn4(), 1460), (syn6_odd_mss(), 8940)] {
        let mut buf = orig.clone();
        let p = parse(&buf).unwrap();
        assert_eq!(tcp_mss(&buf, &p), Some(mss));
        assert!(!clamp_tcp_mss(&mut buf, &p, mss), "equal: unchanged");
        assert!(!clamp_tcp_mss(&mut buf, &p, 9000), "below: unchanged");
        assert_eq!(buf, orig);
        assert!(clamp_tcp_mss(&mut buf, &p, 1400));
        assert_eq!(tcp_mss(&buf, &p), Some(1400));
        assert_consistent(&buf, &p, "clamped");
        assert!(clamp_tcp_mss(&mut buf, &p, 536));
        assert_eq!(tcp_mss(&buf, &p), Some(536));
        assert_consistent(&buf, &p, "clamped twice");
    }
    let mut buf = tcp4();
    let p = parse(&buf).unwrap();
    assert_eq!(tcp_mss(&buf, &p), None);
    assert!(!clamp_tcp_mss(&mut buf, &p, 1));
}

#[test]
fn rewrite_addresses_and_ports() {
    let new4: IpAddr = ip("203.0.113.77");
    let new6: IpAddr = ip("fe80::1234:5678");
    for (name, orig) in all_valid() {
        let mut buf = orig.clone();
        let p = parse(&buf).unwrap();
        let (new, other) = match p.version {
            IpVersion::V4 => (new4, new6),
            IpVersion::V6 => (new6, new4),
        };
        assert_eq!(
            set_src_addr(&mut buf, &p, other),
            Err(WireError::FamilyMismatch)
        );
        assert_eq!(
            set_dst_addr(&mut buf, &p, other),
            Err(WireError::FamilyMismatch)
        );
        assert_eq!(buf, orig);
        let p1 = set_src_addr(&mut buf, &p, new).unwrap();
        assert_eq!(p1.src, new);
        assert_consistent(&buf, &p1, name);
        let p2 = set_dst_addr(&mut buf, &p1, new).unwrap();
        assert_eq!(p2.dst, new);
        assert_consistent(&buf, &p2, name);
        let p3 = set_src_port(&mut buf, &p2, 65535).unwrap();
        assert_eq!(p3.ports().unwrap().0, 65535);
        assert_consistent(&buf, &p3, name);
        let p4 = set_dst_port(&mut buf, &p3, 0).unwrap();
        assert_eq!(p4.ports().unwrap().1, 0);
        assert_consistent(&buf, &p4, name);
        // Undo everything: the original bytes come back.
        let p5 = set_src_addr(&mut buf, &p4, p.src).unwrap();
        let p6 = set_dst_addr(&mut buf, &p5, p.dst).unwrap();
        let (sp, dp) = p.ports().unwrap();
        let p7 = set_src_port(&mut buf, &p6, sp).unwrap();
        let p8 = set_dst_port(&mut buf, &p7, dp).unwrap();
        assert_eq!(buf, orig, "{name}");
        assert_eq!(p8, p);
    }
}

#[test]
fn srh_destination_rewrite_leaves_l4_checksum() {
    let mut buf = tcp6_srh();
    let p = parse(&buf).unwrap();
    let check = buf[p.l4_offset + 16..p.l4_offset + 18].to_vec();
    let p2 = set_dst_addr(&mut buf, &p, ip("2001:db8::99")).unwrap();
    assert_eq!(&buf[p.l4_offset + 16..p.l4_offset + 18], &check[..]);
    assert_consistent(&buf, &p2, "srh");
}

#[test]
fn udp4_without_checksum_stays_without() {
    let mut buf = udp4_nocsum();
    let p = parse(&buf).unwrap();
    assert_eq!(&buf[26..28], &[0, 0]);
    assert!(verify_checksums(&buf, &p));
    let p = append_trailer(&mut buf, &p, b"trailer").unwrap();
    let p = set_src_addr(&mut buf, &p, ip("10.1.2.3")).unwrap();
    let p = set_dst_port(&mut buf, &p, 99).unwrap();
    let p = strip_trailer(&mut buf, &p, 2).unwrap();
    fill_checksums(&mut buf, &p).unwrap();
    assert_eq!(&buf[26..28], &[0, 0]);
    assert_consistent(&buf, &p, "udp4 no checksum");
}

#[test]
fn udp6_zero_checksum_is_invalid_and_computed_zero_is_ffff() {
    let mut buf = udp6();
    let p = parse(&buf).unwrap();
    set16(&mut buf, p.l4_offset + 6, 0);
    assert!(!verify_checksums(&buf, &p));
    fill_checksums(&mut buf, &p).unwrap();
    assert!(verify_checksums(&buf, &p));
    // Find a payload word that makes the computed checksum 0: it must be sent as 0xFFFF.
    let base = Builder::udp(ip(V6_SRC), ip(V6_DST), 1, 2)
        .payload(&[0, 0])
        .build();
    let p = parse(&base).unwrap();
    let c = u16::from_be_bytes([base[46], base[47]]);
    // c = ~S, so adding c as a payload word makes the sum 0xFFFF and the checksum 0.
    let mut buf = base.clone();
    set16(&mut buf, 48, c);
    fill_checksums(&mut buf, &p).unwrap();
    assert_eq!(&buf[46..48], &[0xFF, 0xFF]);
    assert!(verify_checksums(&buf, &p));
    assert_eq!(
        Builder::udp(ip(V6_SRC), ip(V6_DST), 1, 2)
            .payload(&c.to_be_bytes())
            .build(),
        buf
    );
}

#[test]
fn fill_repairs_and_verify_detects() {
    for (name, orig) in all_valid() {
        let p = parse(&orig).unwrap();
        let mut buf = orig.clone();
        // Corrupt the payload's last byte (or the L4 checksum when there is no payload).
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        if name != "udp4_nocsum" {
            assert!(!verify_checksums(&buf, &p), "{name}");
        }
        fill_checksums(&mut buf, &p).unwrap();
        assert!(verify_checksums(&buf, &p), "{name}");
        buf[last] ^= 0x40;
        fill_checksums(&mut buf, &p).unwrap();
        assert_eq!(buf, orig, "{name}: fill reproduces the builder's checksums");
        if p.version == IpVersion::V4 {
            buf[8] = buf[8].wrapping_sub(1); // TTL
            assert!(!verify_checksums(&buf, &p));
            fill_checksums(&mut buf, &p).unwrap();
            assert!(verify_checksums(&buf, &p));
        }
    }
}

#[test]
fn icmp_checksums() {
    for mut buf in [icmp4(), icmp6()] {
        let p = parse(&buf).unwrap();
        assert!(
            !verify_checksums(&buf, &p),
            "builder leaves raw L4 unchecksummed"
        );
        fill_checksums(&mut buf, &p).unwrap();
        assert!(verify_checksums(&buf, &p));
        let new = match p.version {
            IpVersion::V4 => ip("10.9.8.7"),
            IpVersion::V6 => ip("2001:db8::beef"),
        };
        let p = set_src_addr(&mut buf, &p, new).unwrap();
        let p = set_dst_addr(&mut buf, &p, new).unwrap();
        assert_consistent(&buf, &p, "icmp");
    }
    // ICMPv4 checksum does not cover the pseudo-header: known echo request vector.
    let mut buf = icmp4();
    let p = parse(&buf).unwrap();
    fill_checksums(&mut buf, &p).unwrap();
    // 0800 + 0000 + 0001 + 0001 + 7069 + 6e67 = 0xe6d2 -> ~ = 0x192d.
    assert_eq!(&buf[22..24], &[0x19, 0x2d]);
}

#[test]
fn stale_parsed_is_refused() {
    let mut a = tcp4();
    let b = tcp6();
    let pb = parse(&b).unwrap();
    let before = a.clone();
    assert_eq!(
        append_trailer(&mut a, &pb, b"x"),
        Err(WireError::StaleParsed)
    );
    assert_eq!(strip_trailer(&mut a, &pb, 1), Err(WireError::StaleParsed));
    assert_eq!(
        set_tcp_reserved(&mut a, &pb, 1),
        Err(WireError::StaleParsed)
    );
    assert_eq!(set_src_port(&mut a, &pb, 1), Err(WireError::StaleParsed));
    assert_eq!(
        set_src_addr(&mut a, &pb, ip(V6_DST)),
        Err(WireError::StaleParsed)
    );
    assert_eq!(fill_checksums(&mut a, &pb), Err(WireError::StaleParsed));
    assert!(!verify_checksums(&a, &pb));
    assert!(!clamp_tcp_mss(&mut a, &pb, 1));
    assert_eq!(tcp_mss(&a, &pb), None);
    assert_eq!(tcp_reserved(&a, &pb), 0);
    assert_eq!(a, before);
    // A Parsed from before an append no longer matches.
    let pa = parse(&a).unwrap();
    append_trailer(&mut a, &pa, b"x").unwrap();
    assert_eq!(strip_trailer(&mut a, &pa, 1), Err(WireError::StaleParsed));
}

/// The splice's header edits (sequence, acknowledgement, flags, options turned into
/// no-ops) keep every packet valid, IPv6 extension headers and routing headers
/// included; the options left are the ones not named, and an edit of a UDP packet is
/// refused with the buffer untouched.
#[test]
fn tcp_header_edits_keep_checksums_behind_extension_headers() {
    for (name, mut buf) in [
        ("tcp4", tcp4()),
        ("syn4", syn4()),
        ("syn6 odd mss", syn6_odd_mss()),
        ("tcp6 ext", tcp6_ext()),
        ("tcp6 srh", tcp6_srh()),
    ] {
        let p = parse(&buf).unwrap();
        let mss = tcp_mss(&buf, &p);
        let edits = [
            TcpEdit::Seq(0xdead_beef),
            TcpEdit::Ack(7),
            TcpEdit::ClearFlags(tcp::ECE | tcp::CWR),
            TcpEdit::BlankOptions(&[tcp::OPT_WINDOW_SCALE, tcp::OPT_TIMESTAMPS]),
        ];
        let p2 = edit_tcp(&mut buf, &p, &edits).unwrap();
        assert_consistent(&buf, &p2, name);
        let t = p2.tcp().unwrap();
        assert_eq!((t.seq, t.ack), (0xdead_beef, 7), "{name}");
        assert_eq!(tcp_mss(&buf, &p2), mss, "{name}");
        assert_eq!(p2.l4_header_len, p.l4_header_len, "{name}");
        if name == "syn4" {
            // MSS, SACK permitted kept; the window scale option now no-ops.
            let options = &buf[p2.l4_offset + 20..p2.payload_offset];
            assert_eq!(&options[4..10], &[4, 2, 1, 1, 1, 1], "{options:?}");
        }
    }
    let mut udp = udp6();
    let orig = udp.clone();
    let p = parse(&udp).unwrap();
    assert_eq!(
        edit_tcp(&mut udp, &p, &[TcpEdit::Ack(1)]),
        Err(WireError::Unsupported)
    );
    assert_eq!(udp, orig);
}
