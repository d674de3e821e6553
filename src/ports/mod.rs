//! Port policies (the seed's patched-kernel socket API, as configuration): forwarding
//! rules that send each new connection to an incoming port on to one of several local
//! ports, chosen once per connection.
//!
//! The choice is made on the connection's SYN, in the engine, and carried out by the
//! kernel: the SYN leaves the queue with a mark naming the chosen port ([`mark`]), and a
//! rule of the nat chain redirects the marked SYN to it. Conntrack then translates every
//! later packet of the connection, both ways, so replies reach the client from the port
//! it connected to. Pure: no sockets, no clock; the driver seeds the dice.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::driver::nft::Prefix;

pub mod ftp;
pub mod groups;
pub mod meter;
pub mod splice;
pub use ftp::{FtpCounts, FtpData};
pub use groups::{Admit, GroupKind, GroupRow, GroupSpec, Groups, Over, REFUSE_MARK};
pub use meter::{PortCounts, PortMeter, PortRow, PortStats};
pub use splice::{Action, SpliceCounts, Splicer, Step};

/// One incoming port's forwarding rule: where its new connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRule {
    /// The port clients connect to.
    pub port: u16,
    /// Where a connection goes when no branch takes it.
    pub default: u16,
    pub branches: Branches,
}

/// How a rule picks among its outgoing ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Branches {
    /// By the client's address: the longest prefix that holds it.
    Source(Vec<(Prefix, u16)>),
    /// By chance: each branch takes this many connections in 100.
    Dice(Vec<(u8, u16)>),
    /// By the client's first data: the first branch whose bytes it holds (see `splice`).
    Content(Vec<(Vec<u8>, u16)>),
}

impl ForwardRule {
    /// Every port this rule may send a connection to, the default first.
    pub fn outgoing(&self) -> Vec<u16> {
        let mut ports = vec![self.default];
        let branch_ports: Vec<u16> = match &self.branches {
            Branches::Source(b) => b.iter().map(|&(_, to)| to).collect(),
            Branches::Dice(b) => b.iter().map(|&(_, to)| to).collect(),
            Branches::Content(b) => b.iter().map(|&(_, to)| to).collect(),
        };
        for to in branch_ports {
            if !ports.contains(&to) {
                ports.push(to);
            }
        }
        ports
    }

    /// The rule as a TOML inline table, as the config and `mpolice ports forward set`
    /// take it.
    pub fn inline(&self) -> String {
        let branches = match &self.branches {
            Branches::Source(b) if b.is_empty() => String::new(),
            Branches::Source(b) => {
                let each: Vec<String> = b
                    .iter()
                    .map(|(p, to)| format!("{{ from = \"{p}\", to = {to} }}"))
                    .collect();
                format!(", source = [{}]", each.join(", "))
            }
            Branches::Dice(b) => {
                let each: Vec<String> = b
                    .iter()
                    .map(|(percent, to)| format!("{{ percent = {percent}, to = {to} }}"))
                    .collect();
                format!(", dice = [{}]", each.join(", "))
            }
            Branches::Content(b) => {
                let each: Vec<String> = b
                    .iter()
                    .map(|(bytes, to)| format!("{{ {}, to = {to} }}", pattern_key(bytes)))
                    .collect();
                format!(", content = [{}]", each.join(", "))
            }
        };
        format!(
            "{{ port = {}, default = {}{branches} }}",
            self.port, self.default
        )
    }

    /// The port a new connection from `client` goes to; `roll` is a draw in 0..100. A
    /// content rule chooses later, by [`ForwardRule::by_content`].
    pub fn choose(&self, client: IpAddr, roll: u8) -> u16 {
        match &self.branches {
            Branches::Content(_) => self.default,
            Branches::Source(b) => b
                .iter()
                .filter(|(p, _)| p.contains(client))
                .max_by_key(|(p, _)| p.len())
                .map_or(self.default, |&(_, to)| to),
            Branches::Dice(b) => {
                let mut below = 0u16;
                for &(percent, to) in b {
                    below += u16::from(percent);
                    if u16::from(roll) < below {
                        return to;
                    }
                }
                self.default
            }
        }
    }
}

impl ForwardRule {
    /// The port a connection goes to whose first data is `payload`: the first content
    /// branch whose bytes it holds, else the default.
    pub fn by_content(&self, payload: &[u8]) -> u16 {
        let Branches::Content(b) = &self.branches else {
            return self.default;
        };
        b.iter()
            .find(|(pattern, _)| payload.windows(pattern.len()).any(|w| w == pattern))
            .map_or(self.default, |&(_, to)| to)
    }

