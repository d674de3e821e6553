//! Every counter of `mpolice stats` in the OpenMetrics text format that Prometheus
//! scrapes (`[metrics] listen`; the driver serves it over HTTP at `/metrics`).
//!
//! Rendered from one stats snapshot per scrape, through the `prometheus-client` crate
//! (a collector of constant values: the workers keep their own counters). Every series
//! is labelled with the engine's `role`; per-queue ones with `queue`, per-reason ones
//! with `reason`, per-port ones with `port`. A struct's numeric fields become one family
//! each, named after the field, so a counter added to the stats reaches the endpoint
//! with no list kept here.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::stats::EngineStats;

/// The OpenMetrics text of `stats`.
pub fn render(stats: &EngineStats) -> String {
    let mut registry = Registry::with_prefix_and_labels(
        "mpolice",
        [("role".into(), stats.role.clone().into())].into_iter(),
    );
    registry.register_collector(Box::new(Snapshot(families(stats))));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// One metric family: its help, whether it only grows, and its series.
#[derive(Debug, Default)]
struct Family {
    help: String,
    counter: bool,
    series: Vec<(Labels, Num)>,
}

/// A value: a whole count, or a rate or ratio.
#[derive(Debug, Clone, Copy)]
enum Num {
    Whole(u64),
    Real(f64),
}

impl From<u64> for Num {
    fn from(n: u64) -> Num {
        Num::Whole(n)
    }
}

impl From<u32> for Num {
    fn from(n: u32) -> Num {
        Num::Whole(n.into())
    }
}

impl From<f64> for Num {
    fn from(x: f64) -> Num {
        Num::Real(x)
    }
}

/// The families of one snapshot, by name.
#[derive(Debug, Default)]
struct Families(BTreeMap<String, Family>);

impl Families {
    fn add(
        &mut self,
        name: &str,
        help: &str,
        counter: bool,
        labels: Labels,
        value: impl Into<Num>,
    ) {
        let f = self.0.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            counter,
            series: Vec::new(),
        });
        f.series.push((labels, value.into()));
    }

    /// Each numeric field of `value` as a family `{prefix}_{field}`: a counter, except
    /// the fields named in `gauges`.
    fn fields(&mut self, prefix: &str, value: &impl Serialize, gauges: &[&str], labels: &Labels) {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(value) else {
            return;
        };
        for (field, v) in map {
            let n = match (v.as_u64(), v.as_f64()) {
                (Some(n), _) => Num::Whole(n),
                (None, Some(x)) => Num::Real(x),
                _ => continue,
            };
            let gauge = gauges.contains(&field.as_str());
            let help = format!(
                "{} ({prefix}.{field} in `mpolice stats --json`)",
                what(prefix)
            );
            self.add(
                &format!("{prefix}_{field}"),
                &help,
                !gauge,
                labels.clone(),
                n,
            );
        }
    }
}

/// What a family prefix counts, for its help line.
fn what(prefix: &str) -> &'static str {
    match prefix {
        "queue" => "Packets of one queue, as its worker counted them",
        "capabilities" => "What the capability stages did",
        "kernel_queue" => "The kernel's own counters of the queue",
        "port" => "Per-port statistics of a protected port, as the client addressed it",
        "content" => "Content rules: connections the engine answered",
        "ftp" => "FTP output groups: data connections followed",
        "trace" => "Tracing: packets traced and traces dropped",
        _ => "mpolice counter",
    }
}

