//! The bench's results: medians with min and max, the tables it prints with their ratios
//! to the C floor and to no queue, the targets of issue 14, a JSON file and an SVG plot.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::measure::{Goodput, SmallPackets};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Median, min and max of a run's figures (None without figures).
pub fn stat(v: impl IntoIterator<Item = f64>) -> Option<Stat> {
    let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Some(Stat {
        median: *v.get(v.len() / 2)?,
        min: *v.first()?,
        max: *v.last()?,
    })
}

/// Request-response round trips of one run, in µs: idle, and under a load at half the
/// subject's goodput.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub idle_p50_us: f64,
    pub idle_p99_us: f64,
    pub load_p50_us: f64,
    pub load_p99_us: f64,
}

/// The p50 and p99 of round-trip times, in µs.
pub fn percentiles(mut rtts: Vec<Duration>) -> (f64, f64) {
    rtts.sort();
    let at = |q: f64| {
        let i = ((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1));
        rtts.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    };
    (at(0.50), at(0.99))
}

/// Everything measured for one configuration in one address family.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub config: String,
    pub family: &'static str,
    pub goodput: Vec<Goodput>,
    pub latency: Vec<Latency>,
    pub small_packets: Vec<SmallPackets>,
}

impl Row {
    fn gbps(&self) -> Option<Stat> {
        stat(self.goodput.iter().map(|g| g.bps / 1e9))
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub secs: u32,
    pub reps: u32,
    pub rows: Vec<Row>,
}

pub const NO_QUEUE: &str = "no queue";
pub const C_FLOOR: &str = "C per-packet floor";
pub const C_HYBRID: &str = "C hybrid 1/64";

impl Report {
    fn row(&self, config: &str, family: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.config == config && r.family == family)
    }

    /// The median of one figure of a reference row, for ratios.
    fn reference(&self, config: &str, family: &str, f: impl Fn(&Row) -> Option<Stat>) -> f64 {
        self.row(config, family)
            .and_then(f)
            .map_or(f64::NAN, |s| s.median)
    }

    /// All tables and the targets, as the bench prints them.
    pub fn text(&self, targets: &[Target]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "machine: {}\nmedian (min..max) of {} interleaved runs of {} s each\n",
            self.machine, self.reps, self.secs
        );
        self.goodput_table(&mut s);
        self.latency_table(&mut s);
        self.small_table(&mut s);
        let _ = writeln!(s, "\ntargets (issue 14), this run:");
        for t in targets {
            let _ = writeln!(s, "  {}", t.line(self));
        }
        s
    }

    fn goodput_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "TCP goodput, two senders (one stream each) client -> victim through the mbox:\n\
             {:<30} {:<5} {:>24} {:>8} {:>8} {:>10} {:>6}",
            "config", "", "Gbit/s", "x floor", "x no q", "CPU ns/seg", "drops"
        );
        for r in &self.rows {
            let Some(g) = r.gbps() else { continue };
            let floor = self.reference(C_FLOOR, r.family, Row::gbps);
            let none = self.reference(NO_QUEUE, r.family, Row::gbps);
            let cpu = stat(r.goodput.iter().filter_map(|g| g.cpu_ns_per_segment))
                .map_or("-".into(), |c| format!("{:.0}", c.median));
            let drops: u64 = r.goodput.iter().map(|g| g.queue_drops).sum();
            let _ = writeln!(
                s,
                "{:<30} {:<5} {:>7.2} ({:>6.2}..{:>6.2}) {:>8.2} {:>8.2} {:>10} {:>6}",
                r.config,
                r.family,
                g.median,
                g.min,
                g.max,
                g.median / floor,
                g.median / none,
                cpu,
                drops
            );
        }
    }

    fn latency_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\nRequest-response latency, 64 bytes over TCP (Nagle off), µs; load = half the \
             config's goodput:\n{:<30} {:<5} {:>9} {:>9} {:>9} {:>9} {:>12}",
            "config", "", "idle p50", "idle p99", "load p50", "load p99", "added p99"
        );
        for r in self.rows.iter().filter(|r| !r.latency.is_empty()) {
            let m = |f: fn(&Latency) -> f64| {
                stat(r.latency.iter().map(f)).map_or(f64::NAN, |x| x.median)
            };
            let base = self.reference(NO_QUEUE, r.family, |r| {
                stat(r.latency.iter().map(|l| l.load_p99_us))
            });
            let _ = writeln!(
                s,
                "{:<30} {:<5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>12.1}",
                r.config,
                r.family,
                m(|l| l.idle_p50_us),
                m(|l| l.idle_p99_us),
                m(|l| l.load_p50_us),
                m(|l| l.load_p99_us),
                m(|l| l.load_p99_us) - base
            );
        }
    }

    fn small_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n64-byte UDP packets, one unpaced sender, packets per second:\n\
             {:<30} {:<5} {:>9} {:>24} {:>8} {:>8} {:>9} {:>9} {:>10}",
            "config",
            "",
            "offered",
            "delivered",
            "x floor",
            "x no q",
            "lost",
            "q.drops",
            "CPU ns/pkt"
        );
        for r in self.rows.iter().filter(|r| !r.small_packets.is_empty()) {
            let Some(d) = delivered(r) else { continue };
            let offered =
                stat(r.small_packets.iter().map(|p| p.sent_pps)).map_or(f64::NAN, |x| x.median);
            let floor = self.reference(C_FLOOR, r.family, delivered);
            let none = self.reference(NO_QUEUE, r.family, delivered);
            let lost: u64 = r.small_packets.iter().map(|p| p.lost).sum();
            let drops: u64 = r.small_packets.iter().map(|p| p.queue_drops).sum();
            let cpu = stat(r.small_packets.iter().filter_map(|p| p.cpu_ns_per_packet))
                .map_or("-".into(), |c| format!("{:.0}", c.median));
            let _ = writeln!(
                s,
                "{:<30} {:<5} {:>9.0} {:>8.0} ({:>6.0}..{:>6.0}) {:>8.2} {:>8.2} {:>9} {:>9} {:>10}",
                r.config,
                r.family,
                offered,
                d.median,
                d.min,
                d.max,
                d.median / floor,
                d.median / none,
                lost,
                drops,
                cpu
            );
        }
    }

    /// A bar chart of the goodput medians (IPv4 and IPv6 side by side, min..max as
    /// whiskers), as standalone SVG.
    pub fn svg(&self) -> String {
        let mut configs: Vec<&str> = Vec::new();
        for r in &self.rows {
            if r.gbps().is_some() && !configs.contains(&r.config.as_str()) {
                configs.push(&r.config);
            }
        }
        let top = self
            .rows
            .iter()
            .filter_map(|r| r.gbps().map(|g| g.max))
            .fold(1.0, f64::max);
        let scale_max = (top / 5.0).ceil() * 5.0;
        let (left, width, bar, gap) = (215.0, 520.0, 9.0, 8.0);
        let height = 40.0 + configs.len() as f64 * (2.0 * bar + gap) + 40.0;
        let x = |g: f64| left + g / scale_max * width;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"16\" font-size=\"13\">TCP goodput through the mbox, Gbit/s \
             (median, min..max of {} runs of {} s)</text>",
            left + width + 30.0,
            self.reps,
            self.secs
        );
        let mut tick = 0.0;
        while tick <= scale_max {
            let _ = writeln!(
                s,
                "<line x1=\"{0}\" x2=\"{0}\" y1=\"28\" y2=\"{1}\" stroke=\"#ddd\"/>\
                 <text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{tick}</text>",
                x(tick),
                height - 30.0,
                height - 16.0
            );
            tick += 5.0;
        }
        for (i, config) in configs.iter().enumerate() {
            let y0 = 34.0 + i as f64 * (2.0 * bar + gap);
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{config}</text>",
                left - 6.0,
                y0 + bar + 4.0
            );
            for (j, (family, colour)) in [("IPv4", "#3b6fb6"), ("IPv6", "#e08a2c")]
                .iter()
                .enumerate()
            {
                let Some(g) = self.row(config, family).and_then(Row::gbps) else {
                    continue;
                };
                let y = y0 + j as f64 * bar;
                let (w, h, mid) = (x(g.median) - left, bar - 1.0, y + (bar - 1.0) / 2.0);
                let (lo, hi) = (x(g.min), x(g.max));
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{h}\" fill=\"{colour}\"/>\
                     <line x1=\"{lo:.1}\" x2=\"{hi:.1}\" y1=\"{mid}\" y2=\"{mid}\" stroke=\"black\"/>"
                );
            }
        }
        let _ = writeln!(
            s,
            "<rect x=\"{left}\" y=\"{0}\" width=\"10\" height=\"8\" fill=\"#3b6fb6\"/>\
             <text x=\"{1}\" y=\"{2}\">IPv4</text>\
             <rect x=\"{3}\" y=\"{0}\" width=\"10\" height=\"8\" fill=\"#e08a2c\"/>\
             <text x=\"{4}\" y=\"{2}\">IPv6</text>\n</svg>",
            height - 10.0,
            left + 14.0,
            height - 2.0,
            left + 60.0,
            left + 74.0
        );
        s
    }
}

