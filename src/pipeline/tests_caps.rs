//! The capability stages on byte buffers: mbox output fed to the victim and back, in
//! memory, with time driven by the test.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::capability::{Key, KeyRing, Marker, RunId, SharedKeys, wire_len};
use crate::config::{CapSettings, PoliceSettings};
use crate::wire::build::Builder;
use crate::wire::tcp;

const MTU: u16 = 1500;
const MBOX_IF: u32 = 7;
/// A client and the server it talks to, over IPv4 and over IPv6.
const CLIENT_SERVER: [(&str, &str); 2] = [
    ("198.18.1.2", "198.18.2.2"),
    ("2001:2:0:1::2", "2001:2:0:2::2"),
];
/// The run of every mbox in these tests but where a test says otherwise.
const RUN: RunId = RunId::from_bytes([5; 16]);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn settings() -> CapSettings {
    CapSettings {
        mbox_id: 9,
        max_senders: 1000,
        ..CapSettings::default()
    }
}

fn selection() -> Selection {
    Selection {
        addresses: vec![
            "198.18.2.2".parse().unwrap(),
            "2001:2:0:2::2".parse().unwrap(),
        ],
        tcp_ports: vec!["8080".parse().unwrap()],
        udp_ports: vec![],
    }
}

fn keys() -> Arc<SharedKeys> {
    SharedKeys::new(KeyRing::new(1, Key::from_bytes([7; 32])).unwrap())
}

/// An mbox pipeline with the test settings, its link to the victim `MBOX_IF`.
fn mbox_pipeline(sel: Selection, keys: &Arc<SharedKeys>, t0: Instant, run: RunId) -> Pipeline {
    let m = Mbox::new(
        &settings(),
        &PoliceSettings::off(),
        keys,
        (t0, run),
        vec![MBOX_IF],
    );
    Pipeline::new(sel, MalformedVerdict::Drop, Some(Stages::Mbox(m)))
}

/// Pass-through, mbox and victim pipelines (for tests that try every stage).
pub(super) fn every_stage() -> [Option<Stages>; 3] {
    [
        None,
        Some(Stages::Mbox(Mbox::new(
            &settings(),
            &PoliceSettings::off(),
            &keys(),
            (Instant::now(), RUN),
            vec![MBOX_IF],
        ))),
        Some(Stages::Victim(Victim::new(&settings(), vec![MBOX_IF]))),
    ]
}

struct Path {
    mbox_p: Pipeline,
    victim_p: Pipeline,
    t0: Instant,
}

impl Path {
    fn new() -> Path {
        Path::with_victim(Victim::new(&settings(), vec![MBOX_IF]))
    }

