//! Errors of the NFQUEUE binding, each with a one-line operator message.

use std::io;

/// Configuration request a kernel error answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStep {
    Bind,
    CopyMode,
    MaxLen,
    Flags,
}

impl std::fmt::Display for ConfigStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConfigStep::Bind => "bind",
            ConfigStep::CopyMode => "copy mode",
            ConfigStep::MaxLen => "queue max length",
            ConfigStep::Flags => "queue flags",
        })
    }
}

/// What went wrong talking to nfnetlink_queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("NFQUEUE {queue}: permission denied: run as root or grant CAP_NET_ADMIN")]
    PermissionDenied { queue: u16 },
    #[error(
        "NFQUEUE {queue} is already bound by another socket{}: stop that process or pick another queue number",
        .portid.map(|p| format!(" (netlink portid {p})")).unwrap_or_default()
    )]
    QueueBusy { queue: u16, portid: Option<u32> },
    #[error(
        "NFQUEUE {queue}: kernel rejected {step}: {source}: check the kernel supports it (nfnetlink_queue)"
    )]
    Rejected {
        queue: u16,
        step: ConfigStep,
        source: io::Error,
    },
    #[error("NFQUEUE {queue}: kernel did not acknowledge {step}: is nfnetlink_queue loaded?")]
    NoAck { queue: u16, step: ConfigStep },
    #[error("NFQUEUE netlink {op}: {source}")]
    Io { op: &'static str, source: io::Error },
}

impl QueueError {
    /// Wrap the current `errno` of a failed system call.
    pub(crate) fn last_os(op: &'static str) -> Self {
        QueueError::Io {
            op,
            source: io::Error::last_os_error(),
        }
    }
}
