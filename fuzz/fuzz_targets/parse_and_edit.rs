//! Parse arbitrary bytes; on success apply edits and check checksums and re-parsing.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use mpolice::wire::{self, IpVersion, Parsed, WireError};

/// Check that `buf` verifies and re-parses to exactly `p`.
fn check(buf: &[u8], p: &Parsed) {
    assert!(wire::verify_checksums(buf, p));
    assert_eq!(wire::parse(buf), Ok(*p));
}

/// Keep `p` on an expected refusal, otherwise take the edited summary.
fn keep(p: Parsed, r: Result<Parsed, WireError>) -> Parsed {
    match r {
        Ok(q) => q,
        Err(WireError::Unsupported | WireError::TooLong | WireError::PayloadTooShort) => p,
        Err(e) => panic!("unexpected {e:?}"),
    }
}

fn run(data: &[u8]) {
    // The first byte selects edits, the rest is the packet.
    let Some((&sel, pkt)) = data.split_first() else {
        return;
    };
    let mut buf = pkt.to_vec();
    let Ok(mut p) = wire::parse(&buf) else {
        return;
    };
    let _ = wire::verify_checksums(&buf, &p);
    // Arbitrary input rarely has right checksums: make them right, then edit.
    wire::fill_checksums(&mut buf, &p).expect("fresh parse");
    check(&buf, &p);

    let trailer = &pkt[..pkt.len().min(usize::from(sel >> 4))];
    if sel & 0x01 != 0 {
        p = keep(p, wire::append_trailer(&mut buf, &p, trailer));
        check(&buf, &p);
    }
    if sel & 0x02 != 0 {
        p = keep(p, wire::set_tcp_reserved(&mut buf, &p, sel));
        check(&buf, &p);
        assert!(p.tcp().is_none() || wire::tcp_reserved(&buf, &p) == sel & 0x0F);
    }
    if sel & 0x04 != 0 {
        let before = wire::tcp_mss(&buf, &p);
        let changed = wire::clamp_tcp_mss(&mut buf, &p, 536);
        assert_eq!(changed, before.is_some_and(|m| m > 536));
        assert!(wire::tcp_mss(&buf, &p).is_none_or(|m| m <= 536));
        check(&buf, &p);
    }
    if sel & 0x08 != 0 {
        let (src, dst): (IpAddr, IpAddr) = match p.version {
            IpVersion::V4 => (Ipv4Addr::new(10, 0, 0, 1).into(), Ipv4Addr::BROADCAST.into()),
            IpVersion::V6 => (Ipv6Addr::LOCALHOST.into(), Ipv6Addr::UNSPECIFIED.into()),
        };
        p = keep(p, wire::set_src_addr(&mut buf, &p, src));
        p = keep(p, wire::set_dst_addr(&mut buf, &p, dst));
        p = keep(p, wire::set_src_port(&mut buf, &p, u16::from(sel)));
        p = keep(p, wire::set_dst_port(&mut buf, &p, 0xFFFF));
        check(&buf, &p);
    }
    if sel & 0x01 != 0 {
        // Strip what was appended (or as much as there is).
        let n = trailer.len().min(p.payload_len);
        p = keep(p, wire::strip_trailer(&mut buf, &p, n));
        check(&buf, &p);
    }
    wire::fill_checksums(&mut buf, &p).expect("fresh summary");
    check(&buf, &p);
}

fuzz_target!(|data: &[u8]| run(data));
