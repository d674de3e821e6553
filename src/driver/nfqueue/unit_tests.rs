//! Byte-exact encoding, hostile-input parsing and proc-table parsing (no kernel needed).

use proptest::prelude::*;

use super::inbox::{Inbox, Incoming, Unreadable};
use super::netlink::{self, Attrs};
use super::packet::parse_packet;
use super::socket::Datagram;
use super::{PacketMsg, QueueError, Verdict, parse_kernel_queue_stats};

/// nlmsghdr bytes: length, type, flags in host order, then seq and portid 0.
fn nlhdr(len: u32, msg_type: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut v = len.to_ne_bytes().to_vec();
    v.extend(msg_type.to_ne_bytes());
    v.extend(flags.to_ne_bytes());
    v.extend(seq.to_ne_bytes());
    v.extend(0u32.to_ne_bytes());
    v
}

/// nlattr header bytes.
fn nla(len: u16, attr_type: u16) -> Vec<u8> {
    let mut v = len.to_ne_bytes().to_vec();
    v.extend(attr_type.to_ne_bytes());
    v
}

/// nfgenmsg for queue `q`: AF_UNSPEC, version 0, big-endian queue number.
fn nfgen(q: u16) -> Vec<u8> {
    let [hi, lo] = q.to_be_bytes();
    vec![0, 0, hi, lo]
}

#[test]
fn bind_message_is_byte_exact() {
    let mut b = Vec::new();
    netlink::config_cmd(&mut b, 1, 3, netlink::NFQNL_CFG_CMD_BIND, true);
    let want = [
        nlhdr(28, 0x0302, 0x0005, 1),
        nfgen(3),
        nla(8, 1),
        vec![1, 0, 0, 0],
    ]
    .concat();
    assert_eq!(b, want);
}

#[test]
fn unbind_message_has_no_ack_flag() {
    let mut b = Vec::new();
    netlink::config_cmd(&mut b, 0, 0x1234, netlink::NFQNL_CFG_CMD_UNBIND, false);
    let want = [
        nlhdr(28, 0x0302, 0x0001, 0),
        nfgen(0x1234),
        nla(8, 1),
        vec![2, 0, 0, 0],
    ]
    .concat();
    assert_eq!(b, want);
}

#[test]
fn params_message_is_byte_exact_and_padded() {
    let mut b = Vec::new();
    netlink::config_params(&mut b, 2, 3, 0xffff);
    let want = [
        nlhdr(32, 0x0302, 0x0005, 2),
        nfgen(3),
        nla(9, 2),
        vec![0, 0, 0xff, 0xff, 2, 0, 0, 0],
    ]
    .concat();
    assert_eq!(b, want);
}

#[test]
fn maxlen_and_flags_messages_are_byte_exact() {
    let mut b = Vec::new();
    netlink::config_maxlen(&mut b, 3, 3, 65536, true);
    let want = [
        nlhdr(28, 0x0302, 0x0005, 3),
        nfgen(3),
        nla(8, 3),
        vec![0, 1, 0, 0],
    ]
    .concat();
    assert_eq!(b, want);

    b.clear();
    netlink::config_flags(&mut b, 4, 3, 1, 5);
    let want = [
        nlhdr(36, 0x0302, 0x0005, 4),
        nfgen(3),
        nla(8, 5),
        vec![0, 0, 0, 1],
        nla(8, 4),
        vec![0, 0, 0, 5],
    ]
    .concat();
    assert_eq!(b, want);
}

