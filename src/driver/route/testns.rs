//! Throwaway network namespaces for root tests (test builds only).
//!
//! Invariants: namespaces are named `rtt-<pid>-<n>` (the host under test) and
//! `rtt-<pid>-<n>-p` (its gateway, which also holds the client addresses
//! 198.18.1.5 and 2001:2:0:1::5); they are joined by one veth pair, use
//! addresses from 198.18.0.0/15 and 2001:2::/48 only, have no route to the
//! host's network, and are deleted when the guard drops, also when a test fails.

use std::io;

pub use crate::driver::testns::{drop_net_admin, in_netns, run};
use std::sync::atomic::{AtomicU32, Ordering};

/// The gateway's addresses on the shared link, seen from the host under test.
pub const GW4: &str = "198.18.2.1";
pub const GW6: &str = "2001:2:0:2::1";
/// The host under test's addresses (where the TCP listener runs).
pub const HOST4: &str = "198.18.2.2";
pub const HOST6: &str = "2001:2:0:2::2";
/// Client addresses inside the prefixes the tests configure.
pub const CLIENT4: &str = "198.18.1.5";
pub const CLIENT6: &str = "2001:2:0:1::5";
/// The host under test's link to the gateway.
pub const DEV: &str = "v0";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The host under test and its gateway; both namespaces deleted on drop.
pub struct Testbed {
    /// Namespace of the host under test (where routes are set).
    pub ns: String,
    /// Namespace of the gateway and the clients.
    pub peer: String,
}

impl Testbed {
    /// Build the pair; with `default_route` the host routes everything via the gateway.
    pub fn new(default_route: bool) -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tb = Testbed {
            ns: format!("rtt-{pid}-{n}"),
            peer: format!("rtt-{pid}-{n}-p"),
        };
        // The guard exists before the first namespace, so a failure below cleans up.
        run(&["ip", "netns", "add", &tb.ns])?;
        run(&["ip", "netns", "add", &tb.peer])?;
        let (mac0, mac1) = ("02:00:c6:12:02:02", "02:00:c6:12:02:01");
        run(&[
            "ip", "link", "add", DEV, "netns", &tb.ns, "address", mac0, "type", "veth", "peer",
            "name", "v1", "netns", &tb.peer, "address", mac1,
        ])?;
        let sides = [
            (&tb.ns, DEV, HOST4, HOST6, GW4, GW6, mac1),
            (&tb.peer, "v1", GW4, GW6, HOST4, HOST6, mac0),
        ];
        for (ns, dev, a4, a6, p4, p6, pmac) in sides {
            tb.ip(ns, &["link", "set", "lo", "up"])?;
            tb.ip(ns, &["addr", "add", &format!("{a4}/24"), "dev", dev])?;
            tb.ip(
                ns,
                &["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"],
            )?;
            tb.ip(ns, &["link", "set", dev, "up"])?;
            for p in [p4, p6] {
                let nud = ["neigh", "replace", p, "lladdr", pmac, "dev", dev];
                tb.ip(ns, &[&nud[..], &["nud", "permanent"]].concat())?;
            }
        }
        // Clients in the configured prefixes live on the gateway's loopback and
        // use those addresses as source towards the host under test.
        tb.ip(
            &tb.peer,
            &["addr", "add", &format!("{CLIENT4}/32"), "dev", "lo"],
        )?;
        let c6 = format!("{CLIENT6}/128");
        tb.ip(&tb.peer, &["addr", "add", &c6, "dev", "lo", "nodad"])?;
        let src4 = [
            "route",
            "replace",
            "198.18.2.0/24",
            "dev",
            "v1",
            "src",
            CLIENT4,
        ];
        tb.ip(&tb.peer, &src4)?;
        // IPv6 replaces the route of the same metric: the kernel's is 256.
        let src6 = [
            "route",
            "replace",
            "2001:2:0:2::/64",
            "dev",
            "v1",
            "src",
            CLIENT6,
            "metric",
            "256",
        ];
        tb.ip(&tb.peer, &src6)?;
        if default_route {
            tb.ip(&tb.ns, &["route", "add", "default", "via", GW4, "dev", DEV])?;
            tb.ip(
                &tb.ns,
                &["-6", "route", "add", "default", "via", GW6, "dev", DEV],
            )?;
        }
        Ok(tb)
    }

    /// Run `ip -n NS ARGS...`; return its stdout.
    pub fn ip(&self, ns: &str, args: &[&str]) -> io::Result<String> {
        run(&[&["ip", "-n", ns][..], args].concat())
    }

    /// Return `ip [-6] route show [ARGS...]` in the host under test.
    pub fn routes(&self, v6: bool, args: &[&str]) -> String {
        let fam: &[&str] = if v6 { &["-6"] } else { &[] };
        self.ip(&self.ns, &[fam, &["route", "show"], args].concat())
            .unwrap_or_else(|e| format!("error: {e}"))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Deleting a namespace also deletes its end of the veth pair and its routes.
        for ns in [&self.ns, &self.peer] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
