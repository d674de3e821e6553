//! `mpolice trace format`: the raw trace as the thesis presented its logs: numbered
//! lines, each stage edge indented by its nesting, and each packet's total time; or as
//! JSON, one packet per line, its stages paired into durations.
//!
//! Bad input never panics: a file that is not a trace is an error; a line that does not
//! parse (a trace cut short by a crash, a corrupt line) is skipped with a warning that
//! names it, and the rest is formatted.

use std::io::{BufRead, Write};
use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::journey::{Item, Journeys, before_engine};
use super::kernel::KernelEvent;
use super::record::{Edge, Head, MAX_MARKS, RAW_VERSION, RawHeader, RawPacket};
use super::writer::KernelLine;
use crate::wire::tcp;

/// What `format` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The thesis's columns, indented.
    Text,
    /// One JSON object per packet.
    Json,
}

/// What a formatting run saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub packets: u64,
    /// Lines of the kernel's trace.
    pub kernel_events: u64,
    /// One warning per line skipped.
    pub warnings: Vec<String>,
}

/// Read a raw trace from `input` and write it to `out` as `how` says.
pub fn format(input: impl BufRead, out: &mut impl Write, how: Output) -> Result<Summary> {
    let mut lines = Lines { input, n: 0 };
    let header = read_header(&mut lines)?;
    let mut s = Summary::default();
    let mut totals = Vec::new();
    let mut line_no = 0u64;
    let mut named = KernelNames::default();
    if how == Output::Text {
        writeln!(
            out,
            "# mpolice trace: role {}, started {} UTC; times are UTC",
            header.role,
            clock_time(header.started_unix_ns)
        )?;
    }
    // With the kernel's events in the trace, each packet waits for its own.
    let mut journeys = header.kernel.then(Journeys::default);
    let mut write = |out: &mut _, items: Vec<Item>, line_no: &mut u64| -> Result<()> {
        for item in items {
            match item {
                Item::Packet(p, events) => {
                    totals.push(total_ns(&p));
                    write_packet(out, &p, &events, how, line_no)?;
                }
                Item::Loose(e) => write_kernel(out, &e, how, 0, line_no)?,
            }
        }
        Ok(())
    };
    while let Some((n, line, whole)) = lines.next()? {
        if line.trim().is_empty() {
            continue;
        }
        let p: RawPacket = match serde_json::from_str(&line) {
            Ok(p) => p,
            // The kernel's side of the journey (`trace.kernel`).
            Err(_) if line.starts_with("{\"kernel\"") => {
                match serde_json::from_str::<KernelLine>(&line) {
                    Ok(mut k) => {
                        s.kernel_events += 1;
                        named.name(&mut k.kernel);
                        let items = match journeys.as_mut() {
                            Some(j) => j.kernel(k.kernel),
                            None => vec![Item::Loose(k.kernel)],
                        };
                        write(out, items, &mut line_no)?;
                    }
                    Err(e) => s
                        .warnings
                        .push(format!("line {n}: skipped, not a kernel event: {e}")),
                }
                continue;
            }
            Err(e) => {
                s.warnings.push(if whole {
                    format!("line {n}: skipped, not a traced packet: {e}")
                } else {
                    format!("line {n}: skipped, cut short (was the engine stopped mid-write?)")
                });
                continue;
            }
        };
        if p.marks.len() > MAX_MARKS {
            // No engine writes more; indenting a forged mountain of them could not end.
            s.warnings.push(format!(
                "line {n}: skipped, {} stage edges where a trace holds {MAX_MARKS}",
                p.marks.len()
            ));
            continue;
        }
        s.packets += 1;
        let items = match journeys.as_mut() {
            Some(j) => j.packet(p),
            None => vec![Item::Packet(p, Vec::new())],
        };
        write(out, items, &mut line_no)?;
    }
    if let Some(j) = journeys {
        write(out, j.finish(), &mut line_no)?;
    }
    if how == Output::Text {
        write_summary(out, &mut totals)?;
    }
    Ok(s)
}

/// The input's lines, numbered from 1, read as bytes so binary input cannot fail them.
struct Lines<R> {
    input: R,
    n: u64,
}

impl<R: BufRead> Lines<R> {
    /// The next line, its number, and whether it ended in a newline.
    fn next(&mut self) -> Result<Option<(u64, String, bool)>> {
        let mut buf = Vec::new();
        if self.input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        self.n += 1;
        let whole = buf.last() == Some(&b'\n');
        Ok(Some((
            self.n,
            String::from_utf8_lossy(&buf).into_owned(),
            whole,
        )))
    }
}

