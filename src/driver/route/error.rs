//! Errors of the advmss route setup, each a one-line operator message naming the prefix.

use std::io;

/// The request a kernel error answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// RTM_GETROUTE for the prefix's network address (`ip route get`).
    Lookup,
    /// RTM_GETROUTE dump of the main table.
    Dump,
    /// RTM_NEWROUTE adding a route for the prefix.
    Add,
    /// RTM_NEWROUTE replacing the existing route for the prefix.
    Replace,
    /// RTM_NEWROUTE putting the original route back.
    Restore,
    /// RTM_DELROUTE removing the route we added.
    Delete,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Lookup => "route lookup",
            Step::Dump => "route dump",
            Step::Add => "route add",
            Step::Replace => "route replace",
            Step::Restore => "route restore",
            Step::Delete => "route delete",
        })
    }
}

/// What went wrong installing or removing an advmss route.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("advmss route {prefix}: {reason}")]
    InvalidInput { prefix: String, reason: String },
    #[error("advmss route {prefix}: {step}: permission denied: run as root or grant CAP_NET_ADMIN")]
    PermissionDenied { prefix: String, step: Step },
    #[error("no route to {prefix} ({}): add one first", unreachable_reason(.source))]
    NoRoute { prefix: String, source: io::Error },
    #[error(
        "advmss route {prefix}: the kernel routes it as {kind}, not through an interface: pick a remote prefix"
    )]
    NotUnicast { prefix: String, kind: &'static str },
    #[error(
        "advmss route {prefix}: kernel rejected {step}: {source}{}: check the prefix and the route it uses",
        .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    Kernel {
        prefix: String,
        step: Step,
        source: io::Error,
        detail: Option<String>,
    },
    #[error("advmss route {prefix}: kernel gave no usable answer to {step}: {what}")]
    BadReply {
        prefix: String,
        step: Step,
        what: &'static str,
    },
    #[error("advmss route {prefix}: netlink {op}: {source}")]
    Io {
        prefix: String,
        op: &'static str,
        source: io::Error,
    },
}

impl RouteError {
    /// Map a kernel errno answering `step` for `prefix` to its error.
    pub(crate) fn from_kernel(
        prefix: &str,
        step: Step,
        errno: i32,
        detail: Option<String>,
    ) -> Self {
        let prefix = prefix.to_owned();
        let source = io::Error::from_raw_os_error(errno);
        match errno {
            libc::EPERM => RouteError::PermissionDenied { prefix, step },
            libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES if step == Step::Lookup => {
                RouteError::NoRoute { prefix, source }
            }
            _ => RouteError::Kernel {
                prefix,
                step,
                source,
                detail,
            },
        }
    }
}

/// Say why a lookup found no route, in the words of `ip route get`.
fn unreachable_reason(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENETUNREACH) => "network is unreachable",
        Some(libc::EHOSTUNREACH) => "an unreachable route",
        Some(libc::EACCES) => "a prohibit route",
        _ => "lookup failed",
    }
}
