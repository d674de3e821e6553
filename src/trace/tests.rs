//! The tracer, the filter and `trace format` on byte buffers and in memory.

use std::cell::RefCell;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use super::record::{MAX_MARKS, verdict_label};
use super::writer::KernelLine;
use super::*;
use crate::pipeline::{Reason, Verdict};
use crate::wire::build::Builder;
use crate::wire::{self, tcp};

fn syn() -> Vec<u8> {
    Builder::tcp(
        "198.18.1.2".parse().unwrap(),
        "198.18.2.2".parse().unwrap(),
        40000,
        80,
    )
    .flags(tcp::SYN)
    .seq(1000)
    .ip_id(4711)
    .build()
}

fn udp6() -> Vec<u8> {
    Builder::udp(
        "2001:2:0:1::2".parse().unwrap(),
        "2001:2:0:2::2".parse().unwrap(),
        5000,
        53,
    )
    .build()
}

fn tracer(filter: Filter, room: usize) -> (RefCell<Tracer>, Traces) {
    let (tx, rx) = sync_channel(room);
    (
        RefCell::new(Tracer::new(tx, Clock::start(), filter)),
        Traces(rx),
    )
}

/// The writer's end of the channel, as the tests read it: packets only.
struct Traces(Receiver<Record>);

impl Traces {
    fn try_recv(&self) -> Result<PacketTrace, std::sync::mpsc::TryRecvError> {
        self.0.try_recv().map(packet)
    }

    fn try_iter(&self) -> impl Iterator<Item = PacketTrace> + '_ {
        self.0.try_iter().map(packet)
    }
}

fn packet(r: Record) -> PacketTrace {
    match r {
        Record::Packet(p) => p,
        Record::Kernel(k) => panic!("a kernel event from the tracer: {k:?}"),
    }
}

/// One packet through the tracer as the worker drives it: received, parsed, decided,
/// answered at once.
fn run(cell: &mut RefCell<Tracer>, n: u64, pkt: &[u8]) {
    run_as(cell, n, pkt, Verdict::Accept);
}

/// `run`, the pipeline deciding `v`.
fn run_as(cell: &mut RefCell<Tracer>, n: u64, pkt: &[u8], v: Verdict) {
    cell.get_mut()
        .start(n, (3, n as u32, 2), pkt.len() as u32, Instant::now());
    cell.get_mut().received(pkt);
    let t = &*cell;
    t.begin(Stage::Process);
    t.begin(Stage::Parse);
    let parsed = wire::parse(pkt);
    t.end(Stage::Parse);
    if let Ok(p) = parsed {
        t.headers(pkt, &p);
    }
    t.end(Stage::Process);
    cell.get_mut().decided(&v, pkt.len(), pkt);
    cell.get_mut().sent();
}

fn stages(p: &PacketTrace) -> Vec<String> {
    p.marks()
        .iter()
        .map(|m| format!("{} {}", m.stage, m.edge.letter()))
        .collect()
}

