//! Root tests: each runs in throwaway network namespaces (skipped when not root).
//!
//! Netlink calls run on a thread that joined the namespace with setns; the `nft` CLI runs
//! through `ip netns exec`. Addresses come only from 198.18.0.0/15 and 2001:2::/48.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::render::render_accept;
use super::*;
use crate::driver::nfqueue::{Incoming, Queue as NfQueue, QueueConfig, Verdict};
use crate::driver::testns;
use crate::trace::Filter;
use crate::wire::build::Builder;
use crate::wire::tcp;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace deleted on drop, even when the test fails.
pub(super) struct Netns {
    pub(super) name: String,
}

impl Netns {
    /// Create a namespace with lo up, or None when not root (the test is then skipped).
    pub(super) fn new() -> Option<Netns> {
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
    pub(super) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        testns::in_netns(&self.name, f).expect("enter the test namespace")
    }

    pub(super) fn exec(&self, prog: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name, prog];
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .output()
            .expect("run ip netns exec")
    }

    pub(super) fn exec_ok(&self, prog: &str, args: &[&str]) -> String {
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
    pub(super) fn has_native_queue(&self) -> bool {
        let probe = "table inet probe { chain c { type filter hook input priority 0; queue num 99 bypass; } }";
        let ok = self.nft_load(probe).is_ok();
        let _ = self.nft_load("delete table inet probe");
        ok
    }

    /// The queue expression `install` picks here.
    pub(super) fn queue_kind(&self) -> QueueKind {
        if self.has_native_queue() {
            QueueKind::Native
        } else {
            QueueKind::XtCompat
        }
    }

    pub(super) fn list(&self) -> String {
        self.exec_ok("nft", &["list", "table", "inet", TABLE])
    }

    /// Load nft text with `nft -f -`; return stderr on failure.
    pub(super) fn nft_load(&self, text: &str) -> Result<(), String> {
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
pub(super) fn chain_headers(listing: &str) -> Vec<String> {
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
                "chain outbound { type filter hook postrouting priority 150; policy accept;",
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
        // Two queues: every rule twice, once per client hash value.
        let rules = match role {
            Role::Mbox => 2 * (2 + 4),
            Role::Victim => 2 * (4 + 4),
        };
        assert_eq!(queued, rules, "{listing}");
        // What the kernel holds (the hash included, as nft reads it back) is what
        // `rules show` prints, up to the queue statement.
        assert_eq!(
            rule_matches(&listing),
            rule_matches(&render(&spec)),
            "{listing}"
        );
    }
}

/// Return each rule's match part (before its queue or accept statement) and comment; for
/// a rule that ends otherwise (the channel's counted drops), all of it before the comment.
pub(super) fn rule_matches(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let c = l.find(" comment \"mpolice")?;
            let end = [" queue ", " accept"]
                .iter()
                .filter_map(|stmt| l[..c].find(stmt))
                .min()
                .unwrap_or(c);
            Some((l[..end].trim().to_owned(), l[c..].to_owned()))
        })
        .collect()
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

/// Tracing's kernel path: the marking chains load as text and as netlink, and set
/// `meta nftrace` on traffic to and from each protected prefix.
#[test]
fn trace_chains_load_and_mark_protected_traffic() {
    let Some(ns) = Netns::new() else { return };
    let mut spec = plan(Role::Victim, &selection(), &Q);
    add_trace_chains(&mut spec, &selection(), &Filter::default(), &Q);
    ns.nft_load(&render_accept(&spec)).expect("text loads");
    let marks = 2 * 2 * selection().addresses.len();
    assert_eq!(ns.list().matches("meta nftrace set 1").count(), marks);
    ns.run(|| install(&spec, QueuePreference::Auto))
        .expect("netlink install");
    let listing = ns.list();
    assert_eq!(
        listing.matches("meta nftrace set 1").count(),
        marks,
        "{listing}"
    );
    assert!(listing.contains("hook output priority -400"), "{listing}");
    // A filter's host and ports load too, both ways.
    let filter = Filter {
        hosts: vec!["198.18.0.0/24".parse().unwrap()],
        ports: vec!["8080-8081".parse().unwrap()],
        ..Filter::default()
    };
    let mut spec = plan(Role::Victim, &selection(), &Q);
    add_trace_chains(&mut spec, &selection(), &filter, &Q);
    let marks = trace_marks(&selection(), &filter).len();
    assert!(marks > 0);
    let ns = Netns::new().expect("a second namespace");
    ns.nft_load(&render_accept(&spec)).expect("text loads");
    assert_eq!(ns.list().matches("meta nftrace set 1").count(), 2 * marks);
    ns.run(|| install(&spec, QueuePreference::Auto))
        .expect("netlink install");
    let listing = ns.list();
    assert_eq!(listing.matches("meta nftrace set 1").count(), 2 * marks);
    assert!(listing.contains("tcp dport 8080-8081"), "{listing}");
}

