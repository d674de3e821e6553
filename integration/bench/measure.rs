//! The three measurements of one run: TCP goodput with the CPU time it cost, the
//! request-response latency (idle or under a paced load), and the small-packet rate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mpolice::testbed::{
    CLIENT_V4, CLIENT_V6, Host, Testbed, UdpSink, VICTIM_V4, VICTIM_V6, in_netns, iperf3_tcp_from,
    wait_listening,
};
use serde::Serialize;

use super::common::bin;
use super::subject::{ECHO_PORT, FLOOD_PORT, LOAD_PORTS, Running};

/// The second client address each goodput run sends from, so two flows can meet two
/// queues (the rules spread clients by address).
pub const SECOND_V4: &str = "198.18.1.3";
pub const SECOND_V6: &str = "2001:2:0:1::3";

/// Give the client its second address in each family.
pub fn add_second_client(tb: &Testbed) -> Result<()> {
    let c0 = tb.link("c0");
    for (addr, extra) in [
        (format!("{SECOND_V4}/24"), None),
        (format!("{SECOND_V6}/64"), Some("nodad")),
    ] {
        let mut argv = vec!["ip", "addr", "add", &addr, "dev", &c0];
        argv.extend(extra);
        tb.exec(Host::Client, &argv)?;
    }
    Ok(())
}

fn victim(v6: bool) -> &'static str {
    if v6 { VICTIM_V6 } else { VICTIM_V4 }
}

/// One goodput run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Goodput {
    /// Both senders together, bits per second received.
    pub bps: f64,
    /// CPU time of the subject's processes per full-sized data segment carried
    /// (bytes / MSS); None for kernel forwarding.
    pub cpu_ns_per_segment: Option<f64>,
    /// Packets the kernel dropped at the subject's queues during the run.
    pub queue_drops: u64,
}

/// TCP goodput of two iperf3 senders (one per client address, one stream each) for
/// `secs`, through whatever `run` is.
pub fn goodput(tb: &Testbed, run: &Running, v6: bool, secs: u32) -> Result<Goodput> {
    let (sources, mss) = if v6 {
        ([CLIENT_V6, SECOND_V6], 1428.0)
    } else {
        ([CLIENT_V4, SECOND_V4], 1448.0)
    };
    let drops = run.queue_drops()?;
    let cpu = run.cpu_ns()?;
    let bps: f64 = iperf3_tcp_from(tb, victim(v6), &sources, secs)?
        .iter()
        .sum();
    let cpu = run.cpu_ns()? - cpu;
    let segments = bps * f64::from(secs) / 8.0 / mss;
    let measured = run.is_queued() && segments > 0.0;
    Ok(Goodput {
        bps,
        cpu_ns_per_segment: measured.then(|| cpu as f64 / segments),
        queue_drops: run.queue_drops()? - drops,
    })
}

/// Round-trip times of `rounds` 64-byte requests answered by an echo server on the
/// victim, over one TCP connection with Nagle off, after 50 unmeasured rounds.
pub fn round_trips(tb: &Testbed, v6: bool, rounds: usize) -> Result<Vec<Duration>> {
    let to: SocketAddr = if v6 {
        format!("[{VICTIM_V6}]:{ECHO_PORT}")
    } else {
        format!("{VICTIM_V4}:{ECHO_PORT}")
    }
    .parse()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let server = s.spawn(move || in_netns(tb, Host::Victim, || echo_once(ready_tx)));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("echo server did not start")?;
        let rtts = in_netns(tb, Host::Client, || {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0x5au8; 64];
            let mut rtts = Vec::with_capacity(rounds);
            for i in 0..rounds + 50 {
                let t = Instant::now();
                c.write_all(&buf)?;
                c.read_exact(&mut buf)?;
                if i >= 50 {
                    rtts.push(t.elapsed());
                }
            }
            Ok(rtts)
        });
        let served = server
            .join()
            .map_err(|_| anyhow::anyhow!("echo server panicked"))?;
        let rtts = rtts?;
        served?;
        Ok(rtts)
    })
}

