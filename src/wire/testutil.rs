//! Fixtures shared by the tests.

use std::net::IpAddr;

use super::build::Builder;
use super::{proto, tcp};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub const V4_SRC: &str = "192.0.2.1";
pub const V4_DST: &str = "198.51.100.2";
pub const V6_SRC: &str = "2001:db8::1";
pub const V6_DST: &str = "2001:db8:ffff::2";

/// TCP timestamps option body (kind 8, length 10).
pub const TS: [u8; 8] = [0, 0, 0, 1, 0, 0, 0, 2];

pub fn tcp4() -> Vec<u8> {
    Builder::tcp(ip(V4_SRC), ip(V4_DST), 40000, 443)
        .seq(0x0102_0304)
        .ack(0x0506_0708)
        .flags(tcp::ACK | tcp::PSH)
        .window(501)
        .raw_tcp_options(&[1, 1])
        .tcp_option(8, &TS)
        .payload(b"hello")
        .build()
}

pub fn syn4() -> Vec<u8> {
    Builder::tcp(ip(V4_SRC), ip(V4_DST), 40000, 80)
        .flags(tcp::SYN)
        .mss(1460)
        .raw_tcp_options(&[4, 2, 1, 3, 3, 7])
        .build()
}

/// SYN whose MSS option starts at an odd offset within the TCP header.
pub fn syn6_odd_mss() -> Vec<u8> {
    Builder::tcp(ip(V6_SRC), ip(V6_DST), 40000, 80)
        .flags(tcp::SYN)
        .raw_tcp_options(&[1])
        .mss(8940)
        .build()
}

pub fn tcp6() -> Vec<u8> {
    Builder::tcp(ip(V6_SRC), ip(V6_DST), 1234, 80)
        .seq(7)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .build()
}

pub fn tcp6_ext() -> Vec<u8> {
    Builder::tcp(ip(V6_SRC), ip(V6_DST), 1234, 80)
        .ipv6_ext(proto::HOP_BY_HOP, &[])
        .ipv6_ext(proto::DEST_OPTS, &[0; 14])
        .payload(b"odd")
        .build()
}

pub fn udp4() -> Vec<u8> {
    Builder::udp(ip(V4_SRC), ip(V4_DST), 5353, 53)
        .payload(b"query")
        .build()
}

pub fn udp4_nocsum() -> Vec<u8> {
    Builder::udp(ip(V4_SRC), ip(V4_DST), 5353, 53)
        .payload(b"query")
        .no_udp_checksum()
        .build()
}

pub fn udp6() -> Vec<u8> {
    Builder::udp(ip(V6_SRC), ip(V6_DST), 5353, 53)
        .payload(b"query!")
        .build()
}

/// IPv6 TCP with an SRH (type 4) whose final destination differs from the header's.
pub fn tcp6_srh() -> Vec<u8> {
    let mut body = vec![4, 1, 0, 0, 0, 0];
    body.extend_from_slice(
        &"2001:db8:aaaa::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    Builder::tcp(ip(V6_SRC), ip(V6_DST), 1234, 80)
        .ipv6_ext(proto::ROUTING, &body)
        .payload(b"sr")
        .build()
}

/// ICMP echo request over IPv4 (checksum left for `fill_checksums`).
pub fn icmp4() -> Vec<u8> {
    Builder::raw(ip(V4_SRC), ip(V4_DST), proto::ICMP)
        .payload(&[8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'])
        .build()
}

/// ICMPv6 echo request (checksum left for `fill_checksums`).
pub fn icmp6() -> Vec<u8> {
    Builder::raw(ip(V6_SRC), ip(V6_DST), proto::ICMPV6)
        .payload(&[128, 0, 0, 0, 0, 1, 0, 1, b'p'])
        .build()
}

/// Every TCP/UDP fixture with correct checksums.
pub fn all_valid() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("tcp4", tcp4()),
        ("syn4", syn4()),
        ("syn6_odd_mss", syn6_odd_mss()),
        ("tcp6", tcp6()),
        ("tcp6_ext", tcp6_ext()),
        ("tcp6_srh", tcp6_srh()),
        ("udp4", udp4()),
        ("udp4_nocsum", udp4_nocsum()),
        ("udp6", udp6()),
    ]
}

/// Set a big-endian u16 in a test buffer.
pub fn set16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