#[test]
fn a_traced_packet_has_its_stages_nested_in_order_with_rising_times() {
    let (mut t, rx) = tracer(Filter::default(), 8);
    let pkt = syn();
    run(&mut t, 1, &pkt);
    let p = rx.try_recv().expect("one trace");
    assert_eq!(
        stages(&p),
        [
            "packet B",
            "receive B",
            "receive E",
            "process B",
            "parse B",
            "parse E",
            "process E",
            "verdict B",
            "verdict E",
            "packet E"
        ]
    );
    assert!(p.marks().windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
    let h = p.head.expect("named by its headers");
    assert_eq!(
        (h.sport, h.dport, h.flags, h.seq, h.ip_id),
        (40000, 80, Some(tcp::SYN), Some(1000), Some(4711))
    );
    assert_eq!(
        (p.queue, p.id, p.hook, p.len_in),
        (3, 1, 2, pkt.len() as u32)
    );
    assert_eq!(p.verdict, Some(Verdict::Accept));
    assert_eq!(t.borrow().counters.traced, 1);
}

#[test]
fn a_full_writer_channel_drops_traces_and_counts_them_never_blocks() {
    let (mut t, rx) = tracer(Filter::default(), 2);
    for n in 1..=5 {
        run(&mut t, n, &syn());
    }
    assert_eq!(
        (t.borrow().counters.traced, t.borrow().counters.dropped),
        (2, 3)
    );
    assert_eq!(rx.try_iter().count(), 2);
    // Gone altogether (the writer stopped): still counted, never a panic.
    drop(rx);
    run(&mut t, 6, &syn());
    assert_eq!(t.borrow().counters.dropped, 4);
}

#[test]
fn the_filter_picks_by_sample_protocol_host_and_port() {
    let cases: [(Filter, bool, bool); 6] = [
        (Filter::default(), true, true),
        (
            Filter {
                protocol: Some(crate::wire::proto::TCP),
                ..Filter::default()
            },
            true,
            false,
        ),
        (
            Filter {
                hosts: vec!["2001:2::/48".parse().unwrap()],
                ..Filter::default()
            },
            false,
            true,
        ),
        (
            Filter {
                hosts: vec!["198.18.2.2".parse().unwrap()],
                ..Filter::default()
            },
            true,
            false,
        ),
        (
            Filter {
                ports: vec!["53".parse().unwrap()],
                ..Filter::default()
            },
            false,
            true,
        ),
        (
            Filter {
                ports: vec!["1-52".parse().unwrap()],
                ..Filter::default()
            },
            false,
            false,
        ),
    ];
    for (filter, tcp4, udp6_) in cases {
        let (mut t, rx) = tracer(filter.clone(), 8);
        run(&mut t, 1, &syn());
        run(&mut t, 2, &udp6());
        let ids: Vec<u32> = rx.try_iter().map(|p| p.id).collect();
        let want: Vec<u32> = [(tcp4, 1), (udp6_, 2)]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(ids, want, "{filter:?}");
    }
    // One in three, counted from the first packet offered.
    let (mut t, rx) = tracer(
        Filter {
            sample: 3,
            ..Filter::default()
        },
        8,
    );
    for n in 1..=7 {
        run(&mut t, n, &syn());
    }
    assert_eq!(rx.try_iter().map(|p| p.n).collect::<Vec<_>>(), [3, 6]);
}

#[test]
fn a_filter_on_headers_traces_no_packet_that_does_not_parse() {
    let (mut t, rx) = tracer(
        Filter {
            ports: vec!["80".parse().unwrap()],
            ..Filter::default()
        },
        8,
    );
    run(&mut t, 1, &[0x45, 0, 0]);
    assert_eq!(rx.try_iter().count(), 0);
    // Without a filter it is traced, unnamed, with the verdict it got.
    let (mut t, rx) = tracer(Filter::default(), 8);
    run(&mut t, 1, &[0x45, 0, 0]);
    let p = rx.try_recv().unwrap();
    assert_eq!(p.head, None);
}

#[test]
fn packets_accepted_in_a_batch_finish_when_the_batch_verdict_leaves() {
    let (mut t, rx) = tracer(Filter::default(), 8);
    let t = t.get_mut();
    for n in 1..=3 {
        t.start(n, (0, n as u32, 2), 60, Instant::now());
        t.decided(&Verdict::Accept, 60, &[]);
        t.hold();
    }
    assert_eq!(rx.try_iter().count(), 0, "held until the batch verdict");
    std::thread::sleep(Duration::from_millis(2));
    t.released();
    let got: Vec<PacketTrace> = rx.try_iter().collect();
    assert_eq!(got.iter().map(|p| p.n).collect::<Vec<_>>(), [1, 2, 3]);
    for p in &got {
        let (first, last) = (p.marks()[0], *p.marks().last().unwrap());
        assert!(last.t_ns - first.t_ns >= 2_000_000, "held time counts");
        assert_eq!(last.stage, Stage::Packet);
    }
}

#[test]
fn edges_past_the_fixed_room_are_counted_not_kept() {
    let (mut t, rx) = tracer(Filter::default(), 8);
    t.get_mut().start(1, (0, 1, 2), 60, Instant::now());
    for _ in 0..MAX_MARKS {
        (&t).begin(Stage::Segment);
    }
    t.get_mut()
        .decided(&Verdict::Drop(Reason::Bypassed), 60, &[]);
    t.get_mut().sent();
    let p = rx.try_recv().unwrap();
    assert_eq!(p.marks().len(), MAX_MARKS);
    // Two starts, MAX_MARKS begins, verdict B and two ends did not fit.
    assert_eq!(p.lost_marks, 2 + 1 + 2);
    assert_eq!(t.borrow().counters.lost_marks, 5);
    assert_eq!(verdict_label(&p.verdict.unwrap()), "drop:bypassed_mbox");
}

/// A raw trace of the two test packets, as the writer writes it.
fn raw_trace() -> String {
    let (mut t, rx) = tracer(Filter::default(), 8);
    run(&mut t, 1, &syn());
    run(&mut t, 2, &udp6());
    let mut s = String::from(
        "{\"mpolice_trace\":1,\"role\":\"mbox\",\"started_unix_ns\":1764522000000000000}\n",
    );
    for p in rx.try_iter() {
        s += &serde_json::to_string(&p.raw()).unwrap();
        s.push('\n');
    }
    s
}

fn formatted(input: &str, how: Output) -> (String, Summary) {
    let mut out = Vec::new();
    let s = format(input.as_bytes(), &mut out, how).unwrap();
    (String::from_utf8(out).unwrap(), s)
}

#[test]
fn format_numbers_indents_and_times_each_packet_in_the_theses_columns() {
    let (text, s) = formatted(&raw_trace(), Output::Text);
    assert_eq!((s.packets, s.warnings.len()), (2, 0));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("# mpolice trace: role mbox"), "{text}");
    // Line 1: the packet begins, at depth 0.
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], "1");
    assert_eq!(
        &cols[2..],
        [
            "198.18.1.2:40000",
            "198.18.2.2:80",
            "packet",
            "B",
            "S",
            "1000",
            "ack",
            "0",
            "id",
            "4711",
            "tcp"
        ],
        "{text}"
    );
    // Nested stages are indented two spaces per level: parse sits in process.
    let parse_b = lines.iter().find(|l| l.contains(" parse B")).unwrap();
    assert!(parse_b.starts_with("5     "), "{text}");
    let time = lines.iter().find(|l| l.starts_with("Time : ")).unwrap();
    assert!(time.contains("queue 3 packet 1 hook 2: accept"), "{text}");
    // The UDP packet over IPv6: bracketed addresses, no TCP columns, no IP id.
    assert!(
        text.contains("[2001:2:0:1::2]:5000 [2001:2:0:2::2]:53 packet B id - udp"),
        "{text}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("# 2 packets; time from receive to verdict: p50")
    );
}

