//! The engine's TOML configuration: parsed strictly, then validated in one pass.
//!
//! Invariant: a `Config` that `load` returned is complete and consistent; nothing later
//! re-checks it. Unknown keys are errors, so a typo never silently falls back to a default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod police;
mod ports;
pub use ports::{parse_forward, parse_group};
mod trace;

pub use police::PoliceSettings;
pub use trace::{DEFAULT_PCAP_SNAP, TraceSettings};

use crate::driver::nfqueue::{COPY_FULL, DEFAULT_MAX_LEN, DEFAULT_RCVBUF_BYTES};
use std::net::IpAddr;

use crate::driver::nft::{
    self, PortRange, Prefix, QueuePreference, QueueTarget, Role, RulesetSpec, Selection,
};

/// The prefix holding exactly one address.
fn host(a: IpAddr) -> Option<Prefix> {
    Prefix::new(a, if a.is_ipv4() { 32 } else { 128 }).ok()
}

/// The longest detection period: capability times are a wrapping u32 of milliseconds,
/// compared over half its range (24 days), so periods must stay far below that.
pub const MAX_PERIOD_MS: u64 = 24 * 3600 * 1000;

/// Queues (worker threads) at most.
pub const MAX_QUEUES: u16 = 64;

/// Senders tracked per worker at most.
pub const MAX_SENDERS: usize = 1 << 24;
/// Capabilities kept per sender at most (the victim's per-sender queue).
pub const MAX_KEPT: usize = 1024;

/// Th_cap at most: the returned-capability bitmap of a sender is this many bits.
pub const MAX_PER_PERIOD: u32 = 1024;

/// What the engine does with a packet it cannot parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MalformedVerdict {
    /// Drop it (default): a defence must not forward what it cannot police.
    Drop,
    /// Let it through unchanged.
    Accept,
}

/// A validated engine configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub queue: QueueSettings,
    pub protect: Selection,
    pub control_socket: PathBuf,
    /// The Prometheus endpoint's address (None: off).
    pub metrics: Option<std::net::SocketAddr>,
    /// MiddlePolice capabilities; without them both roles pass traffic through unchanged.
    pub capabilities: Option<CapSettings>,
    /// mbox, redirect mode: addresses clients connect to, and the victims behind them.
    pub redirect: Vec<RedirectPair>,
    /// Tunnel mode: the mbox sends its traffic to the victim inside IP-in-UDP.
    pub tunnel: Option<Tunnel>,
    /// mbox: how senders are policed ([`PoliceSettings::off`] without a `[police]`
    /// section: stamp and measure, never drop).
    pub police: PoliceSettings,
    /// Packet-journey tracing (None: off).
    pub trace: Option<TraceSettings>,
    /// victim: port forwarding rules, one per incoming port (empty: none).
    pub ports: Vec<crate::ports::ForwardRule>,
    /// victim: traffic groups (empty: none).
    pub groups: Vec<crate::ports::GroupSpec>,
    /// victim: a `[ports]` section, which turns on port policies (per-port statistics,
    /// and forwarding rules and groups, which may change at run time).
    pub port_policies: bool,
}

/// IP-in-UDP from mbox to victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// UDP port the victim receives the tunnel on (and the mbox its feedback).
    pub port: u16,
    /// mbox: its outer source address per family; victim: the mboxes it accepts.
    pub addresses: Vec<IpAddr>,
    /// The key file both ends share: every tunnel payload carries a MAC under it.
    pub key_file: PathBuf,
}

impl Tunnel {
    /// The address of `ip`'s family in the list.
    pub fn address_for(&self, ip: IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == ip.is_ipv4())
    }
}

/// One redirect: clients address `listen` (an address of the mbox); the mbox hands
/// their packets to `to` (a protected address) and answers in `listen`'s name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectPair {
    pub listen: IpAddr,
    pub to: IpAddr,
}

impl Config {
    /// The ruleset this role's engine installs.
    pub fn ruleset(&self, role: Role) -> RulesetSpec {
        let mut spec = nft::plan(role, &self.protect, &self.queue.target);
        if role == Role::Mbox && !self.redirect.is_empty() {
            let victims = Selection {
                addresses: self.redirect.iter().filter_map(|r| host(r.to)).collect(),
                ..self.protect.clone()
            };
            nft::add_redirect_chains(
                &mut spec,
                &self.redirect_selection(),
                &victims,
                &self.queue.target,
            );
        }
        if let Some(t) = &self.tunnel {
            let tunnel_port = |addresses| Selection {
                addresses,
                tcp_ports: Vec::new(),
                udp_ports: PortRange::new(t.port, t.port).into_iter().collect(),
            };
            match role {
                Role::Victim => {
                    let to_us = tunnel_port(self.protect.addresses.clone());
                    nft::add_tunnel_chain(&mut spec, &to_us, &self.queue.target);
                }
                Role::Mbox => {
                    let ours = tunnel_port(t.addresses.iter().filter_map(|a| host(*a)).collect());
                    nft::add_feedback_chain(&mut spec, &ours, &self.queue.target);
                }
            }
        }
        if role == Role::Mbox && self.capabilities.is_some() {
            nft::add_icmp_error_chain(&mut spec, &self.protect, &self.queue.target);
        }
        if let Some(limits) = self.unverified_channel(role) {
            nft::add_unverified_channel(&mut spec, &limits);
        }
        if self.port_policies {
            // Both chains, empty or not: rules and groups change at run time.
            let forward = forward_pairs(&self.ports);
            nft::add_forward_chain(&mut spec, &forward, &self.queue.target);
            nft::add_refuse_chain(&mut spec, &self.queue.target);
        }
        if let Some(t) = self.trace.as_ref().filter(|t| t.kernel) {
            nft::add_trace_chains(&mut spec, &self.protect, &t.filter, &self.queue.target);
        }
        spec
    }

    /// The TCP ports whose listeners the per-port statistics show: the protected ones and
    /// the outgoing ports of the forwarding rules.
    pub fn listened_ports(&self) -> Vec<PortRange> {
        let outgoing = self.ports.iter().flat_map(|r| r.outgoing());
        let mut ports = self.protect.tcp_ports.clone();
        ports.extend(outgoing.filter_map(|p| PortRange::new(p, p).ok()));
        ports
    }

