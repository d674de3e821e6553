//! Encode, decode and verify one capability (format in the module docs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::Mac;

use super::key::{Key, KeyRing, MAX_KEY_ID};
use super::{CapError, FLAG_V6, HEADER_LEN, MAC_LEN, VERSION, wire_len};

/// One capability's fields, as issued by an mbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capability {
    /// Wire format version; [`VERSION`] for everything this module writes.
    pub version: u8,
    /// Id (0..=15) of the mbox key that made the MAC.
    pub key_id: u8,
    /// Id of the issuing mbox.
    pub mbox_id: u16,
    /// Issue time in milliseconds of the mbox's clock (wrapping).
    pub issued_ms: u32,
    /// Capability id, below `Th_cap`, unique per sender and period.
    pub id: u32,
    /// The client the stamped packet came from.
    pub sender: IpAddr,
}

impl Capability {
    /// Build a capability of the current [`VERSION`].
    pub const fn new(key_id: u8, mbox_id: u16, issued_ms: u32, id: u32, sender: IpAddr) -> Self {
        Capability {
            version: VERSION,
            key_id,
            mbox_id,
            issued_ms,
            id,
            sender,
        }
    }

    /// Return whether the sender address is IPv6.
    pub const fn is_v6(&self) -> bool {
        self.sender.is_ipv6()
    }

    /// Return this capability's length on the wire.
    pub const fn wire_len(&self) -> usize {
        wire_len(self.is_v6())
    }

    /// Write this capability with its MAC for `dst` into `out`; return the length.
    ///
    /// Writes exactly [`Capability::wire_len`] bytes at the start of `out`.
    /// `key` must be the key named by `self.key_id`.
    pub fn encode(&self, dst: IpAddr, key: &Key, out: &mut [u8]) -> Result<usize, CapError> {
        if self.version != VERSION {
            return Err(CapError::BadVersion);
        }
        if self.key_id > MAX_KEY_ID {
            return Err(CapError::BadKeyId);
        }
        if self.sender.is_ipv6() != dst.is_ipv6() {
            return Err(CapError::FamilyMismatch);
        }
        let len = self.wire_len();
        let out = out.get_mut(..len).ok_or(CapError::BufferTooSmall)?;
        let (body, mac_out) = out
            .split_last_chunk_mut::<MAC_LEN>()
            .ok_or(CapError::BufferTooSmall)?;
        let (header, addr) = body
            .split_first_chunk_mut::<HEADER_LEN>()
            .ok_or(CapError::BufferTooSmall)?;
        header[0] = (VERSION << 4) | self.key_id;
        header[1] = if self.is_v6() { FLAG_V6 } else { 0 };
        header[2..4].copy_from_slice(&self.mbox_id.to_be_bytes());
        header[4..8].copy_from_slice(&self.issued_ms.to_be_bytes());
        header[8..12].copy_from_slice(&self.id.to_be_bytes());
        match self.sender {
            IpAddr::V4(a) => addr.copy_from_slice(&a.octets()),
            IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
        }
        let tag = keyed(key, body, dst).finalize().into_bytes();
        mac_out.copy_from_slice(&tag[..MAC_LEN]);
        Ok(len)
    }

    /// Parse a capability's structure (no key, no MAC check); return it and its MAC.
    ///
    /// `bytes` must be exactly one capability.
    pub fn decode(bytes: &[u8]) -> Result<(Capability, &[u8; MAC_LEN]), CapError> {
        let first = *bytes.first().ok_or(CapError::Truncated)?;
        if first >> 4 != VERSION {
            return Err(CapError::BadVersion);
        }
        let flags = *bytes.get(1).ok_or(CapError::Truncated)?;
        if flags & !FLAG_V6 != 0 {
            return Err(CapError::BadFlags);
        }
        let v6 = flags & FLAG_V6 != 0;
        let len = wire_len(v6);
        if bytes.len() < len {
            return Err(CapError::Truncated);
        }
        if bytes.len() > len {
            return Err(CapError::BadLength);
        }
        let (body, mac) = bytes
            .split_last_chunk::<MAC_LEN>()
            .ok_or(CapError::Truncated)?;
        let (header, addr) = body
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(CapError::Truncated)?;
        let sender = if v6 {
            let octets: [u8; 16] = addr.try_into().map_err(|_| CapError::Truncated)?;
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            let octets: [u8; 4] = addr.try_into().map_err(|_| CapError::Truncated)?;
            IpAddr::V4(Ipv4Addr::from(octets))
        };
        let cap = Capability {
            version: first >> 4,
            key_id: first & 0x0F,
            mbox_id: u16::from_be_bytes([header[2], header[3]]),
            issued_ms: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            id: u32::from_be_bytes([header[8], header[9], header[10], header[11]]),
            sender,
        };
        Ok((cap, mac))
    }

    /// Decode `bytes` and check its MAC for `dst` with the key it names.
    ///
    /// The key may be the ring's current or previous one. The comparison is
    /// constant-time. Freshness, period, replay and sender are the caller's
    /// checks ([`super::check_fresh`], [`super::ReturnWindow`],
    /// [`Capability::check_sender`]).
    pub fn verify(bytes: &[u8], dst: IpAddr, keys: &KeyRing) -> Result<Capability, CapError> {
        let (cap, mac) = Capability::decode(bytes)?;
        if cap.sender.is_ipv6() != dst.is_ipv6() {
            return Err(CapError::FamilyMismatch);
        }
        let key = keys.get(cap.key_id).ok_or(CapError::UnknownKey)?;
        let body = bytes
            .get(..cap.wire_len() - MAC_LEN)
            .ok_or(CapError::Truncated)?;
        keyed(key, body, dst)
            .verify_truncated_left(mac)
            .map_err(|_| CapError::BadMac)?;
        Ok(cap)
    }

    /// Check that this capability was issued for `expected` as sender.
    pub fn check_sender(&self, expected: IpAddr) -> Result<(), CapError> {
        if self.sender == expected {
            Ok(())
        } else {
            Err(CapError::WrongSender)
        }
    }
}

/// Return the keyed HMAC state after feeding it `body` and `dst`.
fn keyed(key: &Key, body: &[u8], dst: IpAddr) -> super::key::HmacSha256 {
    let mut mac = key.hmac().clone();
    mac.update(body);
    match dst {
        IpAddr::V4(a) => mac.update(&a.octets()),
        IpAddr::V6(a) => mac.update(&a.octets()),
    }
    mac
}
