//! Root tests against the real kernel, each in its own throwaway namespaces.
//! Without root they are skipped, or fail where `MPOLICE_REQUIRE_ROOT_TESTS` is set.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::testns::{
    CLIENT4, CLIENT6, DEV, GW4, GW6, HOST4, HOST6, Testbed, drop_net_admin, in_netns,
};
use super::{AdvmssGuard, AdvmssRoute, RouteError, set_advmss};

const P4: &str = "198.18.1.0/24";
const P6: &str = "2001:2:0:1::/64";

fn route(prefix: &str, advmss: u16) -> AdvmssRoute {
    let (addr, len) = prefix.split_once('/').expect("prefix/len");
    AdvmssRoute {
        prefix: addr.parse().expect("address"),
        prefix_len: len.parse().expect("length"),
        advmss,
    }
}

/// Return a testbed, or None (after saying so) when not root.
fn setup(default_route: bool) -> Option<Testbed> {
    if !crate::testbed::root_tests_may_run() {
        return None;
    }
    Some(Testbed::new(default_route).expect("create namespaces"))
}

/// Call `set_advmss` from a thread inside the testbed's host namespace.
fn set_in(tb: &Testbed, routes: &[AdvmssRoute]) -> Result<AdvmssGuard, RouteError> {
    let routes = routes.to_vec();
    in_netns(&tb.ns, move || set_advmss(&routes)).expect("enter namespace")
}

#[test]
fn adds_v4_and_v6_routes_and_guard_deletes_them() {
    let Some(tb) = setup(true) else { return };
    let before = (tb.routes(false, &[]), tb.routes(true, &[]));
    let guard = set_in(&tb, &[route(P4, 1400), route(P6, 1400)]).expect("set advmss");
    assert_eq!(guard.len(), 2);
    let v4 = tb.routes(false, &[P4]);
    assert_eq!(
        v4.trim(),
        format!("{P4} via {GW4} dev {DEV} proto 109 advmss 1400"),
        "{v4}"
    );
    let v6 = tb.routes(true, &[P6]);
    assert!(
        v6.contains(&format!("via {GW6} dev {DEV} proto 109")),
        "{v6}"
    );
    assert!(v6.contains("advmss 1400"), "{v6}");
    assert_eq!(v6.lines().count(), 1, "{v6}");
    drop(guard);
    assert_eq!(tb.routes(false, &[P4]), "");
    assert_eq!(tb.routes(true, &[P6]), "");
    assert_eq!((tb.routes(false, &[]), tb.routes(true, &[])), before);
}

#[test]
fn adds_on_link_routes_without_gateway() {
    let Some(tb) = setup(true) else { return };
    // Part of the connected subnet: the kernel routes it on-link through v0.
    let (p4, p6) = ("198.18.2.128/25", "2001:2:0:2:8000::/65");
    let guard = set_in(&tb, &[route(p4, 1300), route(p6, 1300)]).expect("set advmss");
    let v4 = tb.routes(false, &[p4]);
    assert_eq!(
        v4.trim(),
        format!("{p4} dev {DEV} proto 109 scope link advmss 1300"),
        "{v4}"
    );
    let v6 = tb.routes(true, &[p6]);
    assert!(v6.starts_with(&format!("{p6} dev {DEV} proto 109")), "{v6}");
    assert!(v6.contains("advmss 1300") && !v6.contains("via"), "{v6}");
    guard.restore().expect("restore");
    assert_eq!(tb.routes(false, &[p4]), "");
    assert_eq!(tb.routes(true, &[p6]), "");
}

/// Replace a pre-existing exact route, check what was kept, and its exact restore.
fn check_replace(v6: bool, prefix: &str, create: &[&str], kept: &[&str]) {
    let Some(tb) = setup(true) else { return };
    let fam: &[&str] = if v6 { &["-6"] } else { &[] };
    tb.ip(&tb.ns, &[fam, &["route", "add", prefix], create].concat())
        .expect("add the original route");
    let before = tb.routes(v6, &[prefix]);
    let table_before = tb.routes(v6, &[]);
    let guard = set_in(&tb, &[route(prefix, 1400)]).expect("set advmss");
    let during = tb.routes(v6, &[prefix]);
    assert_eq!(during.lines().count(), 1, "{during}");
    for k in kept {
        assert!(during.contains(k), "{k:?} lost: {during}");
    }
    assert!(during.contains("advmss 1400"), "{during}");
    assert!(!during.contains("proto 109"), "{during}");
    drop(guard);
    assert_eq!(tb.routes(v6, &[prefix]), before);
    assert_eq!(tb.routes(v6, &[]), table_before);
}

#[test]
fn replaces_existing_v4_route_keeping_attributes_and_restores_it_exactly() {
    check_replace(
        false,
        P4,
        &[
            "via", GW4, "dev", DEV, "metric", "5", "mtu", "1400", "proto", "static", "src", HOST4,
            "rtt", "40ms",
        ],
        &[
            "via 198.18.2.1",
            "proto static",
            "src 198.18.2.2",
            "metric 5",
            "mtu 1400",
            "rtt 40ms",
        ],
    );
}

