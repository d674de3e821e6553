//! The netns testbed: client ⇄ mbox ⇄ victim as three network namespaces on this machine.
//!
//! Addresses come only from the benchmarking ranges (198.18.0.0/15, 2001:2::/48) and no
//! namespace gets a route to the host's network, so nothing sent here leaves the machine.
//! Every namespace, process and file a `Testbed` creates is removed when it is dropped,
//! also when a test fails and unwinds.
//!
//! ```text
//!  client 198.18.1.2 ──{p}-c0──{p}-m0── mbox 198.18.1.1 / 198.18.2.1 ──{p}-m1──{p}-v0── victim 198.18.2.2
//!         2001:2:0:1::2                      2001:2:0:1::1 / 2001:2:0:2::1                   2001:2:0:2::2
//! ```

mod attack;
mod engine;
mod inject;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

pub use crate::driver::nfqueue::KernelQueueStats as KernelQueue;
use crate::driver::nfqueue::parse_kernel_queue_stats;

pub use attack::{
    BOTTLENECK_LIMIT, BOTTLENECK_MBIT, Background, Iperf3Server, QdiscCounters, SPOOF_V4,
    SourceMeter, iperf3_upload,
};
pub use engine::{EngineProcess, RoleConfig};
pub use inject::inject;
pub use traffic::{
    Capture, FirstPacket, HttpServer, ServedFile, UdpBurst, UdpSink, count_packets, in_netns,
    iperf3_tcp, iperf3_tcp_from, overtaken_by_rewrites, random_file, sha256, upload,
    wait_listening,
};

/// The environment variable that makes a test needing root fail instead of skipping
/// when the run is not root (`.ci/run` sets it, so no kernel test passes unrun).
pub const REQUIRE_ROOT_TESTS: &str = "MPOLICE_REQUIRE_ROOT_TESTS";

/// Whether a test that needs root (namespaces, NFQUEUE, nftables) may run: true as root;
/// otherwise it says it is skipped and returns false, or fails the test when
/// [`REQUIRE_ROOT_TESTS`] is set.
pub fn root_tests_may_run() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ROOT_TESTS).is_none(),
        "this test needs root, and {REQUIRE_ROOT_TESTS} is set: run the tests as root"
    );
    eprintln!("skipped: needs root (set {REQUIRE_ROOT_TESTS} to make this a failure)");
    false
}

/// The victim's IPv4 address.
pub const VICTIM_V4: &str = "198.18.2.2";
/// The victim's IPv6 address.
pub const VICTIM_V6: &str = "2001:2:0:2::2";
/// The mbox's IPv4 address on the client's link (clients address it in redirect mode).
pub const MBOX_V4: &str = "198.18.1.1";
/// The mbox's IPv6 address on the client's link.
pub const MBOX_V6: &str = "2001:2:0:1::1";
/// The client's IPv4 address.
pub const CLIENT_V4: &str = "198.18.1.2";
/// The client's IPv6 address.
pub const CLIENT_V6: &str = "2001:2:0:1::2";

/// The hosts of the testbed (a router only in [`Testbed::up_with_router`], legitimate
/// senders and attackers, numbered from 1, only in [`Testbed::up_attack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Client,
    Mbox,
    Router,
    Victim,
    Legit(u8),
    Attacker(u8),
}

impl Host {
    fn suffix(self) -> String {
        match self {
            Host::Client => "client".into(),
            Host::Mbox => "mbox".into(),
            Host::Router => "router".into(),
            Host::Victim => "victim".into(),
            Host::Legit(i) => format!("legit{i}"),
            Host::Attacker(i) => format!("attack{i}"),
        }
    }
}