#[test]
fn format_json_pairs_each_stage_into_a_duration() {
    let (text, _) = formatted(&raw_trace(), Output::Json);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let stages = first["stages"].as_array().unwrap();
    let names: Vec<(&str, u64)> = stages
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("packet", 0),
            ("receive", 1),
            ("process", 1),
            ("parse", 2),
            ("verdict", 1)
        ]
    );
    assert!(stages.iter().all(|s| s["ns"].is_u64()));
    assert_eq!(first["total_ns"], stages[0]["ns"]);
    assert_eq!(first["head"]["sport"], 40000);
}

#[test]
fn format_refuses_what_is_not_a_trace_and_skips_broken_lines_with_a_warning() {
    let mut out = Vec::new();
    for (input, why) in [
        (&b""[..], "empty input"),
        (
            &b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00 a pcap"[..],
            "not an mpolice trace header",
        ),
        (
            &b"{\"mpolice_trace\":9,\"role\":\"mbox\",\"started_unix_ns\":0}\n"[..],
            "trace format 9",
        ),
    ] {
        let e = format(input, &mut out, Output::Text).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{e:#}");
    }
    // A corrupt line in the middle and a last line cut short: both skipped, both named.
    let good = raw_trace();
    let mut lines: Vec<&str> = good.lines().collect();
    let cut = lines[2][..lines[2].len() / 2].to_string();
    lines.insert(2, "{\"n\": \"not a number\"}");
    let input = format!("{}\n{}", lines[..3].join("\n"), cut);
    let (text, s) = formatted(&input, Output::Text);
    assert_eq!(s.packets, 1, "{text}");
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("line 3: skipped, not a traced packet"));
    assert!(s.warnings[1].starts_with("line 4: skipped, cut short"));
    // A line with more edges than any trace holds: skipped, said.
    let many = format!(
        "{}\n{}",
        good.lines().next().unwrap(),
        good.lines().nth(1).unwrap().replacen(
            "\"marks\":[",
            &format!("\"marks\":[{}", "[\"packet\",\"B\",1],".repeat(1000)),
            1
        )
    );
    let (_, s) = formatted(&many, Output::Text);
    assert_eq!(s.packets, 0);
    assert!(
        s.warnings[0].contains("1010 stage edges"),
        "{:?}",
        s.warnings
    );
    // Edges out of order (an E with no B, a B never closed) are shown, never a panic.
    let odd = good.replacen("[\"packet\",\"B\"", "[\"packet\",\"E\"", 1);
    let (_, s) = formatted(&odd, Output::Json);
    assert_eq!(s.packets, 2);
}