/// Port forwarding and refusals: the nat chain loads as text and as netlink, one
/// redirect per family and outgoing port, each matching the engine's mark; so does the
/// chain that resets refused SYNs.
#[test]
fn the_port_forward_chain_loads_and_redirects_marked_syns() {
    let Some(ns) = Netns::new() else { return };
    let mut spec = plan(Role::Victim, &selection(), &Q);
    add_forward_chain(&mut spec, &[(80, vec![8082, 80, 8081])], &Q);
    add_refuse_chain(&mut spec, &Q);
    ns.nft_load(&render_accept(&spec)).expect("text loads");
    assert_eq!(ns.list().matches("redirect to :").count(), 4);
    assert_eq!(ns.list().matches("reject with tcp reset").count(), 2);
    let ns = Netns::new().expect("a second namespace");
    ns.run(|| install(&spec, QueuePreference::Auto))
        .expect("netlink install");
    let listing = ns.list();
    assert!(
        listing.contains("type nat hook prerouting priority dstnat"),
        "{listing}"
    );
    assert!(
        listing.contains("type filter hook prerouting priority -250"),
        "{listing}"
    );
    assert_eq!(
        listing.matches("meta mark 0x4d520000").count(),
        2,
        "{listing}"
    );
    for to in [8081, 8082] {
        let rule = format!(
            "meta mark 0x{:08x} tcp dport 80 redirect to :{to}",
            0x4d50_0000 | to
        );
        assert_eq!(listing.matches(&rule).count(), 2, "{rule}\n{listing}");
    }
}

/// A chain's rules replaced in one batch: the new ones in place of the old, the other
/// chains untouched.
#[test]
fn a_chains_rules_are_replaced_in_one_batch() {
    let Some(ns) = Netns::new() else { return };
    let mut spec = plan(Role::Victim, &selection(), &Q);
    add_forward_chain(&mut spec, &[(80, vec![8081])], &Q);
    let kind = ns
        .run(|| install(&spec, QueuePreference::Auto))
        .expect("install");
    let mut new = plan(Role::Victim, &selection(), &Q);
    add_forward_chain(&mut new, &[(80, vec![8082, 8083])], &Q);
    let chain = new.chains.last().unwrap();
    ns.run(|| replace_rules(TABLE, chain, kind))
        .expect("replace");
    let listing = ns.list();
    assert_eq!(listing.matches("redirect to :8081").count(), 0, "{listing}");
    assert_eq!(listing.matches("redirect to :8082").count(), 2, "{listing}");
    assert_eq!(listing.matches("redirect to :8083").count(), 2, "{listing}");
    assert_eq!(
        listing.matches(" queue ").count() + listing.matches("NFQUEUE").count(),
        16,
        "{listing}"
    );
    // Emptied, the chain stays.
    let mut none = plan(Role::Victim, &selection(), &Q);
    add_forward_chain(&mut none, &[], &Q);
    ns.run(|| replace_rules(TABLE, none.chains.last().unwrap(), kind))
        .expect("empty");
    let listing = ns.list();
    assert!(
        listing.contains("chain port_forward") && !listing.contains("redirect"),
        "{listing}"
    );
}

