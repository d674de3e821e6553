//! Start-up and shut-down of a role: bind queues, install rules, run workers, clean up.
//!
//! Order matters. Queues are bound and the control socket opened before any rule is
//! installed, so a start-up error leaves no rule behind. SIGHUP reloads the config (see
//! `reload`). On SIGINT/SIGTERM/SIGQUIT the rules are flushed first (no new packets are queued), the workers answer everything
//! still queued, the queues unbind, and only then is the table deleted: unbinding a queue
//! or unregistering a hook makes the kernel drop whatever is still queued.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::{CapSettings, Config, PoliceSettings, RedirectPair, Tunnel};
use crate::driver::control::{ControlSocket, Request, Withheld};
use crate::driver::keys::KeyWatch;
use crate::driver::metrics::MetricsEndpoint;
use crate::driver::notify::Notifier;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

use crate::capability::{RunId, wire_len};
use crate::driver::board::Board;
use crate::driver::depth::DepthBound;
use crate::driver::nfqueue::{self, COPY_FULL, KernelQueueStats, Queue, QueueConfig};
use crate::driver::nft::{self, QueueKind, Role, RulesetSpec, Selection, TABLE};
use crate::driver::reload::Reloader;
use crate::driver::route::{self, AdvmssGuard, AdvmssRoute, PathTo};
use crate::driver::sockdiag;
use crate::driver::worker::{REPORT_LIMIT, Worker};
use crate::pipeline::{Mbox, Pipeline, Stages, Victim, mss_with_room};
use crate::ports::{Groups, Policies};
use crate::stats::{EngineStats, KernelCounters, QueueCounters, QueueStats};
use crate::trace::{Clock, KernelListener, KernelTally, TraceWriter, Tracer};

