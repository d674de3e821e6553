//! Install, remove and probe our table through one atomic nftables netlink batch.
//!
//! Invariants: `install` replaces exactly `table inet <table>` (add, delete, add within one
//! batch), so the kernel ends up with our ruleset or, on any error, with what it had
//! before; every ack of a batch is read and the first error is reported with its step.

use std::ffi::CString;
use std::io;

use nftnl::expr::{Immediate, Register, RejectionType, Verdict};
use nftnl::{Batch, Chain, ChainType, MsgType, Policy, ProtoFamily, Rule, Table};

use super::expr::{Queue, Redirect, SetNfTrace, XtNfqueue};
use super::matches;
use super::nl::{self, Reply};
use super::objects;
use super::spec::{Action, ChainSpec, ChannelStep, Hook, QueueKind, QueuePreference, RulesetSpec};

/// nf_tables names are at most NFT_NAME_MAXLEN - 1 bytes.
const NAME_MAX: usize = 255;
/// NFTA_TABLE_NAME from linux/netfilter/nf_tables.h (libc lacks it).
const NFTA_TABLE_NAME: u16 = 1;
/// libnftnl's NFTNL_UDATA_COMMENT_MAXLEN, including the NUL.
pub(super) const COMMENT_MAX: usize = 127;

/// Why installing, removing or probing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("permission denied: run as root (CAP_NET_ADMIN)")]
    PermissionDenied,
    #[error("kernel lacks nft_queue (module nft_queue); use queue_kind = xt")]
    NoNativeQueue,
    #[error("kernel lacks xt NFQUEUE (nft_compat, xt_NFQUEUE); use queue_kind = native")]
    NoXtQueue,
    #[error("kernel lacks nft_queue and xt NFQUEUE (nft_compat)")]
    NoQueue,
    #[error("invalid ruleset: {0}")]
    Invalid(String),
    #[error("nftables request failed at {step}: {source}")]
    Kernel { step: String, source: io::Error },
    #[error("nftables netlink socket failed: {0}")]
    Socket(#[source] io::Error),
}

/// The first failure of a batch: which message and which errno.
struct Failure {
    step: String,
    errno: i32,
    is_rule: bool,
}

impl Failure {
    fn into_error(self) -> RulesError {
        if self.errno == libc::EPERM {
            return RulesError::PermissionDenied;
        }
        RulesError::Kernel {
            step: self.step,
            source: io::Error::from_raw_os_error(self.errno),
        }
    }

    /// True when a rule's expression type is unknown to the kernel (module missing).
    fn is_missing_expr(&self) -> bool {
        self.is_rule && self.errno == libc::ENOENT
    }
}

/// Install `spec`, replacing any previous table of that name; return the queue kind used.
pub fn install(spec: &RulesetSpec, prefer: QueuePreference) -> Result<QueueKind, RulesError> {
    validate(spec)?;
    let native = || try_install(spec, QueueKind::Native);
    let xt = || try_install(spec, QueueKind::XtCompat);
    let result = match prefer {
        QueuePreference::Native => native()?
            .map(|()| QueueKind::Native)
            .map_err(|f| missing(f, RulesError::NoNativeQueue)),
        QueuePreference::Xt => xt()?
            .map(|()| QueueKind::XtCompat)
            .map_err(|f| missing(f, RulesError::NoXtQueue)),
        QueuePreference::Auto => match native()? {
            Ok(()) => Ok(QueueKind::Native),
            // The failed batch was aborted as a whole, so retrying starts from a clean state.
            Err(f) if f.is_missing_expr() => {
                tracing::info!("kernel lacks nft_queue; installing xt NFQUEUE through nft_compat");
                xt()?
                    .map(|()| QueueKind::XtCompat)
                    .map_err(|f| missing(f, RulesError::NoQueue))
            }
            Err(f) => Err(f.into_error()),
        },
    };
    if let Ok(kind) = result {
        tracing::debug!(table = %spec.table, ?kind, "nftables rules installed");
    }
    result
}

/// Map a missing-expression failure to `lacking`, anything else to its own error.
fn missing(f: Failure, lacking: RulesError) -> RulesError {
    if f.is_missing_expr() {
        lacking
    } else {
        f.into_error()
    }
}

/// Delete `table inet <table>`; return false if it did not exist.
pub fn remove(table: &str) -> Result<bool, RulesError> {
    let name = c_name(table)?;
    let mut batch = Batch::new();
    batch.add(&Table::new(&name, ProtoFamily::Inet), MsgType::Del);
    let steps = vec![format!("delete table inet {table}")];
    match send_batch(batch, &steps, &[])? {
        Ok(()) => Ok(true),
        Err(f) if f.errno == libc::ENOENT => Ok(false),
        Err(f) => Err(f.into_error()),
    }
}

