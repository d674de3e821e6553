//! Message encoding and decoding on byte fixtures, request building, and the
//! operator messages; no kernel needed.

use std::net::IpAddr;

use super::apply::{added_route, exact_route};
use super::error::{RouteError, Step};
use super::prefix::AdvmssRoute;
use super::wire::*;
use crate::driver::netlink::*;

const AF4: u8 = libc::AF_INET as u8;
const AF6: u8 = libc::AF_INET6 as u8;
const RTAX_MTU: u16 = 2;
const RTAX_LOCK: u16 = 1;
const RTAX_CC_ALGO: u16 = 16;

fn ar(prefix: &str, len: u8, advmss: u16) -> AdvmssRoute {
    AdvmssRoute {
        prefix: prefix.parse::<IpAddr>().expect("address"),
        prefix_len: len,
        advmss,
    }
}

fn u32_attr(t: u16, v: u32) -> (u16, Vec<u8>) {
    (t, v.to_ne_bytes().to_vec())
}

/// A main-table IPv4 route as a dump reports it:
/// `198.18.1.0/24 via 198.18.2.1 dev 2 proto static metric 5 mtu 1400`.
fn kernel_v4_route() -> Route {
    let mut metrics = Vec::new();
    push_attr(&mut metrics, RTAX_MTU, &1400u32.to_ne_bytes());
    Route {
        hdr: RtHdr {
            family: AF4,
            dst_len: 24,
            table: RT_TABLE_MAIN,
            protocol: 4,
            scope: RT_SCOPE_UNIVERSE,
            rtype: RTN_UNICAST,
            flags: 0x10 | 0x2000, // RTNH_F_LINKDOWN and RTM_F_OFFLOAD: kernel state
            ..RtHdr::default()
        },
        attrs: vec![
            u32_attr(RTA_TABLE, 254),
            (RTA_DST, vec![198, 18, 1, 0]),
            u32_attr(RTA_PRIORITY, 5),
            (RTA_GATEWAY, vec![198, 18, 2, 1]),
            u32_attr(RTA_OIF, 2),
            (RTA_METRICS, metrics),
        ],
    }
}

/// Encode `route` as a complete message and decode its body again.
fn roundtrip(route: &Route) -> Route {
    let mut buf = Vec::new();
    route.encode(&mut buf, RTM_NEWROUTE, 0, 7);
    let (msg, next) = next_msg(&buf, 0).expect("one message");
    assert_eq!(next, buf.len());
    assert_eq!(msg.msg_type, RTM_NEWROUTE);
    assert_eq!(msg.seq, 7);
    Route::decode(&buf[msg.body]).expect("route")
}

#[test]
fn rtmsg_header_has_the_kernel_layout() {
    let hdr = RtHdr {
        family: AF6,
        dst_len: 64,
        src_len: 0,
        tos: 0,
        table: 254,
        protocol: 0x6d,
        scope: 0,
        rtype: 1,
        flags: RTNH_F_ONLINK,
    };
    let buf = hdr.to_bytes().to_vec();
    let mut want = vec![10, 64, 0, 0, 254, 0x6d, 0, 1];
    want.extend_from_slice(&4u32.to_ne_bytes());
    assert_eq!(buf, want);
    assert_eq!(RtHdr::decode(&buf), Some(hdr));
    assert_eq!(RtHdr::decode(&buf[..11]), None);
}

#[test]
fn attributes_are_padded_to_four_bytes() {
    let mut buf = Vec::new();
    push_attr(&mut buf, RTAX_CC_ALGO, b"cubic\0");
    assert_eq!(buf.len(), 12);
    assert_eq!(&buf[..4], &[10, 0, 16, 0][..]);
    assert_eq!(&buf[4..10], b"cubic\0");
    assert_eq!(&buf[10..], &[0, 0][..]);
    let attrs: Vec<_> = Attrs::new(&buf, 0..buf.len()).collect();
    assert_eq!(attrs, vec![(RTAX_CC_ALGO, 4..10)]);
}

