//! What the bench files share: the protected service their packets are classified
//! against.

use mpolice::driver::nft::Selection;

/// The protected prefixes (IPv4 and IPv6) and TCP port 8080 the benches' packets go to.
pub fn selection() -> Selection {
    Selection {
        addresses: vec![
            "198.18.2.0/24".parse().unwrap(),
            "2001:2:0:2::/64".parse().unwrap(),
        ],
        tcp_ports: vec!["8080".parse().unwrap()],
        udp_ports: vec![],
    }
}