    fn with_victim(v: Victim) -> Path {
        let t0 = Instant::now();
        Path {
            mbox_p: mbox_pipeline(selection(), &keys(), t0, RUN),
            victim_p: Pipeline::new(selection(), MalformedVerdict::Drop, Some(Stages::Victim(v))),
            t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Run a packet through the mbox `ms` after the start, its timer run first as the
    /// worker runs it between packets.
    fn mbox(&mut self, pkt: &mut Vec<u8>, ms: u64) -> Verdict {
        let now = self.at(ms);
        self.mbox_p.on_timer(now);
        through(&mut self.mbox_p, pkt, now)
    }

    /// Run a packet through the victim `ms` after the start.
    fn victim(&mut self, pkt: &mut Vec<u8>, ms: u64) -> Verdict {
        let now = self.at(ms);
        through(&mut self.victim_p, pkt, now)
    }
}

/// Run a packet through `p` as if it came in and leaves by the mbox link.
fn through(p: &mut Pipeline, pkt: &mut Vec<u8>, now: Instant) -> Verdict {
    through_links(p, pkt, now, (MBOX_IF, MBOX_IF))
}

/// Run a packet through `p` coming in and leaving by the given ifindexes.
fn through_links(p: &mut Pipeline, pkt: &mut Vec<u8>, now: Instant, links: (u32, u32)) -> Verdict {
    let meta = PacketMeta {
        indev: links.0,
        outdev: links.1,
        ..Default::default()
    };
    p.process(&meta, pkt, now)
}

fn marker(pkt: &[u8]) -> Marker {
    let p = wire::parse(pkt).unwrap();
    assert!(
        wire::verify_checksums(pkt, &p),
        "checksums after every edit"
    );
    Marker::from_reserved(wire::tcp_reserved(pkt, &p)).unwrap()
}

fn data(client: &str, server: &str, len: usize) -> Vec<u8> {
    Builder::tcp(ip(client), ip(server), 40000, 8080)
        .payload(&vec![0xab; len])
        .build()
}

fn ack(server: &str, client: &str) -> Vec<u8> {
    Builder::tcp(ip(server), ip(client), 8080, 40000)
        .flags(tcp::ACK)
        .build()
}

#[test]
fn a_capability_goes_round_trip_over_ipv4_and_ipv6() {
    // With data, and on a bare ACK: its whole payload is then the capability.
    for ((client, server), len) in CLIENT_SERVER
        .into_iter()
        .flat_map(|cs| [(cs, 100), (cs, 0)])
    {
        let mut path = Path::new();
        let sent = data(client, server, len);
        let mut pkt = sent.clone();
        assert_eq!(path.mbox(&mut pkt, 0), Verdict::AcceptModified);
        assert_eq!(pkt.len(), sent.len() + wire_len(sent[0] >> 4 == 6));
        assert_eq!(marker(&pkt), Marker::Stamped);
        assert_eq!(path.victim(&mut pkt, 10), Verdict::AcceptModified);
        assert_eq!(
            pkt, sent,
            "the victim's TCP sees exactly what the client sent"
        );

        let sent_ack = ack(server, client);
        let mut pkt = sent_ack.clone();
        assert_eq!(path.victim(&mut pkt, 20), Verdict::AcceptModified);
        assert!(matches!(marker(&pkt), Marker::Feedback(n) if n.get() == 1));
        let fed_back = pkt.clone();
        assert_eq!(path.mbox(&mut pkt, 30), Verdict::AcceptModified);
        assert_eq!(
            pkt, sent_ack,
            "the client sees exactly what the victim sent"
        );
        let (m, v) = (path.mbox_p.cap_counters(), path.victim_p.cap_counters());
        assert_eq!((m.issued, m.returned, m.feedback_stripped), (1, 1, 1));
        assert_eq!((v.stripped, v.fed_back), (1, 1));

        // The same feedback again is a replay: stripped, never counted twice.
        let mut again = fed_back;
        assert_eq!(path.mbox(&mut again, 40), Verdict::AcceptModified);
        assert_eq!(again, sent_ack);
        assert_eq!(path.mbox_p.cap_counters().returned, 1);
        assert_eq!(path.mbox_p.cap_counters().rejected["replayed"], 1);
    }
}

/// Stamp a client's packet at the mbox and strip it at the victim, which keeps the
/// capability for its next ACK.
fn stamp_and_keep(path: &mut Path, at_ms: u64) {
    let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
    path.mbox(&mut pkt, at_ms);
    path.victim(&mut pkt, at_ms);
}

/// Stamp one packet and return the victim's ACK carrying its capability back.
fn feedback_ack(path: &mut Path, at_ms: u64) -> Vec<u8> {
    stamp_and_keep(path, at_ms);
    let mut a = ack("198.18.2.2", "198.18.1.2");
    path.victim(&mut a, at_ms);
    a
}

#[test]
fn forged_stale_and_misdirected_feedback_is_stripped_but_not_counted() {
    let clean = ack("198.18.2.2", "198.18.1.2");
    type Forge = fn(&mut Vec<u8>);
    let cases: [(&str, Forge, u64); 3] = [
        ("bad_mac", |a| *a.last_mut().unwrap() ^= 1, 10),
        ("stale", |_| {}, 1_500),
        (
            "bad_mac",
            |a| {
                // Another sender's address inside the capability breaks its MAC.
                let n = a.len();
                a[n - 17] ^= 1;
            },
            10,
        ),
    ];
    for (reason, forge, delay) in cases {
        let mut path = Path::new();
        let mut a = feedback_ack(&mut path, 0);
        forge(&mut a);
        // Forging leaves the TCP checksum stale; the mbox must not care to strip.
        let p = wire::parse(&a).unwrap();
        wire::fill_checksums(&mut a, &p).unwrap();
        assert_eq!(
            path.mbox(&mut a, delay),
            Verdict::AcceptModified,
            "{reason}"
        );
        assert_eq!(a, clean, "{reason}: stripped all the same");
        let c = path.mbox_p.cap_counters();
        assert_eq!(
            (c.returned, c.rejected.get(reason)),
            (0, Some(&1)),
            "{reason}"
        );
    }
}

#[test]
fn feedback_for_an_unknown_sender_is_stripped_and_refused() {
    let mut path = Path::new();
    let mut a = feedback_ack(&mut path, 0);
    let mut other = Path::new(); // a second mbox that never stamped for this sender
    assert_eq!(other.mbox(&mut a, 5), Verdict::AcceptModified);
    assert_eq!(a, ack("198.18.2.2", "198.18.1.2"));
    assert_eq!(other.mbox_p.cap_counters().rejected["unknown_sender"], 1);
}

#[test]
fn a_marker_set_by_a_client_is_cleared_and_counted() {
    let mut path = Path::new();
    let mut pkt = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
        .reserved(Marker::Stamped.apply(0x01))
        .payload(b"hi")
        .build();
    path.mbox(&mut pkt, 0);
    path.victim(&mut pkt, 0);
    let p = wire::parse(&pkt).unwrap();
    assert_eq!(
        &pkt[p.payload_offset..],
        b"hi",
        "the client's bytes survive"
    );
    assert_eq!(wire::tcp_reserved(&pkt, &p), 0x01, "AE kept, marker gone");
    assert_eq!(path.mbox_p.cap_counters().rejected["client_marker"], 1);
}

#[test]
fn lying_or_short_trailers_are_dropped_and_counted() {
    let mut path = Path::new();
    // An ACK that claims three capabilities but carries four bytes.
    let mut a = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .flags(tcp::ACK)
        .reserved(Marker::feedback(3).unwrap().apply(0))
        .payload(&[1, 2, 3, 4])
        .build();
    assert_eq!(
        path.mbox(&mut a, 0),
        Verdict::Drop(Reason::FeedbackTooShort)
    );
    // A packet marked stamped, too short to hold a capability.
    let mut s = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
        .reserved(Marker::Stamped.apply(0))
        .payload(&[0; 8])
        .build();
    assert_eq!(
        path.victim(&mut s, 0),
        Verdict::Drop(Reason::TrailerTooShort)
    );
    // An invalid marker value (5..7) from the victim is cleared, nothing stripped.
    let mut bad = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .reserved(0x0e)
        .payload(b"x")
        .build();
    assert_eq!(path.mbox(&mut bad, 0), Verdict::AcceptModified);
    assert_eq!(path.mbox_p.cap_counters().rejected["bad_marker"], 1);
    // Its checksums are updated, not recomputed: one that arrived corrupt stays corrupt
    // (only a checksum the kernel left to offload is computed whole).
    let mut corrupt = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .reserved(0x0e)
        .payload(b"x")
        .build();
    let at = wire::parse(&corrupt).unwrap().payload_offset;
    corrupt[at] ^= 0xff;
    assert_eq!(path.mbox(&mut corrupt, 0), Verdict::AcceptModified);
    let p = wire::parse(&corrupt).unwrap();
    assert_eq!(wire::tcp_reserved(&corrupt, &p), 0, "marker cleared");
    assert!(!wire::verify_checksums(&corrupt, &p), "still corrupt");
}

#[test]
fn traffic_that_bypassed_the_mbox_is_dropped() {
    let mut path = Path::new();
    let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
    let meta = PacketMeta {
        indev: MBOX_IF + 1,
        ..Default::default()
    };
    assert_eq!(
        path.victim_p.process(&meta, &mut pkt, path.at(0)),
        Verdict::Drop(Reason::Bypassed)
    );
}

#[test]
fn mss_is_clamped_so_trailers_fit_the_mtu() {
    for ((client, server, header), tunnel) in [
        ("198.18.1.2", "198.18.2.2", 40u16),
        ("2001:2:0:1::2", "2001:2:0:2::2", 60),
    ]
    .into_iter()
    .flat_map(|f| [(f, false), (f, true)])
    {
        let mut path = if tunnel { tunnel_path() } else { Path::new() };
        let cap = wire_len(header == 60) as u16;
        // In the tunnel a stamped segment is wrapped too: its overhead comes off as well.
        let wrap = if tunnel {
            wire::tunnel::overhead(header == 60) as u16
        } else {
            0
        };
        let mut syn = Builder::tcp(ip(client), ip(server), 40000, 8080)
            .flags(tcp::SYN)
            .mss(1460)
            .build();
        // Only a modified verdict makes the kernel send the clamped bytes.
        assert_eq!(path.victim(&mut syn, 0), Verdict::AcceptModified);
        let p = wire::parse(&syn).unwrap();
        assert_eq!(
            wire::tcp_mss(&syn, &p),
            Some(MTU - header - 3 * cap),
            "room for 3 feedback"
        );
        let mut synack = Builder::tcp(ip(server), ip(client), 8080, 40000)
            .flags(tcp::SYN | tcp::ACK)
            .mss(1460)
            .build();
        assert_eq!(path.victim(&mut synack, 0), Verdict::AcceptModified);
        let p = wire::parse(&synack).unwrap();
        assert_eq!(
            wire::tcp_mss(&synack, &p),
            Some(MTU - header - cap - wrap),
            "room for a stamp"
        );
        assert!(wire::verify_checksums(&synack, &p));
    }
}

#[test]
fn nothing_is_stamped_past_the_mtu_or_the_period_budget_or_its_stamping_part() {
    let mut path = Path::new();
    let mut big = data("198.18.1.2", "198.18.2.2", 1460);
    assert_eq!(path.mbox(&mut big, 0), Verdict::Accept);
    assert_eq!(path.mbox_p.cap_counters().too_big, 1);
    // A sender as fast as its first period allows: at most Th_cap stamps.
    for i in 0..3_000u64 {
        let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
        path.mbox(&mut pkt, i);
    }
    assert!(
        path.mbox_p.cap_counters().issued <= 128,
        "Th_cap per period"
    );
    let issued = path.mbox_p.cap_counters().issued;
    // Nothing in the period's last Th_rtt; a new period stamps again.
    for i in 3_000..4_000u64 {
        let mut late = data("198.18.1.2", "198.18.2.2", 10);
        assert_eq!(path.mbox(&mut late, i), Verdict::Accept);
    }
    assert_eq!(path.mbox_p.cap_counters().issued, issued);
    let before = path.mbox_p.cap_counters().issued;
    // At last period's rate, about 4 % of its packets: dozens in a second.
    for i in 4_000..5_000u64 {
        let mut next = data("198.18.1.2", "198.18.2.2", 10);
        path.mbox(&mut next, i);
    }
    assert!(path.mbox_p.cap_counters().issued > before, "a new period");
}

#[test]
fn feedback_never_pushes_an_ack_past_the_mtu() {
    let mut path = Path::new();
    for i in 0..3 {
        let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
        path.mbox(&mut pkt, i);
        path.victim(&mut pkt, i);
    }
    // A full-size data segment with ACK set: no room for any capability.
    let mut full = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .flags(tcp::ACK)
        .payload(&vec![0; 1460])
        .build();
    assert_eq!(path.victim(&mut full, 5), Verdict::Accept);
    // Room for two of the three kept.
    let mut roomy = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .flags(tcp::ACK)
        .payload(&vec![0; 1460 - 80])
        .build();
    path.victim(&mut roomy, 6);
    assert!(roomy.len() <= usize::from(MTU));
    assert!(matches!(marker(&roomy), Marker::Feedback(n) if n.get() == 2));
}

#[test]
fn a_sender_flood_keeps_state_bounded() {
    let s = CapSettings {
        max_senders: 50,
        ..settings()
    };
    let mut mbox = Pipeline::new(
        selection(),
        MalformedVerdict::Drop,
        Some(Stages::Mbox(Mbox::new(
            &s,
            &PoliceSettings::off(),
            &keys(),
            (Instant::now(), RUN),
            vec![MBOX_IF],
        ))),
    );
    let t0 = Instant::now();
    for i in 0..1000u32 {
        let src = IpAddr::from((0xc613_0000u32 | i).to_be_bytes());
        let mut pkt = Builder::tcp(src, ip("198.18.2.2"), 40000, 8080)
            .payload(b"x")
            .build();
        mbox.process(&PacketMeta::default(), &mut pkt, t0);
    }
    let c = mbox.cap_counters();
    assert_eq!((c.senders, c.evictions), (50, 950));
}

#[test]
fn keys_rotate_with_one_period_of_overlap() {
    let shared = keys();
    let t0 = Instant::now();
    let mut mbox = mbox_pipeline(selection(), &shared, t0, RUN);
    let mut victim = Pipeline::new(
        selection(),
        MalformedVerdict::Drop,
        Some(Stages::Victim(Victim::new(&settings(), vec![MBOX_IF]))),
    );
    let stamp_and_return = |mbox: &mut Pipeline, victim: &mut Pipeline, ms: u64| {
        let now = t0 + Duration::from_millis(ms);
        let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
        through(mbox, &mut pkt, now);
        let key_id = pkt[pkt.len() - 32] & 0x0f;
        through(victim, &mut pkt, now);
        let mut a = ack("198.18.2.2", "198.18.1.2");
        through(victim, &mut a, now);
        (key_id, a)
    };
    let (id, old_feedback) = stamp_and_return(&mut mbox, &mut victim, 0);
    assert_eq!(id, 1);
    let ring = |text: &[(u8, u8)]| {
        let mut r = KeyRing::new(text[0].0, Key::from_bytes([text[0].1; 32])).unwrap();
        for &(id, b) in &text[1..] {
            r.rotate(id, Key::from_bytes([b; 32])).unwrap();
        }
        r
    };
    // Rotate: key 2 signs, key 1 still verifies.
    shared.replace(ring(&[(1, 7), (2, 8)]));
    let (id, _) = stamp_and_return(&mut mbox, &mut victim, 10);
    assert_eq!(id, 2, "the new key signs");
    let mut fb = old_feedback.clone();
    through(&mut mbox, &mut fb, t0 + Duration::from_millis(20));
    assert_eq!(
        mbox.cap_counters().returned,
        1,
        "a capability of the previous key still counts"
    );
    // The period of overlap is over: key 1 is gone.
    shared.replace(ring(&[(2, 8)]));
    let mut fb = old_feedback;
    through(&mut mbox, &mut fb, t0 + Duration::from_millis(30));
    assert_eq!(mbox.cap_counters().rejected["unknown_key"], 1);
}

#[test]
fn redirect_readdresses_both_ways_for_tcp_and_udp() {
    let pairs = vec![
        crate::config::RedirectPair {
            listen: ip("198.18.1.1"),
            to: ip("198.18.2.2"),
        },
        crate::config::RedirectPair {
            listen: ip("2001:2:0:1::1"),
            to: ip("2001:2:0:2::2"),
        },
    ];
    let listen = Selection {
        addresses: vec![
            "198.18.1.1".parse().unwrap(),
            "2001:2:0:1::1".parse().unwrap(),
        ],
        tcp_ports: vec!["8080".parse().unwrap()],
        udp_ports: vec!["9000".parse().unwrap()],
    };
    let sel = Selection {
        udp_ports: vec!["9000".parse().unwrap()],
        ..selection()
    };
    let m = Mbox::new(
        &settings(),
        &PoliceSettings::off(),
        &keys(),
        (Instant::now(), RUN),
        vec![MBOX_IF],
    )
    .with_redirect(pairs, listen);
    let mut mbox = Pipeline::new(sel, MalformedVerdict::Drop, Some(Stages::Mbox(m)));
    let forward = PacketMeta {
        hook: HOOK_FORWARD,
        ..Default::default()
    };
    for (client, mbox_addr, server) in [
        ("198.18.1.2", "198.18.1.1", "198.18.2.2"),
        ("2001:2:0:1::2", "2001:2:0:1::1", "2001:2:0:2::2"),
    ] {
        for udp in [false, true] {
            type Make = fn(IpAddr, IpAddr, u16, u16) -> Builder;
            let (build, port): (Make, u16) = if udp {
                (Builder::udp, 9000)
            } else {
                (Builder::tcp, 8080)
            };
            let mut inbound = build(ip(client), ip(mbox_addr), 40000, port)
                .payload(b"q")
                .build();
            let v = mbox.process(&PacketMeta::default(), &mut inbound, Instant::now());
            assert_eq!(v, Verdict::AcceptModified);
            let p = wire::parse(&inbound).unwrap();
            assert_eq!(
                (p.dst, wire::verify_checksums(&inbound, &p)),
                (ip(server), true)
            );
            // The reply: untouched before routing, readdressed after.
            let reply = build(ip(server), ip(client), port, 40000)
                .payload(b"r")
                .build();
            let mut before = reply.clone();
            mbox.process(&PacketMeta::default(), &mut before, Instant::now());
            assert_eq!(before, reply);
            let mut after = reply;
            assert_eq!(
                mbox.process(&forward, &mut after, Instant::now()),
                Verdict::AcceptModified
            );
            let p = wire::parse(&after).unwrap();
            assert_eq!(
                (p.src, wire::verify_checksums(&after, &p)),
                (ip(mbox_addr), true)
            );
        }
    }
    assert_eq!(mbox.cap_counters().redirected, 8);
    // Not a redirect address: not ours to touch.
    let mut other = Builder::tcp(ip("198.18.1.2"), ip("198.18.1.9"), 40000, 8080).build();
    assert_eq!(
        mbox.process(&PacketMeta::default(), &mut other, Instant::now()),
        Verdict::Pass(Reason::Unselected)
    );
}

/// The keys mbox and victim share for the tunnel.
fn tunnel_keys() -> Arc<SharedKeys> {
    SharedKeys::new(KeyRing::new(4, Key::from_bytes([11; 32])).unwrap())
}

fn tunnel_config() -> crate::config::Tunnel {
    crate::config::Tunnel {
        port: 6081,
        addresses: vec![ip("198.18.2.1"), ip("2001:2:0:2::1")],
        key_file: "/unused".into(),
    }
}

/// A path in tunnel mode: both ends share `tunnel_keys()`.
fn tunnel_path() -> Path {
    let (t, k) = (tunnel_config(), tunnel_keys());
    let mut path =
        Path::with_victim(Victim::new(&settings(), vec![MBOX_IF]).with_tunnel(t.clone(), &k));
    path.mbox_p = Pipeline::new(
        selection(),
        MalformedVerdict::Drop,
        Some(Stages::Mbox(
            Mbox::new(
                &settings(),
                &PoliceSettings::off(),
                &keys(),
                (path.t0, RUN),
                vec![MBOX_IF],
            )
            .with_tunnel(t, &k),
        )),
    );
    path
}

/// The ring the tunnel's MACs are made with, from a key file's key `byte`s (id 4).
fn tunnel_ring(byte: u8) -> KeyRing {
    KeyRing::new(4, Key::from_bytes([byte; 32]))
        .unwrap()
        .for_run(&crate::capability::tunnel::TUNNEL_RUN)
}

/// Wrap `inner` as the mbox does, sealed with the current key of `ring`.
fn wrapped(inner: &[u8], (src, dst): (&str, &str), ring: &KeyRing) -> Vec<u8> {
    wrapped_as(
        crate::capability::tunnel::Kind::Packet,
        inner,
        (src, dst),
        ring,
    )
}

/// The same with a header of `kind`, the one the sealing end chose.
fn wrapped_as(
    kind: crate::capability::tunnel::Kind,
    inner: &[u8],
    (src, dst): (&str, &str),
    ring: &KeyRing,
) -> Vec<u8> {
    let (id, key) = ring.current();
    let auth = crate::capability::tunnel::seal(kind, id, key, inner);
    let mut buf = inner.to_vec();
    let p = wire::parse(&buf).unwrap();
    wire::tunnel::encap_udp(&mut buf, &p, (ip(src), ip(dst)), (9, 6081), &auth).unwrap();
    buf
}

#[test]
fn the_tunnel_wraps_at_the_mbox_and_unwraps_only_from_an_mbox_at_the_victim() {
    let mut path = tunnel_path();
    for (client, server, mbox) in [
        ("198.18.1.2", "198.18.2.2", "198.18.2.1"),
        ("2001:2:0:1::2", "2001:2:0:2::2", "2001:2:0:2::1"),
    ] {
        let sent = data(client, server, 100);
        let mut pkt = sent.clone();
        assert_eq!(path.mbox(&mut pkt, 0), Verdict::AcceptModified);
        let outer = wire::parse(&pkt).unwrap();
        assert_eq!(
            (outer.src, outer.dst, outer.ports().map(|p| p.1)),
            (ip(mbox), ip(server), Some(6081))
        );
        assert!(wire::verify_checksums(&pkt, &outer));
        let stranger = {
            let mut s = pkt.clone();
            let p = wire::parse(&s).unwrap();
            wire::set_src_addr(&mut s, &p, ip(client)).unwrap();
            s
        };
        assert_eq!(
            path.victim(&mut pkt, 1),
            Verdict::AcceptModified,
            "unwrapped"
        );
        // The inbound chain queues the unwrapped packet again: now it is stripped.
        assert_eq!(path.victim(&mut pkt, 1), Verdict::AcceptModified);
        assert_eq!(pkt, sent, "unwrapped and stripped: what the client sent");
        let mut s = stranger;
        assert_eq!(
            path.victim(&mut s, 2),
            Verdict::Drop(Reason::TunnelFromStranger)
        );
    }
    assert_eq!(path.victim_p.cap_counters().tunneled, 2);
    // A tunnel from a real mbox address carrying anything but protected traffic to the
    // tunnel's own destination is refused: the victim is no relay.
    for inner in [
        Builder::tcp(ip("203.0.113.5"), ip("192.0.2.99"), 1, 22).build(),
        Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 1, 22).build(),
    ] {
        let mut w = wrapped(&inner, ("198.18.2.1", "198.18.2.2"), &tunnel_ring(11));
        assert_eq!(
            path.victim(&mut w, 4),
            Verdict::Drop(Reason::TunnelNotProtected)
        );
    }
    // A packet that would not fit the MTU once wrapped is dropped, not sent too big.
    let mut big = data("198.18.1.2", "198.18.2.2", 1460);
    assert_eq!(
        path.mbox(&mut big, 3),
        Verdict::Drop(Reason::TooBigForTunnel)
    );
}

#[test]
fn feedback_returns_only_from_the_address_a_capability_was_stamped_towards() {
    let sel = Selection {
        addresses: vec!["198.18.2.0/24".parse().unwrap()],
        ..selection()
    };
    let t0 = Instant::now();
    let shared = keys();
    let mut mbox = mbox_pipeline(sel.clone(), &shared, t0, RUN);
    let mut victim = Pipeline::new(
        sel,
        MalformedVerdict::Drop,
        Some(Stages::Victim(Victim::new(&settings(), vec![MBOX_IF]))),
    );
    let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
    through(&mut mbox, &mut pkt, t0);
    through(&mut victim, &mut pkt, t0);
    // The same client's connection to another protected address gets nothing back...
    let mut other = ack("198.18.2.3", "198.18.1.2");
    assert_eq!(through(&mut victim, &mut other, t0), Verdict::Accept);
    // ...the capability rides an ACK from the address it was stamped towards.
    let mut right = ack("198.18.2.2", "198.18.1.2");
    assert_eq!(
        through(&mut victim, &mut right, t0),
        Verdict::AcceptModified
    );
    through(&mut mbox, &mut right, t0);
    assert_eq!(
        (
            mbox.cap_counters().returned,
            mbox.cap_counters().rejected.total()
        ),
        (1, 0)
    );
}

#[test]
fn a_capability_from_an_earlier_run_never_verifies() {
    // Same key, same id, same clock (a restart within the period, or a reboot once
    // uptime reaches the old issue time): only the run tells the two apart.
    let mut path = Path::new();
    let old_feedback = feedback_ack(&mut path, 0);
    let mut restarted = mbox_pipeline(selection(), &keys(), path.t0, RunId::from_bytes([6; 16]));
    // The restarted mbox knows the sender: it stamped one of its packets too.
    let mut own = data("198.18.1.2", "198.18.2.2", 10);
    assert_eq!(
        through(&mut restarted, &mut own, path.at(0)),
        Verdict::AcceptModified
    );
    let mut a = old_feedback;
    assert_eq!(
        through(&mut restarted, &mut a, path.at(10)),
        Verdict::AcceptModified
    );
    assert_eq!(a, ack("198.18.2.2", "198.18.1.2"), "stripped all the same");
    let c = restarted.cap_counters();
    assert_eq!((c.returned, c.rejected.get("bad_mac")), (0, Some(&1)));
    // Its own capability, returned the same way, counts.
    path.victim(&mut own, 20);
    let mut a = ack("198.18.2.2", "198.18.1.2");
    path.victim(&mut a, 20);
    through(&mut restarted, &mut a, path.at(30));
    assert_eq!(restarted.cap_counters().returned, 1);
}

/// Another link of the victim's, not towards the mbox.
const DIRECT_IF: u32 = 8;

#[test]
fn feedback_leaves_only_towards_the_mbox() {
    let mut path = Path::new();
    stamp_and_keep(&mut path, 0);
    // An asymmetric route: the ACK leaves by a direct link. Nothing there strips.
    let sent = ack("198.18.2.2", "198.18.1.2");
    let mut a = sent.clone();
    let now = path.at(5);
    let v = through_links(&mut path.victim_p, &mut a, now, (DIRECT_IF, DIRECT_IF));
    assert_eq!((v, &a), (Verdict::Accept, &sent), "no trailer, no marker");
    let c = path.victim_p.cap_counters();
    assert_eq!((c.fed_back, c.not_via_mbox), (0, 1));
    // The capability waits for an ACK that crosses the mbox.
    let mut a = sent.clone();
    assert_eq!(path.victim(&mut a, 10), Verdict::AcceptModified);
    assert!(matches!(marker(&a), Marker::Feedback(n) if n.get() == 1));
    path.mbox(&mut a, 20);
    assert_eq!(path.mbox_p.cap_counters().returned, 1);
}

#[test]
fn stamped_packets_off_the_mbox_path_are_neither_stripped_nor_kept() {
    let mut path = Path::new();
    let mut real = data("198.18.1.2", "198.18.2.2", 10);
    path.mbox(&mut real, 0);
    path.victim(&mut real, 0);
    // A spoofer on another link sends stamped-looking packets in the client's name:
    // dropped as bypass, none kept in place of the real capability.
    for i in 0..2 * settings().kept_per_sender {
        let mut forged = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
            .reserved(Marker::Stamped.apply(0))
            .payload(&[i as u8; 42])
            .build();
        let now = path.at(1);
        let v = through_links(&mut path.victim_p, &mut forged, now, (DIRECT_IF, 0));
        assert_eq!(v, Verdict::Drop(Reason::Bypassed));
    }
    let mut a = ack("198.18.2.2", "198.18.1.2");
    path.victim(&mut a, 5);
    path.mbox(&mut a, 10);
    let (m, v) = (path.mbox_p.cap_counters(), path.victim_p.cap_counters());
    assert_eq!((v.stripped, v.overflow, m.returned), (1, 0, 1));
    assert!(m.rejected.is_empty(), "{:?}", m.rejected);
}

#[test]
fn the_hosts_own_traffic_is_not_a_bypass_and_is_left_alone() {
    let mut path = Path::new();
    // A local health check, marker bits and all, arrives on loopback.
    let sent = Builder::tcp(ip("198.18.2.2"), ip("198.18.2.2"), 40000, 8080)
        .reserved(Marker::Stamped.apply(0))
        .payload(&[1; 40])
        .build();
    let mut pkt = sent.clone();
    let v = through_links(&mut path.victim_p, &mut pkt, path.t0, (1, 0));
    assert_eq!((v, &pkt), (Verdict::Accept, &sent));
    let c = path.victim_p.cap_counters();
    assert_eq!((c.local, c.stripped), (1, 0));
}

#[test]
fn feedback_counts_only_from_the_victims_side() {
    let mut path = Path::new();
    let a = feedback_ack(&mut path, 0);
    // The same ACK claiming the victim's address, arriving from the clients' side.
    let mut spoofed = a.clone();
    let now = path.at(5);
    let v = through_links(&mut path.mbox_p, &mut spoofed, now, (DIRECT_IF, 0));
    assert_eq!(v, Verdict::AcceptModified);
    assert_eq!(
        spoofed,
        ack("198.18.2.2", "198.18.1.2"),
        "stripped all the same"
    );
    let c = path.mbox_p.cap_counters();
    assert_eq!(
        (c.returned, c.rejected.get("off_victim_link")),
        (0, Some(&1))
    );
    // From the victim's side it counts (the spoofed copy used up nothing).
    let mut real = a;
    path.mbox(&mut real, 6);
    assert_eq!(path.mbox_p.cap_counters().returned, 1);
}

/// An ICMP time-exceeded (v4 type 11, v6 type 3) from a router to the client, quoting
/// the first `quote_len` bytes of `quoted`.
fn time_exceeded(quoted: &[u8], quote_len: usize) -> Vec<u8> {
    let v6 = quoted[0] >> 4 == 6;
    let (router, client, proto, kind) = if v6 {
        ("2001:2:0:4::2", "2001:2:0:1::2", wire::proto::ICMPV6, 3)
    } else {
        ("198.18.4.2", "198.18.1.2", wire::proto::ICMP, 11)
    };
    let mut body = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&quoted[..quote_len.min(quoted.len())]);
    let mut pkt = Builder::raw(ip(router), ip(client), proto)
        .payload(&body)
        .build();
    let p = wire::parse(&pkt).unwrap();
    wire::fill_checksums(&mut pkt, &p).unwrap();
    pkt
}

