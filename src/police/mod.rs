//! Policing (SPEC.md "Policing"): per-sender state, periods closed by a timer, the
//! system loss rate, and the policies that set each sender's privileged window.
//!
//! Pure: the driver hands in the time and carries the system-wide figures between
//! workers ([`Figures`] out at each timer, a merged [`System`] back in).

mod policer;
mod policy;
mod random;
mod sender;
mod senders;
mod slots;
#[cfg(test)]
mod tests;

pub use policer::{Drop, Figures, PoliceCounters, PoliceReport, Policer, SenderRow, Stamp, System};
pub use policy::{Policy, Totals};
pub use senders::{SenderTable, Worth};