#[test]
fn verdict_messages_are_byte_exact() {
    let mut b = Vec::new();
    netlink::verdict(
        &mut b,
        (false, 3),
        0x01020304,
        Verdict::Accept.code(),
        None,
        None,
    );
    let want = [
        nlhdr(32, 0x0301, 0x0001, 0),
        nfgen(3),
        nla(12, 2),
        vec![0, 0, 0, 1, 1, 2, 3, 4],
    ]
    .concat();
    assert_eq!(b, want);

    b.clear();
    netlink::verdict(&mut b, (true, 3), 77, Verdict::Drop.code(), None, None);
    let want = [
        nlhdr(32, 0x0303, 0x0001, 0),
        nfgen(3),
        nla(12, 2),
        vec![0, 0, 0, 0, 0, 0, 0, 77],
    ]
    .concat();
    assert_eq!(b, want);

    // A new mark (a forwarded SYN's) follows the header, big-endian.
    b.clear();
    let mark = Some(0x4d50_1f91);
    netlink::verdict(&mut b, (false, 3), 9, Verdict::Accept.code(), mark, None);
    let want = [
        nlhdr(40, 0x0301, 0x0001, 0),
        nfgen(3),
        nla(12, 2),
        vec![0, 0, 0, 1, 0, 0, 0, 9],
        nla(8, 3),
        vec![0x4d, 0x50, 0x1f, 0x91],
    ]
    .concat();
    assert_eq!(b, want);
}

#[test]
fn verdict_with_payload_counts_the_payload_and_its_padding() {
    let mut b = Vec::new();
    netlink::verdict(&mut b, (false, 3), 9, Verdict::Accept.code(), None, Some(5));
    // 32 bytes of header and verdict, a 4-byte NFQA_PAYLOAD header, 5 bytes + 3 pad sent apart.
    let want = [
        nlhdr(44, 0x0301, 0x0001, 0),
        nfgen(3),
        nla(12, 2),
        vec![0, 0, 0, 1, 0, 0, 0, 9],
        nla(9, 10),
    ]
    .concat();
    assert_eq!(b, want);
}

#[test]
fn verdict_codes_match_the_kernel() {
    assert_eq!(Verdict::Drop.code(), 0);
    assert_eq!(Verdict::Accept.code(), 1);
    assert_eq!(
        Verdict::Queue {
            num: 1,
            bypass: false
        }
        .code(),
        0x0001_0003
    );
    assert_eq!(
        Verdict::Queue {
            num: 0xffff,
            bypass: true
        }
        .code(),
        0xffff_8003
    );
}

/// A packet message as the kernel sends it, with an `extra` tail of attributes.
pub(super) fn packet_msg(id: u32, payload: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut body = nfgen(3);
    body.extend(nla(11, 1));
    body.extend(id.to_be_bytes());
    body.extend([0x08, 0x00, 1, 0]); // hw_protocol, hook, pad
    body.extend(nla(8, 3));
    body.extend(0xabcdu32.to_be_bytes()); // mark
    body.extend(nla(8, 5));
    body.extend(7u32.to_be_bytes()); // indev
    body.extend(extra);
    body.extend(nla(4 + payload.len() as u16, 10));
    body.extend(payload);
    body.resize(netlink::align4(body.len()), 0);
    [nlhdr(16 + body.len() as u32, 0x0300, 0, 0), body].concat()
}

fn parse_one(buf: &[u8]) -> Option<super::PacketMsg> {
    let (msg, _) = netlink::next_msg(buf, 0)?;
    (msg.msg_type == netlink::NFQNL_MSG_PACKET).then_some(())?;
    parse_packet(buf, msg.body)
}

#[test]
fn packet_message_parses() {
    let extra = [
        nla(8, 14),
        3u32.to_be_bytes().to_vec(),
        nla(8, 13),
        1500u32.to_be_bytes().to_vec(),
    ]
    .concat();
    let buf = packet_msg(42, b"hello", &extra);
    let p = parse_one(&buf).expect("parses");
    assert_eq!(
        (p.id, p.hw_protocol, p.hook, p.mark, p.indev, p.outdev),
        (42, 0x0800, 1, 0xabcd, 7, 0)
    );
    assert_eq!((p.skb_info, p.orig_len), (3, Some(1500)));
    assert_eq!(&buf[p.payload], b"hello");
}

#[test]
fn every_truncation_is_rejected() {
    let buf = packet_msg(1, b"0123456789", &[]);
    for cut in 0..buf.len() {
        // The nlmsghdr length now lies (claims more than there is): no message.
        assert!(parse_one(&buf[..cut]).is_none(), "cut at {cut}");
    }
}

