//! Feed arbitrary bytes to every pipeline (pass-through, mbox, victim): never a panic,
//! and a packet that is not reported modified leaves byte for byte as it came in.
#![no_main]


use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use mpolice::capability::{Key, KeyRing, RunId, SharedKeys};
use mpolice::config::{CapSettings, MalformedVerdict, PoliceSettings};
use mpolice::police::Policy;
use mpolice::driver::nft::Selection;
use mpolice::pipeline::{Mbox, PacketMeta, Pipeline, Stages, Verdict, Victim};

/// `PacketMeta::default()` comes in and leaves by ifindex 0: make that the mbox link.
const MBOX_LINK: u32 = 0;
const RUN: RunId = RunId::from_bytes([5; 16]);

fn selection() -> Selection {
    Selection {
        addresses: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        tcp_ports: vec!["1-65535".parse().unwrap()],
        udp_ports: vec!["1-65535".parse().unwrap()],
    }
}

fn settings() -> CapSettings {
    CapSettings {
        mbox_id: 1,
        max_senders: 64,
        kept_per_sender: 8,
        ..CapSettings::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = SharedKeys::new(KeyRing::new(1, Key::from_bytes([3; 32])).unwrap());
    let now = Instant::now();
    for stages in [
        None,
        Some(Stages::Mbox(Mbox::new(
            &settings(),
            &PoliceSettings::with_policy(Policy::NaturalShare),
            &keys,
            (now, RUN),
            vec![MBOX_LINK],
        ))),
        Some(Stages::Victim(Victim::new(&settings(), vec![MBOX_LINK]))),
    ] {
        let mut p = Pipeline::new(selection(), MalformedVerdict::Drop, stages);
        let mut buf = data.to_vec();
        let v = p.process(&PacketMeta::default(), &mut buf, now);
        if v != Verdict::AcceptModified {
            assert_eq!(buf, data);
        }
    }
});
