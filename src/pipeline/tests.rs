//! The pipeline on byte buffers: every verdict path, counted as the worker counts it.

use std::net::IpAddr;
use std::time::Instant;

use super::*;
use crate::wire::build::Builder;
use crate::wire::proto;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn selection() -> Selection {
    Selection {
        addresses: vec![
            "198.18.2.2".parse().unwrap(),
            "2001:2:0:2::/64".parse().unwrap(),
        ],
        tcp_ports: vec!["8080".parse().unwrap()],
        udp_ports: vec!["9000-9010".parse().unwrap()],
    }
}

fn run(p: &mut Pipeline, meta: PacketMeta, pkt: &[u8]) -> (Verdict, Vec<u8>, QueueCounters) {
    let mut buf = pkt.to_vec();
    let wire = p.wire_size(&meta, &buf);
    let v = p.process(&meta, &mut buf, Instant::now());
    let mut c = QueueCounters::new(0);
    count(&mut c, &v, wire);
    (v, buf, c)
}

fn mbox(malformed: MalformedVerdict) -> Pipeline {
    Pipeline::new(selection(), malformed, None)
}

#[test]
fn selected_traffic_passes_unchanged_both_ways_and_both_families() {
    let mut p = mbox(MalformedVerdict::Drop);
    for pkt in [
        Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
            .payload(b"GET /")
            .build(),
        Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000).build(),
        Builder::udp(ip("2001:2:0:1::2"), ip("2001:2:0:2::9"), 5353, 9005).build(),
        Builder::udp(ip("2001:2:0:2::9"), ip("2001:2:0:1::2"), 9005, 5353).build(),
    ] {
        let (v, buf, c) = run(&mut p, PacketMeta::default(), &pkt);
        assert_eq!(v, Verdict::Accept);
        assert_eq!(buf, pkt, "not one byte changed");
        assert_eq!((c.accepted, c.dropped, c.malformed), (1, 0, 0));
    }
}

#[test]
fn a_rewritten_packet_is_counted_as_modified() {
    let [_, Some(mbox_stages), _] = super::tests_caps::every_stage() else {
        panic!("the second stage set is the mbox's");
    };
    let mut p = Pipeline::new(selection(), MalformedVerdict::Drop, Some(mbox_stages));
    let pkt = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
        .payload(b"GET /")
        .build();
    let (v, _, c) = run(&mut p, PacketMeta::default(), &pkt);
    assert_eq!(v, Verdict::AcceptModified, "stamped");
    assert_eq!((c.accepted, c.modified, c.dropped), (0, 1, 0));
}

#[test]
fn classify_tells_the_direction() {
    let sel = selection();
    let to = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080).build();
    let from = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000).build();
    let other = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 22).build();
    let icmp = Builder::raw(ip("198.18.1.2"), ip("198.18.2.2"), proto::ICMP).build();
    let d = |b: &[u8]| direction(&sel, &crate::wire::parse(b).unwrap());
    assert_eq!(d(&to), Some(Direction::ToProtected));
    assert_eq!(d(&from), Some(Direction::FromProtected));
    assert_eq!(d(&other), None);
    assert_eq!(d(&icmp), None);
}

#[test]
fn traffic_outside_the_selection_passes_but_is_counted() {
    let mut p = mbox(MalformedVerdict::Drop);
    let pkt = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.3"), 40000, 8080).build();
    let (v, _, c) = run(&mut p, PacketMeta::default(), &pkt);
    assert_eq!(v, Verdict::Pass(Reason::Unselected));
    assert_eq!((c.accepted, c.reasons["unselected"]), (1, 1));
}