/// Delete every rule of the spec's chains but keep the chains, so nothing more is queued
/// while the hooks stay registered. Unregistering a hook (deleting a base chain or the
/// table) makes the kernel drop every packet still waiting in any queue of the network
/// namespace; an engine stopping calls this, answers what is queued, then `remove`s.
pub fn flush_rules(spec: &RulesetSpec) -> Result<(), RulesError> {
    let table = Table::new(&c_name(&spec.table)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    let mut steps = Vec::new();
    for chain_spec in &spec.chains {
        let chain = Chain::new(c_name(&chain_spec.name)?, &table);
        flush_chain(&mut batch, &chain, &chain_spec.name, &mut steps);
    }
    send_batch(batch, &steps, &[])?.map_err(Failure::into_error)
}

/// Return whether `table inet <table>` exists (a GETTABLE request).
pub fn table_exists(table: &str) -> Result<bool, RulesError> {
    let name = c_name(table)?;
    let seq = 1;
    let request = get_table_request(&name, seq);
    let replies = nl::talk(&[&request], seq..seq + 1).map_err(RulesError::Socket)?;
    let mut found = false;
    for reply in replies {
        match reply {
            Reply::Data { .. } => found = true,
            Reply::Ack { errno: 0, .. } => {}
            Reply::Ack { errno, .. } if errno == libc::ENOENT => return Ok(false),
            Reply::Ack { errno, .. } => {
                let step = format!("get table inet {table}");
                return Err(Failure {
                    step,
                    errno,
                    is_rule: false,
                }
                .into_error());
            }
        }
    }
    Ok(found)
}

/// Build NFT_MSG_GETTABLE for an inet table: nlmsghdr, nfgenmsg, NFTA_TABLE_NAME.
fn get_table_request(name: &CString, seq: u32) -> Vec<u8> {
    let name = name.as_bytes_with_nul();
    let attr_len = 4 + name.len();
    let total = 16 + 4 + attr_len.next_multiple_of(4);
    let kind = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_GETTABLE as u16;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, res_id (big endian)
    m.extend_from_slice(&[libc::NFPROTO_INET as u8, libc::NFNETLINK_V0 as u8, 0, 0]);
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    m.extend_from_slice(name);
    m.resize(total, 0);
    m
}

/// Send the whole ruleset with `kind` queue statements; Err(Failure) if the kernel refused.
fn try_install(spec: &RulesetSpec, kind: QueueKind) -> Result<Result<(), Failure>, RulesError> {
    let table_name = c_name(&spec.table)?;
    let table = Table::new(&table_name, ProtoFamily::Inet);
    let mut batch = Batch::new();
    let mut steps = Vec::new();
    let mut rule_steps = Vec::new();
    let table_step = format!("table inet {}", spec.table);
    // Add-then-delete makes the delete succeed whether or not the table existed.
    for (op, msg) in [
        ("add", MsgType::Add),
        ("delete", MsgType::Del),
        ("add", MsgType::Add),
    ] {
        batch.add(&table, msg);
        steps.push(format!("{op} {table_step}"));
    }
    if let Some(ch) = &spec.channel {
        objects::add_channel(&mut batch, &table, &table_name, ch, &mut steps);
    }
    for chain_spec in &spec.chains {
        let chain = base_chain(&table, chain_spec)?;
        add_chain(&mut batch, &chain, &chain_spec.name, &mut steps);
        add_rules(
            &mut batch,
            &chain,
            chain_spec,
            kind,
            (&mut steps, &mut rule_steps),
        )?;
    }
    send_batch(batch, &steps, &rule_steps)
}

/// Add `chain` in `batch`.
fn add_chain(batch: &mut Batch, chain: &Chain, name: &str, steps: &mut Vec<String>) {
    batch.add(chain, MsgType::Add);
    steps.push(format!("add chain {name}"));
}

/// Delete every rule of `chain` in `batch` (a rule message without a handle does).
fn flush_chain(batch: &mut Batch, chain: &Chain, name: &str, steps: &mut Vec<String>) {
    batch.add(&Rule::new(chain), MsgType::Del);
    steps.push(format!("flush chain {name}"));
}

/// The base chain of `chain_spec` in `table`: its type, hook, priority, policy accept.
fn base_chain<'a>(table: &'a Table, chain_spec: &ChainSpec) -> Result<Chain<'a>, RulesError> {
    let mut chain = Chain::new(c_name(&chain_spec.name)?, table);
    chain.set_type(if chain_spec.nat {
        ChainType::Nat
    } else {
        ChainType::Filter
    });
    chain.set_hook(nft_hook(chain_spec.hook), chain_spec.priority);
    chain.set_policy(Policy::Accept);
    Ok(chain)
}