#[test]
fn pcap_files_round_trip_and_read_tcpdumps_link_types() {
    let pkt = syn();
    let mut f = Vec::new();
    pcap::write_header(&mut f, 40).unwrap();
    pcap::write_record(
        &mut f,
        1_764_522_000_123_456_789,
        &pkt[..40],
        pkt.len() as u32,
    )
    .unwrap();
    let c = pcap::read(&f).unwrap();
    assert_eq!(c.packets.len(), 1);
    let p = &c.packets[0];
    assert_eq!(
        (p.unix_ns, &p.ip[..], p.ip_len),
        (1_764_522_000_123_456_789, &pkt[..40], pkt.len() as u32)
    );
    // tcpdump -w on a veth: microseconds, Ethernet; here big-endian, with an ARP.
    let mut be = Vec::new();
    for w in [pcap::MAGIC_US, 0x0002_0004, 0, 0, 65535, 1] {
        be.extend_from_slice(&w.to_be_bytes());
    }
    let frame = |ethertype: u16, body: &[u8]| {
        let mut e = vec![0u8; 12];
        e.extend_from_slice(&ethertype.to_be_bytes());
        e.extend_from_slice(body);
        e
    };
    for (ethertype, body) in [(0x0806u16, &[0u8; 28][..]), (0x0800, &pkt[..])] {
        let e = frame(ethertype, body);
        for w in [1_764_522_000u32, 250_000, e.len() as u32, e.len() as u32] {
            be.extend_from_slice(&w.to_be_bytes());
        }
        be.extend_from_slice(&e);
    }
    let c = pcap::read(&be).unwrap();
    assert_eq!((c.packets.len(), c.not_ip, c.cut_short), (1, 1, false));
    assert_eq!(c.packets[0].unix_ns, 1_764_522_000_250_000_000);
    assert_eq!(c.packets[0].ip, pkt);
    // Cut inside the last record: what came before is kept, and it says so.
    let c = pcap::read(&be[..be.len() - 5]).unwrap();
    assert_eq!((c.packets.len(), c.cut_short), (0, true));
}

