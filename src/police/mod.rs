//! Per-sender state: what each sender sent, was stamped with, and proved delivered.

mod senders;

pub use senders::SenderTable;
