//! Pure data model of the ruleset: roles, selections, prefixes, port ranges, chains, rules.
//!
//! Invariants: a parsed [`Prefix`] has no host bits set and a length within its family's
//! width; a parsed [`PortRange`] has `1 <= lo <= hi`. Nothing here does I/O.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Which end of the MiddlePolice path this host plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The policing middlebox that forwards traffic to the protected server.
    Mbox,
    /// The protected server itself.
    Victim,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Mbox => "mbox",
            Role::Victim => "victim",
        })
    }
}

/// The protected addresses and service ports whose traffic is queued.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub addresses: Vec<Prefix>,
    pub tcp_ports: Vec<PortRange>,
    pub udp_ports: Vec<PortRange>,
}

/// The NFQUEUE queues a matching packet goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTarget {
    /// First queue number.
    pub first: u16,
    /// Number of queues (>= 1); with more than one, each sender's traffic goes to one of
    /// `first..first + count`, picked by a hash of its address (or by CPU with `fanout`).
    pub count: u16,
    /// Accept the packet instead of dropping it when no process is bound to the queue.
    pub bypass: bool,
    /// Pick the queue by CPU instead of by the client's address.
    pub fanout: bool,
}

impl QueueTarget {
    /// Return the last queue number, or an error if the range is empty or overflows u16.
    pub fn last(&self) -> Result<u16, SpecError> {
        if self.count == 0 {
            return Err(SpecError::QueueCount);
        }
        self.first
            .checked_add(self.count - 1)
            .ok_or(SpecError::QueueRange {
                first: self.first,
                count: self.count,
            })
    }

    /// Return the flag bits shared by the native queue expression and xt NFQUEUE v3.
    pub fn flag_bits(&self) -> u16 {
        // NFT_QUEUE_FLAG_BYPASS / NFQ_FLAG_BYPASS and ..._CPU_FANOUT have the same values.
        u16::from(self.bypass) | (u16::from(self.fanout) << 1)
    }
}

/// A whole `table inet <table>` with its base chains; the family is always inet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetSpec {
    pub table: String,
    /// The role the ruleset was planned for (shown in rendered text).
    pub role: Role,
    pub chains: Vec<ChainSpec>,
    /// The sets and named objects of the channel for unverified senders, when the mbox's
    /// `to_victim` chain has one (see `add_unverified_channel`).
    pub channel: Option<UnverifiedChannel>,
}

/// In-kernel limits on the traffic of senders the engine has not verified (no capability
/// came back from them yet): per source address, and for all of them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnverifiedLimits {
    /// Packets a second one unverified source may send before the excess is dropped.
    pub per_source_pps: u32,
    /// Packets one source may send at once (its token bucket's depth).
    pub per_source_burst: u32,
    /// Packets a second all unverified senders together may send to the engine.
    pub total_pps: u32,
    /// Their bucket's depth.
    pub total_burst: u32,
    /// The leading bits of an IPv6 client address that name one source for its rate
    /// (64: a host's whole /64 is one source, as it can send from any address in it).
    /// An IPv4 source is always one address.
    pub v6_source_prefix: u8,
}

/// Highest rate the kernel's limit can express in packets a second (one token per ns).
pub const MAX_LIMIT_PPS: u32 = 1_000_000_000;

impl UnverifiedLimits {
    /// Check that every rate is 1 to [`MAX_LIMIT_PPS`] and every burst at least 1 (the
    /// kernel would read a zero burst as 5, and a zero rate is refused).
    pub fn validate(&self) -> Result<(), SpecError> {
        for (what, value, max) in [
            ("per_source_pps", self.per_source_pps, MAX_LIMIT_PPS),
            ("per_source_burst", self.per_source_burst, u32::MAX),
            ("total_pps", self.total_pps, MAX_LIMIT_PPS),
            ("total_burst", self.total_burst, u32::MAX),
            ("v6_source_prefix", u32::from(self.v6_source_prefix), 128),
        ] {
            if value == 0 || value > max {
                return Err(SpecError::ChannelLimit { what, value, max });
            }
        }
        Ok(())
    }
}

/// The channel's kernel state: the limits and the bounds of its sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnverifiedChannel {
    pub limits: UnverifiedLimits,
    /// Most addresses each verified set (`verified_v4`, `verified_v6`) holds.
    pub verified_size: u32,
    /// Most sources each per-source meter (`unverified_rate_v4`, `..._v6`) tracks.
    pub meter_size: u32,
    /// Seconds a meter entry outlives its source's last packet.
    pub meter_timeout_s: u32,
}

