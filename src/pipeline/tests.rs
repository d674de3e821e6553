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

/// Content rules in the pipeline: port 8080 sends ` /api/` to 8081, the rest to 8082.
mod content {
    use super::*;
    use crate::ports::{
        Action, Branches, ForwardRule, GroupKind, GroupSpec, Groups, Over, Policies,
    };
    use crate::wire::tcp;

    fn pipeline(groups: &[GroupSpec]) -> Pipeline {
        let rule = ForwardRule {
            port: 8080,
            default: 8082,
            branches: Branches::Content(vec![(b" /api/".to_vec(), 8081)]),
        };
        let policies = Policies {
            forward: vec![rule],
            groups: std::sync::Arc::new(Groups::new(groups, Instant::now())),
        };
        Pipeline::new(selection(), MalformedVerdict::Drop, None).with_port_policies(&policies, 3)
    }

    fn syn(port: u16) -> Vec<u8> {
        Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), port, 8080)
            .flags(tcp::SYN)
            .mss(1460)
            .build()
    }

    fn held(id: u32) -> PacketMeta {
        PacketMeta {
            id: Some(id),
            ..PacketMeta::default()
        }
    }

    #[test]
    fn a_syn_to_a_content_rules_port_is_held_and_answered() {
        let mut p = pipeline(&[]);
        let (v, _, c) = run(&mut p, held(1), &syn(40_000));
        assert_eq!((v, c.held), (Verdict::Hold, 1));
        let actions = p.take_splice_actions();
        assert!(matches!(&actions[..], [Action::Send(_)]), "{actions:?}");
        assert_eq!(p.take_mark(), None);
        assert_eq!(p.splice_counts().unwrap().answered, 1);
    }

    #[test]
    fn a_syn_its_group_refuses_is_marked_not_answered() {
        let refuse = GroupSpec {
            kind: GroupKind::AcceptRate {
                port: 8080,
                rate: 1.0,
                burst: 1.0,
            },
            over: Over::Refuse,
        };
        let mut p = pipeline(&[refuse]);
        assert_eq!(run(&mut p, held(1), &syn(40_000)).0, Verdict::Hold);
        p.take_splice_actions();
        let (v, _, _) = run(&mut p, held(2), &syn(40_001));
        assert_eq!(v, Verdict::Accept);
        assert_eq!(p.take_mark(), Some(crate::ports::REFUSE_MARK));
        assert!(p.take_splice_actions().is_empty());
    }

    /// A packet of the fuzz: which way, flags, numbers near the ones in play, payload.
    fn packet(
        (out, flags, seq, ack, payload): (bool, u8, u32, u32, Vec<u8>),
        isns: &[u32],
    ) -> Vec<u8> {
        let near = |v: u32| isns[v as usize % isns.len()].wrapping_add(v % 3);
        let (client, server) = (ip("198.18.1.2"), ip("198.18.2.2"));
        let b = if out {
            Builder::tcp(server, client, 8080, 40_000)
        } else {
            Builder::tcp(client, server, 40_000, 8080)
        };
        b.flags(flags)
            .seq(near(seq))
            .ack(near(ack))
            .payload(&payload)
            .build()
    }

    proptest::proptest! {
        /// Any sequence of segments both ways, with sequence numbers near the ones in
        /// play: the splicer never panics, releases each held packet once at most, and
        /// holds only packets it was given.
        #[test]
        fn any_segments_release_each_held_packet_once_at_most(
            segments in proptest::collection::vec(
                (
                    proptest::bool::ANY,
                    proptest::num::u8::ANY,
                    proptest::num::u32::ANY,
                    proptest::num::u32::ANY,
                    proptest::collection::vec(proptest::sample::select(b" /api/GX".to_vec()), 0..12),
                ),
                1..40,
            ),
            expire_every in 1usize..10,
        ) {
            let mut p = pipeline(&[]);
            let start = Instant::now();
            let mut isns = vec![0u32];
            let (mut held_ids, mut released) = (Vec::new(), Vec::new());
            for (i, s) in segments.into_iter().enumerate() {
                let id = i as u32 + 1;
                let mut buf = packet(s, &isns);
                let now = start + std::time::Duration::from_millis(700 * i as u64);
                if p.process(&held(id), &mut buf, now) == Verdict::Hold {
                    held_ids.push(id);
                }
                if i % expire_every == 0 {
                    p.on_timer(now);
                }
                for a in p.take_splice_actions() {
                    match a {
                        Action::Send(bytes) => {
                            // The engine's own numbers join the ones in play.
                            let t = *crate::wire::parse(&bytes).unwrap().tcp().unwrap();
                            isns.extend([t.seq, t.ack]);
                        }
                        Action::Release { id, .. } => released.push(id),
                    }
                }
            }
            let mut sorted = released.clone();
            sorted.sort_unstable();
            sorted.dedup();
            proptest::prop_assert_eq!(sorted.len(), released.len(), "released twice: {:?}", released);
            proptest::prop_assert!(released.iter().all(|id| held_ids.contains(id)));
        }
    }
}