/// Add the rules of `chain_spec` to `batch`, in order, each with its step (and the queue
/// rules' places in `rule_steps`).
fn add_rules(
    batch: &mut Batch,
    chain: &Chain,
    chain_spec: &ChainSpec,
    kind: QueueKind,
    (steps, rule_steps): (&mut Vec<String>, &mut Vec<usize>),
) -> Result<(), RulesError> {
    for (i, rule_spec) in chain_spec.rules.iter().enumerate() {
        let mut rule = Rule::new(chain);
        matches::add_match(&mut rule, rule_spec);
        // A channel drop has no queue statement, so its refusal is never taken for
        // a missing queue expression.
        let what = if matches::add_channel_drop(&mut rule, rule_spec) {
            "unverified channel drop".to_owned()
        } else {
            match rule_spec.action {
                Action::Accept => {
                    rule.add_expr(&Verdict::Accept);
                    "accept".to_owned()
                }
                Action::Trace => {
                    rule.add_expr(&Immediate::new(1u8, Register::Reg1));
                    rule.add_expr(&SetNfTrace);
                    "nftrace".to_owned()
                }
                Action::Redirect(port) => {
                    // Network byte order in the register (nftnl's immediate copies
                    // the value's own bytes: a u16 whose memory is big-endian).
                    let port = u16::from_ne_bytes(port.to_be_bytes());
                    rule.add_expr(&Immediate::new(port, Register::Reg1));
                    rule.add_expr(&Redirect);
                    "redirect".to_owned()
                }
                Action::Reset => {
                    rule.add_expr(&Verdict::Reject(RejectionType::TcpRst));
                    "reset".to_owned()
                }
                Action::Queue => {
                    let (num, total, flags) = queue_args(rule_spec)?;
                    match kind {
                        QueueKind::Native => rule.add_expr(&Queue { num, total, flags }),
                        QueueKind::XtCompat => rule.add_expr(&XtNfqueue { num, total, flags }),
                    }
                    rule_steps.push(steps.len());
                    format!("{kind:?} queue")
                }
            }
        };
        rule.set_comment(c_text(&rule_spec.comment)?).map_err(|e| {
            RulesError::Invalid(format!("rule comment {:?}: {e}", rule_spec.comment))
        })?;
        batch.add(&rule, MsgType::Add);
        steps.push(format!(
            "add rule {} to chain {} ({what})",
            i + 1,
            chain_spec.name
        ));
    }
    Ok(())
}

/// Replace the rules of chain `chain_spec.name` of `table` by its rules, in one batch:
/// a packet meets the old rules or the new ones, never none.
pub fn replace_rules(
    table: &str,
    chain_spec: &ChainSpec,
    kind: QueueKind,
) -> Result<(), RulesError> {
    let table = Table::new(&c_name(table)?, ProtoFamily::Inet);
    let chain = Chain::new(c_name(&chain_spec.name)?, &table);
    let mut batch = Batch::new();
    let (mut steps, mut rule_steps) = (Vec::new(), Vec::new());
    flush_chain(&mut batch, &chain, &chain_spec.name, &mut steps);
    add_rules(
        &mut batch,
        &chain,
        chain_spec,
        kind,
        (&mut steps, &mut rule_steps),
    )?;
    send_batch(batch, &steps, &rule_steps)?.map_err(Failure::into_error)
}