/// A reload's rules in one batch: a chain in both specs gets the new rules, a new chain
/// is added, a chain the new spec lacks stays, emptied (its hook registered).
#[test]
fn a_reload_replaces_every_chain_in_one_batch() {
    let Some(ns) = Netns::new() else { return };
    let mut old = plan(Role::Victim, &selection(), &Q);
    add_forward_chain(&mut old, &[(80, vec![8081])], &Q);
    let kind = ns
        .run(|| install(&old, QueuePreference::Auto))
        .expect("install");
    let wider = Selection {
        tcp_ports: vec!["80".parse().unwrap(), "443".parse().unwrap()],
        ..selection()
    };
    let new = plan(Role::Victim, &wider, &Q);
    let now = ns
        .run(|| replace_chains(&old, &new, kind))
        .expect("replace");
    let listing = ns.list();
    assert_eq!(listing.matches("dport 443").count(), 4, "{listing}");
    assert!(
        listing.contains("chain port_forward") && !listing.contains("redirect"),
        "{listing}"
    );
    assert_eq!(now.chains.len(), 3, "{now:?}");
    assert!(now.chains[2].rules.is_empty());
    // Back again: the emptied chain is filled, not added twice.
    let mut back = plan(Role::Victim, &selection(), &Q);
    add_forward_chain(&mut back, &[(80, vec![8082])], &Q);
    ns.run(|| replace_chains(&now, &back, kind))
        .expect("replace back");
    let listing = ns.list();
    assert_eq!(listing.matches("dport 443").count(), 0, "{listing}");
    assert_eq!(listing.matches("redirect to :8082").count(), 2, "{listing}");
    // A chain cannot move to another hook while the engine runs.
    let mut moved = back.clone();
    moved.chains[0].priority += 1;
    let e = ns.run(|| replace_chains(&back, &moved, kind)).unwrap_err();
    assert!(e.to_string().contains("cannot move"), "{e}");
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
                    && e.contains("queue flags bypass num 1 comment"),
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
            let prio = match chain.priority {
                0 => "filter".to_owned(),
                -300 => "raw".to_owned(),
                p => p.to_string(),
            };
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
        assert_eq!(rule_matches(&listing), rule_matches(&accept), "{listing}");
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
            .run(|| bind_again(SocketAddr::new(any.ip(), to.port())))?;
        rx.set_read_timeout(Some(Duration::from_millis(500)))?;
        self.c
            .run(|| UdpSocket::bind(any)?.send_to(b"mpolice", to))?;
        let mut buf = [0u8; 16];
        Ok(rx.recv_from(&mut buf).is_ok())
    }
}

