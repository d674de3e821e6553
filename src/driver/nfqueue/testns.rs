//! Throwaway network namespaces for root tests (test builds only).
//!
//! Invariants: namespaces are named `nfqt-<pid>-<n>-{a,b}`, joined by one veth
//! pair with addresses from 198.18.0.0/15 and no route anywhere else, and are
//! deleted when the guard drops, also when a test fails.

use std::io;

pub use crate::driver::testns::{in_netns, run};
use std::sync::atomic::{AtomicU32, Ordering};

/// Address of namespace `a` (the sender).
pub const ADDR_A: &str = "198.18.0.1";
/// Address of namespace `b` (the receiver, where packets are queued).
pub const ADDR_B: &str = "198.18.0.2";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces `a` and `b` joined by a veth pair; deleted on drop.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
}

impl NetnsPair {
    /// Create the pair with static neighbours (no ARP delay for the first packets).
    pub fn new() -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let pair = NetnsPair {
            a: format!("nfqt-{pid}-{n}-a"),
            b: format!("nfqt-{pid}-{n}-b"),
        };
        // The guard exists before the first namespace, so a failure below cleans up.
        run(&["ip", "netns", "add", &pair.a])?;
        run(&["ip", "netns", "add", &pair.b])?;
        let (mac_a, mac_b) = ("02:00:c6:12:00:01", "02:00:c6:12:00:02");
        run(&[
            "ip", "link", "add", "va", "netns", &pair.a, "address", mac_a, "type", "veth", "peer",
            "name", "vb", "netns", &pair.b, "address", mac_b,
        ])?;
        for (ns, dev, addr, peer, peer_mac) in [
            (&pair.a, "va", ADDR_A, ADDR_B, mac_b),
            (&pair.b, "vb", ADDR_B, ADDR_A, mac_a),
        ] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                peer,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        Ok(pair)
    }

    /// Queue UDP packets to port `port` arriving in `b` to queue `num`.
    pub fn queue_udp(&self, port: u16, num: u16) -> io::Result<()> {
        let (port, num) = (port.to_string(), num.to_string());
        run(&[
            "ip",
            "netns",
            "exec",
            &self.b,
            "iptables-nft",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &num,
        ])
        .map(drop)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace also deletes its end of the veth pair and its rules.
        for ns in [&self.a, &self.b] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
