//! Per-packet steps one at a time, where `pipeline` measures whole stages:
//!
//! - `parse_*`: `wire::parse` of a client's TCP data packet (1000-byte payload).
//! - `classify_*`: `pipeline::direction` of that packet, parsed, against the selection.
//! - `mss_clamp_*`: the victim's clamp of a SYN-ACK's MSS option (`mss_with_room`,
//!   then `wire::clamp_tcp_mss` with its checksum update), on a fresh copy each time.
//! - `checksum_full_1500`: `checksum` over 1500 bytes; `checksum_incremental`:
//!   `update_u16` for one rewritten word (an MSS, the marker bits);
//!   `checksum_incremental_16_bytes`: `update_bytes` for a rewritten IPv6 address.
//! - `police_update_*`: `Policer::admit` of a TCP packet from a sender it already holds.
//! - `period_rollover/{1000,1000000}`: `Policer::on_timer` closing one period of every
//!   sender held, each having sent in it (its packets are not timed).
//!
//! Stamp, strip and feedback append/verify are in `pipeline`, capability encode and
//! verify in `capability`. Run with `cargo bench --bench steps`.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use mpolice::capability::wire_len;
use mpolice::config::{CapSettings, PoliceSettings};
mod common;
use common::selection;
use mpolice::pipeline::{Direction, direction, mss_with_room};
use mpolice::police::{Policer, Policy};
use mpolice::wire::build::Builder;
use mpolice::wire::{self, checksum, tcp};

fn policer(max_senders: usize, t0: Instant) -> Policer {
    let caps = CapSettings {
        max_senders,
        ..CapSettings::default()
    };
    Policer::new(
        &caps,
        &PoliceSettings::with_policy(Policy::NaturalShare),
        t0,
    )
}

fn packet_steps(c: &mut Criterion) {
    let sel = selection();
    let path_mtu = usize::from(CapSettings::default().path_mtu);
    for (family, client, server, mss) in [
        ("ipv4", "198.18.1.2", "198.18.2.2", 1460),
        ("ipv6", "2001:2:0:1::2", "2001:2:0:2::2", 1440),
    ] {
        let (client, server): (IpAddr, IpAddr) = (client.parse().unwrap(), server.parse().unwrap());
        let v6 = server.is_ipv6();
        let data = Builder::tcp(client, server, 40000, 8080)
            .payload(&[0x5a; 1000])
            .build();
        let parsed = wire::parse(&data).unwrap();
        assert_eq!(direction(&sel, &parsed), Some(Direction::ToProtected));

        c.bench_function(&format!("parse_{family}"), |b| {
            b.iter(|| wire::parse(black_box(&data)));
        });
        c.bench_function(&format!("classify_{family}"), |b| {
            b.iter(|| direction(black_box(&sel), black_box(&parsed)));
        });

        let syn_ack = Builder::tcp(server, client, 8080, 40000)
            .flags(tcp::SYN | tcp::ACK)
            .mss(mss)
            .build();
        let p = wire::parse(&syn_ack).unwrap();
        c.bench_function(&format!("mss_clamp_{family}"), |b| {
            b.iter_batched_ref(
                || syn_ack.clone(),
                |buf| {
                    // As the victim's outbound stage: room for a stamp, no tunnel.
                    let max = mss_with_room(v6, black_box(path_mtu), wire_len(v6));
                    assert!(wire::clamp_tcp_mss(buf, &p, max));
                },
                BatchSize::SmallInput,
            );
        });

        c.bench_function(&format!("police_update_{family}"), |b| {
            let t0 = Instant::now();
            let mut police = policer(CapSettings::default().max_senders, t0);
            // Known from its first packet; the rest fall in the same period.
            police.admit(client, true, 1, t0).unwrap();
            let now = t0 + Duration::from_secs(1);
            b.iter(|| police.admit(black_box(client), true, 1, now));
        });
    }
}

fn checksums(c: &mut Criterion) {
    let data: Vec<u8> = (0..=255u8).cycle().take(1500).collect();
    c.bench_function("checksum_full_1500", |b| {
        b.iter(|| checksum::checksum(black_box(&data)));
    });
    c.bench_function("checksum_incremental", |b| {
        b.iter(|| checksum::update_u16(black_box(0x1c46), black_box(1460), black_box(1436)));
    });
    let (old, new) = ([0x20u8; 16], [0x21u8; 16]);
    c.bench_function("checksum_incremental_16_bytes", |b| {
        b.iter(|| checksum::update_bytes(black_box(0x1c46), black_box(&old), black_box(&new)));
    });
}

/// A police holding `n` senders, all first seen at the returned time: their periods
/// all end together.
fn held(n: u32) -> (Policer, Vec<IpAddr>, Instant) {
    let t0 = Instant::now();
    // The table must hold them all: none is evicted.
    let mut police = policer(n as usize, t0);
    let senders: Vec<IpAddr> = (0..n)
        .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
        .collect();
    for &s in &senders {
        police.admit(s, true, 1, t0).unwrap();
    }
    assert_eq!(police.senders_held(), (n as usize, 0));
    (police, senders, t0)
}

fn period_rollover(c: &mut Criterion) {
    let mut g = c.benchmark_group("period_rollover");
    for n in [1_000u32, 1_000_000] {
        if n > 1_000 {
            // Hundreds of milliseconds a call, and a million admits between calls.
            g.sample_size(10).sampling_mode(SamplingMode::Flat);
        }
        let period = CapSettings::default().period;
        // Built at the first call, so a run filtered to other benches does not pay for it.
        let mut state = None;
        g.bench_function(n.to_string(), |b| {
            let (police, senders, start) = state.get_or_insert_with(|| held(n));
            b.iter_custom(|iters| {
                let closed = police.counters().periods_closed;
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    // Five packets (one super-packet): enough for the period's loss to count,
                    // whether they pass or not.
                    for &s in senders.iter() {
                        let _ = police.admit(s, true, 5, *start);
                    }
                    *start += period;
                    let t = Instant::now();
                    black_box(police.on_timer(*start));
                    timed += t.elapsed();
                }
                // Each call closed every sender's period, and none expired.
                assert_eq!(
                    police.counters().periods_closed - closed,
                    iters * u64::from(n)
                );
                assert_eq!(police.senders_held(), (n as usize, 0));
                timed
            });
        });
    }
    g.finish();
}

criterion_group!(benches, packet_steps, checksums, period_rollover);
criterion_main!(benches);
