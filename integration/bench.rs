//! Line rate, end to end (issue 14): one testbed, one run, repetitions interleaved.
//!
//! For each repetition, each address family and each subject (kernel forwarding, the C
//! per-packet floor and C hybrid of `../shared/bench`, `mpolice` passthrough and
//! mbox+victim with capabilities, 1 and 2 queues, hybrid on and off), one subject is
//! started and measured in turn: TCP goodput of two senders with the CPU time it cost;
//! for some subjects the request-response latency idle and at half load, and the rate of
//! 64-byte packets it forwards. Medians with min and max, ratios to the C floor and to no
//! queue, and the targets are printed; `line-rate.json` and `goodput.svg` are
//! written to `BENCH_OUT` (default `target/bench`).
//!
//! Run: `cargo test --release --test bench -- --ignored line_rate --nocapture`
//! (`BENCH_SECS` seconds per run, default 3; `BENCH_REPS` runs, default 3; `NFQ_BIN` the
//! directory of the built C programs, default /tmp/nfq-bench, built there if missing;
//! `BENCH_ONLY=2q,C` only the subjects whose label holds one of the words).
//! `line_rate_smoke` runs a short version in CI to prove the bench still runs.

use std::path::{Path, PathBuf};

use mpolice::testbed::Testbed;

#[path = "common.rs"]
mod common;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/subject.rs"]
mod subject;

use common::{exclusive, root};
use measure::{Load, add_second_client, goodput, round_trips, small_packets};
use report::{C_FLOOR, C_HYBRID, Latency, Measure, NO_QUEUE, Report, Row, Target, percentiles};
use subject::{Engine, Running, Subject};

/// What one bench run measures.
struct Plan {
    secs: u32,
    reps: u32,
    subjects: Vec<Subject>,
    /// Subjects whose latency and small-packet rate are measured too.
    probed: Vec<Subject>,
    /// Round trips per latency figure.
    rounds: usize,
    /// Bounds of each small-packet flood.
    flood_packets: u64,
    flood_secs: f64,
    c_programs: Option<PathBuf>,
}

const PASSTHROUGH: Engine = Engine {
    caps: false,
    queues: 2,
    hybrid: true,
};
const CAPS: Engine = Engine {
    caps: true,
    queues: 2,
    hybrid: true,
};

impl Plan {
    fn full() -> Plan {
        let env = |k: &str, d: u32| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let c_programs = subject::c_programs();
        let mut subjects = vec![Subject::NoQueue];
        if c_programs.is_some() {
            subjects.extend([Subject::CFloor, Subject::CHybrid]);
        }
        for caps in [false, true] {
            for queues in [1, 2] {
                for hybrid in [true, false] {
                    subjects.push(Subject::Mpolice(Engine {
                        caps,
                        queues,
                        hybrid,
                    }));
                }
            }
        }
        // `BENCH_ONLY`: the subjects whose label holds one of these comma-separated
        // words (no queue stays, for the ratios).
        if let Ok(only) = std::env::var("BENCH_ONLY") {
            subjects.retain(|s| {
                *s == Subject::NoQueue || only.split(',').any(|w| s.label().contains(w.trim()))
            });
        }
        let mut probed = vec![Subject::NoQueue, Subject::Mpolice(PASSTHROUGH)];
        if c_programs.is_some() {
            probed.push(Subject::CFloor);
        }
        probed.retain(|s| subjects.contains(s));
        Plan {
            secs: env("BENCH_SECS", 3),
            reps: env("BENCH_REPS", 3),
            subjects,
            probed,
            rounds: 2_000,
            flood_packets: 1_000_000,
            flood_secs: 3.0,
            c_programs,
        }
    }

    fn smoke() -> Plan {
        let subjects = vec![
            Subject::NoQueue,
            Subject::Mpolice(PASSTHROUGH),
            Subject::Mpolice(CAPS),
        ];
        Plan {
            secs: 1,
            reps: 1,
            probed: subjects[..2].to_vec(),
            subjects,
            rounds: 200,
            flood_packets: 20_000,
            flood_secs: 1.0,
            c_programs: None,
        }
    }