fn delivered(r: &Row) -> Option<Stat> {
    stat(r.small_packets.iter().map(|p| p.delivered_pps))
}

/// One target of issue 14: a figure of a row, at least (or at most) a bound, possibly
/// relative to a reference row of the same family.
pub struct Target {
    pub what: &'static str,
    pub config: String,
    pub family: &'static str,
    pub measure: Measure,
    pub bound: f64,
}

pub enum Measure {
    /// Goodput median over that of a reference config: at least the bound.
    GoodputOver(&'static str),
    /// Delivered small-packet rate over that of a reference: at least the bound.
    SmallPacketsOver(&'static str),
    /// p99 at half load minus that of no queue, µs: at most the bound.
    AddedP99,
    /// Packets dropped at the kernel's queues in every goodput run: at most the bound.
    QueueDrops,
}

impl Target {
    fn value(&self, r: &Report) -> f64 {
        let Some(row) = r.row(&self.config, self.family) else {
            return f64::NAN;
        };
        let med = |s: Option<Stat>| s.map_or(f64::NAN, |s| s.median);
        match self.measure {
            Measure::GoodputOver(reference) => {
                med(row.gbps()) / r.reference(reference, self.family, Row::gbps)
            }
            Measure::SmallPacketsOver(reference) => {
                med(delivered(row)) / r.reference(reference, self.family, delivered)
            }
            Measure::AddedP99 => {
                let p99 = |row: &Row| stat(row.latency.iter().map(|l| l.load_p99_us));
                med(p99(row)) - r.reference(NO_QUEUE, self.family, p99)
            }
            Measure::QueueDrops => row.goodput.iter().map(|g| g.queue_drops).sum::<u64>() as f64,
        }
    }

    fn line(&self, r: &Report) -> String {
        let v = self.value(r);
        let (met, op) = match self.measure {
            Measure::AddedP99 | Measure::QueueDrops => (v <= self.bound, "<="),
            _ => (v >= self.bound, ">="),
        };
        let verdict = if v.is_nan() {
            "not measured"
        } else if met {
            "met"
        } else {
            "MISSED"
        };
        format!(
            "{:<44} {:<30} {} {v:>8.2} (want {op} {}): {verdict}",
            self.what, self.config, self.family, self.bound
        )
    }
}
