//! Known answers, round trips and every rejection of encode, decode and verify.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

/// The known-answer key: bytes 0x00..=0x1f.
fn kat_key() -> Key {
    let mut bytes = [0u8; KEY_LEN];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::try_from(i).unwrap_or(0);
    }
    Key::from_bytes(bytes)
}

/// A ring holding only the known-answer key, under `id`.
fn ring_with(id: u8) -> KeyRing {
    KeyRing::new(id, kat_key()).unwrap()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(segments: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(segments))
}

fn cap4() -> (Capability, IpAddr) {
    let cap = Capability::new(1, 0x0102, 0x1122_3344, 0x7f, v4(198, 18, 0, 2));
    (cap, v4(198, 19, 0, 2))
}

fn cap6() -> (Capability, IpAddr) {
    let sender = v6([0x2001, 2, 0, 0, 0, 0, 0, 2]);
    let cap = Capability::new(2, 0xbeef, 0xffff_fff0, 5, sender);
    (cap, v6([0x2001, 2, 0, 1, 0, 0, 0, 2]))
}

/// Computed with Python's `hmac.new(bytes(range(32)), body + dst, hashlib.sha256)`.
const KAT4: [u8; 32] = [
    0x11, 0x00, 0x01, 0x02, 0x11, 0x22, 0x33, 0x44, //
    0x00, 0x00, 0x00, 0x7f, 0xc6, 0x12, 0x00, 0x02, //
    0xac, 0xb1, 0xbf, 0x9c, 0x2a, 0x5e, 0x51, 0xc7, //
    0xe2, 0xfc, 0x7d, 0xd8, 0x4b, 0x79, 0x47, 0x62, //
];

/// Same tool as [`KAT4`], IPv6 sender 2001:2::2, destination 2001:2:0:1::2.
const KAT6: [u8; 44] = [
    0x12, 0x01, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xf0, //
    0x00, 0x00, 0x00, 0x05, 0x20, 0x01, 0x00, 0x02, //
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0x00, 0x00, 0x00, 0x02, 0xef, 0x5a, 0xa7, 0xa8, //
    0x33, 0x67, 0x69, 0x29, 0xf1, 0x91, 0xf3, 0x01, //
    0x74, 0x83, 0x53, 0x2b, //
];

fn encode(cap: &Capability, dst: IpAddr, key: &Key) -> Vec<u8> {
    let mut out = [0u8; MAX_WIRE_LEN];
    let len = cap.encode(dst, key, &mut out).unwrap();
    out[..len].to_vec()
}

#[test]
fn wire_lengths() {
    assert_eq!(wire_len(false), 32);
    assert_eq!(wire_len(true), 44);
    assert_eq!(MAX_WIRE_LEN, 44);
    assert_eq!(cap4().0.wire_len(), 32);
    assert_eq!(cap6().0.wire_len(), 44);
}

#[test]
fn known_answer_ipv4() {
    let (cap, dst) = cap4();
    assert_eq!(encode(&cap, dst, &kat_key()), KAT4);
    assert_eq!(Capability::verify(&KAT4, dst, &ring_with(1)), Ok(cap));
}

#[test]
fn known_answer_ipv6() {
    let (cap, dst) = cap6();
    assert_eq!(encode(&cap, dst, &kat_key()), KAT6);
    assert_eq!(Capability::verify(&KAT6, dst, &ring_with(2)), Ok(cap));
}

#[test]
fn decode_returns_fields_and_mac() {
    for (wire, cap) in [(&KAT4[..], cap4().0), (&KAT6[..], cap6().0)] {
        let (got, mac) = Capability::decode(wire).unwrap();
        assert_eq!(got, cap);
        assert_eq!(&mac[..], &wire[wire.len() - MAC_LEN..]);
    }
}

#[test]
fn round_trip_both_families() {
    let key = Key::from_bytes([0xA5; KEY_LEN]);
    let ring = KeyRing::new(9, Key::from_bytes([0xA5; KEY_LEN])).unwrap();
    for (mut cap, dst) in [cap4(), cap6()] {
        cap.key_id = 9;
        let wire = encode(&cap, dst, &key);
        assert_eq!(Capability::verify(&wire, dst, &ring), Ok(cap));
    }
}