/// The quote an ICMP error carries, after its 8-byte header.
fn quote_of(pkt: &[u8]) -> &[u8] {
    let p = wire::parse(pkt).unwrap();
    assert!(wire::verify_checksums(pkt, &p), "outer checksums");
    &pkt[p.l4_offset + 8..]
}

#[test]
fn an_icmp_error_quoting_a_whole_stamped_packet_quotes_what_the_client_sent() {
    for (client, server) in CLIENT_SERVER {
        let mut path = Path::new();
        let sent = data(client, server, 100);
        let mut stamped = sent.clone();
        path.mbox(&mut stamped, 0);
        assert_eq!(marker(&stamped), Marker::Stamped);
        let mut err = time_exceeded(&stamped, 1280);
        assert_eq!(path.mbox(&mut err, 5), Verdict::AcceptModified);
        assert_eq!(
            quote_of(&err),
            &sent[..],
            "byte for byte what the client sent"
        );
        assert_eq!(path.mbox_p.cap_counters().quotes_scrubbed, 1);
    }
}

#[test]
fn an_icmp_error_quoting_part_of_a_stamped_packet_carries_no_capability_byte() {
    for (client, server, cut) in [
        ("198.18.1.2", "198.18.2.2", 548),
        ("2001:2:0:1::2", "2001:2:0:2::2", 1232),
    ] {
        let v6 = client.contains(':');
        let ip_len = if v6 { 40 } else { 20 };
        // Sent lengths below, at and above the cut: the capability is partly quoted,
        // cut off exactly, or not quoted at all.
        for sent_len in [cut - 10, cut, cut + 200] {
            let mut path = Path::new();
            let sent = data(client, server, sent_len - ip_len - 20);
            let mut stamped = sent.clone();
            path.mbox(&mut stamped, 0);
            assert_eq!(marker(&stamped), Marker::Stamped);
            let mut err = time_exceeded(&stamped, cut);
            assert_eq!(path.mbox(&mut err, 5), Verdict::AcceptModified);
            let q = quote_of(&err);
            assert_eq!(
                q.len(),
                cut.min(sent_len),
                "{sent_len}: quote ends where the client's bytes end"
            );
            // Every byte is the client's but the TCP checksum, which covered the stamp.
            let sum = ip_len + 16..ip_len + 18;
            let mask = |b: &[u8]| {
                let mut b = b.to_vec();
                b[sum.clone()].fill(0);
                b
            };
            assert_eq!(mask(q), mask(&sent[..q.len()]), "{sent_len}");
            if !v6 {
                let ihl = &q[..20];
                assert_eq!(
                    crate::wire::checksum::checksum(ihl),
                    0,
                    "quoted IPv4 header checksum"
                );
            }
        }
    }
}

