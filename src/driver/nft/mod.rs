//! Our nftables rules: plan them for a role, render them as nft text, install and remove
//! them through netlink (nftnl).
//!
//! Invariants: everything lives in one table of family inet (`mpolice` by default), which
//! `install` replaces atomically and `remove` deletes; no other table is ever touched.
//! Netlink requests act in the network namespace of the calling thread.

mod expr;
mod install;
mod matches;
mod nl;
mod objects;
mod plan;
mod render;
mod spec;
mod verified;

#[cfg(test)]
mod channel_tests;
#[cfg(test)]
mod netns_tests;

pub use install::{
    RulesError, flush_rules, install, remove, replace_chains, replace_rules, table_exists,
};
pub use plan::{
    COUNTER_OVER_SOURCE, COUNTER_OVER_TOTAL, LIMIT_TOTAL, MAX_TRACE_RULES, METER_SIZE, METER_V4,
    METER_V6, TABLE, VERIFIED_SIZE, VERIFIED_V4, VERIFIED_V6, add_feedback_chain,
    add_forward_chain, add_icmp_error_chain, add_redirect_chains, add_refuse_chain,
    add_trace_chains, add_tunnel_chain, add_unverified_channel, plan, trace_marks,
};
pub use render::render;
pub use spec::{
    Action, ChainSpec, ChannelStep, Field, Hook, MAX_LIMIT_PPS, PortRange, Prefix, Proto,
    QueueKind, QueuePreference, QueueTarget, Role, RuleSpec, RulesetSpec, Selection, SpecError,
    UnverifiedChannel, UnverifiedLimits,
};
pub use verified::{VerifiedSet, unverified_drops};