    /// Whether the rule waits for the first data to choose.
    pub fn examines(&self) -> bool {
        matches!(self.branches, Branches::Content(_))
    }
}

/// A content pattern as the config names it: text when it prints as such, else hex.
fn pattern_key(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => {
            format!("pattern = {}", toml::Value::String(text.to_owned()))
        }
        _ => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("hex = \"{hex}\"")
        }
    }
}

/// The port policies in force, shared by the workers and replaced whole on a change.
#[derive(Debug, Default)]
pub struct Policies {
    pub forward: Vec<ForwardRule>,
    pub groups: std::sync::Arc<Groups>,
}

/// The marks the engine gives a forwarded SYN: these high bits ("MP"), and the chosen
/// port in the low 16. The nat chain matches the whole mark.
pub const MARK_BASE: u32 = 0x4d50_0000;

/// The mark that sends a SYN to `port`.
pub fn mark(port: u16) -> u32 {
    MARK_BASE | u32::from(port)
}

/// The forwarding stage: the rules, and the dice.
#[derive(Debug, Clone)]
pub struct Forwarder {
    rules: Vec<ForwardRule>,
    dice: u64,
    /// Connections sent on, by (incoming, outgoing) port.
    counts: Vec<Forwarded>,
}

/// Connections one rule sent from its port to one outgoing port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub port: u16,
    pub to: u16,
    pub connections: u64,
}

impl Forwarder {
    /// The stage for `rules`; `seed` starts its dice.
    pub fn new(rules: Vec<ForwardRule>, seed: u64) -> Forwarder {
        let counts = rules
            .iter()
            .flat_map(|r| {
                r.outgoing().into_iter().map(|to| Forwarded {
                    port: r.port,
                    to,
                    connections: 0,
                })
            })
            .collect();
        Forwarder {
            rules,
            dice: seed,
            counts,
        }
    }

    /// A new connection from `client` to `port`: the mark its SYN leaves with (None: no
    /// rule for the port, or the rule keeps it on its port, or it waits for the first
    /// data: see [`Forwarder::examines`]).
    pub fn syn(&mut self, client: IpAddr, port: u16) -> Option<u32> {
        let rule = self.rules.iter().find(|r| r.port == port)?;
        let to = match rule.branches {
            Branches::Dice(_) => rule.choose(client, roll(&mut self.dice)),
            Branches::Source(_) => rule.choose(client, 0),
            Branches::Content(_) => return None,
        };
        self.sent(port, to)
    }

    /// Whether `port`'s new connections wait for their first data to choose.
    pub fn examines(&self, port: u16) -> bool {
        self.rules.iter().any(|r| r.port == port && r.examines())
    }

    /// Whether any rule waits for the first data.
    pub fn examines_any(&self) -> bool {
        self.rules.iter().any(ForwardRule::examines)
    }

    /// A connection to `port` whose first data is `payload` (empty: none came): the mark
    /// its SYN leaves with, as [`Forwarder::syn`].
    pub fn content(&mut self, port: u16, payload: &[u8]) -> Option<u32> {
        let to = self
            .rules
            .iter()
            .find(|r| r.port == port)?
            .by_content(payload);
        self.sent(port, to)
    }

    /// Count a connection sent from `port` to `to`; its mark.
    fn sent(&mut self, port: u16, to: u16) -> Option<u32> {
        if let Some(c) = self
            .counts
            .iter_mut()
            .find(|c| c.port == port && c.to == to)
        {
            c.connections += 1;
        }
        (to != port).then(|| mark(to))
    }

    /// Take `rules` in place of the ones it has, keeping the counts of the (incoming,
    /// outgoing) ports they still have.
    pub fn set_rules(&mut self, rules: Vec<ForwardRule>) {
        let old = std::mem::take(&mut self.counts);
        let mut new = Forwarder::new(rules, self.dice);
        for c in &mut new.counts {
            if let Some(o) = old.iter().find(|o| (o.port, o.to) == (c.port, c.to)) {
                c.connections = o.connections;
            }
        }
        *self = new;
    }

    /// What the stage counted, one entry per (incoming, outgoing) port.
    pub fn counts(&self) -> &[Forwarded] {
        &self.counts
    }
}

/// A draw in 0..100 from the dice's state (splitmix64: the dice need spread, not
/// secrecy).
fn roll(state: &mut u64) -> u8 {
    (splitmix64(state) % 100) as u8
}

/// The next draw of a splitmix64 generator at `state`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_splice;
