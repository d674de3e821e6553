//! Port policies changed at run time (`mpolice ports ...`, the seed's setsockopt API):
//! forwarding rules set, deleted and flushed by incoming port, groups added, edited,
//! deleted and flushed by id. Each change is checked as the config is, put in the
//! kernel first where the nat chain must change (one batch: the chain's old rules or
//! its new ones, never none), then handed whole to the workers, which take it between
//! packets at their next tick. Each answer says what changed and lists what is in force.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::{self, Config};
use crate::driver::board::Board;
use crate::driver::nft::{self, PortRange, QueueKind, QueueTarget, RulesetSpec};
use crate::ports::{ForwardRule, Policies};

/// A change of the port policies, or a look at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortsRequest {
    List,
    /// Add the rule for its port, or replace the one there.
    ForwardSet(String),
    ForwardDel(u16),
    ForwardFlush,
    GroupAdd(String),
    GroupEdit(u32, String),
    GroupDel(u32),
    GroupFlush,
}

impl PortsRequest {
    /// The request line after `ports`.
    pub fn line(&self) -> String {
        match self {
            PortsRequest::List => "list".into(),
            PortsRequest::ForwardSet(t) => format!("forward set {t}"),
            PortsRequest::ForwardDel(p) => format!("forward del {p}"),
            PortsRequest::ForwardFlush => "forward flush".into(),
            PortsRequest::GroupAdd(t) => format!("group add {t}"),
            PortsRequest::GroupEdit(id, t) => format!("group edit {id} {t}"),
            PortsRequest::GroupDel(id) => format!("group del {id}"),
            PortsRequest::GroupFlush => "group flush".into(),
        }
    }

    /// Read what follows `ports` on a request line.
    pub fn parse(rest: &str) -> Result<PortsRequest, String> {
        let rest = rest.trim();
        let (verb, args) = split_words(rest, 2);
        let number = |w: &str| {
            w.trim()
                .parse::<u32>()
                .map_err(|_| format!("{w:?} is not a number"))
        };
        let port = |w: &str| {
            number(w).and_then(|n| u16::try_from(n).map_err(|_| format!("{n} is not a port")))
        };
        match (verb.as_slice(), args) {
            (["list"], "") => Ok(PortsRequest::List),
            (["forward", "set"], t) if !t.is_empty() => Ok(PortsRequest::ForwardSet(t.into())),
            (["forward", "del"], p) => port(p).map(PortsRequest::ForwardDel),
            (["forward", "flush"], "") => Ok(PortsRequest::ForwardFlush),
            (["group", "add"], t) if !t.is_empty() => Ok(PortsRequest::GroupAdd(t.into())),
            (["group", "edit"], rest) => {
                let (id, t) = split_words(rest, 1);
                let id = number(id.first().copied().unwrap_or(""))?;
                Ok(PortsRequest::GroupEdit(id, t.into()))
            }
            (["group", "del"], id) => number(id).map(PortsRequest::GroupDel),
            (["group", "flush"], "") => Ok(PortsRequest::GroupFlush),
            _ => Err(format!(
                "unknown ports request {rest:?}; send list, forward set TABLE|del PORT|flush, \
                 or group add TABLE|edit ID TABLE|del ID|flush"
            )),
        }
    }
}

/// The first `n` words of `s`, and the rest of it.
fn split_words(s: &str, n: usize) -> (Vec<&str>, &str) {
    let mut words = Vec::new();
    let mut rest = s.trim_start();
    while words.len() < n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (words, rest.trim_end())
}

/// The answer to a `ports` request: what changed, and the policies in force, each as
/// the TOML inline table `forward set` and `group add` take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsAnswer {
    pub changed: String,
    /// Outgoing ports of the rules in force that no socket listens on now: their
    /// connections would be reset by the kernel.
    #[serde(default)]
    pub unheard: Vec<u16>,
    pub forward: Vec<String>,
    /// `ID: TABLE`.
    pub groups: Vec<String>,
}