/// A rule's place in the channel for unverified senders (mbox `to_victim` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStep {
    /// Matches only senders whose address is in the verified set of the rule's family;
    /// the rule queues as any other.
    Verified,
    /// Drops (and counts in `unverified_over_source`) a sender's packets over its own
    /// rate, tracked in the meter of the rule's family by the first `source_bits` of its
    /// address; queues nothing.
    OverSource {
        pps: u32,
        burst: u32,
        source_bits: u8,
    },
    /// Drops (and counts in `unverified_over_total`) what exceeds the shared limit
    /// object `unverified_total`; queues nothing.
    OverTotal,
}

/// A base chain of type filter (or nat) with policy accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    /// Type nat: its rules are consulted for a connection's first packet only.
    pub nat: bool,
    pub hook: Hook,
    pub priority: i32,
    pub comment: String,
    pub rules: Vec<RuleSpec>,
}

/// The netfilter hooks our chains attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Forward,
    /// Locally generated packets (only the kernel trace's marking chain uses it).
    Output,
    Postrouting,
}

impl Hook {
    /// Return the nft keyword for this hook.
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Output => "output",
            Hook::Forward => "forward",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// One rule: address prefix, what it matches above IP, which senders, then queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// A zero-length prefix matches the whole family.
    pub prefix: Prefix,
    pub addr_field: Field,
    /// A second address to match, on this side (tracing's host filter narrows the
    /// protected prefix to one peer); None for every other rule.
    pub also: Option<(Field, Prefix)>,
    pub l4: L4Match,
    /// Leave loopback traffic alone: arriving on it (`Src`, iif) or leaving by it (`Dst`,
    /// oif). The host's own traffic needs no policing and may exceed the copy range.
    pub skip_loopback: Option<Field>,
    /// With several queues: match only the senders whose client address hashes to one
    /// of them (and `queue` is then that single queue). None: every sender.
    pub pick: Option<ClientHash>,
    /// Part of the channel for unverified senders: a match on the verified set, or a
    /// counted drop instead of the action. None: an ordinary rule.
    pub channel: Option<ChannelStep>,
    /// Match only packets with this mark (the engine's mark on a forwarded SYN).
    pub mark: Option<u32>,
    /// What the rule does to the packets it matches.
    pub action: Action,
    pub queue: QueueTarget,
    pub comment: String,
}

/// What a rule does with a packet it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it to the engine (`queue`).
    Queue,
    /// `accept`: the packet leaves this chain and goes on to the hook's other chains
    /// (one that queues it already, for instance).
    Accept,
    /// `meta nftrace set 1`: the kernel reports every rule the packet meets from here on
    /// (tracing's kernel path), and the packet goes on.
    Trace,
    /// `redirect to :port` (a nat chain): to this local port, and conntrack takes the
    /// rest of the connection there and back.
    Redirect(u16),
    /// `reject with tcp reset`: the client's connection is refused at once.
    Reset,
}

/// `jhash(client address, seed) mod modulus == value`: the match that sends all of a
/// sender's traffic, both directions, every protocol, to one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHash {
    /// Which address of the packet is the client's (the one that is not protected).
    pub client: Field,
    /// Number of queues hashed over (>= 2).
    pub modulus: u32,
    pub seed: u32,
    /// The hash value this rule matches, `0..modulus`.
    pub value: u32,
}

/// What a rule matches above the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Match {
    /// Every protocol (the family is still matched, by the prefix).
    Any,
    /// TCP or UDP with the port on `field` in `ports`.
    Ports {
        proto: Proto,
        field: Field,
        ports: PortRange,
    },
    /// ICMP (for an IPv4 prefix) or ICMPv6 (IPv6) messages of one type.
    IcmpType(u8),
    /// One IP protocol, by number (after IPv6 extension headers).
    Protocol(u8),
}

/// Source or destination (address or port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Src,
    Dst,
}

/// Transport protocol matched by a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Field {
    /// Return the other side: the client's address in a rule matching the protected one.
    pub fn other(self) -> Field {
        match self {
            Field::Src => Field::Dst,
            Field::Dst => Field::Src,
        }
    }
}

