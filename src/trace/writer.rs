//! The thread that writes the raw trace: a header line, then one JSON line per traced
//! packet, as the workers finish them, and per kernel event (`trace.kernel`), each kind
//! on a channel of its own, packets served first. It flushes whenever both pause, so a
//! trace can be read while the engine runs, and after a crash loses at most the lines
//! of the last moment.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use serde::{Deserialize, Serialize};

use super::kernel::KernelEvent;
use super::pcap;
use super::record::{PacketTrace, RAW_VERSION, RawHeader};
use super::tracer::Clock;

/// Kernel events the writer's second channel holds (each about 250 bytes).
const KERNEL_ROOM: usize = 16_384;

/// How long the writer waits for more before it flushes what it wrote.
const FLUSH_AFTER: Duration = Duration::from_millis(100);

/// What the writer did, once it has stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub packets: u64,
    /// Packets lost to write errors (a full disk, say).
    pub failed: u64,
    /// Writes and flushes that failed (only the first is logged).
    pub errors: u64,
}

/// What the writer is handed: a traced packet, or an event of the kernel's trace.
// Mostly packets: boxing them to shrink the rare kernel variant's slot would allocate
// on the packet path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Record {
    Packet(PacketTrace),
    Kernel(KernelEvent),
}

/// A kernel event's line in the raw trace.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelLine {
    pub kernel: KernelEvent,
}

/// The pcap files beside a trace: what the engine received, and what it returned.
struct Pcaps {
    received: BufWriter<File>,
    returned: BufWriter<File>,
}

/// `FILE.in.pcap` and `FILE.out.pcap` beside the trace `FILE`.
pub fn pcap_paths(trace: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = trace.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".in.pcap"), with(".out.pcap"))
}

/// Create (or truncate) `path` for the owner and group only: traces name every peer.
fn create(path: &Path) -> Result<BufWriter<File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("trace file {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 16, file))
}

/// The running writer: the channel's sending end for the workers, and its thread.
pub struct TraceWriter {
    tx: SyncSender<Record>,
    kernel_tx: SyncSender<Record>,
    thread: JoinHandle<Written>,
    path: PathBuf,
}

impl TraceWriter {
    /// Create (or truncate) `path`, write the header, and start the thread; with `pcap`
    /// (a snap length), the pcap files beside it too. The channel holds `capacity`
    /// packets: beyond that, the workers drop and count. `kernel`: the kernel's events
    /// come too (the header says so, and `trace format` joins them to the packets).
    pub fn start(
        path: &Path,
        (role, kernel): (&str, bool),
        (capacity, pcap): (usize, Option<u32>),
        clock: &Clock,
    ) -> Result<TraceWriter> {
        let mut out = create(path)?;
        let mut pcaps = match pcap {
            Some(snap) => {
                let (received, returned) = pcap_paths(path);
                let mut p = Pcaps {
                    received: create(&received)?,
                    returned: create(&returned)?,
                };
                pcap::write_header(&mut p.received, snap)?;
                pcap::write_header(&mut p.returned, snap)?;
                Some(p)
            }
            None => None,
        };
        let header = RawHeader {
            mpolice_trace: RAW_VERSION,
            role: role.to_string(),
            started_unix_ns: clock.unix_ns(std::time::Instant::now()),
            kernel,
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        out.flush()
            .with_context(|| format!("trace file {}", path.display()))?;
        let (tx, rx) = sync_channel(capacity.max(1));
        // The kernel's events have a channel of their own: a burst of them must never
        // take the room of the packets' traces.
        let (kernel_tx, kernel_rx) = sync_channel(KERNEL_ROOM);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || write_all((&rx, &kernel_rx), (&mut out, pcaps.as_mut()), &shown))?;
        Ok(TraceWriter {
            tx,
            kernel_tx,
            thread,
            path: path.to_path_buf(),
        })
    }

    /// A sending end for one worker.
    pub fn sender(&self) -> SyncSender<Record> {
        self.tx.clone()
    }

