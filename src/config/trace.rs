//! The `[trace]` section: where the packet-journey trace goes and which packets it
//! follows (see `crate::trace`). Without the section, nothing is traced.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, RawPort, ports};
use crate::driver::nft::{Prefix, Selection};
use crate::trace::Filter;
use crate::wire::proto;

/// Packets the writer's channel holds by default, and at most.
pub const DEFAULT_BUFFER_PACKETS: usize = 4096;
/// The channel allocates its room at start (about 700 bytes a packet): 64 Ki of them
/// take some 45 MB.
const MAX_BUFFER_PACKETS: usize = 1 << 16;

/// Tracing on: the raw trace file, which packets, and the room for traces in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    pub file: PathBuf,
    pub filter: Filter,
    /// Traced packets waiting for the writer at most; past it, traces are dropped and
    /// counted (never packets).
    pub buffer_packets: usize,
    /// pcap on: the most bytes of each packet the pcap files keep (None: no pcaps).
    pub pcap_snap: Option<u32>,
    /// The kernel's side too: protected traffic is marked with `meta nftrace` and the
    /// kernel's trace events go into the trace.
    pub kernel: bool,
}

impl TraceSettings {
    /// Every packet to `file`, with the default buffer (`mpolice mbox --trace FILE`).
    pub fn all_to(file: PathBuf) -> TraceSettings {
        TraceSettings {
            file,
            filter: Filter::default(),
            buffer_packets: DEFAULT_BUFFER_PACKETS,
            pcap_snap: None,
            kernel: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrace {
    file: PathBuf,
    #[serde(default = "one")]
    sample: i64,
    protocol: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default = "default_buffer")]
    buffer_packets: i64,
    #[serde(default)]
    pcap: bool,
    #[serde(default)]
    kernel: bool,
    #[serde(default = "default_snap")]
    pcap_snap_bytes: i64,
}

/// Bytes of each packet the pcap files keep by default: a full Ethernet-sized packet
/// with its capability trailer, which lies at the packet's end.
pub const DEFAULT_PCAP_SNAP: u32 = 2048;

fn default_snap() -> i64 {
    i64::from(DEFAULT_PCAP_SNAP)
}

fn one() -> i64 {
    1
}

fn default_buffer() -> i64 {
    DEFAULT_BUFFER_PACKETS as i64
}

pub(super) fn validate(t: RawTrace) -> Result<TraceSettings, ConfigError> {
    let err = |m: String| Err(ConfigError(m));
    if t.file.as_os_str().is_empty() {
        return err("trace.file: name the file the trace is written to".into());
    }
    let Ok(sample) = u64::try_from(t.sample) else {
        return err(format!("trace.sample: {} is not a count", t.sample));
    };
    if sample == 0 {
        return err(
            "trace.sample: 0 would trace nothing; use 1 to trace every packet, N for one in N"
                .into(),
        );
    }
    let buffer_packets = match usize::try_from(t.buffer_packets) {
        Ok(n) if (1..=MAX_BUFFER_PACKETS).contains(&n) => n,
        _ => {
            return err(format!(
                "trace.buffer_packets: {} is not between 1 and {MAX_BUFFER_PACKETS}",
                t.buffer_packets
            ));
        }
    };
    let protocol = t.protocol.as_deref().map(protocol).transpose()?;
    let hosts = t
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            h.parse::<Prefix>()
                .map_err(|e| ConfigError(format!("trace.hosts[{i}]: {h:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = ports("trace.ports", &t.ports)?;
    if !ports.is_empty() && protocol.is_some_and(|p| p != proto::TCP && p != proto::UDP) {
        return err(
            "trace.ports: only TCP and UDP have ports; drop the ports or the protocol".into(),
        );
    }
    let snap = match u32::try_from(t.pcap_snap_bytes) {
        Ok(n) if (1..=crate::trace::pcap::MAX_SNAP).contains(&n) => n,
        _ => {
            return err(format!(
                "trace.pcap_snap_bytes: {} is not between 1 and {}",
                t.pcap_snap_bytes,
                crate::trace::pcap::MAX_SNAP
            ));
        }
    };
    Ok(TraceSettings {
        pcap_snap: t.pcap.then_some(snap),
        kernel: t.kernel,
        file: t.file,
        filter: Filter {
            sample,
            protocol,
            hosts,
            ports,
        },
        buffer_packets,
    })
}

/// Refuse a filter that would mark nothing in the kernel, or need too many rules.
pub(super) fn check_kernel_marks(protected: &Selection, f: &Filter) -> Result<(), ConfigError> {
    let marks = crate::driver::nft::trace_marks(protected, f).len();
    let max = crate::driver::nft::MAX_TRACE_RULES;
    if marks == 0 {
        return Err(ConfigError(
            "trace.hosts: no host is of a protected address's family and kernel = true would mark nothing; add one or drop kernel".into(),
        ));
    }
    if marks > max {
        return Err(ConfigError(format!(
            "trace: kernel = true with these hosts and ports needs {marks} marking rules per chain (at most {max}); narrow trace.hosts or trace.ports"
        )));
    }
    Ok(())
}

/// A protocol by name (tcp, udp, icmp, icmpv6) or number.
fn protocol(name: &str) -> Result<u8, ConfigError> {
    match name {
        "tcp" => Ok(proto::TCP),
        "udp" => Ok(proto::UDP),
        "icmp" => Ok(proto::ICMP),
        // `trace format` names it icmp6, as tcpdump does.
        "icmpv6" | "icmp6" => Ok(proto::ICMPV6),
        n => n.parse::<u8>().map_err(|_| {
            ConfigError(format!(
                "trace.protocol: {n:?} is not tcp, udp, icmp, icmpv6 or a protocol number"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = "[protect]\naddresses = [\"198.18.2.2\"]\ntcp_ports = [80]\n";

    fn with_trace(lines: &str) -> Result<Option<TraceSettings>, String> {
        parse(&format!("{BASE}[trace]\n{lines}"), "mbox")
            .map(|c| c.trace)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_trace_section_sets_the_file_and_the_filter() {
        assert_eq!(parse(BASE, "victim").unwrap().trace, None, "off by default");
        let t = with_trace("file = \"/tmp/t\"").unwrap().unwrap();
        assert_eq!(t, TraceSettings::all_to("/tmp/t".into()));
        let t = with_trace(
            "file = \"/tmp/t\"\nsample = 10\nprotocol = \"udp\"\nhosts = [\"2001:2::/48\"]\n\
             ports = [53, \"8000-8100\"]\nbuffer_packets = 100",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.filter.sample, t.filter.protocol, t.buffer_packets),
            (10, Some(proto::UDP), 100)
        );
        assert_eq!((t.filter.hosts.len(), t.filter.ports.len()), (1, 2));
        let t = with_trace("file = \"/tmp/t\"\nprotocol = \"47\"")
            .unwrap()
            .unwrap();
        assert_eq!((t.filter.protocol, t.pcap_snap), (Some(47), None));
        let t = with_trace("file = \"/tmp/t\"\npcap = true")
            .unwrap()
            .unwrap();
        assert_eq!((t.pcap_snap, t.kernel), (Some(DEFAULT_PCAP_SNAP), false));
    }

    #[test]
    fn the_kernel_path_adds_the_marking_chains_to_the_ruleset() {
        let chains = |extra: &str| {
            let c = parse(&format!("{BASE}{extra}"), "victim").unwrap();
            let spec = c.ruleset(crate::driver::nft::Role::Victim);
            spec.chains
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        assert!(!chains("").iter().any(|c| c.starts_with("trace")));
        let traced = chains("[trace]\nfile = \"/t\"\nkernel = true");
        for name in ["trace_in", "trace_out"] {
            assert!(traced.iter().any(|c| c == name), "{traced:?}");
        }
    }

    #[test]
    fn a_bad_trace_section_is_refused_by_name() {
        for (lines, says) in [
            ("sample = 1", "missing field `file`"),
            ("file = \"\"", "trace.file"),
            (
                "file = \"/t\"\nsample = 0",
                "trace.sample: 0 would trace nothing",
            ),
            ("file = \"/t\"\nsample = -2", "trace.sample: -2"),
            (
                "file = \"/t\"\nprotocol = \"sctp\"",
                "trace.protocol: \"sctp\"",
            ),
            ("file = \"/t\"\nprotocol = \"300\"", "trace.protocol"),
            (
                "file = \"/t\"\nhosts = [\"198.18.0.0/33\"]",
                "trace.hosts[0]",
            ),
            ("file = \"/t\"\nports = [0]", "trace.ports[0]"),
            ("file = \"/t\"\nports = [70000]", "trace.ports[0]"),
            (
                "file = \"/t\"\nprotocol = \"icmp\"\nports = [80]",
                "only TCP and UDP",
            ),
            (
                "file = \"/t\"\nbuffer_packets = 0",
                "trace.buffer_packets: 0",
            ),
            (
                "file = \"/t\"\nbuffer_packets = 99999999",
                "trace.buffer_packets",
            ),
            ("file = \"/t\"\nfilter = \"tcp\"", "unknown field `filter`"),
            (
                "file = \"/t\"\npcap = true\npcap_snap_bytes = 0",
                "trace.pcap_snap_bytes: 0",
            ),
            (
                "file = \"/t\"\npcap_snap_bytes = 70000",
                "trace.pcap_snap_bytes",
            ),
            (
                "file = \"/t\"\nkernel = true\nhosts = [\"2001:2::1\"]",
                "kernel = true would mark nothing",
            ),
            (
                &format!(
                    "file = \"/t\"\nkernel = true\nports = [{}]",
                    (1000..1070)
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                "needs 560 marking rules per chain (at most 256)",
            ),
        ] {
            let e = with_trace(lines).unwrap_err();
            assert!(e.contains(says), "{lines:?}: {e}");
        }
    }
}
