//! The thread that writes the raw trace: a header line, then one JSON line per traced
//! packet, as the workers finish them. It flushes whenever the workers pause, so a
//! trace can be read while the engine runs, and after a crash loses at most the lines
//! of the last moment.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

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

/// The running writer: the channel's sending end for the workers, and its thread.
pub struct TraceWriter {
    tx: SyncSender<PacketTrace>,
    thread: JoinHandle<Written>,
    path: PathBuf,
}

impl TraceWriter {
    /// Create (or truncate) `path`, readable by its owner and group only (a trace names
    /// every traced peer), write the header, and start the thread. The channel holds
    /// `capacity` packets: beyond that, the workers drop and count.
    pub fn start(path: &Path, role: &str, capacity: usize, clock: &Clock) -> Result<TraceWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(path)
            .with_context(|| format!("trace file {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
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
            .spawn(move || write_all(&rx, &mut out, &shown))?;
        Ok(TraceWriter {
            tx,
            thread,
            path: path.to_path_buf(),
        })
    }

    /// A sending end for one worker.
    pub fn sender(&self) -> SyncSender<PacketTrace> {
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

fn write_all(rx: &Receiver<PacketTrace>, out: &mut impl Write, path: &str) -> Written {
    let mut w = Written::default();
    loop {
        let t = match rx.recv_timeout(FLUSH_AFTER) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => {
                note(out.flush(), &mut w, 0, path);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let line = serde_json::to_writer(&mut *out, &t.raw())
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        note(line, &mut w, 1, path);
    }
    note(out.flush(), &mut w, 0, path);
    w
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