#[test]
fn pcap_reader_refuses_what_it_cannot_read_by_name() {
    let mut wifi = Vec::new();
    pcap::write_header(&mut wifi, 100).unwrap();
    wifi[20] = 105;
    for (bytes, says) in [
        (&b"\xd4\xc3"[..], "shorter than a pcap header"),
        (
            &[
                0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
            "pcapng",
        ),
        (&[b'{'; 30][..], "unknown magic"),
        (&wifi[..], "link type 105"),
    ] {
        let e = pcap::read(bytes).unwrap_err();
        assert!(e.contains(says), "{e}");
    }
}

/// A scratch directory for trace files, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("mpolice-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tcp_data(seq: u32, len: usize, ip_id: u16) -> Vec<u8> {
    Builder::tcp(
        "198.18.1.2".parse().unwrap(),
        "198.18.2.2".parse().unwrap(),
        40000,
        8080,
    )
    .flags(tcp::ACK)
    .seq(seq)
    .ip_id(ip_id)
    .payload(&vec![0; len])
    .build()
}

#[test]
fn compare_finds_what_each_engine_saw_inside_super_packets_and_what_none_saw() {
    let dir = Scratch::new("compare");
    // The engine saw a packet, a 10-segment super-packet, and one it dropped.
    let (mut t, rx) = tracer(Filter::default(), 8);
    let one = tcp_data(1000, 100, 1);
    let sup = tcp_data(2000, 14_480, 2);
    run(&mut t, 1, &one);
    run(&mut t, 2, &sup);
    let mut lines = String::from("{\"mpolice_trace\":1,\"role\":\"mbox\",\"started_unix_ns\":0}\n");
    let mut t_in = 0;
    for p in rx.try_iter() {
        t_in = p.marks()[0].t_ns;
        lines += &serde_json::to_string(&p.raw()).unwrap();
        lines.push('\n');
    }
    lines += "this line is corrupt\n";
    let trace = dir.0.join("mbox.trace");
    std::fs::write(&trace, lines).unwrap();
    // The wire: the packet, the super-packet's first and fifth segments, a stranger.
    let mut cap = Vec::new();
    pcap::write_header(&mut cap, 128).unwrap();
    for (i, pkt) in [
        one.clone(),
        tcp_data(2000, 1448, 2),
        tcp_data(2000 + 4 * 1448, 1448, 6),
        tcp_data(90_000, 10, 9),
    ]
    .iter()
    .enumerate()
    {
        let at = t_in + 2_000_000_000 + i as u64;
        pcap::write_record(&mut cap, at, &pkt[..pkt.len().min(128)], pkt.len() as u32).unwrap();
    }
    let traced = [Traced::read(&trace).unwrap()];
    let c = compare(&traced, &cap, true).unwrap();
    assert_eq!((c.captured, c.unseen), (4, 1), "{c:?}");
    let s = &c.traces[0];
    assert_eq!((s.traced, s.seen, s.unmatched), (2, 3, 0), "{s:?}");
    let inside: Vec<bool> = c
        .rows
        .iter()
        .flat_map(|r| r.seen.iter().map(|x| x.in_super_packet))
        .collect();
    assert_eq!(inside, [false, true, true]);
    // The capture's clock runs 2 s ahead: said, not fatal. The corrupt line: said too.
    assert!(
        c.warnings.iter().any(|w| w.contains("2.000 s ahead of")),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings.iter().any(|w| w.contains("line 4: skipped")),
        "{:?}",
        c.warnings
    );
    assert!(
        c.text()
            .contains("not seen by any trace: 1 captured packets")
    );
    // A capture of another link type, or no pcap at all: a clear error.
    let mut wifi = cap.clone();
    wifi[20] = 105;
    let e = compare(&traced, &wifi, false).unwrap_err();
    assert!(format!("{e:#}").contains("link type 105"), "{e:#}");
    assert!(compare(&traced, b"", false).is_err());
    // A record that claims 4 GiB: its headers are read, nothing that size is made.
    let mut huge = Vec::new();
    pcap::write_header(&mut huge, 128).unwrap();
    pcap::write_record(&mut huge, t_in, &one[..60], u32::MAX).unwrap();
    assert_eq!(compare(&traced, &huge, false).unwrap().traces[0].seen, 1);
    assert!(Traced::read(&dir.0.join("missing")).is_err());
}