#[test]
fn encode_writes_only_wire_len_bytes() {
    let (cap, dst) = cap4();
    let mut out = [0xEE; 64];
    assert_eq!(cap.encode(dst, &kat_key(), &mut out), Ok(32));
    assert_eq!(out[..32], KAT4);
    assert!(out[32..].iter().all(|&b| b == 0xEE));
}

#[test]
fn encode_refuses_bad_input() {
    let key = kat_key();
    let (cap, dst4) = cap4();
    let (cap6, dst6) = cap6();
    let mut out = [0u8; MAX_WIRE_LEN];
    assert_eq!(
        cap.encode(dst6, &key, &mut out),
        Err(CapError::FamilyMismatch)
    );
    assert_eq!(
        cap6.encode(dst4, &key, &mut out),
        Err(CapError::FamilyMismatch)
    );
    assert_eq!(
        cap.encode(dst4, &key, &mut out[..31]),
        Err(CapError::BufferTooSmall)
    );
    assert_eq!(
        cap6.encode(dst6, &key, &mut out[..43]),
        Err(CapError::BufferTooSmall)
    );
    let bad_version = Capability { version: 2, ..cap };
    assert_eq!(
        bad_version.encode(dst4, &key, &mut out),
        Err(CapError::BadVersion)
    );
    let bad_key = Capability { key_id: 16, ..cap };
    assert_eq!(
        bad_key.encode(dst4, &key, &mut out),
        Err(CapError::BadKeyId)
    );
}

#[test]
fn every_short_prefix_is_truncated() {
    for wire in [&KAT4[..], &KAT6[..]] {
        for len in 0..wire.len() {
            assert_eq!(
                Capability::decode(&wire[..len]).err(),
                Some(CapError::Truncated),
                "length {len}"
            );
        }
    }
}

#[test]
fn longer_than_one_capability_is_bad_length() {
    for wire in [&KAT4[..], &KAT6[..]] {
        let mut long = wire.to_vec();
        long.push(0);
        assert_eq!(Capability::decode(&long).err(), Some(CapError::BadLength));
    }
}

#[test]
fn every_other_version_is_rejected() {
    for version in (0u8..16).filter(|&v| v != VERSION) {
        let mut wire = KAT4;
        wire[0] = (version << 4) | (wire[0] & 0x0F);
        assert_eq!(Capability::decode(&wire).err(), Some(CapError::BadVersion));
        assert_eq!(
            Capability::decode(&wire[..1]).err(),
            Some(CapError::BadVersion)
        );
    }
}

#[test]
fn every_reserved_flag_is_rejected() {
    for bit in 1..8 {
        for wire in [&KAT4[..], &KAT6[..]] {
            let mut wire = wire.to_vec();
            wire[1] |= 1 << bit;
            assert_eq!(Capability::decode(&wire).err(), Some(CapError::BadFlags));
        }
    }
}

#[test]
fn family_flag_that_disagrees_with_the_length_is_rejected() {
    let mut wire = KAT4;
    wire[1] = FLAG_V6;
    assert_eq!(Capability::decode(&wire).err(), Some(CapError::Truncated));
    let mut wire = KAT6;
    wire[1] = 0;
    assert_eq!(Capability::decode(&wire).err(), Some(CapError::BadLength));
}

#[test]
fn verify_refuses_a_destination_of_the_other_family() {
    let (_, dst6) = cap6();
    let (_, dst4) = cap4();
    assert_eq!(
        Capability::verify(&KAT4, dst6, &ring_with(1)),
        Err(CapError::FamilyMismatch)
    );
    assert_eq!(
        Capability::verify(&KAT6, dst4, &ring_with(2)),
        Err(CapError::FamilyMismatch)
    );
}