fn label(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

/// Every family of `stats`.
fn families(stats: &EngineStats) -> Families {
    let mut f = Families::default();
    f.add(
        "uptime_seconds",
        "Seconds since the engine started",
        false,
        vec![],
        stats.uptime_secs,
    );
    for q in &stats.queues {
        let e = &q.engine;
        let queue = vec![label("queue", e.queue)];
        let mut counts = serde_json::to_value(e).unwrap_or_default();
        // The nested parts are families of their own, below.
        if let Some(m) = counts.as_object_mut() {
            m.retain(|k, v| v.is_number() && !matches!(k.as_str(), "queue" | "precise_queue"));
        }
        f.fields("queue", &counts, &["queue_limit", "service_pps"], &queue);
        for (reason, n) in e.reasons.iter() {
            let labels = vec![label("queue", e.queue), label("reason", reason)];
            f.add(
                "queue_reason",
                "Packets dropped or passed unhandled, by reason (and worker events)",
                true,
                labels,
                n,
            );
        }
        let mut caps = serde_json::to_value(&e.caps).unwrap_or_default();
        if let Some(m) = caps.as_object_mut() {
            m.remove("rejected");
        }
        f.fields("capabilities", &caps, &["senders"], &queue);
        for (reason, n) in e.caps.rejected.iter() {
            let labels = vec![label("queue", e.queue), label("reason", reason)];
            f.add(
                "capabilities_rejected",
                "Capabilities and markers refused, by reason",
                true,
                labels,
                n,
            );
        }
        for (k, precise) in [(&q.kernel, false), (&q.precise_kernel, true)] {
            let (Some(k), num) = (
                k,
                if precise {
                    e.precise_queue
                } else {
                    Some(e.queue)
                },
            ) else {
                continue;
            };
            let labels = vec![
                label("queue", num.unwrap_or(e.queue)),
                label("precise", precise),
            ];
            f.fields("kernel_queue", k, &["waiting"], &labels);
        }
    }
    let total = stats.total().engine;
    if let Some(p) = &total.ports {
        for r in &p.rows {
            let proto = if r.proto == crate::wire::proto::TCP {
                "tcp"
            } else {
                "udp"
            };
            let labels = vec![label("proto", proto), label("port", r.port)];
            f.fields("port", &r.counts, &["half_open"], &labels);
        }
        f.add(
            "port_untracked_syns",
            "SYNs not followed: the half-open table was full",
            true,
            vec![],
            p.untracked,
        );
        f.add(
            "port_other_packets",
            "Packets of ports past the per-worker bound",
            true,
            vec![],
            p.other_ports,
        );
    }
    for l in &stats.listeners {
        let port = vec![label("port", l.port)];
        f.add(
            "listener_waiting",
            "Connections waiting in the listening socket's accept queue",
            false,
            port.clone(),
            l.waiting,
        );
        f.add(
            "listener_backlog",
            "The listening socket's backlog",
            false,
            port,
            l.backlog,
        );
    }
    for fw in &total.forwarded {
        let labels = vec![label("port", fw.port), label("to", fw.to)];
        f.add(
            "forwarded_connections",
            "New connections a forwarding rule sent from a port to another",
            true,
            labels,
            fw.connections,
        );
    }
    for g in &stats.groups {
        for (outcome, n) in [
            ("passed", g.counts.passed),
            ("refused", g.counts.refused),
            ("held", g.counts.held),
        ] {
            let labels = vec![
                label("group", g.id),
                label("what", &g.what),
                label("port", g.port),
                label("outcome", outcome),
            ];
            f.add(
                "group",
                "What a traffic group passed, refused and held back",
                true,
                labels,
                n,
            );
        }
    }
    if let Some(c) = total.splice {
        f.fields("content", &c, &["opening", "open"], &vec![]);
    }
    if let Some(c) = total.ftp {
        f.fields("ftp", &c, &[], &vec![]);
    }
    if let Some(t) = total.trace {
        f.fields("trace", &t, &[], &vec![]);
    }
    if let Some(k) = stats.kernel_trace {
        f.fields("kernel_trace", &k, &[], &vec![]);
    }
    if let Some(p) = &stats.police {
        let policy = vec![label("policy", &p.policy)];
        f.add(
            "police_slr",
            "The police's system loss rate in force (0 to 1)",
            false,
            policy,
            p.slr,
        );
        f.fields(
            "police_last_period",
            &p.totals,
            &["delivered", "active", "premium_delivered", "premium_active"],
            &vec![],
        );
    }
    for (over, n) in [
        ("source", stats.unverified_over_source),
        ("total", stats.unverified_over_total),
    ] {
        f.add("unverified_dropped", "Packets of unverified senders the kernel dropped before the queue, by the limit they were over", true, vec![label("over", over)], n);
    }
    f
}

/// The families of one snapshot, encoded at each scrape.
#[derive(Debug)]
struct Snapshot(Families);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, family) in &self.0.0 {
            let kind = if family.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, kind)?;
            for (labels, value) in &family.series {
                let series = metric.encode_family(labels)?;
                match (family.counter, *value) {
                    (true, Num::Whole(n)) => ConstCounter::new(n).encode(series)?,
                    (true, Num::Real(x)) => ConstCounter::new(x).encode(series)?,
                    // A gauge of whole numbers: past i64, the nearest float.
                    (false, Num::Whole(n)) => match i64::try_from(n) {
                        Ok(n) => ConstGauge::new(n).encode(series)?,
                        Err(_) => ConstGauge::new(n as f64).encode(series)?,
                    },
                    (false, Num::Real(x)) => ConstGauge::new(x).encode(series)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{QueueCounters, QueueStats};

    #[test]
    fn every_counter_of_a_queue_is_a_labelled_series() {
        let mut engine = QueueCounters::new(3);
        engine.received = 10;
        engine.dropped = 2;
        engine.queue_limit = 4096;
        engine.caps.issued = 5;
        engine.count_reason(crate::pipeline::Reason::Bypassed);
        let stats = EngineStats {
            role: "victim".into(),
            uptime_secs: 7,
            queues: vec![QueueStats {
                engine,
                kernel: Some(crate::stats::KernelCounters {
                    waiting: 1,
                    queue_dropped: 4,
                    ..Default::default()
                }),
                precise_kernel: None,
            }],
            ..Default::default()
        };
        let text = render(&stats);
        for line in [
            "# TYPE mpolice_queue_received counter",
            "mpolice_queue_received_total{role=\"victim\",queue=\"3\"} 10",
            "mpolice_queue_dropped_total{role=\"victim\",queue=\"3\"} 2",
            "# TYPE mpolice_queue_queue_limit gauge",
            "mpolice_queue_queue_limit{role=\"victim\",queue=\"3\"} 4096",
            "mpolice_queue_reason_total{role=\"victim\",queue=\"3\",reason=\"bypassed_mbox\"} 1",
            "mpolice_capabilities_issued_total{role=\"victim\",queue=\"3\"} 5",
            "mpolice_kernel_queue_waiting{role=\"victim\",queue=\"3\",precise=\"false\"} 1",
            "mpolice_kernel_queue_queue_dropped_total{role=\"victim\",queue=\"3\",precise=\"false\"} 4",
            "mpolice_uptime_seconds{role=\"victim\"} 7",
            "mpolice_unverified_dropped_total{role=\"victim\",over=\"source\"} 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
    }
}