fn read_header<R: BufRead>(lines: &mut Lines<R>) -> Result<RawHeader> {
    let Some((_, line, _)) = lines.next()? else {
        bail!("empty input: not an mpolice trace");
    };
    let header: RawHeader = serde_json::from_str(&line).with_context(|| {
        let shown: String = line.chars().take(60).collect();
        format!("line 1: not an mpolice trace header: {shown:?}")
    })?;
    if header.mpolice_trace != RAW_VERSION {
        bail!(
            "trace format {} is not the one this mpolice reads ({RAW_VERSION})",
            header.mpolice_trace
        );
    }
    Ok(header)
}

/// From the packet's first edge to its last (0 with fewer than two).
fn total_ns(p: &RawPacket) -> u64 {
    match (p.marks.first(), p.marks.last()) {
        (Some(a), Some(b)) => b.2.saturating_sub(a.2),
        _ => 0,
    }
}

/// One packet as `how` says: in JSON, one object; as text, its kernel events before the
/// engine, its edges, its kernel events after the engine, numbered on from `line_no`,
/// then its total time.
fn write_packet(
    out: &mut impl Write,
    p: &RawPacket,
    events: &[KernelEvent],
    how: Output,
    line_no: &mut u64,
) -> Result<()> {
    if how == Output::Json {
        serde_json::to_writer(&mut *out, &JsonPacket::of(p, events))?;
        writeln!(out)?;
        return Ok(());
    }
    let ends = endpoints(p.head.as_ref());
    let tail = tail_columns(p.head.as_ref());
    let (before, after) = events.split_at(before_engine(p, events));
    for e in before {
        write_kernel(out, e, how, 0, line_no)?;
    }
    let mut depth = 0usize;
    for (stage, edge, t) in &p.marks {
        if *edge == Edge::End {
            depth = depth.saturating_sub(1);
        }
        *line_no += 1;
        writeln!(
            out,
            "{line_no} {:indent$}{} {ends} {stage} {}{tail}",
            "",
            clock_time(*t),
            edge.letter(),
            indent = depth * 2
        )?;
        if *edge == Edge::Begin {
            depth += 1;
        }
    }
    for e in after {
        write_kernel(out, e, how, 0, line_no)?;
    }
    let lost = if p.lost_marks > 0 {
        format!(", {} edges not kept", p.lost_marks)
    } else {
        String::new()
    };
    writeln!(
        out,
        "Time : {:.3} µs  (queue {} packet {} hook {}: {}, {} -> {} bytes{lost})",
        total_ns(p) as f64 / 1e3,
        p.queue,
        p.id,
        p.hook,
        p.verdict,
        p.len_in,
        p.len_out
    )?;
    Ok(())
}

/// The kernel sends a packet's headers with its first event in each chain only: the
/// others are named by the trace id they share.
#[derive(Default)]
struct KernelNames(std::collections::HashMap<u32, Head>);

impl KernelNames {
    /// Packets the map remembers at most (a long trace forgets the oldest at once).
    const MAX: usize = 65_536;

    fn name(&mut self, e: &mut KernelEvent) {
        match e.head {
            Some(h) => {
                if self.0.len() >= Self::MAX {
                    self.0.clear();
                }
                self.0.insert(e.id, h);
            }
            None => e.head = self.0.get(&e.id).copied(),
        }
    }
}

/// One event of the kernel's trace: the rule a marked packet met. As text, in the
/// packets' columns with the stage column naming the table, chain and rule, indented
/// to `depth`.
fn write_kernel(
    out: &mut impl Write,
    k: &KernelEvent,
    how: Output,
    depth: usize,
    line_no: &mut u64,
) -> Result<()> {
    if how == Output::Json {
        serde_json::to_writer(&mut *out, &KernelLine { kernel: k.clone() })?;
        writeln!(out)?;
        return Ok(());
    }
    *line_no += 1;
    let handle = k.handle.map(|h| format!(" handle {h}")).unwrap_or_default();
    let verdict = k
        .verdict
        .as_ref()
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    let dev = |name: &str, i: Option<u32>| i.map(|i| format!(" {name} {i}")).unwrap_or_default();
    writeln!(
        out,
        "{line_no} {:indent$}{} {} nft {} {} {} {}{handle}{verdict}{}{} -{}",
        "",
        clock_time(k.t_ns),
        endpoints(k.head.as_ref()),
        k.family,
        k.table,
        k.chain,
        k.kind,
        dev("iif", k.iif),
        dev("oif", k.oif),
        tail_columns(k.head.as_ref()),
        indent = depth * 2
    )?;
    Ok(())
}