    /// A sending end for the kernel's events.
    pub fn kernel_sender(&self) -> SyncSender<Record> {
        self.kernel_tx.clone()
    }

    /// Wait for the workers' senders to be gone, write what is left and stop.
    pub fn finish(self) -> Written {
        drop(self.tx);
        drop(self.kernel_tx);
        let written = self.thread.join().unwrap_or_default();
        tracing::info!(
            packets = written.packets,
            failed = written.failed,
            errors = written.errors,
            "trace written to {}",
            self.path.display()
        );
        written
    }
}

/// How long the writer waits for a packet before it looks at the kernel's events again.
const POLL: Duration = Duration::from_millis(5);

/// Write what the two channels bring, packets first, until both are closed.
fn write_all(
    (rx, kernel): (&Receiver<Record>, &Receiver<Record>),
    (out, mut pcaps): (&mut impl Write, Option<&mut Pcaps>),
    path: &str,
) -> Written {
    let mut w = Written::default();
    let flush = |out: &mut dyn Write, pcaps: Option<&mut Pcaps>| {
        out.flush()?;
        if let Some(p) = pcaps {
            p.received.flush()?;
            p.returned.flush()?;
        }
        Ok(())
    };
    // Open: (packets, kernel events). Packets first: a burst of kernel events must not
    // hold the packets' traces back until their channel overflows.
    let mut open = (true, true);
    let mut idle = Duration::ZERO;
    while open.0 || open.1 {
        let next = match take(rx, &mut open.0) {
            Some(r) => Some(r),
            None => take(kernel, &mut open.1),
        };
        let Some(next) = next.or_else(|| wait(rx, kernel, open)) else {
            idle += POLL;
            if idle >= FLUSH_AFTER {
                note(flush(out, pcaps.as_deref_mut()), &mut w, 0, path);
                idle = Duration::ZERO;
            }
            continue;
        };
        idle = Duration::ZERO;
        let line = match next {
            Record::Packet(t) => serde_json::to_writer(&mut *out, &t.raw())
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| pcaps.as_deref_mut().map_or(Ok(()), |p| write_pcaps(p, &t))),
            Record::Kernel(kernel) => serde_json::to_writer(&mut *out, &KernelLine { kernel })
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n")),
        };
        note(line, &mut w, 1, path);
    }
    note(flush(out, pcaps), &mut w, 0, path);
    w
}

/// The next record waiting on `rx`, if any; notes when it has closed.
fn take(rx: &Receiver<Record>, open: &mut bool) -> Option<Record> {
    match rx.try_recv() {
        Ok(r) => Some(r),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Disconnected) => {
            *open = false;
            None
        }
    }
}

/// Both channels are empty: wait up to `POLL` on the packets' (or, once it has
/// closed, the kernel's) for the next record.
fn wait(rx: &Receiver<Record>, kernel: &Receiver<Record>, open: (bool, bool)) -> Option<Record> {
    let on = match open {
        (true, _) => rx,
        (false, true) => kernel,
        (false, false) => return None,
    };
    on.recv_timeout(POLL).ok()
}

/// A traced packet's records: as received, at its first edge; as returned, at its last.
fn write_pcaps(p: &mut Pcaps, t: &PacketTrace) -> std::io::Result<()> {
    let (Some(first), Some(last)) = (t.marks().first(), t.marks().last()) else {
        return Ok(());
    };
    pcap::write_record(&mut p.received, first.t_ns, &t.bytes_in, t.len_in)?;
    if let Some(out) = &t.bytes_out {
        pcap::write_record(&mut p.returned, last.t_ns, out, t.len_out)?;
    }
    Ok(())
}

/// Count a write of `packets` packets (0: a flush) that succeeded or failed; only the
/// first failure is logged, so a full disk does not fill the log too.
fn note(r: std::io::Result<()>, w: &mut Written, packets: u64, path: &str) {
    match r {
        Ok(()) => w.packets += packets,
        Err(e) => {
            w.errors += 1;
            if w.errors == 1 {
                tracing::warn!("trace file {path}: {e}; traces are being lost");
            }
            w.failed += packets;
        }
    }
}