#[test]
fn malformed_packets_get_the_configured_verdict_and_a_reason() {
    let good = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
        .payload(b"xyz")
        .build();
    let mut lying = good.clone();
    lying[3] = lying[3].wrapping_add(40); // IPv4 total length says more than there is
    let mut fragment = good.clone();
    fragment[6] |= 0x20; // more fragments
    let cases: [(&[u8], &str); 4] = [
        (&good[..10], "truncated"),
        (&lying, "length_mismatch"),
        (&fragment, "fragment"),
        (&[0x70; 40], "bad_version"),
    ];
    for (pkt, reason) in cases {
        let (v, buf, c) = run(
            &mut mbox(MalformedVerdict::Drop),
            PacketMeta::default(),
            pkt,
        );
        assert!(
            matches!(v, Verdict::Drop(Reason::Malformed(_))),
            "{reason}: {v:?}"
        );
        assert_eq!(
            (c.dropped, c.malformed, c.reasons.get(reason)),
            (1, 1, Some(&1)),
            "{reason}"
        );
        assert_eq!(buf, pkt, "{reason}: a refused packet is never edited");
        let (v, _, c) = run(
            &mut mbox(MalformedVerdict::Accept),
            PacketMeta::default(),
            pkt,
        );
        assert!(
            matches!(v, Verdict::Pass(Reason::Malformed(_))),
            "{reason}: {v:?}"
        );
        assert_eq!(
            (c.accepted, c.malformed, c.reasons.get(reason)),
            (1, 1, Some(&1)),
            "{reason}"
        );
    }
}

/// A partial copy (hybrid path) whose headers fail to parse is read whole only where the
/// copy may have cut them: an IPv4 packet's headers fit in 120 bytes, so with 120 copied
/// a broken one is malformed like any other (and counted as the one wire packet and
/// the bytes it is); with fewer, or over IPv6, it is read whole from the precise queue.
#[test]
fn a_broken_partial_copy_is_read_whole_only_where_the_copy_may_have_cut_it() {
    let copied = |n| PacketMeta {
        copied: Some(n),
        ..Default::default()
    };
    let mut fragment = Builder::udp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 9000)
        .payload(&[0; 300])
        .build();
    fragment[6] |= 0x20; // more fragments
    let (v, _, c) = run(&mut mbox(MalformedVerdict::Drop), copied(120), &fragment);
    assert_eq!(
        v,
        Verdict::Drop(Reason::Malformed(crate::wire::WireError::Fragment))
    );
    assert_eq!(
        (c.wire_packets, c.wire_dropped, c.bytes),
        (1, 1, fragment.len() as u64)
    );
    let (v, _, c) = run(&mut mbox(MalformedVerdict::Drop), copied(119), &fragment);
    assert_eq!(v, Verdict::Route(Segments::Process));
    assert_eq!((c.routed, c.dropped, c.malformed), (1, 0, 0));
    let mut lying_v6 = Builder::udp(ip("2001:2:0:1::2"), ip("2001:2:0:2::2"), 40000, 9000)
        .payload(&[0; 300])
        .build();
    lying_v6[5] ^= 0x01; // the payload length disagrees with the packet
    let (v, ..) = run(&mut mbox(MalformedVerdict::Drop), copied(256), &lying_v6);
    assert_eq!(v, Verdict::Route(Segments::Process));
}

#[test]
fn a_partial_copy_is_never_parsed_or_rewritten() {
    let pkt = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080).build();
    let meta = PacketMeta {
        truncated: true,
        ..Default::default()
    };
    let (v, _, c) = run(&mut mbox(MalformedVerdict::Drop), meta, &pkt);
    assert_eq!(v, Verdict::Drop(Reason::TruncatedCopy));
    assert_eq!(
        (c.malformed, c.reasons.get("truncated_copy")),
        (1, Some(&1))
    );
}

proptest::proptest! {
    /// Arbitrary bytes never panic, and nothing but a modified verdict changes them.
    #[test]
    fn arbitrary_bytes_never_panic_or_change(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        for stages in super::tests_caps::every_stage() {
            let mut p = Pipeline::new(selection(), MalformedVerdict::Drop, stages);
            let (v, buf, c) = run(&mut p, PacketMeta::default(), &data);
            proptest::prop_assert_ne!(v, Verdict::AcceptModified);
            proptest::prop_assert_eq!(&buf, &data);
            proptest::prop_assert_eq!(c.accepted + c.dropped, 1);
        }
    }
}
