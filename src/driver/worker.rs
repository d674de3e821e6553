//! The queue loop: one thread per queue reads packets, runs the pipeline, returns verdicts.
//!
//! Unchanged packets are not answered one by one: their ids accumulate and one batch
//! verdict accepts them all when the socket runs dry or the batch is full. Every packet
//! gets a verdict, on error paths too. Counters are published at most every
//! `PUBLISH_EVERY`, not per packet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::driver::nfqueue::{Queue, Verdict as KernelVerdict};
use crate::pipeline::{self, PacketMeta, Pipeline, Verdict};
use crate::stats::QueueCounters;

/// Unchanged packets answered by one batch verdict at most.
const BATCH_MAX: u32 = 64;
/// Receive errors in a row after which a worker gives up (the engine then stops).
const MAX_RECV_FAILURES: u32 = 100;
/// Pause after a receive error, so a broken socket does not spin a CPU.
const RECV_BACKOFF: Duration = Duration::from_millis(10);
/// How often a worker publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Room for the largest packet plus what a role may append.
const BUF_CAPACITY: usize = 0x10000 + 256;

/// A running worker: its thread and its last published counters.
pub struct Worker {
    pub queue: u16,
    pub counters: Arc<Mutex<QueueCounters>>,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Start a worker thread that owns `queue` and `pipeline` until `stop` is set.
    pub fn spawn(
        num: u16,
        queue: Queue,
        pipeline: Pipeline,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Worker> {
        let counters = Arc::new(Mutex::new(QueueCounters::new(num)));
        let published = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(format!("queue-{num}"))
            .spawn(move || Loop::new(num, queue, pipeline, published).run(&stop))?;
        Ok(Worker {
            queue: num,
            counters,
            thread,
        })
    }

    /// Tell whether the thread has ended (it only ends when told to, or by a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the thread; false if it panicked.
    pub fn join(self) -> bool {
        self.thread.join().is_ok()
    }

    /// Copy the last published counters.
    pub fn snapshot(&self) -> QueueCounters {
        match self.counters.lock() {
            Ok(c) => c.clone(),
            // A worker that panicked mid-publish still left whole numbers behind.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

struct Loop {
    queue: Queue,
    pipeline: Pipeline,
    counters: QueueCounters,
    published: Arc<Mutex<QueueCounters>>,
    buf: Vec<u8>,
    /// Highest id of unchanged packets not yet answered, and how many there are.
    pending: Option<u32>,
    pending_count: u32,
    /// Reads and verdicts that failed here; the binding counts kernel-side errors.
    send_errors: u64,
}

impl Loop {
    fn new(
        num: u16,
        queue: Queue,
        pipeline: Pipeline,
        published: Arc<Mutex<QueueCounters>>,
    ) -> Self {
        Loop {
            queue,
            pipeline,
            counters: QueueCounters::new(num),
            published,
            buf: Vec::with_capacity(BUF_CAPACITY),
            pending: None,
            pending_count: 0,
            send_errors: 0,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut now = Instant::now();
        let mut last_publish = now;
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            // Block only when nothing awaits a verdict; otherwise drain, then flush.
            let wait = self.pending.is_none();
            match self.queue.recv(wait) {
                Ok(Some(msg)) => {
                    // Per packet (a vDSO read): periods and freshness must not stand
                    // still while a burst keeps the worker from blocking.
                    now = Instant::now();
                    self.counters.received += 1;
                    self.buf.clear();
                    self.buf.extend_from_slice(self.queue.payload(&msg));
                    let meta = PacketMeta {
                        hook: msg.hook,
                        indev: msg.indev,
                        outdev: msg.outdev,
                        truncated: msg.orig_len.is_some(),
                    };
                    let verdict = self.pipeline.process(&meta, &mut self.buf, now);
                    pipeline::count(&mut self.counters, &verdict);
                    self.answer(msg.id, verdict);
                }
                Ok(None) => {
                    self.flush();
                    now = Instant::now();
                }
                Err(e) => {
                    self.send_errors += 1;
                    failures += 1;
                    tracing::warn!(queue = self.counters.queue, "receive: {e}");
                    self.flush();
                    if failures >= MAX_RECV_FAILURES {
                        // The engine sees this worker end, removes the rules and exits.
                        tracing::error!(
                            queue = self.counters.queue,
                            "{failures} receive errors in a row; giving up"
                        );
                        break;
                    }
                    std::thread::sleep(RECV_BACKOFF);
                    continue;
                }
            }
            failures = 0;
            if now.duration_since(last_publish) >= PUBLISH_EVERY {
                self.publish();
                last_publish = now;
            }
        }
        self.flush();
        self.publish();
    }

    fn answer(&mut self, id: u32, verdict: Verdict) {
        let sent = match verdict {
            Verdict::Accept | Verdict::Pass(_) => {
                self.pending = Some(id);
                self.pending_count += 1;
                if self.pending_count >= BATCH_MAX {
                    self.flush();
                }
                return;
            }
            // Ids are answered out of order here: the batch that follows only covers
            // packets still queued, so this one is not answered twice.
            Verdict::AcceptModified => {
                self.queue
                    .verdict(id, KernelVerdict::Accept, Some(&self.buf))
            }
            Verdict::Drop(_) => self.queue.verdict(id, KernelVerdict::Drop, None),
        };
        if let Err(e) = sent {
            self.send_errors += 1;
            tracing::warn!(queue = self.counters.queue, id, "verdict: {e}");
            // Unanswered, the packet would be accepted unchanged by the next batch
            // verdict: drop it instead, so a failed rewrite or drop never lets it pass.
            if self.queue.verdict(id, KernelVerdict::Drop, None).is_err() {
                self.send_errors += 1;
            }
        }
    }

    fn flush(&mut self) {
        if let Some(id) = self.pending.take() {
            self.pending_count = 0;
            if let Err(e) = self.queue.verdict_batch(id, KernelVerdict::Accept) {
                self.send_errors += 1;
                tracing::warn!(queue = self.counters.queue, id, "batch verdict: {e}");
            }
        }
    }

    fn publish(&mut self) {
        self.counters.caps.clone_from(self.pipeline.cap_counters());
        let k = self.queue.counters();
        self.counters.enobufs = k.enobufs;
        self.counters.errors = self.send_errors + k.nl_errors + k.truncated + k.malformed;
        if let Ok(mut p) = self.published.lock() {
            p.clone_from(&self.counters);
        }
    }
}