#[test]
fn icmp_errors_without_a_stamp_pass_untouched() {
    let mut path = Path::new();
    let sent = data("198.18.1.2", "198.18.2.2", 100);
    let err = time_exceeded(&sent, 548);
    let mut pkt = err.clone();
    assert_eq!(path.mbox(&mut pkt, 0), Verdict::Accept);
    assert_eq!(pkt, err);
    // An echo request is no error: not the mbox's business.
    let mut echo = Builder::raw(ip("198.18.4.2"), ip("198.18.1.2"), wire::proto::ICMP)
        .payload(&[8, 0, 0, 0, 0, 0, 0, 0])
        .build();
    assert_eq!(path.mbox(&mut echo, 0), Verdict::Pass(Reason::Unselected));
    assert_eq!(path.mbox_p.cap_counters().quotes_scrubbed, 0);
}

proptest::proptest! {
    #[test]
    fn icmp_errors_with_any_quote_never_panic_and_never_keep_a_stamp(
        mut quote in proptest::collection::vec(proptest::num::u8::ANY, 33..200),
        total_len in 0u16..400,
        stamped in proptest::bool::ANY,
    ) {
        // A plausible IPv4 + TCP quote with lying lengths and arbitrary bytes elsewhere.
        quote[0] = 0x45;
        quote[9] = wire::proto::TCP;
        quote[2..4].copy_from_slice(&total_len.to_be_bytes());
        if stamped {
            quote[32] = (quote[32] & 0xF1) | Marker::Stamped.apply(0);
        }
        let mut err = time_exceeded(&quote, quote.len());
        let mut path = Path::new();
        let v = path.mbox(&mut err, 0);
        if v == Verdict::AcceptModified {
            let q = quote_of(&err);
            if let Some(b) = q.get(32) {
                proptest::prop_assert_ne!(Marker::from_reserved(b & 0x0F), Ok(Marker::Stamped));
            }
            proptest::prop_assert!(q.len() <= usize::from(total_len));
        }
    }
}

