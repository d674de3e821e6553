//! Forged, replayed, stale and truncated capabilities and feedback, and markers and
//! trailers where none belong, injected with raw sockets into a running testbed.
//!
//! Every such packet gets a counted verdict, none reaches the client with a marker or a
//! trailer, and none raises (or lowers) the mbox's count of returned capabilities, which
//! is what the sender's measured delivery is computed from. Root only.
//!
//! The mbox runs with a 60 s detection period, so the whole test lies in one period of
//! each sender: a replay is then `replayed` and a late one `stale`, never `wrong_period`
//! by the luck of where a period boundary fell. Th_rtt is 5 s, above the longest wait of
//! the harness (3 s for the engines to be quiet), so real feedback is never late by the
//! load of the machine; the test waits it out where it wants a capability late.

use std::net::{IpAddr, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mpolice::capability::{Marker, wire_len};
use mpolice::stats::{CapCounters, EngineStats};
use mpolice::testbed::{
    self, CLIENT_V4, CLIENT_V6, EngineProcess, Host, RoleConfig, ServedFile, Testbed, VICTIM_V4,
    VICTIM_V6, in_netns, inject,
};
use mpolice::wire::build::Builder;
use mpolice::wire::tcp;

#[path = "common.rs"]
mod common;
use common::{bin, exclusive, root};

fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b
}

/// Client ports the injected packets use; the client drops what comes back to them, so
/// its stack never answers (an answer would be stamped and change the counts).
const PORT_FORGED: u16 = 40000;
const PORT_SHORT: u16 = 40001;
const PORT_BAD_MARKER: u16 = 40002;
const PORT_REPLAY: u16 = 40010;
/// A second address of the client, which sends nothing until the replay case.
const PROBE_V4: &str = "198.18.1.3";
const PROBE_V6: &str = "2001:2:0:1::3";
const PORT_CLIENT_MARKER: u16 = 40020;
const PORT_VICTIM_SHORT: u16 = 40030;
const PORT_UDP: u16 = 40040;
const PORT_BYPASS: u16 = 40050;
const PORT_DRAIN: u16 = 40090;

/// One IP family of the testbed.
#[derive(Clone, Copy)]
struct Fam {
    v6: bool,
    client: IpAddr,
    victim: IpAddr,
}

impl Fam {
    fn all() -> [Fam; 2] {
        let ip = |s: &str| s.parse::<IpAddr>().expect("testbed address");
        [
            Fam {
                v6: false,
                client: ip(CLIENT_V4),
                victim: ip(VICTIM_V4),
            },
            Fam {
                v6: true,
                client: ip(CLIENT_V6),
                victim: ip(VICTIM_V6),
            },
        ]
    }

    /// The same family with the client's second address as the client (see `bed`).
    fn probe(self) -> Fam {
        let client = if self.v6 { PROBE_V6 } else { PROBE_V4 };
        Fam {
            client: client.parse().expect("testbed address"),
            ..self
        }
    }

    /// IP header bytes (no options, no extension headers).
    fn ip_len(self) -> usize {
        if self.v6 { 40 } else { 20 }
    }

    /// A TCP packet from the victim's service to a client port.
    fn to_client(self, port: u16, marker: Marker, payload: &[u8]) -> Vec<u8> {
        Builder::tcp(self.victim, self.client, 8080, port)
            .seq(0x1000_0000)
            .ack(0x2000_0000)
            .flags(tcp::ACK)
            .reserved(marker.apply(0))
            .payload(payload)
            .build()
    }

    /// A TCP packet from a client port to the victim's service.
    fn to_victim(self, port: u16, marker: Marker, flags: u8, payload: &[u8]) -> Vec<u8> {
        Builder::tcp(self.client, self.victim, port, 8080)
            .seq(0x3000_0000)
            .ack(0x4000_0000)
            .flags(flags)
            .reserved(marker.apply(0))
            .payload(payload)
            .build()
    }

