//! Key file parsing, key redaction and key generation.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const HEX_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HEX_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

/// Return the first bytes of `hex` as a Rust array would print them.
fn as_debug_array(hex: &str) -> String {
    let bytes: Vec<String> = (0..4)
        .map(|i| {
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .unwrap()
                .to_string()
        })
        .collect();
    format!("[{}", bytes.join(", "))
}

/// Return whether the key with `id` in `ring` is the one in `hex` (it verifies its MAC).
fn holds(ring: &KeyRing, id: u8, hex: &str) -> bool {
    let mut bytes = [0u8; KEY_LEN];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let sender = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    let dst = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2));
    let cap = Capability::new(id, 1, 2, 3, sender);
    let mut wire = [0u8; MAX_WIRE_LEN];
    let len = cap.encode(dst, &Key::from_bytes(bytes), &mut wire).unwrap();
    Capability::verify(&wire[..len], dst, ring) == Ok(cap)
}

#[test]
fn one_key() {
    let ring = KeyRing::parse(&format!("1 {HEX_A}\n")).unwrap();
    assert_eq!(ring.current().0, 1);
    assert_eq!(ring.previous_id(), None);
    assert!(holds(&ring, 1, HEX_A));
}

#[test]
fn two_keys_last_is_current_with_comments_and_blanks() {
    let text = format!(
        "# mbox keys\n\n  # previous\n3\t{HEX_A}   # rotated out\r\n\n15 {}\n# end",
        HEX_B.to_uppercase()
    );
    let ring = KeyRing::parse(&text).unwrap();
    assert_eq!(ring.current().0, 15);
    assert_eq!(ring.previous_id(), Some(3));
    assert!(holds(&ring, 15, HEX_B));
    assert!(holds(&ring, 3, HEX_A));
    assert!(!holds(&ring, 3, HEX_B));
}

#[test]
fn key_id_zero_is_valid() {
    let ring = KeyRing::parse(&format!("0 {HEX_A}")).unwrap();
    assert_eq!(ring.current().0, 0);
    assert!(ring.get(0).is_some());
    assert!(ring.get(1).is_none());
}

#[test]
fn bad_files_name_the_line() {
    let short = &HEX_A[..62];
    let non_hex = format!("{}g", &HEX_A[..63]);
    let mut cases: Vec<(String, KeyFileError, &str)> = vec![
        (String::new(), KeyFileError::NoKey, "no key line"),
        ("# only\n\n".into(), KeyFileError::NoKey, "no key line"),
        (
            format!("# c\n1 {short}"),
            KeyFileError::KeyLength { line: 2, found: 62 },
            "line 2: key is 62 characters long, expected 64 hex digits",
        ),
        (
            format!("1 {HEX_A}0"),
            KeyFileError::KeyLength { line: 1, found: 65 },
            "line 1: key is 65",
        ),
        (
            format!("\n\n1 {non_hex}"),
            KeyFileError::BadHex { line: 3 },
            "line 3: key has a character that is not a hex digit",
        ),
        (
            format!("1 {}é", &HEX_A[..63]),
            KeyFileError::BadHex { line: 1 },
            "line 1: key has",
        ),
        (
            format!("1 {HEX_A}\n1 {HEX_B}"),
            KeyFileError::DuplicateId {
                line: 2,
                id: 1,
                first: 1,
            },
            "line 2: key id 1 is already used on line 1",
        ),
        (
            format!("16 {HEX_A}"),
            KeyFileError::IdTooLarge { line: 1, id: 16 },
            "line 1: key id 16 is over 15",
        ),
        (
            format!("999999999 {HEX_A}"),
            KeyFileError::IdTooLarge {
                line: 1,
                id: 999_999_999,
            },
            "line 1: key id 999999999 is over 15",
        ),
        (
            HEX_A.into(),
            KeyFileError::Fields { line: 1, found: 1 },
            "line 1: expected `KEYID HEX64`, found 1 field",
        ),
        (
            format!("1 {HEX_A} extra"),
            KeyFileError::Fields { line: 1, found: 3 },
            "line 1: expected `KEYID HEX64`, found 3 field",
        ),
        (
            format!("1 {HEX_A}\n2 {HEX_B}\n3 {HEX_A}"),
            KeyFileError::TooManyKeys { line: 3 },
            "line 3: a third key",
        ),
    ];
    // Only plain decimal digits, at most 9 of them: no sign, no padding to 10.
    for id in ["x", "-1", "+1", "0000000001", "99999999999"] {
        cases.push((
            format!("{id} {HEX_A}"),
            KeyFileError::BadId { line: 1 },
            "line 1: key id is not a number",
        ));
    }
    for (text, want, message) in cases {
        let got = KeyRing::parse(&text).err();
        assert_eq!(got, Some(want), "{text:?}");
        let shown = want.to_string();
        assert!(shown.contains(message), "{shown:?} lacks {message:?}");
        assert!(!shown.contains('\n'), "{shown:?} is one line");
        assert!(!shown.contains(&HEX_A[..8]) && !shown.contains(&HEX_B[..8]));
    }
}

#[test]
fn debug_never_shows_key_bytes() {
    let ring = KeyRing::parse(&format!("1 {HEX_A}\n2 {HEX_B}")).unwrap();
    let (_, key) = ring.current();
    assert_eq!(format!("{key:?}"), "Key(<redacted>)");
    for shown in [
        format!("{ring:?}"),
        format!("{ring:#?}"),
        format!("{key:?}"),
    ] {
        for hex in [HEX_A, HEX_B] {
            assert!(!shown.contains(&hex[..8]), "{shown}");
            assert!(!shown.contains(&hex.to_uppercase()[..8]), "{shown}");
            assert!(!shown.contains(&as_debug_array(hex)), "{shown}");
        }
    }
    assert!(format!("{ring:?}").contains("Key(<redacted>)"));
    let run = RunId::from_bytes([0xA5; 16]);
    assert_eq!(format!("{run:?}"), "RunId(<redacted>)");
}

#[test]
fn generated_lines_parse_and_differ() {
    let a = generate_key_line(4).unwrap();
    let b = generate_key_line(5).unwrap();
    assert_eq!(a.len(), 2 + 64);
    assert!(a.starts_with("4 "));
    assert!(
        a[2..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_ne!(a[2..], b[2..]);
    let ring = KeyRing::parse(&format!("{a}\n{b}\n")).unwrap();
    assert_eq!((ring.current().0, ring.previous_id()), (5, Some(4)));
    assert!(holds(&ring, 4, &a[2..]));
    assert!(generate_key_line(15).unwrap().starts_with("15 "));
    assert!(generate_key_line(16).is_err());
}

#[test]
fn random_keys_differ() {
    let ring = KeyRing::new(1, Key::random().unwrap()).unwrap();
    let sender = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    let cap = Capability::new(1, 1, 2, 3, sender);
    let mut wire = [0u8; MAX_WIRE_LEN];
    let len = cap
        .encode(sender, &Key::random().unwrap(), &mut wire)
        .unwrap();
    assert_eq!(
        Capability::verify(&wire[..len], sender, &ring),
        Err(CapError::BadMac)
    );
}

#[test]
fn keyed_state_is_zeroed_on_drop() {
    // `Hmac<Sha256>` is two SHA-256 cores and a block buffer; hmac 0.13 does
    // not mark it, but with the `zeroize` features both parts zero on drop.
    fn zeroize_on_drop<T: hmac::digest::zeroize::ZeroizeOnDrop>() {}
    zeroize_on_drop::<<sha2::Sha256 as hmac::EagerHash>::Core>();
    zeroize_on_drop::<sha2::Sha256>();
}
