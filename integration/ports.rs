//! End-to-end tests of port policies: real namespaces, a real mbox and victim, real
//! python3 http.servers on several ports and real curl clients. Root only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mpolice::testbed::{
    EngineProcess, Host, HttpServer, RoleConfig, ServedFile, Testbed, VICTIM_V4, VICTIM_V6,
};

#[path = "common.rs"]
mod common;
use common::{bin, exclusive, root};

/// Servers on the victim, each answering `/who` and `/api/who` with its own port.
fn servers(tb: &Testbed, ports: &[u16]) -> Vec<HttpServer> {
    ports
        .iter()
        .map(|&port| {
            let dir = tb.workdir().join(format!("www{port}"));
            std::fs::create_dir_all(dir.join("api")).unwrap();
            for who in ["who", "api/who"] {
                std::fs::write(dir.join(who), format!("{port}\n")).unwrap();
            }
            HttpServer::start(tb, Host::Victim, &dir, port).unwrap()
        })
        .collect()
}

/// A server that listens on a port of the victim (backlog 16) and never accepts.
struct Stuck(std::process::Child);

impl Stuck {
    fn start(tb: &Testbed, port: u16) -> Stuck {
        let code = format!(
            "import socket, time\ns = socket.socket()\ns.bind(('', {port}))\ns.listen(16)\ntime.sleep(60)"
        );
        let child = tb
            .command(Host::Victim, &["python3", "-c", &code])
            .spawn()
            .unwrap();
        mpolice::testbed::wait_listening(tb, Host::Victim, port).unwrap();
        Stuck(child)
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the protected host with `ports` (its `[ports]` lines) on `tcp_ports`, and the
/// mbox in front of it: with `capabilities`, a victim behind a stamping mbox; without,
/// a server (port policies only) behind an mbox that passes traffic on.
fn start_pair(
    tb: &Testbed,
    capabilities: bool,
    tcp_ports: &[u16],
    ports: &str,
) -> (EngineProcess, EngineProcess) {
    let role = |r: &str, extra: &str| {
        let base = RoleConfig {
            tcp_ports: tcp_ports.to_vec(),
            extra: extra.into(),
            ..RoleConfig::default()
        };
        if capabilities {
            base.with_capabilities(tb, r).unwrap()
        } else {
            base
        }
    };
    let host = if capabilities { "victim" } else { "server" };
    let victim =
        EngineProcess::start(tb, Host::Victim, host, &bin(), &role("victim", ports)).unwrap();
    let mbox = EngineProcess::start(tb, Host::Mbox, "mbox", &bin(), &role("mbox", "")).unwrap();
    (victim, mbox)
}

/// Stop both engines; each exits cleanly and leaves no table behind.
fn stop_clean(tb: &Testbed, mbox: &mut EngineProcess, victim: &mut EngineProcess) {
    for (e, host) in [(mbox, Host::Mbox), (victim, Host::Victim)] {
        assert!(e.stop().unwrap().success(), "{}", e.log_text());
        assert!(tb.nft_tables(host).unwrap().is_empty());
    }
}

/// Fetch `/who` from `addr:port` `n` times, each on a new connection; count the answers
/// (a connection refused or timed out gives none).
fn who_answers(tb: &Testbed, addr: &str, port: u16, n: u32) -> BTreeMap<String, u32> {
    answers(tb, &format!("http://{addr}:{port}/who"), n)
}

/// Fetch `url` `n` times, each on a new connection; count the answers.
fn answers(tb: &Testbed, url: &str, n: u32) -> BTreeMap<String, u32> {
    let urls: Vec<String> = (0..n).map(|i| format!("{url}?{i}")).collect();
    let mut argv = vec!["curl", "-sS", "-g", "--max-time", "60"];
    argv.extend(["-H", "Connection: close"]);
    argv.extend(urls.iter().map(String::as_str));
    // Refused connections fail curl's exit status: the answers are what count.
    let out = tb.command(Host::Client, &argv).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let mut answers = BTreeMap::new();
    for line in out.lines() {
        *answers.entry(line.to_owned()).or_default() += 1;
    }
    answers
}

/// Forwarding on the victim, behind a stamping mbox: by source, IPv4 clients of port
/// 8080 reach the server on 8081 and IPv6 clients the default, 8082; by dice, port 9090
/// sends half its connections to 8081 and the rest to its default, 8083 (within five
/// standard deviations over 200 connections). Every answer comes back from the port
/// the client connected to (curl checks), and the stats count what the clients did.
#[test]
fn forwarding_rules_send_each_connection_where_its_rule_says() {
    forwarding("mpfwd", true);
}

/// The same rules on a host that wants port policies only (`mpolice server`), behind
/// an mbox that only passes traffic on.
#[test]
fn forwarding_rules_work_without_middlepolice() {
    forwarding("mpfwdp", false);
}

fn forwarding(prefix: &str, capabilities: bool) {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up(prefix).unwrap();
    let _servers = servers(&tb, &[8081, 8082, 8083]);
    let (mut victim, mut mbox) = start_pair(
        &tb,
        capabilities,
        &[8080, 9090, 8084],
        "[[ports.forward]]\nport = 8080\ndefault = 8082\n\
         source = [{ from = \"198.18.1.0/24\", to = 8081 }]\n\
         [[ports.forward]]\nport = 9090\ndefault = 8083\n\
         dice = [{ percent = 50, to = 8081 }]\n",
    );
    let v4 = who_answers(&tb, VICTIM_V4, 8080, 3);
    let v6 = who_answers(&tb, &format!("[{VICTIM_V6}]"), 8080, 3);
    assert_eq!(
        v4,
        BTreeMap::from([("8081".to_owned(), 3)]),
        "IPv4 by source"
    );
    assert_eq!(
        v6,
        BTreeMap::from([("8082".to_owned(), 3)]),
        "IPv6 by default"
    );
    let dice = who_answers(&tb, VICTIM_V4, 9090, 200);
    let (to_8081, to_8083) = (
        dice.get("8081").copied().unwrap_or(0),
        dice.get("8083").copied().unwrap_or(0),
    );
    assert_eq!(to_8081 + to_8083, 200, "{dice:?}");
    assert!((65..=135).contains(&to_8081), "{dice:?}");
    // The engine counted each connection where it sent it (workers publish their
    // counts every 100 ms or so).
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = victim.stats().unwrap();
        let total: u64 = s
            .total()
            .engine
            .forwarded
            .iter()
            .map(|f| f.connections)
            .sum();
        if total >= 206 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let counted: BTreeMap<(u16, u16), u64> = s
        .total()
        .engine
        .forwarded
        .iter()
        .map(|f| ((f.port, f.to), f.connections))
        .collect();
    let want = BTreeMap::from([
        ((8080, 8081), 3),
        ((8080, 8082), 3),
        ((9090, 8081), u64::from(to_8081)),
        ((9090, 8083), u64::from(to_8083)),
    ]);
    assert_eq!(counted, want, "{}", s.table());
    // The replies of forwarded connections carry feedback to the mbox: source NAT gave
    // them the port the client connected to before the victim's outbound chain.
    assert_eq!(
        s.total().engine.caps.fed_back > 0,
        capabilities,
        "{}",
        s.table()
    );
    // Per-port statistics, in the port the client connected to: every handshake done,
    // none half-open; the replies of forwarded connections counted under it too.
    let ports = s.total().engine.ports.expect("per-port statistics are on");
    let row = |port| {
        let r = ports.rows.iter().find(|r| r.port == port);
        r.map(|r| r.counts).unwrap_or_default()
    };
    assert_eq!(
        (row(8080).established, row(9090).established),
        (6, 200),
        "{}",
        s.ports_table()
    );
    for port in [8080, 9090] {
        let c = row(port);
        assert!(
            c.bytes_in > 0 && c.bytes_out > 0 && c.half_open == 0,
            "{}",
            s.ports_table()
        );
        assert!(c.handshake_us > 0, "{}", s.ports_table());
    }
    // The kernel's accept queues: a server that never accepts holds what connected.
    let listening = s.listeners.iter().map(|l| l.port).collect::<Vec<_>>();
    assert_eq!(listening, [8081, 8082, 8083], "{}", s.ports_table());
    let _stuck = Stuck::start(&tb, 8084);
    for _ in 0..3 {
        let _ = tb.exec(
            Host::Client,
            &[
                "curl",
                "-s",
                "--max-time",
                "1",
                &format!("http://{VICTIM_V4}:8084/"),
            ],
        );
    }
    let s = victim.stats().unwrap();
    let stuck = s.listeners.iter().find(|l| l.port == 8084).copied();
    assert_eq!(
        stuck.map(|l| (l.waiting, l.backlog)),
        Some((3, 16)),
        "{}",
        s.ports_table()
    );
    assert!(s.ports_table().contains("3/16"), "{}", s.ports_table());
    assert!(
        s.table().contains("forwarded: 8080->8082=3 8080->8081=3"),
        "{}",
        s.table()
    );
    stop_clean(&tb, &mut mbox, &mut victim);
}

/// Content rules on the victim: port 8080 sends connections whose first data holds
/// ` /api/` to 8081 and the rest to 8082. Over IPv4 and IPv6, requests reach the server
/// their path names; a 1 MiB download and a 1 MiB upload through the joined connection
/// arrive intact (every sequence number translated both ways); the stats count each
/// connection answered and joined, none failed.
#[test]
fn content_rules_send_each_connection_by_its_first_data() {
    content("mpcnt", true);
}

/// The same on a host with port policies only (`mpolice server`).
#[test]
fn content_rules_work_without_middlepolice() {
    content("mpcntp", false);
}

fn content(prefix: &str, capabilities: bool) {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up(prefix).unwrap();
    let _servers = servers(&tb, &[8081, 8082]);
    let big = tb.workdir().join("www8081/api/big.bin");
    mpolice::testbed::random_file(&big, 1 << 20).unwrap();
    let big_sha = mpolice::testbed::sha256(&big).unwrap();
    let (mut victim, mut mbox) = start_pair(
        &tb,
        capabilities,
        &[8080],
        "[[ports.forward]]\nport = 8080\ndefault = 8082\n\
         content = [{ pattern = \" /api/\", to = 8081 }]\n",
    );
    let v6 = format!("[{VICTIM_V6}]");
    for addr in [VICTIM_V4, v6.as_str()] {
        let api = answers(&tb, &format!("http://{addr}:8080/api/who"), 3);
        let other = answers(&tb, &format!("http://{addr}:8080/who"), 3);
        assert_eq!(api, BTreeMap::from([("8081".to_owned(), 3)]), "{addr}");
        assert_eq!(other, BTreeMap::from([("8082".to_owned(), 3)]), "{addr}");
        let got = tb.workdir().join("got.bin");
        let url = format!("http://{addr}:8080/api/big.bin");
        let out = got.to_str().unwrap();
        tb.exec(
            Host::Client,
            &[
                "curl",
                "-sS",
                "-g",
                "--fail",
                "--max-time",
                "60",
                "-o",
                out,
                &url,
            ],
        )
        .unwrap();
        assert_eq!(
            mpolice::testbed::sha256(&got).unwrap(),
            big_sha,
            "download {addr}"
        );
        let url = format!("http://{addr}:8080/api/up.bin");
        let sent = tb
            .exec(
                Host::Client,
                &[
                    "curl",
                    "-sS",
                    "-g",
                    "--fail",
                    "--max-time",
                    "60",
                    "-T",
                    out,
                    &url,
                ],
            )
            .unwrap();
        assert_eq!(sent.trim(), big_sha, "upload {addr}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = victim.stats().unwrap();
        let joined = s.total().engine.splice.map_or(0, |c| c.joined);
        if joined >= 16 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let c = s.total().engine.splice.expect("port policies are on");
    eprintln!("{}", s.table());
    assert_eq!(
        (c.answered, c.examined, c.joined, c.failed, c.full),
        (16, 16, 16, 0, 0),
        "{}",
        s.table()
    );
    let counted: BTreeMap<(u16, u16), u64> = s
        .total()
        .engine
        .forwarded
        .iter()
        .map(|f| ((f.port, f.to), f.connections))
        .collect();
    assert_eq!(
        counted,
        BTreeMap::from([((8080, 8081), 10), ((8080, 8082), 6)]),
        "{}",
        s.table()
    );
    stop_clean(&tb, &mut mbox, &mut victim);
}

/// A server on `port` of the victim that speaks first: it greets each connection and
/// closes it.
struct Greeter(std::process::Child);

impl Greeter {
    fn start(tb: &Testbed, port: u16) -> Greeter {
        let code = format!(
            "import socket\n\
             s = socket.create_server(('', {port}), family=socket.AF_INET6, dualstack_ipv6=True)\n\
             while True:\n    c, _ = s.accept()\n    c.sendall(b'220 greeter {port}\\r\\n')\n    c.close()"
        );
        let child = tb
            .command(Host::Victim, &["python3", "-c", &code])
            .spawn()
            .unwrap();
        mpolice::testbed::wait_listening(tb, Host::Victim, port).unwrap();
        Greeter(child)
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a client that only listens reads from `addr:port` (10 s at most), and how long
/// it took.
fn greeting(tb: &Testbed, addr: &str, port: u16) -> (String, Duration) {
    let code = format!(
        "import socket\nc = socket.create_connection(('{addr}', {port}), timeout=10)\n\
         print(c.recv(100).decode().strip())"
    );
    let t = Instant::now();
    let out = tb
        .command(Host::Client, &["python3", "-c", &code])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (text, t.elapsed())
}

/// Content rules set at run time, and their edges: a client that sends nothing (the
/// server speaks first) reaches the default port once the engine has waited 2 s for
/// data; a connection sent where nothing listens is reset at once; and a content rule
/// is refused where the queues do not balance by flow (config unit tests).
#[test]
fn content_rules_wait_for_data_and_reset_what_no_server_takes() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mpcntw").unwrap();
    let _servers = servers(&tb, &[8081]);
    let _greeter = Greeter::start(&tb, 8083);
    let (mut victim, mut mbox) = server_with(&tb, "[ports]\n");
    let socket = victim.socket().to_str().unwrap().to_string();
    let out = std::process::Command::new(bin())
        .args(["ports", "--socket", &socket, "forward", "set"])
        .arg("{ port = 8080, default = 8083, content = [{ pattern = \" /api/\", to = 8081 }, { pattern = \"GET /gone\", to = 8089 }] }")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("added the rule of port 8080"),
        "{said}"
    );
    assert!(
        said.contains("warning: nothing listens on port 8089"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(100));
    for addr in [VICTIM_V4, VICTIM_V6] {
        let (said, took) = greeting(&tb, addr, 8080);
        assert_eq!(said, "220 greeter 8083", "{addr}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(5),
            "{addr}: {took:?}"
        );
        eprintln!("{addr}: the greeting came after {took:?}");
    }
    let url = |addr: &str, path: &str| format!("http://{addr}:8080/{path}");
    let v6 = format!("[{VICTIM_V6}]");
    assert_eq!(
        answers(&tb, &url(&v6, "api/who"), 2),
        BTreeMap::from([("8081".to_owned(), 2)])
    );
    let t = Instant::now();
    let out = tb
        .command(
            Host::Client,
            &["curl", "-sS", "--max-time", "10", &url(VICTIM_V4, "gone")],
        )
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reset"), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = victim.stats().unwrap();
        let c = s.total().engine.splice.unwrap_or_default();
        if c.failed >= 1 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let c = s.total().engine.splice.unwrap_or_default();
    assert_eq!(
        (c.answered, c.waited, c.examined, c.joined, c.failed),
        (5, 2, 3, 4, 1),
        "{}",
        s.table()
    );
    assert!(s.table().contains("content: answered=5"), "{}", s.table());
    stop_clean(&tb, &mut mbox, &mut victim);
}

/// Start a server (port policies only, `mpolice server`) with `ports` as its `[ports]`
/// section, behind an mbox that passes traffic on.
fn server_with(tb: &Testbed, ports: &str) -> (EngineProcess, EngineProcess) {
    start_pair(tb, false, &[8080, 9090], ports)
}

/// The group row of `what` on `port`, once the engine has counted `at_least` events.
fn group_row(
    victim: &EngineProcess,
    what: &str,
    port: u16,
    at_least: u64,
) -> mpolice::ports::groups::GroupCounts {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = victim.stats().unwrap();
        let row = s.groups.iter().find(|g| g.what == what && g.port == port);
        let c = row.map(|g| g.counts).unwrap_or_default();
        if c.passed + c.refused + c.held >= at_least || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Accept quotas: past 5 connections a second (and a burst of 5), port 8080 refuses at
/// once, and curl sees the connections reset; port 9090 holds the SYNs back, and every
/// connection gets through once its client sends the SYN again. The counts match what
/// curl saw, and no more connections passed than the quota allows in the time taken.
#[test]
fn accept_quotas_refuse_or_hold_back_new_connections() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mpgrp").unwrap();
    let _servers = servers(&tb, &[8080, 9090]);
    let (mut victim, mut mbox) = server_with(
        &tb,
        "[[ports.group]]\naccept_rate = 5\nburst = 5\nport = 8080\nover = \"refuse\"\n\
         [[ports.group]]\naccept_rate = 5\nburst = 5\nport = 9090\nover = \"hold\"\n",
    );
    let t = Instant::now();
    let refused = who_answers(&tb, VICTIM_V4, 8080, 20);
    let took = t.elapsed().as_secs_f64();
    let answered = refused.get("8080").copied().unwrap_or(0);
    eprintln!("8080, refuse past 5/s: {answered} of 20 answered in {took:.2} s");
    let most = 5 + (5.0 * took).ceil() as u32;
    assert!(
        (5..=most).contains(&answered),
        "{answered} of 20 in {took:.2} s"
    );
    let c = group_row(&victim, "accept", 8080, 20);
    assert_eq!(
        (c.passed, c.refused, c.held),
        (u64::from(answered), u64::from(20 - answered), 0)
    );
    let t = Instant::now();
    let held = who_answers(&tb, VICTIM_V4, 9090, 10);
    let took = t.elapsed();
    assert_eq!(held.get("9090"), Some(&10), "{held:?}");
    assert!(
        took >= Duration::from_secs(1),
        "the held SYNs were sent again: {took:?}"
    );
    let c = group_row(&victim, "accept", 9090, 10);
    assert!(c.passed == 10 && c.held > 0 && c.refused == 0, "{c:?}");
    assert!(
        victim
            .stats()
            .unwrap()
            .table()
            .contains("groups: accept:8080 passed=")
    );
    stop_clean(&tb, &mut mbox, &mut victim);
}

/// An output quota of 400 kB/s on port 8080: a 2 MB download arrives whole, no faster
/// than the quota allows (its burst of 64 KiB aside), and the segments held back are
/// counted.
#[test]
fn an_output_quota_holds_a_download_to_its_rate() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mpout").unwrap();
    let served = ServedFile::start(&tb, 2 << 20).unwrap();
    let (mut victim, mut mbox) = server_with(
        &tb,
        "[[ports.group]]\noutput_rate = 400000\nburst = 65536\nport = 8080\n",
    );
    let secs = served.fetch(&tb, VICTIM_V4).unwrap();
    let rate = f64::from(2u32 << 20) / secs;
    eprintln!("2 MiB under a 400 kB/s output quota: {secs:.2} s, {rate:.0} B/s");
    // The quota plus its burst over the time taken, with room for headers counted
    // apart (the quota meters payload).
    assert!(
        rate <= 400_000.0 * 1.1 + 65_536.0 / secs,
        "{rate:.0} B/s in {secs:.2} s"
    );
    let c = group_row(&victim, "output", 8080, 1);
    assert!(c.passed > 0 && c.held > 0 && c.refused == 0, "{c:?}");
    stop_clean(&tb, &mut mbox, &mut victim);
}

/// A minimal FTP server (python3, standard library): anonymous login, passive data
/// connections (EPSV, PASV) on ports 30000 to 30009, RETR of the one file it serves.
const FTP_SERVER: &str = r#"
import socket, sys, threading
path, = sys.argv[1:]
body = open(path, 'rb').read()
def listen(port):
    return socket.create_server(('', port), family=socket.AF_INET6, dualstack_ipv6=True)
def passive():
    for port in range(30000, 30010):
        try:
            return listen(port), port
        except OSError:
            pass
def serve(c):
    send = lambda s: c.sendall((s + '\r\n').encode())
    send('220 mpolice test ftp')
    data = None
    for line in c.makefile('rb'):
        verb, _, arg = line.decode().strip().partition(' ')
        verb = verb.upper()
        if verb in ('EPSV', 'PASV'):
            data, port = passive()
            if verb == 'EPSV':
                send('229 Entering Extended Passive Mode (|||%d|)' % port)
            else:
                host = c.getsockname()[0].replace('::ffff:', '').replace('.', ',')
                send('227 Entering Passive Mode (%s,%d,%d)' % (host, port >> 8, port & 255))
        elif verb == 'SIZE':
            send('213 %d' % len(body))
        elif verb == 'RETR':
            send('150 here it comes')
            d, _ = data.accept()
            d.sendall(body)
            d.close()
            data.close()
            send('226 done')
        elif verb == 'QUIT':
            send('221 bye')
            break
        else:
            send({'USER': '331 any password', 'PASS': '230 in', 'PWD': '257 "/"', 'TYPE': '200 ok'}.get(verb, '502 not here'))
    c.close()
control = listen(21)
while True:
    c, _ = control.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The FTP variant of output groups: a 400 kB/s group on control port 21 with
/// `ftp = true` holds the passive data connections it announces (EPSV over IPv6, PASV
/// over IPv4) to its rate: 1 MiB downloads arrive intact, no faster than the quota
/// allows, and the data segments held back count under port 21.
#[test]
fn an_ftp_output_group_holds_its_data_connections() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mpftp").unwrap();
    let file = tb.workdir().join("f.bin");
    mpolice::testbed::random_file(&file, 1 << 20).unwrap();
    let sha = mpolice::testbed::sha256(&file).unwrap();
    let mut server = tb
        .command(
            Host::Victim,
            &["python3", "-c", FTP_SERVER, file.to_str().unwrap()],
        )
        .spawn()
        .unwrap();
    mpolice::testbed::wait_listening(&tb, Host::Victim, 21).unwrap();
    let ports: Vec<u16> = [21].into_iter().chain(30000..30010).collect();
    let group = "[[ports.group]]\noutput_rate = 400000\nburst = 65536\nport = 21\nftp = true\n";
    let (mut victim, mut mbox) = start_pair(&tb, false, &ports, group);
    let got = tb.workdir().join("got.bin");
    let v6 = format!("[{VICTIM_V6}]");
    for (addr, how) in [(VICTIM_V4, "--disable-epsv"), (v6.as_str(), "--epsv")] {
        let url = format!("ftp://{addr}/f.bin");
        let t = Instant::now();
        let out = got.to_str().unwrap();
        tb.exec(
            Host::Client,
            &[
                "curl",
                "-sS",
                "-g",
                "--fail",
                "--max-time",
                "60",
                how,
                "-o",
                out,
                &url,
            ],
        )
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(mpolice::testbed::sha256(&got).unwrap(), sha, "{addr}");
        let rate = f64::from(1u32 << 20) / secs;
        eprintln!(
            "1 MiB over FTP ({how}) under a 400 kB/s group on port 21: {secs:.2} s, {rate:.0} B/s"
        );
        assert!(
            rate <= 400_000.0 * 1.1 + 65_536.0 / secs,
            "{rate:.0} B/s in {secs:.2} s"
        );
    }
    let c = group_row(&victim, "output", 21, 1);
    assert!(c.passed > 0 && c.held > 0, "{c:?}");
    let s = victim.stats().unwrap();
    assert!(
        s.table()
            .contains("ftp: data_connections=2 unprotected=0 untracked=0"),
        "{}",
        s.table()
    );
    let _ = server.kill();
    let _ = server.wait();
    stop_clean(&tb, &mut mbox, &mut victim);
}

/// `mpolice ports` against the running victim: a rule set, replaced and deleted, a
/// group added and deleted, each change answered and in force for the next connection;
/// a change the config would refuse is refused and changes nothing.
#[test]
fn rules_and_groups_change_at_run_time() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mprun").unwrap();
    let _servers = servers(&tb, &[8081, 8082]);
    let (mut victim, mut mbox) = server_with(&tb, "[ports]\n");
    let socket = victim.socket().to_str().unwrap().to_string();
    let ports = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["ports", "--socket", &socket])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            text + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Nothing listens on 8080 itself: a connection gets there only if forwarded.
    assert_eq!(who_answers(&tb, VICTIM_V4, 8080, 1), BTreeMap::new());
    let (ok, said) = ports(&["forward", "set", "{ port = 8080, default = 8081 }"]);
    assert!(ok && said.contains("added the rule of port 8080"), "{said}");
    assert!(!said.contains("warning"), "{said}");
    // Workers take it at their next tick (20 ms).
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        who_answers(&tb, VICTIM_V4, 8080, 2),
        BTreeMap::from([("8081".into(), 2)])
    );
    let (ok, said) = ports(&["forward", "set", "{ port = 8080,\n default = 8082 }"]);
    assert!(
        ok && said.contains("replaced the rule of port 8080"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        who_answers(&tb, VICTIM_V4, 8080, 2),
        BTreeMap::from([("8082".into(), 2)])
    );
    // Refused as the config would be; the rule in force stays.
    let (ok, said) = ports(&["forward", "set", "{ port = 7, default = 8082 }"]);
    assert!(
        !ok && said.contains("7 is not in protect.tcp_ports"),
        "{said}"
    );
    // A port no one listens on is taken, with a warning: its connections get a reset.
    let (ok, said) = ports(&["forward", "set", "{ port = 9090, default = 8089 }"]);
    assert!(
        ok && said.contains("warning: nothing listens on port 8089"),
        "{said}"
    );
    let (ok, said) = ports(&["forward", "del", "9090"]);
    assert!(ok && !said.contains("warning"), "{said}");
    let (ok, said) = ports(&["list"]);
    assert!(
        ok && said.contains("forward { port = 8080, default = 8082 }"),
        "{said}"
    );
    // A group that refuses past one connection a second (burst 1), on the forwarded
    // port: the first connection passes, the next are reset at once.
    let group = "{ accept_rate = 1, port = 8080, burst = 1, over = \"refuse\" }";
    let (ok, said) = ports(&["group", "add", group]);
    assert!(ok && said.contains("added group 1"), "{said}");
    std::thread::sleep(Duration::from_millis(1100));
    let t = Instant::now();
    let refused = who_answers(&tb, VICTIM_V4, 8080, 3);
    assert_eq!(refused, BTreeMap::from([("8082".into(), 1)]));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "no SYN waited for a retry: {:?}",
        t.elapsed()
    );
    let c = group_row(&victim, "accept", 8080, 3);
    assert_eq!((c.passed, c.refused, c.held), (1, 2, 0), "{c:?}");
    let (ok, said) = ports(&["group", "del", "1"]);
    assert!(ok && said.contains("deleted group 1"), "{said}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        who_answers(&tb, VICTIM_V4, 8080, 5),
        BTreeMap::from([("8082".into(), 5)])
    );
    let (ok, said) = ports(&["forward", "del", "8080"]);
    assert!(
        ok && said.contains("deleted the rule of port 8080"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(who_answers(&tb, VICTIM_V4, 8080, 1), BTreeMap::new());
    let (ok, said) = ports(&["group", "del", "1"]);
    assert!(!ok && said.contains("no group 1"), "{said}");
    stop_clean(&tb, &mut mbox, &mut victim);
}