/// Bind `at`, retrying briefly while the port is still held: the socket the last probe
/// closed can live on a moment in a child another test thread forked and has not yet
/// exec'd (CI saw `AddrInUse` here once).
fn bind_again(at: SocketAddr) -> std::io::Result<UdpSocket> {
    let mut tries = 0;
    loop {
        match UdpSocket::bind(at) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
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
    assert!(files.len() >= 3, "{files:?}");
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
pub(super) fn queue_to_accept(text: &str) -> String {
    text.lines()
        .map(|l| match (l.find(" queue "), l.find(" comment ")) {
            (Some(q), Some(c)) if q < c => format!("{} accept{}\n", &l[..q], &l[c..]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// Client `c` ⇄ mbox `m` ⇄ victim side `v`. `c` and `v` send hand-built packets through
/// raw sockets, so `c` speaks for many client addresses and `v` for the protected ones;
/// `m` forwards (its `forward` chains see the packets) and has permanent neighbours.
pub(super) struct Path {
    pub(super) c: Netns,
    pub(super) m: Netns,
    pub(super) v: Netns,
}

/// The mbox's addresses on the client's and the victim's link.
const M_CLIENT_SIDE: [&str; 2] = ["198.18.1.254", "2001:2:0:1::fe"];
const M_VICTIM_SIDE: [&str; 2] = ["198.18.2.254", "2001:2:0:2::fe"];

impl Path {
    pub(super) fn new() -> Option<Path> {
        let path = Path {
            c: Netns::new()?,
            m: Netns::new()?,
            v: Netns::new()?,
        };
        let (c, m, v) = (&path.c, &path.m, &path.v);
        // (far end, its device, mbox device, mbox MAC, far subnet, mbox addresses, routes)
        let links = [
            (c, "cm", "mc", "02:00:00:00:01:fe", 1, M_CLIENT_SIDE, 2),
            (v, "vm", "mv", "02:00:00:00:02:fe", 2, M_VICTIM_SIDE, 1),
        ];
        for (far, dev, mdev, mac, net, [m4, m6], other) in links {
            far.exec_ok(
                "ip",
                &[
                    "link", "add", dev, "type", "veth", "peer", "name", mdev, "netns", &m.name,
                ],
            );
            m.exec_ok("ip", &["link", "set", mdev, "address", mac]);
            m.exec_ok("ip", &["addr", "add", &format!("{m4}/24"), "dev", mdev]);
            m.exec_ok(
                "ip",
                &["addr", "add", &format!("{m6}/64"), "dev", mdev, "nodad"],
            );
            m.exec_ok("ip", &["link", "set", mdev, "up"]);
            let (a4, a6) = (
                format!("198.18.{net}.1/24"),
                format!("2001:2:0:{net}::1/64"),
            );
            far.exec_ok("ip", &["addr", "add", &a4, "dev", dev]);
            far.exec_ok("ip", &["addr", "add", &a6, "dev", dev, "nodad"]);
            far.exec_ok("ip", &["link", "set", dev, "up"]);
            // Everything beyond the mbox goes through it, with no neighbour discovery.
            for (gw, to) in [
                (m4, format!("198.18.{other}.0/24")),
                (m6, format!("2001:2:0:{other}::/64")),
            ] {
                far.exec_ok(
                    "ip",
                    &[
                        "neigh",
                        "replace",
                        gw,
                        "lladdr",
                        mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ],
                );
                far.exec_ok("ip", &["route", "add", &to, "via", gw, "dev", dev]);
            }
        }
        m.exec_ok(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        Some(path)
    }
}

/// A raw socket in `ns` that sends whole IP packets as built (IPv4 `IPPROTO_RAW` implies
/// `IP_HDRINCL`; IPv6 needs `IPV6_HDRINCL`), routed by their destination.
pub(super) fn raw_sender(ns: &Netns, v6: bool) -> OwnedFd {
    /// `IPV6_HDRINCL` from linux/in6.h (not in every libc release).
    const IPV6_HDRINCL: libc::c_int = 36;
    ns.run(|| {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        if v6 {
            let on: libc::c_int = 1;
            // SAFETY: `on` outlives the call and its length is exact.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IPV6,
                    IPV6_HDRINCL,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IPV6_HDRINCL: {}", std::io::Error::last_os_error());
        }
        sock
    })
}

/// Send one packet built for `dst` through `sock` (port 0: on an IPv6 raw socket a port
/// would be read as the protocol).
pub(super) fn send_raw(sock: &OwnedFd, dst: IpAddr, packet: &[u8]) {
    let sent = match dst {
        IpAddr::V4(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: buffer and address outlive the call; their lengths are exact.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: as above.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    assert_eq!(
        sent,
        packet.len() as isize,
        "sendto {dst}: {}",
        std::io::Error::last_os_error()
    );
}

/// The source and destination addresses of an IPv4 or IPv6 packet.
pub(super) fn addresses(p: &[u8]) -> (IpAddr, IpAddr) {
    match p[0] >> 4 {
        4 => (
            IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).unwrap()),
            IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).unwrap()),
        ),
        _ => (
            IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap()),
            IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap()),
        ),
    }
}

/// The packets of one client's exchange with one protected address, each with whether
/// the mbox queues it. From the client: TCP and UDP to protected ports, UDP to another
/// port, an ICMP echo request, an ICMP error and a packet of protocol 253 (experimental),
/// all queued once (`to_victim` matches every protocol and port; the ICMP error chain
/// leaves errors to protected addresses to it). Back to it: TCP and UDP from protected
/// ports and an ICMP error, queued; UDP from another port, not (`from_victim` matches the
/// protected ports only).
fn exchange(client: IpAddr, server: IpAddr, n: u16) -> Vec<(Vec<u8>, bool)> {
    let (echo, error, icmp) = if client.is_ipv4() {
        (8, 3, 1)
    } else {
        (128, 1, 58)
    };
    let port = 40000 + n;
    // An error quotes the packet at fault; its content does not matter to the rules.
    let mut quote = vec![error, 0, 0, 0, 0, 0, 0, 0];
    quote.extend_from_slice(&Builder::udp(client, server, port, 5001).build());
    let mut quote_back = vec![error, 0, 0, 0, 0, 0, 0, 0];
    quote_back.extend_from_slice(&Builder::udp(server, client, 5001, port).build());
    vec![
        (
            Builder::tcp(client, server, port, 80)
                .flags(tcp::SYN)
                .build(),
            true,
        ),
        (Builder::udp(client, server, port, 5001).build(), true),
        (Builder::udp(client, server, port, 9999).build(), true),
        (
            Builder::raw(client, server, icmp)
                .payload(&[echo, 0, 0, 0, 0, 1, 0, 1])
                .build(),
            true,
        ),
        (
            Builder::raw(client, server, 253)
                .payload(b"experimental")
                .build(),
            true,
        ),
        (
            Builder::raw(client, server, icmp)
                .payload(&quote_back)
                .build(),
            true,
        ),
        (
            Builder::tcp(server, client, 80, port)
                .flags(tcp::SYN | tcp::ACK)
                .build(),
            true,
        ),
        (Builder::udp(server, client, 5001, port).build(), true),
        (
            Builder::raw(server, client, icmp).payload(&quote).build(),
            true,
        ),
        (Builder::udp(server, client, 9999, port).build(), false),
    ]
}

/// Per client address: the queues its packets reached, and how many packets.
type Seen = BTreeMap<IpAddr, (BTreeSet<u16>, usize)>;

/// Install the mbox's ruleset (with its ICMP error chain) for `count` queues from 3 on,
/// bind them, send every client's exchanges with two protected addresses of its family,
/// and return where each client's packets went (None when not root).
fn queues_per_client(count: u16) -> Option<Seen> {
    let path = Path::new()?;
    let protected: Vec<IpAddr> = ["198.18.2.2", "198.18.2.3", "2001:2:0:2::2", "2001:2:0:2::3"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let sel = Selection {
        addresses: protected
            .iter()
            .map(|a| a.to_string().parse().unwrap())
            .collect(),
        tcp_ports: vec!["80".parse().unwrap()],
        udp_ports: vec!["5000-5010".parse().unwrap()],
    };
    let q = QueueTarget {
        first: 3,
        count,
        bypass: false,
        fanout: false,
    };
    let mut spec = plan(Role::Mbox, &sel, &q);
    add_icmp_error_chain(&mut spec, &sel, &q);
    path.m
        .run(|| install(&spec, QueuePreference::Auto))
        .expect("install");
    let mut queues: Vec<NfQueue> = (q.first..q.first + count)
        .map(|num| {
            let cfg = QueueConfig {
                rcvbuf_bytes: 1 << 20,
                recv_timeout: Duration::from_millis(50),
                ..QueueConfig::new(num)
            };
            path.m.run(|| NfQueue::open(&cfg)).expect("bind the queue")
        })
        .collect();

    let clients: Vec<IpAddr> = (10..18)
        .flat_map(|i| [format!("198.18.1.{i}"), format!("2001:2:0:1::{i:x}")])
        .map(|a| a.parse().unwrap())
        .collect();
    let senders = [
        (raw_sender(&path.c, false), raw_sender(&path.v, false)),
        (raw_sender(&path.c, true), raw_sender(&path.v, true)),
    ];
    let mut queued = 0;
    for (n, &client) in (0u16..).zip(&clients) {
        let (from_client, from_victim) = &senders[usize::from(client.is_ipv6())];
        for &server in protected.iter().filter(|s| s.is_ipv4() == client.is_ipv4()) {
            for (p, is_queued) in exchange(client, server, n) {
                let (src, dst) = addresses(&p);
                let sock = if src == client {
                    from_client
                } else {
                    from_victim
                };
                send_raw(sock, dst, &p);
                queued += usize::from(is_queued);
            }
        }
    }

    // Read until every packet arrived and the queues stay quiet; drop each one.
    let mut seen = Seen::new();
    let mut received = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut quiet_rounds = 0;
    while quiet_rounds < 3 && std::time::Instant::now() < deadline {
        let before = received;
        for queue in &mut queues {
            while let Some(incoming) = queue.recv(true).expect("recv") {
                let Incoming::Packet(msg) = incoming else {
                    panic!("unreadable packet: {incoming:?}")
                };
                let packet = queue.payload(&msg);
                let (src, dst) = addresses(packet);
                let client = if protected.contains(&src) { dst } else { src };
                let entry = seen.entry(client).or_default();
                entry.0.insert(queue.num());
                entry.1 += 1;
                received += 1;
                // ICMP is accepted, so an error that another chain queues again arrives
                // twice; the rest is dropped here.
                let icmp = [1, 58].contains(&packet[if src.is_ipv4() { 9 } else { 6 }]);
                let verdict = if icmp { Verdict::Accept } else { Verdict::Drop };
                queue.verdict(msg.id, verdict, None).expect("verdict");
            }
        }
        quiet_rounds = if received == before && received >= queued {
            quiet_rounds + 1
        } else {
            0
        };
    }
    assert_eq!(received, queued, "each packet to be queued, queued once");
    Some(seen)
}

/// Every packet the mbox queues between one client and the protected addresses, both
/// ways and of every protocol, reaches one queue; different clients spread over queues.
#[test]
fn each_client_meets_one_queue_both_ways_and_clients_spread() {
    for count in [2, 4] {
        let Some(seen) = queues_per_client(count) else {
            return;
        };
        assert_eq!(seen.len(), 16, "{seen:?}");
        for (client, (queues, packets)) in &seen {
            // Two protected addresses, nine queued packets each (six to, three from).
            assert_eq!(*packets, 18, "{client}: {seen:?}");
            assert_eq!(queues.len(), 1, "{client} reached several queues: {seen:?}");
            assert!(queues.iter().all(|&q| (3..3 + count).contains(&q)));
        }
        let used: BTreeSet<u16> = seen.values().flat_map(|(q, _)| q.iter().copied()).collect();
        assert!(used.len() > 1, "{count} queues, all clients on {used:?}");
        eprintln!("{count} queues: clients on queues {used:?}");
    }
}
