//! Capability stamp (encode), feedback-verify and decode, per capability.
//!
//! Run with `cargo bench --bench capability`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use mpolice::capability::{Capability, Key, KeyRing, MAX_WIRE_LEN};

/// Return (sender, destination) for one family.
fn addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2)),
        )
    }
}

/// Benchmark encode, verify and decode for both families.
fn bench(c: &mut Criterion) {
    let Ok(ring) = KeyRing::new(1, Key::from_bytes([7; 32])) else {
        return;
    };
    let (key_id, key) = ring.current();
    for v6 in [false, true] {
        let family = if v6 { "ipv6" } else { "ipv4" };
        let (sender, dst) = addrs(v6);
        let cap = Capability::new(key_id, 3, 123_456, 42, sender);
        let mut buf = [0u8; MAX_WIRE_LEN];
        let Ok(len) = cap.encode(dst, key, &mut buf) else {
            return;
        };
        let wire = buf[..len].to_vec();
        assert!(Capability::verify(&wire, dst, &ring).is_ok());

        c.bench_function(&format!("encode_{family}"), |b| {
            let mut out = [0u8; MAX_WIRE_LEN];
            b.iter(|| black_box(&cap).encode(black_box(dst), key, &mut out));
        });
        c.bench_function(&format!("verify_{family}"), |b| {
            b.iter(|| Capability::verify(black_box(&wire), black_box(dst), &ring));
        });
        c.bench_function(&format!("decode_{family}"), |b| {
            b.iter(|| Capability::decode(black_box(&wire)).map(|(cap, _)| cap));
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
