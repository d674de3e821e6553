//! End-to-end tests of operating the engine: reloading its config under traffic. Root
//! only.

use std::time::{Duration, Instant};

use mpolice::testbed::{EngineProcess, Host, RoleConfig, ServedFile, Testbed, VICTIM_V4};

#[path = "common.rs"]
mod common;
use common::{bin, exclusive, root};

/// `mpolice reload` against `engine`: whether it succeeded, and what it said.
fn reload(engine: &EngineProcess) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(["reload", "--socket"])
        .arg(engine.socket())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// The HTTP status of a HEAD request from the client (000: no connection).
fn status(tb: &Testbed, url: &str) -> String {
    let out = tb
        .command(
            Host::Client,
            &[
                "curl",
                "-s",
                "-I",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
                url,
            ],
        )
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The victim's config reloaded 20 times (by `mpolice reload` and by SIGHUP) while a
/// 50 MB download runs through both engines with capabilities: every reload between a
/// config that protects port 8080 alone and one that also forwards port 9090 to 8080.
/// The download arrives intact (a gap in the rules would let a stamped segment reach
/// TCP with its trailer), the kernel dropped nothing from the queues, and each config is
/// in force once reloaded. A broken file, and a change of what cannot change live, are
/// refused with the running config kept.
#[test]
fn reload_under_a_running_transfer_loses_nothing() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mprel").unwrap();
    let served = ServedFile::start(&tb, 50 << 20).unwrap();
    let role = |r: &str, forward: bool| {
        let cfg = RoleConfig {
            tcp_ports: if forward {
                vec![8080, 9090]
            } else {
                vec![8080]
            },
            extra: if forward && r == "victim" {
                "[[ports.forward]]\nport = 9090\ndefault = 8080\n".into()
            } else if r == "victim" {
                "[ports]\n".into()
            } else {
                String::new()
            },
            ..RoleConfig::default()
        };
        cfg.with_capabilities(&tb, r).unwrap()
    };
    let victim =
        EngineProcess::start(&tb, Host::Victim, "victim", &bin(), &role("victim", false)).unwrap();
    // The mbox stamps both ports throughout: only the victim's config changes.
    let mbox = EngineProcess::start(&tb, Host::Mbox, "mbox", &bin(), &role("mbox", true)).unwrap();
    let url = format!("http://{VICTIM_V4}:9090/f.bin");
    assert_eq!(status(&tb, &url), "000", "9090 is not forwarded yet");
    // Reloads one after the other for as long as the download runs, every fifth by
    // SIGHUP, each between the two configs.
    let (took, reloads) = std::thread::scope(|s| {
        // 50 MB at 20 MB/s: about 2.5 s of reloads.
        let download = s.spawn(|| served.fetch_at(&tb, VICTIM_V4, "20M"));
        let mut i = 0;
        while !download.is_finished() {
            let forward = i % 2 == 0;
            victim.rewrite_config(&role("victim", forward)).unwrap();
            if i % 5 == 4 {
                let pid = victim.pid().unwrap() as i32;
                // SAFETY: kill has no memory-safety preconditions; pid is our child.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
                // The engine reads it within a tick (100 ms).
                std::thread::sleep(Duration::from_millis(150));
            } else {
                let (ok, said) = reload(&victim);
                assert!(ok && said.contains("reloaded"), "{said}");
                if i == 0 {
                    assert!(said.contains("tcp ports [8080, 9090]"), "{said}");
                    assert!(said.contains("ports.forward: 1 rule"), "{said}");
                }
            }
            i += 1;
        }
        (download.join().unwrap(), i)
    });
    let secs = took.expect("the download arrives intact through the reloads");
    eprintln!("50 MB through {reloads} reloads: {secs:.2} s");
    assert!(reloads >= 10, "only {reloads} reloads during the download");
    victim.rewrite_config(&role("victim", true)).unwrap();
    assert!(reload(&victim).0);
    assert_eq!(
        status(&tb, &url),
        "200",
        "9090 is forwarded to the server on 8080"
    );
    for (e, host) in [(&victim, Host::Victim), (&mbox, Host::Mbox)] {
        let (s, kernel) = e.settled_stats(&tb, host).unwrap();
        for k in &kernel {
            assert_eq!(
                (k.queue_dropped, k.user_dropped),
                (0, 0),
                "{host:?}\n{}",
                s.table()
            );
        }
        assert_eq!(s.total().engine.enobufs, 0, "{host:?}\n{}", s.table());
    }
    // A storm of 200 SIGHUPs in a row: coalesced (one reload per tick at most), the
    // engine carries on.
    let before = victim.log_text().matches("reloaded").count();
    let pid = victim.pid().unwrap() as i32;
    for _ in 0..200 {
        // SAFETY: kill has no memory-safety preconditions; pid is our child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let storm = victim.log_text().matches("reloaded").count() - before;
    assert!((1..20).contains(&storm), "{storm} reloads for 200 SIGHUPs");
    assert_eq!(status(&tb, &url), "200");
    // A broken file, then a change that cannot be made live: refused, config kept.
    victim
        .write_config_text("[protect\naddresses = 7\n")
        .unwrap();
    let (ok, said) = reload(&victim);
    assert!(
        !ok && said.contains("reload refused, the running config stays"),
        "{said}"
    );
    assert!(said.contains("line 1"), "{said}");
    let other_queue = RoleConfig {
        first_queue: 5,
        ..role("victim", false)
    };
    victim.rewrite_config(&other_queue).unwrap();
    let (ok, said) = reload(&victim);
    assert!(
        !ok && said.contains("[queue] cannot change while the engine runs"),
        "{said}"
    );
    assert_eq!(status(&tb, &url), "200", "the running config stays");
    assert!(
        victim.log_text().contains("reloaded"),
        "{}",
        victim.log_text()
    );
    let t = Instant::now();
    let mut engines = [victim, mbox];
    for e in &mut engines {
        assert!(e.stop().unwrap().success(), "{}", e.log_text());
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    for host in [Host::Victim, Host::Mbox] {
        assert!(tb.nft_tables(host).unwrap().is_empty());
    }
}

/// The metrics endpoint of a running victim: `GET /metrics` from its host gives every
/// counter in the OpenMetrics text format, labelled by role and queue, the packets of a
/// download counted; `mpolice check` accepts the config. A second engine asking for
/// the same address stops at start with a line naming it, and leaves no rule behind.
#[test]
fn the_metrics_endpoint_serves_the_counters() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mpmet").unwrap();
    let served = ServedFile::start(&tb, 1 << 20).unwrap();
    let cfg = RoleConfig {
        extra: "[ports]\n[metrics]\nlisten = \"127.0.0.1:9464\"\n".into(),
        ..RoleConfig::default()
    };
    let mut victim = EngineProcess::start(&tb, Host::Victim, "victim", &bin(), &cfg).unwrap();
    let mut mbox =
        EngineProcess::start(&tb, Host::Mbox, "mbox", &bin(), &RoleConfig::default()).unwrap();
    served.fetch(&tb, VICTIM_V4).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let text = tb
        .exec(
            Host::Victim,
            &["curl", "-sS", "--fail", "http://127.0.0.1:9464/metrics"],
        )
        .unwrap();
    let value = |series: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    // The download's packets, as `mpolice stats` counts them (GRO makes them few and
    // large: about 70 for 1 MiB here).
    let received = value("mpolice_queue_received_total{role=\"victim\",queue=\"0\"}");
    let s = victim.stats().unwrap();
    assert!(
        received.is_some_and(|n| n > 10 && n <= s.total().engine.received),
        "{text}"
    );
    let port_in =
        value("mpolice_port_packets_in_total{role=\"victim\",proto=\"tcp\",port=\"8080\"}");
    assert!(port_in.is_some_and(|n| n > 10), "{text}");
    assert!(
        text.contains("# TYPE mpolice_kernel_queue_waiting gauge"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    // The config checks out without the kernel; the address is taken (its queue and
    // control socket are its own).
    let path = tb.workdir().join("second.toml");
    let second = RoleConfig {
        first_queue: 5,
        extra: cfg.extra.clone(),
        ..RoleConfig::default()
    };
    std::fs::write(&path, second.toml(&tb.workdir().join("second.sock"))).unwrap();
    let check = std::process::Command::new(bin())
        .args(["check", "--role", "victim", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let bin = bin();
    let second = tb
        .command(
            Host::Victim,
            &[
                bin.to_str().unwrap(),
                "victim",
                "--config",
                path.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("metrics.listen 127.0.0.1:9464"), "{err}");
    // The first engine still runs, its table in place.
    assert!(victim.stats().is_ok());
    for (e, host) in [(&mut victim, Host::Victim), (&mut mbox, Host::Mbox)] {
        assert!(e.stop().unwrap().success(), "{}", e.log_text());
        assert!(tb.nft_tables(host).unwrap().is_empty());
    }
}

/// The systemd units of the three roles verify (`systemd-analyze verify`, the binary
/// in place of /usr/bin/mpolice); and the engine speaks systemd's notify protocol, as a
/// `Type=notify` unit needs: `READY=1` only once its table is installed, `WATCHDOG=1`
/// pings, `RELOADING=1` then `READY=1` around a SIGHUP, `STOPPING=1` at SIGTERM.
#[test]
fn the_units_verify_and_the_engine_notifies_systemd() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mpsysd").unwrap();
    let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let units = tb.workdir().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let bin = bin();
    for role in ["mbox", "victim", "server"] {
        let unit = format!("mpolice-{role}.service");
        let text = std::fs::read_to_string(root_dir.join("examples/systemd").join(&unit)).unwrap();
        assert!(text.contains("Type=notify") && text.contains("WatchdogSec="));
        let copy = units.join(&unit);
        std::fs::write(
            &copy,
            text.replace("/usr/bin/mpolice", bin.to_str().unwrap()),
        )
        .unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .expect("systemd-analyze (package systemd)");
        assert!(
            out.status.success(),
            "{unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // systemd's side of the protocol: a datagram socket the engine is told of.
    let socket = tb.workdir().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let cfg = RoleConfig {
        extra: "[ports]\n".into(),
        ..RoleConfig::default()
    };
    let path = tb.workdir().join("server.toml");
    std::fs::write(&path, cfg.toml(&tb.workdir().join("server.sock"))).unwrap();
    let mut engine = tb
        .command(
            Host::Victim,
            &[
                bin.to_str().unwrap(),
                "server",
                "--config",
                path.to_str().unwrap(),
            ],
        )
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv();
    assert!(
        ready.starts_with("READY=1\nSTATUS=server: queues [0] live"),
        "{ready:?}"
    );
    assert_eq!(
        tb.nft_tables(Host::Victim).unwrap(),
        ["inet mpolice"],
        "ready before the rules"
    );
    assert_eq!(recv(), "WATCHDOG=1");
    let t = Instant::now();
    assert_eq!(recv(), "WATCHDOG=1");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let pid = engine.id() as i32;
    // SAFETY: kill has no memory-safety preconditions; pid is our child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let next = |want: &str| loop {
        let m = recv();
        if m != "WATCHDOG=1" {
            assert!(m.starts_with(want), "{m:?}, not {want}");
            return m;
        }
    };
    next("RELOADING=1\nMONOTONIC_USEC=");
    let reloaded = next("READY=1");
    assert!(
        reloaded.contains("reloaded") && reloaded.contains("nothing changed"),
        "{reloaded:?}"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    next("STOPPING=1");
    assert!(engine.wait().unwrap().success());
    assert!(tb.nft_tables(Host::Victim).unwrap().is_empty());
}

/// The Debian package, built from this repository (`packaging/build-deb.sh`) and
/// installed as an operator would, in a throwaway overlay of this host's root
/// (`packaging/test-deb.sh`): it installs with its dependencies met, runs, checks every
/// example config, puts the man pages, completions, rulesets and units in place (the
/// units verify), and purges clean.
#[test]
fn the_debian_package_installs_runs_and_purges_clean() {
    if !root() {
        return;
    }
    let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |script: &str, arg: &std::path::Path| {
        let out = std::process::Command::new(root_dir.join("packaging").join(script))
            .arg(arg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{script}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let deb = run("build-deb.sh", &bin());
    let deb = root_dir.join(deb.trim());
    assert!(deb.exists(), "{}", deb.display());
    let said = run("test-deb.sh", &deb);
    assert!(said.contains("purges clean"), "{said}");
    assert!(said.contains("a valid server config"), "{said}");
}

/// The mbox's police reloaded: from `fair_share` to `natural_share` with a new LLR
/// threshold, the answer says so and the workers police by it (their report names the
/// new policy once packets have passed); a change of the kernel's limits on unverified
/// senders is refused, naming them.
#[test]
fn the_police_changes_on_reload() {
    if !root() {
        return;
    }
    let _machine = exclusive();
    let tb = Testbed::up("mppol").unwrap();
    let _served = ServedFile::start(&tb, 1 << 10).unwrap();
    let mbox_cfg = |police: &str| RoleConfig {
        extra: format!("[police]\n{police}"),
        ..RoleConfig::default()
            .with_capabilities(&tb, "mbox")
            .unwrap()
    };
    let victim_cfg = RoleConfig::default()
        .with_capabilities(&tb, "victim")
        .unwrap();
    let victim = EngineProcess::start(&tb, Host::Victim, "victim", &bin(), &victim_cfg).unwrap();
    let mbox = EngineProcess::start(
        &tb,
        Host::Mbox,
        "mbox",
        &bin(),
        &mbox_cfg("policy = \"fair_share\"\n"),
    )
    .unwrap();
    mbox.rewrite_config(&mbox_cfg(
        "policy = \"natural_share\"\nllr_threshold = 0.2\n",
    ))
    .unwrap();
    let (ok, said) = reload(&mbox);
    assert!(
        ok && said.contains("police: policy natural_share, llr_threshold 0.2"),
        "{said}"
    );
    let url = format!("http://{VICTIM_V4}:8080/f.bin");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A packet through the worker, and its report (every second) later.
        assert_eq!(status(&tb, &url), "200");
        let policy = mbox.stats().unwrap().police.map(|p| p.policy);
        if policy.as_deref() == Some("natural_share") {
            break;
        }
        assert!(Instant::now() < deadline, "still {policy:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    mbox.rewrite_config(&mbox_cfg(
        "policy = \"natural_share\"\nunverified_per_source_pps = 7\n",
    ))
    .unwrap();
    let (ok, said) = reload(&mbox);
    assert!(!ok && said.contains("police.unverified_*"), "{said}");
    drop((victim, mbox));
    assert!(tb.nft_tables(Host::Mbox).unwrap().is_empty());
}

/// The Grafana dashboard (`examples/grafana/mpolice-dashboard.json`) against a real
/// Prometheus (Debian's `prometheus` package) scraping both engines' endpoints while a
/// download and a UDP flood run: Prometheus ingests both endpoints' OpenMetrics text
/// (`up` is 1 for each; `promtool check metrics` lints only the older text format), and
/// every panel's query is valid and returns series (the attack-only ones may be empty
/// when the police dropped nothing). Needs `prometheus`, so it does not run in
/// CI: `cargo test --release --test operations -- --ignored --nocapture dashboard`.
#[test]
#[ignore = "needs Debian's prometheus package; run by hand (see the README)"]
fn the_dashboards_queries_return_data_from_a_real_prometheus() {
    assert!(root(), "run as root");
    let _machine = exclusive();
    let tb = Testbed::up("mpgraf").unwrap();
    let served = ServedFile::start(&tb, 20 << 20).unwrap();
    let victim_cfg = RoleConfig {
        extra: "[[ports.forward]]\nport = 9090\ndefault = 8080\n\
                [metrics]\nlisten = \"127.0.0.1:9464\"\n"
            .into(),
        tcp_ports: vec![8080, 9090],
        ..RoleConfig::default()
            .with_capabilities(&tb, "victim")
            .unwrap()
    };
    let mbox_cfg = RoleConfig {
        extra: "[police]\npolicy = \"fair_share\"\n[metrics]\nlisten = \"198.18.2.1:9464\"\n"
            .into(),
        tcp_ports: vec![8080, 9090],
        ..RoleConfig::default()
            .with_capabilities(&tb, "mbox")
            .unwrap()
    };
    let victim = EngineProcess::start(&tb, Host::Victim, "victim", &bin(), &victim_cfg).unwrap();
    let mbox = EngineProcess::start(&tb, Host::Mbox, "mbox", &bin(), &mbox_cfg).unwrap();
    // Prometheus beside the victim: its own endpoint on loopback, the mbox's over the link.
    let dir = tb.workdir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mpolice\n    \
         static_configs:\n      - targets: ['127.0.0.1:9464', '198.18.2.1:9464']\n",
    )
    .unwrap();
    let mut prometheus = tb
        .command(
            Host::Victim,
            &[
                "prometheus",
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                "--web.listen-address=127.0.0.1:9090",
            ],
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Traffic for 8 s: downloads, and bursts of a UDP flood to the protected server.
    let until = Instant::now() + Duration::from_secs(8);
    let flood = mpolice::testbed::UdpBurst {
        to: format!("{VICTIM_V4}:9000").parse().unwrap(),
        count: 20_000,
        len: 512,
        dest_opts: false,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            while Instant::now() < until {
                flood.send(&tb, Host::Client).unwrap();
            }
        });
        while Instant::now() < until {
            served.fetch(&tb, VICTIM_V4).unwrap();
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/grafana/mpolice-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let query = |expr: &str| -> serde_json::Value {
        let out = tb
            .exec(
                Host::Victim,
                &[
                    "curl",
                    "-sS",
                    "--data-urlencode",
                    &format!("query={expr}"),
                    "http://127.0.0.1:9090/api/v1/query",
                ],
            )
            .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["status"], "success", "{expr}: {out}");
        answer["data"]["result"].clone()
    };
    let up = query("up");
    let up: Vec<(String, String)> = up
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["instance"].to_string(),
                s["value"][1].to_string(),
            )
        })
        .collect();
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up.iter().all(|(_, v)| v == "\"1\""), "{up:?}");
    let attack_only = ["police_", "capabilities_rejected"];
    let mut empty = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "15s");
            let out = tb
                .exec(
                    Host::Victim,
                    &[
                        "curl",
                        "-sS",
                        "--data-urlencode",
                        &format!("query={expr}"),
                        "http://127.0.0.1:9090/api/v1/query",
                    ],
                )
                .unwrap();
            let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(answer["status"], "success", "{expr}: {out}");
            let series = answer["data"]["result"].as_array().map_or(0, Vec::len);
            eprintln!("{series:>3} series  {}: {expr}", panel["title"]);
            if series == 0 && !attack_only.iter().any(|a| expr.contains(a)) {
                empty.push(expr);
            }
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    drop((victim, mbox));
    assert!(empty.is_empty(), "queries without data: {empty:#?}");
}
