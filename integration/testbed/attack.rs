//! The attack testbed: legitimate senders and attackers, each in its own namespace with
//! its own link to the mbox, and a bottleneck behind the mbox.
//!
//! ```text
//!  legit1  198.18.11.2 ──l1─ml1──┐
//!   ...                          │
//!  legit4  198.18.14.2 ──l4─ml4──┤
//!  attack1 198.18.21.2 ──a1─ma1──┼── mbox ──m1═[htb 50 Mbit/s, pfifo]═v0── victim 198.18.2.2
//!   ...                          │   (blackhole route for the spoofed 198.19.0.0/16)
//!  attack4 198.18.24.2 ──a4─ma4──┤
//!  client  198.18.1.2  ──c0─m0───┘
//! ```
//!
//! Sender n's link is 198.18.{10+n}.0/24 and 2001:2:0:1n::/64 (attacker n: 20+n and
//! 2001:2:0:2n::/64), the mbox .1 and ::1, the sender .2 and ::2. Every link runs
//! without TSO, GSO and GRO, so the bottleneck's pfifo counts packets as they would be
//! on a wire. The victim's replies to spoofed sources reach the mbox and vanish there,
//! as they would in the Internet.

use std::collections::BTreeMap;
use std::fs::File;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Host, Testbed, VICTIM_V4, wait_listening};

/// The bottleneck's rate behind the mbox, Mbit/s.
pub const BOTTLENECK_MBIT: u32 = 50;
/// The bottleneck's pfifo limit in packets: about 100 ms of full-size frames at 50 Mbit/s.
pub const BOTTLENECK_LIMIT: u32 = 400;
/// Where spoofed flood sources come from; the mbox routes this prefix into a blackhole.
pub const SPOOF_V4: &str = "198.19.0.0/16";

impl Host {
    /// The third octet of a sending host's network (IPv4) and its IPv6 /64's fourth group.
    fn sender_net(self) -> Option<u8> {
        match self {
            Host::Client => Some(1),
            Host::Legit(i) if (1..=9).contains(&i) => Some(10 + i),
            Host::Attacker(i) if (1..=9).contains(&i) => Some(20 + i),
            _ => None,
        }
    }

    /// A sending host's IPv4 address (client, legitimate senders, attackers).
    pub fn sender_v4(self) -> Option<String> {
        self.sender_net().map(|n| format!("198.18.{n}.2"))
    }

    /// A sending host's IPv6 address.
    pub fn sender_v6(self) -> Option<String> {
        self.sender_net().map(|n| format!("2001:2:0:{n}::2"))
    }

    /// The interface names of a sender's link: its own, then the mbox's.
    fn sender_links(self) -> Option<(String, String)> {
        match self {
            Host::Legit(i) => Some((format!("l{i}"), format!("ml{i}"))),
            Host::Attacker(i) => Some((format!("a{i}"), format!("ma{i}"))),
            _ => None,
        }
    }
}

