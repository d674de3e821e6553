//! What carries the traffic through the mbox in one run: nothing (kernel forwarding),
//! one of the C reference programs of `../shared/bench`, or `mpolice` in one of its
//! configurations. Starting one gives a [`Running`] that stops it when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mpolice::testbed::{EngineProcess, Host, RoleConfig, Testbed, VICTIM_V4};

use super::common::bin;

/// The TCP ports the bench uses: the latency echo, two goodput senders, two half-load
/// senders.
pub const ECHO_PORT: u16 = 8080;
pub const GOODPUT_PORTS: [u16; 2] = [5201, 5202];
pub const LOAD_PORTS: [u16; 2] = [5203, 5204];
/// The UDP port of the small-packet flood.
pub const FLOOD_PORT: u16 = 9000;

/// One `mpolice` configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engine {
    /// Capabilities on: the mbox stamps and polices, the victim strips and feeds back.
    /// Off: the mbox alone, parsing and accepting (passthrough).
    pub caps: bool,
    pub queues: u16,
    pub hybrid: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Kernel forwarding, no queue: the limit.
    NoQueue,
    /// `nfq_baseline`: per packet, whole copy, accept (the C per-packet floor).
    CFloor,
    /// `nfq_hybrid`: GSO fast queue, 1 TCP data packet in 64 routed and rewritten.
    CHybrid,
    Mpolice(Engine),
}

impl Subject {
    pub fn label(self) -> String {
        match self {
            Subject::NoQueue => "no queue".into(),
            Subject::CFloor => "C per-packet floor".into(),
            Subject::CHybrid => "C hybrid 1/64".into(),
            Subject::Mpolice(e) => format!(
                "{} {}q {}",
                if e.caps {
                    "mbox+victim caps"
                } else {
                    "passthrough"
                },
                e.queues,
                if e.hybrid { "hybrid" } else { "per-packet" }
            ),
        }
    }

    /// `nfq_hybrid` parses IPv4 only.
    pub fn serves(self, v6: bool) -> bool {
        !(v6 && self == Subject::CHybrid)
    }
}

/// The C programs, built once from `../shared/bench` into `NFQ_BIN` (default
/// /tmp/nfq-bench) if they are not there yet. None (with the reason printed) when they
/// cannot be built, e.g. without libnetfilter-queue-dev: the C rows are then left out.
pub fn c_programs() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var("NFQ_BIN").unwrap_or_else(|_| "/tmp/nfq-bench".into()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench");
    for prog in ["nfq_baseline", "nfq_hybrid"] {
        if dir.join(prog).exists() {
            continue;
        }
        let built = std::fs::create_dir_all(&dir).is_ok()
            && Command::new("gcc")
                .args(["-O2", "-o"])
                .arg(dir.join(prog))
                .arg(src.join(format!("{prog}.c")))
                .args(["-lnetfilter_queue", "-lnfnetlink", "-lmnl"])
                .status()
                .is_ok_and(|s| s.success());
        if !built {
            eprintln!(
                "C peers left out: cannot build {prog} from {} (needs gcc and libnetfilter-queue-dev)",
                src.display()
            );
            return None;
        }
    }
    Some(dir)
}

/// A subject carrying traffic; dropping it stops its processes and removes its rules.
pub struct Running<'a> {
    tb: &'a Testbed,
    c: Option<Child>,
    /// mbox first, then the victim if capabilities are on.
    pub engines: Vec<EngineProcess>,
}

