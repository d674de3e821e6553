//! Queue configuration and the defaults the engine uses.
//!
//! The defaults were measured with a 200,000-packet UDP burst drained by one
//! thread with batch verdicts (see `kernel_tests::burst_defaults_lose_nothing`
//! and `burst_sweep`).

use std::time::Duration;

/// Copy range meaning "the whole packet" (the kernel caps it to 65531 = 0xffff - NLA_HDRLEN).
pub const COPY_FULL: u32 = 0xffff;

/// How the kernel queue and its netlink socket are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue number as used by the `NFQUEUE --queue-num` rule.
    pub num: u16,
    /// Bytes of each packet copied to userspace (`COPY_FULL` = whole packet).
    pub copy_range: u32,
    /// Packets the kernel holds awaiting a verdict (NFQA_CFG_QUEUE_MAXLEN).
    pub max_len: u32,
    /// Socket receive buffer (SO_RCVBUFFORCE, falling back to SO_RCVBUF).
    pub rcvbuf_bytes: usize,
    /// Accept packets instead of dropping them when the queue is full.
    pub fail_open: bool,
    /// Receive GSO super-packets unsegmented (NFQA_CFG_F_GSO).
    pub gso: bool,
    /// Longest blocking `recv`, so a worker notices shutdown (zero = forever).
    pub recv_timeout: Duration,
}

impl QueueConfig {
    /// Return the measured defaults for queue `num`.
    pub fn new(num: u16) -> Self {
        QueueConfig {
            num,
            copy_range: COPY_FULL,
            max_len: DEFAULT_MAX_LEN,
            rcvbuf_bytes: DEFAULT_RCVBUF_BYTES,
            fail_open: false,
            gso: false,
            recv_timeout: Duration::from_millis(200),
        }
    }
}

/// Default queue length in packets: a whole 200,000-packet burst fits even if the
/// worker stalls (measured: with one drain thread, 32768 lost up to 22k packets of such
/// a burst when another process competed for the CPUs, 65536 none in 10 runs; the
/// engine's workers also share the CPUs with the role's own work, hence the headroom).
pub const DEFAULT_MAX_LEN: u32 = 262_144;
/// Default socket receive buffer in bytes. The kernel grants twice this and charges
/// ~832 B per queued small packet (2.3 KiB per 1428-byte one), so 128 MiB holds ~320k
/// small packets: the queue length binds first. It is a limit, not an allocation:
/// memory is used only while a backlog waits (16 MiB overflowed once in 10 contended
/// runs of a 200k burst).
pub const DEFAULT_RCVBUF_BYTES: usize = 128 << 20;
