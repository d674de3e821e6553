//! Reload: the config file read again (SIGHUP, `mpolice reload`) and put in force
//! without a gap.
//!
//! A new config that parses and changes only what can change live is applied in this
//! order: the kernel's rules first, replaced in one netlink batch (a packet meets the
//! old rules or the new ones); then the workers' settings, which each worker takes
//! before its next packet (the protected selection, the port policies). Per-sender and
//! per-connection state stays: the stages are not rebuilt, and the traffic groups a
//! reload leaves alone keep their quotas. A config that does not parse, or changes
//! what cannot change live (named in the refusal), changes nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::board::Board;
use super::nft::{self, QueueKind, Role, RulesetSpec};
use super::policies::{PolicyEditor, PortsAnswer, PortsRequest, unheard};
use crate::config::{self, Config};
use crate::ports::Policies;

/// What a reload did, as `mpolice reload` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The file read.
    pub file: String,
    /// Each section that changed, with what it is now (empty: the same config).
    pub changed: Vec<String>,
    /// Outgoing ports of the forwarding rules nothing listens on.
    #[serde(default)]
    pub unheard: Vec<u16>,
}

/// The running config and what puts a new one in force; shared by the control socket
/// (`reload`, `ports`) and the main loop (SIGHUP), one change at a time.
pub struct Reloader {
    path: PathBuf,
    /// The role's name, as the config is checked (`mbox`, `victim`, `server`).
    name: &'static str,
    role: Role,
    kind: QueueKind,
    cfg: Config,
    /// The chains in the kernel now (shared with the guard that removes them at exit).
    installed: Arc<Mutex<RulesetSpec>>,
    board: Arc<Board>,
    /// With port policies: what changes them at run time.
    editor: Option<PolicyEditor>,
}

impl Reloader {
    pub fn new(
        (path, name, role): (PathBuf, &'static str, Role),
        (cfg, kind): (Config, QueueKind),
        installed: Arc<Mutex<RulesetSpec>>,
        board: Arc<Board>,
    ) -> Reloader {
        let editor = cfg.port_policies.then(|| PolicyEditor::new(&cfg, kind));
        Reloader {
            path,
            name,
            role,
            kind,
            cfg,
            installed,
            board,
            editor,
        }
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A `ports` request, against the policies in force.
    pub fn ports(&self, r: &PortsRequest) -> Result<PortsAnswer, String> {
        match &self.editor {
            Some(editor) => editor.answer(&self.board, r),
            None => Err("only a victim or server with a [ports] section has port policies".into()),
        }
    }

    /// Read the config file again and put it in force; the error says why nothing
    /// changed.
    pub fn reload(&mut self) -> Result<Reloaded, String> {
        let refused = |why: String| format!("reload refused, the running config stays: {why}");
        let new = config::load(&self.path, self.name).map_err(|e| refused(e.to_string()))?;
        let fixed = fixed_changes(self.role, &self.cfg, &new);
        if !fixed.is_empty() {
            return Err(refused(format!(
                "{} cannot change while the engine runs (restart it to change them)",
                fixed.join(", ")
            )));
        }
        let mut changed = changed_sections(&self.cfg, &new);
        let spec = new.ruleset(self.role);
        {
            let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
            *installed = nft::replace_chains(&installed, &spec, self.kind)
                .map_err(|e| refused(format!("the kernel refused the new rules: {e}")))?;
        }
        // The workers take what changes live from it before their next packet.
        self.board.config().update(|c| {
            *c = Some(Arc::new(new.clone()));
            (true, ())
        });
        // The config's list replaces the run-time changes (`mpolice withhold`).
        if self.cfg.capabilities.is_some() && self.board.set_withheld(withheld(&new)) {
            let said =
                "capabilities.withhold_feedback: the config's list replaces the run-time changes";
            if !changed
                .iter()
                .any(|c| c.starts_with("capabilities.withhold_feedback"))
            {
                changed.push(said.into());
            }
        }
        if new.port_policies && self.put_policies(&new) {
            changed
                .push("ports: the config's rules and groups replace the run-time changes".into());
        }
        if let Some(editor) = self.editor.as_mut() {
            editor.follow(&new);
        }
        let unheard = unheard(&new.ports);
        self.cfg = new;
        Ok(Reloaded {
            file: self.path.display().to_string(),
            changed,
            unheard,
        })
    }

    /// The config's rules and groups in force, in place of whatever run-time changes
    /// made: the groups it leaves as they were keep their quotas and counts. Whether
    /// run-time changes were replaced.
    fn put_policies(&self, new: &Config) -> bool {
        let numbered: Vec<_> = (1..).zip(new.groups.iter().cloned()).collect();
        let old: Vec<_> = (1..).zip(self.cfg.groups.iter().cloned()).collect();
        self.board.policies().update(|p| {
            let run_time = p.forward != self.cfg.ports || p.groups.specs() != old;
            let same = p.forward == new.ports && p.groups.specs() == numbered;
            if !same {
                *p = Arc::new(Policies {
                    forward: new.ports.clone(),
                    groups: Arc::new(p.groups.changed(numbered)),
                });
            }
            (!same, run_time)
        })
    }
}

/// The settings `new` changes that cannot change while the engine runs.
pub fn fixed_changes(role: Role, old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            fixed.push(name);
        }
    };
    check(old.queue != new.queue, "[queue]");
    check(old.control_socket != new.control_socket, "control.socket");
    check(old.metrics != new.metrics, "[metrics]");
    check(
        fixed_caps(old) != fixed_caps(new),
        "[capabilities] (but withhold_feedback, feedback_per_ack, kept_per_sender)",
    );
    check(old.tunnel != new.tunnel, "[tunnel]");
    check(old.redirect != new.redirect, "[redirect]");
    check(
        old.unverified_channel(role) != new.unverified_channel(role),
        "police.unverified_* and police.policy to or from \"off\" (the kernel's channel for unverified senders)",
    );
    check(
        old.police.slr_sample != new.police.slr_sample,
        "police.slr_sample",
    );
    check(old.trace != new.trace, "[trace]");
    check(
        old.port_policies != new.port_policies,
        "the [ports] section itself (its rules and groups change live)",
    );
    // The mbox checked its routes and path MTU to the protected addresses at start.
    check(
        role == Role::Mbox
            && old.capabilities.is_some()
            && old.protect.addresses != new.protect.addresses,
        "protect.addresses on an mbox with [capabilities]",
    );
    fixed
}