#[test]
fn a_tunnel_packet_without_the_tunnels_mac_is_refused() {
    let mut path = tunnel_path();
    let inner = data("198.18.1.2", "198.18.2.2", 100);
    // From the mbox's address and link, as a spoofer on a shared uplink can send it.
    for (ring, reason) in [(tunnel_ring(12), "bad_mac"), (tunnel_ring(11), "")] {
        let mut w = wrapped(&inner, ("198.18.2.1", "198.18.2.2"), &ring);
        let v = path.victim(&mut w, 1);
        if reason.is_empty() {
            assert_eq!(v, Verdict::AcceptModified, "the real key opens it");
        } else {
            assert_eq!(v, Verdict::Drop(Reason::TunnelUnauthenticated));
            assert_eq!(path.victim_p.cap_counters().rejected[reason], 1);
        }
    }
    // A payload changed after sealing (the MAC covers every byte).
    let mut w = wrapped(&inner, ("198.18.2.1", "198.18.2.2"), &tunnel_ring(11));
    tamper_last_byte(&mut w);
    assert_eq!(
        path.victim(&mut w, 2),
        Verdict::Drop(Reason::TunnelUnauthenticated)
    );
    assert_eq!(path.victim_p.cap_counters().tunneled, 1);
}

/// Flip a bit of the last byte, as a forger would, with the checksums made right again.
fn tamper_last_byte(pkt: &mut [u8]) {
    if let Some(b) = pkt.last_mut() {
        *b ^= 1;
    }
    let p = wire::parse(pkt).unwrap();
    wire::fill_checksums(pkt, &p).unwrap();
}

/// The victim's feedback datagram as it reaches the mbox: UDP from `from` to the mbox.
fn datagram_packet(d: &Datagram, from: &str) -> Vec<u8> {
    Builder::udp(ip(from), d.to.ip(), 45000, d.to.port())
        .payload(&d.payload)
        .build()
}

#[test]
fn in_tunnel_mode_feedback_travels_in_datagrams_of_its_own() {
    for (client, server) in CLIENT_SERVER {
        let mut path = tunnel_path();
        let mut pkt = data(client, server, 100);
        path.mbox(&mut pkt, 0);
        path.victim(&mut pkt, 1); // unwrap
        path.victim(&mut pkt, 1); // strip and keep
        // The ACK leaves as it is, by whatever way (here not the mbox's link).
        let sent = ack(server, client);
        let mut a = sent.clone();
        let now = path.at(5);
        let v = through_links(&mut path.victim_p, &mut a, now, (DIRECT_IF, DIRECT_IF));
        assert_eq!((v, &a), (Verdict::Accept, &sent));
        let out: Vec<Datagram> = path.victim_p.datagrams().collect();
        assert_eq!(out.len(), 1);
        let mbox_addr = tunnel_config().address_for(ip(server)).unwrap();
        assert_eq!(out[0].to, SocketAddr::new(mbox_addr, 6081));
        assert_eq!(path.victim_p.cap_counters().fed_back, 1);
        // Tampered, from the client's side, or genuine: only the last counts.
        let mut bad = datagram_packet(&out[0], server);
        tamper_last_byte(&mut bad);
        assert_eq!(
            path.mbox(&mut bad, 6),
            Verdict::Drop(Reason::TunnelUnauthenticated)
        );
        let mut off_link = datagram_packet(&out[0], server);
        let now = path.at(6);
        let v = through_links(&mut path.mbox_p, &mut off_link, now, (DIRECT_IF, 0));
        assert_eq!(v, Verdict::Drop(Reason::Bypassed));
        let mut good = datagram_packet(&out[0], server);
        assert_eq!(
            path.mbox(&mut good, 7),
            Verdict::Drop(Reason::FeedbackDatagram)
        );
        let c = path.mbox_p.cap_counters();
        assert_eq!(
            (
                c.returned,
                c.rejected.get("bad_mac"),
                c.rejected.get("off_victim_link")
            ),
            (1, Some(&1), Some(&1))
        );
        // The same datagram again is a replay.
        let mut again = datagram_packet(&out[0], server);
        path.mbox(&mut again, 8);
        assert_eq!(path.mbox_p.cap_counters().rejected["replayed"], 1);
    }
}

/// The capability a stamped packet carries (its last `wire_len` bytes).
fn capability_of(stamped: &[u8]) -> Vec<u8> {
    let len = wire_len(stamped[0] >> 4 == 6);
    stamped[stamped.len() - len..].to_vec()
}

/// An ACK from `server` to `client` carrying `caps` as feedback, as a victim would send it.
fn ack_with_feedback(server: &str, client: &str, caps: &[Vec<u8>]) -> Vec<u8> {
    let n = u8::try_from(caps.len()).unwrap();
    Builder::tcp(ip(server), ip(client), 8080, 40000)
        .flags(tcp::ACK)
        .reserved(Marker::feedback(n).unwrap().apply(0))
        .payload(&caps.concat())
        .build()
}

#[test]
fn a_capability_returned_for_another_client_is_refused() {
    let mut path = Path::new();
    // Clients A and B both send; A's capability comes back on an ACK to B.
    let mut a = data("198.18.1.2", "198.18.2.2", 10);
    let mut b = data("198.18.1.3", "198.18.2.2", 10);
    path.mbox(&mut a, 0);
    path.mbox(&mut b, 0);
    let mut fb = ack_with_feedback("198.18.2.2", "198.18.1.3", &[capability_of(&a)]);
    assert_eq!(path.mbox(&mut fb, 10), Verdict::AcceptModified, "stripped");
    let c = path.mbox_p.cap_counters();
    assert_eq!((c.returned, c.rejected.get("wrong_sender")), (0, Some(&1)));
}

#[test]
fn a_capability_of_another_mbox_with_the_same_key_is_refused() {
    let t0 = Instant::now();
    let shared = keys();
    let mut issuer = mbox_pipeline(selection(), &shared, t0, RUN);
    // Same key, same run (so the MAC verifies), another mbox id.
    let other = CapSettings {
        mbox_id: 10,
        ..settings()
    };
    let m = Mbox::new(
        &other,
        &PoliceSettings::off(),
        &shared,
        (t0, RUN),
        vec![MBOX_IF],
    );
    let mut receiver = Pipeline::new(selection(), MalformedVerdict::Drop, Some(Stages::Mbox(m)));
    let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
    through(&mut issuer, &mut pkt, t0);
    let mut own = data("198.18.1.2", "198.18.2.2", 10);
    through(&mut receiver, &mut own, t0); // the receiver knows the sender
    let mut fb = ack_with_feedback("198.18.2.2", "198.18.1.2", &[capability_of(&pkt)]);
    through(&mut receiver, &mut fb, t0 + Duration::from_millis(10));
    let c = receiver.cap_counters();
    assert_eq!((c.returned, c.rejected.get("wrong_mbox")), (0, Some(&1)));
}

#[test]
fn a_capability_from_before_the_senders_period_is_refused_even_when_fresh() {
    // One sender slot: A is evicted by B and comes back with a new period while its
    // old capability, issued before, is still fresh. Only the period tells.
    let s = CapSettings {
        max_senders: 1,
        ..settings()
    };
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let m = Mbox::new(
        &s,
        &PoliceSettings::off(),
        &keys(),
        (t0, RUN),
        vec![MBOX_IF],
    );
    let mut mbox = Pipeline::new(selection(), MalformedVerdict::Drop, Some(Stages::Mbox(m)));
    let mut old = data("198.18.1.2", "198.18.2.2", 10);
    through(&mut mbox, &mut old, at(0));
    through(
        &mut mbox,
        &mut data("198.18.1.3", "198.18.2.2", 10),
        at(100),
    );
    through(
        &mut mbox,
        &mut data("198.18.1.2", "198.18.2.2", 10),
        at(200),
    );
    let mut fb = ack_with_feedback("198.18.2.2", "198.18.1.2", &[capability_of(&old)]);
    through(&mut mbox, &mut fb, at(300));
    let c = mbox.cap_counters();
    assert_eq!((c.returned, c.rejected.get("wrong_period")), (0, Some(&1)));
}

#[test]
fn feedback_of_two_and_three_capabilities_counts_each_exactly() {
    for (n, bad) in [(2usize, 1usize), (3, 1), (3, 2)] {
        let mut path = Path::new();
        let mut caps = Vec::new();
        for _ in 0..n {
            let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
            path.mbox(&mut pkt, 0);
            caps.push(capability_of(&pkt));
        }
        // One forged (a MAC bit flipped) among good ones.
        let last = caps[bad].len() - 1;
        caps[bad][last] ^= 1;
        let sent = ack("198.18.2.2", "198.18.1.2");
        let mut fb = ack_with_feedback("198.18.2.2", "198.18.1.2", &caps);
        assert_eq!(path.mbox(&mut fb, 10), Verdict::AcceptModified);
        assert_eq!(fb, sent, "{n} stripped whole");
        let c = path.mbox_p.cap_counters();
        assert_eq!(
            (c.returned, c.rejected.get("bad_mac"), c.feedback_stripped),
            (n as u64 - 1, Some(&1), 1),
            "{n} capabilities, #{bad} forged"
        );
        // The same trailer again: the good ones are replays now, the forged one still forged.
        let mut again = ack_with_feedback("198.18.2.2", "198.18.1.2", &caps);
        path.mbox(&mut again, 20);
        let c = path.mbox_p.cap_counters();
        assert_eq!(
            (
                c.returned,
                c.rejected.get("replayed"),
                c.rejected.get("bad_mac")
            ),
            (n as u64 - 1, Some(&(n as u64 - 1)), Some(&2))
        );
    }
}

