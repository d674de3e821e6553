//! Traffic groups (the seed's socket groups): quotas on a port's new connections and on
//! the bytes it sends, shared by every worker of the engine.
//!
//! - `accept_rate`: at most `rate` new connections a second on a port;
//! - `accept_ratio`: a total rate shared between ports in the ratio of their shares,
//!   each port's part its own (an idle port's part is not lent to the others);
//! - `output_rate`: at most so many bytes a second of payload sent from a port.
//!
//! Past its quota a group refuses (`refuse`: a new connection gets a reset at once, the
//! seed's "nonblock") or holds back (`hold`: the SYN is dropped and the client sends it
//! again, as a full accept queue would make it). Output past its quota is held back:
//! the segment is dropped and TCP sends it again, slower.
//!
//! Each quota is a GCRA (a token bucket kept as its next conforming time) in one atomic
//! word, so the workers share it without a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What happens past a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Over {
    Refuse,
    Hold,
}

/// One group as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub kind: GroupKind,
    pub over: Over,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupKind {
    /// New connections a second on `port`, with bursts of `burst`.
    AcceptRate { port: u16, rate: f64, burst: f64 },
    /// `rate` new connections a second shared by `ports` in the ratio of their shares.
    AcceptRatio {
        ports: Vec<(u16, u32)>,
        rate: f64,
        burst: f64,
    },
    /// Payload bytes a second sent from `port`, with bursts of `burst` bytes; with
    /// `ftp`, the data connections set up on `port` count too (see `ftp`).
    OutputRate {
        port: u16,
        rate: f64,
        burst: f64,
        ftp: bool,
    },
}

impl GroupSpec {
    /// The group as a TOML inline table, as the config and `mpolice ports group add`
    /// take it.
    pub fn inline(&self) -> String {
        let over = match self.over {
            Over::Refuse => "refuse",
            Over::Hold => "hold",
        };
        let body = match &self.kind {
            GroupKind::AcceptRate { port, rate, burst } => {
                format!("accept_rate = {rate}, port = {port}, burst = {burst}")
            }
            GroupKind::AcceptRatio { ports, rate, burst } => {
                let each: Vec<String> = ports
                    .iter()
                    .map(|(port, share)| format!("{{ port = {port}, share = {share} }}"))
                    .collect();
                format!(
                    "accept_ratio = {rate}, ports = [{}], burst = {burst}",
                    each.join(", ")
                )
            }
            GroupKind::OutputRate {
                port,
                rate,
                burst,
                ftp,
            } => {
                let ftp = if *ftp { ", ftp = true" } else { "" };
                format!("output_rate = {rate}, port = {port}, burst = {burst}{ftp}")
            }
        };
        format!("{{ {body}, over = \"{over}\" }}")
    }
}

/// The mark of a SYN the groups refuse: the input chain answers it with a reset.
pub const REFUSE_MARK: u32 = 0x4d52_0000;

/// A quota: `rate` units a second, `burst` at once, shared between threads.
#[derive(Debug)]
struct Quota {
    /// Nanoseconds after the epoch when the next unit conforms (the GCRA's TAT).
    next_ns: AtomicU64,
    ns_per_unit: f64,
    /// How far ahead of now `next_ns` may run: the burst's worth.
    slack_ns: u64,
}

impl Quota {
    fn new(rate: f64, burst: f64) -> Quota {
        let ns_per_unit = 1e9 / rate;
        Quota {
            next_ns: AtomicU64::new(0),
            ns_per_unit,
            slack_ns: (ns_per_unit * burst.max(1.0)) as u64,
        }
    }

    /// Take `units` at `now_ns` if the quota has them.
    fn take(&self, now_ns: u64, units: u64) -> bool {
        let cost = (self.ns_per_unit * units as f64) as u64;
        let mut next = self.next_ns.load(Ordering::Relaxed);
        loop {
            let from = next.max(now_ns);
            if from + cost > now_ns + self.slack_ns {
                return false;
            }
            match self.next_ns.compare_exchange_weak(
                next,
                from + cost,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => next = seen,
            }
        }
    }
}

/// What a group counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    /// Connections admitted, or payload segments sent.
    pub passed: u64,
    /// Connections refused with a reset.
    pub refused: u64,
    /// SYNs or segments held back (dropped for the sender to send again).
    pub held: u64,
}

/// One port's quota in a group, and its counts.
#[derive(Debug)]
struct Member {
    port: u16,
    quota: Quota,
    passed: AtomicU64,
    refused: AtomicU64,
    held: AtomicU64,
}

impl Member {
    fn new(port: u16, rate: f64, burst: f64) -> Member {
        Member {
            port,
            quota: Quota::new(rate, burst),
            passed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }
}

/// A group's state: its id and spec, which packets it meters, its members.
#[derive(Debug)]
struct Group {
    id: u32,
    spec: GroupSpec,
    output: bool,
    members: Vec<Member>,
}

/// Every group, shared by the workers. A change makes a new `Groups` in which the
/// groups it left alone keep their quotas and counts.
#[derive(Debug)]
pub struct Groups {
    epoch: Instant,
    groups: Vec<Arc<Group>>,
}

/// What a group decides for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    Refuse,
    Hold,
}

