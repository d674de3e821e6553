//! Feed arbitrary bytes to both roles' pipelines: never a panic, and a packet that is
//! not reported modified leaves the pipeline byte for byte as it came in.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use mpolice::config::MalformedVerdict;
use mpolice::driver::nft::{Role, Selection};
use mpolice::pipeline::{PacketMeta, Pipeline, Verdict};

fn selection() -> Selection {
    Selection {
        addresses: vec!["198.18.2.0/24".parse().unwrap(), "2001:2:0:2::/64".parse().unwrap()],
        tcp_ports: vec!["1-65535".parse().unwrap()],
        udp_ports: vec!["1-65535".parse().unwrap()],
    }
}

fuzz_target!(|data: &[u8]| {
    for role in [Role::Mbox, Role::Victim] {
        let mut p = Pipeline::new(role, selection(), MalformedVerdict::Drop);
        let mut buf = data.to_vec();
        let v = p.process(&PacketMeta::default(), &mut buf, Instant::now());
        if v != Verdict::AcceptModified {
            assert_eq!(buf, data);
        }
    }
});
