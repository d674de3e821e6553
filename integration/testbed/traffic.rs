//! Real traffic in the testbed: an HTTP server and curl, iperf3, and a bounded UDP burst.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Host, Testbed};

/// Write `bytes` random bytes to `path`.
pub fn random_file(path: &Path, bytes: usize) -> Result<()> {
    let mut src = File::open("/dev/urandom")?;
    let mut out = File::create(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        src.read_exact(&mut chunk[..n])?;
        out.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}

/// A random file served over HTTP from the victim on port 8080.
pub struct ServedFile {
    _server: HttpServer,
    /// The file's sha256, which every download must reproduce.
    pub sha256: String,
}

impl ServedFile {
    /// Write `bytes` random bytes and serve them with `python3 -m http.server`.
    pub fn start(tb: &Testbed, bytes: usize) -> Result<ServedFile> {
        let www = tb.workdir().join("www");
        std::fs::create_dir_all(&www)?;
        let file = www.join("f.bin");
        random_file(&file, bytes)?;
        let sha256 = sha256(&file)?;
        let _server = HttpServer::start(tb, Host::Victim, &www, 8080)?;
        Ok(ServedFile { _server, sha256 })
    }

    /// Download it with curl from the client through `addr` (a host or `[v6]`); fail
    /// unless the copy is identical. Return the seconds the download took.
    pub fn fetch(&self, tb: &Testbed, addr: &str) -> Result<f64> {
        self.fetch_from(tb, Host::Client, None, addr)
    }

    /// The same from `host` (the victim itself: a local health check), from its local
    /// address `source` if given (one client host acting as several clients).
    pub fn fetch_from(
        &self,
        tb: &Testbed,
        host: Host,
        source: Option<&str>,
        addr: &str,
    ) -> Result<f64> {
        self.fetch_with(tb, (host, source, addr), &[])
    }

    /// Download it from the client at no more than `rate` (curl's `--limit-rate`, e.g.
    /// `20M`), so it lasts a while.
    pub fn fetch_at(&self, tb: &Testbed, addr: &str, rate: &str) -> Result<f64> {
        self.fetch_with(tb, (Host::Client, None, addr), &["--limit-rate", rate])
    }

    fn fetch_with(
        &self,
        tb: &Testbed,
        (host, source, addr): (Host, Option<&str>, &str),
        extra: &[&str],
    ) -> Result<f64> {
        let got = tb
            .workdir()
            .join(format!("got-{}.bin", source.unwrap_or("any")));
        let out = got.to_str().context("path is not UTF-8")?;
        let url = format!("http://{addr}:8080/f.bin");
        let mut args = vec!["-o", out, &url];
        if let Some(source) = source {
            args.extend(["--interface", source]);
        }
        args.extend_from_slice(extra);
        let t = Instant::now();
        curl(tb, host, &args)?;
        let secs = t.elapsed().as_secs_f64();
        if sha256(&got)? != self.sha256 {
            bail!("the download through {addr} differs from the served file");
        }
        Ok(secs)
    }
}

/// Upload `bytes` random bytes with curl from the client to the server at `addr` (a
/// host or `[v6]`, port 8080); fail unless the server received exactly those bytes.
pub fn upload(tb: &Testbed, addr: &str, bytes: usize) -> Result<f64> {
    let file = tb.workdir().join("upload.bin");
    random_file(&file, bytes)?;
    let sent = sha256(&file)?;
    let path = file.to_str().context("path is not UTF-8")?;
    let url = format!("http://{addr}:8080/upload.bin");
    let t = Instant::now();
    let got = curl(tb, Host::Client, &["-T", path, &url])?;
    if got.trim() != sent {
        bail!("the upload through {addr} reached the server as {got:?}, sent {sent}");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The sha256 of a file, as hex (coreutils' sha256sum).
pub fn sha256(path: &Path) -> Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(h) if out.status.success() => Ok(h.to_string()),
        _ => bail!(
            "sha256sum {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Python's `http.server` serving files (GET) that also takes uploads (PUT) and answers
/// each with the sha256 of the body it received, so an upload can be checked end to end.
const HTTP_SERVER: &str = r#"
import functools, hashlib, http.server, socket, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_PUT(self):
        left, digest = int(self.headers["Content-Length"]), hashlib.sha256()
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        body = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
handler = functools.partial(Handler, directory=sys.argv[2])
Server(("::", int(sys.argv[1])), handler).serve_forever()
"#;

/// Python's `http.server` in a namespace, serving one directory and taking uploads;
/// killed on drop.
pub struct HttpServer {
    child: Child,
}

impl HttpServer {
    /// Serve `dir` on `port` (IPv4 and IPv6) in the host's namespace.
    pub fn start(tb: &Testbed, host: Host, dir: &Path, port: u16) -> Result<HttpServer> {
        let dir = dir.to_str().context("directory is not UTF-8")?;
        let port_s = port.to_string();
        let child = tb
            .command(host, &["python3", "-c", HTTP_SERVER, &port_s, dir])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start python3 -m http.server")?;
        let server = HttpServer { child };
        wait_listening(tb, host, port)?;
        Ok(server)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until a TCP socket listens on `port` inside the host's namespace.
pub fn wait_listening(tb: &Testbed, host: Host, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ss = tb.exec(host, &["ss", "-Htln", &format!("sport = :{port}")])?;
        if !ss.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} in {}", tb.ns(host))
}

/// Run curl in a host's namespace: quiet but for errors, failing on HTTP errors, bounded
/// in time; return what it printed.
fn curl(tb: &Testbed, host: Host, args: &[&str]) -> Result<String> {
    let mut argv = vec!["curl", "-sS", "-g", "--fail", "--max-time", "120"];
    argv.extend_from_slice(args);
    tb.exec(host, &argv)
}

/// iperf3 TCP from several client addresses at once, each to its own server port
/// (5201, 5202, ...) on `server`, for `secs` seconds; the goodput of each.
pub fn iperf3_tcp_from(
    tb: &Testbed,
    server: &str,
    sources: &[&str],
    secs: u32,
) -> Result<Vec<f64>> {
    let ports: Vec<String> = (0..sources.len()).map(|i| (5201 + i).to_string()).collect();
    let mut servers = Vec::new();
    for port in &ports {
        let srv = tb
            .command(Host::Victim, &["iperf3", "-s", "-1", "-p", port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        servers.push(srv);
    }
    let run = || -> Result<Vec<f64>> {
        for port in &ports {
            wait_listening(tb, Host::Victim, port.parse()?)?;
        }
        let timeout = (secs + 20).to_string();
        let secs = secs.to_string();
        let clients = sources
            .iter()
            .zip(&ports)
            .map(|(src, port)| {
                tb.command(
                    Host::Client,
                    &[
                        "timeout", &timeout, "iperf3", "-c", server, "-p", port, "-B", src, "-t",
                        &secs, "-J",
                    ],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("start iperf3 client")
            })
            .collect::<Result<Vec<_>>>()?;
        clients
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output()?;
                let json: serde_json::Value =
                    serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
                json["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .context("iperf3 result has no end.sum_received.bits_per_second")
            })
            .collect()
    };
    let result = run();
    for mut srv in servers {
        let _ = srv.kill();
        let _ = srv.wait();
    }
    result
}

/// Run iperf3 TCP from client to `server` for `secs`; return received bits per second.
pub fn iperf3_tcp(tb: &Testbed, server: &str, secs: u32) -> Result<f64> {
    let mut srv = tb
        .command(Host::Victim, &["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start iperf3 server")?;
    let result = wait_listening(tb, Host::Victim, 5201).and_then(|()| {
        tb.exec(
            Host::Client,
            &[
                "timeout",
                &(secs + 20).to_string(),
                "iperf3",
                "-c",
                server,
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )
    });
    let _ = srv.kill();
    let _ = srv.wait();
    let json: serde_json::Value = serde_json::from_str(&result?).context("iperf3 -J output")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result has no end.sum_received.bits_per_second")
}

/// A bounded burst of UDP datagrams, sent as fast as the socket takes them.
#[derive(Debug, Clone, Copy)]
pub struct UdpBurst {
    pub to: SocketAddr,
    /// Exactly this many datagrams.
    pub count: u32,
    /// Payload bytes per datagram.
    pub len: usize,
    /// Over IPv6, carry an (empty, padded) destination options extension header.
    pub dest_opts: bool,
}

impl UdpBurst {
    /// Send the burst from inside a host's namespace; return how long it took.
    pub fn send(&self, tb: &Testbed, host: Host) -> Result<Duration> {
        in_netns(tb, host, || {
            let bind: SocketAddr = if self.to.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()?;
            let sock = UdpSocket::bind(bind)?;
            if self.dest_opts {
                // Next header and length are filled in by the kernel; PadN fills 6 bytes.
                let opts: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
                // SAFETY: `opts` outlives the call and its length is passed exactly.
                let rc = unsafe {
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_DSTOPTS,
                        opts.as_ptr().cast(),
                        opts.len() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    bail!("IPV6_DSTOPTS: {}", std::io::Error::last_os_error());
                }
            }
            let payload = vec![0x5au8; self.len];
            let t = Instant::now();
            let mut sent = 0;
            while sent < self.count {
                match sock.send_to(&payload, self.to) {
                    Ok(_) => sent += 1,
                    // The local qdisc is full for a moment: retry this datagram.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(t.elapsed())
        })
    }
}

/// Run `f` on a thread inside a host's network namespace (sockets it opens live there).
pub fn in_netns<T: Send>(
    tb: &Testbed,
    host: Host,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let ns = tb.ns(host);
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Move the calling thread into a testbed namespace (sockets it opens then live there).
fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let fd = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns switches only this thread's network namespace; the fd is valid.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Counts the UDP datagrams that reach a port inside a namespace.
pub struct UdpSink {
    thread: std::thread::JoinHandle<Result<u64>>,
}

impl UdpSink {
    /// Listen on `port` (IPv4 and IPv6) in the host's namespace, with a socket buffer
    /// large enough that the sink itself loses nothing of a burst.
    pub fn start(tb: &Testbed, host: Host, port: u16, idle: Duration) -> Result<UdpSink> {
        let ns = tb.ns(host);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<u64> {
            enter_netns(&ns)?;
            let sock = UdpSocket::bind(("::", port))?;
            let size: libc::c_int = 256 << 20;
            // SAFETY: `size` outlives the call and its length is passed exactly.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            sock.set_read_timeout(Some(idle))?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 2048];
            let mut count = 0u64;
            // Wait up to a minute for the first datagram, then until `idle` passes quietly.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match sock.recv(&mut buf) {
                    Ok(_) => count += 1,
                    Err(_) if count > 0 || Instant::now() > deadline => return Ok(count),
                    Err(_) => {}
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("udp sink did not start")?;
        Ok(UdpSink { thread })
    }

    /// Wait until the traffic has stopped; return how many datagrams arrived.
    pub fn count(self) -> Result<u64> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("udp sink thread panicked"))?
    }
}

/// A tcpdump capture of one interface inside a namespace, written to a pcap file.
pub struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    /// Start capturing headers (first 128 bytes) of every packet on `iface` in `host`.
    pub fn start(tb: &Testbed, host: Host, iface: &str) -> Result<Capture> {
        let file = tb.workdir().join(format!("{iface}.pcap"));
        let child = tcpdump(tb, host, iface, &["-s", "128"], &file)?;
        Ok(Capture { child, file })
    }

    /// Stop the capture; return the pcap file.
    pub fn stop(mut self) -> Result<std::path::PathBuf> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill has no memory-safety preconditions; pid is our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        self.child.wait()?;
        Ok(self.file.clone())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start tcpdump on `iface` in `host` writing to `file` with `args` (snap length, count,
/// filter), and wait until its filter is attached.
fn tcpdump(tb: &Testbed, host: Host, iface: &str, args: &[&str], file: &Path) -> Result<Child> {
    let log = file.with_extension("log");
    let f = file.to_str().context("path is not UTF-8")?;
    // Immediate mode: without it libpcap hands packets over in 1 s batches, and the last
    // batch is lost when the capture stops.
    let mut argv = vec![
        "tcpdump",
        "-i",
        iface,
        "-U",
        "--immediate-mode",
        "-n",
        "-w",
        f,
    ];
    argv.extend_from_slice(args);
    let child = tb
        .command(host, &argv)
        .stdout(Stdio::null())
        .stderr(File::create(&log)?)
        .spawn()
        .context("start tcpdump")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)?.contains("listening on") {
        if Instant::now() > deadline {
            bail!(
                "tcpdump on {iface} did not start: {}",
                std::fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

/// The first whole packet on an interface that matches a tcpdump filter.
pub struct FirstPacket {
    child: Child,
    file: std::path::PathBuf,
}

impl FirstPacket {
    /// Start waiting for the first packet on `iface` in `host` that matches `filter`.
    pub fn start(tb: &Testbed, host: Host, iface: &str, filter: &str) -> Result<FirstPacket> {
        let file = tb.workdir().join(format!("first-{iface}.pcap"));
        let child = tcpdump(tb, host, iface, &["-s", "0", "-c", "1", filter], &file)?;
        Ok(FirstPacket { child, file })
    }

    /// Wait (at most 5 s) for the packet; return its IP packet bytes.
    pub fn packet(mut self) -> Result<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("no packet matched within 5 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        first_ip_packet(&std::fs::read(&self.file)?)
    }
}

impl Drop for FirstPacket {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The IP packet of the first record of a little-endian Ethernet pcap file, whole.
fn first_ip_packet(pcap: &[u8]) -> Result<Vec<u8>> {
    let u32_at = |at: usize| -> Result<u32> {
        let b = pcap.get(at..at + 4).context("pcap too short")?;
        Ok(u32::from_le_bytes(b.try_into()?))
    };
    if ![0xa1b2_c3d4, 0xa1b2_3c4d].contains(&u32_at(0)?) {
        bail!("not a little-endian pcap file");
    }
    if u32_at(20)? != 1 {
        bail!("link type {} is not Ethernet", u32_at(20)?);
    }
    let (incl, orig) = (u32_at(24 + 8)? as usize, u32_at(24 + 12)? as usize);
    if incl != orig {
        bail!("captured {incl} of {orig} bytes");
    }
    let frame = pcap.get(40..40 + incl).context("pcap record cut short")?;
    Ok(frame.get(14..).context("frame too short")?.to_vec())
}

/// TCP data segments of a little-endian Ethernet pcap file (IPv4 and IPv6 without
/// extension headers) that arrived after a rewritten segment of their flow (one with a
/// capability marker: stamped, or carrying feedback) with a later sequence number, and
/// were not seen before: overtaken by the rewrite, not retransmitted.
/// Returns (data segments, overtaken ones).
pub fn overtaken_by_rewrites(pcap: &Path) -> Result<(u64, u64)> {
    use std::collections::{HashMap, HashSet};
    let data = std::fs::read(pcap)?;
    if data.get(0..4) != Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]) {
        bail!("{} is not a little-endian microsecond pcap", pcap.display());
    }
    let u16_be = |b: &[u8], at: usize| usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
    let u32_be = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    // Per flow (addresses and ports as bytes): the highest sequence number of a
    // rewritten segment, and every one seen, so a retransmission is told from a
    // reordering. Starts, not ends, are compared: a trailer lies past its sequence space.
    let mut flows: HashMap<Vec<u8>, (Option<u32>, HashSet<u32>)> = HashMap::new();
    let (mut segments, mut overtaken) = (0, 0);
    let mut at = 24;
    while let Some(rec) = data.get(at..at + 16) {
        let incl = u32::from_le_bytes(rec[8..12].try_into()?) as usize;
        let frame = data
            .get(at + 16..at + 16 + incl)
            .context("record cut short")?;
        at += 16 + incl;
        let Some(ip) = frame.get(14..) else { continue };
        let (addrs, l4, proto, ip_len) = match ip.first().map(|b| b >> 4) {
            Some(4) if ip.len() >= 20 => {
                let ihl = usize::from(ip[0] & 0xf) * 4;
                (&ip[12..20], ihl, ip[9], u16_be(ip, 2))
            }
            Some(6) if ip.len() >= 40 => (&ip[8..40], 40, ip[6], 40 + u16_be(ip, 4)),
            _ => continue,
        };
        let Some(tcp) = ip.get(l4..l4 + 20).filter(|_| proto == 6) else {
            continue;
        };
        let payload = ip_len.saturating_sub(l4 + usize::from(tcp[12] >> 4) * 4);
        if payload == 0 {
            continue;
        }
        segments += 1;
        let mut key = addrs.to_vec();
        key.extend_from_slice(&tcp[0..4]);
        let seq = u32_be(tcp, 4);
        let (highest, seen) = flows.entry(key).or_insert((None, HashSet::new()));
        let first_time = seen.insert(seq);
        if tcp[12] & 0x0e != 0 {
            *highest = Some(highest.map_or(seq, |h: u32| {
                if (seq.wrapping_sub(h) as i32) > 0 {
                    seq
                } else {
                    h
                }
            }));
        } else if highest.is_some_and(|h| (seq.wrapping_sub(h) as i32) < 0) {
            overtaken += u64::from(first_time);
        }
    }
    Ok((segments, overtaken))
}

/// Count the packets of a pcap file that match a tcpdump filter.
pub fn count_packets(pcap: &Path, filter: &str) -> Result<u64> {
    let out = std::process::Command::new("tcpdump")
        .args(["-r"])
        .arg(pcap)
        .args(["-nn", filter])
        .stderr(Stdio::null())
        .output()
        .context("tcpdump -r")?;
    if !out.status.success() {
        bail!("tcpdump -r {} {filter:?} failed", pcap.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().count() as u64)
}