/// How long a blocked worker waits before it checks the stop flag.
const RECV_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest wait for a routed packet to reach the precise queue (the kernel queues it
/// during the verdict call; this bounds a stall should it not come).
const PRECISE_WAIT: Duration = Duration::from_millis(20);
/// Longest wait at shut-down for the workers to answer what is still queued.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How often the main thread checks for signals and dead workers.
const TICK: Duration = Duration::from_millis(100);

/// Run a role until SIGINT, SIGTERM or SIGQUIT, reloading `cfg` from `path` on SIGHUP;
/// return its final stats. `name` is the role as the operator ran it (`server` runs
/// the victim's engine).
pub fn run(
    (role, name): (Role, &'static str),
    (cfg, path): (&Config, &std::path::Path),
) -> Result<EngineStats> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "mpolice {name} must run as root (it binds NFQUEUE queues and installs nftables rules)"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    // SIGQUIT too: nothing may leave the rules behind.
    for sig in [SIGINT, SIGTERM, SIGQUIT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("install signal handler")?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGHUP, Arc::clone(&reload)).context("install signal handler")?;
    let mut stages = StageFactory::new(role, cfg)?;
    // The trace file first: a path that cannot be written fails before the kernel is
    // touched.
    let clock = Clock::start();
    let writer = cfg
        .trace
        .as_ref()
        .map(|t| {
            let room = (t.buffer_packets, t.pcap_snap);
            TraceWriter::start(&t.file, (name, t.kernel), room, &clock)
        })
        .transpose()?;
    let kernel_trace = match (&writer, &cfg.trace) {
        (Some(w), Some(t)) if t.kernel => Some(
            KernelListener::start(w.kernel_sender(), clock)
                .context("kernel trace: join the nftables trace group")?,
        ),
        _ => None,
    };
    let _advmss = lower_advmss(role, cfg)?;
    let queues = open_queues(cfg)?;
    let control = ControlSocket::bind(&cfg.control_socket)?;
    let metrics = cfg.metrics.map(MetricsEndpoint::bind).transpose()?;
    let (rules, kind) = InstalledRules::install(role, cfg)?;
    tracing::info!(
        "{name}: table inet {TABLE} installed with the {} queue rule; queues {:?}; control socket {}",
        kind_name(kind),
        cfg.queue.numbers().collect::<Vec<_>>(),
        cfg.control_socket.display()
    );

    let worker_stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let withheld = cfg
        .capabilities
        .as_ref()
        .map_or_else(Vec::new, |c| c.withhold_feedback.clone());
    let board = Arc::new(Board::new(queues.len(), cfg.police.slr_sample, withheld));
    for port in crate::driver::policies::unheard(&cfg.ports) {
        tracing::warn!(
            port,
            "ports: nothing listens on this outgoing port: connections sent there are reset"
        );
    }
    // One set of quotas for every worker: a port's rate is the engine's, not a queue's.
    board.start_policies(Policies {
        forward: cfg.ports.clone(),
        groups: Arc::new(Groups::new(&cfg.groups, Instant::now())),
    });
    for (index, (num, queue, precise, depth)) in queues.into_iter().enumerate() {
        let mut pipeline = Pipeline::new(cfg.protect.clone(), cfg.queue.malformed, stages.make());
        if cfg.port_policies {
            // The dice need a different start in each worker and each run, not secrecy.
            let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), index);
            pipeline = pipeline.with_port_policies(&board.policies().get(), seed);
        }
        let tracer = match (&writer, &cfg.trace) {
            (Some(w), Some(t)) => {
                let tracer = Tracer::new(w.sender(), clock, t.filter.clone());
                Some(match t.pcap_snap {
                    Some(snap) => tracer.with_pcap(snap as usize),
                    None => tracer,
                })
            }
            _ => None,
        };
        let verified = match cfg.unverified_channel(role) {
            Some(_) => Some(nft::VerifiedSet::open().map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        workers.push(Worker::spawn(
            (num, queue, precise, depth),
            (pipeline, tracer),
            (stages.sends_datagrams(), verified, cfg.port_policies),
            (Arc::clone(&board), index),
            Arc::clone(&worker_stop),
        )?);
    }
    let counters: Arc<Vec<Published>> = Arc::new(
        workers
            .iter()
            .map(|w| (w.queue, Arc::clone(&w.counters)))
            .collect(),
    );
    let header = Header {
        role: name.to_owned(),
        kind,
        started: Instant::now(),
    };
    let reloader = Arc::new(Mutex::new(Reloader::new(
        (path.to_path_buf(), name, role),
        (cfg.clone(), kind),
        Arc::clone(&rules.0),
        Arc::clone(&board),
    )));
    let answers = Arc::new(Answers {
        counters: Arc::clone(&counters),
        header: header.clone(),
        board: Arc::clone(&board),
        withholds: role == Role::Victim && cfg.capabilities.is_some(),
        kernel_trace: kernel_trace.as_ref().map(KernelListener::tally),
        reloader: Arc::clone(&reloader),
    });
    let control_thread = {
        let answers = Arc::clone(&answers);
        control.serve(Arc::clone(&worker_stop), move |r| answers.answer(r))?
    };
    let metrics_thread = match metrics {
        Some(m) => {
            tracing::info!("{name}: metrics at http://{}/metrics", m.addr()?);
            let answers = Arc::clone(&answers);
            Some(m.serve(Arc::clone(&worker_stop), move || answers.stats(0))?)
        }
        None => None,
    };

    // systemd (Type=notify): the rules and queues are live.
    let mut notifier = Notifier::from_env();
    let status = format!(
        "{name}: queues {:?} live",
        cfg.queue.numbers().collect::<Vec<_>>()
    );
    if let Some(n) = &notifier {
        n.send(&format!("READY=1\nSTATUS={status}"));
    }
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(w) = workers.iter().find(|w| w.is_finished()) {
            failed = Some(w.queue);
            break;
        }
        if reload.swap(false, Ordering::Relaxed) {
            if let Some(n) = &notifier {
                n.reloading();
            }
            // A storm of SIGHUPs is one reload per tick at most.
            let said = match lock(&reloader).reload() {
                Ok(r) => {
                    let said = format!("reloaded {}: {}", r.file, said(&r.changed));
                    tracing::info!("{name}: {said}");
                    said
                }
                Err(e) => {
                    tracing::error!("{name}: {e}");
                    e
                }
            };
            if let Some(n) = &notifier {
                n.send(&format!("READY=1\nSTATUS={status}; {said}"));
            }
        }
        if let Some(n) = notifier.as_mut() {
            n.tick(Instant::now());
        }
        stages.tick(Instant::now());
        std::thread::sleep(TICK);
    }
    tracing::info!("{name}: stopping; removing table inet {TABLE}");
    if let Some(n) = &notifier {
        n.send("STOPPING=1");
    }
    // Stop queueing, answer every packet still queued, and only then unbind the queues
    // and delete the table: both would make the kernel drop what is still queued.
    rules.quiesce();
    let kernel = drain(&counters);
    worker_stop.store(true, Ordering::Relaxed);
    let all_joined = workers
        .into_iter()
        .map(Worker::join)
        .fold(true, |a, b| a & b);
    drop(rules);
    let _ = control_thread.join();
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    // Every worker's sender is gone with its thread, the listener's with it: the writer
    // writes the rest.
    let kernel_trace = kernel_trace.map(KernelListener::stop);
    if let Some(w) = writer {
        w.finish();
    }
    if let Some(q) = failed {
        bail!("worker of queue {q} stopped unexpectedly; rules removed");
    }
    if !all_joined {
        bail!("a worker panicked; rules removed");
    }
    Ok(EngineStats {
        kernel_trace,
        groups: board.policies().get().groups.rows(),
        ..header.stats(&counters, &kernel)
    })
}

