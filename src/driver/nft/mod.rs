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
mod plan;
mod render;
mod spec;

#[cfg(test)]
mod netns_tests;

pub use install::{RulesError, flush_rules, install, remove, table_exists};
pub use plan::{
    TABLE, add_feedback_chain, add_icmp_error_chain, add_redirect_chains, add_tunnel_chain, plan,
};
pub use render::render;
pub use spec::{
    ChainSpec, Field, Hook, PortRange, Prefix, Proto, QueueKind, QueuePreference, QueueTarget,
    Role, RuleSpec, RulesetSpec, Selection, SpecError,
};
