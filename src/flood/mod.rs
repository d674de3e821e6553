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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::wire::build::Builder;
use crate::wire::checksum as cs;
use crate::wire::{proto, tcp};

/// The only ranges a flood may touch: 198.18.0.0/15 and 2001:2::/48.
pub const ALLOWED: [(IpAddr, u8); 2] = [
    (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)), 15),
    (IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0)), 48),
];

/// Most packets handed to the kernel in one `sendmmsg`.
const MAX_BATCH: usize = 1024;
/// Default number of distinct spoofed sources (and the most drawn by default).
const DEFAULT_SOURCES: u128 = 65_536;
/// IPv6 `IPV6_HDRINCL` from linux/in6.h (not in every libc release).
const IPV6_HDRINCL: libc::c_int = 36;

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

/// An IP prefix such as `198.19.0.0/16`, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Bits of the address family (32 or 128).
    fn bits(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// Whether `a` lies inside this prefix (same family only).
    pub fn contains(&self, a: IpAddr) -> bool {
        if a.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let shift = u32::from(self.bits() - self.len);
        let (x, y) = (to_u128(a), to_u128(self.addr));
        shift >= 128 || (x >> shift) == (y >> shift)
    }

    /// Whether every address of `other` lies inside this prefix.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// The number of host bits.
    fn host_bits(&self) -> u8 {
        self.bits() - self.len
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write a prefix as ADDRESS/LENGTH"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("length {l:?}: {e}"))?;
        let p = Prefix { addr, len };
        if len > p.bits() {
            return Err(format!("{s}: length {len} is longer than the address"));
        }
        let host = p.host_bits();
        if host > 0 && to_u128(addr) & low_mask(host) != 0 {
            return Err(format!("{s}: host bits are set"));
        }
        Ok(p)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A bit rate in bits per second, written like `100M`, `1.5G`, `50mbit` or `2000000`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BitRate(pub f64);

impl FromStr for BitRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let t = t
            .strip_suffix("bit")
            .or_else(|| t.strip_suffix("bps"))
            .unwrap_or(&t);
        let (num, mult) = match t.chars().last() {
            Some('k') => (&t[..t.len() - 1], 1e3),
            Some('m') => (&t[..t.len() - 1], 1e6),
            Some('g') => (&t[..t.len() - 1], 1e9),
            _ => (t, 1.0),
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?}: write a rate like 100M, 1.5G or 50mbit"))?;
        let v = v * mult;
        if !v.is_finite() || v <= 0.0 {
            return Err(format!("{s:?}: the rate must be above 0"));
        }
        Ok(BitRate(v))
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn low_mask(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn allowed_text() -> String {
    ALLOWED
        .iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Refuse an address outside the benchmarking ranges; `what` names it in the error.
pub fn check_address(what: &str, a: IpAddr) -> Result<()> {
    if ALLOWED
        .iter()
        .any(|&(addr, len)| Prefix { addr, len }.contains(a))
    {
        return Ok(());
    }
    bail!(
        "{what} {a} is outside the benchmarking ranges {}: mpolice flood sends only to and from test addresses",
        allowed_text()
    )
}

/// Refuse a prefix not wholly inside the benchmarking ranges.
pub fn check_prefix(what: &str, p: &Prefix) -> Result<()> {
    if ALLOWED
        .iter()
        .any(|&(addr, len)| Prefix { addr, len }.covers(p))
    {
        return Ok(());
    }
    bail!(
        "{what} {p} is not inside the benchmarking ranges {}: mpolice flood sends only to and from test addresses",
        allowed_text()
    )
}

/// The source addresses of a flood.
#[derive(Debug, Clone)]
pub enum Sources {
    /// One address.
    Fixed(IpAddr),
    /// `count` distinct addresses of `prefix`, used in turn.
    Spoofed { prefix: Prefix, count: u128 },
}

/// An odd multiplier: multiplying an index by it is a bijection modulo any power of
/// two, so consecutive packets come from scattered addresses yet no two of the first
/// 2^host_bits indices share one.
const SCATTER: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835;

impl Sources {
    /// The source of packet number `i`.
    pub fn nth(&self, i: u64) -> IpAddr {
        match *self {
            Sources::Fixed(a) => a,
            Sources::Spoofed { prefix, count } => {
                let j = u128::from(i) % count;
                let offset = j.wrapping_mul(SCATTER) & low_mask(prefix.host_bits());
                let v = to_u128(prefix.addr) | offset;
                if prefix.addr.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::from(v as u32))
                } else {
                    IpAddr::V6(Ipv6Addr::from(v))
                }
            }
        }
    }

    /// How many distinct sources.
    pub fn count(&self) -> u128 {
        match self {
            Sources::Fixed(_) => 1,
            Sources::Spoofed { count, .. } => *count,
        }
    }
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

/// Builds the packets of a flood: one template, then per packet only the fields that
/// change (source address; for SYNs source port and sequence number) and the checksums.
#[derive(Debug, Clone)]
pub struct PacketMaker {
    template: Vec<u8>,
    v4: bool,
    l4: usize,
    l4_header: usize,
    protocol: u8,
    /// Partial checksum sum of the bytes after the L4 header (constant).
    payload_sum: u64,
    /// Whether packets differ from one another at all.
    varies: bool,
}

impl PacketMaker {
    /// The template of `plan`'s packets, from its first source.
    pub fn new(plan: &Plan) -> PacketMaker {
        let src = plan.sources.nth(0);
        let (builder, l4_header, protocol) = match plan.kind {
            Kind::Udp(size) => (
                Builder::udp(src, plan.dst, 40_000, plan.port).payload(&vec![0x5a; size]),
                8,
                proto::UDP,
            ),
            Kind::Syn => (
                Builder::tcp(src, plan.dst, 40_000, plan.port)
                    .flags(tcp::SYN)
                    .window(64_240)
                    .mss(1460),
                24,
                proto::TCP,
            ),
        };
        let template = builder.ttl(64).build();
        let l4 = if plan.dst.is_ipv4() { 20 } else { 40 };
        let payload_sum = cs::sum(&template[l4 + l4_header..]);
        PacketMaker {
            v4: plan.dst.is_ipv4(),
            l4,
            l4_header,
            protocol,
            payload_sum,
            varies: plan.kind == Kind::Syn || plan.sources.count() > 1,
            template,
        }
    }

    /// The length of every packet.
    pub fn len(&self) -> usize {
        self.template.len()
    }

    /// Whether packets are empty (never: there is always an IP header).
    pub fn is_empty(&self) -> bool {
        self.template.is_empty()
    }

    /// Write a packet from `src` with `sport` and `seq` (SYN only) into `buf`, which
    /// must already hold a copy of the template.
    pub fn write(&self, buf: &mut [u8], src: IpAddr, sport: u16, seq: u32) {
        if !self.varies {
            return;
        }
        let l4 = self.l4;
        let l4_len = buf.len() - l4;
        let pseudo = match src {
            IpAddr::V4(a) => {
                buf[12..16].copy_from_slice(&a.octets());
                buf[10..12].fill(0);
                let c = cs::checksum(&buf[..20]);
                buf[10..12].copy_from_slice(&c.to_be_bytes());
                let dst: [u8; 4] = buf[16..20].try_into().unwrap_or_default();
                cs::pseudo_v4(a.octets(), dst, self.protocol, l4_len as u16)
            }
            IpAddr::V6(a) => {
                buf[8..24].copy_from_slice(&a.octets());
                let dst: [u8; 16] = buf[24..40].try_into().unwrap_or_default();
                cs::pseudo_v6(&a.octets(), &dst, self.protocol, l4_len as u32)
            }
        };
        let field = if self.protocol == proto::TCP {
            buf[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
            buf[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            l4 + 16
        } else {
            l4 + 6
        };
        buf[field..field + 2].fill(0);
        let mut c = cs::finish(pseudo + cs::sum(&buf[l4..l4 + self.l4_header]) + self.payload_sum);
        if self.protocol == proto::UDP && c == 0 {
            c = 0xFFFF;
        }
        buf[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// A fresh copy of the template.
    pub fn template(&self) -> Vec<u8> {
        self.template.clone()
    }

    /// Whether it builds IPv4 packets.
    pub fn is_v4(&self) -> bool {
        self.v4
    }
}

/// A token bucket in packets: `pps` a second, at most `depth` saved up.
#[derive(Debug, Clone)]
pub struct Pacer {
    pps: f64,
    depth: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// Start with `start` tokens at `now`.
    pub fn new(pps: f64, depth: f64, start: f64, now: Instant) -> Pacer {
        Pacer {
            pps,
            depth,
            tokens: start.min(depth),
            last: now,
        }
    }

    /// Add the tokens earned since the last call; return the whole packets available.
    pub fn refill(&mut self, now: Instant) -> u64 {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.pps).min(self.depth);
        self.last = now;
        self.tokens.max(0.0).floor() as u64
    }

    /// Spend `n` packets' tokens.
    pub fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// How long until `n` packets' tokens are there.
    pub fn wait_for(&self, n: u64) -> Duration {
        let missing = (n as f64 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.pps)
    }

    /// Start again at `now` with `start` tokens (after an off period).
    pub fn restart(&mut self, now: Instant, start: f64) {
        self.tokens = start.min(self.depth);
        self.last = now;
    }
}

/// In an on-off flood, `elapsed` since the start: None while on, or how long until the
/// next on period starts.
pub fn off_for(elapsed: Duration, on: Duration, off: Duration) -> Option<Duration> {
    let period = (on + off).as_nanos();
    if off.is_zero() || period == 0 {
        return None;
    }
    let phase = elapsed.as_nanos() % period;
    let on_ns = on.as_nanos();
    (phase >= on_ns).then(|| Duration::from_nanos((period - phase) as u64))
}

/// Which bound ended a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoppedBy {
    Packets,
    Seconds,
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
             (stopped by --{}): {:.0} packets/s, {:.1} Mbit/s",
            self.sent,
            self.packet_len,
            self.sources,
            if self.sources == 1 { "" } else { "s" },
            self.elapsed.as_secs_f64(),
            match self.stopped_by {
                StoppedBy::Packets => "packets",
                StoppedBy::Seconds => "seconds",
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

/// A small fast random generator (xorshift64*), seeded from the kernel.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: the buffer outlives the call and its length is passed exactly.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let s = if n == 8 {
            u64::from_ne_bytes(seed)
        } else {
            u64::from(std::process::id()) ^ 0x2545_F491_4F6C_DD1D
        };
        Rng(s | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A raw socket that sends whole IP packets to one destination.
struct RawSender {
    sock: OwnedFd,
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
}

impl RawSender {
    fn open(dst: IpAddr) -> Result<RawSender> {
        let family = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                bail!("raw socket: {e} (mpolice flood needs root or CAP_NET_RAW)");
            }
            bail!("raw socket: {e}");
        }
        // SAFETY: fd is a freshly opened socket that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        if !dst.is_ipv4() {
            setsockopt_int(&sock, libc::IPPROTO_IPV6, IPV6_HDRINCL, 1).context("IPV6_HDRINCL")?;
        }
        // A larger send buffer, so a queueing qdisc on our own link does not stall each
        // batch; not fatal if refused.
        let _ = setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        let (addr, addr_len) = sockaddr(dst);
        Ok(RawSender {
            sock,
            addr,
            addr_len,
        })
    }

    /// Send `bufs` (each of `len` bytes) in one sendmmsg; return how many went, or
    /// None if the kernel had no buffer space for the first.
    fn send(&mut self, bufs: &mut [Vec<u8>], len: usize) -> Result<Option<usize>> {
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        let name = (&raw mut self.addr).cast::<libc::c_void>();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero lengths).
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = name;
                h.msg_namelen = self.addr_len;
                h.msg_iov = iov;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: every msghdr points at a live iovec, buffer and address that outlive the
        // call; the count passed is the vector's length.
        let n = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => Ok(None),
            _ => bail!("sendmmsg: {e}"),
        }
    }
}

fn setsockopt_int(
    sock: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> Result<()> {
    // SAFETY: `v` outlives the call and its length is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A `sockaddr_storage` holding `dst` with port 0 (on an IPv6 raw socket a port would be
/// read as the protocol), and the length of the part in use.
fn sockaddr(dst: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in.
            let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut ss).cast(), s) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in6.
            let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_addr.s6_addr = a.octets();
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast(), s) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Send the flood `plan` describes from the current network namespace; return what it did.
pub fn run(plan: &Plan) -> Result<Summary> {
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
        if sent >= plan.packets {
            break StoppedBy::Packets;
        }
        let now = Instant::now();
        if now >= deadline {
            break StoppedBy::Seconds;
        }
        if let Some((on, off)) = plan.cycle {
            if let Some(wait) = off_for(now - start, on, off) {
                let resume = (now + wait).min(deadline);
                std::thread::sleep(resume - now);
                if let Some(p) = pacer.as_mut() {
                    p.restart(resume, chunk as f64);
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
    let summary = run(&plan)?;
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests;
