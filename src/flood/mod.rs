//! `mpolice flood`: a bounded packet flood for the attack testbed.
//!
//! Sends hand-built IPv4 or IPv6 packets from the current network namespace through a
//! raw socket with the IP header included (IPv4 `IPPROTO_RAW`, which implies
//! `IP_HDRINCL`; IPv6 `IPV6_HDRINCL`), in `sendmmsg` batches, paced by a token bucket.
//! Two kinds:
//!
//! - `udp`: datagrams of a fixed payload size at a packet or bit rate, optionally on for
//!   `--on-ms` and off for `--off-ms` in turn (the shrew flood);
//! - `syn`: TCP SYNs with a random source port and sequence number each.
//!
//! Either kind can spoof its source: `--spoof PREFIX` draws `--sources N` distinct
//! addresses from the prefix (default: the whole prefix, at most 65,536) and uses them
//! in turn, so every source sends equally often.
//!
//! **It cannot be pointed at real networks.** Every destination, spoof prefix and
//! `--from` address must lie inside the benchmarking ranges 198.18.0.0/15 (RFC 2544)
//! and 2001:2::/48 (RFC 5180); anything else is refused before a socket is opened. And
//! it always stops: `--packets` and `--seconds` are both required, and it stops at
//! whichever bound comes first.

mod guard;
mod pace;
mod packets;
mod send;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};

pub use guard::{ALLOWED, BitRate, Prefix, check_address, check_prefix};
pub use pace::{Pacer, off_for};
use packets::Rng;
pub use packets::{PacketMaker, Sources};
use send::RawSender;

/// Default number of distinct spoofed sources (and the most drawn by default).
const DEFAULT_SOURCES: u128 = 65_536;
/// Most packets handed to the kernel in one `sendmmsg`.
const MAX_BATCH: usize = 1024;
/// `mpolice flood`: its kind and options.
#[derive(Debug, Args)]
pub struct FloodArgs {
    #[command(subcommand)]
    pub kind: FloodKind,
}

/// What to send.
#[derive(Debug, Subcommand)]
pub enum FloodKind {
    /// UDP datagrams of a fixed size, at a fixed rate, optionally on and off in turn.
    Udp(UdpArgs),
    /// TCP SYNs, each with a random source port and sequence number.
    Syn(SynArgs),
}

/// Options of `mpolice flood udp`.
#[derive(Debug, Args)]
pub struct UdpArgs {
    #[command(flatten)]
    pub common: Common,
    /// UDP payload bytes per datagram.
    #[arg(long, default_value_t = 1400)]
    pub size: usize,
}

/// Options of `mpolice flood syn`.
#[derive(Debug, Args)]
pub struct SynArgs {
    #[command(flatten)]
    pub common: Common,
}

/// Options every kind takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Destination address: inside 198.18.0.0/15 or 2001:2::/48, or it is refused.
    #[arg(long)]
    pub to: IpAddr,
    /// Destination port.
    #[arg(long)]
    pub port: u16,
    /// Stop after this many packets (required).
    #[arg(long)]
    pub packets: u64,
    /// Stop after this many seconds (required; fractions allowed).
    #[arg(long)]
    pub seconds: f64,
    /// Packets per second (without --pps or --rate: as fast as the socket takes them).
    #[arg(long, conflicts_with = "rate")]
    pub pps: Option<f64>,
    /// Bits per second of IP packets, e.g. 100M, 1.5G, 50mbit.
    #[arg(long)]
    pub rate: Option<BitRate>,
    /// Spoof source addresses from this prefix (inside the benchmarking ranges).
    #[arg(long, conflicts_with = "from")]
    pub spoof: Option<Prefix>,
    /// How many distinct spoofed sources, used in turn [default: the prefix, at most 65536].
    #[arg(long, requires = "spoof")]
    pub sources: Option<u128>,
    /// Source address [default: the one the route to --to uses].
    #[arg(long)]
    pub from: Option<IpAddr>,
    /// Send for this many milliseconds, then pause for --off-ms, in turn.
    #[arg(long, requires = "off_ms")]
    pub on_ms: Option<u64>,
    /// Pause this many milliseconds after each --on-ms.
    #[arg(long, requires = "on_ms")]
    pub off_ms: Option<u64>,
    /// Packets per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

/// Which packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UDP with this many payload bytes.
    Udp(usize),
    /// TCP SYN with an MSS option.
    Syn,
}

/// A validated flood: everything `run` needs, checked against the benchmarking ranges.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    pub dst: IpAddr,
    pub port: u16,
    pub sources: Sources,
    /// Packets per second, or None for as fast as the socket takes them.
    pub pps: Option<f64>,
    pub packets: u64,
    pub duration: Duration,
    /// On and off times of an on-off flood.
    pub cycle: Option<(Duration, Duration)>,
    pub batch: usize,
}

