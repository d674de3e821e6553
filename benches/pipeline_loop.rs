//! A fixed loop of one packet through the pipeline, for counting instructions where
//! timings are too noisy to compare two builds (this VM's swing by ±30 %):
//!
//! ```sh
//! cargo bench --bench pipeline_loop --no-run
//! valgrind --tool=callgrind target/release/deps/pipeline_loop-* 200000 mbox
//! ```
//!
//! Modes: `mbox` (a known sender's TCP data packet, policed and not stamped), `victim`
//! (the same packet unmarked at the victim), `both`. To compare with an earlier commit,
//! copy this file and its `[[bench]]` entry into a worktree of that commit: it uses only
//! `Pipeline::process`. `cargo bench` runs it once with the defaults.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mpolice::capability::{Key, KeyRing, RunId, SharedKeys};
use mpolice::config::{CapSettings, MalformedVerdict, PoliceSettings};
use mpolice::driver::nft::Selection;
use mpolice::pipeline::{Mbox, PacketMeta, Pipeline, Stages, Victim};
use mpolice::police::Policy;
use mpolice::wire::build::Builder;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let mode = args.get(1).map_or("both", String::as_str);
    let sel = Selection {
        addresses: vec!["198.18.2.0/24".parse().unwrap()],
        tcp_ports: vec!["8080".parse().unwrap()],
        udp_ports: vec![],
    };
    let s = CapSettings {
        mbox_id: 1,
        ..CapSettings::default()
    };
    let keys = SharedKeys::new(KeyRing::new(1, Key::from_bytes([7; 32])).unwrap());
    let t0 = Instant::now();
    let police = PoliceSettings::with_policy(Policy::NaturalShare);
    let run = (t0, RunId::from_bytes([5; 16]));
    let mbox = Mbox::new(&s, &police, &keys, run, vec![0]);
    let mut m = Pipeline::new(
        sel.clone(),
        MalformedVerdict::Drop,
        Some(Stages::Mbox(mbox)),
    );
    let victim = Victim::new(&s, vec![0]);
    let mut v = Pipeline::new(sel, MalformedVerdict::Drop, Some(Stages::Victim(victim)));
    let data = Builder::tcp(
        "198.18.1.2".parse().unwrap(),
        "198.18.2.2".parse().unwrap(),
        40000,
        8080,
    )
    .payload(&[0x5a; 1000])
    .build();
    let meta = PacketMeta::default();
    m.process(&meta, &mut data.clone(), t0);
    // In the period's last Th_rtt: policed, never stamped.
    let late = t0 + Duration::from_millis(3500);
    let mut buf = Vec::with_capacity(0x10100);
    let started = Instant::now();
    for _ in 0..n {
        buf.clear();
        buf.extend_from_slice(&data);
        if mode != "victim" {
            black_box(m.process(&meta, &mut buf, late));
        }
        if mode != "mbox" {
            black_box(v.process(&meta, &mut buf, late));
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{n} packets through {mode}: {ns:.0} ns each (noisy; count instructions instead)");
}