#[test]
fn replaces_existing_v6_route_keeping_attributes_and_restores_it_exactly() {
    check_replace(
        true,
        P6,
        &[
            "via", GW6, "dev", DEV, "metric", "5", "mtu", "1300", "pref", "high",
        ],
        &["via 2001:2:0:2::1", "metric 5", "mtu 1300", "pref high"],
    );
}

#[test]
fn replaces_a_route_using_a_nexthop_object() {
    let Some(tb) = setup(true) else { return };
    tb.ip(
        &tb.ns,
        &["nexthop", "add", "id", "7", "via", GW4, "dev", DEV],
    )
    .expect("add nexthop");
    tb.ip(&tb.ns, &["route", "add", P4, "nhid", "7", "mtu", "1400"])
        .expect("add the original route");
    let before = tb.routes(false, &[]);
    let guard = set_in(&tb, &[route(P4, 1400)]).expect("set advmss");
    let during = tb.routes(false, &[P4]);
    assert!(
        during.contains("nhid 7") && during.contains("mtu 1400"),
        "{during}"
    );
    assert!(during.contains("advmss 1400"), "{during}");
    drop(guard);
    assert_eq!(tb.routes(false, &[]), before);
}

#[test]
fn replaces_an_earlier_advmss_and_restores_it() {
    let Some(tb) = setup(true) else { return };
    let add = [
        "route", "add", P4, "via", GW4, "advmss", "1200", "mtu", "lock", "1450",
    ];
    tb.ip(&tb.ns, &add).expect("add the original route");
    let before = tb.routes(false, &[P4]);
    let guard = set_in(&tb, &[route(P4, 1400)]).expect("set advmss");
    let during = tb.routes(false, &[P4]);
    assert!(
        during.contains("advmss 1400") && !during.contains("1200"),
        "{during}"
    );
    assert!(during.contains("mtu lock 1450"), "{during}");
    drop(guard);
    assert_eq!(tb.routes(false, &[P4]), before);
}

#[test]
fn replaces_the_connected_route_of_the_prefix() {
    let Some(tb) = setup(true) else { return };
    let before = tb.routes(false, &[]);
    let guard = set_in(&tb, &[route("198.18.2.0/24", 1400)]).expect("set advmss");
    let during = tb.routes(false, &["198.18.2.0/24"]);
    assert!(
        during.contains("proto kernel scope link src 198.18.2.2"),
        "{during}"
    );
    assert!(during.contains("advmss 1400"), "{during}");
    drop(guard);
    assert_eq!(tb.routes(false, &[]), before);
}

#[test]
fn setting_twice_is_idempotent() {
    let Some(tb) = setup(true) else { return };
    let before = (tb.routes(false, &[]), tb.routes(true, &[]));
    let both = [route(P4, 1400), route(P6, 1400)];
    let first = set_in(&tb, &both).expect("first set");
    let once = (tb.routes(false, &[P4]), tb.routes(true, &[P6]));
    let second = set_in(&tb, &both).expect("second set");
    assert_eq!((tb.routes(false, &[P4]), tb.routes(true, &[P6])), once);
    assert_eq!(once.0.lines().count(), 1);
    assert_eq!(once.1.lines().count(), 1);
    // A new value updates the same route instead of adding one.
    let third = set_in(&tb, &[route(P4, 1300)]).expect("third set");
    let v4 = tb.routes(false, &[P4]);
    assert_eq!(v4.lines().count(), 1, "{v4}");
    assert!(v4.contains("advmss 1300"), "{v4}");
    drop(third);
    drop(second);
    drop(first);
    assert_eq!((tb.routes(false, &[]), tb.routes(true, &[])), before);
}

#[test]
fn setting_twice_on_an_existing_route_restores_the_original() {
    let Some(tb) = setup(true) else { return };
    tb.ip(&tb.ns, &["route", "add", P4, "via", GW4, "metric", "7"])
        .expect("add the original route");
    let before = tb.routes(false, &[]);
    let first = set_in(&tb, &[route(P4, 1400)]).expect("first set");
    let second = set_in(&tb, &[route(P4, 1400)]).expect("second set");
    let v4 = tb.routes(false, &[P4]);
    assert_eq!(
        v4.trim(),
        format!("{P4} via {GW4} dev {DEV} metric 7 advmss 1400")
    );
    drop(second);
    drop(first);
    assert_eq!(tb.routes(false, &[]), before);
}

#[test]
fn unroutable_prefix_gives_a_clear_error() {
    let Some(tb) = setup(false) else { return };
    for p in ["198.18.9.0/24", "2001:2:0:9::/64"] {
        let err = set_in(&tb, &[route(p, 1400)]).expect_err("no route");
        assert!(matches!(err, RouteError::NoRoute { .. }), "{err:?}");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!("no route to {p} (network is unreachable): add one first")
        );
    }
}

