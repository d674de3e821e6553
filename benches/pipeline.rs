//! Per-packet cost of the capability stages as the engine runs them: stamp (mbox, on a
//! client's data packet), strip (victim, inbound), feedback-append (victim, on an ACK)
//! and feedback-verify (mbox: strip, verify, count). Each includes parsing, the trailer
//! edit and the checksum updates, and excludes the NFQUEUE round trip.
//!
//! Run with `cargo bench --bench pipeline`.

use std::cell::RefCell;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mpolice::capability::{Key, KeyRing, RunId, SharedKeys};
use mpolice::config::{CapSettings, MalformedVerdict, PoliceSettings};
mod common;
use common::selection;
use mpolice::pipeline::{Mbox, PacketMeta, Pipeline, Stages, Verdict, Victim};
use mpolice::police::Policy;
use mpolice::trace::{Clock, Filter, Tracer};
use mpolice::wire::build::Builder;
use mpolice::wire::tcp;

const PERIOD: Duration = Duration::from_secs(4);

fn settings() -> CapSettings {
    CapSettings {
        mbox_id: 1,
        ..CapSettings::default()
    }
}

/// `PacketMeta::default()` comes in and leaves by ifindex 0: make that the mbox link.
const MBOX_LINK: u32 = 0;
const RUN: RunId = RunId::from_bytes([5; 16]);

fn mbox(t0: Instant) -> Pipeline {
    let keys = SharedKeys::new(KeyRing::new(1, Key::from_bytes([7; 32])).unwrap());
    Pipeline::new(
        selection(),
        MalformedVerdict::Drop,
        Some(Stages::Mbox(Mbox::new(
            &settings(),
            &PoliceSettings::with_policy(Policy::NaturalShare),
            &keys,
            (t0, RUN),
            vec![MBOX_LINK],
        ))),
    )
}

fn victim() -> Pipeline {
    Pipeline::new(
        selection(),
        MalformedVerdict::Drop,
        Some(Stages::Victim(Victim::new(&settings(), vec![MBOX_LINK]))),
    )
}

fn run(p: &mut Pipeline, pkt: &mut Vec<u8>, now: Instant) -> Verdict {
    p.process(&PacketMeta::default(), pkt, now)
}

fn bench(c: &mut Criterion) {
    for (family, client, server) in [
        ("ipv4", "198.18.1.2", "198.18.2.2"),
        ("ipv6", "2001:2:0:1::2", "2001:2:0:2::2"),
    ] {
        let (client, server): (IpAddr, IpAddr) = (client.parse().unwrap(), server.parse().unwrap());
        let data = Builder::tcp(client, server, 40000, 8080)
            .payload(&[0x5a; 1000])
            .build();
        let ack = Builder::tcp(server, client, 8080, 40000)
            .flags(tcp::ACK)
            .build();
        let t0 = Instant::now();

        c.bench_function(&format!("stamp_{family}"), |b| {
            let mut m = mbox(t0);
            let mut period = 0u32;
            let mut buf = Vec::with_capacity(0x10100);
            b.iter(|| {
                // Each packet in a new period, so every one is stamped; the timer closes
                // the last one (timed too, as the worker runs it between packets).
                period += 1;
                buf.clear();
                buf.extend_from_slice(&data);
                let now = t0 + PERIOD * period;
                m.on_timer(now);
                let v = run(&mut m, &mut buf, now);
                assert_eq!(v, Verdict::AcceptModified);
            });
        });

        c.bench_function(&format!("police_unstamped_{family}"), |b| {
            // A known sender in its period's last Th_rtt: policed, never stamped.
            let mut m = mbox(t0);
            let mut buf = Vec::with_capacity(0x10100);
            run(&mut m, &mut data.clone(), t0);
            let late = t0 + PERIOD - Duration::from_millis(500);
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(&data);
                assert_eq!(run(&mut m, &mut buf, late), Verdict::Accept);
            });
        });

        c.bench_function(&format!("police_unstamped_traced_{family}"), |b| {
            // The same, traced as the worker traces it: received, each stage's edges,
            // decided, answered, handed to the writer (drained here, in its place).
            let mut m = mbox(t0);
            let (tx, rx) = sync_channel(1024);
            let mut t = RefCell::new(Tracer::new(tx, Clock::start(), Filter::default()));
            let mut buf = Vec::with_capacity(0x10100);
            run(&mut m, &mut data.clone(), t0);
            let late = t0 + PERIOD - Duration::from_millis(500);
            let mut n = 0;
            b.iter(|| {
                n += 1;
                t.get_mut()
                    .start(n, (0, n as u32, 2), data.len() as u32, late);
                buf.clear();
                buf.extend_from_slice(&data);
                t.get_mut().received(&buf);
                let v = m.process_traced(&PacketMeta::default(), &mut buf, late, &t);
                t.get_mut().decided(&v, buf.len(), &buf);
                t.get_mut().sent();
                assert_eq!(v, Verdict::Accept);
                black_box(rx.try_recv().unwrap());
            });
        });

        let mut stamped = data.clone();
        run(&mut mbox(t0), &mut stamped, t0);
        c.bench_function(&format!("strip_{family}"), |b| {
            let mut v = victim();
            let mut buf = Vec::with_capacity(0x10100);
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(&stamped);
                black_box(run(&mut v, &mut buf, t0));
            });
        });

        c.bench_function(&format!("feedback_append_{family}"), |b| {
            b.iter_batched(
                || {
                    let mut v = victim();
                    run(&mut v, &mut stamped.clone(), t0);
                    (v, ack.clone())
                },
                // Returned, so dropping the state is not timed.
                |(mut v, mut buf)| {
                    assert_eq!(run(&mut v, &mut buf, t0), Verdict::AcceptModified);
                    (v, buf)
                },
                BatchSize::SmallInput,
            );
        });

        c.bench_function(&format!("feedback_verify_{family}"), |b| {
            b.iter_batched(
                || {
                    let mut m = mbox(t0);
                    let mut v = victim();
                    let mut pkt = data.clone();
                    run(&mut m, &mut pkt, t0);
                    run(&mut v, &mut pkt, t0);
                    let mut fb = ack.clone();
                    run(&mut v, &mut fb, t0);
                    (m, fb)
                },
                |(mut m, mut buf)| {
                    assert_eq!(run(&mut m, &mut buf, t0), Verdict::AcceptModified);
                    (m, buf)
                },
                BatchSize::SmallInput,
            );
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