    /// The targets of issue 14, judged on the default configuration (one queue per
    /// core, hybrid on) in each family.
    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        for family in ["IPv4", "IPv6"] {
            let target = |what, s: Engine, measure, bound| Target {
                what,
                config: Subject::Mpolice(s).label(),
                family,
                measure,
                bound,
            };
            t.extend([
                target(
                    "passthrough, x no queue",
                    PASSTHROUGH,
                    Measure::GoodputOver(NO_QUEUE),
                    0.8,
                ),
                target(
                    "mbox+victim with capabilities, x no queue",
                    CAPS,
                    Measure::GoodputOver(NO_QUEUE),
                    0.5,
                ),
                target(
                    "mbox stamping (with the victim), x no queue",
                    CAPS,
                    Measure::GoodputOver(NO_QUEUE),
                    0.6,
                ),
                target(
                    "small packets delivered, x C floor",
                    PASSTHROUGH,
                    Measure::SmallPacketsOver(C_FLOOR),
                    1.5,
                ),
                target(
                    "added p99 latency at half load, µs",
                    PASSTHROUGH,
                    Measure::AddedP99,
                    100.0,
                ),
                target(
                    "queue drops in goodput runs",
                    PASSTHROUGH,
                    Measure::QueueDrops,
                    0.0,
                ),
                target(
                    "queue drops in goodput runs",
                    CAPS,
                    Measure::QueueDrops,
                    0.0,
                ),
            ]);
        }
        t.push(Target {
            what: "mbox stamping (with the victim), x C hybrid",
            config: Subject::Mpolice(CAPS).label(),
            family: "IPv4",
            measure: Measure::GoodputOver(C_HYBRID),
            bound: 1.0,
        });
        t
    }

    /// Measure everything; rows in the order of the plan, IPv4 before IPv6.
    fn run(&self, tb: &Testbed) -> anyhow::Result<Report> {
        add_second_client(tb)?;
        // One row per subject and family it serves, measured in this order each time.
        let cells: Vec<(Subject, bool)> = [false, true]
            .into_iter()
            .flat_map(|v6| {
                self.subjects
                    .iter()
                    .filter(move |s| s.serves(v6))
                    .map(move |&s| (s, v6))
            })
            .collect();
        let mut rows: Vec<Row> = cells
            .iter()
            .map(|&(s, v6)| Row {
                config: s.label(),
                family: if v6 { "IPv6" } else { "IPv4" },
                goodput: vec![],
                latency: vec![],
                small_packets: vec![],
            })
            .collect();
        for rep in 0..self.reps {
            eprintln!("run {} of {}", rep + 1, self.reps);
            for (row, &(s, v6)) in rows.iter_mut().zip(&cells) {
                let run = Running::start(tb, s, self.c_programs.as_deref())?;
                let g = goodput(tb, &run, v6, self.secs)?;
                row.goodput.push(g);
                if self.probed.contains(&s) {
                    let (idle_p50_us, idle_p99_us) = percentiles(round_trips(tb, v6, self.rounds)?);
                    let load = Load::start(tb, v6, g.bps / 2.0, self.secs + 10)?;
                    let (load_p50_us, load_p99_us) = percentiles(round_trips(tb, v6, self.rounds)?);
                    drop(load);
                    row.latency.push(Latency {
                        idle_p50_us,
                        idle_p99_us,
                        load_p50_us,
                        load_p99_us,
                    });
                    row.small_packets.push(small_packets(
                        tb,
                        &run,
                        v6,
                        self.flood_packets,
                        self.flood_secs,
                    )?);
                }
                eprintln!(
                    "  {:<30} {} {:6.2} Gbit/s",
                    row.config,
                    row.family,
                    g.bps / 1e9
                );
            }
        }
        Ok(Report {
            machine: machine(),
            secs: self.secs,
            reps: self.reps,
            rows,
        })
    }
}

/// CPUs, model and kernel of this machine, for the report's first line.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, Linux {}", kernel.trim())
}

/// Print the report and write its JSON and SVG into `out`.
fn publish(report: &Report, targets: &[Target], out: &Path) -> anyhow::Result<()> {
    eprintln!("\n{}", report.text(targets));
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("line-rate.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join("goodput.svg"), report.svg())?;
    eprintln!("wrote {}/line-rate.json and goodput.svg", out.display());
    Ok(())
}

#[test]
#[ignore = "benchmark, run by hand (about 5 minutes): prints and writes the line-rate report"]
fn line_rate() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let plan = Plan::full();
    let tb = Testbed::up("mprate").unwrap();
    let report = plan.run(&tb).unwrap();
    let out = std::env::var("BENCH_OUT").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
        PathBuf::from,
    );
    publish(&report, &plan.targets(), &out).unwrap();
}