impl<'a> Running<'a> {
    pub fn start(tb: &'a Testbed, s: Subject, c_dir: Option<&Path>) -> Result<Running<'a>> {
        let mut run = Running {
            tb,
            c: None,
            engines: Vec::new(),
        };
        match s {
            Subject::NoQueue => {}
            Subject::CFloor | Subject::CHybrid => {
                let dir = c_dir.context("C programs not built")?;
                run.start_c(s, dir)?;
            }
            Subject::Mpolice(e) => {
                let role = |r: &str| -> Result<RoleConfig> {
                    let cfg = RoleConfig {
                        queues: e.queues,
                        tcp_ports: [ECHO_PORT]
                            .into_iter()
                            .chain(GOODPUT_PORTS)
                            .chain(LOAD_PORTS)
                            .collect(),
                        udp_ports: vec![FLOOD_PORT],
                        queue_extra: format!("hybrid = {}", e.hybrid),
                        ..RoleConfig::default()
                    };
                    if e.caps {
                        cfg.with_capabilities(tb, r)
                    } else {
                        Ok(cfg)
                    }
                };
                if e.caps {
                    let victim = role("victim")?;
                    let v = EngineProcess::start(tb, Host::Victim, "victim", &bin(), &victim)?;
                    let m = EngineProcess::start(tb, Host::Mbox, "mbox", &bin(), &role("mbox")?)?;
                    run.engines = vec![m, v];
                } else {
                    let m = EngineProcess::start(tb, Host::Mbox, "mbox", &bin(), &role("mbox")?)?;
                    run.engines = vec![m];
                }
            }
        }
        Ok(run)
    }

    /// Queue forwarded TCP and UDP to queue 0 with the xt target (the kernel here has no
    /// nft `queue` expression), as `nfq_floor.sh` does, and start the program on it.
    fn start_c(&mut self, s: Subject, dir: &Path) -> Result<()> {
        let tables: &[&str] = if s == Subject::CHybrid {
            &["iptables-nft"]
        } else {
            &["iptables-nft", "ip6tables-nft"]
        };
        for table in tables {
            for proto in ["tcp", "udp"] {
                self.tb.exec(
                    Host::Mbox,
                    &[
                        table,
                        "-A",
                        "FORWARD",
                        "-p",
                        proto,
                        "-j",
                        "NFQUEUE",
                        "--queue-num",
                        "0",
                    ],
                )?;
            }
        }
        let floor = dir.join("nfq_baseline");
        let hybrid = dir.join("nfq_hybrid");
        let argv: Vec<&str> = match s {
            Subject::CFloor => vec![floor.to_str().context("path")?, "0", "accept"],
            _ => vec![
                hybrid.to_str().context("path")?,
                "-m",
                "a",
                "-n",
                "64",
                "-D",
                VICTIM_V4,
                "-B",
            ],
        };
        let child = self
            .tb
            .command(Host::Mbox, &argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the C program")?;
        self.c = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .tb
            .kernel_queues(Host::Mbox)?
            .iter()
            .any(|q| q.queue == 0)
        {
            if Instant::now() > deadline {
                bail!("{} did not bind queue 0", s.label());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// CPU time (user and system, all threads) the subject's processes used so far, in
    /// ns; 0 for kernel forwarding.
    pub fn cpu_ns(&self) -> Result<u64> {
        let pids = self
            .c
            .iter()
            .map(Child::id)
            .chain(self.engines.iter().filter_map(EngineProcess::pid));
        let mut ticks = 0;
        for pid in pids {
            ticks += cpu_ticks(pid)?;
        }
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
        Ok(ticks * 1_000_000_000 / hz.max(1))
    }

    /// Whether packets meet a queue (anything but kernel forwarding).
    pub fn is_queued(&self) -> bool {
        self.c.is_some() || !self.engines.is_empty()
    }

    /// Packets the kernel dropped at this subject's queues (queue full or socket full),
    /// mbox and victim, since they were bound.
    pub fn queue_drops(&self) -> Result<u64> {
        let mut n = 0;
        for host in [Host::Mbox, Host::Victim] {
            for q in self.tb.kernel_queues(host)? {
                n += q.queue_dropped + q.user_dropped;
            }
        }
        Ok(n)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.engines.clear();
        if let Some(mut c) = self.c.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = self.tb.exec(Host::Mbox, &["nft", "flush", "ruleset"]);
        }
    }
}

/// utime + stime of a process, all its threads, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat.rsplit_once(')').context("/proc stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (man 5 proc).
    let field = |i: usize| -> Result<u64> { Ok(f.get(i - 3).context("stat field")?.parse()?) };
    Ok(field(14)? + field(15)?)
}
