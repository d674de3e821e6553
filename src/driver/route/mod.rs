//! Advertise a smaller TCP MSS to configured client prefixes through the route
//! metric `advmss`, so the victim's peers leave room for capability trailers, and
//! look up the interface and MTU of the path to an address ([`path_to`]).
//! Our own `NETLINK_ROUTE` client: a few request/ack exchanges on a raw socket.
//!
//! [`set_advmss`] works in the network namespace of the calling thread and
//! returns an [`AdvmssGuard`] that undoes exactly what it changed. Invariants:
//! nothing here panics on kernel data (every length is checked); every request
//! waits for the kernel's ack or error, and an error names the prefix and step;
//! an existing route of exactly the prefix (main table) is replaced with all its
//! attributes resent plus `RTAX_ADVMSS`, and restored byte-for-byte from what the
//! kernel reported; otherwise a route with protocol [`RTPROT_MPOLICE`] (109) is
//! added, and only that route is deleted later.

mod apply;
mod error;
mod guard;
mod lookup;
mod prefix;
mod wire;

#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testns;
#[cfg(test)]
mod unit_tests;

pub use apply::set_advmss;
pub use error::{RouteError, Step};
pub use guard::AdvmssGuard;
pub use lookup::{PathTo, interface_mtu, path_to};
pub use prefix::AdvmssRoute;
pub use wire::RTPROT_MPOLICE;