#[test]
fn a_packet_is_stamped_exactly_up_to_the_mtu() {
    for tunnel in [false, true] {
        for (client, server) in CLIENT_SERVER {
            let v6 = client.contains(':');
            let headers = if v6 { 60 } else { 40 };
            let wrap = if tunnel {
                wire::tunnel::overhead(v6)
            } else {
                0
            };
            // Filling the MTU exactly once stamped (and wrapped): stamped; one byte
            // more: not stamped, and in the tunnel all the same.
            let fits = usize::from(MTU) - headers - wire_len(v6) - wrap;
            let mut path = if tunnel { tunnel_path() } else { Path::new() };
            let mut exact = data(client, server, fits);
            assert_eq!(path.mbox(&mut exact, 0), Verdict::AcceptModified);
            assert_eq!(exact.len(), usize::from(MTU), "tunnel {tunnel}");
            let mut over = data(client, server, fits + 1);
            let wrapped = if tunnel {
                Verdict::AcceptModified
            } else {
                Verdict::Accept
            };
            assert_eq!(path.mbox(&mut over, 1), wrapped, "tunnel {tunnel}");
            assert_eq!(over.len(), usize::from(MTU) + 1 - wire_len(v6));
            let c = path.mbox_p.cap_counters();
            let n = u64::from(tunnel) * 2;
            assert_eq!(
                (c.issued, c.too_big, c.tunneled),
                (1, 1, n),
                "tunnel {tunnel}"
            );
        }
    }
}

#[test]
fn periods_stay_aligned_to_the_first_packet_across_idle_periods() {
    // P = 4 s, Th_rtt = 1 s. First packet at 0: periods are [0, 4), [4, 8), [8, 12) ...
    let mut path = Path::new();
    let stamped = |path: &mut Path, ms| {
        let mut pkt = data("198.18.1.2", "198.18.2.2", 10);
        path.mbox(&mut pkt, ms) == Verdict::AcceptModified
    };
    assert!(stamped(&mut path, 0));
    // Idle for two periods: at 10 s the period is [8, 12), stamped until 11 s.
    assert!(stamped(&mut path, 10_000));
    assert!(!stamped(&mut path, 11_500), "the last Th_rtt of [8, 12)");
    assert!(stamped(&mut path, 12_100), "a new period");
}

#[test]
fn the_victim_returns_two_and_three_capabilities_on_one_ack() {
    for (client, server) in CLIENT_SERVER {
        for n in [2u8, 3] {
            let mut path = Path::new();
            for i in 0..u64::from(n) {
                let mut pkt = data(client, server, 10);
                path.mbox(&mut pkt, i);
                path.victim(&mut pkt, i);
            }
            let sent = ack(server, client);
            let mut a = sent.clone();
            assert_eq!(path.victim(&mut a, 5), Verdict::AcceptModified);
            assert!(matches!(marker(&a), Marker::Feedback(k) if k.get() == n));
            let v6 = client.contains(':');
            assert_eq!(a.len(), sent.len() + usize::from(n) * wire_len(v6));
            path.mbox(&mut a, 6);
            assert_eq!(a, sent, "stripped whole");
            assert_eq!(path.mbox_p.cap_counters().returned, u64::from(n));
        }
    }
}

#[test]
fn a_tunnel_packet_off_the_mbox_link_is_a_bypass() {
    let mut path = tunnel_path();
    let inner = data("198.18.1.2", "198.18.2.2", 100);
    let mut w = wrapped(&inner, ("198.18.2.1", "198.18.2.2"), &tunnel_ring(11));
    let now = path.at(1);
    let v = through_links(&mut path.victim_p, &mut w, now, (DIRECT_IF, 0));
    assert_eq!(v, Verdict::Drop(Reason::Bypassed));
    assert_eq!(path.victim_p.cap_counters().tunneled, 0);
}

#[test]
fn only_datagrams_to_our_end_of_the_tunnel_are_taken_for_feedback() {
    let mut path = tunnel_path();
    // From the victim's link, to the tunnel port of another host or another port of
    // ours: someone else's traffic, passed on, never consumed.
    for (to, port) in [("198.18.1.9", 6081), ("198.18.2.1", 6082)] {
        let d = Datagram {
            to: SocketAddr::new(ip(to), port),
            payload: vec![0; 64],
        };
        let mut pkt = datagram_packet(&d, "198.18.2.2");
        let v = path.mbox(&mut pkt, 0);
        assert_eq!(v, Verdict::Pass(Reason::Unselected), "{to}:{port}");
    }
    assert!(path.mbox_p.cap_counters().rejected.is_empty());
}

#[test]
fn feedback_rides_only_acks() {
    let mut path = Path::new();
    stamp_and_keep(&mut path, 0);
    // A reset without ACK leaves as it is; the capability waits for the next ACK.
    let rst = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .flags(tcp::RST)
        .build();
    let mut r = rst.clone();
    assert_eq!((path.victim(&mut r, 5), &r), (Verdict::Accept, &rst));
    let mut a = ack("198.18.2.2", "198.18.1.2");
    assert_eq!(path.victim(&mut a, 6), Verdict::AcceptModified);
    assert_eq!(path.victim_p.cap_counters().fed_back, 1);
}

#[test]
fn a_full_queue_drops_its_oldest_capability_and_counts_it() {
    let mut path = Path::new();
    // Slow enough that the sample stamps every packet.
    for i in 0..settings().kept_per_sender + 2 {
        stamp_and_keep(&mut path, 40 * i as u64);
    }
    assert_eq!(path.victim_p.cap_counters().overflow, 2);
    // The next ACK returns the oldest still kept: capability ids 2, 3 and 4.
    let mut a = ack("198.18.2.2", "198.18.1.2");
    path.victim(&mut a, 3_000);
    let ids: Vec<u8> = a[a.len() - 96..].chunks(32).map(|c| c[11]).collect();
    assert_eq!(ids, [2, 3, 4]);
}

#[test]
fn only_handshake_segments_have_their_mss_clamped() {
    let mut path = Path::new();
    // An MSS option outside a SYN means nothing to TCP: left as it is, both ways.
    for (src, dst, ports) in [
        ("198.18.1.2", "198.18.2.2", (40000, 8080)),
        ("198.18.2.2", "198.18.1.2", (8080, 40000)),
    ] {
        let sent = Builder::tcp(ip(src), ip(dst), ports.0, ports.1)
            .mss(1460)
            .build();
        let mut pkt = sent.clone();
        assert_eq!((path.victim(&mut pkt, 0), &pkt), (Verdict::Accept, &sent));
    }
}

#[test]
fn a_tunnel_payload_sealed_for_the_other_direction_is_refused() {
    use crate::capability::tunnel::Kind;
    let mut path = tunnel_path();
    let inner = data("198.18.1.2", "198.18.2.2", 100);
    // Feedback-kind, well sealed, sent into the victim's tunnel port: not a client packet.
    let mut w = wrapped_as(
        Kind::Feedback,
        &inner,
        ("198.18.2.1", "198.18.2.2"),
        &tunnel_ring(11),
    );
    assert_eq!(
        path.victim(&mut w, 1),
        Verdict::Drop(Reason::TunnelNotProtected)
    );
    // Packet-kind, well sealed, sent to the mbox's feedback port: not feedback.
    let mut w = wrapped_as(
        Kind::Packet,
        &inner,
        ("198.18.2.2", "198.18.2.1"),
        &tunnel_ring(11),
    );
    assert_eq!(
        path.mbox(&mut w, 2),
        Verdict::Drop(Reason::TunnelNotProtected)
    );
    assert_eq!(path.mbox_p.cap_counters().returned, 0);
    assert_eq!(path.victim_p.cap_counters().tunneled, 0);
}

#[test]
fn the_victim_withholds_feedback_from_the_senders_it_names() {
    let named = CapSettings {
        withhold_feedback: vec!["198.18.1.0/24".parse().unwrap()],
        ..settings()
    };
    let mut path = Path::with_victim(Victim::new(&named, vec![MBOX_IF]));
    stamp_and_keep(&mut path, 0);
    let c = path.victim_p.cap_counters();
    assert_eq!((c.stripped, c.withheld), (1, 1), "stripped, never kept");
    let mut a = ack("198.18.2.2", "198.18.1.2");
    assert_eq!(
        path.victim(&mut a, 1),
        Verdict::Accept,
        "no feedback rides it"
    );

    // Named at run time: what was kept for it goes, and nothing more is kept.
    let mut path = Path::new();
    stamp_and_keep(&mut path, 0);
    stamp_and_keep(&mut path, 40);
    path.victim_p
        .set_withheld(vec!["198.18.1.2/32".parse().unwrap()]);
    assert_eq!(path.victim_p.cap_counters().withheld, 2);
    let mut a = ack("198.18.2.2", "198.18.1.2");
    assert_eq!(path.victim(&mut a, 80), Verdict::Accept);
    // And no longer named: feedback again.
    path.victim_p.set_withheld(Vec::new());
    assert_eq!(feedback_ack(&mut path, 120).len(), a.len() + 32);
}

#[test]
fn feedback_on_a_syn_ack_counts_but_only_an_established_segment_verifies_the_sender() {
    let mut path = Path::new();
    stamp_and_keep(&mut path, 0);
    // The victim's SYN-ACK carries the capability back: delivered, yet a spoofed
    // source gets SYN-ACKs too, so the sender is not verified by it.
    let mut synack = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .flags(tcp::SYN | tcp::ACK)
        .build();
    assert_eq!(path.victim(&mut synack, 1), Verdict::AcceptModified);
    assert_eq!(path.mbox(&mut synack, 2), Verdict::AcceptModified);
    assert_eq!(path.mbox_p.cap_counters().returned, 1);
    assert!(path.mbox_p.take_verified_changes().is_empty());
    // A plain ACK of the connection does.
    let mut a = feedback_ack(&mut path, 40);
    assert_eq!(path.mbox(&mut a, 41), Verdict::AcceptModified);
    assert_eq!(path.mbox_p.cap_counters().returned, 2);
    assert_eq!(
        path.mbox_p.take_verified_changes(),
        [(ip("198.18.1.2"), true)]
    );
}