/// Put the chains of `new` in place of those of `old` (the rules installed now) in one
/// batch: a packet meets the old rules or the new ones, never none. A chain in both has
/// its rules replaced; a chain only in `new` is added; a chain only in `old` keeps its
/// hook but loses its rules (deleting a base chain would make the kernel drop every
/// packet still queued). Return the chains now in the table: `new`'s, then the emptied
/// ones. The sets and objects of the channel must be the same in both.
pub fn replace_chains(
    old: &RulesetSpec,
    new: &RulesetSpec,
    kind: QueueKind,
) -> Result<RulesetSpec, RulesError> {
    if old.channel != new.channel || old.table != new.table {
        return Err(RulesError::Invalid(
            "the unverified senders' channel cannot change while the engine runs".into(),
        ));
    }
    validate(new)?;
    let table = Table::new(&c_name(&new.table)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    let (mut steps, mut rule_steps) = (Vec::new(), Vec::new());
    let mut now = new.clone();
    for chain_spec in &new.chains {
        let chain = base_chain(&table, chain_spec)?;
        match old.chains.iter().find(|c| c.name == chain_spec.name) {
            Some(was)
                if (was.hook, was.priority, was.nat)
                    != (chain_spec.hook, chain_spec.priority, chain_spec.nat) =>
            {
                return Err(RulesError::Invalid(format!(
                    "chain {} cannot move to another hook or priority while the engine runs",
                    chain_spec.name
                )));
            }
            Some(_) => flush_chain(&mut batch, &chain, &chain_spec.name, &mut steps),
            None => add_chain(&mut batch, &chain, &chain_spec.name, &mut steps),
        }
        add_rules(
            &mut batch,
            &chain,
            chain_spec,
            kind,
            (&mut steps, &mut rule_steps),
        )?;
    }
    for gone in old
        .chains
        .iter()
        .filter(|c| !new.chains.iter().any(|n| n.name == c.name))
    {
        let chain = Chain::new(c_name(&gone.name)?, &table);
        flush_chain(&mut batch, &chain, &gone.name, &mut steps);
        now.chains.push(ChainSpec {
            rules: Vec::new(),
            ..gone.clone()
        });
    }
    send_batch(batch, &steps, &rule_steps)?.map_err(Failure::into_error)?;
    Ok(now)
}

/// Return (first queue, queue count, flags) after checking the range.
fn queue_args(rule: &super::spec::RuleSpec) -> Result<(u16, u16, u16), RulesError> {
    rule.queue
        .last()
        .map_err(|e| RulesError::Invalid(e.to_string()))?;
    Ok((rule.queue.first, rule.queue.count, rule.queue.flag_bits()))
}

/// Send a batch whose messages are described by `steps`; `rule_steps` index the rules.
fn send_batch(
    batch: Batch,
    steps: &[String],
    rule_steps: &[usize],
) -> Result<Result<(), Failure>, RulesError> {
    let batch = batch.finalize();
    let seqs = batch.sequence_numbers();
    let pages: Vec<&[u8]> = batch.iter().collect();
    let replies = nl::talk(&pages, seqs.clone()).map_err(RulesError::Socket)?;
    // Kernels >= 6.10 also ack the batch begin and end messages, which then own a seq each.
    let framed = seqs.len() == steps.len() + 2;
    let first_error = replies
        .iter()
        .filter_map(|r| match *r {
            Reply::Ack { seq, errno } if errno != 0 => Some((seq, errno)),
            _ => None,
        })
        .min_by_key(|&(seq, _)| seq);
    if let Some((seq, errno)) = first_error {
        let (step, is_rule) = locate(seq.wrapping_sub(seqs.start), framed, steps, rule_steps);
        return Ok(Err(Failure {
            step,
            errno,
            is_rule,
        }));
    }
    let acked = nl::all_acked(&replies, &seqs);
    if !acked {
        return Err(RulesError::Kernel {
            step: "reading acks".to_owned(),
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                "the kernel did not acknowledge every message",
            ),
        });
    }
    Ok(Ok(()))
}

/// Return the step at `offset` from the batch's first seq and whether it adds a rule.
fn locate(offset: u32, framed: bool, steps: &[String], rule_steps: &[usize]) -> (String, bool) {
    let idx = (offset as usize).checked_sub(usize::from(framed));
    match idx.and_then(|i| steps.get(i).map(|s| (i, s))) {
        Some((i, step)) => (step.clone(), rule_steps.contains(&i)),
        None => ("batch framing".to_owned(), false),
    }
}

/// Return nftnl's hook number for our hook.
fn nft_hook(hook: Hook) -> nftnl::Hook {
    match hook {
        Hook::Prerouting => nftnl::Hook::PreRouting,
        Hook::Forward => nftnl::Hook::Forward,
        Hook::Output => nftnl::Hook::Out,
        Hook::Postrouting => nftnl::Hook::PostRouting,
    }
}

