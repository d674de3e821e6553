//! What travels inside the IP-in-UDP tunnel between mbox and victim, and its MAC.
//!
//! The outer source address of a tunnel packet proves nothing: anyone on a shared uplink
//! can forge it. So every UDP payload of the tunnel starts with a header carrying a MAC,
//! under a key the mbox and the victim share (`tunnel.key_file`, the key file format of
//! [`super::KeyRing`], bound to the fixed [`TUNNEL_RUN`] so both ends derive one key):
//!
//! ```text
//!  0               1               2               3
//! +-------+-------+---------------+-------------------------------+
//! |version| kind  |    key id     |          reserved = 0         |  0
//! +-------+-------+---------------+-------------------------------+
//! |   MAC: HMAC-SHA256(key, bytes 0..4 ‖ body), first 16 bytes    |  4
//! +---------------------------------------------------------------+
//! |   body                                                        | 20
//! ```
//!
//! - kind 0, mbox → victim: the body is the client's IP packet, whole (the MAC covers
//!   every byte, so nothing can be spliced into a captured header).
//! - kind 1, victim → mbox: feedback of its own, for replies that do not cross the mbox:
//!   `flags (bit 0: IPv6) | count (1..=3) | 0 | 0 | server | client | count capabilities`,
//!   addresses of 4 or 16 bytes, capabilities as the victim kept them.
//!
//! Replays are not detected: a captured packet sent again is a duplicate, which TCP
//! discards; a captured feedback datagram sent again only repeats capabilities the mbox
//! already counted (its replay bitmap refuses them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::Mac;

use super::key::{Key, KeyRing, RunId};
use super::{CapError, FLAG_V6, MAC_LEN, MAX_FEEDBACK, feedback_len};
use crate::wire::tunnel::AUTH_LEN;

/// The fixed id tunnel keys are bound to: both ends must derive the same key.
pub const TUNNEL_RUN: RunId = RunId::from_bytes(*b"mpolice tunnel 1");

/// The tunnel header's version.
const VERSION: u8 = 1;

/// What a tunnel payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client's packet, mbox → victim.
    Packet = 0,
    /// Capabilities returned, victim → mbox.
    Feedback = 1,
}

/// The header for `body` of `kind`, with its MAC under `key` (id `key_id`).
pub fn seal(kind: Kind, key_id: u8, key: &Key, body: &[u8]) -> [u8; AUTH_LEN] {
    let mut header = [0u8; AUTH_LEN];
    header[0] = (VERSION << 4) | kind as u8;
    header[1] = key_id;
    let (fixed, mac) = header.split_at_mut(4);
    mac.copy_from_slice(&tag(key, fixed, body)[..MAC_LEN]);
    header
}

/// Check the header in front of `body` with the ring's keys; return what it carries.
pub fn open(header: &[u8], body: &[u8], keys: &KeyRing) -> Result<Kind, CapError> {
    let header: &[u8; AUTH_LEN] = header.try_into().map_err(|_| CapError::Truncated)?;
    if header[0] >> 4 != VERSION {
        return Err(CapError::BadVersion);
    }
    let kind = match header[0] & 0x0F {
        0 => Kind::Packet,
        1 => Kind::Feedback,
        _ => return Err(CapError::BadFlags),
    };
    if header[2..4] != [0, 0] {
        return Err(CapError::BadFlags);
    }
    let key = keys.get(header[1]).ok_or(CapError::UnknownKey)?;
    let mut mac = key.hmac().clone();
    mac.update(&header[..4]);
    mac.update(body);
    mac.verify_truncated_left(&header[4..])
        .map_err(|_| CapError::BadMac)?;
    Ok(kind)
}

fn tag(key: &Key, fixed: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = key.hmac().clone();
    mac.update(fixed);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Capabilities returned for one (server, client) pair, as a feedback body carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Returned<'a> {
    /// The protected address the capabilities were stamped towards.
    pub server: IpAddr,
    /// The client they were stamped for.
    pub client: IpAddr,
    /// How many (1..=3).
    pub count: u8,
    /// `count` capabilities back to back.
    pub caps: &'a [u8],
}