#[test]
fn failure_part_way_undoes_the_earlier_routes() {
    let Some(tb) = setup(true) else { return };
    let before = tb.routes(false, &[]);
    // The host's own address is routed locally: refused after P4 was added.
    let err =
        set_in(&tb, &[route(P4, 1400), route("198.18.2.2/32", 1400)]).expect_err("local prefix");
    assert!(
        matches!(err, RouteError::NotUnicast { kind: "local", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("198.18.2.2/32"), "{err}");
    assert_eq!(tb.routes(false, &[]), before);
}

#[test]
fn without_net_admin_the_error_says_run_as_root() {
    let Some(tb) = setup(true) else { return };
    let res = in_netns(&tb.ns, || {
        drop_net_admin().expect("drop CAP_NET_ADMIN");
        set_advmss(&[route(P4, 1400)])
    })
    .expect("enter namespace");
    let err = res.expect_err("permission");
    assert!(
        matches!(err, RouteError::PermissionDenied { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(P4) && msg.contains("run as root"), "{msg}");
    assert_eq!(tb.routes(false, &[P4]), "");
}

#[test]
fn guard_restores_from_another_thread_and_namespace() {
    let Some(tb) = setup(true) else { return };
    let guard = set_in(&tb, &[route(P4, 1400)]).expect("set advmss");
    assert!(tb.routes(false, &[P4]).contains("advmss 1400"));
    // Dropped here, in the test thread's (the host's) namespace: the socket
    // it owns still points into the testbed.
    guard.restore().expect("restore");
    assert_eq!(tb.routes(false, &[P4]), "");
}

/// Return the MSS the client's kernel uses after connecting from the peer to `host`.
fn client_mss(tb: &Testbed, host: &str, port: u16) -> u32 {
    let addr = SocketAddr::new(host.parse::<IpAddr>().expect("address"), port);
    in_netns(&tb.peer, move || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
        let mut mss: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: mss/len describe a writable c_int; the fd is alive.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                (&raw mut mss).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt TCP_MAXSEG");
        u32::try_from(mss).expect("positive mss")
    })
    .expect("enter namespace")
}

/// Capture the first SYN-ACK the host sends while `connect` runs; return tcpdump's text.
/// tcpdump is a test dependency (installed by `integration/install-deps.sh`): without it
/// the test fails.
fn capture_syn_ack(tb: &Testbed, v6: bool, connect: impl FnOnce()) -> String {
    let filter = if v6 {
        "ip6 and tcp and ip6[53] & 0x12 == 0x12"
    } else {
        "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack != 0"
    };
    let spawned = Command::new("ip")
        .args([
            "netns", "exec", &tb.ns, "tcpdump", "-l", "-c", "1", "-nn", "-v",
        ])
        .args(["-i", DEV, filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = spawned.expect("run tcpdump (integration/install-deps.sh installs it)");
    // tcpdump says "listening on ..." once its filter is attached.
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while err.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("listening on") {
        line.clear();
    }
    assert!(
        line.contains("listening on"),
        "tcpdump did not start: {line}"
    );
    connect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill(); // our own child, by its handle; a no-op once it exited
    let _ = child.wait();
    let mut out = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out);
    out
}

/// Check the SYN-ACK from the host to a client in the prefix carries the MSS.
fn check_syn_ack_mss(v6: bool) {
    let Some(tb) = setup(true) else { return };
    let (host, client, prefix, full) = if v6 {
        (HOST6, CLIENT6, P6, 1440)
    } else {
        (HOST4, CLIENT4, P4, 1460)
    };
    let bind = SocketAddr::new(host.parse::<IpAddr>().expect("address"), 0);
    let listener = in_netns(&tb.ns, move || TcpListener::bind(bind))
        .expect("enter namespace")
        .expect("listen");
    let port = listener.local_addr().expect("port").port();
    // Before: the full MSS of a 1500-byte link (minus 12 bytes of timestamps).
    let plain = client_mss(&tb, host, port);
    assert!(plain > 1400 && plain <= full, "mss without advmss: {plain}");
    let guard = set_in(&tb, &[route(prefix, 1400)]).expect("set advmss");
    let mut lowered = 0;
    let text = capture_syn_ack(&tb, v6, || lowered = client_mss(&tb, host, port));
    // 1400 advertised; 1388 once 12 bytes of timestamps are taken off.
    assert!(
        (1388..=1400).contains(&lowered),
        "mss with advmss 1400: {lowered}"
    );
    assert!(text.contains("Flags [S.]"), "{text}");
    assert!(text.contains(&format!("> {client}.")), "{text}");
    assert!(text.contains("mss 1400"), "{text}");
    drop(guard);
    assert_eq!(client_mss(&tb, host, port), plain);
}

#[test]
fn syn_ack_to_the_prefix_carries_the_lowered_mss_v4() {
    check_syn_ack_mss(false);
}

#[test]
fn syn_ack_to_the_prefix_carries_the_lowered_mss_v6() {
    check_syn_ack_mss(true);
}