/// Accept one connection on the echo port (waiting 10 s at most) and echo 64-byte
/// messages until the client closes it.
fn echo_once(ready: std::sync::mpsc::Sender<()>) -> Result<()> {
    let l = TcpListener::bind(("::", ECHO_PORT))?;
    l.set_nonblocking(true)?;
    let _ = ready.send(());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match l.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no client came to the echo server");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    c.set_nonblocking(false)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 64];
    loop {
        match c.read_exact(&mut buf) {
            Ok(()) => c.write_all(&buf)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Paced iperf3 streams from client to victim, one from each client address as in the
/// goodput runs (so they meet the queues the goodput did), in the background for `secs`
/// at most; dropping it stops every end.
pub struct Load {
    procs: Vec<Child>,
}

impl Load {
    /// `bps` in all, shared evenly by the streams.
    pub fn start(tb: &Testbed, v6: bool, bps: f64, secs: u32) -> Result<Load> {
        let sources = if v6 {
            [CLIENT_V6, SECOND_V6]
        } else {
            [CLIENT_V4, SECOND_V4]
        };
        let mut load = Load { procs: Vec::new() };
        let rate = format!("{}", (bps / sources.len() as f64).max(1e6) as u64);
        let (t, limit) = (secs.to_string(), (secs + 10).to_string());
        for (port, from) in LOAD_PORTS.iter().zip(sources) {
            let port_arg = port.to_string();
            let server = tb
                .command(Host::Victim, &["iperf3", "-s", "-1", "-p", &port_arg])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start iperf3 server")?;
            load.procs.push(server);
            wait_listening(tb, Host::Victim, *port)?;
            let client = tb
                .command(
                    Host::Client,
                    &[
                        "timeout",
                        &limit,
                        "iperf3",
                        "-c",
                        victim(v6),
                        "-p",
                        &port_arg,
                        "-B",
                        from,
                        "-b",
                        &rate,
                        "-t",
                        &t,
                    ],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start iperf3 client")?;
            load.procs.push(client);
        }
        // Let the streams reach their pace before anything is measured against them.
        std::thread::sleep(Duration::from_secs(1));
        Ok(load)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One small-packet run: a flood of 64-byte IP packets from one client.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SmallPackets {
    /// Packets per second the flood offered.
    pub sent_pps: f64,
    /// Packets per second delivered to the victim's socket.
    pub delivered_pps: f64,
    /// Packets sent and never delivered.
    pub lost: u64,
    /// Of those, dropped by the kernel at the subject's queues.
    pub queue_drops: u64,
    /// CPU time of the subject's processes per packet sent; None for kernel forwarding.
    pub cpu_ns_per_packet: Option<f64>,
}

/// Flood the victim's UDP port with 64-byte IP packets (`mpolice flood`, unpaced) until
/// `packets` are sent or `secs` pass; count what arrives.
pub fn small_packets(
    tb: &Testbed,
    run: &Running,
    v6: bool,
    packets: u64,
    secs: f64,
) -> Result<SmallPackets> {
    // 64 bytes of IP: 20 + 8 + 36 over IPv4, 40 + 8 + 16 over IPv6.
    let size = if v6 { "16" } else { "36" };
    let drops = run.queue_drops()?;
    let sink = UdpSink::start(tb, Host::Victim, FLOOD_PORT, Duration::from_secs(1))?;
    let cpu = run.cpu_ns()?;
    let bin = bin();
    let out = tb.exec(
        Host::Client,
        &[
            bin.to_str().context("path")?,
            "flood",
            "udp",
            "--to",
            victim(v6),
            "--port",
            &FLOOD_PORT.to_string(),
            "--size",
            size,
            "--packets",
            &packets.to_string(),
            "--seconds",
            &secs.to_string(),
        ],
    )?;
    let delivered = sink.count()?;
    let cpu = run.cpu_ns()? - cpu;
    let (sent, took) = flood_summary(&out).with_context(|| format!("flood said: {out}"))?;
    Ok(SmallPackets {
        sent_pps: sent as f64 / took,
        delivered_pps: delivered as f64 / took,
        lost: sent.saturating_sub(delivered),
        queue_drops: run.queue_drops()? - drops,
        cpu_ns_per_packet: (run.is_queued() && sent > 0).then(|| cpu as f64 / sent as f64),
    })
}

/// Packets sent and seconds taken, from `mpolice flood`'s summary line
/// ("... sent N packets of ... in S s ...").
fn flood_summary(out: &str) -> Option<(u64, f64)> {
    let word_after = |w: &str| {
        let mut it = out.split_whitespace();
        it.find(|x| *x == w)?;
        it.next()
    };
    let sent = word_after("sent")?.parse().ok()?;
    let secs: f64 = word_after("in")?.parse().ok()?;
    (secs > 0.0).then_some((sent, secs))
}

#[test]
fn reads_the_flood_summary() {
    let line = "flood udp to 198.18.2.2:9000: sent 1000 packets of 64 bytes from 1 source \
                in 0.50 s (stopped by packets): 2000 packets/s, 1.0 Mbit/s";
    assert_eq!(flood_summary(line), Some((1000, 0.5)));
    assert_eq!(flood_summary("flood failed"), None);
}
