//! Property tests: no panics on random bytes, encode → verify round trips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

/// A sender and destination of one random family.
fn addr_pair() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(s, d)| (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))),
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(s, d)| (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)))),
    ]
}

proptest! {
    #[test]
    fn decode_and_verify_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..96),
        dst in addr_pair().prop_map(|(_, d)| d),
    ) {
        let ring = KeyRing::new(1, Key::from_bytes([1; KEY_LEN])).unwrap();
        let decoded = Capability::decode(&bytes);
        let verified = Capability::verify(&bytes, dst, &ring);
        if let Ok((cap, _)) = decoded {
            prop_assert_eq!(bytes.len(), cap.wire_len());
            prop_assert_eq!(cap.version, VERSION);
        }
        if verified.is_ok() {
            prop_assert!(decoded.is_ok());
        }
    }

    #[test]
    fn decode_never_panics_on_a_valid_header(
        key_id in 0u8..16,
        v6 in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..60),
    ) {
        let mut bytes = vec![(VERSION << 4) | key_id, u8::from(v6)];
        bytes.extend(rest);
        match Capability::decode(&bytes) {
            Ok((cap, _)) => {
                prop_assert_eq!(bytes.len(), wire_len(v6));
                prop_assert_eq!(cap.key_id, key_id);
            }
            Err(e) => prop_assert!(matches!(e, CapError::Truncated | CapError::BadLength)),
        }
    }

    #[test]
    fn encode_then_verify_round_trips(
        key in any::<[u8; KEY_LEN]>(),
        key_id in 0u8..16,
        mbox_id in any::<u16>(),
        issued_ms in any::<u32>(),
        id in any::<u32>(),
        (sender, dst) in addr_pair(),
    ) {
        let cap = Capability::new(key_id, mbox_id, issued_ms, id, sender);
        let ring = KeyRing::new(key_id, Key::from_bytes(key)).unwrap();
        let mut out = [0u8; MAX_WIRE_LEN + 8];
        let len = cap.encode(dst, ring.current().1, &mut out).unwrap();
        prop_assert_eq!(len, wire_len(sender.is_ipv6()));
        prop_assert_eq!(Capability::verify(&out[..len], dst, &ring), Ok(cap));
        let (decoded, _) = Capability::decode(&out[..len]).unwrap();
        prop_assert_eq!(decoded, cap);
    }

    #[test]
    fn any_flipped_bit_fails(
        key in any::<[u8; KEY_LEN]>(),
        id in any::<u32>(),
        (sender, dst) in addr_pair(),
        flip in any::<prop::sample::Index>(),
    ) {
        let cap = Capability::new(7, 1, 2, id, sender);
        let ring = KeyRing::new(7, Key::from_bytes(key)).unwrap();
        let mut out = [0u8; MAX_WIRE_LEN];
        let len = cap.encode(dst, ring.current().1, &mut out).unwrap();
        let bit = flip.index(len * 8);
        out[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Capability::verify(&out[..len], dst, &ring).is_err());
    }

    #[test]
    fn window_counts_each_id_once(
        th_cap in 1u32..=MAX_TH_CAP,
        ids in proptest::collection::vec(0u32..1100, 0..300),
    ) {
        let mut w = ReturnWindow::new(th_cap).unwrap();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let want = if id >= th_cap {
                Err(CapError::IdOutOfRange)
            } else if seen.insert(id) {
                Ok(())
            } else {
                Err(CapError::Replayed)
            };
            prop_assert_eq!(w.accept(id), want);
        }
        prop_assert_eq!(w.returned() as usize, seen.len());
    }

    #[test]
    fn fresh_iff_young_or_barely_ahead(
        issued in any::<u32>(),
        delta in -10_000i32..10_000,
        th_rtt in 0u32..5_000,
    ) {
        let now = issued.wrapping_add_signed(delta);
        let fresh = if delta >= 0 {
            delta.unsigned_abs() <= th_rtt
        } else {
            delta.unsigned_abs() <= FUTURE_TOLERANCE_MS
        };
        prop_assert_eq!(check_fresh(issued, now, th_rtt).is_ok(), fresh);
    }
}