/// Check names, comments, queue ranges and the channel's limits before anything is sent.
fn validate(spec: &RulesetSpec) -> Result<(), RulesError> {
    c_name(&spec.table)?;
    let invalid = |e: super::spec::SpecError| RulesError::Invalid(e.to_string());
    if let Some(ch) = &spec.channel {
        ch.limits.validate().map_err(invalid)?;
        if ch.verified_size == 0 || ch.meter_size == 0 || ch.meter_timeout_s == 0 {
            return Err(RulesError::Invalid(format!(
                "unverified channel: set sizes and meter timeout must be at least 1: {ch:?}"
            )));
        }
    }
    for chain in &spec.chains {
        c_name(&chain.name)?;
        for rule in &chain.rules {
            queue_args(rule)?;
            c_text(&rule.comment)?;
            match (rule.channel, &spec.channel) {
                (None, _) => {}
                (Some(_), None) => {
                    return Err(RulesError::Invalid(format!(
                        "rule {:?} uses the unverified channel, which the ruleset lacks",
                        rule.comment
                    )));
                }
                (
                    Some(ChannelStep::OverSource {
                        pps,
                        burst,
                        source_bits,
                    }),
                    Some(ch),
                ) => {
                    let family_bits = if rule.prefix.addr().is_ipv4() {
                        32
                    } else {
                        128
                    };
                    if source_bits == 0 || source_bits > family_bits {
                        return Err(RulesError::Invalid(format!(
                            "rule {:?}: a source of {source_bits} bits in a {family_bits}-bit address",
                            rule.comment
                        )));
                    }
                    super::spec::UnverifiedLimits {
                        per_source_pps: pps,
                        per_source_burst: burst,
                        ..ch.limits
                    }
                    .validate()
                    .map_err(invalid)?;
                }
                (Some(_), Some(_)) => {}
            }
        }
    }
    Ok(())
}

/// Return a table or chain name as a C string, checking length and NUL bytes.
fn c_name(name: &str) -> Result<CString, RulesError> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(RulesError::Invalid(format!(
            "name {name:?} must be 1 to {NAME_MAX} bytes"
        )));
    }
    CString::new(name).map_err(|_| RulesError::Invalid(format!("name {name:?} contains NUL")))
}

/// Return a rule comment as a C string, checking libnftnl's comment limit.
fn c_text(text: &str) -> Result<CString, RulesError> {
    if text.len() > COMMENT_MAX {
        return Err(RulesError::Invalid(format!(
            "comment {text:?} is longer than {COMMENT_MAX} bytes"
        )));
    }
    CString::new(text).map_err(|_| RulesError::Invalid(format!("comment {text:?} contains NUL")))
}

#[cfg(test)]
mod tests {
    use super::super::plan::plan;
    use super::super::spec::{QueueTarget, Role, Selection};
    use super::*;

    fn failure(errno: i32, is_rule: bool) -> Failure {
        Failure {
            step: "add rule 1 to chain inbound".to_owned(),
            errno,
            is_rule,
        }
    }

    #[test]
    fn maps_failures_to_errors() {
        let e = missing(failure(libc::ENOENT, true), RulesError::NoQueue);
        assert_eq!(
            e.to_string(),
            "kernel lacks nft_queue and xt NFQUEUE (nft_compat)"
        );
        let e = missing(failure(libc::EPERM, true), RulesError::NoQueue);
        assert_eq!(
            e.to_string(),
            "permission denied: run as root (CAP_NET_ADMIN)"
        );
        let e = missing(failure(libc::ENOENT, false), RulesError::NoNativeQueue);
        assert!(
            e.to_string()
                .starts_with("nftables request failed at add rule 1 to chain inbound: "),
            "{e}"
        );
        let e = failure(libc::EINVAL, true).into_error();
        assert!(e.to_string().contains("Invalid argument"), "{e}");
    }

    #[test]
    fn locates_steps_with_and_without_framing() {
        let steps: Vec<String> = ["add table", "add chain", "add rule"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            locate(2, false, &steps, &[2]),
            ("add rule".to_owned(), true)
        );
        assert_eq!(locate(3, true, &steps, &[2]), ("add rule".to_owned(), true));
        assert_eq!(
            locate(0, true, &steps, &[2]),
            ("batch framing".to_owned(), false)
        );
        assert_eq!(
            locate(4, true, &steps, &[2]),
            ("batch framing".to_owned(), false)
        );
        assert_eq!(
            locate(1, false, &steps, &[2]),
            ("add chain".to_owned(), false)
        );
    }

    #[test]
    fn validates_before_sending() {
        let mut spec = plan(
            Role::Victim,
            &Selection {
                addresses: vec!["198.18.1.2".parse().unwrap()],
                tcp_ports: vec!["80".parse().unwrap()],
                udp_ports: vec![],
            },
            &QueueTarget {
                first: 0,
                count: 0,
                bypass: true,
                fanout: false,
            },
        );
        let e = install(&spec, QueuePreference::Auto).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid ruleset: queue count must be at least 1"
        );
        spec.table = "bad\0name".to_owned();
        assert!(matches!(validate(&spec), Err(RulesError::Invalid(_))));
        spec.table = String::new();
        assert!(
            validate(&spec)
                .unwrap_err()
                .to_string()
                .contains("must be 1 to 255 bytes")
        );
    }
}