impl Proto {
    /// Return the IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// Return the nft keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// How the queue statement is expressed in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// The native nftables `queue` expression (module nft_queue).
    Native,
    /// The xt `NFQUEUE` target through nft_compat.
    XtCompat,
}

/// Which queue statement `install` tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueuePreference {
    /// Native, and xt NFQUEUE if the kernel lacks nft_queue.
    #[default]
    Auto,
    Native,
    Xt,
}

/// An IPv4 or IPv6 network: address with host bits cleared, and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Build a prefix, clearing host bits; fail if `len` exceeds the family's width.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, SpecError> {
        let width = max_len(addr);
        if len > width {
            return Err(SpecError::PrefixLen { len, max: width });
        }
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::from((u32::from(a) & mask4(len)).to_be_bytes()),
            IpAddr::V6(a) => IpAddr::from((u128::from(a) & mask6(len)).to_be_bytes()),
        };
        Ok(Prefix { addr: masked, len })
    }

    /// Return the network address (host bits are zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Return the prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Return true for a zero-length prefix (the whole address family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Return true if the prefix covers a single address.
    pub fn is_host(&self) -> bool {
        self.len == max_len(self.addr)
    }

    /// Return true if `ip` lies in this prefix (an address of the other family never does).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask4(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => u128::from(a) & mask6(self.len) == u128::from(net),
            _ => false,
        }
    }

    /// Return the network mask as bytes in network order (4 or 16 bytes).
    pub fn mask_bytes(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(_) => mask4(self.len).to_be_bytes().to_vec(),
            IpAddr::V6(_) => mask6(self.len).to_be_bytes().to_vec(),
        }
    }

    /// Return the network address as bytes in network order.
    pub fn addr_bytes(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Return an IPv4 mask with the top `len` bits set (a shift by 32 yields None, hence 0).
fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// Return an IPv6 mask with the top `len` bits set.
fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for Prefix {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| SpecError::Prefix {
            input: s.to_owned(),
            why: why.to_owned(),
        };
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let len = match len_text {
            None => max_len(addr),
            Some(l) => l
                .trim()
                .parse::<u8>()
                .map_err(|_| bad("prefix length is not a number from 0 to 128"))?,
        };
        Prefix::new(addr, len).map_err(|e| bad(&e.to_string()))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// An inclusive range of transport ports, `1 <= lo <= hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    /// Build a range; fail on port 0 or `lo > hi`.
    pub fn new(lo: u16, hi: u16) -> Result<Self, SpecError> {
        if lo == 0 {
            return Err(SpecError::PortZero);
        }
        if lo > hi {
            return Err(SpecError::PortOrder { lo, hi });
        }
        Ok(PortRange { lo, hi })
    }

    /// Return the first port.
    pub fn lo(&self) -> u16 {
        self.lo
    }

    /// Return the last port.
    pub fn hi(&self) -> u16 {
        self.hi
    }

    /// Return true if `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// Return true if the range holds exactly one port.
    pub fn is_single(&self) -> bool {
        self.lo == self.hi
    }
}

impl FromStr for PortRange {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |t: &str| {
            t.trim().parse::<u16>().map_err(|_| SpecError::Port {
                input: s.to_owned(),
                why: format!("{:?} is not a port number from 1 to 65535", t.trim()),
            })
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        PortRange::new(lo, hi).map_err(|e| SpecError::Port {
            input: s.to_owned(),
            why: e.to_string(),
        })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Why a prefix, port range or queue target is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid address prefix {input:?}: {why}")]
    Prefix { input: String, why: String },
    #[error("prefix length {len} is longer than the address ({max} bits)")]
    PrefixLen { len: u8, max: u8 },
    #[error("invalid port range {input:?}: {why} (expected \"80\" or \"8000-8100\")")]
    Port { input: String, why: String },
    #[error("port 0 is not a valid service port")]
    PortZero,
    #[error("first port {lo} is greater than last port {hi}")]
    PortOrder { lo: u16, hi: u16 },
    #[error("queue count must be at least 1")]
    QueueCount,
    #[error("queues {first}..{first}+{count} run past queue number 65535")]
    QueueRange { first: u16, count: u16 },
    #[error("unverified channel: {what} = {value} must be 1 to {max}")]
    ChannelLimit {
        what: &'static str,
        value: u32,
        max: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_ranges_contain_what_they_cover() {
        let v4: Prefix = "198.18.2.0/24".parse().unwrap();
        assert!(v4.contains("198.18.2.200".parse().unwrap()));
        assert!(!v4.contains("198.18.3.1".parse().unwrap()));
        assert!(
            !v4.contains("::ffff:198.18.2.1".parse().unwrap()),
            "other family"
        );
        let v6: Prefix = "2001:2:0:2::/64".parse().unwrap();
        assert!(v6.contains("2001:2:0:2::99".parse().unwrap()));
        assert!(!v6.contains("2001:2:0:3::1".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let r = PortRange::new(80, 90).unwrap();
        assert!(r.contains(80) && r.contains(90) && !r.contains(79) && !r.contains(91));
    }

    #[test]
    fn parses_prefixes() {
        let p: Prefix = "198.18.2.2".parse().unwrap();
        assert_eq!(
            (p.to_string(), p.len(), p.is_host()),
            ("198.18.2.2".into(), 32, true)
        );
        let p: Prefix = "198.18.2.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.18.2.0/24");
        assert_eq!(p.mask_bytes(), vec![255, 255, 255, 0]);
        let p: Prefix = "2001:2:0:2::/64".parse().unwrap();
        assert_eq!(p.to_string(), "2001:2:0:2::/64");
        assert_eq!(p.mask_bytes()[7..9], [0xff, 0]);
        let p: Prefix = "2001:2::5".parse().unwrap();
        assert_eq!((p.len(), p.to_string()), (128, "2001:2::5".into()));
        let p: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(p.is_empty());
        assert_eq!(p.mask_bytes(), vec![0; 4]);
    }

    #[test]
    fn masks_host_bits() {
        let p: Prefix = "198.18.2.77/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.18.2.0/24");
        let p: Prefix = "2001:2:0:2::1/64".parse().unwrap();
        assert_eq!(p.to_string(), "2001:2:0:2::/64");
        let p: Prefix = "198.18.3.255/15".parse().unwrap();
        assert_eq!(p.to_string(), "198.18.0.0/15");
    }

    #[test]
    fn rejects_bad_prefixes() {
        for bad in [
            "",
            "198.18.2",
            "198.18.2.0/33",
            "2001::/129",
            "x/8",
            "1.2.3.4/",
            "1.2.3.4/-1",
        ] {
            let err = bad.parse::<Prefix>().unwrap_err().to_string();
            assert!(err.starts_with("invalid address prefix"), "{bad}: {err}");
        }
        let err = "198.18.2.0/33".parse::<Prefix>().unwrap_err().to_string();
        assert!(err.contains("longer than the address (32 bits)"), "{err}");
    }

    #[test]
    fn parses_port_ranges() {
        let r: PortRange = "80".parse().unwrap();
        assert_eq!((r.lo(), r.hi(), r.to_string()), (80, 80, "80".into()));
        let r: PortRange = "8000-8100".parse().unwrap();
        assert_eq!(
            (r.lo(), r.hi(), r.to_string()),
            (8000, 8100, "8000-8100".into())
        );
        let r: PortRange = " 1 - 65535 ".parse().unwrap();
        assert_eq!((r.lo(), r.hi()), (1, 65535));
    }

    #[test]
    fn rejects_bad_port_ranges() {
        for bad in ["", "0", "0-10", "100-10", "65536", "http", "1-2-3", "-5"] {
            let err = bad.parse::<PortRange>().unwrap_err().to_string();
            assert!(err.starts_with("invalid port range"), "{bad}: {err}");
        }
        let err = "100-10".parse::<PortRange>().unwrap_err().to_string();
        assert!(
            err.contains("first port 100 is greater than last port 10"),
            "{err}"
        );
    }

    #[test]
    fn queue_target_range_and_flags() {
        let q = QueueTarget {
            first: 3,
            count: 2,
            bypass: true,
            fanout: true,
        };
        assert_eq!((q.last(), q.flag_bits()), (Ok(4), 3));
        let q = QueueTarget {
            first: 65535,
            count: 2,
            bypass: false,
            fanout: false,
        };
        assert!(q.last().is_err());
        let q = QueueTarget {
            first: 0,
            count: 0,
            bypass: false,
            fanout: true,
        };
        assert_eq!((q.last(), q.flag_bits()), (Err(SpecError::QueueCount), 2));
    }
}
