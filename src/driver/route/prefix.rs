//! The caller's request: one prefix and the MSS to advertise to it, validated.
//!
//! Invariant: a validated prefix has no host bits set and a length within its
//! family, so its network address is exactly what the kernel stores as RTA_DST.

use std::fmt;
use std::net::IpAddr;

use super::error::RouteError;

/// Advertise `advmss` as TCP MSS to peers in `prefix/prefix_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdvmssRoute {
    pub prefix: IpAddr,
    pub prefix_len: u8,
    pub advmss: u16,
}

impl fmt::Display for AdvmssRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.prefix, self.prefix_len)
    }
}

impl AdvmssRoute {
    /// Check the prefix is a network address of its family and the MSS is positive.
    pub fn validate(&self) -> Result<(), RouteError> {
        let invalid = |reason: String| RouteError::InvalidInput {
            prefix: self.to_string(),
            reason,
        };
        let max = self.max_len();
        if self.prefix_len > max {
            return Err(invalid(format!(
                "prefix length {} is longer than {max}: fix the prefix",
                self.prefix_len
            )));
        }
        let masked = self.network();
        if masked != self.prefix {
            return Err(invalid(format!(
                "host bits are set: use {masked}/{}",
                self.prefix_len
            )));
        }
        if self.advmss == 0 {
            return Err(invalid(
                "advmss 0 means no limit: give a positive MSS".into(),
            ));
        }
        Ok(())
    }

    /// Return the address family (`AF_INET` or `AF_INET6`) as rtmsg stores it.
    pub fn family(&self) -> u8 {
        match self.prefix {
            IpAddr::V4(_) => libc::AF_INET as u8,
            IpAddr::V6(_) => libc::AF_INET6 as u8,
        }
    }

    /// Return the longest prefix length of the family.
    fn max_len(&self) -> u8 {
        match self.prefix {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Return the prefix with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        let len = u32::from(self.prefix_len.min(self.max_len()));
        match self.prefix {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Return the network address as the raw bytes of RTA_DST.
    pub fn dst_bytes(&self) -> Vec<u8> {
        match self.network() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}