    /// A capability-shaped blob for this family: version 1, key id 1 (the testbed's
    /// key), the right flags and the client as sender, then random id, time and MAC.
    fn forged_capability(self) -> Vec<u8> {
        let mut c = random_bytes(wire_len(self.v6));
        c[0] = 0x11;
        c[1] = u8::from(self.v6);
        c[2..4].copy_from_slice(&1u16.to_be_bytes());
        let sender = match self.client {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        c[12..12 + sender.len()].copy_from_slice(&sender);
        c
    }

    /// A tcpdump filter for TCP packets to a client port, with `extra` applied to TCP
    /// byte 12 (written `TCP12`); IPv6 without extension headers has it at byte 52.
    fn filter(self, port: u16, extra: &str) -> String {
        if self.v6 {
            format!(
                "ip6 and tcp dst port {port} and {}",
                extra.replace("TCP12", "ip6[52]")
            )
        } else {
            format!(
                "ip and tcp dst port {port} and {}",
                extra.replace("TCP12", "tcp[12]")
            )
        }
    }

    /// A filter for unmarked TCP packets to a client port of exactly `ip_total` bytes.
    fn clean(self, port: u16, ip_total: usize) -> String {
        let len = if self.v6 {
            format!("ip6[4:2] == {}", ip_total - 40)
        } else {
            format!("ip[2:2] == {ip_total}")
        };
        // RSTs excluded: the victim's stack answers the stray probe with one.
        let no_rst = if self.v6 {
            "ip6[53] & 4 == 0"
        } else {
            "tcp[13] & 4 == 0"
        };
        self.filter(port, &format!("TCP12 & 0x0e == 0 and {no_rst} and {len}"))
    }
}

/// The testbed with both engines running, capabilities on.
struct Bed {
    tb: Testbed,
    mbox: EngineProcess,
    victim: EngineProcess,
}

/// Both engines' counters at one moment.
struct Snap {
    m: EngineStats,
    v: EngineStats,
}

impl Snap {
    fn mc(&self) -> CapCounters {
        self.m.total().engine.caps
    }
    fn vc(&self) -> CapCounters {
        self.v.total().engine.caps
    }
    fn diag(&self) -> String {
        format!("\n{}{}", self.m.table(), self.v.table())
    }
}

fn rejected(c: &CapCounters, reason: &str) -> u64 {
    c.rejected.get(reason).copied().unwrap_or(0)
}

fn reason(s: &EngineStats, reason: &str) -> u64 {
    s.total().engine.reasons.get(reason).copied().unwrap_or(0)
}

fn received(s: &EngineStats) -> u64 {
    s.total().engine.received
}

impl Bed {
    fn snap(&self) -> Snap {
        Snap {
            m: self.mbox.stats().expect("mbox stats"),
            v: self.victim.stats().expect("victim stats"),
        }
    }