impl Returned<'_> {
    /// Append this feedback body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CapError> {
        let v6 = self.server.is_ipv6();
        if v6 != self.client.is_ipv6() {
            return Err(CapError::FamilyMismatch);
        }
        if self.count == 0 || self.count > MAX_FEEDBACK {
            return Err(CapError::BadFeedbackCount);
        }
        if self.caps.len() != feedback_len(self.count, v6) {
            return Err(CapError::BadLength);
        }
        out.extend_from_slice(&[if v6 { FLAG_V6 } else { 0 }, self.count, 0, 0]);
        for a in [self.server, self.client] {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        out.extend_from_slice(self.caps);
        Ok(())
    }

    /// Read a feedback body (exactly one, nothing after it).
    pub fn decode(body: &[u8]) -> Result<Returned<'_>, CapError> {
        let fixed: &[u8; 4] = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(CapError::Truncated)?;
        let [flags, count, 0, 0] = *fixed else {
            return Err(CapError::BadFlags);
        };
        if flags & !FLAG_V6 != 0 {
            return Err(CapError::BadFlags);
        }
        if count == 0 || count > MAX_FEEDBACK {
            return Err(CapError::BadFeedbackCount);
        }
        let v6 = flags & FLAG_V6 != 0;
        let addr_len = if v6 { 16 } else { 4 };
        let caps_at = 4 + 2 * addr_len;
        let want = caps_at + feedback_len(count, v6);
        if body.len() < want {
            return Err(CapError::Truncated);
        }
        if body.len() > want {
            return Err(CapError::BadLength);
        }
        let addr = |at: usize| -> Result<IpAddr, CapError> {
            let b = body.get(at..at + addr_len).ok_or(CapError::Truncated)?;
            Ok(match <[u8; 16]>::try_from(b) {
                Ok(o) => IpAddr::V6(Ipv6Addr::from(o)),
                Err(_) => {
                    let o: [u8; 4] = b.try_into().map_err(|_| CapError::Truncated)?;
                    IpAddr::V4(Ipv4Addr::from(o))
                }
            })
        };
        Ok(Returned {
            server: addr(4)?,
            client: addr(4 + addr_len)?,
            count,
            caps: &body[caps_at..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: u8, byte: u8) -> KeyRing {
        KeyRing::new(id, Key::from_bytes([byte; 32]))
            .unwrap()
            .for_run(&TUNNEL_RUN)
    }

    #[test]
    fn a_sealed_body_opens_and_any_changed_byte_does_not() {
        let keys = ring(2, 9);
        let (id, key) = keys.current();
        let body = b"an inner packet".to_vec();
        let header = seal(Kind::Packet, id, key, &body);
        assert_eq!(open(&header, &body, &keys), Ok(Kind::Packet));
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] ^= 0x01;
            assert_eq!(
                open(&header, &b, &keys),
                Err(CapError::BadMac),
                "body byte {i}"
            );
        }
        let mut h = header;
        h[0] = (VERSION << 4) | Kind::Feedback as u8;
        assert_eq!(
            open(&h, &body, &keys),
            Err(CapError::BadMac),
            "kind is covered"
        );
        let mut h = header;
        h[19] ^= 0x80;
        assert_eq!(open(&h, &body, &keys), Err(CapError::BadMac));
        assert_eq!(
            open(&header, &body, &ring(2, 8)),
            Err(CapError::BadMac),
            "other key"
        );
        assert_eq!(open(&header, &body, &ring(3, 9)), Err(CapError::UnknownKey));
        assert_eq!(open(&header[..19], &body, &keys), Err(CapError::Truncated));
    }

    #[test]
    fn feedback_bodies_round_trip_and_refuse_lies() {
        for (server, client, v6) in [
            ("198.18.2.2", "198.18.1.2", false),
            ("2001:2:0:2::2", "2001:2:0:1::2", true),
        ] {
            for count in 1..=MAX_FEEDBACK {
                let caps = vec![0xAB; feedback_len(count, v6)];
                let r = Returned {
                    server: server.parse().unwrap(),
                    client: client.parse().unwrap(),
                    count,
                    caps: &caps,
                };
                let mut out = Vec::new();
                r.encode(&mut out).unwrap();
                assert_eq!(Returned::decode(&out), Ok(r));
                assert_eq!(
                    Returned::decode(&out[..out.len() - 1]),
                    Err(CapError::Truncated)
                );
                let mut longer = out.clone();
                longer.push(0);
                assert_eq!(Returned::decode(&longer), Err(CapError::BadLength));
                let mut lying = out.clone();
                lying[1] = 4;
                assert_eq!(Returned::decode(&lying), Err(CapError::BadFeedbackCount));
            }
        }
        // Nor does the victim write a count the mbox would refuse.
        for count in [0, MAX_FEEDBACK + 1] {
            let caps = vec![0xAB; feedback_len(count, false)];
            let r = Returned {
                server: "198.18.2.2".parse().unwrap(),
                client: "198.18.1.2".parse().unwrap(),
                count,
                caps: &caps,
            };
            let mut out = Vec::new();
            assert_eq!(r.encode(&mut out), Err(CapError::BadFeedbackCount));
            assert!(out.is_empty());
        }
        assert_eq!(Returned::decode(&[0, 1, 0]), Err(CapError::Truncated));
        assert_eq!(Returned::decode(&[2, 1, 0, 0]), Err(CapError::BadFlags));
    }
}