    /// The kernel's limits on unverified senders, if `role` has the channel: a policing
    /// mbox (measuring only, it drops nothing, in the kernel either).
    pub fn unverified_channel(&self, role: Role) -> Option<nft::UnverifiedLimits> {
        if role != Role::Mbox || self.police.policy == crate::police::Policy::Off {
            return None;
        }
        Some(self.police.unverified)
    }

    /// The listen addresses of the redirect pairs, with the protected ports.
    pub fn redirect_selection(&self) -> Selection {
        Selection {
            addresses: self
                .redirect
                .iter()
                .filter_map(|r| {
                    Prefix::new(r.listen, if r.listen.is_ipv4() { 32 } else { 128 }).ok()
                })
                .collect(),
            ..self.protect.clone()
        }
    }
}

/// How capabilities are stamped, returned and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CapSettings {
    /// mbox: the file holding the MAC keys (only the mbox has it).
    pub key_file: Option<PathBuf>,
    /// mbox: this mbox's id, carried in every capability.
    pub mbox_id: u16,
    /// Detection period P.
    pub period: Duration,
    /// Th_rtt: a capability must come back within this; none is stamped in a period's last Th_rtt.
    pub rtt: Duration,
    /// Th_cap: capabilities stamped per sender per period.
    pub per_period: u32,
    /// Senders tracked at most (the least recently seen are evicted first).
    pub max_senders: usize,
    /// Largest IP packet on the mbox ⇄ victim and victim ⇄ client paths.
    pub path_mtu: u16,
    /// victim: capabilities returned on one ACK (1 to 3).
    pub feedback_per_ack: u8,
    /// victim: capabilities kept per sender until an ACK carries them back.
    pub kept_per_sender: usize,
    /// victim: interfaces the mboxes' traffic arrives on (required): protected traffic
    /// arriving elsewhere bypassed the mbox and is dropped; feedback leaves only by them.
    pub mbox_interfaces: Vec<String>,
    /// victim: client prefixes whose routes get a lowered `advmss`.
    pub client_prefixes: Vec<Prefix>,
    /// mbox: interfaces towards the protected servers, the only ones feedback counts
    /// from. Empty: those the routes to the protected addresses use.
    pub victim_interfaces: Vec<String>,
    /// victim: senders it returns no capabilities for (changeable at run time with
    /// `mpolice withhold`).
    pub withhold_feedback: Vec<Prefix>,
}

impl Default for CapSettings {
    /// The prototype's settings (SPEC.md), no key file, no mbox interfaces or prefixes.
    fn default() -> Self {
        CapSettings {
            key_file: None,
            mbox_id: 0,
            period: Duration::from_millis(default_period_ms()),
            rtt: Duration::from_millis(default_rtt_ms()),
            per_period: default_per_period(),
            max_senders: default_max_senders(),
            path_mtu: default_mtu(),
            feedback_per_ack: default_feedback(),
            kept_per_sender: default_kept(),
            mbox_interfaces: Vec::new(),
            client_prefixes: Vec::new(),
            victim_interfaces: Vec::new(),
            withhold_feedback: Vec::new(),
        }
    }
}

/// Queue numbers and the kernel-side queue behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    pub target: QueueTarget,
    pub kind: QueuePreference,
    pub fail_open: bool,
    pub max_len: u32,
    /// Longest backlog the queue may hold, as a delay at the worker's measured rate
    /// (None: `max_len` alone bounds it).
    pub max_delay: Option<Duration>,
    pub rcvbuf_bytes: usize,
    pub malformed: MalformedVerdict,
    /// Hybrid path: the first of the precise queues, one per worker after its fast
    /// queue's number (None: every packet through one queue, cut to wire packets).
    pub precise_first: Option<u16>,
    /// Hybrid path: bytes of each packet the queue copies to the engine (the precise
    /// queues copy whole packets).
    pub copy_bytes: u32,
}

impl QueueSettings {
    /// List the queue numbers the engine binds, one worker each.
    pub fn numbers(&self) -> impl Iterator<Item = u16> + use<> {
        let first = self.target.first;
        (0..self.target.count).map(move |i| first + i)
    }
}

/// A configuration error: names the file, the key and what to do.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    queue: RawQueue,
    protect: RawProtect,
    #[serde(default)]
    control: RawControl,
    capabilities: Option<RawCaps>,
    redirect: Option<RawRedirect>,
    tunnel: Option<RawTunnel>,
    police: Option<police::RawPolice>,
    trace: Option<trace::RawTrace>,
    ports: Option<ports::RawPorts>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    #[serde(default = "default_tunnel_port")]
    port: u16,
    #[serde(default)]
    source: Vec<String>,
    #[serde(default)]
    mboxes: Vec<String>,
    key_file: Option<PathBuf>,
}

