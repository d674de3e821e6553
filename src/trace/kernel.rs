//! Tracing's kernel path: nftables' own trace events for the packets our `trace_in` and
//! `trace_out` chains mark with `meta nftrace` (`trace.kernel = true`). A thread reads
//! them from the NFNLGRP_NFTRACE netlink group: for each rule a marked packet meets in
//! any table, its table, chain, rule handle and verdict, and the packet's headers. Each
//! becomes a `kernel` line of the raw trace, timed on arrival (the events carry no time).
//! A socket overrun loses events: counted and logged, never a packet's.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::record::{Head, parse_cut};
use super::tracer::Clock;
use super::writer::Record;
use crate::driver::netlink::{self, Attrs};

/// The netfilter netlink family's trace group, and its nftables trace message.
const NFNLGRP_NFTRACE: u32 = 9;
const NFT_TRACE_MSG: u16 = (10 << 8) | 17; // NFNL_SUBSYS_NFTABLES, NFT_MSG_TRACE
/// The nfgenmsg before a netfilter message's attributes.
const NFGENMSG_LEN: usize = 4;

/// `enum nft_trace_attributes`.
const TABLE: u16 = 1;
const CHAIN: u16 = 2;
const RULE_HANDLE: u16 = 3;
const TYPE: u16 = 4;
const VERDICT: u16 = 5;
const ID: u16 = 6;
const NETWORK_HEADER: u16 = 8;
const TRANSPORT_HEADER: u16 = 9;
const IIF: u16 = 10;
const OIF: u16 = 12;
const NFPROTO: u16 = 15;
const POLICY: u16 = 16;
/// Inside VERDICT: `NFTA_VERDICT_CODE`, `NFTA_VERDICT_CHAIN`.
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;

/// One rule (or a chain's return or policy) a marked packet met in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelEvent {
    /// When the event reached us (nanoseconds since the Unix epoch).
    pub t_ns: u64,
    /// The kernel's id for the packet: its events share it.
    pub id: u32,
    /// `ip`, `ip6` or the netfilter protocol number.
    pub family: String,
    pub table: String,
    pub chain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// `rule` (a rule matched), `return` or `policy` (the chain's end).
    pub kind: String,
    /// accept, drop, queue N, continue, jump CHAIN, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iif: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oif: Option<u32>,
    /// The packet, from the headers the event carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    /// TCP: the payload's length as the IP header gives it. Before the queue a
    /// super-packet is whole, and this is how the segments the engine sees are found in
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<u32>,
}

/// Decode one NFT_MSG_TRACE body (`body` of `buf`), received at `t_ns`.
pub fn decode(buf: &[u8], body: std::ops::Range<usize>, t_ns: u64) -> Option<KernelEvent> {
    let attrs = body.start.checked_add(NFGENMSG_LEN)?..body.end;
    let (mut e, mut network, mut transport) = (
        KernelEvent {
            t_ns,
            id: 0,
            family: String::new(),
            table: String::new(),
            chain: String::new(),
            handle: None,
            kind: String::new(),
            verdict: None,
            iif: None,
            oif: None,
            head: None,
            payload: None,
        },
        &[][..],
        &[][..],
    );
    for (kind, range) in Attrs::new(buf, attrs) {
        let p = &buf[range.clone()];
        match kind {
            TABLE => e.table = text(p),
            CHAIN => e.chain = text(p),
            RULE_HANDLE => e.handle = p.try_into().ok().map(u64::from_be_bytes),
            TYPE => e.kind = trace_type(be32(p)?),
            VERDICT => e.verdict = Some(verdict(buf, range)),
            POLICY => e.verdict = be32(p).map(|c| code_name(c as i32, None)),
            ID => e.id = be32(p)?,
            NETWORK_HEADER => network = p,
            TRANSPORT_HEADER => transport = p,
            IIF => e.iif = be32(p),
            OIF => e.oif = be32(p),
            NFPROTO => {
                e.family = match be32(p)? {
                    2 => "ip".into(),
                    10 => "ip6".into(),
                    n => n.to_string(),
                }
            }
            _ => {}
        }
    }
    e.head = head(network, transport);
    if e.head.is_some_and(|h| h.proto == crate::wire::proto::TCP) {
        e.payload = tcp_payload(network, transport);
    }
    Some(e)
}

/// The TCP payload's length: the IP header's length field less both headers (IPv4, or
/// IPv6 without extension headers).
fn tcp_payload(network: &[u8], transport: &[u8]) -> Option<u32> {
    let tcp_len = u32::from(transport.get(12)? >> 4) * 4;
    let word = |at: usize| {
        Some(u32::from(u16::from_be_bytes([
            *network.get(at)?,
            *network.get(at + 1)?,
        ])))
    };
    let ip_payload = match network.first()? >> 4 {
        4 => word(2)?.checked_sub(u32::from(network[0] & 0x0f) * 4)?,
        6 => word(4)?,
        _ => return None,
    };
    ip_payload.checked_sub(tcp_len)
}