#[test]
fn every_flipped_bit_fails_verification() {
    for (wire, dst, ring) in [
        (&KAT4[..], cap4().1, ring_with(1)),
        (&KAT6[..], cap6().1, ring_with(2)),
    ] {
        for byte in 0..wire.len() {
            for bit in 0..8 {
                let mut bad = wire.to_vec();
                bad[byte] ^= 1 << bit;
                assert!(
                    Capability::verify(&bad, dst, &ring).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }
}

#[test]
fn flipped_bits_past_the_header_checks_are_bad_mac() {
    let (_, dst) = cap6();
    let ring = ring_with(2);
    for byte in (2..KAT6.len()).chain([0]) {
        let mut bad = KAT6;
        // Byte 0's low bit changes the key id (2 → 3): unknown, not a bad MAC.
        bad[byte] ^= if byte == 0 { 0x02 } else { 0x80 };
        let want = if byte == 0 {
            CapError::UnknownKey
        } else {
            CapError::BadMac
        };
        assert_eq!(
            Capability::verify(&bad, dst, &ring),
            Err(want),
            "byte {byte}"
        );
    }
}

#[test]
fn another_destination_fails() {
    assert_eq!(
        Capability::verify(&KAT4, v4(198, 19, 0, 3), &ring_with(1)),
        Err(CapError::BadMac)
    );
    assert_eq!(
        Capability::verify(&KAT6, v6([0x2001, 2, 0, 1, 0, 0, 0, 3]), &ring_with(2)),
        Err(CapError::BadMac)
    );
}

#[test]
fn another_key_fails() {
    let ring = KeyRing::new(1, Key::from_bytes([1; KEY_LEN])).unwrap();
    assert_eq!(
        Capability::verify(&KAT4, cap4().1, &ring),
        Err(CapError::BadMac)
    );
}

#[test]
fn unknown_key_id_fails() {
    assert_eq!(
        Capability::verify(&KAT4, cap4().1, &ring_with(2)),
        Err(CapError::UnknownKey)
    );
}

#[test]
fn previous_key_verifies_until_expired() {
    let (cap, dst) = cap4();
    let mut ring = ring_with(1);
    let old = encode(&cap, dst, &kat_key());
    ring.rotate(2, Key::from_bytes([2; KEY_LEN])).unwrap();
    assert_eq!(ring.current().0, 2);
    assert_eq!(ring.previous_id(), Some(1));
    assert_eq!(Capability::verify(&old, dst, &ring), Ok(cap));

    let new_cap = Capability { key_id: 2, ..cap };
    let new = encode(&new_cap, dst, ring.current().1);
    assert_eq!(Capability::verify(&new, dst, &ring), Ok(new_cap));

    ring.expire_previous();
    assert_eq!(ring.previous_id(), None);
    assert_eq!(
        Capability::verify(&old, dst, &ring),
        Err(CapError::UnknownKey)
    );
    assert_eq!(Capability::verify(&new, dst, &ring), Ok(new_cap));
}

#[test]
fn second_rotation_drops_the_oldest_key() {
    let (cap, dst) = cap4();
    let mut ring = ring_with(1);
    let oldest = encode(&cap, dst, &kat_key());
    ring.rotate(2, Key::from_bytes([2; KEY_LEN])).unwrap();
    ring.rotate(3, Key::from_bytes([3; KEY_LEN])).unwrap();
    assert_eq!(ring.previous_id(), Some(2));
    assert!(ring.get(1).is_none());
    assert_eq!(
        Capability::verify(&oldest, dst, &ring),
        Err(CapError::UnknownKey)
    );
}

#[test]
fn rotation_refuses_the_current_id_and_ids_over_15() {
    let mut ring = ring_with(1);
    assert_eq!(
        ring.rotate(1, Key::from_bytes([2; KEY_LEN])),
        Err(CapError::DuplicateKeyId)
    );
    assert_eq!(
        ring.rotate(16, Key::from_bytes([2; KEY_LEN])),
        Err(CapError::BadKeyId)
    );
    assert_eq!(ring.current().0, 1);
    assert_eq!(ring.previous_id(), None);
    assert!(KeyRing::new(16, kat_key()).is_err());
    // 15, the largest id the nibble holds, is a valid id to rotate to.
    ring.rotate(15, Key::from_bytes([4; KEY_LEN])).unwrap();
    assert_eq!((ring.current().0, ring.previous_id()), (15, Some(1)));
    // Rotating back to the previous id is fine: that key is dropped.
    ring.rotate(2, Key::from_bytes([2; KEY_LEN])).unwrap();
    ring.rotate(1, Key::from_bytes([3; KEY_LEN])).unwrap();
    assert_eq!((ring.current().0, ring.previous_id()), (1, Some(2)));
}

#[test]
fn check_sender_compares_addresses() {
    let (cap, _) = cap4();
    assert_eq!(cap.check_sender(v4(198, 18, 0, 2)), Ok(()));
    assert_eq!(
        cap.check_sender(v4(198, 18, 0, 3)),
        Err(CapError::WrongSender)
    );
    assert_eq!(
        cap.check_sender(v6([0, 0, 0, 0, 0, 0xffff, 0xc612, 2])),
        Err(CapError::WrongSender)
    );
}