impl Testbed {
    /// The client ⇄ mbox ⇄ victim testbed plus `legit` legitimate senders and `attackers`
    /// attackers (1 to 9 each), each in its own namespace linked to the mbox, with the
    /// spoofed prefix [`SPOOF_V4`] blackholed at the mbox and offloads off everywhere.
    /// No bottleneck yet: see [`Testbed::bottleneck`].
    pub fn up_attack(prefix: &str, legit: u8, attackers: u8) -> Result<Testbed> {
        if !(1..=9).contains(&legit) || attackers > 9 {
            bail!("attack testbed: 1 to 9 legitimate senders and at most 9 attackers");
        }
        let mut tb = Testbed::build(prefix, false)?;
        let hosts: Vec<Host> = (1..=legit)
            .map(Host::Legit)
            .chain((1..=attackers).map(Host::Attacker))
            .collect();
        let existing = super::run("ip", &["netns", "list"])?;
        for &h in &hosts {
            let ns = tb.ns(h);
            if existing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
            {
                bail!("namespace {ns} exists: remove it with `ip netns del {ns}`");
            }
        }
        for &h in &hosts {
            tb.add_sender(h)?;
        }
        tb.exec(
            Host::Mbox,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        tb.exec(Host::Mbox, &["ip", "route", "add", "blackhole", SPOOF_V4])?;
        tb.wire_sized()?;
        for &h in &hosts {
            tb.exec(h, &["ping", "-c", "1", "-W", "5", VICTIM_V4])
                .with_context(|| format!("testbed: {} cannot reach {VICTIM_V4}", tb.ns(h)))?;
        }
        Ok(tb)
    }

    /// Add one sending host: its namespace, its link to the mbox, its default routes.
    fn add_sender(&mut self, h: Host) -> Result<()> {
        let (Some(n), Some((own, mbox))) = (h.sender_net(), h.sender_links()) else {
            bail!("{h:?} is not a sending host");
        };
        let ns = self.ns(h);
        super::run("ip", &["netns", "add", &ns])?;
        self.up.push(ns.clone());
        self.write_netns_etc(&ns)?;
        self.exec(h, &["ip", "link", "set", "lo", "up"])?;
        self.exec(
            h,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ],
        )?;
        let (s4, s6) = (format!("198.18.{n}.2/24"), format!("2001:2:0:{n}::2/64"));
        let (m4, m6) = (format!("198.18.{n}.1/24"), format!("2001:2:0:{n}::1/64"));
        self.add_link(&[(h, &own, &s4, &s6), (Host::Mbox, &mbox, &m4, &m6)])?;
        self.more_links.push((h, own));
        self.more_links.push((Host::Mbox, mbox));
        self.exec(
            h,
            &[
                "ip",
                "-4",
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{n}.1"),
            ],
        )?;
        self.exec(
            h,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("2001:2:0:{n}::1"),
            ],
        )?;
        Ok(())
    }

    /// Put the bottleneck on the mbox's link to the victim: htb at `mbit` Mbit/s with a
    /// pfifo leaf of `limit` packets (this kernel has htb, tbf, pfifo, bfifo and red; no
    /// fq_codel, sfq or netem).
    pub fn bottleneck(&self, mbit: u32, limit: u32) -> Result<()> {
        let dev = self.link("m1");
        let rate = format!("{mbit}mbit");
        self.exec(
            Host::Mbox,
            &[
                "tc", "qdisc", "replace", "dev", &dev, "root", "handle", "1:", "htb", "default",
                "1",
            ],
        )?;
        self.exec(
            Host::Mbox,
            &[
                "tc", "class", "add", "dev", &dev, "parent", "1:", "classid", "1:1", "htb", "rate",
                &rate, "ceil", &rate,
            ],
        )?;
        self.exec(
            Host::Mbox,
            &[
                "tc",
                "qdisc",
                "add",
                "dev",
                &dev,
                "parent",
                "1:1",
                "handle",
                "10:",
                "pfifo",
                "limit",
                &limit.to_string(),
            ],
        )?;
        Ok(())
    }

    /// The bottleneck's pfifo counters (cumulative since it was added).
    pub fn bottleneck_counters(&self) -> Result<QdiscCounters> {
        let dev = self.link("m1");
        let text = self.exec(
            Host::Mbox,
            &["tc", "-s", "-j", "qdisc", "show", "dev", &dev],
        )?;
        let json: serde_json::Value = serde_json::from_str(&text).context("tc -j output")?;
        let leaf = json
            .as_array()
            .and_then(|a| a.iter().find(|q| q["kind"] == "pfifo"))
            .context("no pfifo qdisc on the bottleneck")?;
        let n = |k: &str| leaf[k].as_u64().unwrap_or(0);
        Ok(QdiscCounters {
            bytes: n("bytes"),
            packets: n("packets"),
            drops: n("drops"),
        })
    }
}

/// Counters of one qdisc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QdiscCounters {
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
}

impl std::ops::Sub for QdiscCounters {
    type Output = QdiscCounters;
    fn sub(self, o: QdiscCounters) -> QdiscCounters {
        QdiscCounters {
            bytes: self.bytes.saturating_sub(o.bytes),
            packets: self.packets.saturating_sub(o.packets),
            drops: self.drops.saturating_sub(o.drops),
        }
    }
}

/// Byte and packet counters per source at a host, in nft table `inet attackmeter`
/// (prerouting, priority -400: before the engine, conntrack or anything else), plus a
/// sink that drops UDP to one port at input, so a flood draws no ICMP errors.
pub struct SourceMeter {
    host: Host,
}

/// The meter's table: its own, never the engine's `inet mpolice`.
const METER_TABLE: &str = "attackmeter";