/// Where the engine's CPU time goes, for the notes on missed targets: `perf record` of
/// each engine during a goodput run of the default configurations over IPv4, and during
/// a 64-byte flood through passthrough; then `perf report`'s top symbols. Needs `perf`
/// (Debian: linux-perf).
/// Run: `cargo test --release --test bench -- --ignored profile_engines --nocapture`
#[test]
#[ignore = "profile, run by hand: needs perf"]
fn profile_engines() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mpprof").unwrap();
    add_second_client(&tb).unwrap();
    for (engine, flood) in [(PASSTHROUGH, false), (CAPS, false), (PASSTHROUGH, true)] {
        let run = Running::start(&tb, Subject::Mpolice(engine), None).unwrap();
        let perfs = record_engines(&tb, &run, 4);
        let label = Subject::Mpolice(engine).label();
        if flood {
            let s = small_packets(&tb, &run, false, 2_000_000, 4.0).unwrap();
            eprintln!(
                "\n{label}, 64-byte flood: {:.0} packets/s delivered, {:.0} CPU ns/packet",
                s.delivered_pps,
                s.cpu_ns_per_packet.unwrap_or(0.0)
            );
        } else {
            let g = goodput(&tb, &run, false, 5).unwrap();
            eprintln!("\n{label}: {:.2} Gbit/s", g.bps / 1e9);
        }
        for (i, (mut perf, data)) in perfs.into_iter().enumerate() {
            perf.wait().unwrap();
            eprintln!("engine {i} ({}):", if i == 0 { "mbox" } else { "victim" });
            print_profile(&data);
        }
    }
}

/// Start `perf record` on each engine of `run` for `secs` seconds.
fn record_engines(tb: &Testbed, run: &Running, secs: u32) -> Vec<(std::process::Child, PathBuf)> {
    let mut perfs = Vec::new();
    for (i, e) in run.engines.iter().enumerate() {
        let data = tb.workdir().join(format!("perf{i}.data"));
        let pid = e.pid().unwrap().to_string();
        let perf = std::process::Command::new("perf")
            .args(["record", "-F", "999", "-g", "-o"])
            .arg(&data)
            .args(["-p", &pid, "--", "sleep", &secs.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf");
        perfs.push((perf, data));
    }
    perfs
}

/// Print kernel or user space first (the kernel forwards a packet inside the verdict
/// call that releases it), then the top symbols of all threads together.
fn print_profile(data: &Path) {
    for (sort, limit) in [("dso", "1"), ("dso,symbol", "2")] {
        let report = std::process::Command::new("perf")
            .args(["report", "--no-children", "--sort", sort, "--percent-limit"])
            .args([limit, "--stdio", "-g", "none", "-i"])
            .arg(data)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&report.stdout);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            eprintln!("  {line}");
        }
    }
}

/// The bench's short version: every kind of figure comes out, finite, for both families.
#[test]
fn line_rate_smoke() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let plan = Plan::smoke();
    let tb = Testbed::up("mpsmoke").unwrap();
    let report = plan.run(&tb).unwrap();
    let out = tb.workdir().join("bench");
    publish(&report, &plan.targets(), &out).unwrap();
    assert_eq!(report.rows.len(), 6, "{report:?}");
    for r in &report.rows {
        let g = r.goodput[0];
        assert!(g.bps > 1e6, "{r:?}");
        assert_eq!(
            g.cpu_ns_per_segment.is_some(),
            r.config != NO_QUEUE,
            "{r:?}"
        );
        if r.config != Subject::Mpolice(CAPS).label() {
            let l = r.latency[0];
            assert!(
                l.idle_p50_us > 0.0 && l.load_p99_us >= l.load_p50_us,
                "{r:?}"
            );
            assert!(r.small_packets[0].delivered_pps > 0.0, "{r:?}");
        }
    }
    let svg = std::fs::read_to_string(out.join("goodput.svg")).unwrap();
    assert_eq!(svg.matches("<rect x=\"215\" y=").count(), 6 + 1, "{svg}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("line-rate.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(6));
}