/// Builds each worker's capability stages from what start-up loaded once.
// Built once per engine: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum StageFactory {
    PassThrough,
    Mbox {
        settings: CapSettings,
        police: PoliceSettings,
        /// Owned by the main loop, which reloads the key file as it changes.
        keys: KeyWatch,
        epoch: Instant,
        /// Bound into every MAC: capabilities of an earlier run never verify.
        run: RunId,
        /// The links towards the protected servers (feedback counts only from them).
        victim_ifindexes: Vec<u32>,
        redirect: Vec<RedirectPair>,
        redirect_sel: Selection,
        tunnel: Option<(Tunnel, KeyWatch)>,
    },
    Victim {
        settings: CapSettings,
        mbox_ifindexes: Vec<u32>,
        tunnel: Option<(Tunnel, KeyWatch)>,
    },
}

impl StageFactory {
    /// Load the keys (mbox) or resolve the mbox interfaces (victim).
    fn new(role: Role, cfg: &Config) -> Result<StageFactory> {
        let Some(settings) = cfg.capabilities.clone() else {
            return Ok(StageFactory::PassThrough);
        };
        // Both ends load the tunnel's shared key file, and follow it as it changes.
        let tunnel = cfg
            .tunnel
            .clone()
            .map(|t| {
                let keys = KeyWatch::load(
                    &t.key_file,
                    "tunnel.key_file",
                    settings.period,
                    Instant::now(),
                )?;
                anyhow::Ok((t, keys))
            })
            .transpose()?;
        Ok(match role {
            Role::Mbox => {
                let path = settings
                    .key_file
                    .clone()
                    .context("capabilities.key_file is required on the mbox")?;
                let keys = KeyWatch::load(
                    &path,
                    "capabilities.key_file",
                    settings.period,
                    Instant::now(),
                )?;
                let routes = routes_to_protected(&settings, cfg)?;
                let victim_ifindexes = victim_links(&settings, &routes)?;
                let mut limits = link_mtus(&victim_ifindexes)?;
                limits.extend(
                    routes
                        .iter()
                        .map(|(a, path)| (format!("the route to {a}"), path.mtu)),
                );
                check_path_mtu(&settings, limits)?;
                StageFactory::Mbox {
                    victim_ifindexes,
                    settings,
                    police: cfg.police.clone(),
                    keys,
                    redirect: cfg.redirect.clone(),
                    redirect_sel: cfg.redirect_selection(),
                    tunnel,
                    // One clock and one run for every worker (a capability may come
                    // back on any queue).
                    epoch: boot_epoch(),
                    run: RunId::random().context("draw the run id from /dev/urandom")?,
                }
            }
            Role::Victim => {
                let mbox_ifindexes = settings
                    .mbox_interfaces
                    .iter()
                    .map(|name| ifindex("mbox_interfaces", name))
                    .collect::<Result<Vec<_>>>()?;
                check_path_mtu(&settings, link_mtus(&mbox_ifindexes)?)?;
                StageFactory::Victim {
                    settings,
                    mbox_ifindexes,
                    tunnel,
                }
            }
        })
    }