fn default_tunnel_port() -> u16 {
    6081
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    map: Vec<RawPair>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    listen: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaps {
    key_file: Option<PathBuf>,
    #[serde(default)]
    mbox_id: u16,
    #[serde(default = "default_period_ms")]
    period_ms: u64,
    #[serde(default = "default_rtt_ms")]
    rtt_ms: u64,
    #[serde(default = "default_per_period")]
    per_period: u32,
    #[serde(default = "default_max_senders")]
    max_senders: usize,
    #[serde(default = "default_mtu")]
    path_mtu: u16,
    #[serde(default = "default_feedback")]
    feedback_per_ack: u8,
    #[serde(default = "default_kept")]
    kept_per_sender: usize,
    #[serde(default)]
    mbox_interfaces: Vec<String>,
    #[serde(default)]
    client_prefixes: Vec<String>,
    #[serde(default)]
    victim_interfaces: Vec<String>,
    #[serde(default)]
    withhold_feedback: Vec<String>,
}

// The prototype's defaults (SPEC.md): P = 4 s, Th_rtt = 1 s, Th_cap = 128, 3 per ACK.
fn default_period_ms() -> u64 {
    4000
}
fn default_rtt_ms() -> u64 {
    1000
}
fn default_per_period() -> u32 {
    128
}
fn default_max_senders() -> usize {
    65536
}
fn default_mtu() -> u16 {
    1500
}
fn default_feedback() -> u8 {
    3
}
fn default_kept() -> usize {
    64
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default)]
    first: u16,
    count: Option<u16>,
    #[serde(default)]
    bypass: bool,
    #[serde(default)]
    fanout: bool,
    #[serde(default)]
    fail_open: bool,
    #[serde(default = "default_max_len")]
    max_len: u32,
    #[serde(default = "default_max_delay_ms")]
    max_delay_ms: u64,
    #[serde(default = "default_rcvbuf")]
    rcvbuf_bytes: usize,
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default = "default_malformed")]
    malformed: MalformedVerdict,
    hybrid: Option<bool>,
    precise_first: Option<u16>,
    #[serde(default = "default_copy_bytes")]
    copy_bytes: u32,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            first: 0,
            count: None,
            bypass: false,
            fanout: false,
            fail_open: false,
            max_len: DEFAULT_MAX_LEN,
            max_delay_ms: DEFAULT_MAX_DELAY_MS,
            rcvbuf_bytes: DEFAULT_RCVBUF_BYTES,
            kind: default_kind(),
            malformed: MalformedVerdict::Drop,
            hybrid: None,
            precise_first: None,
            copy_bytes: DEFAULT_COPY_BYTES,
        }
    }
}

/// The CPUs this process may run on, at most `MAX_QUEUES`: one worker each.
fn cores() -> u16 {
    std::thread::available_parallelism()
        .map_or(1, |n| u16::try_from(n.get()).unwrap_or(MAX_QUEUES))
        .clamp(1, MAX_QUEUES)
}
/// Hybrid path: the bytes of each packet copied to the engine by default: its headers
/// (IPv4 or IPv6 with TCP and its options take at most 120; 256 leaves room for IPv6
/// extension headers). Every packet to rewrite, or whose headers run past the copy, is
/// routed through the precise queue and read whole there.
const DEFAULT_COPY_BYTES: u32 = 256;
/// Fewest bytes the copy may hold: the longest IPv4 and TCP headers.
const MIN_COPY_BYTES: u32 = crate::wire::LONGEST_V4_HEADERS as u32;

fn default_copy_bytes() -> u32 {
    DEFAULT_COPY_BYTES
}

fn default_max_len() -> u32 {
    DEFAULT_MAX_LEN
}
/// A queued packet waits at most this long: bursts of tens of milliseconds fit, and a
/// flood cannot pile up seconds of backlog in front of the packets that matter.
const DEFAULT_MAX_DELAY_MS: u64 = 100;
fn default_max_delay_ms() -> u64 {
    DEFAULT_MAX_DELAY_MS
}
fn default_rcvbuf() -> usize {
    DEFAULT_RCVBUF_BYTES
}
fn default_kind() -> String {
    "auto".into()
}
fn default_malformed() -> MalformedVerdict {
    MalformedVerdict::Drop
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    addresses: Vec<String>,
    #[serde(default)]
    tcp_ports: Vec<RawPort>,
    #[serde(default)]
    udp_ports: Vec<RawPort>,
}

/// A port as an operator writes it: `80` or `"8000-8100"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
}

/// Read and validate the config file for a role (`mbox` or `victim`).
pub fn load(path: &Path, role: &str) -> Result<Config, ConfigError> {
    let text =
        read_settled(path).map_err(|e| ConfigError(format!("config {}: {e}", path.display())))?;
    parse(&text, role).map_err(|e| ConfigError(format!("config {}: {e}", path.display())))
}

/// The file's text once two reads in a row agree: one read while an editor writes it
/// could see half a file that still parses (a reload would then apply it).
fn read_settled(path: &Path) -> Result<String, String> {
    settled(|| std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}")))
}

/// What `read` gives twice in a row, within four tries.
fn settled(mut read: impl FnMut() -> Result<String, String>) -> Result<String, String> {
    let mut text = read()?;
    for _ in 0..3 {
        let again = read()?;
        if again == text {
            return Ok(text);
        }
        text = again;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(
        "it kept changing while being read; write it whole (e.g. to a new file, then rename it)"
            .into(),
    )
}

/// Parse and validate config text; errors name the key at fault.
pub fn parse(text: &str, role: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        // toml's own message spans several lines; name the line and quote it instead.
        let msg = e.message();
        match e.span() {
            Some(span) => {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                ConfigError(format!("line {line_no}: `{line}`: {msg}"))
            }
            None => ConfigError(msg.to_string()),
        }
    })?;
    if role != SERVER {
        return validate(raw, role);
    }
    // A server is a victim without MiddlePolice that runs port policies.
    if raw.capabilities.is_some() || raw.tunnel.is_some() {
        return Err(ConfigError(
            "server: runs port policies only; [capabilities] and [tunnel] belong to `mpolice victim`".into(),
        ));
    }
    if raw.ports.is_none() {
        return Err(ConfigError(
            "server: add a [ports] section; port policies are what this role runs (an empty one gives per-port statistics)".into(),
        ));
    }
    validate(raw, "victim")
}

/// The role name of a host that runs port policies only (`mpolice server`).
pub const SERVER: &str = "server";