/// A super-packet the mbox stamps is routed, not rewritten: its first segment takes the
/// capability, which the victim strips and returns; the others pass as they are.
#[test]
fn a_super_packet_is_stamped_on_its_first_segment() {
    let mut path = Path::new();
    let gso = PacketMeta {
        indev: MBOX_IF,
        outdev: MBOX_IF,
        gso: true,
        csum_partial: true,
        ..Default::default()
    };
    // The first packet of a new sender is stamped: a 10-segment super-packet.
    let mut sp = data("198.18.1.2", "198.18.2.2", 10 * 1388);
    let before = sp.clone();
    let now = path.at(0);
    assert_eq!(
        path.mbox_p.process(&gso, &mut sp, now),
        Verdict::Route(Segments::Trailer)
    );
    assert_eq!(sp, before, "the super-packet itself is left alone");
    assert_eq!(path.mbox_p.cap_counters().issued, 1);
    let seg = || data("198.18.1.2", "198.18.2.2", 1388);
    let mut first = seg();
    assert_eq!(
        path.mbox_p.segment(&mut first, true),
        Verdict::AcceptModified
    );
    assert_eq!(marker(&first), Marker::Stamped);
    let mut second = seg();
    assert_eq!(path.mbox_p.segment(&mut second, false), Verdict::Accept);
    assert_eq!(second, seg());
    // The victim takes the capability off and returns it on its next ACK.
    assert_eq!(path.victim(&mut first, 1), Verdict::AcceptModified);
    assert_eq!(first, seg());
    let mut a = ack("198.18.2.2", "198.18.1.2");
    assert_eq!(path.victim(&mut a, 2), Verdict::AcceptModified);
    assert_eq!(path.mbox(&mut a, 3), Verdict::AcceptModified);
    assert_eq!(path.mbox_p.cap_counters().returned, 1);
}

/// A rewrite of a packet whose checksum the kernel left to offload computes it whole.
#[test]
fn a_rewrite_with_an_offloaded_checksum_fills_it_in() {
    let mut path = Path::new();
    let partial = PacketMeta {
        indev: MBOX_IF,
        outdev: MBOX_IF,
        csum_partial: true,
        ..Default::default()
    };
    let mut pkt = data("198.18.1.2", "198.18.2.2", 100);
    // What the kernel hands over: the checksum field holds only part of the sum.
    let p = wire::parse(&pkt).unwrap();
    pkt[p.l4_offset + 16] ^= 0x5a;
    let now = path.at(0);
    assert_eq!(
        path.mbox_p.process(&partial, &mut pkt, now),
        Verdict::AcceptModified
    );
    assert_eq!(marker(&pkt), Marker::Stamped, "stamped, checksums verified");
}

/// A stamp whose first segment turns out too big for the path is taken back: never
/// sent, it is not a loss.
#[test]
fn a_super_packets_stamp_that_does_not_fit_its_segment_is_taken_back() {
    let mut path = Path::new();
    let gso = PacketMeta {
        indev: MBOX_IF,
        outdev: MBOX_IF,
        gso: true,
        ..Default::default()
    };
    let mut sp = data("198.18.1.2", "198.18.2.2", 10 * 1388);
    let now = path.at(0);
    assert_eq!(
        path.mbox_p.process(&gso, &mut sp, now),
        Verdict::Route(Segments::Trailer)
    );
    assert_eq!(path.mbox_p.cap_counters().issued, 1);
    // The flow's MSS was never clamped: its segments fill the MTU.
    let mut first = data("198.18.1.2", "198.18.2.2", 1460);
    assert_eq!(path.mbox_p.segment(&mut first, true), Verdict::Accept);
    let c = path.mbox_p.cap_counters();
    assert_eq!((c.issued, c.too_big), (0, 1));
    let report = path.mbox_p.police_report(10).unwrap();
    assert_eq!(report.senders[0].issued, 0, "the police forgot it too");
}

/// A super-packet that cannot be read whole is read segment by segment; one marked
/// where a trailer would be stripped is dropped, never stripped blind.
#[test]
fn super_packets_unread_or_marked_are_routed_whole_or_dropped() {
    let mut path = Path::new();
    let gso = |truncated| PacketMeta {
        indev: MBOX_IF,
        outdev: MBOX_IF,
        gso: true,
        truncated,
        ..Default::default()
    };
    let now = path.at(0);
    let mut cut = data("198.18.1.2", "198.18.2.2", 100);
    assert_eq!(
        path.mbox_p.process(&gso(true), &mut cut, now),
        Verdict::Route(Segments::Process)
    );
    // BIG TCP: the IP length says 0.
    let mut big = data("198.18.1.2", "198.18.2.2", 100);
    big[2..4].copy_from_slice(&[0, 0]);
    assert_eq!(
        path.mbox_p.process(&gso(false), &mut big, now),
        Verdict::Route(Segments::Process)
    );
    let mut marked = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
        .reserved(Marker::Stamped.apply(0))
        .payload(&[1; 3000])
        .build();
    assert_eq!(
        path.victim_p.process(&gso(false), &mut marked, now),
        Verdict::Drop(Reason::MarkedSuperPacket)
    );
    // Where no stage strips a trailer (the victim's own outgoing data), a marked
    // super-packet is no such case.
    let mut outgoing = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .reserved(Marker::Stamped.apply(0))
        .payload(&[1; 3000])
        .build();
    assert_ne!(
        path.victim_p.process(&gso(false), &mut outgoing, now),
        Verdict::Drop(Reason::MarkedSuperPacket)
    );
}

/// A packet the kernel copied only in part (hybrid path, padded to its length) is
/// policed and stamped from its headers: the stamp is routed, not written; one that
/// needs more than its headers is read whole from the precise queue.
#[test]
fn a_partial_copy_is_read_from_its_headers_and_routed_for_the_rest() {
    let mut path = Path::new();
    let head = |n| PacketMeta {
        indev: MBOX_IF,
        outdev: MBOX_IF,
        copied: Some(n),
        ..Default::default()
    };
    let now = path.at(0);
    let mut pkt = data("198.18.1.2", "198.18.2.2", 1000);
    assert_eq!(
        path.mbox_p.process(&head(256), &mut pkt, now),
        Verdict::Route(Segments::Trailer),
        "a new sender's first packet is stamped"
    );
    assert_eq!(path.mbox_p.cap_counters().issued, 1);
    // Headers past the copy, a trailer to strip, an ICMP quote: read whole.
    let mut short = data("198.18.1.2", "198.18.2.2", 1000);
    assert_eq!(
        path.mbox_p.process(&head(30), &mut short, now),
        Verdict::Route(Segments::Process)
    );
    // Past the copy the worker's buffer holds what an earlier packet left there: headers
    // it cuts that then fail to parse are read whole, never dropped as malformed.
    let mut cut = data("198.18.1.2", "198.18.2.2", 1000);
    cut[30..].fill(0xff);
    assert_eq!(
        path.mbox_p.process(&head(30), &mut cut, now),
        Verdict::Route(Segments::Process)
    );
    let mut stamped = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
        .reserved(Marker::Stamped.apply(0))
        .payload(&[1; 1000])
        .build();
    assert_eq!(
        path.victim_p.process(&head(256), &mut stamped, now),
        Verdict::Route(Segments::Process)
    );
    let mut icmp = Builder::raw(ip("198.18.1.2"), ip("198.18.2.2"), 1)
        .payload(&[8; 1000])
        .build();
    assert_eq!(
        path.mbox_p.process(&head(256), &mut icmp, now),
        Verdict::Route(Segments::Process)
    );
}

/// In the queue's counters a super-packet stands for its segments and bytes, dropped
/// or not; any other packet for one.
#[test]
fn a_super_packet_counts_in_the_stats_as_its_segments() {
    let path = Path::new();
    let mss = usize::from(mss_with_room(
        false,
        usize::from(settings().path_mtu),
        wire_len(false),
    ));
    let sp = data("198.18.1.2", "198.18.2.2", 10 * mss);
    let gso = PacketMeta {
        gso: true,
        ..Default::default()
    };
    let wire = path.mbox_p.wire_size(&gso, &sp);
    assert_eq!(wire, (10, sp.len() as u64));
    assert_eq!(
        path.mbox_p.wire_size(&PacketMeta::default(), &sp),
        (1, sp.len() as u64)
    );
    let mut c = crate::stats::QueueCounters::default();
    count(&mut c, &Verdict::Drop(Reason::MarkedSuperPacket), wire);
    count(&mut c, &Verdict::Accept, (1, 60));
    assert_eq!(
        (
            c.dropped,
            c.accepted,
            c.wire_packets,
            c.wire_dropped,
            c.bytes
        ),
        (1, 1, 11, 10, sp.len() as u64 + 60)
    );
}

/// A trace that records the stage edges it is told of.
#[derive(Default)]
struct Recorded(Vec<String>);

impl crate::trace::Trace for &std::cell::RefCell<Recorded> {
    fn begin(self, s: crate::trace::Stage) {
        self.borrow_mut().0.push(format!("{s} B"));
    }
    fn end(self, s: crate::trace::Stage) {
        self.borrow_mut().0.push(format!("{s} E"));
    }
    fn headers(self, _: &[u8], _: &Parsed) {
        self.borrow_mut().0.push("headers".into());
    }
}