/// `src:port dst:port`, or `- -` for a packet that did not parse.
fn endpoints(h: Option<&Head>) -> String {
    let end = |a: IpAddr, port: u16| match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    match h {
        Some(h) => format!("{} {}", end(h.src, h.sport), end(h.dst, h.dport)),
        None => "- -".into(),
    }
}

/// The thesis's columns after B/E: TCP flags (S, F, P or `!`), sequence, `ack` and
/// acknowledgment (TCP only); then the IP id (`-` over IPv6) and the protocol.
fn tail_columns(h: Option<&Head>) -> String {
    let Some(h) = h else {
        return String::new();
    };
    let mut s = String::new();
    if let (Some(f), Some(seq), Some(ack)) = (h.flags, h.seq, h.ack) {
        s += &format!(" {} {seq} ack {ack}", flag_letters(f));
    }
    let id = h.ip_id.map_or_else(|| "-".to_string(), |i| i.to_string());
    s += &format!(" id {id} {}", h.proto_name());
    s
}

/// S, F and P as set, or `!` when none is.
fn flag_letters(f: u8) -> String {
    let s: String = [(tcp::SYN, 'S'), (tcp::FIN, 'F'), (tcp::PSH, 'P')]
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, c)| c)
        .collect();
    if s.is_empty() { "!".into() } else { s }
}

/// HH:MM:SS.nnnnnnnnn of a Unix time in nanoseconds, in UTC.
pub(super) fn clock_time(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        unix_ns % 1_000_000_000
    )
}

/// The packets' count and their time from receive to verdict: p50, p99, max.
fn write_summary(out: &mut impl Write, totals: &mut [u64]) -> Result<()> {
    totals.sort_unstable();
    let at = |q: f64| {
        let i = ((totals.len() as f64 * q).ceil() as usize).clamp(1, totals.len()) - 1;
        totals[i] as f64 / 1e3
    };
    if totals.is_empty() {
        writeln!(out, "# 0 packets")?;
    } else {
        writeln!(
            out,
            "# {} packets; time from receive to verdict: p50 {:.3} µs, p99 {:.3} µs, max {:.3} µs",
            totals.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )?;
    }
    Ok(())
}

/// A packet as `--json` writes it.
#[derive(Debug, Serialize)]
struct JsonPacket<'a> {
    queue: u16,
    id: u32,
    hook: u8,
    verdict: &'a str,
    len_in: u32,
    len_out: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<&'a Head>,
    start_unix_ns: u64,
    total_ns: u64,
    stages: Vec<JsonStage<'a>>,
    lost_marks: u16,
    /// The kernel's events joined to the packet, in the kernel's order; the first
    /// `kernel_before` of them before the engine held it.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    kernel: &'a [KernelEvent],
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_before: Option<usize>,
}

/// One stage, its B and E paired.
#[derive(Debug, Serialize)]
struct JsonStage<'a> {
    stage: &'a str,
    depth: usize,
    begin_ns: u64,
    /// None: the trace has no E for this B.
    ns: Option<u64>,
}

impl<'a> JsonPacket<'a> {
    fn of(p: &'a RawPacket, kernel: &'a [KernelEvent]) -> JsonPacket<'a> {
        let mut stages: Vec<JsonStage<'a>> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        for (stage, edge, t) in &p.marks {
            match edge {
                Edge::Begin => {
                    open.push(stages.len());
                    stages.push(JsonStage {
                        stage,
                        depth: open.len() - 1,
                        begin_ns: *t,
                        ns: None,
                    });
                }
                Edge::End => {
                    // The innermost open stage of that name; an E with no B is ignored.
                    if let Some(k) = open.iter().rposition(|&i| stages[i].stage == stage) {
                        let i = open.remove(k);
                        stages[i].ns = Some(t.saturating_sub(stages[i].begin_ns));
                    }
                }
            }
        }
        JsonPacket {
            queue: p.queue,
            id: p.id,
            hook: p.hook,
            verdict: &p.verdict,
            len_in: p.len_in,
            len_out: p.len_out,
            head: p.head.as_ref(),
            start_unix_ns: p.marks.first().map_or(0, |m| m.2),
            total_ns: total_ns(p),
            stages,
            lost_marks: p.lost_marks,
            kernel,
            kernel_before: (!kernel.is_empty()).then(|| before_engine(p, kernel)),
        }
    }
}