fn validate(raw: RawConfig, role: &str) -> Result<Config, ConfigError> {
    let err = |m: String| Err(ConfigError(m));
    let q = raw.queue;
    let rewrites_all = raw.tunnel.is_some() || raw.redirect.is_some();
    // One worker per core by default; the tunnel needs one worker (see below).
    let count = q
        .count
        .unwrap_or(if raw.tunnel.is_some() { 1 } else { cores() });
    let target = QueueTarget {
        first: q.first,
        count,
        bypass: q.bypass,
        fanout: q.fanout,
    };
    if let Err(e) = target.last() {
        return err(format!("queue.first, queue.count: {e}"));
    }
    if count > MAX_QUEUES {
        // Each queue is a worker thread, and every rule is installed once per queue.
        return err(format!(
            "queue.count: {} is more than {MAX_QUEUES} (one worker thread per queue)",
            count
        ));
    }
    if q.max_len == 0 {
        return err("queue.max_len: must be at least 1".into());
    }
    if q.max_delay_ms > 10_000 {
        return err(format!(
            "queue.max_delay_ms: {} ms is more than 10 s of backlog; use 0 to bound the queue by max_len alone",
            q.max_delay_ms
        ));
    }
    if q.rcvbuf_bytes < 65536 {
        return err("queue.rcvbuf_bytes: must be at least 65536 (one full-size packet)".into());
    }
    let kind = match q.kind.as_str() {
        "auto" => QueuePreference::Auto,
        "native" => QueuePreference::Native,
        "xt" => QueuePreference::Xt,
        other => {
            return err(format!(
                "queue.kind: unknown value {other:?}; use \"auto\", \"native\" or \"xt\""
            ));
        }
    };
    let p = raw.protect;
    if p.addresses.is_empty() {
        return err("protect.addresses: list at least one protected address or prefix".into());
    }
    let addresses = p
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<Prefix>()
                .map_err(|e| ConfigError(format!("protect.addresses[{i}]: {a:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tcp_ports = ports("protect.tcp_ports", &p.tcp_ports)?;
    let udp_ports = ports("protect.udp_ports", &p.udp_ports)?;
    if tcp_ports.is_empty() && udp_ports.is_empty() {
        return err("protect: list at least one of tcp_ports or udp_ports".into());
    }
    let control_socket = raw
        .control
        .socket
        .unwrap_or_else(|| PathBuf::from(format!("/run/mpolice/{role}.sock")));
    let metrics = match raw.metrics {
        Some(m) => Some(m.listen.parse().map_err(|_| {
            ConfigError(format!(
                "metrics.listen: {:?} is not an address and port (e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")",
                m.listen
            ))
        })?),
        None => None,
    };
    let redirect = match raw.redirect {
        None => Vec::new(),
        Some(_) if role != "mbox" => {
            return err("redirect: only the mbox redirects; remove it from this config".into());
        }
        Some(_) if raw.capabilities.is_none() => {
            return err("redirect: needs the [capabilities] section (the mbox redirects as part of its capability stages)".into());
        }
        Some(r) => validate_redirect(&r, &addresses)?,
    };
    let tunnel = match raw.tunnel {
        None => None,
        Some(_) if raw.capabilities.is_none() => {
            return err("tunnel: needs the [capabilities] section (the tunnel is part of the capability stages)".into());
        }
        // Tunnel packets hash to a queue by the mbox's address, the victim's replies by
        // the client's: with several workers the capabilities kept by one would never
        // ride the ACKs another sends. On the mbox, feedback datagrams hash by the
        // victim's and the mbox's addresses, not the client's whose state they update.
        Some(_) if count > 1 => {
            return err(format!(
                "tunnel: the {role} needs queue.count = 1 in tunnel mode"
            ));
        }
        // Protected traffic is classified first: such a port would never be unwrapped.
        Some(t) if udp_ports.iter().any(|r| r.contains(t.port)) => {
            return err(format!(
                "tunnel.port: {} is a protected UDP port; pick another",
                t.port
            ));
        }
        Some(t) => Some(validate_tunnel(&t, role)?),
    };
    if q.fanout && raw.capabilities.is_some() {
        // By CPU, a flow's stamping and its feedback would meet different workers, each
        // with its own sender table: the addresses' symmetric hash keeps them together.
        return err(
            "queue.fanout: cannot be used with [capabilities]; balance by flow (fanout = false)"
                .into(),
        );
    }
    if role == "victim" && raw.capabilities.is_some() {
        // Past the queue, a stamped packet reaches TCP with its trailer still on: the
        // trailer becomes stream data. Neither is a policy choice on the victim.
        if q.bypass {
            return err("queue.bypass: must be false on the victim with [capabilities]: with no engine bound, stamped packets would reach TCP with their trailer and corrupt the stream".into());
        }
        if q.fail_open {
            return err("queue.fail_open: must be false on the victim with [capabilities]: when the queue is full, stamped packets would reach TCP with their trailer and corrupt the stream".into());
        }
    }
    let precise_first = validate_hybrid(&q, count, rewrites_all)?;
    let police = match raw.police {
        None => PoliceSettings::off(),
        Some(_) if role != "mbox" => {
            return err("police: only the mbox polices; remove it from this config".into());
        }
        Some(_) if raw.capabilities.is_none() => {
            return err("police: needs the [capabilities] section (delivery is measured by the capabilities that come back)".into());
        }
        Some(p) => police::validate(p)?,
    };
    let capabilities = raw
        .capabilities
        .map(|c| validate_caps(c, role))
        .transpose()?;
    let trace = raw.trace.map(trace::validate).transpose()?;
    let port_policies = raw.ports.is_some();
    let policies = match raw.ports {
        Some(_) if role == "mbox" => {
            return err("ports: port policies run on the server they protect (the victim); remove the section from this config".into());
        }
        Some(p) => ports::validate(p, &tcp_ports, !q.fanout)?,
        None => ports::Policies {
            forward: Vec::new(),
            groups: Vec::new(),
        },
    };
    let selection = Selection {
        addresses,
        tcp_ports,
        udp_ports,
    };
    if let Some(t) = trace.as_ref().filter(|t| t.kernel) {
        trace::check_kernel_marks(&selection, &t.filter)?;
    }
    Ok(Config {
        police,
        trace,
        ports: policies.forward,
        groups: policies.groups,
        port_policies,
        capabilities,
        redirect,
        tunnel,
        queue: QueueSettings {
            target,
            kind,
            fail_open: q.fail_open,
            max_len: q.max_len,
            max_delay: (q.max_delay_ms > 0).then(|| Duration::from_millis(q.max_delay_ms)),
            rcvbuf_bytes: q.rcvbuf_bytes,
            malformed: q.malformed,
            precise_first,
            copy_bytes: q.copy_bytes,
        },
        protect: selection,
        control_socket,
        metrics,
    })
}

/// Each forwarding rule's incoming port and the ports it may send a connection to.
pub fn forward_pairs(rules: &[crate::ports::ForwardRule]) -> Vec<(u16, Vec<u16>)> {
    rules.iter().map(|r| (r.port, r.outgoing())).collect()
}

/// Refuse `capabilities.<key>` outside `range`, naming the key and the range.
fn within<T>(key: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<(), ConfigError>
where
    T: PartialOrd + fmt::Display,
{
    if range.contains(&value) {
        return Ok(());
    }
    Err(ConfigError(format!(
        "capabilities.{key}: {value} is not in {}..={}",
        range.start(),
        range.end()
    )))
}

/// The first precise queue of the hybrid path, if it is on: on unless set off, or the
/// tunnel or redirects rewrite every packet (`rewrites_all`), which the hybrid path
/// would cut and answer one by one; by default right after the fast queues, and never
/// overlapping them.
fn validate_hybrid(
    q: &RawQueue,
    count: u16,
    rewrites_all: bool,
) -> Result<Option<u16>, ConfigError> {
    let err = |m: String| Err(ConfigError(m));
    if !(MIN_COPY_BYTES..=COPY_FULL).contains(&q.copy_bytes) {
        return err(format!(
            "queue.copy_bytes: {} must be {MIN_COPY_BYTES} to {COPY_FULL} (the whole packet)",
            q.copy_bytes
        ));
    }
    match (q.hybrid, rewrites_all) {
        (Some(true), true) => {
            return err("queue.hybrid: not with [tunnel] or [redirect], which rewrite every packet; set hybrid = false".into());
        }
        (Some(false), _) | (None, true) => {
            return match q.precise_first {
                Some(_) => err("queue.precise_first: only with the hybrid path (queue.hybrid, on by default, not with [tunnel] or [redirect])".into()),
                None => Ok(None),
            };
        }
        (Some(true) | None, false) => {}
    }
    let first = q.precise_first.unwrap_or(q.first.saturating_add(count));
    let fast = u32::from(q.first)..u32::from(q.first) + u32::from(count);
    let precise = u32::from(first)..u32::from(first) + u32::from(count);
    if precise.end > 65536 {
        return err(format!(
            "queue.precise_first: queues {first}..{} run past queue number 65535",
            precise.end
        ));
    }
    if precise.start < fast.end && fast.start < precise.end {
        return err(format!(
            "queue.precise_first: precise queues {precise:?} overlap the queues {fast:?}"
        ));
    }
    Ok(Some(first))
}

fn validate_caps(c: RawCaps, role: &str) -> Result<CapSettings, ConfigError> {
    let err = |m: String| Err(ConfigError(format!("capabilities.{m}")));
    match (role, &c.key_file) {
        ("mbox", None) => {
            return err(
                "key_file: the mbox needs its MAC key file (see `mpolice keys new`)".into(),
            );
        }
        ("victim", Some(_)) => {
            return err(
                "key_file: only the mbox holds the key; remove it from the victim's config".into(),
            );
        }
        _ => {}
    }
    if c.period_ms == 0 || c.rtt_ms == 0 || c.rtt_ms >= c.period_ms {
        return err(format!(
            "rtt_ms ({}) must be above 0 and below period_ms ({})",
            c.rtt_ms, c.period_ms
        ));
    }
    if c.period_ms > MAX_PERIOD_MS {
        return err(format!(
            "period_ms: {} is more than a day ({MAX_PERIOD_MS})",
            c.period_ms
        ));
    }
    // Bounds keep the worst case of state a flood can build known: per worker, about
    // max_senders x 270 B (mbox, `bytes_per_tracked_sender`) or max_senders x kept_per_sender x 56 B (victim).
    within("per_period", c.per_period, 1..=MAX_PER_PERIOD)?;
    within("max_senders", c.max_senders, 1..=MAX_SENDERS)?;
    within("path_mtu", c.path_mtu, 1280..=65535)?;
    within("feedback_per_ack", c.feedback_per_ack, 1..=3)?;
    within("kept_per_sender", c.kept_per_sender, 1..=MAX_KEPT)?;
    // The victim trusts marker bits, and returns feedback, only on the mbox's links:
    // without them it could tell neither a bypass nor where feedback is stripped.
    if role == "victim" && c.mbox_interfaces.is_empty() {
        return err("mbox_interfaces: list the interfaces the mbox's traffic arrives on (the victim strips trailers only from them, drops protected traffic arriving elsewhere and returns feedback only through them)".into());
    }
    for (key, names, owner) in [
        ("mbox_interfaces", &c.mbox_interfaces, "victim"),
        ("victim_interfaces", &c.victim_interfaces, "mbox"),
    ] {
        if role != owner && !names.is_empty() {
            return err(format!(
                "{key}: only the {owner} uses it; remove it from this config"
            ));
        }
        if let Some(bad) = names.iter().find(|i| i.is_empty() || i.len() > 15) {
            return err(format!("{key}: {bad:?} is not an interface name"));
        }
    }
    let prefixes = |key: &str, list: &[String]| {
        list.iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<Prefix>()
                    .map_err(|e| ConfigError(format!("capabilities.{key}[{i}]: {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let client_prefixes = prefixes("client_prefixes", &c.client_prefixes)?;
    if role != "victim" && !c.withhold_feedback.is_empty() {
        return err(
            "withhold_feedback: only the victim returns feedback; remove it from this config"
                .into(),
        );
    }
    let withhold_feedback = prefixes("withhold_feedback", &c.withhold_feedback)?;
    Ok(CapSettings {
        key_file: c.key_file,
        mbox_id: c.mbox_id,
        period: Duration::from_millis(c.period_ms),
        rtt: Duration::from_millis(c.rtt_ms),
        per_period: c.per_period,
        max_senders: c.max_senders,
        path_mtu: c.path_mtu,
        feedback_per_ack: c.feedback_per_ack,
        kept_per_sender: c.kept_per_sender,
        mbox_interfaces: c.mbox_interfaces,
        client_prefixes,
        victim_interfaces: c.victim_interfaces,
        withhold_feedback,
    })
}

fn validate_tunnel(t: &RawTunnel, role: &str) -> Result<Tunnel, ConfigError> {
    let (key, list, other) = match role {
        "mbox" => ("source", &t.source, !t.mboxes.is_empty()),
        _ => ("mboxes", &t.mboxes, !t.source.is_empty()),
    };
    if other {
        return Err(ConfigError(format!(
            "tunnel: the {role} lists `{key}` only (mbox: source, victim: mboxes)"
        )));
    }
    if list.is_empty() {
        return Err(ConfigError(format!(
            "tunnel.{key}: list at least one address"
        )));
    }
    if t.port == 0 {
        return Err(ConfigError("tunnel.port: must not be 0".into()));
    }
    let addresses = list
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<IpAddr>()
                .map_err(|e| ConfigError(format!("tunnel.{key}[{i}]: {a:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let per_family = |v4: bool| addresses.iter().filter(|a| a.is_ipv4() == v4).count();
    if role == "mbox" && (per_family(true) > 1 || per_family(false) > 1) {
        return Err(ConfigError(
            "tunnel.source: at most one address per family".into(),
        ));
    }
    // The outer source address proves nothing on a shared link: a MAC does.
    let key_file = t.key_file.clone().ok_or_else(|| {
        ConfigError(
            "tunnel.key_file: the tunnel needs the key file mbox and victim share (see `mpolice keys new`); every tunnel payload carries a MAC under it".into(),
        )
    })?;
    Ok(Tunnel {
        port: t.port,
        addresses,
        key_file,
    })
}

fn validate_redirect(
    r: &RawRedirect,
    protected: &[Prefix],
) -> Result<Vec<RedirectPair>, ConfigError> {
    let mut pairs: Vec<RedirectPair> = Vec::new();
    for (i, p) in r.map.iter().enumerate() {
        let key = format!("redirect.map[{i}]");
        let addr = |name: &str, text: &str| {
            text.parse::<IpAddr>()
                .map_err(|e| ConfigError(format!("{key}.{name}: {text:?}: {e}")))
        };
        let (listen, to) = (addr("listen", &p.listen)?, addr("to", &p.to)?);
        if listen.is_ipv4() != to.is_ipv4() {
            return Err(ConfigError(format!(
                "{key}: listen and to must be of one address family"
            )));
        }
        if !protected.iter().any(|a| a.contains(to)) {
            return Err(ConfigError(format!(
                "{key}.to: {to} is not in protect.addresses"
            )));
        }
        if protected.iter().any(|a| a.contains(listen)) {
            return Err(ConfigError(format!(
                "{key}.listen: {listen} is a protected address; use an address of the mbox"
            )));
        }
        if pairs.iter().any(|q| q.listen == listen) {
            return Err(ConfigError(format!(
                "{key}.listen: {listen} is listed twice"
            )));
        }
        pairs.push(RedirectPair { listen, to });
    }
    Ok(pairs)
}

fn ports(key: &str, raw: &[RawPort]) -> Result<Vec<PortRange>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, p)| {
            let text = match p {
                RawPort::Number(n) => n.to_string(),
                RawPort::Text(s) => s.clone(),
            };
            text.parse::<PortRange>()
                .map_err(|e| ConfigError(format!("{key}[{i}]: {text:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [queue]
        first = 4
        count = 2
        bypass = true
        [protect]
        addresses = ["198.18.2.2", "2001:2:0:2::/64"]
        tcp_ports = [80, "5201-5202"]
        [control]
        socket = "/tmp/x.sock"
    "#;

    fn error_of(text: &str) -> String {
        parse(text, "mbox").unwrap_err().to_string()
    }

    #[test]
    fn parses_a_full_config() {
        let c = parse(GOOD, "mbox").unwrap();
        assert_eq!(c.queue.numbers().collect::<Vec<_>>(), vec![4, 5]);
        assert!(c.queue.target.bypass);
        assert!(!c.queue.fail_open);
        assert_eq!(c.queue.malformed, MalformedVerdict::Drop);
        assert_eq!(c.protect.addresses.len(), 2);
        assert_eq!(c.protect.tcp_ports.len(), 2);
        assert_eq!(c.control_socket, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn defaults_follow_the_role() {
        let c = parse(
            "[protect]\naddresses=[\"198.18.2.2\"]\nudp_ports=[53]",
            "victim",
        )
        .unwrap();
        assert_eq!(c.control_socket, PathBuf::from("/run/mpolice/victim.sock"));
        assert_eq!(c.queue.max_len, DEFAULT_MAX_LEN);
        assert_eq!(c.queue.max_delay, Some(Duration::from_millis(100)));
        let fixed = parse(
            "[protect]\naddresses=[\"198.18.2.2\"]\nudp_ports=[53]\n[queue]\nmax_delay_ms=0",
            "victim",
        )
        .unwrap();
        assert_eq!(
            fixed.queue.max_delay, None,
            "0: max_len alone bounds the queue"
        );
        assert_eq!(c.queue.kind, QueuePreference::Auto);
    }

    /// The hybrid path is on unless set off or the tunnel rewrites every packet; its
    /// precise queues follow the queues, never on top of them.
    #[test]
    fn the_hybrid_path_is_on_by_default_beside_the_queues() {
        let base = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n";
        let precise = |queue: &str| {
            parse(&format!("{base}[queue]\n{queue}"), "mbox")
                .map(|c| c.queue.precise_first)
                .map_err(|e| e.to_string())
        };
        assert_eq!(precise(""), Ok(Some(cores())), "after one queue per core");
        let copy = parse(&format!("{base}[queue]\n"), "mbox")
            .unwrap()
            .queue
            .copy_bytes;
        assert_eq!(copy, 256, "headers only by default");
        assert_eq!(precise("first=4\ncount=3"), Ok(Some(7)));
        assert_eq!(precise("hybrid=false"), Ok(None));
        assert_eq!(precise("count=2\nprecise_first=10"), Ok(Some(10)));
        for (queue, expect) in [
            ("count=2\nprecise_first=1", "overlap the queues"),
            (
                "first=65534\ncount=1\nprecise_first=65535\nfanout=false",
                "",
            ),
            (
                "first=65000\ncount=2\nprecise_first=65535",
                "run past queue number 65535",
            ),
            (
                "hybrid=false\nprecise_first=10",
                "only with the hybrid path",
            ),
            (
                "copy_bytes=100",
                "queue.copy_bytes: 100 must be 120 to 65535",
            ),
            ("copy_bytes=70000", "queue.copy_bytes: 70000 must be"),
            ("copy_bytes=120", ""),
        ] {
            match precise(queue) {
                Ok(_) if expect.is_empty() => {}
                Ok(p) => panic!("{queue}: {p:?}"),
                Err(e) => assert!(!expect.is_empty() && e.contains(expect), "{queue}: {e}"),
            }
        }
        let tunnel =
            "[capabilities]\nkey_file=\"/k\"\n[tunnel]\nkey_file=\"/t\"\nsource=[\"198.18.2.1\"]\n";
        let with_tunnel = |queue: &str| {
            parse(&format!("{base}[queue]\n{queue}\n{tunnel}"), "mbox")
                .map(|c| c.queue.precise_first)
        };
        let counts =
            |extra: &str| parse(&format!("{base}{extra}"), "mbox").map(|c| c.queue.target.count);
        assert_eq!(counts("").unwrap(), cores(), "one worker per core");
        assert!((1..=MAX_QUEUES).contains(&cores()));
        assert_eq!(
            counts(&format!("[queue]\n{tunnel}")).unwrap(),
            1,
            "tunnel: one"
        );
        assert_eq!(
            with_tunnel("").unwrap(),
            None,
            "the tunnel rewrites every packet"
        );
        let e = with_tunnel("hybrid=true").unwrap_err().to_string();
        assert!(e.contains("queue.hybrid: not with [tunnel]"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = error_of("[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\nportz=[1]");
        assert!(e.contains("portz"), "{e}");
    }

    #[test]
    fn bad_address_is_named() {
        let e = error_of("[protect]\naddresses=[\"198.18.2.300\"]\ntcp_ports=[80]");
        assert!(e.starts_with("protect.addresses[0]"), "{e}");
    }

    #[test]
    fn bad_port_is_named() {
        for bad in ["0", "70000", "\"90-80\"", "\"x\"", "-1"] {
            let e = error_of(&format!(
                "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[{bad}]"
            ));
            assert!(e.starts_with("protect.tcp_ports[0]"), "{bad}: {e}");
        }
    }

    #[test]
    fn empty_selection_is_refused() {
        let e = error_of("[protect]\naddresses=[\"198.18.2.2\"]");
        assert!(e.contains("tcp_ports or udp_ports"), "{e}");
        let e = error_of("[protect]\naddresses=[]\ntcp_ports=[80]");
        assert!(e.contains("protect.addresses"), "{e}");
    }

    #[test]
    fn queue_values_are_checked() {
        let base = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n[queue]\n";
        for (bad, key) in [
            ("count = 0", "queue.count"),
            ("count = 65", "queue.count: 65 is more than 64"),
            ("first = 65535\ncount = 2", "queue.first"),
            ("kind = \"fast\"", "queue.kind"),
            ("rcvbuf_bytes = 10", "queue.rcvbuf_bytes"),
            ("max_len = 0", "queue.max_len"),
            ("max_delay_ms = 10001", "queue.max_delay_ms"),
            ("malformed = \"maybe\"", "malformed"),
        ] {
            let e = error_of(&format!("{base}{bad}"));
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn redirect_pairs_are_checked() {
        let base = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n[capabilities]\nkey_file=\"/k\"\n[redirect]\n";
        let ok = parse(
            &format!("{base}map=[{{listen=\"198.18.1.1\", to=\"198.18.2.2\"}}]"),
            "mbox",
        )
        .unwrap();
        assert_eq!(ok.redirect.len(), 1);
        let chains: Vec<String> = ok
            .ruleset(Role::Mbox)
            .chains
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            chains,
            [
                "to_victim",
                "from_victim",
                "redirect_in",
                "redirect_out",
                "icmp_errors"
            ]
        );
        for (pair, expect) in [
            (
                "listen=\"198.18.1.1\", to=\"2001:2::1\"",
                "one address family",
            ),
            (
                "listen=\"198.18.1.1\", to=\"198.18.9.9\"",
                "not in protect.addresses",
            ),
            (
                "listen=\"198.18.2.2\", to=\"198.18.2.2\"",
                "is a protected address",
            ),
            (
                "listen=\"nope\", to=\"198.18.2.2\"",
                "redirect.map[0].listen",
            ),
        ] {
            let e = error_of(&format!("{base}map=[{{{pair}}}]"));
            assert!(e.contains(expect), "{pair}: {e}");
        }
        let e = parse(&format!("{base}map=[]"), "victim")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the mbox"), "{e}");
        let no_caps = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n[redirect]\nmap=[]";
        assert!(error_of(no_caps).contains("needs the [capabilities] section"));
    }

    #[test]
    fn tunnel_settings_are_checked() {
        let base = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n[capabilities]\n";
        let mbox = format!("{base}key_file=\"/k\"\n[tunnel]\nkey_file=\"/t\"\n");
        let ok = parse(
            &format!("{mbox}source=[\"198.18.2.1\", \"2001:2::1\"]"),
            "mbox",
        )
        .unwrap();
        assert_eq!(ok.tunnel.unwrap().port, 6081);
        let victim = parse(
            &format!(
                "{base}mbox_interfaces=[\"eth1\"]\n[tunnel]\nport=7000\nkey_file=\"/t\"\nmboxes=[\"198.18.2.1\"]"
            ),
            "victim",
        )
        .unwrap();
        let chains: Vec<String> = victim
            .ruleset(Role::Victim)
            .chains
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(chains, ["inbound", "outbound", "tunnel_in"]);
        for (text, role, expect) in [
            (
                format!("{mbox}source=[]"),
                "mbox",
                "tunnel.source: list at least one",
            ),
            (
                format!("{mbox}source=[\"198.18.2.1\", \"198.18.2.3\"]"),
                "mbox",
                "one address per family",
            ),
            (format!("{mbox}source=[\"x\"]"), "mbox", "tunnel.source[0]"),
            (
                format!("{base}key_file=\"/k\"\n[tunnel]\nsource=[\"198.18.2.1\"]"),
                "mbox",
                "tunnel.key_file: the tunnel needs the key file",
            ),
            (
                format!("[queue]\ncount=2\n{mbox}source=[\"198.18.2.1\"]"),
                "mbox",
                "the mbox needs queue.count = 1",
            ),
            (
                format!("{mbox}source=[\"198.18.2.1\"]\nmboxes=[\"198.18.2.1\"]"),
                "mbox",
                "lists `source` only",
            ),
            (
                format!(
                    "{base}mbox_interfaces=[\"eth1\"]\n[tunnel]\nmboxes=[\"198.18.2.1\"]\nport=0"
                ),
                "victim",
                "tunnel.port",
            ),
        ] {
            let e = parse(&text, role).unwrap_err().to_string();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }

    #[test]
    fn capability_limits_are_checked() {
        let base = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n";
        for (extra, expect) in [
            (
                "[queue]\nfanout=true\n[capabilities]\nkey_file=\"/k\"",
                "queue.fanout",
            ),
            (
                "[capabilities]\nkey_file=\"/k\"\nperiod_ms=90000000",
                "more than a day",
            ),
            ("[capabilities]\nkey_file=\"/k\"\nrtt_ms=5000", "rtt_ms"),
            (
                "[capabilities]\nkey_file=\"/k\"\nfeedback_per_ack=4",
                "feedback_per_ack",
            ),
            (
                "[capabilities]\nkey_file=\"/k\"\nper_period=2000",
                "per_period",
            ),
            ("[capabilities]\nkey_file=\"/k\"\npath_mtu=500", "path_mtu"),
            (
                "[capabilities]\nkey_file=\"/k\"\nmax_senders=0",
                "max_senders",
            ),
            (
                "[capabilities]\nkey_file=\"/k\"\nkept_per_sender=100000",
                "kept_per_sender",
            ),
            ("[capabilities]", "key_file: the mbox needs"),
        ] {
            let e = error_of(&format!("{base}{extra}"));
            assert!(e.contains(expect), "{extra}: {e}");
        }
        let e = parse(&format!("{base}[capabilities]\nkey_file=\"/k\""), "victim")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the mbox holds the key"), "{e}");
    }

    #[test]
    fn victim_settings_that_would_corrupt_streams_are_refused() {
        let base = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n";
        let caps = "[capabilities]\nmbox_interfaces=[\"eth1\"]\n";
        for (extra, expect) in [
            (
                format!("[queue]\nbypass=true\n{caps}"),
                "queue.bypass: must be false",
            ),
            (
                format!("[queue]\nfail_open=true\n{caps}"),
                "queue.fail_open: must be false",
            ),
            (
                "[capabilities]\n".to_string(),
                "mbox_interfaces: list the interfaces",
            ),
        ] {
            let e = parse(&format!("{base}{extra}"), "victim")
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{extra}: {e}");
        }
        // Without capabilities nothing is stripped, and on the mbox both are policy.
        for (text, role) in [
            (
                format!("{base}[queue]\nbypass=true\nfail_open=true"),
                "victim",
            ),
            (
                format!(
                    "{base}[queue]\nbypass=true\nfail_open=true\n[capabilities]\nkey_file=\"/k\""
                ),
                "mbox",
            ),
        ] {
            parse(&text, role).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for (file, role) in [
            ("mbox.toml", "mbox"),
            ("victim.toml", "victim"),
            ("server.toml", SERVER),
        ] {
            load(&dir.join(file), role).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    /// A file is taken once two reads in a row agree; one that keeps changing is refused.
    #[test]
    fn a_config_changing_while_read_is_read_again_or_refused() {
        let script = |reads: &[&str]| {
            let mut it = reads.iter().map(|s| Ok(s.to_string()));
            settled(move || it.next().unwrap())
        };
        assert_eq!(script(&["a", "a"]), Ok("a".into()));
        assert_eq!(script(&["half", "whole", "whole"]), Ok("whole".into()));
        let e = script(&["1", "2", "3", "4", "5"]).unwrap_err();
        assert!(e.contains("kept changing while being read"), "{e}");
    }

    /// A server runs port policies without MiddlePolice: it needs `[ports]` and takes
    /// no capabilities; its config is otherwise a victim's.
    #[test]
    fn a_server_needs_port_policies_and_takes_no_capabilities() {
        let base = "[protect]\naddresses = [\"198.18.2.2\"]\ntcp_ports = [8080]\n";
        let c = parse(&format!("{base}[ports]\n"), SERVER).unwrap();
        assert!(c.port_policies && c.capabilities.is_none());
        for (extra, says) in [
            ("", "server: add a [ports] section"),
            (
                "[ports]\n[capabilities]\nmbox_interfaces = [\"eth1\"]\n",
                "[capabilities] and [tunnel] belong to `mpolice victim`",
            ),
        ] {
            let e = parse(&format!("{base}{extra}"), SERVER)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{extra:?}: {e}");
        }
    }

    /// The victim example's port policies, uncommented as an operator would: each rule
    /// loads, and so does its content alternative.
    #[test]
    fn the_example_port_policies_load_uncommented() {
        let text = include_str!("../../examples/victim.toml");
        let at = text.find("# [ports]").unwrap();
        let uncomment = |block: &str| -> String {
            block
                .lines()
                .map(|l| l.strip_prefix("# ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let ports = uncomment(&text[at..]);
        let c = parse(&format!("{}{ports}", &text[..at]), "victim").unwrap();
        assert_eq!(c.ports.len(), 2);
        let content = ports
            .replace("source = [", "# source = [")
            .replace("# content = [", "content = [");
        let c = parse(&format!("{}{content}", &text[..at]), "victim").unwrap();
        assert!(c.ports[0].examines());
    }
}