#[test]
fn lying_attribute_lengths_are_rejected() {
    let mut buf = packet_msg(1, b"abcd", &[]);
    // The first attribute (packet header) at offset 20: claim 0xffff bytes.
    buf[20..22].copy_from_slice(&0xffffu16.to_ne_bytes());
    assert!(
        parse_one(&buf).is_none(),
        "header attribute overruns the message"
    );
    // Claim fewer bytes than an attribute header.
    buf[20..22].copy_from_slice(&2u16.to_ne_bytes());
    assert!(parse_one(&buf).is_none());
    // A packet header attribute too short for its struct.
    buf[20..22].copy_from_slice(&6u16.to_ne_bytes());
    assert!(parse_one(&buf).is_none());
}

#[test]
fn short_fixed_size_attribute_rejects_the_message() {
    let extra = [nla(6, 3), vec![0, 0, 0, 0]].concat(); // a 2-byte mark
    assert!(parse_one(&packet_msg(1, b"x", &extra)).is_none());
}

#[test]
fn attrs_outside_the_buffer_yield_nothing() {
    let buf = [8u8, 0, 1, 0, 0, 0, 0, 0];
    assert_eq!(Attrs::new(&buf, 4..100).count(), 0);
    assert_eq!(Attrs::new(&buf, 100..200).count(), 0);
    assert_eq!(Attrs::new(&buf, 0..8).collect::<Vec<_>>(), vec![(1, 4..8)]);
}

#[test]
fn nlmsg_with_lying_length_stops_iteration() {
    let mut buf = nlhdr(8, 3, 0, 0); // shorter than its own header
    assert!(netlink::next_msg(&buf, 0).is_none());
    buf[..4].copy_from_slice(&1000u32.to_ne_bytes()); // longer than the datagram
    assert!(netlink::next_msg(&buf, 0).is_none());
    assert!(netlink::next_msg(&buf, usize::MAX - 3).is_none());
}

/// An NLMSG_ERROR answering request `seq` with `-errno`.
fn error_msg(errno: i32, seq: u32) -> Vec<u8> {
    [
        nlhdr(36, netlink::NLMSG_ERROR, 0, 0),
        (-errno).to_ne_bytes().to_vec(),
        nlhdr(28, 0x0301, 1, seq),
    ]
    .concat()
}

/// Receive `datagram` from netlink port `from`, `cut` short by the receive buffer.
fn receive(inbox: &mut Inbox, datagram: &[u8], from: u32, cut: bool) {
    inbox.recv_buf()[..datagram.len()].copy_from_slice(datagram);
    let len = datagram.len();
    inbox.loaded(Datagram { len, from, cut });
}

/// Receive a whole datagram from the kernel.
fn load(inbox: &mut Inbox, datagram: &[u8]) {
    receive(inbox, datagram, 0, false);
}

/// The next packet, which must be readable.
fn next_packet(inbox: &mut Inbox) -> Option<PacketMsg> {
    match inbox.next(3)? {
        Incoming::Packet(p) => Some(p),
        other => panic!("expected a packet, got {other:?}"),
    }
}

#[test]
fn inbox_hands_out_every_message_of_a_datagram() {
    let mut inbox = Inbox::new(4096);
    let noop = nlhdr(16, 1, 0, 0);
    let datagram = [
        packet_msg(1, b"one", &[]),
        error_msg(libc::ENOENT, 5),
        error_msg(0, 6),
        noop,
        packet_msg(2, b"two", &[]),
    ]
    .concat();
    load(&mut inbox, &datagram);
    let p = next_packet(&mut inbox).expect("first");
    assert_eq!((p.id, inbox.payload(&p)), (1, &b"one"[..]));
    let p = next_packet(&mut inbox).expect("second");
    assert_eq!((p.id, inbox.payload(&p)), (2, &b"two"[..]));
    assert!(next_packet(&mut inbox).is_none());
    let c = inbox.counters;
    assert_eq!(
        (c.nl_errors, c.last_nl_errno, c.malformed),
        (1, libc::ENOENT, 0)
    );
}