#[test]
fn compare_matches_a_routed_packets_segments_not_the_packet() {
    let dir = Scratch::new("routed");
    let (mut t, rx) = tracer(Filter::default(), 8);
    let sup = tcp_data(2000, 14_480, 2);
    let first = tcp_data(2000, 1448, 2);
    run_as(
        &mut t,
        1,
        &sup,
        Verdict::Route(crate::pipeline::Segments::Trailer),
    );
    run_as(&mut t, 2, &first, Verdict::AcceptModified);
    let mut lines = String::from("{\"mpolice_trace\":1,\"role\":\"mbox\",\"started_unix_ns\":0}\n");
    for p in rx.try_iter() {
        lines += &serde_json::to_string(&p.raw()).unwrap();
        lines.push('\n');
    }
    let trace = dir.0.join("mbox.trace");
    std::fs::write(&trace, lines).unwrap();
    let mut cap = Vec::new();
    pcap::write_header(&mut cap, 128).unwrap();
    pcap::write_record(&mut cap, 1, &first[..100], first.len() as u32).unwrap();
    let c = compare(&[Traced::read(&trace).unwrap()], &cap, true).unwrap();
    let seen = &c.rows[0].seen[0];
    assert_eq!((seen.id, seen.verdict.as_str()), (2, "accept_modified"));
    assert_eq!(
        c.traces[0].unmatched, 0,
        "the routed packet is its segments"
    );
}

/// An NFT_MSG_TRACE body as the kernel sends it for `pkt` meeting a queue rule.
fn kernel_event_body(pkt: &[u8]) -> Vec<u8> {
    use crate::driver::netlink::push_attr;
    const NESTED: u16 = 0x8000;
    let mut body = vec![2, 0, 0, 0]; // nfgenmsg
    push_attr(&mut body, 1, b"mpolice\0");
    push_attr(&mut body, 2, b"inbound\0");
    push_attr(&mut body, 3, &7u64.to_be_bytes());
    push_attr(&mut body, 4, &3u32.to_be_bytes());
    let mut verdict = Vec::new();
    push_attr(&mut verdict, 1, &(3u32 | (5 << 16)).to_be_bytes());
    push_attr(&mut body, 5 | NESTED, &verdict);
    push_attr(&mut body, 6, &0xabcdu32.to_be_bytes());
    push_attr(&mut body, 8, &pkt[..20]);
    push_attr(&mut body, 9, &pkt[20..40]);
    push_attr(&mut body, 10, &2u32.to_be_bytes());
    push_attr(&mut body, 15, &2u32.to_be_bytes());
    body
}

#[test]
fn a_kernel_trace_event_is_decoded_and_named_by_its_headers() {
    let body = kernel_event_body(&syn());
    let e = kernel::decode(&body, 0..body.len(), 99).unwrap();
    assert_eq!(
        (
            e.table.as_str(),
            e.chain.as_str(),
            e.handle,
            e.kind.as_str()
        ),
        ("mpolice", "inbound", Some(7), "rule")
    );
    assert_eq!(
        (e.verdict.as_deref(), e.id, e.iif),
        (Some("queue 5"), 0xabcd, Some(2))
    );
    assert_eq!((e.family.as_str(), e.t_ns), ("ip", 99));
    let h = e.head.expect("named by the headers it carries");
    assert_eq!((h.sport, h.dport, h.seq), (40000, 80, Some(1000)));
    assert_eq!(e.payload, Some(0));
    // TCP data: its length from the IP header (the kernel sends no payload).
    let data = kernel_event_body(&tcp_data(7, 1200, 3));
    let d = kernel::decode(&data, 0..data.len(), 0).unwrap();
    assert_eq!(d.payload, Some(1200));
    // Cut anywhere: what is whole is read, the rest ignored, never a panic.
    for end in 0..body.len() {
        let _ = kernel::decode(&body[..end], 0..end, 0);
    }
    // A line of it in a raw trace: `trace format` shows it, `trace compare` skips it.
    let line = serde_json::to_string(&KernelLine { kernel: e }).unwrap();
    let input = format!("{}{line}\n", raw_trace());
    let (text, s) = formatted(&input, Output::Text);
    assert_eq!((s.packets, s.kernel_events, s.warnings.len()), (2, 1, 0));
    assert!(
        text.contains(
            "198.18.1.2:40000 198.18.2.2:80 nft ip mpolice inbound rule handle 7 queue 5 iif 2"
        ),
        "{text}"
    );
}