impl Plan {
    /// Check the arguments and turn them into a plan. The source is looked up (the
    /// route to the destination) only when neither --from nor --spoof names one.
    pub fn from_args(args: &FloodArgs) -> Result<Plan> {
        let (kind, c) = match &args.kind {
            FloodKind::Udp(u) => (Kind::Udp(u.size), &u.common),
            FloodKind::Syn(s) => (Kind::Syn, &s.common),
        };
        Plan::new(kind, c, route_source)
    }

    /// `from_args` with the route lookup supplied (tests pass their own).
    fn new(kind: Kind, c: &Common, route: impl Fn(IpAddr) -> Result<IpAddr>) -> Result<Plan> {
        check_address("destination", c.to)?;
        let v4 = c.to.is_ipv4();
        let sources = match (&c.spoof, c.from) {
            (Some(p), _) => {
                check_prefix("spoof prefix", p)?;
                if p.addr.is_ipv4() != v4 {
                    bail!("spoof prefix {p} and destination {} differ in family", c.to);
                }
                let size = 1u128.checked_shl(u32::from(p.host_bits()));
                let count = match (c.sources, size) {
                    (Some(0), _) => bail!("--sources must be at least 1"),
                    (Some(n), Some(size)) if n > size => {
                        bail!("--sources {n}: prefix {p} holds only {size} addresses")
                    }
                    (Some(n), _) => n,
                    (None, Some(size)) => size.min(DEFAULT_SOURCES),
                    (None, None) => DEFAULT_SOURCES,
                };
                Sources::Spoofed { prefix: *p, count }
            }
            (None, Some(a)) => {
                check_address("source", a)?;
                if a.is_ipv4() != v4 {
                    bail!("source {a} and destination {} differ in family", c.to);
                }
                Sources::Fixed(a)
            }
            (None, None) => Sources::Fixed(route(c.to)?),
        };
        if c.packets == 0 {
            bail!("--packets must be at least 1");
        }
        if !c.seconds.is_finite() || c.seconds <= 0.0 || c.seconds > 86_400.0 {
            bail!("--seconds must be above 0 and at most a day");
        }
        if c.batch == 0 || c.batch > MAX_BATCH {
            bail!("--batch must be 1 to {MAX_BATCH}");
        }
        let len = packet_len(kind, v4);
        if len > usize::from(u16::MAX) {
            bail!("--size: a {len}-byte packet does not fit an IP length field");
        }
        let pps = match (c.pps, c.rate) {
            (Some(p), _) if !p.is_finite() || p <= 0.0 => bail!("--pps must be above 0"),
            (Some(p), _) => Some(p),
            (None, Some(BitRate(bits))) => Some(bits / (len as f64 * 8.0)),
            (None, None) => None,
        };
        let cycle = match (c.on_ms, c.off_ms) {
            (Some(0), _) => bail!("--on-ms must be at least 1"),
            (Some(on), Some(off)) => Some((Duration::from_millis(on), Duration::from_millis(off))),
            _ => None,
        };
        Ok(Plan {
            kind,
            dst: c.to,
            port: c.port,
            sources,
            pps,
            packets: c.packets,
            duration: Duration::from_secs_f64(c.seconds),
            cycle,
            batch: c.batch,
        })
    }

    /// The length of every packet of this flood, IP header included.
    pub fn packet_len(&self) -> usize {
        packet_len(self.kind, self.dst.is_ipv4())
    }
}

/// IP packet length of a kind: IPv4 20 or IPv6 40 bytes of header, then UDP 8 + payload,
/// or TCP 20 + 4 (MSS option).
fn packet_len(kind: Kind, v4: bool) -> usize {
    let ip = if v4 { 20 } else { 40 };
    ip + match kind {
        Kind::Udp(size) => 8 + size,
        Kind::Syn => 24,
    }
}

/// The address the kernel would send from to reach `dst` (a connected UDP socket's
/// local address; nothing is sent).
fn route_source(dst: IpAddr) -> Result<IpAddr> {
    let any: IpAddr = if dst.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0)).context("find the source address")?;
    s.connect((dst, 9))
        .with_context(|| format!("no route to {dst} from this network namespace"))?;
    Ok(s.local_addr()?.ip())
}

/// Which bound ended a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoppedBy {
    Packets,
    Seconds,
    /// SIGINT or SIGTERM: it stops early and still prints its summary.
    Signal,
}