impl SourceMeter {
    /// Count each `(name, nft match)` (e.g. `("l1", "ip saddr 198.18.11.2")`) at `host`.
    pub fn install(
        tb: &Testbed,
        host: Host,
        sources: &[(String, String)],
        sink_udp_port: Option<u16>,
    ) -> Result<SourceMeter> {
        let mut text = format!("table inet {METER_TABLE} {{\n");
        for (name, _) in sources {
            text.push_str(&format!("  counter {name} {{ }}\n"));
        }
        text.push_str(
            "  chain count {\n    type filter hook prerouting priority -400; policy accept;\n",
        );
        for (name, expr) in sources {
            text.push_str(&format!("    {expr} counter name \"{name}\"\n"));
        }
        text.push_str("  }\n");
        if let Some(port) = sink_udp_port {
            text.push_str(&format!(
                "  chain sink {{\n    type filter hook input priority 0; policy accept;\n    udp dport {port} drop\n  }}\n"
            ));
        }
        text.push_str("}\n");
        let file = tb.workdir().join("attackmeter.nft");
        std::fs::write(&file, text)?;
        let f = file.to_str().context("path is not UTF-8")?;
        tb.exec(host, &["nft", "-f", f])?;
        Ok(SourceMeter { host })
    }

    /// Read every counter: name → (packets, bytes).
    pub fn read(&self, tb: &Testbed) -> Result<BTreeMap<String, (u64, u64)>> {
        let text = tb.exec(
            self.host,
            &[
                "nft",
                "-j",
                "list",
                "counters",
                "table",
                "inet",
                METER_TABLE,
            ],
        )?;
        let json: serde_json::Value = serde_json::from_str(&text).context("nft -j output")?;
        let mut out = BTreeMap::new();
        for item in json["nftables"].as_array().into_iter().flatten() {
            let c = &item["counter"];
            if let Some(name) = c["name"].as_str() {
                let n = |k: &str| c[k].as_u64().unwrap_or(0);
                out.insert(name.to_string(), (n("packets"), n("bytes")));
            }
        }
        Ok(out)
    }
}

/// An `iperf3 -s` on one port of a host, serving test after test; killed on drop.
pub struct Iperf3Server {
    child: Child,
}

impl Iperf3Server {
    /// Start it and wait until it listens.
    pub fn start(tb: &Testbed, host: Host, port: u16) -> Result<Iperf3Server> {
        let child = tb
            .command(host, &["iperf3", "-s", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        let server = Iperf3Server { child };
        wait_listening(tb, host, port)?;
        Ok(server)
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Upload with iperf3 from `from` to `to`:`port` for `omit` + `secs` seconds (one TCP
/// connection); return the bits per second the server received (goodput) in the last
/// `secs`. The control connection may take `connect_secs` to set up.
pub fn iperf3_upload(
    tb: &Testbed,
    from: Host,
    to: &str,
    port: u16,
    secs: u32,
    omit: u32,
    connect_secs: u32,
) -> Result<f64> {
    let out = tb
        .command(
            from,
            &[
                "timeout",
                &(omit + secs + connect_secs + 30).to_string(),
                "iperf3",
                "-c",
                to,
                "-p",
                &port.to_string(),
                "-t",
                &secs.to_string(),
                "-O",
                &omit.to_string(),
                "--connect-timeout",
                &(connect_secs * 1000).to_string(),
                "-J",
            ],
        )
        .stdin(Stdio::null())
        .output()
        .context("run iperf3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "iperf3 to {to}:{port} printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3 to {to}:{port}: {e}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result has no end.sum_received.bits_per_second")
}

/// A command running in a host's namespace until it ends or is stopped (a flood, an
/// attacker's iperf3); its stdout goes to a file. Killed on drop.
pub struct Background {
    child: Option<Child>,
    out: std::path::PathBuf,
    what: String,
}

impl Background {
    /// Start `argv` in `host`; `name` names its output file in the testbed's directory.
    pub fn start(tb: &Testbed, host: Host, name: &str, argv: &[&str]) -> Result<Background> {
        let out = tb.workdir().join(format!("{name}.out"));
        let err = tb.workdir().join(format!("{name}.err"));
        let child = tb
            .command(host, argv)
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            .spawn()
            .with_context(|| format!("start {}", argv.join(" ")))?;
        Ok(Background {
            child: Some(child),
            out,
            what: argv.join(" "),
        })
    }

    /// Send SIGTERM (if it still runs), wait at most 5 s (then SIGKILL); return its exit
    /// status and what it printed on stdout.
    pub fn stop(&mut self) -> Result<(ExitStatus, String)> {
        let Some(mut child) = self.child.take() else {
            bail!("{} already stopped", self.what);
        };
        if child.try_wait()?.is_none() {
            let pid = i32::try_from(child.id()).context("pid")?;
            // SAFETY: kill has no memory-safety preconditions; pid is our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok((
            status,
            std::fs::read_to_string(&self.out).unwrap_or_default(),
        ))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