/// The capability settings that cannot change live: all but the victim's
/// `withhold_feedback`, `feedback_per_ack` and `kept_per_sender`.
fn fixed_caps(cfg: &Config) -> Option<config::CapSettings> {
    cfg.capabilities.clone().map(|c| config::CapSettings {
        withhold_feedback: Vec::new(),
        feedback_per_ack: 0,
        kept_per_sender: 0,
        ..c
    })
}

/// The senders `cfg` withholds feedback from.
fn withheld(cfg: &Config) -> Vec<nft::Prefix> {
    cfg.capabilities
        .as_ref()
        .map_or_else(Vec::new, |c| c.withhold_feedback.clone())
}

/// Each section `new` changes (of those that change live), with what it is now.
pub fn changed_sections(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let p = &new.protect;
    if old.protect != new.protect {
        let list = |v: &[nft::PortRange]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        changed.push(format!(
            "protect: addresses {}; tcp ports [{}]; udp ports [{}]",
            p.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            list(&p.tcp_ports),
            list(&p.udp_ports)
        ));
    }
    if let (Some(o), Some(n)) = (&old.capabilities, &new.capabilities) {
        if (o.feedback_per_ack, o.kept_per_sender) != (n.feedback_per_ack, n.kept_per_sender) {
            changed.push(format!(
                "capabilities: feedback_per_ack {}, kept_per_sender {}",
                n.feedback_per_ack, n.kept_per_sender
            ));
        }
    }
    if withheld(old) != withheld(new) {
        let list: Vec<String> = withheld(new).iter().map(ToString::to_string).collect();
        changed.push(format!(
            "capabilities.withhold_feedback: [{}]",
            list.join(", ")
        ));
    }
    if old.police != new.police {
        let p = &new.police;
        changed.push(format!(
            "police: policy {}, llr_threshold {}, slr_threshold {}, beta {}, unverified_stamps_per_sec {}",
            p.policy.name(),
            p.llr_threshold,
            p.slr_threshold,
            p.beta,
            p.unverified_stamps_per_sec
        ));
    }
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    if old.ports != new.ports {
        changed.push(format!("ports.forward: {}", count(new.ports.len(), "rule")));
    }
    if old.groups != new.groups {
        changed.push(format!("ports.group: {}", count(new.groups.len(), "group")));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[protect]\naddresses = [\"198.18.2.2\"]\ntcp_ports = [8080]\n";

    fn victim(extra: &str) -> Config {
        config::parse(&format!("{BASE}{extra}"), "victim").unwrap()
    }

    #[test]
    fn what_cannot_change_live_is_named() {
        let old = victim("[ports]\n");
        let same = victim("[ports]\n");
        assert!(fixed_changes(Role::Victim, &old, &same).is_empty());
        let queue = victim("[queue]\nfirst = 7\n[ports]\n");
        assert_eq!(fixed_changes(Role::Victim, &old, &queue), ["[queue]"]);
        let no_ports = victim("");
        let fixed = fixed_changes(Role::Victim, &old, &no_ports);
        assert!(
            fixed.iter().any(|f| f.starts_with("the [ports] section")),
            "{fixed:?}"
        );
        let socket = victim("[control]\nsocket = \"/run/other.sock\"\n[ports]\n");
        assert_eq!(
            fixed_changes(Role::Victim, &old, &socket),
            ["control.socket"]
        );
    }

    #[test]
    fn the_police_changes_live_but_not_its_kernel_limits() {
        let mbox = |police: &str| {
            config::parse(
                &format!(
                    "{BASE}[capabilities]\nkey_file = \"/k\"\nvictim_interfaces = [\"eth1\"]\n[police]\n{police}"
                ),
                "mbox",
            )
            .unwrap()
        };
        let old = mbox("policy = \"natural_share\"\n");
        let new = mbox("policy = \"fair_share\"\nllr_threshold = 0.1\n");
        assert!(fixed_changes(Role::Mbox, &old, &new).is_empty());
        let said = changed_sections(&old, &new);
        assert!(
            said[0].starts_with("police: policy fair_share, llr_threshold 0.1"),
            "{said:?}"
        );
        let limits = mbox("policy = \"natural_share\"\nunverified_per_source_pps = 7\n");
        assert_eq!(
            fixed_changes(Role::Mbox, &old, &limits),
            [
                "police.unverified_* and police.policy to or from \"off\" (the kernel's channel for unverified senders)"
            ]
        );
    }

    #[test]
    fn of_the_capabilities_only_the_withheld_senders_change_live() {
        let caps = |extra: &str| {
            victim(&format!(
                "[capabilities]\nmbox_interfaces = [\"eth1\"]\n{extra}"
            ))
        };
        let old = caps("");
        let new = caps("withhold_feedback = [\"198.18.66.0/24\"]\n");
        assert!(fixed_changes(Role::Victim, &old, &new).is_empty());
        assert_eq!(
            changed_sections(&old, &new),
            ["capabilities.withhold_feedback: [198.18.66.0/24]"]
        );
        let per_ack = caps("feedback_per_ack = 2\n");
        assert!(fixed_changes(Role::Victim, &old, &per_ack).is_empty());
        let said = changed_sections(&old, &per_ack);
        assert!(
            said[0].starts_with("capabilities: feedback_per_ack 2, kept_per_sender"),
            "{said:?}"
        );
        let mtu = caps("path_mtu = 1400\n");
        assert_eq!(
            fixed_changes(Role::Victim, &old, &mtu),
            ["[capabilities] (but withhold_feedback, feedback_per_ack, kept_per_sender)"]
        );
    }

    #[test]
    fn what_changes_live_is_told() {
        let old = victim("[ports]\n");
        let new = config::parse(
            "[protect]\naddresses = [\"198.18.2.2\"]\ntcp_ports = [8080, 9090]\n\
             [[ports.forward]]\nport = 9090\ndefault = 9091\n",
            "victim",
        )
        .unwrap();
        assert!(fixed_changes(Role::Victim, &old, &new).is_empty());
        assert_eq!(
            changed_sections(&old, &new),
            [
                "protect: addresses 198.18.2.2; tcp ports [8080, 9090]; udp ports []",
                "ports.forward: 1 rule"
            ]
        );
        assert!(changed_sections(&old, &old.clone()).is_empty());
    }
}
