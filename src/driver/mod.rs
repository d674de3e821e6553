//! Everything that touches the kernel: NFQUEUE sockets, nftables rules, the control socket,
//! and the threads that run them. Nothing outside this module opens a socket.

pub mod board;
pub mod control;
pub mod depth;
pub mod engine;
pub mod inject;
pub mod keys;
pub mod metrics;
pub mod netlink;
pub mod nfqueue;
pub mod nft;
pub mod nlsocket;
pub mod notify;
pub mod policies;
pub mod reload;
pub mod route;
pub mod serve;
pub mod sockdiag;
#[cfg(test)]
mod testns;
pub mod worker;