fn text(p: &[u8]) -> String {
    String::from_utf8_lossy(p.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
}

fn be32(p: &[u8]) -> Option<u32> {
    p.get(..4)?.try_into().ok().map(u32::from_be_bytes)
}

/// `enum nft_trace_types`.
fn trace_type(t: u32) -> String {
    match t {
        1 => "policy".into(),
        2 => "return".into(),
        3 => "rule".into(),
        n => format!("type-{n}"),
    }
}

/// A verdict as nft prints it.
fn verdict(buf: &[u8], range: std::ops::Range<usize>) -> String {
    let (mut code, mut chain) = (None, None);
    for (kind, r) in Attrs::new(buf, range) {
        match kind {
            VERDICT_CODE => code = be32(&buf[r]).map(|c| c as i32),
            VERDICT_CHAIN => chain = Some(text(&buf[r])),
            _ => {}
        }
    }
    code.map_or_else(|| "none".into(), |c| code_name(c, chain))
}

/// A verdict code (and the chain a jump or goto names) as nft prints it.
fn code_name(code: i32, chain: Option<String>) -> String {
    let to = chain.map(|c| format!(" {c}")).unwrap_or_default();
    // The queue number fills the top half, so a queue verdict may read negative: test
    // its low byte (NF_VERDICT_MASK) first. Bit 15 is the bypass flag.
    let bits = code as u32;
    if bits & 0xff == 3 {
        let bypass = if bits & 0x8000 != 0 { " bypass" } else { "" };
        return format!("queue {}{bypass}", bits >> 16);
    }
    match code {
        0 => "drop".into(),
        1 => "accept".into(),
        2 => "stolen".into(),
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => format!("jump{to}"),
        -4 => format!("goto{to}"),
        -5 => "return".into(),
        c => format!("verdict {c}"),
    }
}

/// The packet's identity from the network and transport headers an event carries. The
/// kernel sends at most 40 bytes of the first and 20 of the second: IPv4 options past
/// them are filled in with zeros, and past IPv6 extension headers only the addresses
/// are known.
fn head(network: &[u8], transport: &[u8]) -> Option<Head> {
    let mut network = network.to_vec();
    match network.first()? >> 4 {
        4 => {
            let ihl = usize::from(network[0] & 0x0f) * 4;
            if network.len() < ihl {
                network.resize(ihl, 0);
            }
        }
        6 if !matches!(network.get(6)?, &6 | &17 | &58) => {
            let (src, dst) = (network.get(8..24)?, network.get(24..40)?);
            let addr = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16]));
            return Some(Head {
                proto: network[6],
                src: addr(src),
                dst: addr(dst),
                sport: 0,
                dport: 0,
                flags: None,
                seq: None,
                ack: None,
                ip_id: None,
            });
        }
        _ => {}
    }
    // Only the headers came.
    let (ip, p) = parse_cut([&network[..], transport].concat())?;
    Some(Head::of(&ip, &p))
}

/// The kernel trace's counts, as `mpolice stats` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelTraceCounters {
    /// Events handed to the trace's writer.
    pub events: u64,
    /// Events lost: the socket overran (one count per overrun, which may lose several)
    /// or the writer's channel was full.
    pub lost: u64,
}

/// The listener's counts, shared with the control socket.
#[derive(Debug, Default)]
pub struct KernelTally {
    events: AtomicU64,
    lost: AtomicU64,
}

impl KernelTally {
    pub fn read(&self) -> KernelTraceCounters {
        KernelTraceCounters {
            events: self.events.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

/// The running listener; dropped, it stops (a start-up that fails later leaves no
/// thread behind).
pub struct KernelListener {
    stop: Arc<AtomicBool>,
    tally: Arc<KernelTally>,
    thread: Option<JoinHandle<()>>,
}

impl KernelListener {
    /// Join the trace group and start the thread that hands events to `out`.
    pub fn start(out: SyncSender<Record>, clock: Clock) -> io::Result<KernelListener> {
        let fd = open()?;
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(KernelTally::default());
        let (flag, counts) = (Arc::clone(&stop), Arc::clone(&tally));
        let thread = std::thread::Builder::new()
            .name("trace-kernel".into())
            .spawn(move || listen(&fd, &out, clock, &flag, &counts))?;
        Ok(KernelListener {
            stop,
            tally,
            thread: Some(thread),
        })
    }

    /// The counts as they grow, for the control socket.
    pub fn tally(&self) -> Arc<KernelTally> {
        Arc::clone(&self.tally)
    }

    /// Stop the thread; return its final counts.
    pub fn stop(mut self) -> KernelTraceCounters {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.tally.read()
    }
}

impl Drop for KernelListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open() -> io::Result<OwnedFd> {
    let fd = netlink::open_bound(libc::NETLINK_NETFILTER).map_err(|(_, e)| e)?;
    netlink::setsockopt(
        &fd,
        libc::SOL_NETLINK,
        libc::NETLINK_ADD_MEMBERSHIP,
        &NFNLGRP_NFTRACE,
    )?;
    // Wake every 200 ms to see the stop flag. A large buffer rides out bursts: each
    // packet makes some ten events, and a busy engine leaves this thread little CPU.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    netlink::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let _ = netlink::force_rcvbuf(&fd, 32 << 20);
    Ok(fd)
}

fn listen(
    fd: &OwnedFd,
    out: &SyncSender<Record>,
    clock: Clock,
    stop: &AtomicBool,
    tally: &KernelTally,
) {
    let mut buf = vec![0u8; 1 << 16];
    let lost = || tally.lost.fetch_add(1, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    if lost() == 0 {
                        tracing::warn!("kernel trace: the socket overran; events are lost");
                    }
                    continue;
                }
                _ => {
                    tracing::warn!("kernel trace: {e}; no more kernel events");
                    break;
                }
            }
        }
        let t_ns = clock.unix_ns(Instant::now());
        let data = &buf[..n as usize];
        for m in netlink::messages(data) {
            if m.msg_type != NFT_TRACE_MSG {
                continue;
            }
            let Some(e) = decode(data, m.body, t_ns) else {
                continue;
            };
            match out.try_send(Record::Kernel(e)) {
                Ok(()) => tally.events.fetch_add(1, Ordering::Relaxed),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => lost(),
            };
        }
    }
    let lost = tally.lost.load(Ordering::Relaxed);
    if lost > 0 {
        tracing::warn!(lost, "kernel trace: events lost");
    }
}