    /// Reload the key files that changed.
    fn tick(&mut self, now: Instant) {
        match self {
            StageFactory::PassThrough => {}
            StageFactory::Mbox { keys, tunnel, .. } => {
                keys.tick(now);
                if let Some((_, k)) = tunnel {
                    k.tick(now);
                }
            }
            StageFactory::Victim { tunnel, .. } => {
                if let Some((_, k)) = tunnel {
                    k.tick(now);
                }
            }
        }
    }

    /// Whether the stages produce datagrams to send (the victim's feedback, tunnel mode).
    fn sends_datagrams(&self) -> bool {
        matches!(
            self,
            StageFactory::Victim {
                tunnel: Some(_),
                ..
            }
        )
    }

    fn make(&self) -> Option<Stages> {
        match self {
            StageFactory::PassThrough => None,
            StageFactory::Mbox {
                settings,
                police,
                keys,
                epoch,
                run,
                victim_ifindexes,
                redirect,
                redirect_sel,
                tunnel,
            } => {
                let m = Mbox::new(
                    settings,
                    police,
                    keys.shared(),
                    (*epoch, *run),
                    victim_ifindexes.clone(),
                )
                .with_redirect(redirect.clone(), redirect_sel.clone());
                Some(Stages::Mbox(match tunnel {
                    Some((t, keys)) => m.with_tunnel(t.clone(), keys.shared()),
                    None => m,
                }))
            }
            StageFactory::Victim {
                settings,
                mbox_ifindexes,
                tunnel,
            } => {
                let v = Victim::new(settings, mbox_ifindexes.clone());
                Some(Stages::Victim(match tunnel {
                    Some((t, keys)) => v.with_tunnel(t.clone(), keys.shared()),
                    None => v,
                }))
            }
        }
    }
}

/// On the victim, advertise an MSS to the client prefixes that leaves room for a stamp;
/// the returned guard restores the routes when the engine stops.
fn lower_advmss(role: Role, cfg: &Config) -> Result<Option<AdvmssGuard>> {
    let Some(caps) = cfg.capabilities.as_ref().filter(|_| role == Role::Victim) else {
        return Ok(None);
    };
    if caps.client_prefixes.is_empty() {
        return Ok(None);
    }
    // Tunnel mode: the client's segments also carry the tunnel's headers to us.
    let tunnel_room = |v6| {
        cfg.tunnel
            .as_ref()
            .map_or(0, |_| crate::wire::tunnel::overhead(v6))
    };
    let routes: Vec<AdvmssRoute> = caps
        .client_prefixes
        .iter()
        .map(|p| {
            let v6 = p.addr().is_ipv6();
            AdvmssRoute {
                prefix: p.addr(),
                prefix_len: p.len(),
                advmss: mss_with_room(
                    v6,
                    usize::from(caps.path_mtu),
                    wire_len(v6) + tunnel_room(v6),
                ),
            }
        })
        .collect();
    let guard = route::set_advmss(&routes)
        .map_err(|e| anyhow::anyhow!("capabilities.client_prefixes: {e}"))?;
    tracing::info!(
        "advmss lowered for {}",
        routes
            .iter()
            .map(|r| format!("{r} to {}", r.advmss))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Some(guard))
}