    /// Counters once both engines have been quiet for a while (at most 3 s): the exact
    /// counts below must not pick up a straggler of earlier traffic (a late FIN or a
    /// retransmission) in the window of the next injected packet.
    fn quiet(&self) -> Snap {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.snap();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.snap();
            let same =
                received(&now.m) == received(&last.m) && received(&now.v) == received(&last.v);
            if same || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Wait (at most 5 s) until the mbox and the victim have received at least `m` and
    /// `v` packets more than in `before`; the engines publish counters every 100 ms.
    fn after(&self, before: &Snap, m: u64, v: u64) -> Snap {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.snap();
            let done = received(&now.m) >= received(&before.m) + m
                && received(&now.v) >= received(&before.v) + v;
            if done {
                // Settled, so the next case's window starts with no traffic in flight.
                return self.quiet();
            }
            assert!(
                Instant::now() < deadline,
                "engines did not see the injected packets (want +{m} mbox, +{v} victim){}",
                now.diag()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn inject(&self, host: Host, packet: &[u8]) {
        inject(&self.tb, host, packet).expect("inject");
    }

    /// Have the victim hand back everything it keeps for the client, on ACKs of our own,
    /// so it adds no feedback to the packets injected next. Returns the counters after.
    fn drain(&self, f: Fam) -> Snap {
        for _ in 0..40 {
            let before = self.snap();
            self.inject(Host::Victim, &f.to_client(PORT_DRAIN, Marker::None, &[]));
            let now = self.after(&before, 1, 1);
            if now.vc().fed_back == before.vc().fed_back {
                return now;
            }
        }
        panic!(
            "the victim still returns capabilities{}",
            self.snap().diag()
        );
    }
}

/// Th_rtt of the mbox in these tests.
const RTT: Duration = Duration::from_secs(5);

/// Build the testbed, start both engines and a web server, and download a file over
/// IPv4 and IPv6, so the mbox knows the client and has had capabilities returned.
fn bed(prefix: &str) -> Bed {
    let tb = Testbed::up(prefix).unwrap();
    let vcfg = RoleConfig::default()
        .with_capabilities(&tb, "victim")
        .unwrap();
    let mut mcfg = RoleConfig::default()
        .with_capabilities(&tb, "mbox")
        .unwrap();
    if let Some(c) = mcfg.capabilities.as_mut() {
        c.push_str(&format!(
            "period_ms = 60000\nrtt_ms = {}\nper_period = 1024\n",
            RTT.as_millis()
        ));
    }
    let victim = EngineProcess::start(&tb, Host::Victim, "victim", &bin(), &vcfg).unwrap();
    let mbox = EngineProcess::start(&tb, Host::Mbox, "mbox", &bin(), &mcfg).unwrap();
    {
        let served = ServedFile::start(&tb, 300 << 10).unwrap();
        for addr in [VICTIM_V4.to_string(), format!("[{VICTIM_V6}]")] {
            served.fetch(&tb, &addr).unwrap();
        }
    }
    let c0 = tb.link("c0");
    tb.exec(
        Host::Client,
        &["ip", "addr", "add", &format!("{PROBE_V4}/24"), "dev", &c0],
    )
    .unwrap();
    tb.exec(
        Host::Client,
        &[
            "ip",
            "addr",
            "add",
            &format!("{PROBE_V6}/64"),
            "dev",
            &c0,
            "nodad",
        ],
    )
    .unwrap();
    // From here on the client's stack stays silent towards our injected packets.
    for cmd in [
        "add table inet forge",
        "add chain inet forge in { type filter hook input priority 0 ; }",
        "add rule inet forge in tcp sport 8080 tcp dport 40000-40099 drop",
    ] {
        let mut argv = vec!["nft"];
        argv.extend(cmd.split(' '));
        tb.exec(Host::Client, &argv).unwrap();
    }
    // Every test starts from counters that agree with the kernel's (published every 100 ms).
    mbox.settled_stats(&tb, Host::Mbox).unwrap();
    victim.settled_stats(&tb, Host::Victim).unwrap();
    Bed { tb, mbox, victim }
}

/// Run `recv` in the victim's namespace; once it says it is ready, run `send`.
fn receive_while<T: Send>(
    tb: &Testbed,
    recv: impl FnOnce(&mpsc::Sender<()>) -> Result<T> + Send,
    send: impl FnOnce(),
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let h = s.spawn(|| in_netns(tb, Host::Victim, || recv(&tx)));
        if rx.recv_timeout(Duration::from_secs(5)).is_ok() {
            send();
        }
        h.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?
    })
}

/// Receive, for at most 3 s, the first TCP segment from `sport` that the victim's stack
/// gets (a raw socket sees it after the victim's inbound hooks). Returns the segment.
fn tcp_segment_as_delivered(v6: bool, sport: u16, ready: &mpsc::Sender<()>) -> Result<Vec<u8>> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        bail!("raw TCP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly opened socket that nothing else owns. A raw socket reads
    // like a datagram socket, so UdpSocket's recv and timeouts serve.
    let sock = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _ = ready.send(());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        // IPv4 raw sockets get the IP header, IPv6 ones only the transport part.
        let skip = if v6 {
            0
        } else {
            usize::from(buf[0] & 0x0F) * 4
        };
        let seg = &buf[skip..n];
        if seg.len() >= 20 && u16::from_be_bytes([seg[0], seg[1]]) == sport {
            return Ok(seg.to_vec());
        }
    }
    bail!("no TCP segment from port {sport} reached the victim's stack")
}

/// Receive, for at most 3 s, one datagram on the victim's UDP `port`.
fn udp_datagram(port: u16, ready: &mpsc::Sender<()>) -> Result<Vec<u8>> {
    let sock = UdpSocket::bind(("::", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    let _ = ready.send(());
    let mut buf = [0u8; 2048];
    let n = sock
        .recv(&mut buf)
        .context("no datagram reached the victim")?;
    Ok(buf[..n].to_vec())
}

#[test]
fn forged_replayed_stale_truncated_and_misplaced_capabilities_are_refused_and_counted() {
    if !root() {
        return;
    }
    let _serial = exclusive();
    let bed = bed("mpforge");
    let tb = &bed.tb;
    let start = bed.snap();
    let (mc, vc) = (start.mc(), start.vc());
    assert!(
        mc.issued > 0 && mc.returned > 0 && mc.rejected.is_empty(),
        "real traffic first: capabilities issued and returned, none refused{}",
        start.diag()
    );
    assert!(
        vc.stripped > 0 && vc.rejected.is_empty(),
        "{}",
        start.diag()
    );
    eprintln!("after the downloads:{}", start.diag());

    let to_client = testbed::Capture::start(tb, Host::Mbox, &tb.link("m0")).unwrap();
    // The mbox's count of returned capabilities: what the sender's delivery is measured
    // from. Only real feedback may raise it, and nothing ever lowers it.
    let mut returned = mc.returned;
    let mut check_returned = |s: &Snap, real: bool, what: &str| {
        let now = s.mc().returned;
        assert!(now >= returned, "{what}: returned went down{}", s.diag());
        if !real {
            assert_eq!(now, returned, "{what} counted as returned{}", s.diag());
        }
        returned = now;
    };

    for f in Fam::all() {
        let fam = if f.v6 { "IPv6" } else { "IPv4" };
        let cap_len = wire_len(f.v6);
        let base = bed.drain(f);
        check_returned(&base, true, "draining the victim");

        // Forged feedback: a well-formed capability with a MAC the mbox never made.
        let mut b = base;
        bed.inject(
            Host::Victim,
            &f.to_client(
                PORT_FORGED,
                Marker::feedback(1).unwrap(),
                &f.forged_capability(),
            ),
        );
        let s = bed.after(&b, 1, 1);
        let what = format!("{fam} forged feedback");
        assert_eq!(
            s.vc().fed_back,
            b.vc().fed_back,
            "{what}: victim added feedback{}",
            s.diag()
        );
        assert_eq!(
            rejected(&s.mc(), "bad_mac"),
            rejected(&b.mc(), "bad_mac") + 1,
            "{what}{}",
            s.diag()
        );
        assert_eq!(
            s.mc().feedback_stripped,
            b.mc().feedback_stripped + 1,
            "{what}{}",
            s.diag()
        );
        check_returned(&s, false, &what);
        eprintln!("{what}: mbox rejected {:?}", s.mc().rejected);

        // Feedback counts that promise more than the ACK holds: never forwarded.
        b = s;
        let too_short = f.to_client(PORT_SHORT, Marker::feedback(3).unwrap(), &[0x11; 10]);
        let one_of_two = f.to_client(
            PORT_SHORT,
            Marker::feedback(2).unwrap(),
            &f.forged_capability(),
        );
        bed.inject(Host::Victim, &too_short);
        bed.inject(Host::Victim, &one_of_two);
        let s = bed.after(&b, 2, 2);
        let what = format!("{fam} truncated feedback");
        let short = "feedback_too_short";
        assert_eq!(
            rejected(&s.mc(), short),
            rejected(&b.mc(), short) + 2,
            "{what}{}",
            s.diag()
        );
        assert_eq!(
            reason(&s.m, short),
            reason(&b.m, short) + 2,
            "{what}{}",
            s.diag()
        );
        assert_eq!(
            s.m.total().engine.dropped,
            b.m.total().engine.dropped + 2,
            "{what}{}",
            s.diag()
        );
        check_returned(&s, false, &what);
        eprintln!("{what}: mbox reasons {:?}", s.m.total().engine.reasons);

        // Markers the victim never sends (stamped, and the invalid 5): cleared, counted.
        b = s;
        bed.inject(
            Host::Victim,
            &f.to_client(PORT_BAD_MARKER, Marker::Stamped, b"data"),
        );
        // Reserved bits 1010: marker value 5, which no role ever writes.
        let invalid = Builder::tcp(f.victim, f.client, 8080, PORT_BAD_MARKER)
            .reserved(5 << 1)
            .payload(b"data")
            .build();
        bed.inject(Host::Victim, &invalid);
        let s = bed.after(&b, 2, 2);
        let what = format!("{fam} stamped and invalid marker from the victim");
        assert_eq!(
            rejected(&s.mc(), "bad_marker"),
            rejected(&b.mc(), "bad_marker") + 2,
            "{what}{}",
            s.diag()
        );
        check_returned(&s, false, &what);

        // A real capability, returned once, then replayed at once and again after Th_rtt.
        // From a sender new to the mbox: the sample stamps a sender's first packet, while
        // the client's own, after its downloads, it stamps only now and then.
        let f = f.probe();
        b = s;
        let m1 = tb.link("m1");
        let marked = f
            .filter(PORT_REPLAY, "TCP12 & 0x0e != 0")
            .replace("dst port", "src port 8080 and tcp dst port");
        let capture = testbed::FirstPacket::start(tb, Host::Mbox, &m1, &marked).unwrap();
        let issued_at = Instant::now();
        bed.inject(
            Host::Client,
            &f.to_victim(PORT_REPLAY, Marker::None, tcp::ACK, &[]),
        );
        let s = bed.after(&b, 1, 1);
        let what = format!("{fam} probe");
        assert_eq!(
            s.mc().issued,
            b.mc().issued + 1,
            "{what}: stamped{}",
            s.diag()
        );
        assert_eq!(
            s.vc().stripped,
            b.vc().stripped + 1,
            "{what}: stripped{}",
            s.diag()
        );
        let b2 = s;
        // Any ACK to the client now carries the capability back.
        bed.inject(Host::Victim, &f.to_client(PORT_REPLAY, Marker::None, &[]));
        let feedback = capture.packet().unwrap();
        bed.inject(Host::Victim, &feedback);
        let replayed_at = issued_at.elapsed();
        let s = bed.after(&b2, 2, 2);
        let what = format!("{fam} replayed feedback ({replayed_at:?} after the stamp)");
        assert_eq!(
            feedback.len(),
            f.ip_len() + 20 + cap_len,
            "{what}: one capability"
        );
        assert_eq!(
            feedback[f.ip_len() + 12] & 0x0e,
            Marker::feedback(1).unwrap().apply(0),
            "{what}"
        );
        assert_eq!(s.vc().fed_back, b2.vc().fed_back + 1, "{what}{}", s.diag());
        assert_eq!(
            s.mc().returned,
            b2.mc().returned + 1,
            "{what}: the original counts once{}",
            s.diag()
        );
        assert_eq!(
            rejected(&s.mc(), "replayed"),
            rejected(&b2.mc(), "replayed") + 1,
            "{what}{}",
            s.diag()
        );
        check_returned(&s, true, "the original feedback");
        b = s;
        std::thread::sleep((RTT + Duration::from_millis(300)).saturating_sub(issued_at.elapsed()));
        bed.inject(Host::Victim, &feedback);
        let s = bed.after(&b, 1, 1);
        let what = format!("{fam} feedback replayed after {:?}", issued_at.elapsed());
        assert_eq!(
            s.vc().fed_back,
            b.vc().fed_back,
            "{what}: victim added feedback{}",
            s.diag()
        );
        assert_eq!(
            rejected(&s.mc(), "stale"),
            rejected(&b.mc(), "stale") + 1,
            "{what}{}",
            s.diag()
        );
        check_returned(&s, false, &what);
        eprintln!("{fam} replay: mbox rejected {:?}", s.mc().rejected);

        // A client's marker: the mbox clears it, so the victim strips none of its bytes.
        b = s;
        let payload: Vec<u8> = (0..48u8).collect();
        let sent = f.to_victim(
            PORT_CLIENT_MARKER,
            Marker::Stamped,
            tcp::ACK | tcp::PSH,
            &payload,
        );
        let seg = receive_while(
            tb,
            |ready| tcp_segment_as_delivered(f.v6, PORT_CLIENT_MARKER, ready),
            || bed.inject(Host::Client, &sent),
        )
        .unwrap();
        let s = bed.after(&b, 1, 1);
        let what = format!("{fam} client-set marker");
        assert_eq!(
            rejected(&s.mc(), "client_marker"),
            rejected(&b.mc(), "client_marker") + 1,
            "{what}{}",
            s.diag()
        );
        let stamped = s.mc().issued - b.mc().issued;
        assert_eq!(
            s.vc().stripped - b.vc().stripped,
            stamped,
            "{what}: only the mbox's stamp is stripped{}",
            s.diag()
        );
        assert_eq!(
            seg[12] & 0x0e,
            0,
            "{what}: marker reached the victim's stack"
        );
        assert_eq!(
            &seg[20..],
            &payload[..],
            "{what}: the client's bytes changed"
        );
        check_returned(&s, false, &what);
        eprintln!("{what}: mbox stamped it {stamped} time(s), victim stripped as many");

        // Marked as stamped but too short for a capability, as if from the mbox.
        b = s;
        bed.inject(
            Host::Mbox,
            &f.to_victim(PORT_VICTIM_SHORT, Marker::Stamped, tcp::ACK, &[0x11; 8]),
        );
        let s = bed.after(&b, 0, 1);
        let what = format!("{fam} stamped packet too short for a trailer");
        let tts = "trailer_too_short";
        assert_eq!(
            reason(&s.v, tts),
            reason(&b.v, tts) + 1,
            "{what}{}",
            s.diag()
        );
        assert_eq!(s.vc().stripped, b.vc().stripped, "{what}{}", s.diag());
        assert_eq!(
            received(&s.m),
            received(&b.m),
            "{what}: the mbox saw it{}",
            s.diag()
        );

        // UDP carries no marker: a capability-shaped payload is data, passed untouched.
        b = s;
        let cap = f.forged_capability();
        let udp = Builder::udp(f.client, f.victim, PORT_UDP, 9000)
            .payload(&cap)
            .build();
        let got = receive_while(
            tb,
            |ready| udp_datagram(9000, ready),
            || bed.inject(Host::Client, &udp),
        )
        .unwrap();
        let s = bed.after(&b, 1, 1);
        let what = format!("{fam} UDP with a capability-shaped payload");
        assert_eq!(got, cap, "{what}: payload changed");
        for (x, y) in [(&s.m, &b.m), (&s.v, &b.v)] {
            let (xt, yt) = (x.total().engine, y.total().engine);
            assert_eq!(xt.accepted, yt.accepted + 1, "{what}{}", s.diag());
            assert_eq!(
                xt.caps,
                yt.caps,
                "{what}: capability counters moved{}",
                s.diag()
            );
        }
    }

    bypass(&bed);
    check_returned(&bed.snap(), false, "bypass");

    let to_client = to_client.stop().unwrap();
    for f in Fam::all() {
        let ip = f.ip_len();
        let count = |filter: String| testbed::count_packets(&to_client, &filter).unwrap();
        let fam = if f.v6 { "IPv6" } else { "IPv4" };
        let any_marker = if f.v6 {
            "ip6 and tcp src port 8080 and ip6[52] & 0x0e != 0"
        } else {
            "ip and tcp src port 8080 and tcp[12] & 0x0e != 0"
        };
        assert_eq!(
            count(any_marker.to_string()),
            0,
            "{fam}: a marker reached the client's link"
        );
        assert_eq!(
            count(f.clean(PORT_FORGED, ip + 20)),
            1,
            "{fam}: forged feedback stripped, forwarded"
        );
        assert_eq!(
            count(f.filter(PORT_SHORT, "tcp")),
            0,
            "{fam}: truncated feedback forwarded"
        );
        assert_eq!(
            count(f.clean(PORT_BAD_MARKER, ip + 24)),
            2,
            "{fam}: bad markers cleared, data kept"
        );
        assert_eq!(
            count(f.clean(PORT_REPLAY, ip + 20)),
            3,
            "{fam}: original, replay and stale replay, all stripped"
        );
    }
    let end = bed.snap();
    eprintln!("at the end:{}", end.diag());
    let (mut mbox, mut victim) = (bed.mbox, bed.victim);
    for e in [&mut mbox, &mut victim] {
        let status = e.stop().unwrap();
        assert!(status.success(), "{status}: {}", e.log_text());
    }
}

/// Connect the client straight to the victim by a second link, and route the client's
/// packets to the victim over it, around the mbox.
fn bypass_link(tb: &Testbed) {
    let (bc, bv) = (tb.link("bc"), tb.link("bv"));
    let vns = tb.ns(Host::Victim);
    tb.exec(
        Host::Client,
        &[
            "ip", "link", "add", &bc, "type", "veth", "peer", "name", &bv, "netns", &vns,
        ],
    )
    .unwrap();
    tb.exec(Host::Client, &["ip", "link", "set", &bc, "up"])
        .unwrap();
    tb.exec(Host::Victim, &["ip", "link", "set", &bv, "up"])
        .unwrap();
    let mac = tb
        .exec(
            Host::Victim,
            &["cat", &format!("/sys/class/net/{bv}/address")],
        )
        .unwrap();
    let mac = mac.trim();
    for (addr, plen) in [(VICTIM_V4, "32"), (VICTIM_V6, "128")] {
        tb.exec(
            Host::Client,
            &["ip", "route", "add", &format!("{addr}/{plen}"), "dev", &bc],
        )
        .unwrap();
        tb.exec(
            Host::Client,
            &[
                "ip",
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                &bc,
                "nud",
                "permanent",
            ],
        )
        .unwrap();
    }
}

/// Protected TCP reaching the victim on a link that is not the mbox's is dropped.
fn bypass(bed: &Bed) {
    bypass_link(&bed.tb);
    for f in Fam::all() {
        let b = bed.snap();
        bed.inject(
            Host::Client,
            &f.to_victim(PORT_BYPASS, Marker::None, tcp::ACK, b"bypass"),
        );
        let s = bed.after(&b, 0, 1);
        let what = if f.v6 { "IPv6 bypass" } else { "IPv4 bypass" };
        assert_eq!(
            reason(&s.v, "bypassed_mbox"),
            reason(&b.v, "bypassed_mbox") + 1,
            "{what}{}",
            s.diag()
        );
        assert_eq!(
            received(&s.m),
            received(&b.m),
            "{what}: went through the mbox{}",
            s.diag()
        );
    }
}

/// The bypass filter covers the protected UDP ports too (SPEC: the victim "drops
/// protected-port traffic that did not come through an mbox"), not only TCP.
#[test]
fn udp_that_bypassed_the_mbox_is_dropped() {
    if !root() {
        return;
    }
    let _serial = exclusive();
    let bed = bed("mpforgeu");
    bypass_link(&bed.tb);
    for f in Fam::all() {
        let b = bed.snap();
        let udp = Builder::udp(f.client, f.victim, PORT_BYPASS, 9000)
            .payload(b"bypass")
            .build();
        bed.inject(Host::Client, &udp);
        let s = bed.after(&b, 0, 1);
        let what = if f.v6 {
            "IPv6 UDP bypass"
        } else {
            "IPv4 UDP bypass"
        };
        assert_eq!(
            reason(&s.v, "bypassed_mbox"),
            reason(&b.v, "bypassed_mbox") + 1,
            "{what}{}",
            s.diag()
        );
        assert_eq!(received(&s.m), received(&b.m), "{what}{}", s.diag());
    }
}