#[test]
fn inbox_counts_malformed_messages_and_tails() {
    let mut inbox = Inbox::new(4096);
    let headless = [nlhdr(20, 0x0300, 0, 0), nfgen(3)].concat(); // packet without header attr
    let datagram = [headless, packet_msg(9, b"ok", &[]), vec![1, 2, 3]].concat();
    load(&mut inbox, &datagram);
    assert_eq!(next_packet(&mut inbox).map(|p| p.id), Some(9));
    assert!(next_packet(&mut inbox).is_none());
    let c = inbox.counters;
    assert_eq!((c.malformed, c.no_id), (2, 2), "neither has a packet id");
}

#[test]
fn a_malformed_packet_message_yields_its_id() {
    let mut inbox = Inbox::new(4096);
    let short_mark = [nla(6, 3), vec![0, 0, 0, 0]].concat();
    let datagram = [packet_msg(7, b"x", &short_mark), packet_msg(8, b"y", &[])].concat();
    load(&mut inbox, &datagram);
    let unreadable = |id, cause| Some(Incoming::Unreadable { id, cause });
    assert_eq!(inbox.next(3), unreadable(7, Unreadable::Malformed));
    assert_eq!(next_packet(&mut inbox).map(|p| p.id), Some(8));
    assert_eq!(inbox.next(3), None);

    // A length field promising more than the datagram holds: the tail still has an id.
    let mut lying = packet_msg(9, b"z", &[]);
    lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
    load(&mut inbox, &lying);
    assert_eq!(inbox.next(3), unreadable(9, Unreadable::Malformed));
    assert_eq!(inbox.next(3), None);
    let c = inbox.counters;
    assert_eq!((c.malformed, c.truncated, c.no_id), (2, 0, 0));
}

#[test]
fn a_truncated_datagram_yields_the_id_of_its_packet() {
    let mut inbox = Inbox::new(4096);
    let whole = packet_msg(11, &[0x45; 200], &[]);
    receive(&mut inbox, &whole[..64], 0, true);
    let want = Incoming::Unreadable {
        id: 11,
        cause: Unreadable::Truncated,
    };
    assert_eq!(inbox.next(3), Some(want));
    assert_eq!(inbox.next(3), None);
    // Cut before the packet header: nothing to answer it by.
    receive(&mut inbox, &whole[..24], 0, true);
    assert_eq!(inbox.next(3), None);
    let c = inbox.counters;
    assert_eq!((c.truncated, c.malformed, c.no_id), (2, 0, 1));
}

#[test]
fn a_datagram_not_from_the_kernel_is_ignored() {
    let mut inbox = Inbox::new(4096);
    receive(&mut inbox, &packet_msg(5, b"forged", &[]), 4242, false);
    assert_eq!(inbox.next(3), None);
    receive(&mut inbox, &packet_msg(5, b"forged", &[])[..30], 4242, true);
    assert_eq!(inbox.next(3), None);
    load(&mut inbox, &packet_msg(6, b"real", &[]));
    assert_eq!(next_packet(&mut inbox).map(|p| p.id), Some(6));
    let c = inbox.counters;
    assert_eq!((c.foreign, c.malformed, c.truncated, c.no_id), (2, 0, 0, 0));
}

#[test]
fn a_stashed_truncated_datagram_stays_truncated() {
    let mut inbox = Inbox::new(4096);
    inbox.stash(packet_msg(12, &[0; 100], &[])[..40].to_vec(), true);
    assert!(inbox.load_stashed());
    let want = Incoming::Unreadable {
        id: 12,
        cause: Unreadable::Truncated,
    };
    assert_eq!(inbox.next(3), Some(want));
}