/// One link: the two hosts, their interfaces' suffixes and addresses.
type LinkPlan = [(Host, &'static str, &'static str, &'static str); 2];

/// A built testbed; dropping it tears everything down.
pub struct Testbed {
    prefix: String,
    workdir: PathBuf,
    up: Vec<String>,
    links: Vec<LinkPlan>,
    /// Interfaces of links added after the build (host, interface suffix).
    more_links: Vec<(Host, String)>,
}

impl Testbed {
    /// Build the three namespaces, links, addresses and routes under a name prefix
    /// (at most 10 characters, so interface names fit in 15).
    pub fn up(prefix: &str) -> Result<Testbed> {
        Testbed::build(prefix, false)
    }

    /// The same with a router between mbox and victim:
    /// mbox `m1` 198.18.4.1 ⇄ `r0` 198.18.4.2 router 198.18.2.1 `r1` ⇄ `v0` victim
    /// (2001:2:0:4::/64 and 2001:2:0:2::/64), so something beyond the mbox can expire a
    /// stamped packet's TTL.
    pub fn up_with_router(prefix: &str) -> Result<Testbed> {
        Testbed::build(prefix, true)
    }

    fn build(prefix: &str, router: bool) -> Result<Testbed> {
        if prefix.is_empty()
            || prefix.len() > 10
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            bail!("testbed prefix {prefix:?}: use 1 to 10 letters or digits");
        }
        let workdir = std::env::temp_dir().join(format!("mpolice-{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&workdir).context("testbed work directory")?;
        let mut tb = Testbed {
            prefix: prefix.to_string(),
            workdir,
            up: Vec::new(),
            links: Vec::new(),
            more_links: Vec::new(),
        };
        let hosts: &[Host] = if router {
            &[Host::Client, Host::Mbox, Host::Router, Host::Victim]
        } else {
            &[Host::Client, Host::Mbox, Host::Victim]
        };
        // Never take over namespaces of a testbed that may still be running.
        let existing = run("ip", &["netns", "list"])?;
        for &h in hosts {
            let ns = tb.ns(h);
            if existing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
            {
                bail!(
                    "namespace {ns} exists: a testbed with prefix {prefix} is running, or a killed run left it (remove it with `ip netns del {ns}`)"
                );
            }
        }
        for &h in hosts {
            let ns = tb.ns(h);
            run("ip", &["netns", "add", &ns])?;
            tb.up.push(ns.clone());
            tb.write_netns_etc(&ns)?;
            tb.exec(h, &["ip", "link", "set", "lo", "up"])?;
            // Without this, link-local addresses stay tentative for a second and the first
            // IPv6 packet waits a whole neighbour-solicitation retry (1 s) to be forwarded.
            tb.exec(
                h,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.all.accept_dad=0",
                ],
            )?;
        }
        let client_mbox: LinkPlan = [
            (Host::Client, "c0", "198.18.1.2/24", "2001:2:0:1::2/64"),
            (Host::Mbox, "m0", "198.18.1.1/24", "2001:2:0:1::1/64"),
        ];
        let mut links = vec![client_mbox];
        if router {
            links.push([
                (Host::Mbox, "m1", "198.18.4.1/24", "2001:2:0:4::1/64"),
                (Host::Router, "r0", "198.18.4.2/24", "2001:2:0:4::2/64"),
            ]);
            links.push([
                (Host::Router, "r1", "198.18.2.1/24", "2001:2:0:2::1/64"),
                (Host::Victim, "v0", "198.18.2.2/24", "2001:2:0:2::2/64"),
            ]);
        } else {
            links.push([
                (Host::Mbox, "m1", "198.18.2.1/24", "2001:2:0:2::1/64"),
                (Host::Victim, "v0", "198.18.2.2/24", "2001:2:0:2::2/64"),
            ]);
        }
        for link in &links {
            tb.add_link(link)?;
        }
        let mut routes = vec![
            (Host::Client, "default", "198.18.1.1"),
            (Host::Client, "default", "2001:2:0:1::1"),
            (Host::Victim, "default", "198.18.2.1"),
            (Host::Victim, "default", "2001:2:0:2::1"),
        ];
        if router {
            routes.extend([
                (Host::Mbox, "198.18.2.0/24", "198.18.4.2"),
                (Host::Mbox, "2001:2:0:2::/64", "2001:2:0:4::2"),
                (Host::Router, "198.18.1.0/24", "198.18.4.1"),
                (Host::Router, "2001:2:0:1::/64", "2001:2:0:4::1"),
            ]);
        }
        for (h, to, via) in routes {
            let family = if via.contains(':') { "-6" } else { "-4" };
            tb.exec(h, &["ip", family, "route", "add", to, "via", via])?;
        }
        let forwarders: &[Host] = if router {
            &[Host::Mbox, Host::Router]
        } else {
            &[Host::Mbox]
        };
        for &h in forwarders {
            tb.exec(
                h,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                ],
            )?;
        }
        tb.links = links;
        // Prove the path end to end before any engine runs. This also resolves the
        // neighbours: the first forwarded IPv6 packet on fresh links waits about a second.
        for addr in [VICTIM_V4, VICTIM_V6] {
            tb.exec(Host::Client, &["ping", "-c", "1", "-W", "5", addr])
                .with_context(|| format!("testbed: client cannot reach {addr}"))?;
        }
        Ok(tb)
    }

    /// Add a direct link client `c1` ⇄ victim `v1` (198.18.3.0/24, 2001:2:0:3::/64) and
    /// route the victim's replies to the client prefixes over it: an asymmetric path,
    /// clients still reach the victim through the mbox, the victim answers around it.
    pub fn direct_return_path(&mut self) -> Result<()> {
        let link: LinkPlan = [
            (Host::Client, "c1", "198.18.3.2/24", "2001:2:0:3::2/64"),
            (Host::Victim, "v1", "198.18.3.1/24", "2001:2:0:3::1/64"),
        ];
        self.add_link(&link)?;
        for (h, dev, _, _) in link {
            self.offloads_off(h, dev)?;
        }
        self.links.push(link);
        let (c1, v1) = (self.link("c1"), self.link("v1"));
        // The client takes the victim's packets on a link it does not route them by.
        self.exec(
            Host::Client,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                &format!("net.ipv4.conf.{c1}.rp_filter=0"),
            ],
        )?;
        for (prefix, via) in [
            ("198.18.1.0/24", "198.18.3.2"),
            ("2001:2:0:1::/64", "2001:2:0:3::2"),
        ] {
            self.exec(
                Host::Victim,
                &["ip", "route", "add", prefix, "via", via, "dev", &v1],
            )?;
        }
        Ok(())
    }

    /// Name the namespace of a host.
    pub fn ns(&self, h: Host) -> String {
        format!("{}-{}", self.prefix, h.suffix())
    }

    /// Add one veth link between two hosts, addressed and up.
    fn add_link(&self, link: &[(Host, &str, &str, &str); 2]) -> Result<()> {
        let [(ha, a, _, _), (hb, b, _, _)] = *link;
        let (a, b) = (self.link(a), self.link(b));
        let (na, nb) = (self.ns(ha), self.ns(hb));
        run(
            "ip",
            &[
                "link", "add", &a, "netns", &na, "type", "veth", "peer", "name", &b, "netns", &nb,
            ],
        )?;
        for (h, dev, v4, v6) in *link {
            let dev = self.link(dev);
            self.exec(h, &["ip", "addr", "add", v4, "dev", &dev])?;
            self.exec(h, &["ip", "addr", "add", v6, "dev", &dev, "nodad"])?;
            self.exec(h, &["ip", "link", "set", &dev, "up"])?;
        }
        Ok(())
    }

    /// Turn off TSO, GSO and GRO on every link, so captures show packets as a real NIC
    /// would put them on the wire instead of the kernel's super-packets.
    pub fn wire_sized(&self) -> Result<()> {
        for &(h, dev, _, _) in self.links.iter().flatten() {
            self.offloads_off(h, dev)?;
        }
        for (h, dev) in &self.more_links {
            self.offloads_off(*h, dev)?;
        }
        Ok(())
    }

    /// Turn off TSO, GSO and GRO on one interface.
    fn offloads_off(&self, h: Host, dev: &str) -> Result<()> {
        let dev = self.link(dev);
        self.exec(
            h,
            &[
                "ethtool", "-K", &dev, "tso", "off", "gso", "off", "gro", "off",
            ],
        )?;
        Ok(())
    }

    /// Name a host's interface: `c0` (client), `m0`/`m1` (mbox), `v0` (victim); `r0`/`r1`
    /// (router); `c1` and `v1` once there is a direct return path.
    pub fn link(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A directory for this testbed's files, removed at teardown.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Build a command that runs inside a host's namespace.
    pub fn command(&self, h: Host, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(h)]).args(argv);
        c
    }

    /// Run a command inside a host's namespace; fail with its stderr if it fails.
    pub fn exec(&self, h: Host, argv: &[&str]) -> Result<String> {
        checked(self.command(h, argv), &argv.join(" "))
    }

    /// Read the kernel's NFQUEUE counters in a host's namespace.
    pub fn kernel_queues(&self, h: Host) -> Result<Vec<KernelQueue>> {
        let text = self.exec(h, &["cat", "/proc/net/netfilter/nfnetlink_queue"])?;
        Ok(parse_kernel_queue_stats(&text)?)
    }

    /// List the nftables tables in a host's namespace, as `family name` lines.
    pub fn nft_tables(&self, h: Host) -> Result<Vec<String>> {
        let text = self.exec(h, &["nft", "list", "tables"])?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("table "))
            .map(str::to_string)
            .collect())
    }

    /// Give a namespace its own resolv.conf and hosts, so servers that look up their own
    /// name ask a resolver inside the namespace and nothing goes out of the testbed.
    fn write_netns_etc(&self, ns: &str) -> Result<()> {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        std::fs::write(
            dir.join("hosts"),
            format!(
                "127.0.0.1 localhost {ns}\n::1 localhost ip6-localhost\n\
                 {CLIENT_V4} client\n{CLIENT_V6} client\n{VICTIM_V4} victim\n{VICTIM_V6} victim\n"
            ),
        )?;
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.up.iter().rev() {
            // Anything still running inside (a server, an engine) goes with its namespace.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = run_quiet("kill", &["-9", pid]);
                }
            }
            let _ = run_quiet("ip", &["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

fn run(prog: &str, args: &[&str]) -> Result<String> {
    let mut c = Command::new(prog);
    c.args(args);
    checked(c, &format!("{prog} {}", args.join(" ")))
}

fn run_quiet(prog: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(prog).args(args).stderr(Stdio::null()).output()
}

fn checked(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
