//! Start-up and shut-down of a role: bind queues, install rules, run workers, clean up.
//!
//! Order matters. Queues are bound and the control socket opened before any rule is
//! installed, so a start-up error leaves no rule behind. On SIGINT/SIGTERM the rules go
//! first (no new packets are queued), then the workers answer what is still queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::driver::control::ControlSocket;
use crate::driver::nfqueue::{self, Queue, QueueConfig};
use crate::driver::nft::{self, QueueKind, Role, TABLE};
use crate::driver::worker::Worker;
use crate::pipeline::Pipeline;
use crate::stats::{EngineStats, KernelCounters, QueueStats};

/// How long a blocked worker waits before it checks the stop flag.
const RECV_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the main thread checks for signals and dead workers.
const TICK: Duration = Duration::from_millis(100);

/// Run a role until SIGINT or SIGTERM; return its final stats.
pub fn run(role: Role, cfg: &Config) -> Result<EngineStats> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "mpolice {role} must run as root (it binds NFQUEUE queues and installs nftables rules)"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("install signal handler")?;
    }
    let queues = cfg
        .queue
        .numbers()
        .map(|num| {
            Queue::open(&QueueConfig {
                max_len: cfg.queue.max_len,
                rcvbuf_bytes: cfg.queue.rcvbuf_bytes,
                fail_open: cfg.queue.fail_open,
                // Roles rewrite packets, and a rewritten GSO super-packet loses its
                // segmentation: take packets the kernel already segmented.
                gso: false,
                recv_timeout: RECV_TIMEOUT,
                ..QueueConfig::new(num)
            })
            .map(|q| (num, q))
            .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    let control = ControlSocket::bind(&cfg.control_socket)?;

    let spec = nft::plan(role, &cfg.protect, &cfg.queue.target);
    let kind = nft::install(&spec, cfg.queue.kind).map_err(|e| anyhow::anyhow!("rules: {e}"))?;
    let rules = InstalledRules;
    tracing::info!(
        "{role}: table inet {TABLE} installed with the {} queue rule; queues {:?}; control socket {}",
        kind_name(kind),
        cfg.queue.numbers().collect::<Vec<_>>(),
        cfg.control_socket.display()
    );

    let worker_stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (num, queue) in queues {
        let pipeline = Pipeline::new(role, cfg.protect.clone(), cfg.queue.malformed);
        workers.push(Worker::spawn(
            num,
            queue,
            pipeline,
            Arc::clone(&worker_stop),
        )?);
    }
    let started = Instant::now();
    let shared: Arc<Vec<(u16, Arc<std::sync::Mutex<crate::stats::QueueCounters>>)>> = Arc::new(
        workers
            .iter()
            .map(|w| (w.queue, Arc::clone(&w.counters)))
            .collect(),
    );
    let snapshot = {
        let shared = Arc::clone(&shared);
        let role = role.to_string();
        move || collect(&role, kind, started, &shared)
    };
    let control_thread = control.serve(Arc::clone(&worker_stop), snapshot.clone())?;

    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(w) = workers.iter().find(|w| w.is_finished()) {
            failed = Some(w.queue);
            break;
        }
        std::thread::sleep(TICK);
    }
    tracing::info!("{role}: stopping; removing table inet {TABLE}");
    drop(rules);
    // Let the workers answer what was queued before the rules went.
    std::thread::sleep(RECV_TIMEOUT);
    worker_stop.store(true, Ordering::Relaxed);
    let final_stats = snapshot();
    let all_joined = workers
        .into_iter()
        .map(Worker::join)
        .fold(true, |a, b| a & b);
    let _ = control_thread.join();
    if let Some(q) = failed {
        bail!("worker of queue {q} stopped unexpectedly; rules removed");
    }
    if !all_joined {
        bail!("a worker panicked; rules removed");
    }
    Ok(final_stats)
}

/// Removes our table when dropped: on a normal stop, an error, or a panic unwinding.
struct InstalledRules;

impl Drop for InstalledRules {
    fn drop(&mut self) {
        if let Err(e) = nft::remove(TABLE) {
            tracing::error!(
                "could not remove table inet {TABLE}: {e}; remove it with `mpolice rules remove`"
            );
        }
    }
}

/// Name the installed queue rule as operators see it in the stats.
pub fn kind_name(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Native => "native",
        QueueKind::XtCompat => "xt",
    }
}

type SharedCounters = (u16, Arc<std::sync::Mutex<crate::stats::QueueCounters>>);

fn collect(
    role: &str,
    kind: QueueKind,
    started: Instant,
    shared: &[SharedCounters],
) -> EngineStats {
    let kernel = nfqueue::kernel_queue_stats().unwrap_or_default();
    let queues = shared
        .iter()
        .map(|(num, c)| {
            let engine = match c.lock() {
                Ok(c) => c.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let kernel = kernel
                .iter()
                .find(|k| k.queue == *num)
                .map(|k| KernelCounters {
                    waiting: u64::from(k.waiting),
                    queue_dropped: k.queue_dropped,
                    user_dropped: k.user_dropped,
                    last_id: u64::from(k.last_id),
                });
            QueueStats { engine, kernel }
        })
        .collect();
    EngineStats {
        role: role.to_string(),
        pid: std::process::id(),
        uptime_secs: started.elapsed().as_secs(),
        queue_rule: kind_name(kind).to_string(),
        queues,
    }
}