#[test]
fn lookup_request_bytes() {
    let mut buf = Vec::new();
    lookup_request(&mut buf, 9, AF4, &[198, 18, 1, 0]);
    let mut want = Vec::new();
    want.extend_from_slice(&36u32.to_ne_bytes());
    want.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    want.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    want.extend_from_slice(&9u32.to_ne_bytes());
    want.extend_from_slice(&0u32.to_ne_bytes());
    want.extend_from_slice(&[AF4, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    want.extend_from_slice(&[8, 0, 1, 0, 198, 18, 1, 0]);
    assert_eq!(buf, want);
}

#[test]
fn dump_request_asks_for_the_main_table() {
    let mut buf = Vec::new();
    dump_request(&mut buf, 3, AF6);
    assert_eq!(buf.len(), NLMSG_HDRLEN + RTMSG_LEN);
    let (msg, _) = next_msg(&buf, 0).expect("message");
    assert_eq!(msg.msg_type, RTM_GETROUTE);
    assert_eq!(msg.flags, NLM_F_REQUEST | NLM_F_DUMP);
    let hdr = RtHdr::decode(&buf[msg.body]).expect("header");
    assert_eq!(
        (hdr.family, hdr.table, hdr.dst_len),
        (AF6, RT_TABLE_MAIN, 0)
    );
}

#[test]
fn replace_request_resends_every_attribute_and_adds_advmss() {
    let mut orig = kernel_v4_route();
    orig.attrs.push((RTA_CACHEINFO, vec![0; 32]));
    orig.attrs.push(u32_attr(RTA_PREFSRC, 0xc612_0202));
    let req = roundtrip(&orig.new_request(Some(1400)));
    assert_eq!(req.hdr.flags, 0, "kernel state flags must not be sent");
    assert_eq!(
        RtHdr {
            flags: 0,
            ..req.hdr
        },
        RtHdr {
            flags: 0,
            ..orig.hdr
        }
    );
    assert_eq!(req.attr(RTA_DST), Some(&[198, 18, 1, 0][..]));
    assert_eq!(req.attr(RTA_GATEWAY), Some(&[198, 18, 2, 1][..]));
    assert_eq!(req.priority(), 5);
    assert_eq!(req.table(), 254);
    assert_eq!(req.attr(RTA_OIF).and_then(ne_u32), Some(2));
    assert_eq!(req.attr(RTA_PREFSRC).and_then(ne_u32), Some(0xc612_0202));
    assert_eq!(req.attr(RTA_CACHEINFO), None);
    assert_eq!(req.metric(RTAX_MTU), Some(1400));
    assert_eq!(req.metric(RTAX_ADVMSS), Some(1400));
    assert_eq!(req.attrs.iter().filter(|(t, _)| *t == RTA_TABLE).count(), 1);
}

#[test]
fn restore_request_keeps_metrics_verbatim() {
    let mut orig = kernel_v4_route();
    let mut metrics = Vec::new();
    push_attr(&mut metrics, RTAX_LOCK, &(1u32 << RTAX_MTU).to_ne_bytes());
    push_attr(&mut metrics, RTAX_ADVMSS, &1200u32.to_ne_bytes());
    push_attr(&mut metrics, RTAX_CC_ALGO, b"reno\0");
    orig.attrs.retain(|(t, _)| *t != RTA_METRICS);
    orig.attrs.push((RTA_METRICS, metrics.clone()));
    let restore = orig.new_request(None);
    assert_eq!(restore.attr(RTA_METRICS), Some(metrics.as_slice()));
    // And the replace swaps only advmss, keeping lock and the algorithm name.
    let req = orig.new_request(Some(1400));
    assert_eq!(req.metric(RTAX_ADVMSS), Some(1400));
    assert_eq!(req.metric(RTAX_LOCK), Some(1 << RTAX_MTU));
    let m = req.attr(RTA_METRICS).expect("metrics");
    let algo = Attrs::new(m, 0..m.len()).find(|(t, _)| *t == RTAX_CC_ALGO);
    assert_eq!(algo.map(|(_, r)| &m[r]), Some(&b"reno\0"[..]));
    assert_eq!(
        Attrs::new(m, 0..m.len())
            .filter(|(t, _)| *t == RTAX_ADVMSS)
            .count(),
        1
    );
}

#[test]
fn restore_of_a_route_without_metrics_sends_none() {
    let mut orig = kernel_v4_route();
    orig.attrs.retain(|(t, _)| *t != RTA_METRICS);
    assert_eq!(orig.new_request(None).attr(RTA_METRICS), None);
}

#[test]
fn metrics_rebuild_stops_at_a_lying_length() {
    let mut old = Vec::new();
    push_attr(&mut old, RTAX_MTU, &1400u32.to_ne_bytes());
    old.extend_from_slice(&[200, 0, 3, 0, 1, 2]); // claims 200 bytes
    let m = rebuild_metrics(&old, 1300);
    let got: Vec<_> = Attrs::new(&m, 0..m.len()).map(|(t, _)| t).collect();
    assert_eq!(got, vec![RTAX_MTU, RTAX_ADVMSS]);
}

#[test]
fn multipath_flags_are_cut_to_onlink() {
    let mut mp = Vec::new();
    // rtnexthop { len 16, flags DEAD|ONLINK|LINKDOWN, hops 0, ifindex 2 } + RTA_GATEWAY
    mp.extend_from_slice(&16u16.to_ne_bytes());
    mp.extend_from_slice(&[0x1 | 0x4 | 0x10, 0]);
    mp.extend_from_slice(&2i32.to_ne_bytes());
    push_attr(&mut mp, RTA_GATEWAY, &[198, 18, 2, 1]);
    // A second nexthop cut short: dropped.
    mp.extend_from_slice(&16u16.to_ne_bytes());
    mp.extend_from_slice(&[0x1, 0, 3, 0]);
    let out = sanitize_multipath(&mp);
    assert_eq!(out.len(), 16);
    assert_eq!(out[2], 0x4);
    assert_eq!(&out[..2], &mp[..2]);
    assert_eq!(&out[3..], &mp[3..16]);
    assert_eq!(
        sanitize_multipath(&[4, 0, 0, 0, 0, 0, 0, 0]),
        Vec::<u8>::new()
    );
}

#[test]
fn expiring_v6_route_gets_its_remaining_lifetime_resent() {
    let mut ci = vec![0u8; 32];
    ci[8..12].copy_from_slice(&1801i32.to_ne_bytes()); // 18.01 s in USER_HZ ticks
    let route = Route {
        hdr: RtHdr {
            family: AF6,
            dst_len: 64,
            table: RT_TABLE_MAIN,
            protocol: 9,
            rtype: RTN_UNICAST,
            ..RtHdr::default()
        },
        attrs: vec![
            (
                RTA_DST,
                vec![0x20, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            (RTA_CACHEINFO, ci),
        ],
    };
    let req = route.new_request(None);
    assert_eq!(req.attr(RTA_EXPIRES).and_then(ne_u32), Some(19));
    assert_eq!(req.attr(RTA_CACHEINFO), None);
}

#[test]
fn delete_request_names_only_the_route_identity() {
    let req = kernel_v4_route().delete_request();
    let types: Vec<_> = req.attrs.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        types,
        vec![RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_GATEWAY, RTA_OIF]
    );
    assert_eq!(req.hdr.protocol, 4);
    assert_eq!(req.hdr.flags, 0);
}

#[test]
fn lying_message_lengths_are_refused() {
    let mut buf = Vec::new();
    kernel_v4_route().encode(&mut buf, RTM_NEWROUTE, 0, 1);
    let mut long = buf.clone();
    long[0] = long[0].wrapping_add(4); // claims 4 bytes more than there are
    assert_eq!(next_msg(&long, 0), None);
    let mut short = buf.clone();
    short[..4].copy_from_slice(&15u32.to_ne_bytes()); // shorter than a header
    assert_eq!(next_msg(&short, 0), None);
    assert_eq!(messages(&buf[..15]).count(), 0);
    let two = [buf.clone(), buf.clone()].concat();
    assert_eq!(messages(&two).count(), 2);
}

#[test]
fn every_truncation_of_a_route_decodes_without_panic() {
    let mut buf = Vec::new();
    kernel_v4_route().encode(&mut buf, RTM_NEWROUTE, 0, 1);
    let body = &buf[NLMSG_HDRLEN..];
    for n in 0..body.len() {
        let r = Route::decode(&body[..n]);
        assert_eq!(r.is_none(), n < RTMSG_LEN);
        if let Some(r) = r {
            let _ = r.new_request(Some(1400));
            let _ = r.delete_request();
        }
    }
}

/// An NLMSG_ERROR body answering a 36-byte request, with extended-ack text.
fn error_with_text(capped: bool, text: &[u8]) -> (Vec<u8>, u16) {
    let mut body = (-libc::EEXIST).to_ne_bytes().to_vec();
    let mut req = Vec::new();
    lookup_request(&mut req, 5, AF4, &[198, 18, 1, 0]);
    if capped {
        body.extend_from_slice(&req[..NLMSG_HDRLEN]);
    } else {
        body.extend_from_slice(&req);
    }
    push_attr(&mut body, NLMSGERR_ATTR_MSG, text);
    let flags = NLM_F_ACK_TLVS | if capped { NLM_F_CAPPED } else { 0 };
    (body, flags)
}

#[test]
fn error_bodies_give_errno_and_kernel_text() {
    for capped in [false, true] {
        let (body, flags) = error_with_text(capped, b"File exists\0");
        let e = error_body(&body, flags).expect("error");
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(e.text.as_deref(), Some("File exists"));
        // Every truncation: no panic, errno kept once the first 4 bytes are there.
        for n in 0..body.len() {
            let e = error_body(&body[..n], flags);
            assert_eq!(e.is_some(), n >= 4);
        }
    }
    let ack = 0i32.to_ne_bytes();
    assert_eq!(
        error_body(&ack, 0),
        Some(ErrorMsg {
            errno: 0,
            text: None
        })
    );
    // i32::MIN cannot be negated: refused, not wrapped.
    assert_eq!(error_body(&i32::MIN.to_ne_bytes(), 0), None);
}

#[test]
fn exact_route_picks_main_table_exact_prefix_lowest_metric() {
    let r = ar("198.18.1.0", 24, 1400);
    let base = kernel_v4_route();
    let mut other_table = base.clone();
    other_table.attrs[0] = u32_attr(RTA_TABLE, 100);
    other_table.hdr.table = 100;
    let mut wider = base.clone();
    wider.hdr.dst_len = 16;
    let mut tos = base.clone();
    tos.hdr.tos = 0x10;
    let mut metric9 = base.clone();
    metric9.attrs[2] = u32_attr(RTA_PRIORITY, 9);
    let table = vec![other_table, wider, tos, metric9.clone()];
    assert_eq!(exact_route(&table, &r), Some(&metric9));
    let table = vec![metric9, base.clone()];
    assert_eq!(exact_route(&table, &r), Some(&base));
    assert_eq!(exact_route(&table, &ar("198.18.9.0", 24, 1400)), None);
    // A default route has no RTA_DST.
    let mut default = base.clone();
    default.hdr.dst_len = 0;
    default.attrs.retain(|(t, _)| *t != RTA_DST);
    assert_eq!(
        exact_route(std::slice::from_ref(&default), &ar("0.0.0.0", 0, 1400)),
        Some(&default)
    );
}

#[test]
fn added_route_uses_the_lookup_nexthop() {
    let via = Route {
        hdr: RtHdr {
            family: AF4,
            dst_len: 32,
            rtype: RTN_UNICAST,
            ..RtHdr::default()
        },
        attrs: vec![
            u32_attr(RTA_TABLE, 254),
            (RTA_DST, vec![198, 18, 1, 0]),
            u32_attr(RTA_OIF, 3),
            (RTA_GATEWAY, vec![198, 18, 2, 1]),
            (RTA_PREFSRC, vec![198, 18, 2, 2]),
        ],
    };
    let r = ar("198.18.1.0", 24, 1400);
    let add = added_route(&r, &via);
    assert_eq!(add.hdr.dst_len, 24);
    assert_eq!(add.hdr.protocol, RTPROT_MPOLICE);
    assert_eq!(add.hdr.scope, RT_SCOPE_UNIVERSE);
    assert_eq!(add.attr(RTA_GATEWAY), Some(&[198, 18, 2, 1][..]));
    assert_eq!(add.attr(RTA_OIF).and_then(ne_u32), Some(3));
    assert_eq!(
        add.attr(RTA_PREFSRC),
        None,
        "the lookup's source is not configuration"
    );
    assert_eq!(add.metric(RTAX_ADVMSS), Some(1400));
    let mut on_link = via.clone();
    on_link.attrs.retain(|(t, _)| *t != RTA_GATEWAY);
    assert_eq!(added_route(&r, &on_link).hdr.scope, RT_SCOPE_LINK);
    let v6 = ar("2001:2:0:1::", 64, 1400);
    let mut via6 = on_link.clone();
    via6.hdr.family = AF6;
    assert_eq!(added_route(&v6, &via6).hdr.scope, RT_SCOPE_UNIVERSE);
}

#[test]
fn prefixes_are_validated() {
    assert!(ar("198.18.1.0", 24, 1400).validate().is_ok());
    assert!(ar("2001:2:0:1::", 64, 1400).validate().is_ok());
    assert!(ar("0.0.0.0", 0, 1400).validate().is_ok());
    let msg = |r: AdvmssRoute| r.validate().expect_err("invalid").to_string();
    assert_eq!(
        msg(ar("198.18.1.5", 24, 1400)),
        "advmss route 198.18.1.5/24: host bits are set: use 198.18.1.0/24"
    );
    assert_eq!(
        msg(ar("198.18.1.0", 33, 1400)),
        "advmss route 198.18.1.0/33: prefix length 33 is longer than 32: fix the prefix"
    );
    assert_eq!(
        msg(ar("2001:2:0:1::1", 64, 1400)),
        "advmss route 2001:2:0:1::1/64: host bits are set: use 2001:2:0:1::/64"
    );
    assert!(msg(ar("198.18.1.0", 24, 0)).contains("give a positive MSS"));
    assert_eq!(ar("198.18.1.0", 24, 1).dst_bytes(), vec![198, 18, 1, 0]);
}

#[test]
fn operator_messages_name_the_prefix_and_what_to_do() {
    let p = "198.18.1.0/24";
    let e = RouteError::from_kernel(p, Step::Add, libc::EPERM, None);
    assert_eq!(
        e.to_string(),
        "advmss route 198.18.1.0/24: route add: permission denied: run as root or grant CAP_NET_ADMIN"
    );
    let e = RouteError::from_kernel(p, Step::Lookup, libc::ENETUNREACH, None);
    assert!(matches!(e, RouteError::NoRoute { .. }));
    assert_eq!(
        e.to_string(),
        "no route to 198.18.1.0/24 (network is unreachable): add one first"
    );
    let e = RouteError::from_kernel(p, Step::Lookup, libc::EACCES, None);
    assert_eq!(
        e.to_string(),
        "no route to 198.18.1.0/24 (a prohibit route): add one first"
    );
    // The same errno from a change is a kernel error, with the kernel's own text.
    let e = RouteError::from_kernel(
        p,
        Step::Replace,
        libc::ENETUNREACH,
        Some("Nexthop has invalid gateway".into()),
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("advmss route 198.18.1.0/24: kernel rejected route replace: "),
        "{msg}"
    );
    assert!(msg.contains("(Nexthop has invalid gateway)"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn routes_with_a_nexthop_object_resend_only_its_id() {
    let mut orig = kernel_v4_route();
    orig.attrs.push(u32_attr(RTA_NH_ID, 1));
    for req in [orig.new_request(Some(1400)), orig.delete_request()] {
        assert_eq!(req.attr(RTA_NH_ID).and_then(ne_u32), Some(1));
        assert_eq!(req.attr(RTA_GATEWAY), None);
        assert_eq!(req.attr(RTA_OIF), None);
        assert_eq!(req.attr(RTA_DST), Some(&[198, 18, 1, 0][..]));
    }
}