#[test]
fn inbox_serves_stashed_datagrams_in_order() {
    let mut inbox = Inbox::new(4096);
    inbox.stash(packet_msg(1, b"a", &[]), false);
    inbox.stash(packet_msg(2, b"b", &[]), false);
    let mut ids = Vec::new();
    while inbox.load_stashed() {
        ids.extend(next_packet(&mut inbox).map(|p| p.id));
    }
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn stale_payload_range_gives_empty_slice() {
    let inbox = Inbox::new(16);
    let mut p = parse_one(&packet_msg(1, b"abc", &[])).expect("parses");
    p.payload = 10..100;
    assert!(inbox.payload(&p).is_empty());
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..512),
        cut in any::<bool>(),
    ) {
        let mut inbox = Inbox::new(512);
        receive(&mut inbox, &data, 0, cut);
        while let Some(incoming) = inbox.next(0) {
            if let Incoming::Packet(p) = incoming {
                prop_assert!(p.payload.end <= data.len());
            }
        }
    }

    #[test]
    fn corrupted_packets_never_panic(pos in 0usize..64, byte in any::<u8>(), cut in 0usize..64) {
        let mut buf = packet_msg(5, b"payload-bytes", &[]);
        if let Some(b) = buf.get_mut(pos) {
            *b = byte;
        }
        buf.truncate(buf.len().saturating_sub(cut));
        if let Some(p) = parse_one(&buf) {
            prop_assert!(p.payload.end <= buf.len());
        }
    }
}

const SAMPLE: &str = "    0  12345     2 2 65531     0     0       42  1
    7 4023442711     0 2 65531     3    17   200000  1
";

#[test]
fn proc_table_parses() {
    let rows = parse_kernel_queue_stats(SAMPLE).expect("parses");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].queue,
            rows[0].portid,
            rows[0].waiting,
            rows[0].last_id
        ),
        (0, 12345, 2, 42)
    );
    let r = rows[1];
    assert_eq!(
        (r.queue, r.portid, r.copy_mode, r.copy_range),
        (7, 4023442711, 2, 65531)
    );
    assert_eq!(
        (r.queue_dropped, r.user_dropped, r.last_id),
        (3, 17, 200000)
    );
    assert!(parse_kernel_queue_stats("").expect("empty").is_empty());
}

#[test]
fn malformed_proc_table_is_an_error() {
    for bad in [
        "0 1 2 3",
        "x 1 2 3 4 5 6 7 1",
        "70000 1 2 3 4 5 6 7 1",
        "0 1 2 3 4 5 -6 7 1",
    ] {
        let err = parse_kernel_queue_stats(bad).expect_err(bad);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}

#[test]
fn errors_tell_the_operator_what_to_do() {
    let busy = QueueError::QueueBusy {
        queue: 3,
        portid: Some(99),
    }
    .to_string();
    assert_eq!(
        busy,
        "NFQUEUE 3 is already bound by another socket (netlink portid 99): stop that process or pick another queue number"
    );
    let perm = QueueError::PermissionDenied { queue: 3 }.to_string();
    assert!(
        perm.contains("run as root or grant CAP_NET_ADMIN"),
        "{perm}"
    );
}

/// A worker's two receive paths (fast and precise queue) add up field by field; the
/// latest kernel error is the second's if it saw one.
#[test]
fn receive_counters_of_two_queues_add_up() {
    use super::QueueCounters;
    let a = QueueCounters {
        enobufs: 1,
        truncated: 2,
        malformed: 3,
        no_id: 4,
        foreign: 5,
        nl_errors: 6,
        last_nl_errno: 7,
    };
    let b = QueueCounters {
        enobufs: 10,
        truncated: 20,
        malformed: 30,
        no_id: 40,
        foreign: 50,
        nl_errors: 60,
        last_nl_errno: 0,
    };
    let sum = QueueCounters {
        enobufs: 11,
        truncated: 22,
        malformed: 33,
        no_id: 44,
        foreign: 55,
        nl_errors: 66,
        last_nl_errno: 7,
    };
    assert_eq!(a + b, sum);
    assert_eq!((b + a).last_nl_errno, 7);
    let later = QueueCounters {
        last_nl_errno: 9,
        ..b
    };
    assert_eq!((a + later).last_nl_errno, 9);
}
