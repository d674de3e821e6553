//! mpolice: a netfilter verdict engine for the MiddlePolice DDoS defence.
//!
//! Follow one packet: `driver::worker` reads it from its NFQUEUE queue, `pipeline`
//! parses it with `wire`, classifies it and decides a verdict, and the worker returns
//! the verdict (and the rewritten bytes, if any) to the kernel. `driver::nft` installs
//! the rules that queue the packet in the first place.

pub mod capability;
pub mod cli;
pub mod config;
pub mod demo;
pub mod driver;
pub mod flood;
mod labels;
pub mod metrics;
pub mod pipeline;
pub mod police;
pub mod ports;
pub mod stats;
#[path = "../integration/testbed/mod.rs"]
pub mod testbed;
pub mod trace;
pub mod wire;