/// The instant the monotonic clock started (boot): capability times count from it, the
/// same for every worker. Times alone cannot tell runs apart (they restart at a reboot
/// and wrap every 49.7 days): the run id bound into each MAC does.
fn boot_epoch() -> Instant {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0;
    let since_boot = Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    );
    let now = Instant::now();
    if ok {
        now.checked_sub(since_boot).unwrap_or(now)
    } else {
        now
    }
}

/// Resolve an interface name of `capabilities.<key>` in this network namespace.
fn ifindex(key: &str, name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("capabilities.{key}: no interface {name:?} in this network namespace");
    }
    Ok(index)
}

/// How the kernel reaches each protected address now (one lookup each, at start).
fn routes_to_protected(caps: &CapSettings, cfg: &Config) -> Result<Vec<(IpAddr, PathTo)>> {
    cfg.protect
        .addresses
        .iter()
        .map(|prefix| {
            let path = route::path_to(prefix.addr()).map_err(|e| {
                if caps.victim_interfaces.is_empty() {
                    anyhow::anyhow!("capabilities.victim_interfaces: not set, and {e}; name them")
                } else {
                    anyhow::anyhow!("capabilities.path_mtu: {e}")
                }
            })?;
            Ok((prefix.addr(), path))
        })
        .collect()
}

/// The mbox's links towards the protected servers: configured, or those the kernel
/// routes the protected addresses by now (`routes`).
fn victim_links(caps: &CapSettings, routes: &[(IpAddr, PathTo)]) -> Result<Vec<u32>> {
    if !caps.victim_interfaces.is_empty() {
        return caps
            .victim_interfaces
            .iter()
            .map(|name| ifindex("victim_interfaces", name))
            .collect();
    }
    let mut links = Vec::new();
    for (_, path) in routes {
        if !links.contains(&path.oif) {
            links.push(path.oif);
        }
    }
    tracing::info!(
        "feedback counted only from ifindex {links:?} (the routes to the protected addresses; set capabilities.victim_interfaces to choose)"
    );
    Ok(links)
}

/// Each link's MTU, named for the operator.
fn link_mtus(links: &[u32]) -> Result<Vec<(String, u32)>> {
    links
        .iter()
        .map(|&link| {
            let mtu = route::interface_mtu(link)
                .with_context(|| format!("capabilities.path_mtu: no MTU for ifindex {link}"))?;
            Ok((format!("interface {link}"), mtu))
        })
        .collect()
}

/// Refuse a `path_mtu` above the smallest of `limits`: the MTUs of the links and routes
/// stamped or fed-back packets take.
fn check_path_mtu(caps: &CapSettings, limits: Vec<(String, u32)>) -> Result<()> {
    if let Some((what, mtu)) = limits.into_iter().min_by_key(|(_, mtu)| *mtu)
        && u32::from(caps.path_mtu) > mtu
    {
        bail!(
            "capabilities.path_mtu: {} is above the MTU {mtu} of {what}: a stamped packet or an ACK with feedback would not fit; set path_mtu = {mtu} or less",
            caps.path_mtu
        );
    }
    Ok(())
}

/// Open every queue, each with its depth bound (which sets its first limit), and on
/// the hybrid path its precise queue.
fn open_queues(cfg: &Config) -> Result<Vec<WorkerQueues>> {
    cfg.queue
        .numbers()
        .enumerate()
        .map(|(i, num)| {
            let depth = DepthBound::new(cfg.queue.max_delay, cfg.queue.max_len);
            let q = Queue::open(&QueueConfig {
                max_len: depth.limit(),
                rcvbuf_bytes: cfg.queue.rcvbuf_bytes,
                fail_open: cfg.queue.fail_open,
                // A rewritten GSO super-packet loses its segmentation: without the
                // hybrid path, take packets the kernel already cut to wire size.
                gso: cfg.queue.precise_first.is_some(),
                // With it, headers are enough: what needs more is read whole there.
                copy_range: match cfg.queue.precise_first {
                    Some(_) => cfg.queue.copy_bytes,
                    None => COPY_FULL,
                },
                recv_timeout: RECV_TIMEOUT,
                ..QueueConfig::new(num)
            })?;
            // It receives only what the worker routes there, and is drained at once.
            let precise = cfg
                .queue
                .precise_first
                .map(|first| {
                    let num = first + i as u16;
                    Queue::open(&QueueConfig {
                        recv_timeout: PRECISE_WAIT,
                        ..QueueConfig::new(num)
                    })
                })
                .transpose()?;
            Ok((num, q, precise, depth))
        })
        .collect()
}

