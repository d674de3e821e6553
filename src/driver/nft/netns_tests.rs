//! Root tests: each runs in throwaway network namespaces (skipped when not root).
//!
//! Netlink calls run on a thread that joined the namespace with setns; the `nft` CLI runs
//! through `ip netns exec`. Addresses come only from 198.18.0.0/15 and 2001:2::/48.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::render::render_accept;
use super::*;
use crate::driver::testns;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace deleted on drop, even when the test fails.
struct Netns {
    name: String,
}

impl Netns {
    /// Create a namespace with lo up, or None when not root (the test is then skipped).
    fn new() -> Option<Netns> {
        if !crate::testbed::root_tests_may_run() {
            return None;
        }
        let name = format!(
            "nftt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec_ok("ip", &["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Run `f` on a thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        testns::in_netns(&self.name, f).expect("enter the test namespace")
    }

    fn exec(&self, prog: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name, prog];
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .output()
            .expect("run ip netns exec")
    }

    fn exec_ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.exec(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether this kernel has the nft `queue` expression (module nft_queue): stock
    /// distribution kernels do, the machines this was built on do not.
    fn has_native_queue(&self) -> bool {
        let probe = "table inet probe { chain c { type filter hook input priority 0; queue num 99 bypass; } }";
        let ok = self.nft_load(probe).is_ok();
        let _ = self.nft_load("delete table inet probe");
        ok
    }

    /// The queue expression `install` picks here.
    fn queue_kind(&self) -> QueueKind {
        if self.has_native_queue() {
            QueueKind::Native
        } else {
            QueueKind::XtCompat
        }
    }

    fn list(&self) -> String {
        self.exec_ok("nft", &["list", "table", "inet", TABLE])
    }

    /// Load nft text with `nft -f -`; return stderr on failure.
    fn nft_load(&self, text: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write nft");
        let out = child.wait_with_output().expect("wait nft");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn run_ok(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().expect("run command");
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn selection() -> Selection {
    Selection {
        addresses: vec![
            "198.18.1.2".parse().unwrap(),
            "2001:2:0:1::/64".parse().unwrap(),
        ],
        tcp_ports: vec!["80".parse().unwrap()],
        udp_ports: vec!["5000-5010".parse().unwrap()],
    }
}

const Q: QueueTarget = QueueTarget {
    first: 0,
    count: 2,
    bypass: true,
    fanout: false,
};

/// Return each chain's header line, e.g. "chain inbound { type filter hook prerouting ...".
fn chain_headers(listing: &str) -> Vec<String> {
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0].starts_with("chain "))
        .map(|w| format!("{} {}", w[0], w[1]))
        .collect()
}

#[test]
fn install_each_role_uses_native_queue_where_the_kernel_has_it_else_xt() {
    let expect = [
        (
            Role::Mbox,
            [
                "chain to_victim { type filter hook forward priority filter; policy accept;",
                "chain from_victim { type filter hook prerouting priority raw; policy accept;",
            ],
        ),
        (
            Role::Victim,
            [
                "chain inbound { type filter hook prerouting priority raw; policy accept;",
                "chain outbound { type filter hook postrouting priority filter; policy accept;",
            ],
        ),
    ];
    for (role, headers) in expect {
        let Some(ns) = Netns::new() else { return };
        let spec = plan(role, &selection(), &Q);
        let kind = ns
            .run(|| install(&spec, QueuePreference::Auto))
            .expect("install");
        assert_eq!(kind, ns.queue_kind());
        assert!(ns.run(|| table_exists(TABLE)).expect("table_exists"));
        let listing = ns.list();
        assert_eq!(chain_headers(&listing), headers, "{listing}");
        let queued = listing
            .lines()
            .filter(|l| {
                l.contains("comment \"mpolice") && (l.contains("queue") || l.contains("NFQUEUE"))
            })
            .count();
        let rules = match role {
            Role::Mbox => 2 + 4,
            Role::Victim => 4 + 4,
        };
        assert_eq!(queued, rules, "{listing}");
        assert!(listing.contains("comment \"mpolice"), "{listing}");
    }
}

#[test]
fn install_is_idempotent_and_atomic() {
    let Some(ns) = Netns::new() else { return };
    let spec = plan(Role::Victim, &selection(), &Q);
    ns.run(|| install(&spec, QueuePreference::Auto))
        .expect("first install");
    let first = ns.list();
    ns.run(|| install(&spec, QueuePreference::Xt))
        .expect("second install");
    assert_eq!(ns.list(), first);
    // A refused batch leaves the previous ruleset untouched: the native expression
    // where the kernel lacks it (where it has it, nothing here is refused).
    if !ns.has_native_queue() {
        let err = ns
            .run(|| install(&spec, QueuePreference::Native))
            .unwrap_err();
        assert!(matches!(err, RulesError::NoNativeQueue), "{err}");
        assert_eq!(ns.list(), first);
    }
}

#[test]
fn native_preference_installs_or_fails_clearly_and_leaves_nothing() {
    let Some(ns) = Netns::new() else { return };
    let spec = plan(Role::Mbox, &selection(), &Q);
    let result = ns.run(|| install(&spec, QueuePreference::Native));
    if ns.has_native_queue() {
        assert_eq!(result.expect("native install"), QueueKind::Native);
        return;
    }
    assert_eq!(
        result.unwrap_err().to_string(),
        "kernel lacks nft_queue (module nft_queue); use queue_kind = xt"
    );
    assert!(!ns.run(|| table_exists(TABLE)).expect("table_exists"));
}

#[test]
fn remove_deletes_only_our_table() {
    let Some(ns) = Netns::new() else { return };
    ns.exec_ok("nft", &["add", "table", "inet", "other"]);
    ns.exec_ok(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "other",
            "c",
            "{ type filter hook input priority 0; }",
        ],
    );
    let spec = plan(Role::Mbox, &selection(), &Q);
    ns.run(|| install(&spec, QueuePreference::Auto))
        .expect("install");
    assert!(ns.run(|| remove(TABLE)).expect("remove"));
    assert!(!ns.run(|| table_exists(TABLE)).expect("table_exists"));
    assert!(!ns.run(|| remove(TABLE)).expect("second remove"));
    let other = ns.exec_ok("nft", &["list", "table", "inet", "other"]);
    assert!(other.contains("chain c"), "{other}");
    assert!(
        ns.run(|| table_exists("other"))
            .expect("table_exists other")
    );
}

#[test]
fn without_cap_net_admin_reports_permission() {
    let Some(ns) = Netns::new() else { return };
    let spec = plan(Role::Victim, &selection(), &Q);
    let err = ns.run(|| {
        testns::drop_net_admin().expect("drop CAP_NET_ADMIN");
        install(&spec, QueuePreference::Auto)
    });
    let err = err.unwrap_err();
    assert_eq!(
        err.to_string(),
        "permission denied: run as root (CAP_NET_ADMIN)"
    );
}

#[test]
fn rendered_text_loads_with_nft() {
    for role in [Role::Mbox, Role::Victim] {
        let Some(ns) = Netns::new() else { return };
        let spec = plan(role, &selection(), &Q);
        // Where the kernel lacks nft_queue the queue statement itself is refused with
        // ENOENT, nothing else; where it has it, the text loads as it is.
        match ns.nft_load(&render(&spec)) {
            Ok(()) => assert!(ns.has_native_queue()),
            Err(e) => assert!(
                !ns.has_native_queue()
                    && e.contains("No such file or directory")
                    && e.contains("queue flags bypass num 0-1"),
                "{e}"
            ),
        }
        let accept = render_accept(&spec);
        ns.nft_load(&accept).expect("accept variant loads");
        ns.nft_load(&accept)
            .expect("accept variant loads again over the existing table");
        let listing = ns.list();
        let names: Vec<_> = spec.chains.iter().map(|c| c.name.as_str()).collect();
        let headers = chain_headers(&listing);
        assert_eq!(headers.len(), 2, "{listing}");
        for ((header, chain), name) in headers.iter().zip(&spec.chains).zip(names) {
            let prio = if chain.priority == 0 { "filter" } else { "raw" };
            let want = format!(
                "chain {name} {{ type filter hook {} priority {prio};",
                chain.hook.keyword()
            );
            assert!(header.starts_with(&want), "{header} vs {want}");
        }
        let rules: usize = spec.chains.iter().map(|c| c.rules.len()).sum();
        assert_eq!(
            listing.matches(" accept comment").count(),
            rules,
            "{listing}"
        );
    }
}

/// Client namespace `c` (198.18.1.1, 2001:2:0:1::1) wired by veth to victim `v` (…::2).
struct Pair {
    c: Netns,
    v: Netns,
}

impl Pair {
    fn new() -> Option<Pair> {
        let c = Netns::new()?;
        let v = Netns::new()?;
        c.exec_ok(
            "ip",
            &[
                "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &v.name,
            ],
        );
        for (ns, dev, last) in [(&c, "veth0", "1"), (&v, "veth1", "2")] {
            ns.exec_ok(
                "ip",
                &["addr", "add", &format!("198.18.1.{last}/24"), "dev", dev],
            );
            ns.exec_ok(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("2001:2:0:1::{last}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            ns.exec_ok("ip", &["link", "set", dev, "up"]);
        }
        Some(Pair { c, v })
    }

    /// Send one UDP datagram from `c` to `to`; report whether `v` received it.
    fn delivered(&self, to: SocketAddr) -> std::io::Result<bool> {
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        let rx = self
            .v
            .run(|| UdpSocket::bind(SocketAddr::new(any.ip(), to.port())))?;
        rx.set_read_timeout(Some(Duration::from_millis(500)))?;
        self.c
            .run(|| UdpSocket::bind(any)?.send_to(b"mpolice", to))?;
        let mut buf = [0u8; 16];
        Ok(rx.recv_from(&mut buf).is_ok())
    }
}

#[test]
fn queued_packets_drop_without_listener_and_pass_with_bypass() {
    let Some(pair) = Pair::new() else { return };
    let v4: SocketAddr = "198.18.1.2:5005".parse().unwrap();
    let v6: SocketAddr = "[2001:2:0:1::2]:5005".parse().unwrap();
    let open4: SocketAddr = "198.18.1.2:6000".parse().unwrap();
    let open6: SocketAddr = "[2001:2:0:1::2]:6000".parse().unwrap();
    // Wait for the link and neighbour discovery, so a lost datagram is down to the rules.
    for to in [open4, open6] {
        assert!(
            (0..10).any(|_| matches!(pair.delivered(to), Ok(true))),
            "no connectivity to {to}"
        );
    }
    let strict = QueueTarget { bypass: false, ..Q };
    let spec = plan(Role::Victim, &selection(), &strict);
    assert_eq!(
        pair.v
            .run(|| install(&spec, QueuePreference::Auto))
            .expect("install"),
        pair.v.queue_kind()
    );
    for to in [v4, v6] {
        assert!(
            !pair.delivered(to).expect("send"),
            "{to}: a protected port must be queued (and dropped)"
        );
    }
    for to in [open4, open6] {
        assert!(
            pair.delivered(to).expect("send"),
            "{to}: unprotected ports pass"
        );
    }
    let spec = plan(Role::Victim, &selection(), &Q);
    pair.v
        .run(|| install(&spec, QueuePreference::Auto))
        .expect("install with bypass");
    for to in [v4, v6] {
        assert!(
            pair.delivered(to).expect("send"),
            "{to}: bypass accepts when nobody is bound"
        );
    }
}

/// The files in `nft-rules/`, loaded with `nft -f` as an operator would: as they are
/// where the kernel has nft_queue; else with each queue statement swapped for `accept`,
/// which proves every other part of them (the engine then installs the xt target).
#[test]
fn nft_rules_files_load_with_nft() {
    let Some(ns) = Netns::new() else { return };
    let native = ns.has_native_queue();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nft-rules");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("nft-rules/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "nft"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let text = if native { text } else { queue_to_accept(&text) };
        ns.nft_load(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let listing = ns.list();
        assert!(
            listing.contains("comment \"mpolice"),
            "{}: {listing}",
            file.display()
        );
    }
}

/// Replace each rule's queue statement (up to its comment) with `accept`.
fn queue_to_accept(text: &str) -> String {
    text.lines()
        .map(|l| match (l.find(" queue "), l.find(" comment ")) {
            (Some(q), Some(c)) if q < c => format!("{} accept{}\n", &l[..q], &l[c..]),
            _ => format!("{l}\n"),
        })
        .collect()
}
