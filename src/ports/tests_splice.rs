//! Content rules' connections, packet by packet, on byte buffers: the engine's
//! handshake, the choice by the first data, the join and the translation both ways.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::splice::{IDLE, LINGER, MAX_OPENING, WAIT_FOR_DATA, WAIT_FOR_SERVER};
use super::*;
use crate::pipeline::Reason;
use crate::wire::build::Builder;
use crate::wire::{self, tcp};

const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 4_000_000_000;
const MSS: u16 = 1_400;

fn client() -> IpAddr {
    "198.18.1.2".parse().unwrap()
}

fn server() -> IpAddr {
    "198.18.2.2".parse().unwrap()
}

fn forwarder() -> Forwarder {
    let rule = ForwardRule {
        port: 8080,
        default: 8082,
        branches: Branches::Content(vec![(b" /api/".to_vec(), 8081)]),
    };
    Forwarder::new(vec![rule], 1)
}

/// A client's segment to port 8080 from port 40000.
fn to_server(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Builder {
    Builder::tcp(client(), server(), 40_000, 8080)
        .flags(flags)
        .seq(seq)
        .ack(ack)
        .payload(payload)
}

/// The server's segment back (its source port as the client knows it).
fn to_client(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    Builder::tcp(server(), client(), 8080, 40_000)
        .flags(flags)
        .seq(seq)
        .ack(ack)
        .payload(payload)
        .build()
}

/// The client's SYN, offering everything a Linux client offers (ECN too).
fn syn() -> Vec<u8> {
    to_server(tcp::SYN | tcp::ECE | tcp::CWR, CLIENT_ISN, 0, &[])
        .mss(1460)
        .tcp_option(tcp::OPT_SACK_PERMITTED, &[])
        .tcp_option(tcp::OPT_TIMESTAMPS, &[0; 8])
        .tcp_option(tcp::OPT_WINDOW_SCALE, &[7])
        .build()
}

struct Run {
    s: Splicer,
    f: Forwarder,
    now: Instant,
    id: u32,
}

impl Run {
    fn new() -> Run {
        Run {
            s: Splicer::new(9),
            f: forwarder(),
            now: Instant::now(),
            id: 0,
        }
    }

    /// A client's packet: its step and the bytes it leaves with.
    fn inbound(&mut self, mut pkt: Vec<u8>) -> (Step, Vec<u8>) {
        self.id += 1;
        let p = wire::parse(&pkt).unwrap();
        let step = self
            .s
            .inbound(&mut self.f, (Some(self.id), MSS), &mut pkt, &p, self.now);
        (step, pkt)
    }

    fn outbound(&mut self, mut pkt: Vec<u8>) -> (Step, Vec<u8>) {
        let p = wire::parse(&pkt).unwrap();
        let step = self.s.outbound(&mut pkt, &p, self.now);
        (step, pkt)
    }

    fn actions(&mut self) -> Vec<Action> {
        self.s.take_actions().collect()
    }

    /// The server's SYN-ACK to the released SYN.
    fn server_joins(&mut self) -> Step {
        self.outbound(to_client(
            tcp::SYN | tcp::ACK,
            SERVER_ISN,
            CLIENT_ISN + 1,
            &[],
        ))
        .0
    }

    /// The bytes of held packet `id`, the one packet the last step released (accepted,
    /// unmarked).
    fn released(&mut self, id: u32) -> Vec<u8> {
        let actions = self.actions();
        match &actions[..] {
            [
                Action::Release {
                    id: got,
                    verdict: Ok((bytes, None)),
                },
            ] if *got == id => bytes.clone(),
            _ => panic!("{actions:?}"),
        }
    }

    /// The one action of the last step: held packet `id` dropped for `reason`.
    fn dropped(&mut self, id: u32, reason: Reason) {
        let actions = self.actions();
        assert!(
            matches!(
                &actions[..],
                [Action::Release { id: got, verdict: Err(why) }] if *got == id && *why == reason
            ),
            "{actions:?}"
        );
    }

    /// A connection whose first data `payload` was read (the SYN released); the
    /// engine's initial sequence number.
    fn examined(&mut self, payload: &[u8]) -> u32 {
        let isn = self.handshake();
        self.inbound(to_server(tcp::ACK, CLIENT_ISN + 1, isn + 1, payload).build());
        self.actions();
        isn
    }

    /// A connection examined (`/api/`) and joined; the engine's initial sequence number.
    fn joined(&mut self) -> u32 {
        let isn = self.examined(b"GET /api/");
        assert_eq!(
            self.server_joins(),
            Step::Drop(Reason::SpliceServerHandshake)
        );
        self.actions();
        isn
    }

    /// SYN and ACK: the engine's initial sequence number, from its SYN-ACK.
    fn handshake(&mut self) -> u32 {
        assert_eq!(self.inbound(syn()).0, Step::Hold);
        let [Action::Send(syn_ack)] = &self.actions()[..] else {
            panic!("one SYN-ACK")
        };
        let isn = wire::parse(syn_ack).unwrap().tcp().unwrap().seq;
        let ack = to_server(tcp::ACK, CLIENT_ISN + 1, isn + 1, &[]).build();
        assert_eq!(self.inbound(ack).0, Step::Hold);
        assert!(self.actions().is_empty());
        isn
    }
}

fn tcp_of(pkt: &[u8]) -> wire::TcpInfo {
    *wire::parse(pkt).unwrap().tcp().unwrap()
}

fn checks(pkt: &[u8]) -> bool {
    wire::verify_checksums(pkt, &wire::parse(pkt).unwrap())
}

#[test]
fn the_engine_answers_the_handshake_with_only_what_it_can_keep() {
    let mut r = Run::new();
    assert_eq!(r.inbound(syn()).0, Step::Hold);
    let [Action::Send(syn_ack)] = &r.actions()[..] else {
        panic!("one SYN-ACK")
    };
    let p = wire::parse(syn_ack).unwrap();
    let t = p.tcp().unwrap();
    assert_eq!(
        (p.src, p.dst, t.src_port, t.dst_port),
        (server(), client(), 8080, 40_000)
    );
    assert_eq!((t.flags, t.ack), (tcp::SYN | tcp::ACK, CLIENT_ISN + 1));
    // The smaller MSS of the client's and the path's; no other option, no ECN.
    assert_eq!(wire::tcp_mss(syn_ack, &p), Some(MSS));
    assert_eq!(p.l4_header_len, 24);
    assert!(checks(syn_ack));
    assert_eq!(r.s.counts().answered, 1);
    assert_eq!(r.s.counts().opening, 1);
}

#[test]
fn the_first_data_chooses_the_port_and_the_server_joins_with_translation() {
    let mut r = Run::new();
    let isn = r.handshake();
    let request = to_server(
        tcp::ACK | tcp::PSH,
        CLIENT_ISN + 1,
        isn + 1,
        b"GET /api/x HTTP/1.1\r\n",
    )
    .build();
    assert_eq!(r.inbound(request.clone()).0, Step::Hold);
    // The SYN goes to 8081 without the options the engine did not offer; the pure ACK
    // goes: the data carries the same acknowledgement.
    let actions = r.actions();
    let [
        Action::Release {
            id: 1,
            verdict: Ok((syn_out, Some(mark_8081))),
        },
        Action::Release {
            id: 2,
            verdict: Err(Reason::SpliceWaiting),
        },
    ] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(*mark_8081, mark(8081));
    let t = tcp_of(syn_out);
    assert_eq!((t.flags, t.seq, t.reserved & 1), (tcp::SYN, CLIENT_ISN, 0));
    assert_eq!(
        wire::parse(syn_out).unwrap().l4_header_len,
        syn().len() - 20
    );
    // The client's MSS stays (1460); the rest are no-ops, and the end of the list.
    let (mss, rest) = syn_out[40..].split_at(4);
    assert_eq!(mss, [tcp::OPT_MSS, 4, 0x05, 0xb4]);
    assert!(
        rest.iter().all(|&b| b == tcp::OPT_NOP || b == tcp::OPT_END),
        "{rest:?}"
    );
    assert!(checks(syn_out));
    // The server's SYN-ACK is the engine's to take; the data goes on acknowledging the
    // server's sequence numbers.
    assert_eq!(r.server_joins(), Step::Drop(Reason::SpliceServerHandshake));
    let data = r.released(3);
    let t = tcp_of(&data);
    assert_eq!((t.seq, t.ack), (CLIENT_ISN + 1, SERVER_ISN.wrapping_add(1)));
    assert_eq!(
        wire::parse(&data).unwrap().payload(&data),
        wire::parse(&request).unwrap().payload(&request)
    );
    assert!(checks(&data));
    // From then on: the server's numbers move back, the client's acknowledgements on.
    let (step, reply) = r.outbound(to_client(
        tcp::ACK,
        SERVER_ISN.wrapping_add(1),
        CLIENT_ISN + 22,
        b"200 OK",
    ));
    assert_eq!(step, Step::Edited);
    assert_eq!(tcp_of(&reply).seq, isn + 1);
    assert!(checks(&reply));
    let (step, ack) = r.inbound(to_server(tcp::ACK, CLIENT_ISN + 22, isn + 7, &[]).build());
    assert_eq!(step, Step::Edited);
    assert_eq!(tcp_of(&ack).ack, SERVER_ISN.wrapping_add(7));
    assert!(checks(&ack));
    // A SYN-ACK the server sends again is the engine's too.
    assert_eq!(r.server_joins(), Step::Drop(Reason::SpliceServerHandshake));
    let c = r.s.counts();
    assert_eq!(
        (c.answered, c.examined, c.joined, c.opening, c.open),
        (1, 1, 1, 0, 1)
    );
    assert_eq!(
        r.f.counts()
            .iter()
            .find(|c| c.to == 8081)
            .unwrap()
            .connections,
        1
    );
}

#[test]
fn data_without_the_pattern_goes_to_the_default_port() {
    let mut r = Run::new();
    let isn = r.handshake();
    r.inbound(
        to_server(
            tcp::ACK,
            CLIENT_ISN + 1,
            isn + 1,
            b"GET /other HTTP/1.1\r\n",
        )
        .build(),
    );
    let actions = r.actions();
    assert!(
        matches!(&actions[0], Action::Release { id: 1, verdict: Ok((_, Some(m))) } if *m == mark(8082)),
        "{actions:?}"
    );
}

#[test]
fn a_client_that_sends_nothing_is_opened_to_the_default_after_the_wait() {
    let mut r = Run::new();
    let isn = r.handshake();
    r.s.expire(&mut r.f, r.now + WAIT_FOR_DATA / 2);
    assert!(r.actions().is_empty());
    r.s.expire(&mut r.f, r.now + WAIT_FOR_DATA);
    let actions = r.actions();
    assert!(
        matches!(&actions[..], [Action::Release { id: 1, verdict: Ok((_, Some(m))) }] if *m == mark(8082)),
        "{actions:?}"
    );
    // The held ACK completes the server's handshake.
    r.server_joins();
    let ack = r.released(2);
    assert_eq!(tcp_of(&ack).ack, SERVER_ISN.wrapping_add(1));
    // The server speaks first: its banner reaches the client in the client's numbers.
    let (_, banner) = r.outbound(to_client(
        tcp::ACK | tcp::PSH,
        SERVER_ISN.wrapping_add(1),
        CLIENT_ISN + 1,
        b"220 hello\r\n",
    ));
    assert_eq!(tcp_of(&banner).seq, isn + 1);
    assert_eq!(r.s.counts().waited, 1);
}

#[test]
fn a_server_that_refuses_or_never_answers_resets_the_client() {
    // Nothing listens on the chosen port: its reset reaches the client in its numbers.
    let mut r = Run::new();
    let isn = r.examined(b"GET /api/ HTTP/1.1");
    let (step, rst) = r.outbound(to_client(tcp::RST | tcp::ACK, 0, CLIENT_ISN + 1, &[]));
    assert_eq!(step, Step::Edited);
    assert_eq!(tcp_of(&rst).seq, isn + 1);
    r.dropped(3, Reason::SpliceFailed);
    // No answer at all: the engine resets the client itself.
    let mut r = Run::new();
    let isn = r.examined(b"GET /api/ HTTP/1.1");
    r.s.expire(&mut r.f, r.now + WAIT_FOR_SERVER);
    let actions = r.actions();
    let [
        Action::Send(reset),
        Action::Release {
            id: 3,
            verdict: Err(Reason::SpliceFailed),
        },
    ] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    let t = tcp_of(reset);
    assert_eq!(
        (t.flags, t.seq, t.dst_port),
        (tcp::RST | tcp::ACK, isn + 1, 40_000)
    );
    assert!(checks(reset));
    let c = r.s.counts();
    assert_eq!((c.failed, c.opening, c.open), (1, 0, 0));
}

#[test]
fn retransmissions_while_the_engine_holds_the_connection_are_answered_or_dropped() {
    let mut r = Run::new();
    let isn = r.handshake();
    // The client lost the SYN-ACK: it gets it again.
    assert_eq!(r.inbound(syn()).0, Step::Drop(Reason::SpliceWaiting));
    assert!(matches!(&r.actions()[..], [Action::Send(s)] if tcp_of(s).seq == isn));
    // A second pure ACK, and data that is not the next byte, wait their turn.
    let ack = to_server(tcp::ACK, CLIENT_ISN + 1, isn + 1, &[]).build();
    assert_eq!(r.inbound(ack).0, Step::Drop(Reason::SpliceWaiting));
    let later = to_server(tcp::ACK, CLIENT_ISN + 100, isn + 1, b"xx").build();
    assert_eq!(r.inbound(later).0, Step::Drop(Reason::SpliceWaiting));
    // The client gives up: its reset ends the connection and everything held.
    let rst = to_server(tcp::RST, CLIENT_ISN + 1, 0, &[]).build();
    assert_eq!(r.inbound(rst).0, Step::Drop(Reason::SpliceWaiting));
    let actions = r.actions();
    assert!(
        actions.iter().all(|a| matches!(
            a,
            Action::Release {
                verdict: Err(Reason::SpliceWaiting),
                ..
            }
        )) && actions.len() == 2,
        "{actions:?}"
    );
    assert_eq!((r.s.counts().abandoned, r.s.is_empty()), (1, true));
}

#[test]
fn past_its_bound_a_new_connection_goes_to_the_default_unexamined() {
    let mut r = Run::new();
    for port in 0..MAX_OPENING as u16 {
        let mut pkt = Builder::tcp(client(), server(), 1 + port, 8080)
            .flags(tcp::SYN)
            .build();
        let p = wire::parse(&pkt).unwrap();
        assert_eq!(
            r.s.inbound(&mut r.f, (Some(7), MSS), &mut pkt, &p, r.now),
            Step::Hold
        );
    }
    assert_eq!(r.inbound(syn()).0, Step::Forward(Some(mark(8082))));
    // A SYN the driver cannot hold (a segment of the hybrid path) goes the same way.
    let mut r = Run::new();
    let mut pkt = syn();
    let p = wire::parse(&pkt).unwrap();
    assert_eq!(
        r.s.inbound(&mut r.f, (None, MSS), &mut pkt, &p, r.now),
        Step::Forward(Some(mark(8082)))
    );
    assert_eq!(r.s.counts().full, 1);
}

#[test]
fn other_ports_and_protocols_pass_untouched() {
    let mut r = Run::new();
    let other = Builder::tcp(client(), server(), 40_000, 9090)
        .flags(tcp::SYN)
        .build();
    assert_eq!(r.inbound(other).0, Step::Pass);
    let udp = Builder::udp(client(), server(), 40_000, 8080).build();
    assert_eq!(r.inbound(udp).0, Step::Pass);
    assert!(r.actions().is_empty() && r.s.is_empty());
}

#[test]
fn joined_connections_are_forgotten_once_closed_or_idle() {
    let mut r = Run::new();
    let isn = r.joined();
    r.inbound(to_server(tcp::ACK | tcp::FIN, CLIENT_ISN + 10, isn + 1, &[]).build());
    r.s.expire(&mut r.f, r.now + Duration::from_secs(120));
    assert_eq!(
        r.s.counts().open,
        1,
        "half closed: the server may still send"
    );
    r.outbound(to_client(
        tcp::ACK | tcp::FIN,
        SERVER_ISN.wrapping_add(1),
        CLIENT_ISN + 11,
        &[],
    ));
    r.s.expire(&mut r.f, r.now + Duration::from_secs(240));
    assert_eq!(r.s.counts().open, 0);
    assert_eq!(r.s.counts().expired, 0);
    // A connection nobody closes is forgotten after an hour without packets.
    let mut r = Run::new();
    r.joined();
    r.s.expire(&mut r.f, r.now + Duration::from_secs(3599));
    assert_eq!(r.s.counts().open, 1);
    // (Idleness is checked every 10 s.)
    r.s.expire(&mut r.f, r.now + Duration::from_secs(3611));
    assert_eq!((r.s.counts().open, r.s.counts().expired), (0, 1));
}

#[test]
fn data_both_ways_closes_nothing_a_reset_does_and_linger_ends_exactly() {
    let mut r = Run::new();
    let isn = r.joined();
    r.inbound(to_server(tcp::ACK, CLIENT_ISN + 10, isn + 1, b"more").build());
    r.outbound(to_client(
        tcp::ACK,
        SERVER_ISN.wrapping_add(1),
        CLIENT_ISN + 14,
        b"ok",
    ));
    r.s.expire(&mut r.f, r.now + LINGER + Duration::from_secs(1));
    assert_eq!(r.s.counts().open, 1, "no FIN, no reset: still open");
    // A reset without ACK passes as it is, and closes the connection: forgotten exactly
    // `LINGER` after it.
    let mut r = Run::new();
    r.joined();
    let rst = to_server(tcp::RST, CLIENT_ISN + 10, 0, &[]).build();
    assert_eq!(r.inbound(rst.clone()), (Step::Pass, rst));
    r.s.expire(&mut r.f, r.now + LINGER);
    assert_eq!((r.s.counts().open, r.s.counts().expired), (0, 0));
    // Idle exactly `IDLE`: forgotten.
    let mut r = Run::new();
    r.joined();
    r.s.expire(&mut r.f, r.now + IDLE);
    assert_eq!((r.s.counts().open, r.s.counts().expired), (0, 1));
}

#[test]
fn idleness_is_checked_every_ten_seconds_not_at_every_tick() {
    let mut r = Run::new();
    r.joined();
    r.s.expire(&mut r.f, r.now + IDLE - Duration::from_secs(1));
    // Past `IDLE`, but within ten seconds of the last check: kept until the next one.
    r.s.expire(&mut r.f, r.now + IDLE + Duration::from_secs(1));
    assert_eq!(r.s.counts().open, 1);
    r.s.expire(&mut r.f, r.now + IDLE + Duration::from_secs(9));
    assert_eq!(r.s.counts().open, 0);
}

#[test]
fn while_the_server_is_opened_only_its_syn_ack_or_reset_counts() {
    let mut r = Run::new();
    let isn = r.examined(b"GET /api/");
    // A stray segment from the server's port changes nothing.
    let stray = to_client(tcp::ACK, 5, CLIENT_ISN + 1, &[]);
    assert_eq!(r.outbound(stray.clone()), (Step::Pass, stray));
    assert!(r.actions().is_empty());
    assert_eq!(r.s.counts().opening, 1);
    // The client sends its data again: it waits, the first copy is the one held.
    let again = to_server(tcp::ACK, CLIENT_ISN + 1, isn + 1, b"GET /api/").build();
    assert_eq!(r.inbound(again).0, Step::Drop(Reason::SpliceWaiting));
    assert_eq!(r.s.counts().opening, 1);
    // The client resets: it passes (the server has the SYN), the held data goes.
    let rst = to_server(tcp::RST, CLIENT_ISN + 1, 0, &[]).build();
    assert_eq!(r.inbound(rst).0, Step::Pass);
    r.dropped(3, Reason::SpliceWaiting);
    let c = r.s.counts();
    assert_eq!((c.abandoned, c.opening, c.open), (1, 0, 0));
}

#[test]
fn only_a_bare_syn_starts_a_connection() {
    let mut r = Run::new();
    for flags in [tcp::SYN | tcp::ACK, tcp::SYN | tcp::RST, tcp::ACK] {
        let pkt = to_server(flags, CLIENT_ISN, 0, &[]).build();
        assert_eq!(r.inbound(pkt.clone()), (Step::Pass, pkt), "{flags:#x}");
    }
    assert!(r.actions().is_empty() && r.s.is_empty());
}

#[test]
fn the_held_syn_loses_accecn_too() {
    let mut r = Run::new();
    let syn = to_server(tcp::SYN | tcp::ECE | tcp::CWR, CLIENT_ISN, 0, &[])
        .reserved(1)
        .mss(1460)
        .build();
    assert_eq!(r.inbound(syn).0, Step::Hold);
    r.s.expire(&mut r.f, r.now + WAIT_FOR_DATA);
    let actions = r.actions();
    let held = actions
        .iter()
        .find_map(|a| match a {
            Action::Release {
                id: 1,
                verdict: Ok((bytes, _)),
            } => Some(bytes.clone()),
            _ => None,
        })
        .expect("the SYN released");
    let t = tcp_of(&held);
    assert_eq!((t.reserved, t.flags), (0, tcp::SYN));
}

#[test]
fn data_that_does_not_acknowledge_the_engines_syn_ack_waits() {
    let mut r = Run::new();
    let isn = r.handshake();
    // The ACK flag with another number, and the right number without the flag.
    for (flags, ack) in [(tcp::ACK, isn + 2), (tcp::PSH, isn + 1)] {
        let pkt = to_server(flags, CLIENT_ISN + 1, ack, b"GET /api/").build();
        assert_eq!(
            r.inbound(pkt).0,
            Step::Drop(Reason::SpliceWaiting),
            "{flags:#x}"
        );
    }
    assert!(r.actions().is_empty());
    assert_eq!(r.s.counts().examined, 0);
}
