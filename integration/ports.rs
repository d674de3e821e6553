//! End-to-end tests of port policies: real namespaces, a real mbox and victim, real
//! python3 http.servers on several ports and real curl clients. Root only.

use std::collections::BTreeMap;

use mpolice::testbed::{
    EngineProcess, Host, HttpServer, RoleConfig, Testbed, VICTIM_V4, VICTIM_V6,
};

#[path = "common.rs"]
mod common;
use common::{bin, exclusive, root};

/// Servers on the victim, each answering `/who` with its own port.
fn servers(tb: &Testbed, ports: &[u16]) -> Vec<HttpServer> {
    ports
        .iter()
        .map(|&port| {
            let dir = tb.workdir().join(format!("www{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("who"), format!("{port}\n")).unwrap();
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

/// Fetch `/who` from `addr:port` `n` times, each on a new connection; count the answers.
fn who_answers(tb: &Testbed, addr: &str, port: u16, n: u32) -> BTreeMap<String, u32> {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("http://{addr}:{port}/who?{i}"))
        .collect();
    let mut argv = vec!["curl", "-sS", "-g", "--max-time", "60"];
    argv.extend(["-H", "Connection: close"]);
    argv.extend(urls.iter().map(String::as_str));
    let out = tb.exec(Host::Client, &argv).unwrap();
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

/// The same rules on a host that wants port policies only: a victim without
/// capabilities, behind an mbox that only passes traffic on.
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
    let role = |r: &str| {
        let base = RoleConfig::default();
        RoleConfig {
            tcp_ports: vec![8080, 9090, 8084],
            extra: if r == "victim" {
                "[[ports.forward]]\nport = 8080\ndefault = 8082\n\
             source = [{ from = \"198.18.1.0/24\", to = 8081 }]\n\
             [[ports.forward]]\nport = 9090\ndefault = 8083\n\
             dice = [{ percent = 50, to = 8081 }]\n"
                    .into()
            } else {
                String::new()
            },
            ..if capabilities {
                base.with_capabilities(&tb, r).unwrap()
            } else {
                base
            }
        }
    };
    let mut victim =
        EngineProcess::start(&tb, Host::Victim, "victim", &bin(), &role("victim")).unwrap();
    let mut mbox = EngineProcess::start(&tb, Host::Mbox, "mbox", &bin(), &role("mbox")).unwrap();
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let s = loop {
        let s = victim.stats().unwrap();
        let total: u64 = s
            .total()
            .engine
            .forwarded
            .iter()
            .map(|f| f.connections)
            .sum();
        if total >= 206 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
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
    for (e, host) in [(&mut mbox, Host::Mbox), (&mut victim, Host::Victim)] {
        assert!(e.stop().unwrap().success(), "{}", e.log_text());
        assert!(tb.nft_tables(host).unwrap().is_empty());
    }
}
