//! The kernel's per-namespace queue table, `/proc/net/netfilter/nfnetlink_queue`.

use std::io;

/// Path read through `thread-self`: `/proc/self/net` shows the namespace of the
/// main thread, not of a thread that called `setns`.
const PROC_PATH: &str = "/proc/thread-self/net/netfilter/nfnetlink_queue";

/// One row of the kernel queue table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelQueueStats {
    pub queue: u16,
    /// Netlink portid of the bound socket.
    pub portid: u32,
    /// Packets queued and awaiting a verdict.
    pub waiting: u32,
    pub copy_mode: u8,
    pub copy_range: u32,
    /// Packets dropped (or failed open) because the queue was full.
    pub queue_dropped: u64,
    /// Packets dropped (or failed open) because the socket was full.
    pub user_dropped: u64,
    /// Id given to the latest queued packet.
    pub last_id: u32,
}

/// Read the queue table of the calling thread's network namespace.
pub fn kernel_queue_stats() -> io::Result<Vec<KernelQueueStats>> {
    parse_kernel_queue_stats(&std::fs::read_to_string(PROC_PATH)?)
}

/// Parse the queue table text; any malformed line is an `InvalidData` error.
pub fn parse_kernel_queue_stats(text: &str) -> io::Result<Vec<KernelQueueStats>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            parse_line(line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad nfnetlink_queue line: {line:?}"),
                )
            })
        })
        .collect()
}

/// Parse "queue portid waiting copy_mode copy_range queue_dropped user_dropped last_id 1".
fn parse_line(line: &str) -> Option<KernelQueueStats> {
    let mut f = line.split_whitespace();
    let mut next = || f.next();
    Some(KernelQueueStats {
        queue: next()?.parse().ok()?,
        portid: next()?.parse().ok()?,
        waiting: next()?.parse().ok()?,
        copy_mode: next()?.parse().ok()?,
        copy_range: next()?.parse().ok()?,
        queue_dropped: next()?.parse().ok()?,
        user_dropped: next()?.parse().ok()?,
        last_id: next()?.parse().ok()?,
    })
}