/// One row of what the groups counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    /// The group's id (`mpolice ports group edit ID`, `del ID`).
    #[serde(default)]
    pub id: u32,
    /// `accept` (new connections) or `output` (segments sent).
    pub what: String,
    pub port: u16,
    pub counts: GroupCounts,
}

impl Default for Groups {
    /// No groups.
    fn default() -> Groups {
        Groups::new(&[], Instant::now())
    }
}

impl Groups {
    /// The groups of `specs`, numbered from 1.
    pub fn new(specs: &[GroupSpec], epoch: Instant) -> Groups {
        let numbered: Vec<(u32, GroupSpec)> = (1..).zip(specs.iter().cloned()).collect();
        Groups {
            epoch,
            groups: Vec::new(),
        }
        .changed(numbered)
    }

    /// The groups `specs` (by id), keeping the state of those whose spec is unchanged.
    pub fn changed(&self, specs: Vec<(u32, GroupSpec)>) -> Groups {
        let groups = specs
            .into_iter()
            .map(|(id, spec)| {
                let kept = self.groups.iter().find(|g| g.id == id && g.spec == spec);
                kept.map_or_else(|| Arc::new(Group::new(id, spec)), Arc::clone)
            })
            .collect();
        Groups {
            epoch: self.epoch,
            groups,
        }
    }

    /// The groups by id.
    pub fn specs(&self) -> Vec<(u32, GroupSpec)> {
        self.groups.iter().map(|g| (g.id, g.spec.clone())).collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether `port` is the control port of an FTP output group.
    pub fn ftp_control(&self, port: u16) -> bool {
        self.groups.iter().any(|g| {
            matches!(g.spec.kind, GroupKind::OutputRate { port: p, ftp: true, .. } if p == port)
        })
    }

    /// Whether any group is an FTP output group.
    pub fn any_ftp(&self) -> bool {
        self.groups
            .iter()
            .any(|g| matches!(g.spec.kind, GroupKind::OutputRate { ftp: true, .. }))
    }
}

impl Group {
    /// A group's members: one quota per port, a ratio's rate split by the shares.
    fn new(id: u32, spec: GroupSpec) -> Group {
        let (output, members) = match &spec.kind {
            GroupKind::AcceptRate { port, rate, burst } => {
                (false, vec![Member::new(*port, *rate, *burst)])
            }
            GroupKind::AcceptRatio { ports, rate, burst } => {
                let total: u32 = ports.iter().map(|&(_, share)| share).sum();
                let part = |share: u32| f64::from(share) / f64::from(total.max(1));
                let members = ports
                    .iter()
                    .map(|&(port, share)| {
                        Member::new(port, rate * part(share), (burst * part(share)).max(1.0))
                    })
                    .collect();
                (false, members)
            }
            GroupKind::OutputRate {
                port, rate, burst, ..
            } => (true, vec![Member::new(*port, *rate, *burst)]),
        };
        Group {
            id,
            spec,
            output,
            members,
        }
    }
}

impl Groups {
    /// A new connection's SYN to `port` at `now`.
    pub fn syn(&self, port: u16, now: Instant) -> Admit {
        self.decide(false, port, 1, now)
    }

    /// `payload` bytes sent from `port` at `now` (segments without payload pass).
    pub fn sent(&self, port: u16, payload: usize, now: Instant) -> Admit {
        if payload == 0 {
            return Admit::Pass;
        }
        self.decide(true, port, payload as u64, now)
    }

    fn decide(&self, output: bool, port: u16, units: u64, now: Instant) -> Admit {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut verdict = Admit::Pass;
        for g in self.groups.iter().filter(|g| g.output == output) {
            let over = g.spec.over;
            for m in g.members.iter().filter(|m| m.port == port) {
                if m.quota.take(now_ns, units) {
                    m.passed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let counter = match (output, over) {
                    (false, Over::Refuse) => &m.refused,
                    _ => &m.held,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                verdict = match (output, over) {
                    (false, Over::Refuse) => Admit::Refuse,
                    _ => Admit::Hold,
                };
            }
        }
        verdict
    }

    /// What each group's members counted.
    pub fn rows(&self) -> Vec<GroupRow> {
        self.groups
            .iter()
            .flat_map(|g| {
                g.members.iter().map(move |m| GroupRow {
                    id: g.id,
                    what: if g.output { "output" } else { "accept" }.into(),
                    port: m.port,
                    counts: GroupCounts {
                        passed: m.passed.load(Ordering::Relaxed),
                        refused: m.refused.load(Ordering::Relaxed),
                        held: m.held.load(Ordering::Relaxed),
                    },
                })
            })
            .collect()
    }
}
