//! The guard: the benchmarking ranges every flood address must lie in, prefixes and rates.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{Result, bail};

/// The only ranges a flood may touch: 198.18.0.0/15 and 2001:2::/48.
pub const ALLOWED: [(IpAddr, u8); 2] = [
    (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)), 15),
    (IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0)), 48),
];

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
    pub fn host_bits(&self) -> u8 {
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

pub(super) fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(super) fn low_mask(bits: u8) -> u128 {
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
