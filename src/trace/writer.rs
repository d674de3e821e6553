//! The thread that writes the raw trace: a header line, then one JSON line per traced
//! packet, as the workers finish them. It flushes whenever the workers pause, so a
//! trace can be read while the engine runs, and after a crash loses at most the lines
//! of the last moment.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use serde::{Deserialize, Serialize};

use super::kernel::KernelEvent;
use super::pcap;
use super::record::{PacketTrace, RAW_VERSION, RawHeader};
use super::tracer::Clock;

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
    thread: JoinHandle<Written>,
    path: PathBuf,
}

impl TraceWriter {
    /// Create (or truncate) `path`, write the header, and start the thread; with `pcap`
    /// (a snap length), the pcap files beside it too. The channel holds `capacity`
    /// packets: beyond that, the workers drop and count.
    pub fn start(
        path: &Path,
        role: &str,
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
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        out.flush()
            .with_context(|| format!("trace file {}", path.display()))?;
        let (tx, rx) = sync_channel(capacity.max(1));
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || write_all(&rx, (&mut out, pcaps.as_mut()), &shown))?;
        Ok(TraceWriter {
            tx,
            thread,
            path: path.to_path_buf(),
        })
    }

    /// A sending end for one worker.
    pub fn sender(&self) -> SyncSender<Record> {
        self.tx.clone()
    }

    /// Wait for the workers' senders to be gone, write what is left and stop.
    pub fn finish(self) -> Written {
        drop(self.tx);
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

fn write_all(
    rx: &Receiver<Record>,
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
    loop {
        let t = match rx.recv_timeout(FLUSH_AFTER) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => {
                note(flush(out, pcaps.as_deref_mut()), &mut w, 0, path);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let line = match t {
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