/// What a flood did, printed as one line.
#[derive(Debug, Clone)]
pub struct Summary {
    pub kind: Kind,
    pub dst: IpAddr,
    pub port: u16,
    pub sources: u128,
    pub sent: u64,
    pub packet_len: usize,
    pub elapsed: Duration,
    pub stopped_by: StoppedBy,
    /// Times the kernel said "no buffer space" and the batch waited.
    pub blocked: u64,
}

impl Summary {
    /// Packets per second over the whole run.
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Bits per second of IP packets over the whole run.
    pub fn bps(&self) -> f64 {
        self.pps() * self.packet_len as f64 * 8.0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Udp(_) => "udp",
            Kind::Syn => "syn",
        };
        let to = match self.dst {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        };
        write!(
            f,
            "flood {kind} to {to}: sent {} packets of {} bytes from {} source{} in {:.2} s \
             (stopped by {}): {:.0} packets/s, {:.1} Mbit/s",
            self.sent,
            self.packet_len,
            self.sources,
            if self.sources == 1 { "" } else { "s" },
            self.elapsed.as_secs_f64(),
            match self.stopped_by {
                StoppedBy::Packets => "--packets",
                StoppedBy::Seconds => "--seconds",
                StoppedBy::Signal => "a signal",
            },
            self.pps(),
            self.bps() / 1e6,
        )?;
        if self.blocked > 0 {
            write!(f, ", {} waits for buffer space", self.blocked)?;
        }
        Ok(())
    }
}

/// Send the flood `plan` describes from the current network namespace; return what it
/// did. It stops early, and still returns, once `stop` is set.
pub fn run(plan: &Plan, stop: &AtomicBool) -> Result<Summary> {
    let maker = PacketMaker::new(plan);
    let len = maker.len();
    let mut sender = RawSender::open(plan.dst)?;
    let mut bufs: Vec<Vec<u8>> = (0..plan.batch).map(|_| maker.template()).collect();
    let mut rng = Rng::new();
    // Send about a millisecond's worth at a time (at most a batch), and save up at most
    // 20 ms, so a moment's lack of CPU is made up without a long line-rate burst.
    let chunk = plan.pps.map_or(plan.batch as u64, |p| {
        (p / 1000.0).round().clamp(1.0, plan.batch as f64) as u64
    });
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut pacer = plan.pps.map(|p| {
        let depth = (p * 0.02).max(plan.batch as f64);
        Pacer::new(p, depth, chunk as f64, start)
    });
    let (mut sent, mut blocked) = (0u64, 0u64);
    let stopped_by = loop {
        if stop.load(Ordering::Relaxed) {
            break StoppedBy::Signal;
        }
        if sent >= plan.packets {
            break StoppedBy::Packets;
        }
        let now = Instant::now();
        if now >= deadline {
            break StoppedBy::Seconds;
        }
        if let Some((on, off)) = plan.cycle {
            if let Some(wait) = off_for(now - start, on, off) {
                // In slices, so a signal is heard within 50 ms.
                let nap = wait.min(deadline - now).min(Duration::from_millis(50));
                std::thread::sleep(nap);
                if let Some(p) = pacer.as_mut() {
                    p.restart(now + nap, chunk as f64);
                }
                continue;
            }
        }
        let want = (plan.packets - sent).min(plan.batch as u64);
        let n = match pacer.as_mut() {
            None => want,
            Some(p) => {
                let avail = p.refill(now);
                let need = chunk.min(want);
                if avail < need {
                    let wait = p.wait_for(need).min(deadline - now);
                    std::thread::sleep(wait);
                    continue;
                }
                avail.min(want)
            }
        } as usize;
        for (k, buf) in bufs[..n].iter_mut().enumerate() {
            let i = sent + k as u64;
            let r = rng.next();
            maker.write(
                buf,
                plan.sources.nth(i),
                1024 + (r as u16 % 64_512),
                (r >> 32) as u32,
            );
        }
        match sender.send(&mut bufs[..n], len)? {
            Some(k) => {
                sent += k as u64;
                if let Some(p) = pacer.as_mut() {
                    p.take(k as u64);
                }
            }
            None => {
                blocked += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    };
    Ok(Summary {
        kind: plan.kind,
        dst: plan.dst,
        port: plan.port,
        sources: plan.sources.count(),
        sent,
        packet_len: len,
        elapsed: start.elapsed(),
        stopped_by,
        blocked,
    })
}

/// `mpolice flood`: check, send, print the summary line.
pub fn command(args: &FloodArgs) -> Result<()> {
    let plan = Plan::from_args(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("install signal handler")?;
    }
    let summary = run(&plan, &stop)?;
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests;