/// The outgoing ports of `forward` no socket of this namespace listens on (none if the
/// listeners cannot be read).
pub fn unheard(forward: &[ForwardRule]) -> Vec<u16> {
    let Ok(listening) = crate::driver::sockdiag::listeners() else {
        return Vec::new();
    };
    let mut ports: Vec<u16> = forward
        .iter()
        .flat_map(|r| r.outgoing())
        .filter(|p| !listening.iter().any(|l| l.port == *p))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What changes the policies: the config's protected ports to check changes against,
/// and what rebuilds the nat chain.
pub struct PolicyEditor {
    protected_tcp: Vec<PortRange>,
    /// The queues are balanced by flow (content rules need it).
    by_flow: bool,
    queue: QueueTarget,
    kind: QueueKind,
    next_group: AtomicU32,
}

impl PolicyEditor {
    pub fn new(cfg: &Config, kind: QueueKind) -> PolicyEditor {
        PolicyEditor {
            protected_tcp: cfg.protect.tcp_ports.clone(),
            by_flow: !cfg.queue.target.fanout,
            queue: cfg.queue.target,
            kind,
            next_group: AtomicU32::new(cfg.groups.len() as u32 + 1),
        }
    }

    /// Check later changes against the config `cfg` a reload put in force; group ids
    /// are still never reused (the config's are 1 to n).
    pub fn follow(&mut self, cfg: &Config) {
        self.protected_tcp.clone_from(&cfg.protect.tcp_ports);
        self.by_flow = !cfg.queue.target.fanout;
        let first_free = cfg.groups.len() as u32 + 1;
        self.next_group.fetch_max(first_free, Ordering::Relaxed);
    }

    /// Carry out `r` on the policies in `board`.
    pub fn answer(&self, board: &Board, r: &PortsRequest) -> Result<PortsAnswer, String> {
        let now = board.policies().get();
        let mut forward = now.forward.clone();
        let mut groups = now.groups.specs();
        let check = |e: config::ConfigError| e.to_string();
        let changed = match r {
            PortsRequest::List => String::new(),
            PortsRequest::ForwardSet(t) => {
                let rule =
                    config::parse_forward(t, &self.protected_tcp, self.by_flow).map_err(check)?;
                let said = match forward.iter_mut().find(|f| f.port == rule.port) {
                    Some(f) => {
                        *f = rule.clone();
                        "replaced"
                    }
                    None => {
                        forward.push(rule.clone());
                        "added"
                    }
                };
                format!("{said} the rule of port {}: {}", rule.port, rule.inline())
            }
            PortsRequest::ForwardDel(port) => {
                let before = forward.len();
                forward.retain(|f| f.port != *port);
                if forward.len() == before {
                    return Err(format!("no forwarding rule on port {port}"));
                }
                format!("deleted the rule of port {port}")
            }
            PortsRequest::ForwardFlush => {
                let n = forward.len();
                forward.clear();
                format!("deleted {n} forwarding rules")
            }
            PortsRequest::GroupAdd(t) => {
                let spec = config::parse_group(t, &self.protected_tcp).map_err(check)?;
                let id = self.next_group.fetch_add(1, Ordering::Relaxed);
                groups.push((id, spec.clone()));
                format!("added group {id}: {}", spec.inline())
            }
            PortsRequest::GroupEdit(id, t) => {
                let spec = config::parse_group(t, &self.protected_tcp).map_err(check)?;
                let g = groups.iter_mut().find(|(g, _)| g == id);
                let g = g.ok_or_else(|| format!("no group {id}"))?;
                g.1 = spec.clone();
                format!("group {id} is now {}", spec.inline())
            }
            PortsRequest::GroupDel(id) => {
                let before = groups.len();
                groups.retain(|(g, _)| g != id);
                if groups.len() == before {
                    return Err(format!("no group {id}"));
                }
                format!("deleted group {id}")
            }
            PortsRequest::GroupFlush => {
                let n = groups.len();
                groups.clear();
                format!("deleted {n} groups")
            }
        };
        if forward != now.forward {
            self.install_forward(&forward)?;
        }
        let policies = Arc::new(Policies {
            forward,
            groups: Arc::new(now.groups.changed(groups)),
        });
        if !changed.is_empty() {
            tracing::info!("ports: {changed}");
            board.policies().update(|p| {
                *p = Arc::clone(&policies);
                (true, ())
            });
        }
        Ok(PortsAnswer {
            changed,
            unheard: unheard(&policies.forward),
            forward: policies.forward.iter().map(ForwardRule::inline).collect(),
            groups: policies
                .groups
                .specs()
                .iter()
                .map(|(id, s)| format!("{id}: {}", s.inline()))
                .collect(),
        })
    }

    /// Put the nat chain for `forward` in the kernel in place of the one there.
    fn install_forward(&self, forward: &[ForwardRule]) -> Result<(), String> {
        let mut spec = RulesetSpec {
            table: nft::TABLE.to_owned(),
            role: nft::Role::Victim,
            chains: Vec::new(),
            channel: None,
        };
        nft::add_forward_chain(&mut spec, &config::forward_pairs(forward), &self.queue);
        nft::replace_rules(nft::TABLE, &spec.chains[0], self.kind).map_err(|e| {
            format!("the kernel refused the new forwarding rules (nothing changed): {e}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_requests_read_back_as_they_are_written() {
        let table = "{ port = 8080, default = 8082, dice = [{ percent = 30, to = 8081 }] }";
        for r in [
            PortsRequest::List,
            PortsRequest::ForwardSet(table.into()),
            PortsRequest::ForwardDel(8080),
            PortsRequest::ForwardFlush,
            PortsRequest::GroupAdd("{ accept_rate = 5, port = 8080 }".into()),
            PortsRequest::GroupEdit(3, "{ accept_rate = 6, port = 8080 }".into()),
            PortsRequest::GroupDel(3),
            PortsRequest::GroupFlush,
        ] {
            assert_eq!(
                PortsRequest::parse(&r.line()),
                Ok(r.clone()),
                "{}",
                r.line()
            );
        }
        for bad in [
            "",
            "list all",
            "forward set",
            "forward del 70000",
            "forward del x",
            "group edit x {}",
            "group add",
            "group remove 1",
        ] {
            let e = PortsRequest::parse(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
        assert_eq!(split_words("  a  b c d ", 2), (vec!["a", "b"], "c d"));
        assert_eq!(split_words("a", 2), (vec!["a"], ""));
    }
}