/// A worker's queue number, its queue, its precise queue (hybrid path) and depth bound.
type WorkerQueues = (u16, Queue, Option<Queue>, DepthBound);

/// Wait until the kernel holds no packet of ours awaiting a verdict (or the deadline
/// passes); return the kernel's counters as they stand then, before the queues unbind.
fn drain(counters: &[Published]) -> Vec<KernelQueueStats> {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let kernel = nfqueue::kernel_queue_stats().unwrap_or_default();
        let waiting: u64 = kernel
            .iter()
            .filter(|k| counters.iter().any(|(q, _)| *q == k.queue))
            .map(|k| u64::from(k.waiting))
            .sum();
        if waiting == 0 {
            return kernel;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                "{waiting} packets still queued after {DRAIN_DEADLINE:?}; unbinding drops them"
            );
            return kernel;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A worker's queue number and its published counters.
type Published = (u16, Arc<Mutex<QueueCounters>>);

/// What every stats snapshot of this engine starts with.
#[derive(Clone)]
struct Header {
    role: String,
    kind: QueueKind,
    started: Instant,
}

impl Header {
    /// Build the stats from the workers' published counters and the kernel's.
    fn stats(&self, counters: &[Published], kernel: &[KernelQueueStats]) -> EngineStats {
        let queues = counters
            .iter()
            .map(|(num, c)| {
                let engine = match c.lock() {
                    Ok(c) => c.clone(),
                    Err(p) => p.into_inner().clone(),
                };
                let of = |num: u16| {
                    kernel
                        .iter()
                        .find(|k| k.queue == num)
                        .map(|k| KernelCounters {
                            waiting: u64::from(k.waiting),
                            queue_dropped: k.queue_dropped,
                            user_dropped: k.user_dropped,
                            last_id: u64::from(k.last_id),
                        })
                };
                QueueStats {
                    kernel: of(*num),
                    precise_kernel: engine.precise_queue.and_then(of),
                    engine,
                }
            })
            .collect();
        EngineStats {
            role: self.role.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            queue_rule: kind_name(self.kind).to_string(),
            queues,
            police: None,
            unverified_over_source: 0,
            unverified_over_total: 0,
            kernel_trace: None,
            listeners: Vec::new(),
            groups: Vec::new(),
        }
    }
}

/// What the control socket answers from.
struct Answers {
    counters: Arc<Vec<Published>>,
    header: Header,
    board: Arc<Board>,
    /// A victim with capabilities: it takes `withhold` requests.
    withholds: bool,
    /// Tracing's kernel path, when on.
    kernel_trace: Option<Arc<KernelTally>>,
    /// The config in force, what reloads it and what changes the port policies.
    reloader: Arc<Mutex<Reloader>>,
}

impl Answers {
    /// A snapshot of every counter, with the police's `limit` most active senders.
    fn stats(&self, limit: usize) -> EngineStats {
        let mut stats = self.header.stats(
            &self.counters,
            &nfqueue::kernel_queue_stats().unwrap_or_default(),
        );
        stats.police = self.board.report(limit);
        // Dropped in the kernel before the queue (0 without the channel).
        (stats.unverified_over_source, stats.unverified_over_total) =
            nft::unverified_drops().unwrap_or_default();
        stats.kernel_trace = self.kernel_trace.as_ref().map(|k| k.read());
        stats.groups = self.board.policies().get().groups.rows();
        // Per-port statistics on: the listening sockets of the protected TCP ports and
        // the forwarded connections' outgoing ports.
        let listened = {
            let r = lock(&self.reloader);
            let cfg = r.config();
            cfg.port_policies.then(|| cfg.listened_ports())
        };
        if let Some(ports) = &listened {
            stats.listeners = sockdiag::listeners()
                .unwrap_or_default()
                .into_iter()
                .filter(|l| ports.iter().any(|r| r.contains(l.port)))
                .collect();
        }
        stats
    }

    fn answer(&self, request: &Request) -> std::result::Result<serde_json::Value, String> {
        let withheld = |changed| Withheld {
            withheld: self
                .board
                .withheld()
                .iter()
                .map(|p| p.to_string())
                .collect(),
            changed,
        };
        let value = match request {
            Request::Stats | Request::Senders => {
                let limit = if *request == Request::Senders {
                    REPORT_LIMIT
                } else {
                    0
                };
                serde_json::to_value(self.stats(limit))
            }
            Request::Ports(r) => serde_json::to_value(lock(&self.reloader).ports(r)?),
            Request::Reload => {
                let done = lock(&self.reloader).reload();
                match &done {
                    Ok(r) => tracing::info!("reloaded {}: {}", r.file, said(&r.changed)),
                    Err(e) => tracing::error!("{e}"),
                }
                serde_json::to_value(done?)
            }
            _ if !self.withholds => {
                return Err("only a victim with [capabilities] withholds feedback".into());
            }
            Request::WithholdList => serde_json::to_value(withheld(false)),
            Request::WithholdAdd(p) | Request::WithholdRemove(p) => {
                let add = matches!(request, Request::WithholdAdd(_));
                let changed = self.board.change_withheld(*p, add);
                tracing::info!(prefix = %p, add, changed, "withhold feedback");
                serde_json::to_value(withheld(changed))
            }
        };
        value.map_err(|e| e.to_string())
    }
}

/// Removes our table when dropped: on a normal stop, an error, or a panic unwinding.
/// Holds the chains in the kernel now (a reload changes them).
struct InstalledRules(Arc<Mutex<RulesetSpec>>);

impl InstalledRules {
    /// Install the role's rules and return the guard that removes them.
    fn install(role: Role, cfg: &Config) -> Result<(InstalledRules, QueueKind)> {
        let spec = cfg.ruleset(role);
        if nft::table_exists(TABLE).unwrap_or(false) {
            tracing::warn!(
                "replacing table inet {TABLE}: left by an engine that was killed, or another \
                 engine runs in this network namespace (run one engine per namespace)"
            );
        }
        match nft::install(&spec, cfg.queue.kind) {
            Ok(kind) => Ok((InstalledRules(Arc::new(Mutex::new(spec))), kind)),
            Err(e) => {
                // A batch the kernel committed can still fail to be acknowledged: make
                // sure no rule outlives a failed start.
                let _ = nft::remove(TABLE);
                bail!("rules: {e}")
            }
        }
    }
}

impl InstalledRules {
    /// Stop queueing packets but keep the hooks registered (see `nft::flush_rules`).
    fn quiesce(&self) {
        if let Err(e) = nft::flush_rules(&lock(&self.0)) {
            tracing::warn!("could not flush the rules of table inet {TABLE}: {e}");
        }
    }
}

impl Drop for InstalledRules {
    fn drop(&mut self) {
        if let Err(e) = nft::remove(TABLE) {
            tracing::error!(
                "could not remove table inet {TABLE}: {e}; remove it with `mpolice rules remove`"
            );
        }
    }
}

/// Lock `m`, whatever a panicking holder left: every value behind these locks is whole
/// between statements.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a reload changed, in a log line.
fn said(changed: &[String]) -> String {
    if changed.is_empty() {
        "nothing changed".into()
    } else {
        changed.join("; ")
    }
}

/// Name the installed queue rule as operators see it in the stats.
pub fn kind_name(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Native => "native",
        QueueKind::XtCompat => "xt",
    }
}