/// Run a packet through `p` traced, as `through` does; return the verdict and the
/// stages between parse and the end of the pipeline.
fn traced(p: &mut Pipeline, pkt: &mut Vec<u8>, now: Instant) -> (Verdict, Vec<String>) {
    let meta = PacketMeta {
        indev: MBOX_IF,
        outdev: MBOX_IF,
        ..Default::default()
    };
    let t = std::cell::RefCell::new(Recorded::default());
    let v = p.process_traced(&meta, pkt, now, &t);
    let t = t.into_inner();
    let common = [
        "process B",
        "parse B",
        "parse E",
        "headers",
        "classify B",
        "classify E",
    ];
    assert_eq!(t.0[..common.len()], common, "{:?}", t.0);
    assert_eq!(t.0.last().map(String::as_str), Some("process E"));
    (v, t.0[common.len()..t.0.len() - 1].to_vec())
}

#[test]
fn each_role_stage_reports_where_it_begins_and_ends() {
    let mut path = Path::new();
    let now = path.at(0);
    let sent = data("198.18.1.2", "198.18.2.2", 100);
    let mut pkt = sent.clone();
    let (v, stages) = traced(&mut path.mbox_p, &mut pkt, now);
    assert_eq!(v, Verdict::AcceptModified);
    assert_eq!(stages, ["police B", "police E", "stamp B", "stamp E"]);
    let (v, stages) = traced(&mut path.victim_p, &mut pkt, now);
    assert_eq!(
        (v, &pkt),
        (Verdict::AcceptModified, &sent),
        "traced as untraced"
    );
    assert_eq!(stages, ["strip B", "strip E"]);
    let mut a = ack("198.18.2.2", "198.18.1.2");
    let (_, stages) = traced(&mut path.victim_p, &mut a, now);
    assert_eq!(stages, ["feedback B", "feedback E"]);
    let (_, stages) = traced(&mut path.mbox_p, &mut a, now);
    assert_eq!(stages, ["feedback B", "feedback E"]);
    assert_eq!(path.mbox_p.cap_counters().returned, 1);
    // A SYN is clamped at the victim on its way in and its SYN-ACK on its way out; an
    // unmarked packet has nothing to strip, so no strip stage shows.
    let mut syn = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 8080)
        .flags(tcp::SYN)
        .tcp_option(2, &1460u16.to_be_bytes())
        .build();
    let (_, stages) = traced(&mut path.victim_p, &mut syn, now);
    assert_eq!(stages, ["clamp B", "clamp E"]);
    let mut syn_ack = Builder::tcp(ip("198.18.2.2"), ip("198.18.1.2"), 8080, 40000)
        .flags(tcp::SYN | tcp::ACK)
        .tcp_option(2, &1460u16.to_be_bytes())
        .build();
    let (_, stages) = traced(&mut path.victim_p, &mut syn_ack, now);
    assert_eq!(stages, ["clamp B", "clamp E", "feedback B", "feedback E"]);
}

#[test]
fn an_unmarked_packet_the_mbox_does_not_stamp_passes_untouched() {
    let mut path = Path::new();
    for (client, server) in CLIENT_SERVER {
        path.mbox(&mut data(client, server, 10), 0);
        // In the period's last Th_rtt: policed, never stamped, never counted as marked.
        let sent = data(client, server, 10);
        let mut pkt = sent.clone();
        assert_eq!(path.mbox(&mut pkt, 3500), Verdict::Accept);
        assert_eq!(pkt, sent);
    }
    // Any other protocol to a protected address, queued at the forward hook: policed.
    let mut udp = Builder::udp(ip("198.18.1.2"), ip("198.18.2.2"), 5000, 8080).build();
    let forward = PacketMeta {
        hook: HOOK_FORWARD,
        ..Default::default()
    };
    assert_eq!(
        path.mbox_p.process(&forward, &mut udp, path.at(3600)),
        Verdict::Accept
    );
    assert!(path.mbox_p.cap_counters().rejected.is_empty());
}

/// A GSO super-packet of `segments` full segments of `mss` bytes from `src` to `dst`.
fn super_packet(
    src: &str,
    dst: &str,
    (sport, dport): (u16, u16),
    segments: usize,
    mss: u16,
) -> Vec<u8> {
    Builder::tcp(ip(src), ip(dst), sport, dport)
        .flags(tcp::ACK)
        .payload(&vec![0x77; segments * usize::from(mss)])
        .build()
}

/// A reload's feedback limit holds from the next ACK: of three capabilities kept, an
/// ACK returns one; reconfigured to three per ACK, the next returns the other two.
#[test]
fn a_reload_changes_how_many_capabilities_an_ack_returns() {
    let (client, server) = CLIENT_SERVER[0];
    let one = CapSettings {
        feedback_per_ack: 1,
        ..settings()
    };
    let mut path = Path::with_victim(Victim::new(&one, vec![MBOX_IF]));
    for i in 0..3 {
        let mut pkt = data(client, server, 10);
        path.mbox(&mut pkt, i);
        path.victim(&mut pkt, i);
    }
    let mut a = ack(server, client);
    path.victim(&mut a, 5);
    assert!(matches!(marker(&a), Marker::Feedback(k) if k.get() == 1));
    let mut cfg = crate::config::parse(
        "[protect]\naddresses = [\"198.18.2.2\"]\ntcp_ports = [80]\n",
        "victim",
    )
    .unwrap();
    cfg.protect = selection();
    cfg.capabilities = Some(CapSettings {
        feedback_per_ack: 3,
        ..settings()
    });
    path.victim_p.reconfigure(&cfg);
    let mut a = ack(server, client);
    path.victim(&mut a, 6);
    assert!(matches!(marker(&a), Marker::Feedback(k) if k.get() == 2));
}

const GSO: PacketMeta = PacketMeta {
    hook: 0,
    indev: MBOX_IF,
    outdev: MBOX_IF,
    truncated: false,
    gso: true,
    csum_partial: false,
    id: None,
    copied: None,
};

#[test]
fn a_super_packet_counts_the_segments_it_is_cut_into_at_both_ends() {
    for (client, server) in CLIENT_SERVER {
        let v6 = client.contains(':');
        // The MSS each end advertises: room for one stamp, for per_ack feedback.
        let to_victim = mss_with_room(v6, usize::from(MTU), wire_len(v6));
        let path = Path::new();
        let mut m = path.mbox_p;
        let mut pkt = super_packet(client, server, (40000, 8080), 10, to_victim);
        m.process(&GSO, &mut pkt, path.t0);
        let report = m.police_report(10).unwrap();
        assert_eq!(report.senders[0].nr, 10, "v6 {v6}");
        assert_eq!(m.wire_size(&GSO, &pkt).0, 10);
        let from_victim = mss_with_room(v6, usize::from(MTU), 3 * wire_len(v6));
        let pkt = super_packet(server, client, (8080, 40000), 7, from_victim);
        assert_eq!(path.victim_p.wire_size(&GSO, &pkt).0, 7, "v6 {v6}");
    }
}

#[test]
fn a_super_packet_from_the_victim_takes_all_the_feedback_its_segments_leave_room_for() {
    let mut path = Path::new();
    for period in 0..3 {
        stamp_and_keep(&mut path, period * 4000);
    }
    let mss = mss_with_room(false, usize::from(MTU), 3 * wire_len(false));
    let mut pkt = super_packet("198.18.2.2", "198.18.1.2", (8080, 40000), 4, mss);
    let v = path.victim_p.process(&GSO, &mut pkt, path.at(8000));
    assert_eq!(v, Verdict::Route(Segments::Trailer));
    assert_eq!(path.victim_p.cap_counters().fed_back, 3);
}

#[test]
fn a_sender_verified_by_its_feedback_is_reported_once_to_the_kernel_set() {
    let mut path = Path::new();
    assert!(!path.mbox_p.verified_changed());
    let mut a = feedback_ack(&mut path, 0);
    path.mbox(&mut a, 10);
    assert!(path.mbox_p.verified_changed());
    assert_eq!(
        path.mbox_p.take_verified_changes(),
        [(ip("198.18.1.2"), true)]
    );
    assert!(!path.mbox_p.verified_changed());
}

#[test]
fn the_system_view_the_workers_merge_is_the_one_the_police_uses() {
    let mut path = Path::new();
    let system = crate::police::System {
        slr: 0.25,
        totals: Default::default(),
    };
    path.mbox_p.set_system(system);
    assert_eq!(path.mbox_p.police_report(1).unwrap().slr, 0.25);
}

#[test]
fn tcp_to_an_unprotected_port_is_policed_as_best_effort_and_never_stamped() {
    let mut path = Path::new();
    let forward = PacketMeta {
        hook: HOOK_FORWARD,
        ..Default::default()
    };
    let sent = Builder::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 9999)
        .payload(&[1; 10])
        .build();
    let mut pkt = sent.clone();
    assert_eq!(
        path.mbox_p.process(&forward, &mut pkt, path.t0),
        Verdict::Accept
    );
    assert_eq!(pkt, sent);
    let row = path.mbox_p.police_report(1).unwrap().senders[0].clone();
    assert_eq!((row.other, row.issued), (1, 0));
}

#[test]
fn only_forwarded_traffic_to_a_protected_address_is_policed_off_its_ports() {
    let mut path = Path::new();
    let forward = PacketMeta {
        hook: HOOK_FORWARD,
        ..Default::default()
    };
    // Forwarded, but to an address nobody protects: not ours to police.
    let mut elsewhere = Builder::udp(ip("198.18.1.2"), ip("198.18.9.9"), 5000, 53).build();
    let v = path.mbox_p.process(&forward, &mut elsewhere, path.t0);
    assert_eq!(v, Verdict::Pass(Reason::Unselected));
    // To a protected address, but queued before routing (prerouting): not policed here.
    let mut early = Builder::udp(ip("198.18.1.2"), ip("198.18.2.2"), 5000, 53).build();
    let v = path
        .mbox_p
        .process(&PacketMeta::default(), &mut early, path.t0);
    assert_eq!(v, Verdict::Pass(Reason::Unselected));
    assert!(path.mbox_p.police_report(1).unwrap().senders.is_empty());
}