#[test]
fn kernel_events_name_high_queues_ipv4_options_and_ipv6_extension_headers() {
    use crate::driver::netlink::push_attr;
    let event = |network: &[u8], transport: &[u8], code: u32| {
        let mut body = vec![2, 0, 0, 0];
        let mut verdict = Vec::new();
        push_attr(&mut verdict, 1, &code.to_be_bytes());
        push_attr(&mut body, 5 | 0x8000, &verdict);
        push_attr(&mut body, 8, network);
        push_attr(&mut body, 9, transport);
        kernel::decode(&body, 0..body.len(), 0).unwrap()
    };
    // Queue 40000 with the bypass flag: the code reads negative as an i32.
    let pkt = syn();
    let e = event(&pkt[..20], &pkt[20..40], 3 | 0x8000 | (40000 << 16));
    assert_eq!(e.verdict.as_deref(), Some("queue 40000 bypass"));
    // IPv4 with 24 bytes of options: the kernel sends 40 bytes of them, then TCP.
    let mut opts = pkt[..20].to_vec();
    opts[0] = 0x40 | 11;
    let total = u16::from_be_bytes([opts[2], opts[3]]) + 24;
    opts[2..4].copy_from_slice(&total.to_be_bytes());
    opts.extend_from_slice(&[1; 24]);
    opts.extend_from_slice(&pkt[20..]);
    let e = event(&opts[..40], &opts[44..64], 1);
    let h = e.head.unwrap();
    assert_eq!((h.sport, h.dport), (40000, 80));
    // IPv6 behind a hop-by-hop header: the addresses, nothing misread as ports.
    let mut v6 = udp6();
    v6[6] = crate::wire::proto::HOP_BY_HOP;
    let e = event(&v6[..40], &[0; 20], 1);
    let h = e.head.unwrap();
    assert_eq!(
        (h.proto, h.sport, h.src.to_string()),
        (0, 0, "2001:2:0:1::2".to_string())
    );
}

/// The raw trace of the test packets with kernel events, each `at` nanoseconds from the
/// SYN's first edge, about the SYN (`same`) or another packet.
fn journey_trace(events: &[(i64, bool)]) -> String {
    let mut trace = raw_trace().replacen("}\n", ",\"kernel\":true}\n", 1);
    let traced: RawPacket = serde_json::from_str(trace.lines().nth(1).unwrap()).unwrap();
    let start = traced.marks[0].2;
    for &(at, same) in events {
        let body = kernel_event_body(&if same { syn() } else { other() });
        let t = start.checked_add_signed(at).unwrap();
        let mut e = kernel::decode(&body, 0..body.len(), t).unwrap();
        if at > 0 {
            // After the engine: the forward chain's policy, say.
            e.verdict = Some("accept".into());
        }
        trace += &serde_json::to_string(&KernelLine { kernel: e }).unwrap();
        trace.push('\n');
    }
    trace
}

/// The SYN from another port.
fn other() -> Vec<u8> {
    let mut p = syn();
    p[21] ^= 1;
    p
}

#[test]
fn format_joins_each_kernel_event_to_its_packet_before_and_after_the_engine() {
    let trace = journey_trace(&[
        (-2_000, true),
        (50_000_000, true),
        (-1_000, false),
        (5_000_000_000, true),
    ]);
    // JSON: the packet carries the two events near it, in time order; the event of
    // another packet and the one seconds later stand alone.
    let (json, s) = formatted(&trace, Output::Json);
    assert_eq!((s.packets, s.kernel_events), (2, 4));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let packet = lines.iter().find(|v| v["head"]["sport"] == 40000).unwrap();
    let joined = packet["kernel"].as_array().unwrap();
    assert_eq!(joined.len(), 2, "{packet}");
    assert!(joined[0]["t_ns"].as_u64() < joined[1]["t_ns"].as_u64());
    assert_eq!(packet["kernel_before"], 1, "{packet}");
    assert_eq!(
        lines.iter().filter(|v| v.get("stages").is_none()).count(),
        2
    );
    // Text: the event before the engine precedes `packet B`, the one after follows the
    // packet's last edge; all in time order.
    let (text, _) = formatted(&trace, Output::Text);
    let at = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap();
    let nft = |port: &str| {
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(" nft ") && l.contains(port))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let ours = nft(":40000 ");
    assert_eq!(ours.len(), 3, "{text}");
    assert!(ours[0] < at(":40000 198.18.2.2:80 packet B"), "{text}");
    assert!(ours[1] > at("verdict E") && ours[1] < ours[2], "{text}");
    assert_eq!(nft(":40001 ").len(), 1, "{text}");
}

#[test]
fn the_join_gives_packets_out_as_the_window_passes_and_holds_a_bounded_number() {
    use super::journey::{Item, Journeys, MAX_PENDING, WINDOW_NS};
    let traced: RawPacket = serde_json::from_str(raw_trace().lines().nth(1).unwrap()).unwrap();
    let at = |t: u64| {
        let mut p = traced.clone();
        for m in &mut p.marks {
            m.2 = t;
        }
        p
    };
    let event = |t: u64| {
        let body = kernel_event_body(&syn());
        kernel::decode(&body, 0..body.len(), t).unwrap()
    };
    let mut j = Journeys::default();
    assert!(j.packet(at(1_000)).is_empty());
    assert!(j.kernel(event(1_500)).is_empty());
    // Both streams a window past the packet: it goes out with its event.
    assert!(j.packet(at(3 * WINDOW_NS)).is_empty());
    let out = j.kernel(event(3 * WINDOW_NS));
    assert!(
        matches!(&out[..], [Item::Packet(p, e)] if p.marks[0].2 == 1_000 && e.len() == 1),
        "{out:?}"
    );
    // Before the queue a super-packet is whole: its event belongs to each segment the
    // engine saw of it, whatever their flags and IP ids, and to nothing past its bytes.
    let segment = |seq: u32, flags: u8, id: u16| {
        let mut p = at(1_000);
        let h = p.head.as_mut().unwrap();
        (h.seq, h.flags, h.ip_id) = (Some(seq), Some(flags), Some(id));
        p
    };
    let mut j = Journeys::default();
    for (seq, flags, id) in [
        (1000, tcp::ACK, 1),
        (2448, tcp::ACK | tcp::PSH, 2),
        (3896, tcp::ACK, 3),
    ] {
        j.packet(segment(seq, flags, id));
    }
    let mut whole = event(900);
    let h = whole.head.as_mut().unwrap();
    (h.flags, h.ip_id) = (Some(tcp::ACK | tcp::PSH), Some(9));
    whole.payload = Some(2 * 1448);
    j.kernel(whole);
    let joined: Vec<usize> = j
        .finish()
        .iter()
        .map(|item| match item {
            Item::Packet(_, e) => e.len(),
            Item::Loose(_) => 99,
        })
        .collect();
    assert_eq!(joined, [1, 1, 0]);
    // No events at all: packets still go out, past the bound, oldest first.
    let mut j = Journeys::default();
    let mut out = Vec::new();
    for i in 0..MAX_PENDING as u64 + 10 {
        out.extend(j.packet(at(i)));
    }
    assert_eq!(out.len(), 10);
    assert!(matches!(&out[0], Item::Packet(p, _) if p.marks[0].2 == 0));
    assert_eq!(j.finish().len(), MAX_PENDING);
}
